#pragma once

// The bed the shim's unit tests (smc_shim_test.cc) run on: the extension created from an
// envoy_smc.v1.SmcConfig the way Envoy creates it, a main-thread dispatcher that runs its file
// events, timers and posted callbacks, and the Envoy stats the extension writes. The tests see
// only this interface, so that the same gtest file can run against Envoy itself:
// - test_support_stand_in.cc: on the Envoy stand-in (bazel/envoy_stand_in/), through the stand-in
//   server's start-up sequence (bazel/test/run.sh, here);
// - test_support_envoy.cc: on Envoy's dispatcher and MockServerFactoryContext, for the real
//   build's @envoy_smc//:smc_shim_test; it cannot be compiled here and has not been.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "envoy/event/dispatcher.h"
#include "envoy/local_info/local_info.h"
#include "envoy/network/address.h"

#include "bazel/source/smc_socket_interface.h"

#include "api/envoy_smc/v1/smc.pb.h"

namespace EnvoySmcTest {

// The workload's pod annotations as Istio puts them into node.metadata.ANNOTATIONS.
struct Annotations {
  std::optional<std::string> opt_in = "true";
};

// Introspection only the stand-in dispatcher offers (null in the real build, where the tests
// that need it skip those checks).
class EventProbe {
public:
  virtual ~EventProbe() = default;
  virtual int fileEventsCreated() const = 0;
  // epoll removals that failed: removing a registration after the socket under the fd was
  // replaced is the mistake the shim must not make.
  virtual int removalErrors() const = 0;
};

class Bed {
public:
  // Throws EnvoyException when the extension refuses the configuration.
  explicit Bed(const envoy_smc::v1::SmcConfig& config, Annotations annotations = {});
  ~Bed();

  Envoy::Network::Smc::SmcSocketInterface& iface();
  Envoy::Network::Smc::SmcSocketInterfaceExtension& extension();
  Envoy::Event::Dispatcher& dispatcher();
  // One main-loop iteration, waiting up to timeout_ms for an event.
  void runOnce(int timeout_ms);
  // The Envoy counter "smc.<name>" after a flush of the library's counters.
  uint64_t stat(const std::string& name);
  // The Envoy counter "smc.<name>" as it is (no flush); nullopt when it does not exist.
  std::optional<uint64_t> peekStat(const std::string& name);
  const EventProbe* probe();

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

// A Unix socket address (Envoy's PipeInstance is built differently across versions).
Envoy::Network::Address::InstanceConstSharedPtr pipeAddress(const std::string& path);

// A LocalInfo whose node() is `node`.
std::unique_ptr<Envoy::LocalInfo::LocalInfo> makeLocalInfo(const envoy::config::core::v3::Node& node);

// The registered factory, as Envoy's registry holds it.
Envoy::Network::Smc::SmcSocketInterface& registeredInterface();

} // namespace EnvoySmcTest
