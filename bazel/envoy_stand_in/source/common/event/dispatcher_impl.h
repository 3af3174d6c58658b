// Stand-in (tests only) for Envoy's source/common/event/dispatcher_impl.h: an event loop on a real
// epoll instance with file events (edge- or level-triggered, like Envoy's libevent ones), timers
// with real deadlines and a cross-thread post() queue. Like Envoy's, posted callbacks and timers
// run only while the loop runs (runOnce here; Dispatcher::run in Envoy), never at creation.
// For tests it also counts file events created and records a failed epoll removal: removing a
// registration after the socket under the fd was replaced is the mistake the shim must not make.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "envoy/event/dispatcher.h"

namespace Envoy {
namespace Event {

class DispatcherImpl;

class EpollFileEvent : public FileEvent {
public:
  EpollFileEvent(DispatcherImpl& dispatcher, int fd, FileReadyCb cb, FileTriggerType trigger,
                 uint32_t events);
  ~EpollFileEvent() override;

  void activate(uint32_t events) override { injected_ |= events; }
  void setEnabled(uint32_t events) override;
  void registerEventIfEmulatedEdge(uint32_t) override {}
  void unregisterEventIfEmulatedEdge(uint32_t) override {}

  void fire(uint32_t events);
  uint32_t takeInjected() {
    const uint32_t injected = injected_;
    injected_ = 0;
    return injected;
  }

private:
  uint32_t epollEvents(uint32_t events) const;

  DispatcherImpl& dispatcher_;
  const int fd_;
  FileReadyCb cb_;
  const FileTriggerType trigger_;
  uint32_t injected_{0};
};

class TimerImpl : public Timer {
public:
  TimerImpl(DispatcherImpl& dispatcher, TimerCb cb);
  ~TimerImpl() override;
  void disableTimer() override { enabled_ = false; }
  void enableTimer(std::chrono::milliseconds ms, const ScopeTrackedObject* = nullptr) override;
  bool enabled() override { return enabled_; }

  bool due(std::chrono::steady_clock::time_point now) const { return enabled_ && deadline_ <= now; }
  std::chrono::steady_clock::time_point deadline() const { return deadline_; }
  std::chrono::milliseconds interval() const { return interval_; }
  void fire() {
    enabled_ = false;
    cb_();
  }

private:
  DispatcherImpl& dispatcher_;
  TimerCb cb_;
  bool enabled_{false};
  std::chrono::milliseconds interval_{0};
  std::chrono::steady_clock::time_point deadline_{};
};

class DispatcherImpl : public Dispatcher {
public:
  explicit DispatcherImpl(std::string name);
  ~DispatcherImpl() override;

  // Dispatcher
  const std::string& name() override { return name_; }
  void post(PostCb callback) override;
  bool isThreadSafe() const override { return std::this_thread::get_id() == thread_; }
  FileEventPtr createFileEvent(os_fd_t fd, FileReadyCb cb, FileTriggerType trigger,
                               uint32_t events) override;
  TimerPtr createTimer(TimerCb cb) override;

  // One loop iteration: posted callbacks, due timers, pending activations, then one epoll_wait
  // (at most timeout_ms, less when a timer is due sooner). Returns how many callbacks ran.
  int runOnce(int timeout_ms);

  int epollFd() const { return epoll_fd_; }
  int fileEventsCreated() const { return file_events_created_; }
  int removalErrors() const { return removal_errors_; }
  const std::vector<TimerImpl*>& timers() const { return timers_; }

private:
  friend class EpollFileEvent;
  friend class TimerImpl;

  const std::string name_;
  const std::thread::id thread_;
  const int epoll_fd_;
  std::vector<EpollFileEvent*> live_;
  std::vector<TimerImpl*> timers_;
  int file_events_created_{0};
  int removal_errors_{0};
  std::mutex posted_mutex_;
  std::vector<PostCb> posted_;
};

} // namespace Event
} // namespace Envoy
