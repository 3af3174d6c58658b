// Stand-in (tests only) for Envoy's envoy/server/bootstrap_extension_config.h: the bootstrap
// extension and its factory. In Envoy 1.40 onServerInitialized takes the Server::Instance
// (earlier releases: no argument); the shim overrides neither hook, so it builds against both.
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
  virtual void onServerInitialized(Instance& server) PURE;
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
