// Stand-in (tests only) for Envoy's envoy/server/factory_context.h. The real CommonFactoryContext
// (:52) and ServerFactoryContext (:155) have some forty accessors; the stand-in declares the ones
// the shim or the stand-in server use, with the real signatures: mainThreadDispatcher() :65,
// localInfo() :75, scope() :106, clusterManager() :122 (as a marker here), statsConfig() :198
// (line numbers of the stored 1.3x-era version read; unchanged in 1.36 and 1.40).
//
// When each becomes usable in the real server (source/server/server.cc,
// InstanceBase::initializeOrThrow): the dispatcher and the stats scope exist from the server's
// construction, localInfo() just before the bootstrap extensions are created, clusterManager()
// and statsConfig() only after config_.initialize(). The stand-in server's implementation
// aborts with a message when one is used too early (real Envoy dereferences null there).
#pragma once

#include "envoy/common/pure.h"
#include "envoy/event/dispatcher.h"
#include "envoy/local_info/local_info.h"
#include "envoy/server/configuration.h"
#include "envoy/stats/scope.h"

namespace Envoy {
namespace Upstream {
class ClusterManager;
} // namespace Upstream

namespace Server {
namespace Configuration {

class CommonFactoryContext {
public:
  virtual ~CommonFactoryContext() = default;
  virtual Event::Dispatcher& mainThreadDispatcher() PURE;
  virtual const LocalInfo::LocalInfo& localInfo() const PURE;
  virtual Stats::Scope& scope() PURE;
  virtual Upstream::ClusterManager& clusterManager() PURE;
};

class ServerFactoryContext : public virtual CommonFactoryContext {
public:
  virtual StatsConfig& statsConfig() PURE;
};

} // namespace Configuration
} // namespace Server
} // namespace Envoy
