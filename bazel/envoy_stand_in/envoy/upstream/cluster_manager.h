// Stand-in (tests only) for Envoy's envoy/upstream/cluster_manager.h: only the type, which the
// stand-in server hands out after config_.initialize() (and aborts on before), as Envoy's
// ServerFactoryContext::clusterManager() is unusable while bootstrap extensions are created.
#pragma once

namespace Envoy {
namespace Upstream {

class ClusterManager {
public:
  virtual ~ClusterManager() = default;
};

} // namespace Upstream
} // namespace Envoy
