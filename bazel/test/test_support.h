#pragma once

// Test doubles for the shim's unit tests against the Envoy stand-in (bazel/envoy_stand_in/):
// an epoll dispatcher that runs real file events, a manual timer, an in-memory stats scope, a
// node with metadata and a ServerFactoryContext made of them. Plus a tiny test runner.

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <mutex>
#include <vector>

#include "envoy/event/dispatcher.h"
#include "envoy/local_info/local_info.h"
#include "envoy/server/factory_context.h"
#include "envoy/stats/scope.h"

namespace EnvoySmcTest {

// ---- runner ----------------------------------------------------------------------------------

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TestCase {
  std::string name;
  std::function<void()> body;
};

std::vector<TestCase>& allTests();

struct Registrar {
  Registrar(const char* name, std::function<void()> body) {
    allTests().push_back({name, std::move(body)});
  }
};

#define STAND_IN_TEST(NAME)                                                                        \
  static void NAME();                                                                              \
  static ::EnvoySmcTest::Registrar NAME##_registrar(#NAME, NAME);                                  \
  static void NAME()

#define CHECK(COND)                                                                                \
  do {                                                                                             \
    if (!(COND)) {                                                                                 \
      std::ostringstream msg;                                                                      \
      msg << __FILE__ << ":" << __LINE__ << ": CHECK(" #COND ") failed";                           \
      throw ::EnvoySmcTest::Failure(msg.str());                                                    \
    }                                                                                              \
  } while (false)

#define CHECK_EQ(A, B)                                                                             \
  do {                                                                                             \
    const auto a_ = (A);                                                                           \
    const auto b_ = (B);                                                                           \
    if (!(a_ == b_)) {                                                                             \
      std::ostringstream msg;                                                                      \
      msg << __FILE__ << ":" << __LINE__ << ": CHECK_EQ(" #A ", " #B ") failed: " << a_           \
          << " != " << b_;                                                                         \
      throw ::EnvoySmcTest::Failure(msg.str());                                                    \
    }                                                                                              \
  } while (false)

// ---- event loop ------------------------------------------------------------------------------

class EpollDispatcher;

// A file event on a real epoll instance, edge- or level-triggered like Envoy's libevent ones.
// Records whether removing its registration failed: removing it after the socket under the fd
// was replaced is the mistake the shim must not make.
class EpollFileEvent : public Envoy::Event::FileEvent {
public:
  EpollFileEvent(EpollDispatcher& dispatcher, int fd, Envoy::Event::FileReadyCb cb,
                 Envoy::Event::FileTriggerType trigger, uint32_t events);
  ~EpollFileEvent() override;

  void activate(uint32_t events) override { injected_ |= events; }
  void setEnabled(uint32_t events) override;
  void registerEventIfEmulatedEdge(uint32_t) override {}
  void unregisterEventIfEmulatedEdge(uint32_t) override {}

  int fd() const { return fd_; }
  uint32_t enabled() const { return enabled_; }
  Envoy::Event::FileTriggerType trigger() const { return trigger_; }
  void fire(uint32_t events);
  uint32_t takeInjected() {
    const uint32_t injected = injected_;
    injected_ = 0;
    return injected;
  }

private:
  uint32_t epollEvents(uint32_t events) const;

  EpollDispatcher& dispatcher_;
  const int fd_;
  Envoy::Event::FileReadyCb cb_;
  const Envoy::Event::FileTriggerType trigger_;
  uint32_t enabled_;
  uint32_t injected_{0};
};

class ManualTimer : public Envoy::Event::Timer {
public:
  explicit ManualTimer(Envoy::Event::TimerCb cb) : cb_(std::move(cb)) {}
  void disableTimer() override { enabled_ = false; }
  void enableTimer(std::chrono::milliseconds ms, const Envoy::ScopeTrackedObject*) override {
    enabled_ = true;
    interval_ = ms;
  }
  bool enabled() override { return enabled_; }
  void fire() {
    enabled_ = false;
    cb_();
  }
  std::chrono::milliseconds interval() const { return interval_; }

private:
  Envoy::Event::TimerCb cb_;
  bool enabled_{false};
  std::chrono::milliseconds interval_{0};
};

class EpollDispatcher : public Envoy::Event::Dispatcher {
public:
  EpollDispatcher();
  ~EpollDispatcher() override;

  Envoy::Event::FileEventPtr createFileEvent(os_fd_t fd, Envoy::Event::FileReadyCb cb,
                                             Envoy::Event::FileTriggerType trigger,
                                             uint32_t events) override;
  Envoy::Event::TimerPtr createTimer(Envoy::Event::TimerCb cb) override;
  void post(Envoy::Event::PostCb callback) override;

  // Posted callbacks first, then one epoll_wait (injected activations first); returns how many
  // callbacks ran.
  int runOnce(int timeout_ms);

  int epollFd() const { return epoll_fd_; }
  int fileEventsCreated() const { return file_events_created_; }
  int removalErrors() const { return removal_errors_; }
  void noteRemovalError() { ++removal_errors_; }
  void forget(EpollFileEvent* event);
  ManualTimer* lastTimer() const { return last_timer_; }

private:
  const int epoll_fd_;
  std::vector<EpollFileEvent*> live_;
  int file_events_created_{0};
  int removal_errors_{0};
  ManualTimer* last_timer_{nullptr};
  std::mutex posted_mutex_;
  std::vector<Envoy::Event::PostCb> posted_;
};

// ---- stats, node, context --------------------------------------------------------------------

class MemoryCounter : public Envoy::Stats::Counter {
public:
  void add(uint64_t amount) override { value_ += amount; }
  void inc() override { ++value_; }
  uint64_t value() const override { return value_; }

private:
  uint64_t value_{0};
};

class MemoryGauge : public Envoy::Stats::Gauge {
public:
  void set(uint64_t value) override { value_ = value; }
  uint64_t value() const override { return value_; }

private:
  uint64_t value_{0};
};

class MemoryScope : public Envoy::Stats::Scope {
public:
  Envoy::Stats::Counter& counterFromString(const std::string& name) override {
    return counters_[name];
  }
  Envoy::Stats::Gauge& gaugeFromString(const std::string& name,
                                       Envoy::Stats::Gauge::ImportMode) override {
    return gauges_[name];
  }
  bool hasCounter(const std::string& name) const { return counters_.count(name) != 0; }
  uint64_t counter(const std::string& name) const {
    const auto it = counters_.find(name);
    if (it == counters_.end()) {
      throw Failure("no counter " + name);
    }
    return it->second.value();
  }

private:
  std::map<std::string, MemoryCounter> counters_;
  std::map<std::string, MemoryGauge> gauges_;
};

class FixedLocalInfo : public Envoy::LocalInfo::LocalInfo {
public:
  const envoy::config::core::v3::Node& node() const override { return node_; }
  envoy::config::core::v3::Node& mutableNode() { return node_; }

private:
  envoy::config::core::v3::Node node_;
};

class FixedStatsConfig : public Envoy::Server::Configuration::StatsConfig {
public:
  std::chrono::milliseconds flushInterval() const override { return std::chrono::seconds(5); }
};

class TestServerContext : public Envoy::Server::Configuration::ServerFactoryContext {
public:
  Envoy::Event::Dispatcher& mainThreadDispatcher() override { return dispatcher_; }
  const Envoy::LocalInfo::LocalInfo& localInfo() const override { return local_info_; }
  Envoy::Stats::Scope& scope() override { return scope_; }
  Envoy::Server::Configuration::StatsConfig& statsConfig() override { return stats_config_; }

  EpollDispatcher& dispatcher() { return dispatcher_; }
  MemoryScope& memoryScope() { return scope_; }
  FixedLocalInfo& localInfoForTest() { return local_info_; }

private:
  EpollDispatcher dispatcher_;
  MemoryScope scope_;
  FixedLocalInfo local_info_;
  FixedStatsConfig stats_config_;
};

} // namespace EnvoySmcTest
