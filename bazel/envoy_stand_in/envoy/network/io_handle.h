// Stand-in (tests only) for Envoy's envoy/network/io_handle.h: the IoHandle members the shim
// overrides or calls, with the real signatures (class :41, fdDoNotUse :56, close :61 returning
// Api::IoCallUint64Result, isOpen :66, bind :235, listen :243, accept :251, connect :260,
// setOption :265, getOption :271, domain :292, duplicate :310, initializeFileEvent :323,
// activateFileEvents :330, enableFileEvents :336, resetFileEvents :341; line numbers of the stored
// 1.3x-era version read). The data-path members (readv, writev, sendmsg, recvmsg, ...) are left
// out: the shim does not touch them, which is the point.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>

#include "envoy/api/io_error.h"
#include "envoy/api/os_sys_calls_common.h"
#include "envoy/common/platform.h"
#include "envoy/common/pure.h"
#include "envoy/event/file_event.h"
#include "envoy/network/address.h"

#include "absl/types/optional.h"

namespace Envoy {
namespace Event {
class Dispatcher;
} // namespace Event

namespace Network {

class IoHandle {
public:
  virtual ~IoHandle() = default;

  virtual os_fd_t fdDoNotUse() const PURE;
  virtual bool isOpen() const PURE;
  virtual Api::IoCallUint64Result close() PURE;
  virtual Api::SysCallIntResult bind(Address::InstanceConstSharedPtr address) PURE;
  virtual Api::SysCallIntResult listen(int backlog) PURE;
  virtual std::unique_ptr<IoHandle> accept(struct sockaddr* addr, socklen_t* addrlen) PURE;
  virtual Api::SysCallIntResult connect(Address::InstanceConstSharedPtr address) PURE;
  virtual Api::SysCallIntResult setOption(int level, int optname, const void* optval,
                                          socklen_t optlen) PURE;
  virtual Api::SysCallIntResult getOption(int level, int optname, void* optval,
                                          socklen_t* optlen) PURE;
  virtual absl::optional<int> domain() PURE;
  virtual std::unique_ptr<IoHandle> duplicate() PURE;
  virtual void initializeFileEvent(Event::Dispatcher& dispatcher, Event::FileReadyCb cb,
                                   Event::FileTriggerType trigger, uint32_t events) PURE;
  virtual void activateFileEvents(uint32_t events) PURE;
  virtual void enableFileEvents(uint32_t events) PURE;
  virtual void resetFileEvents() PURE;
};

using IoHandlePtr = std::unique_ptr<IoHandle>;

} // namespace Network
} // namespace Envoy
