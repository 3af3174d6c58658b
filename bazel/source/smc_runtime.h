#pragma once

// The only file of the extension that talks to the envoy-smc C ABI (include/envoy_smc.h). No
// Envoy types here, so this layer is the same in every build and can follow the header alone.

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "envoy_smc.h"

namespace Envoy {
namespace Network {
namespace Smc {

// A connect the library may hand back for a rescue (adaptive fallback): when its destination is
// proven to drop SMC's SYNs while the connect is still stuck, the library's watchdog thread calls
// rescue() once; otherwise the ticket is just dropped. rescue() must not block and must not call
// back into the library: it passes the work to the thread that owns the fd.
class RescueTicket {
public:
  virtual ~RescueTicket() = default;
  virtual void rescue() = 0;
};
using RescueTicketSharedPtr = std::shared_ptr<RescueTicket>;

// One envoy-smc runtime (compiled config, kernel capabilities, counters). The library makes a
// runtime safe to share between threads; the extension shares it with every socket handle it
// creates, so a handle that outlives the extension at shutdown still holds a live runtime.
class Runtime {
public:
  using Annotations = std::vector<std::pair<std::string, std::string>>;

  // Null when the library refuses: *error then carries its message (for bad config it names
  // the field), or says that the library and this extension disagree on the ABI version.
  static std::shared_ptr<const Runtime> fromProto(const std::string& config_bytes,
                                                  const Annotations& annotations,
                                                  std::string* error);
  static std::shared_ptr<const Runtime> fromYaml(const std::string& yaml, std::string* error);

  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // socket(2) through the library: a plain socket plus its initial state. -1 with errno on
  // failure.
  int socket(int domain, int type, int protocol, const sockaddr* addr, socklen_t addrlen,
             envoy_smc_socket_state* state) const;
  void noteSockopt(envoy_smc_socket_state* state, int level, int name, const void* value,
                   socklen_t len) const;

  // One call per event: decide, carry out (a replacement socket is built from `record`, nothing
  // is read back) and count. False when the library could not decide (a bug caught at its
  // boundary, an address it cannot read): the socket then stays what it is, plain TCP.
  bool onListen(int fd, const envoy_smc_socket_state& state, const envoy_smc_socket_record& record,
                envoy_smc_verdict* out) const;
  // Before a duplicate: a bound socket gets its listener decision, an unbound one stays TCP
  // undecided (out->reason 0).
  bool onDup(int fd, const envoy_smc_socket_state& state, const envoy_smc_socket_record& record,
             envoy_smc_verdict* out) const;
  // Before connect: also watches an SMC connect (adaptive fallback); with a ticket, as one that
  // can be rescued in flight (*cookie: for rescueConnect; 0 when not watched, and the ticket is
  // then never called). `before_replace(ctx)` runs only right before the socket is replaced.
  bool onConnect(int fd, const envoy_smc_socket_state& state, const envoy_smc_socket_record& record,
                 const sockaddr* addr, socklen_t addrlen, bool (*before_replace)(void*),
                 void* ctx, RescueTicketSharedPtr ticket, uint64_t* cookie,
                 envoy_smc_verdict* out) const;
  // After bind(fd, addr) failed with EADDRINUSE: true when the library put this process's shared
  // AF_SMC listener at addr under fd (a listener update's new socket taking the listener over);
  // the bind is then done and the fd listens already.
  bool joinSharedListener(int fd, const envoy_smc_socket_state& state, const sockaddr* addr,
                          socklen_t addrlen) const;
  // On the thread that owns fd, after its file event was dropped: puts a TCP socket connecting
  // to addr (from source's IP when given) under fd. False: nothing changed.
  bool rescueConnect(int fd, uint64_t cookie, const sockaddr* addr, socklen_t addrlen,
                     const sockaddr* source, socklen_t source_len) const;

  // The library's counters, index-aligned with counterNames().
  std::vector<uint64_t> counters() const;
  static std::vector<std::string> counterNames();
  static std::string reasonName(uint32_t reason);
  // The library's name of a result code ("invalid_config"; "unknown_result" for no code).
  static std::string resultName(envoy_smc_result result);
  static std::string version();

private:
  explicit Runtime(envoy_smc_runtime* runtime) : runtime_(runtime) {}
  static bool abiMatches(std::string* error);
  // The library's watchdog thread calls this for every connect watched as rescuable.
  static void onRescue(void* ctx, uint64_t token, bool rescue) noexcept;
  static std::shared_ptr<const Runtime> adopt(envoy_smc_result result, envoy_smc_runtime* runtime,
                                              char* message, std::string* error);

  envoy_smc_runtime* const runtime_;
};

using RuntimeSharedPtr = std::shared_ptr<const Runtime>;

} // namespace Smc
} // namespace Network
} // namespace Envoy
