// Behaviour of the stand-in dispatcher (tests only); see dispatcher_impl.h. Not Envoy code.
#include "source/common/event/dispatcher_impl.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>

namespace Envoy {
namespace Event {

EpollFileEvent::EpollFileEvent(DispatcherImpl& dispatcher, int fd, FileReadyCb cb,
                               FileTriggerType trigger, uint32_t events)
    : dispatcher_(dispatcher), fd_(fd), cb_(std::move(cb)), trigger_(trigger) {
  epoll_event ev{};
  ev.events = epollEvents(events);
  ev.data.ptr = this;
  if (::epoll_ctl(dispatcher_.epoll_fd_, EPOLL_CTL_ADD, fd_, &ev) != 0) {
    throw std::runtime_error("stand-in dispatcher: epoll_ctl ADD failed, errno " +
                             std::to_string(errno));
  }
}

EpollFileEvent::~EpollFileEvent() {
  if (::epoll_ctl(dispatcher_.epoll_fd_, EPOLL_CTL_DEL, fd_, nullptr) != 0) {
    ++dispatcher_.removal_errors_;
  }
  auto& live = dispatcher_.live_;
  live.erase(std::remove(live.begin(), live.end(), this), live.end());
}

uint32_t EpollFileEvent::epollEvents(uint32_t events) const {
  uint32_t out = 0;
  if (events & FileReadyType::Read) {
    out |= EPOLLIN;
  }
  if (events & FileReadyType::Write) {
    out |= EPOLLOUT;
  }
  if (events & FileReadyType::Closed) {
    out |= EPOLLRDHUP;
  }
  if (trigger_ == FileTriggerType::Edge) {
    out |= EPOLLET;
  }
  return out;
}

void EpollFileEvent::setEnabled(uint32_t events) {
  epoll_event ev{};
  ev.events = epollEvents(events);
  ev.data.ptr = this;
  if (::epoll_ctl(dispatcher_.epoll_fd_, EPOLL_CTL_MOD, fd_, &ev) != 0) {
    throw std::runtime_error("stand-in dispatcher: epoll_ctl MOD failed, errno " +
                             std::to_string(errno));
  }
}

void EpollFileEvent::fire(uint32_t events) {
  const absl::Status status = cb_(events);
  if (!status.ok()) {
    throw std::runtime_error("file event callback failed: " + status.message());
  }
}

TimerImpl::TimerImpl(DispatcherImpl& dispatcher, TimerCb cb)
    : dispatcher_(dispatcher), cb_(std::move(cb)) {
  dispatcher_.timers_.push_back(this);
}

TimerImpl::~TimerImpl() {
  auto& timers = dispatcher_.timers_;
  timers.erase(std::remove(timers.begin(), timers.end(), this), timers.end());
}

void TimerImpl::enableTimer(std::chrono::milliseconds ms, const ScopeTrackedObject*) {
  enabled_ = true;
  interval_ = ms;
  deadline_ = std::chrono::steady_clock::now() + ms;
}

DispatcherImpl::DispatcherImpl(std::string name)
    : name_(std::move(name)), thread_(std::this_thread::get_id()),
      epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (epoll_fd_ < 0) {
    throw std::runtime_error("stand-in dispatcher: epoll_create1 failed");
  }
}

DispatcherImpl::~DispatcherImpl() { ::close(epoll_fd_); }

FileEventPtr DispatcherImpl::createFileEvent(os_fd_t fd, FileReadyCb cb, FileTriggerType trigger,
                                             uint32_t events) {
  auto event = std::make_unique<EpollFileEvent>(*this, fd, std::move(cb), trigger, events);
  live_.push_back(event.get());
  ++file_events_created_;
  return event;
}

TimerPtr DispatcherImpl::createTimer(TimerCb cb) {
  return std::make_unique<TimerImpl>(*this, std::move(cb));
}

void DispatcherImpl::post(PostCb callback) {
  std::lock_guard<std::mutex> lock(posted_mutex_);
  posted_.push_back(std::move(callback));
}

int DispatcherImpl::runOnce(int timeout_ms) {
  int ran = 0;
  std::vector<PostCb> posted;
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    posted.swap(posted_);
  }
  for (auto& callback : posted) {
    callback();
    ++ran;
  }
  const auto now = std::chrono::steady_clock::now();
  for (TimerImpl* timer : std::vector<TimerImpl*>(timers_)) {
    if (std::find(timers_.begin(), timers_.end(), timer) != timers_.end() && timer->due(now)) {
      timer->fire();
      ++ran;
    }
  }
  for (EpollFileEvent* event : std::vector<EpollFileEvent*>(live_)) {
    if (std::find(live_.begin(), live_.end(), event) == live_.end()) {
      continue;
    }
    if (const uint32_t injected = event->takeInjected(); injected != 0) {
      event->fire(injected);
      ++ran;
    }
  }
  if (ran > 0) {
    return ran;
  }
  for (TimerImpl* timer : timers_) {
    if (timer->enabled() && timer->deadline() > now) {
      const auto wait =
          std::chrono::duration_cast<std::chrono::milliseconds>(timer->deadline() - now).count() + 1;
      timeout_ms = std::min<int>(timeout_ms, static_cast<int>(wait));
    }
  }
  epoll_event events[16];
  const int n = ::epoll_wait(epoll_fd_, events, 16, timeout_ms);
  for (int i = 0; i < n; ++i) {
    uint32_t ready = 0;
    if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      ready |= FileReadyType::Read;
    }
    if (events[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
      ready |= FileReadyType::Write;
    }
    if (events[i].events & EPOLLRDHUP) {
      ready |= FileReadyType::Closed;
    }
    static_cast<EpollFileEvent*>(events[i].data.ptr)->fire(ready);
    ++ran;
  }
  return ran;
}

} // namespace Event
} // namespace Envoy
