// Stand-in (tests only) for Envoy's envoy/server/bootstrap_extension_config.h: BootstrapExtension
// and its factory. The hooks are those of Envoy 1.40: onServerInitialized(Server::Instance&) and
// onWorkerThreadInitialized() (as the 1.40-dev bootstrap extensions override them, e.g.
// source/extensions/bootstrap/certificate_providers/local/config.h). Envoy 57198c44 (istio-proxy
// 1.28) declares onServerInitialized() without the argument (istio/proxy 1.28.10
// source/extensions/common/workload_discovery/api.cc:243 overrides it so); the shim overrides
// neither hook and builds against both. createBootstrapExtension throws EnvoyException on bad
// config and must not use the cluster manager (the factory's contract in the real header).
#pragma once

#include <memory>
#include <string>

#include "envoy/common/pure.h"
#include "envoy/config/typed_config.h"
#include "envoy/server/factory_context.h"

#include "source/common/protobuf/protobuf.h"

namespace Envoy {
namespace Server {

class Instance;

class BootstrapExtension {
public:
  virtual ~BootstrapExtension() = default;
  // After config_.initialize() and the stats flush timer, before the guard dogs and workers.
  virtual void onServerInitialized(Instance& server) PURE;
  // On each worker thread, once it runs.
  virtual void onWorkerThreadInitialized() PURE;
};

using BootstrapExtensionPtr = std::unique_ptr<BootstrapExtension>;

namespace Configuration {

class BootstrapExtensionFactory : public Config::TypedFactory {
public:
  virtual BootstrapExtensionPtr createBootstrapExtension(const Protobuf::Message& config,
                                                         ServerFactoryContext& context) PURE;
  std::string category() const override { return "envoy.bootstrap"; }
};

} // namespace Configuration
} // namespace Server
} // namespace Envoy
