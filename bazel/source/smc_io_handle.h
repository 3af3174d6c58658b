#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "envoy/event/dispatcher.h"
#include "envoy/network/io_handle.h"

#include "source/common/network/io_socket_handle_impl.h"

#include "smc_runtime.h"

namespace Envoy {
namespace Network {
namespace Smc {

class SmcIoHandle;

// Connects a rescue (adaptive fallback) to its handle across threads: the library's watchdog
// thread calls rescue(), which posts the work to the handle's dispatcher; the handle detaches
// itself when it goes away, so a late post finds nothing to do. Envoy destroys a connection's
// handle on its worker thread, before that worker's dispatcher.
class ConnectRescue : public RescueTicket, public std::enable_shared_from_this<ConnectRescue> {
public:
  ConnectRescue(Event::Dispatcher& dispatcher, SmcIoHandle& handle)
      : dispatcher_(&dispatcher), handle_(&handle) {}
  void rescue() override; // the watchdog thread
  void detach();          // the worker thread

private:
  void run(); // the worker thread

  std::mutex mutex_;
  Event::Dispatcher* dispatcher_;
  SmcIoHandle* handle_;
};

// The handle of an IP stream socket that envoy-smc may still turn into an SMC socket. Every
// such socket starts as plain TCP; the decision waits until Envoy has said all it will say
// before the socket is used: the socket options (how an EnvoyFilter's mesh switch and the
// per-cluster fallback arrive) and the address. Clients are decided in connect(), listeners in
// listen() (or in duplicate(), which Envoy calls on a bound listener before listen() when
// workers share one socket; or in bind(), when a listener update's new socket takes over this
// process's shared AF_SMC listener at its address). Once decided the handle is IoSocketHandleImpl with one extra branch
// per overridden call; sockets envoy-smc will never touch never get this handle at all.
class SmcIoHandle : public IoSocketHandleImpl {
public:
  // Takes over `fd`, which Runtime::socket() opened and described in `state`.
  SmcIoHandle(RuntimeSharedPtr runtime, const envoy_smc_socket_state& state, os_fd_t fd,
              bool socket_v6only, int domain);
  ~SmcIoHandle() override;

  // IoHandle
  Api::SysCallIntResult setOption(int level, int optname, const void* optval,
                                  socklen_t optlen) override;
  Api::SysCallIntResult bind(Address::InstanceConstSharedPtr address) override;
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
  // An SMC connect in flight that the library may still hand back for a rescue.
  bool rescuable() const { return rescue_ != nullptr; }

  // Adaptive fallback, on the worker thread: the destination drops SMC's SYNs and this connect
  // is stuck; the library moves it to a TCP socket under the same fd and the file event is made
  // again, so the connection sees its connect complete.
  void rescueConnect();

private:
  // An option Envoy set on the undecided socket, for a replacement.
  struct RecordedOption {
    int level;
    int name;
    std::string value;
  };
  // The options and the bound address, as the library's record of this socket (valid while
  // options_ and bound_ are unchanged).
  envoy_smc_socket_record record() const;
  void decideListener(bool duplicate);
  // After a verdict was carried out: makes the file event again on a replaced socket.
  void afterVerdict(const envoy_smc_verdict& verdict, bool had_event, bool applied,
                    bool listener);
  // Called by the library right before it replaces the socket of a connect.
  static bool beforeReplace(void* self);

  const RuntimeSharedPtr runtime_;
  envoy_smc_socket_state state_;
  bool decided_{false};
  envoy_smc_verdict verdict_{};
  // Until the decision: what Envoy set and bound, the whole record a replacement is built from.
  std::vector<RecordedOption> options_;
  std::vector<envoy_smc_sockopt> option_views_;
  Address::InstanceConstSharedPtr bound_;

  // What Envoy asked of the file event, kept until the decision: a replaced socket is a new
  // open file, which epoll does not know, so the event has to be created again the same way.
  Event::Dispatcher* dispatcher_{nullptr};
  Event::FileReadyCb cb_;
  Event::FileTriggerType trigger_{Event::FileTriggerType::Edge};
  uint32_t events_{0};
  // Envoy activates the write event by hand to close a connection out of band (bind or socket
  // option failure) and still calls connect(); an activation does not survive a new file event.
  bool activated_{false};

  // An SMC connect in flight that can be rescued: where it goes, where it was bound, its cookie.
  std::shared_ptr<ConnectRescue> rescue_;
  uint64_t cookie_{0};
  Address::InstanceConstSharedPtr remote_;
  Address::InstanceConstSharedPtr source_;
};

} // namespace Smc
} // namespace Network
} // namespace Envoy
