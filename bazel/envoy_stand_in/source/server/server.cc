// Behaviour of the stand-in server (tests only); see server.h for the order it follows and where
// that order is in Envoy. Not Envoy code.
#include "source/server/server.h"

#include <cstdio>
#include <cstdlib>

#include "envoy/common/exception.h"
#include "envoy/local_info/local_info.h"
#include "envoy/upstream/cluster_manager.h"

#include "source/common/config/utility.h"
#include "source/common/network/socket_interface.h"

namespace Envoy {
namespace Server {

namespace {
const char* stageName(StandInServer::Stage stage) {
  switch (stage) {
  case StandInServer::Stage::Constructed:
    return "constructed";
  case StandInServer::Stage::NodeKnown:
    return "node known, creating bootstrap extensions";
  case StandInServer::Stage::ExtensionsCreated:
    return "bootstrap extensions created, before config_.initialize()";
  case StandInServer::Stage::ConfigInitialized:
    return "configuration initialized";
  case StandInServer::Stage::Initialized:
    return "initialized";
  case StandInServer::Stage::Running:
    return "running";
  }
  return "?";
}
} // namespace

class StandInServer::StatsConfigImpl : public Configuration::StatsConfig {
public:
  explicit StatsConfigImpl(std::chrono::milliseconds interval) : interval_(interval) {}
  std::chrono::milliseconds flushInterval() const override { return interval_; }

private:
  const std::chrono::milliseconds interval_;
};

class StandInServer::LocalInfoImpl : public LocalInfo::LocalInfo {
public:
  explicit LocalInfoImpl(envoy::config::core::v3::Node node) : node_(std::move(node)) {}
  const envoy::config::core::v3::Node& node() const override { return node_; }

private:
  const envoy::config::core::v3::Node node_;
};

namespace {
class ClusterManagerImpl : public Upstream::ClusterManager {};
} // namespace

StandInServer::StandInServer(envoy::config::bootstrap::v3::Bootstrap bootstrap)
    : bootstrap_(std::move(bootstrap)) {}

StandInServer::~StandInServer() {
  // Extensions go before the interface is put back: an extension may still clear its pointer
  // on the interface it registered with.
  stat_flush_timer_.reset();
  extensions_.clear();
  if (swapped_interface_) {
    Network::SocketInterfaceSingleton::clear();
    Network::SocketInterfaceSingleton::initialize(replaced_interface_);
  }
}

void StandInServer::requireStage(Stage stage, const char* what, const char* usable_after) const {
  if (stage_ >= stage) {
    return;
  }
  std::fprintf(stderr,
               "stand-in Envoy: %s used too early: the server is at \"%s\", and Envoy makes it "
               "usable only after %s (source/server/server.cc, InstanceBase::initializeOrThrow). "
               "Real Envoy dereferences a null pointer here.\n",
               what, stageName(stage_), usable_after);
  std::fflush(stderr);
  std::abort();
}

const LocalInfo::LocalInfo& StandInServer::localInfo() const {
  requireStage(Stage::NodeKnown, "ServerFactoryContext::localInfo()",
               "local_info_ is created from bootstrap.node");
  return *local_info_;
}

Upstream::ClusterManager& StandInServer::clusterManager() {
  requireStage(Stage::ConfigInitialized, "ServerFactoryContext::clusterManager()",
               "config_.initialize() (createBootstrapExtension must not use it)");
  static ClusterManagerImpl cluster_manager;
  return cluster_manager;
}

Configuration::StatsConfig& StandInServer::statsConfig() {
  requireStage(Stage::ConfigInitialized, "ServerFactoryContext::statsConfig()",
               "config_.initialize(), which creates *stats_config_ (MainImpl::initialize, "
               "source/server/configuration_impl.h)");
  return *stats_config_;
}

void StandInServer::createBootstrapExtensions() {
  // 1. The node.
  local_info_ = std::make_unique<LocalInfoImpl>(bootstrap_.node());
  stage_ = Stage::NodeKnown;
  // 2. Bootstrap extensions, found by the type URL of their typed_config.
  for (const auto& entry : bootstrap_.bootstrap_extensions()) {
    auto& factory =
        Config::Utility::getAndCheckFactory<Configuration::BootstrapExtensionFactory>(entry);
    ProtobufTypes::MessagePtr config =
        Config::Utility::translateAnyToFactoryConfig(entry.typed_config(), factory);
    extensions_.push_back(factory.createBootstrapExtension(*config, *this));
  }
  stage_ = Stage::ExtensionsCreated;
}

void StandInServer::initializeConfig() {
  // 5. config_.initialize(): the stats config (flush interval, default 5 s) and the cluster
  // manager come to exist.
  const auto& interval = bootstrap_.stats_flush_interval();
  stats_config_ = std::make_unique<StatsConfigImpl>(
      bootstrap_.has_stats_flush_interval()
          ? std::chrono::milliseconds(interval.seconds() * 1000 + interval.nanos() / 1000000)
          : std::chrono::milliseconds(5000));
  stage_ = Stage::ConfigInitialized;
}

void StandInServer::initialize() {
  createBootstrapExtensions();
  // 3. default_socket_interface: a registered name replaces the process-wide interface.
  if (!bootstrap_.default_socket_interface().empty()) {
    auto* sock = const_cast<Network::SocketInterface*>(
        Network::socketInterface(bootstrap_.default_socket_interface()));
    if (sock != nullptr) {
      replaced_interface_ = Network::SocketInterfaceSingleton::getExisting();
      swapped_interface_ = true;
      Network::SocketInterfaceSingleton::clear();
      Network::SocketInterfaceSingleton::initialize(sock);
    }
  }
  initializeConfig();
  // 6. The server's own stats flush timer (its work is Envoy's, not modelled).
  stat_flush_timer_ = dispatcher_.createTimer([this] {
    stat_flush_timer_->enableTimer(stats_config_->flushInterval());
  });
  stat_flush_timer_->enableTimer(stats_config_->flushInterval());
  // 7. The bootstrap extensions learn that the server is initialized.
  for (auto& extension : extensions_) {
    extension->onServerInitialized(*this);
    ++server_initialized_calls_;
  }
  stage_ = Stage::Initialized;
}

void StandInServer::validate() {
  createBootstrapExtensions();
  initializeConfig();
}

void StandInServer::startWorkers() {
  requireStage(Stage::Initialized, "starting the workers", "initialize");
  for (auto& extension : extensions_) {
    extension->onWorkerThreadInitialized();
  }
  stage_ = Stage::Running;
}

} // namespace Server
} // namespace Envoy
