// Stand-in (tests only) for Envoy's envoy/server/factory_context.h. The real
// ServerFactoryContext (through CommonFactoryContext) has some thirty accessors; the stand-in
// declares the four the shim calls, with the real signatures. Tests implement them.
#pragma once

#include "envoy/common/pure.h"
#include "envoy/event/dispatcher.h"
#include "envoy/local_info/local_info.h"
#include "envoy/server/configuration.h"
#include "envoy/stats/scope.h"

namespace Envoy {
namespace Server {
namespace Configuration {

class CommonFactoryContext {
public:
  virtual ~CommonFactoryContext() = default;
  virtual Event::Dispatcher& mainThreadDispatcher() PURE;
  virtual const LocalInfo::LocalInfo& localInfo() const PURE;
  virtual Stats::Scope& scope() PURE;
};

class ServerFactoryContext : public virtual CommonFactoryContext {
public:
  virtual StatsConfig& statsConfig() PURE;
};

} // namespace Configuration
} // namespace Server
} // namespace Envoy
