// Stand-in (tests only) for the Counter and Gauge parts of Envoy's envoy/stats/stats.h.
#pragma once

#include <cstdint>

#include "envoy/common/pure.h"

namespace Envoy {
namespace Stats {

class Counter {
public:
  virtual ~Counter() = default;
  virtual void add(uint64_t amount) PURE;
  virtual void inc() PURE;
  virtual uint64_t value() const PURE;
};

class Gauge {
public:
  enum class ImportMode { Uninitialized, NeverImport, Accumulate, HiddenAccumulate };
  virtual ~Gauge() = default;
  virtual void set(uint64_t value) PURE;
  virtual uint64_t value() const PURE;
};

} // namespace Stats
} // namespace Envoy
