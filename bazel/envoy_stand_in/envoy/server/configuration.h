// Stand-in (tests only) for the StatsConfig part of Envoy's envoy/server/configuration.h: the
// stats flush interval the shim copies the library's counters at.
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
