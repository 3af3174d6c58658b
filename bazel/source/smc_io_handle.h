#pragma once

#include <cstdint>

#include "envoy/event/dispatcher.h"
#include "envoy/network/io_handle.h"

#include "source/common/network/io_socket_handle_impl.h"

#include "smc_runtime.h"

namespace Envoy {
namespace Network {
namespace Smc {

// The handle of an IP stream socket that envoy-smc may still turn into an SMC socket. Every
// such socket starts as plain TCP; the decision waits until Envoy has said all it will say
// before the socket is used: the socket options (how an EnvoyFilter's mesh switch and the
// per-cluster fallback arrive) and the address. Clients are decided in connect(), listeners in
// listen() (or in duplicate(), which Envoy calls on a bound listener before listen() when
// workers share one socket). Once decided the handle is IoSocketHandleImpl with one extra branch
// per overridden call; sockets envoy-smc will never touch never get this handle at all.
class SmcIoHandle : public IoSocketHandleImpl {
public:
  // Takes over `fd`, which Runtime::socket() opened and described in `state`.
  SmcIoHandle(RuntimeSharedPtr runtime, const envoy_smc_socket_state& state, os_fd_t fd,
              bool socket_v6only, int domain);

  // IoHandle
  Api::SysCallIntResult setOption(int level, int optname, const void* optval,
                                  socklen_t optlen) override;
  Api::SysCallIntResult listen(int backlog) override;
  Api::SysCallIntResult connect(Address::InstanceConstSharedPtr address) override;
  IoHandlePtr duplicate() override;
  void initializeFileEvent(Event::Dispatcher& dispatcher, Event::FileReadyCb cb,
                           Event::FileTriggerType trigger, uint32_t events) override;
  void activateFileEvents(uint32_t events) override;
  void enableFileEvents(uint32_t events) override;

  // The verdict carried out, once the socket is decided (for logs and tests).
  bool decided() const { return decided_; }
  const envoy_smc_verdict& verdict() const { return verdict_; }

private:
  void decideListener();
  void carryOut(envoy_smc_verdict verdict, bool listener);

  const RuntimeSharedPtr runtime_;
  envoy_smc_socket_state state_;
  bool decided_{false};
  envoy_smc_verdict verdict_{};

  // What Envoy asked of the file event, kept until the decision: a replaced socket is a new
  // open file, which epoll does not know, so the event has to be created again the same way.
  Event::Dispatcher* dispatcher_{nullptr};
  Event::FileReadyCb cb_;
  Event::FileTriggerType trigger_{Event::FileTriggerType::Edge};
  uint32_t events_{0};
  // Envoy activates the write event by hand to close a connection out of band (bind or socket
  // option failure) and still calls connect(); an activation does not survive a new file event.
  bool activated_{false};
};

} // namespace Smc
} // namespace Network
} // namespace Envoy
