#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "envoy/event/timer.h"
#include "envoy/local_info/local_info.h"
#include "envoy/registry/registry.h"
#include "envoy/server/bootstrap_extension_config.h"
#include "envoy/stats/scope.h"
#include "envoy/stats/stats.h"

#include "source/common/network/socket_interface.h"
#include "source/common/network/socket_interface_impl.h"

#include "smc_runtime.h"

namespace Envoy {
namespace Network {
namespace Smc {

class SmcSocketInterfaceExtension;

// The default socket interface with one difference: IP stream sockets are opened through
// envoy-smc, which may later make them SMC sockets (see SmcIoHandle). Everything else (datagram,
// Unix, internal, MPTCP sockets, and every socket while no extension is configured) goes
// through SocketInterfaceImpl unchanged. Both socket() overloads are overridden: the address
// overload of the base calls the other one by qualified name and would bypass this class.
class SmcSocketInterface : public SocketInterfaceImpl {
public:
  static constexpr const char* Name = "envoy.extensions.network.socket_interface.smc";

  // SocketInterface
  IoHandlePtr socket(Socket::Type socket_type, Address::Type addr_type, Address::IpVersion version,
                     bool socket_v6only, const SocketCreationOptions& options) const override;
  IoHandlePtr socket(Socket::Type socket_type, const Address::InstanceConstSharedPtr addr,
                     const SocketCreationOptions& options) const override;

  // Server::Configuration::BootstrapExtensionFactory
  Server::BootstrapExtensionPtr
  createBootstrapExtension(const Protobuf::Message& config,
                           Server::Configuration::ServerFactoryContext& context) override;
  ProtobufTypes::MessagePtr createEmptyConfigProto() override;
  std::string name() const override { return Name; }

  // Non-owning; set by the extension when Envoy creates it at start-up, before any worker
  // runs, and cleared when it is destroyed. The interface is a process-wide singleton, so the
  // configuration-derived state lives on the extension, not here.
  SmcSocketInterfaceExtension* extension_{nullptr};

private:
  RuntimeSharedPtr runtime() const;
  // Null when the library could not open the socket; the caller then takes the default path,
  // which fails (or not) exactly as Envoy would without envoy-smc.
  IoHandlePtr openStream(const RuntimeSharedPtr& runtime, int domain, bool socket_v6only,
                         const sockaddr* addr, socklen_t addrlen) const;
};

// Owns the runtime built from the typed config and mirrors the library's counters into Envoy
// stats under "smc.", copied every MirrorInterval on the main thread.
//
// Lifecycle: Envoy creates bootstrap extensions early in InstanceBase::initializeOrThrow, before
// the runtime, the cluster manager and config_.initialize() (which creates the stats config).
// The constructor therefore touches only what exists then: the main thread's dispatcher (to
// create a timer, which first fires once the main loop runs), the stats scope and the node's
// metadata. It needs neither BootstrapExtension::onServerInitialized (whose argument changed
// between Envoy 1.36 and 1.40) nor ServerFactoryContext::statsConfig().
class SmcSocketInterfaceExtension : public SocketInterfaceExtension {
public:
  SmcSocketInterfaceExtension(SmcSocketInterface& sock_interface, RuntimeSharedPtr runtime,
                              Server::Configuration::ServerFactoryContext& context);
  ~SmcSocketInterfaceExtension() override;

  // How stale the smc.* counters may be. A fixed period, not the server's stats flush
  // interval: that one is known only after config_.initialize(), and two timers would not be in
  // step anyway.
  static constexpr std::chrono::milliseconds MirrorInterval{1000};

  const RuntimeSharedPtr& runtime() const { return runtime_; }
  void flushStats();

private:
  struct MirroredCounter {
    Stats::Counter* counter;
    uint64_t last;
  };

  const RuntimeSharedPtr runtime_;
  std::vector<MirroredCounter> counters_;
  Event::TimerPtr flush_timer_;
};

// The workload's annotations as Istio puts them into the node metadata: every pod annotation,
// as strings, under the key ANNOTATIONS.
Runtime::Annotations nodeAnnotations(const LocalInfo::LocalInfo& local_info);

DECLARE_FACTORY(SmcSocketInterface);

} // namespace Smc
} // namespace Network
} // namespace Envoy
