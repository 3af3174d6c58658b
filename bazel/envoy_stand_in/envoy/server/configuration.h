// Stand-in (tests only) for the StatsConfig part of Envoy's envoy/server/configuration.h: the
// server's stats configuration, which exists only after config_.initialize() (the real
// ServerFactoryContext::statsConfig() returns *stats_config_, created by MainImpl::initialize in
// source/server/configuration_impl.h). The shim no longer uses it; the stand-in server keeps it
// so that a shim reading it at creation fails here as it would crash in Envoy.
#pragma once

#include <chrono>

#include "envoy/common/pure.h"

namespace Envoy {
namespace Server {
namespace Configuration {

class StatsConfig {
public:
  virtual ~StatsConfig() = default;
  virtual std::chrono::milliseconds flushInterval() const PURE;
};

} // namespace Configuration
} // namespace Server
} // namespace Envoy
