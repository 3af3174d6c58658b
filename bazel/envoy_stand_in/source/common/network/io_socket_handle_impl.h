// Stand-in (tests only) for Envoy's source/common/network/io_socket_handle_impl.h and its base
// io_socket_handle_base_impl.h: the POSIX socket IoHandle the shim's handle derives from. Same
// constructor (io_socket_handle_impl.h:31-33), protected members (base: fd_, socket_v6only_,
// domain_; file_event_ :103) and virtuals as the real classes for what the shim uses (close :45
// returning Api::IoCallUint64Result, bind/listen/accept/connect :69-72, initializeFileEvent :73,
// duplicate :76, activateFileEvents/enableFileEvents :78-79, resetFileEvents :81; line numbers of
// the stored 1.3x-era version read, whose constructor Envoy 1.40's sockmap handle still calls);
// plain syscalls instead of Api::OsSysCallsSingleton.
#pragma once

#include "envoy/common/platform.h"
#include "envoy/event/dispatcher.h"
#include "envoy/network/io_handle.h"

#include "absl/types/optional.h"

namespace Envoy {
namespace Network {

class IoSocketHandleBaseImpl : public IoHandle {
public:
  IoSocketHandleBaseImpl(os_fd_t fd = INVALID_SOCKET, bool socket_v6only = false,
                         absl::optional<int> domain = absl::nullopt)
      : fd_(fd), socket_v6only_(socket_v6only), domain_(domain) {}

  os_fd_t fdDoNotUse() const override { return fd_; }
  bool isOpen() const override { return SOCKET_VALID(fd_); }
  Api::SysCallIntResult setOption(int level, int optname, const void* optval,
                                  socklen_t optlen) override;
  Api::SysCallIntResult getOption(int level, int optname, void* optval,
                                  socklen_t* optlen) override;
  absl::optional<int> domain() override { return domain_; }

protected:
  os_fd_t fd_;
  int socket_v6only_;
  const absl::optional<int> domain_;
};

class IoSocketHandleImpl : public IoSocketHandleBaseImpl {
public:
  explicit IoSocketHandleImpl(os_fd_t fd = INVALID_SOCKET, bool socket_v6only = false,
                              absl::optional<int> domain = absl::nullopt,
                              size_t address_cache_max_capacity = 0)
      : IoSocketHandleBaseImpl(fd, socket_v6only, domain) {
    (void)address_cache_max_capacity;
  }
  ~IoSocketHandleImpl() override;

  Api::IoCallUint64Result close() override;
  Api::SysCallIntResult bind(Address::InstanceConstSharedPtr address) override;
  Api::SysCallIntResult listen(int backlog) override;
  IoHandlePtr accept(struct sockaddr* addr, socklen_t* addrlen) override;
  Api::SysCallIntResult connect(Address::InstanceConstSharedPtr address) override;
  void initializeFileEvent(Event::Dispatcher& dispatcher, Event::FileReadyCb cb,
                           Event::FileTriggerType trigger, uint32_t events) override;
  IoHandlePtr duplicate() override;
  void activateFileEvents(uint32_t events) override;
  void enableFileEvents(uint32_t events) override;
  void resetFileEvents() override { file_event_.reset(); }

protected:
  Event::FileEventPtr file_event_{nullptr};
};

} // namespace Network
} // namespace Envoy
