// Stand-in (tests only) for Envoy's envoy/server/instance.h: the server object that
// BootstrapExtension::onServerInitialized receives in Envoy 1.40. The real interface has some
// sixty accessors; the shim uses none of them, so the stand-in declares only what the stand-in
// server (source/server/server.h) exposes to tests.
#pragma once

#include "envoy/common/pure.h"

namespace Envoy {
namespace Server {

namespace Configuration {
class ServerFactoryContext;
} // namespace Configuration

class Instance {
public:
  virtual ~Instance() = default;
  virtual Configuration::ServerFactoryContext& serverFactoryContext() PURE;
};

} // namespace Server
} // namespace Envoy
