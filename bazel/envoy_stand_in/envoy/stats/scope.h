// Stand-in (tests only) for Envoy's envoy/stats/scope.h: the two string-named stat lookups the
// shim uses. Tests implement the scope in memory.
#pragma once

#include <string>

#include "envoy/common/pure.h"
#include "envoy/stats/stats.h"

namespace Envoy {
namespace Stats {

class Scope {
public:
  virtual ~Scope() = default;
  virtual Counter& counterFromString(const std::string& name) PURE;
  virtual Gauge& gaugeFromString(const std::string& name, Gauge::ImportMode import_mode) PURE;
};

} // namespace Stats
} // namespace Envoy
