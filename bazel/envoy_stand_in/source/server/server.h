// Stand-in (tests only) for Envoy's server start-up: what source/server/server.cc
// (InstanceBase::initializeOrThrow, run) and source/server/config_validation/server.cc
// (ValidationInstance::initialize, for --mode validate) do that a bootstrap extension can see, in
// the same order, with the same timing of each ServerFactoryContext accessor:
//
//   construction   main dispatcher, stats store                       usable from here on
//   1. node        local_info_ from bootstrap.node                      localInfo()
//   2. extensions  bootstrap_extensions: factory found by the TYPE URL of typed_config, the Any
//                  unpacked into its empty config, createBootstrapExtension(config, context)
//   3. socket      default_socket_interface names a registered interface -> it replaces the
//      interface   process-wide SocketInterfaceSingleton (an unknown name is ignored)
//   4. (listener manager, runtime, admin, cluster manager factory: nothing to model)
//   5. config      config_.initialize(): stats config, cluster manager  statsConfig(),
//                                                                       clusterManager()
//   6. the server's stats flush timer
//   7. onServerInitialized(*this) on every bootstrap extension
//   8. (guard dogs) ; run(): workers start (onWorkerThreadInitialized on each worker thread),
//      then the main loop runs posted callbacks and timers.
//
// --mode validate (validate()): steps 1, 2 and 5 only: no socket interface swap, no lifecycle
// hook, no loop.
//
// An accessor used before its step aborts the process with a message saying where Envoy makes it
// usable: real Envoy dereferences a null pointer there (statsConfig() returns *stats_config_).
// Simplifications: one worker, which is the calling thread; no listeners, clusters or admin.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "envoy/server/bootstrap_extension_config.h"
#include "envoy/server/factory_context.h"
#include "envoy/server/instance.h"

#include "source/common/event/dispatcher_impl.h"
#include "source/common/stats/isolated_store_impl.h"

#include "envoy/config/bootstrap/v3/bootstrap.pb.h"

namespace Envoy {
namespace Network {
class SocketInterface;
} // namespace Network
} // namespace Envoy

namespace Envoy {
namespace Server {

class StandInServer : public Instance, private Configuration::ServerFactoryContext {
public:
  enum class Stage { Constructed, NodeKnown, ExtensionsCreated, ConfigInitialized, Initialized, Running };

  explicit StandInServer(envoy::config::bootstrap::v3::Bootstrap bootstrap);
  ~StandInServer() override;

  // InstanceBase::initializeOrThrow: steps 1-8. Throws EnvoyException where Envoy would refuse
  // to start (an unknown extension type, a factory that throws).
  void initialize();
  // ValidationInstance::initialize (--mode validate). Throws as initialize() does.
  void validate();
  // The workers start: onWorkerThreadInitialized on this thread (the stand-in's one worker).
  void startWorkers();
  // The main loop: runs until `done` is true or `timeout` passed; true when done.
  template <class Done> bool runUntil(Done done, std::chrono::milliseconds timeout) {
    requireStage(Stage::Initialized, "the main loop", "InstanceBase::run, after initialize");
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= end) {
        return false;
      }
      dispatcher_.runOnce(10);
    }
    return true;
  }

  // Instance
  Configuration::ServerFactoryContext& serverFactoryContext() override { return *this; }

  Stage stage() const { return stage_; }
  Event::DispatcherImpl& dispatcher() { return dispatcher_; }
  Stats::IsolatedStoreImpl& store() { return store_; }
  const std::vector<BootstrapExtensionPtr>& bootstrapExtensions() const { return extensions_; }
  int serverInitializedCalls() const { return server_initialized_calls_; }

private:
  class StatsConfigImpl;
  class LocalInfoImpl;

  // Aborts, naming `what` and where Envoy makes it usable, when the server is before `stage`.
  void requireStage(Stage stage, const char* what, const char* usable_after) const;
  void createBootstrapExtensions();
  void initializeConfig();

  // CommonFactoryContext / ServerFactoryContext
  Event::Dispatcher& mainThreadDispatcher() override { return dispatcher_; }
  const LocalInfo::LocalInfo& localInfo() const override;
  Stats::Scope& scope() override { return store_; }
  Upstream::ClusterManager& clusterManager() override;
  Configuration::StatsConfig& statsConfig() override;

  const envoy::config::bootstrap::v3::Bootstrap bootstrap_;
  Stage stage_{Stage::Constructed};
  Event::DispatcherImpl dispatcher_{"main_thread"};
  Stats::IsolatedStoreImpl store_;
  std::unique_ptr<LocalInfoImpl> local_info_;
  std::vector<BootstrapExtensionPtr> extensions_;
  std::unique_ptr<StatsConfigImpl> stats_config_;
  Event::TimerPtr stat_flush_timer_;
  Network::SocketInterface* replaced_interface_{nullptr};
  bool swapped_interface_{false};
  int server_initialized_calls_{0};
};

} // namespace Server
} // namespace Envoy
