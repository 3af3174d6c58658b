// Stand-in (tests only) for Envoy's in-memory stats store (source/common/stats/isolated_store_impl.h):
// counters and gauges by name, read back by tests. Not Envoy code.
#pragma once

#include <map>
#include <string>

#include "envoy/stats/scope.h"

namespace Envoy {
namespace Stats {

class IsolatedStoreImpl : public Scope {
public:
  Counter& counterFromString(const std::string& name) override { return counters_[name]; }
  Gauge& gaugeFromString(const std::string& name, Gauge::ImportMode) override {
    return gauges_[name];
  }
  bool hasCounter(const std::string& name) const { return counters_.count(name) != 0; }
  // The counter's value; 0 when it does not exist.
  uint64_t counterValue(const std::string& name) const {
    const auto it = counters_.find(name);
    return it == counters_.end() ? 0 : it->second.value();
  }

private:
  class CounterImpl : public Counter {
  public:
    void add(uint64_t amount) override { value_ += amount; }
    void inc() override { ++value_; }
    uint64_t value() const override { return value_; }

  private:
    uint64_t value_{0};
  };
  class GaugeImpl : public Gauge {
  public:
    void set(uint64_t value) override { value_ = value; }
    uint64_t value() const override { return value_; }

  private:
    uint64_t value_{0};
  };

  std::map<std::string, CounterImpl> counters_;
  std::map<std::string, GaugeImpl> gauges_;
};

} // namespace Stats
} // namespace Envoy
