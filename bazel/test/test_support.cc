#include "test_support.h"

#include <cerrno>
#include <unistd.h>

#include <algorithm>

namespace EnvoySmcTest {

std::vector<TestCase>& allTests() {
  static auto* tests = new std::vector<TestCase>();
  return *tests;
}

EpollFileEvent::EpollFileEvent(EpollDispatcher& dispatcher, int fd, Envoy::Event::FileReadyCb cb,
                               Envoy::Event::FileTriggerType trigger, uint32_t events)
    : dispatcher_(dispatcher), fd_(fd), cb_(std::move(cb)), trigger_(trigger), enabled_(events) {
  epoll_event ev{};
  ev.events = epollEvents(events);
  ev.data.ptr = this;
  if (::epoll_ctl(dispatcher_.epollFd(), EPOLL_CTL_ADD, fd_, &ev) != 0) {
    throw Failure("epoll_ctl ADD failed: errno " + std::to_string(errno));
  }
}

EpollFileEvent::~EpollFileEvent() {
  if (::epoll_ctl(dispatcher_.epollFd(), EPOLL_CTL_DEL, fd_, nullptr) != 0) {
    dispatcher_.noteRemovalError();
  }
  dispatcher_.forget(this);
}

uint32_t EpollFileEvent::epollEvents(uint32_t events) const {
  uint32_t out = 0;
  if (events & Envoy::Event::FileReadyType::Read) {
    out |= EPOLLIN;
  }
  if (events & Envoy::Event::FileReadyType::Write) {
    out |= EPOLLOUT;
  }
  if (events & Envoy::Event::FileReadyType::Closed) {
    out |= EPOLLRDHUP;
  }
  if (trigger_ == Envoy::Event::FileTriggerType::Edge) {
    out |= EPOLLET;
  }
  return out;
}

void EpollFileEvent::setEnabled(uint32_t events) {
  enabled_ = events;
  epoll_event ev{};
  ev.events = epollEvents(events);
  ev.data.ptr = this;
  if (::epoll_ctl(dispatcher_.epollFd(), EPOLL_CTL_MOD, fd_, &ev) != 0) {
    throw Failure("epoll_ctl MOD failed: errno " + std::to_string(errno));
  }
}

void EpollFileEvent::fire(uint32_t events) {
  const absl::Status status = cb_(events);
  if (!status.ok()) {
    throw Failure("file event callback failed: " + status.message());
  }
}

EpollDispatcher::EpollDispatcher() : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (epoll_fd_ < 0) {
    throw Failure("epoll_create1 failed");
  }
}

EpollDispatcher::~EpollDispatcher() { ::close(epoll_fd_); }

Envoy::Event::FileEventPtr EpollDispatcher::createFileEvent(os_fd_t fd,
                                                            Envoy::Event::FileReadyCb cb,
                                                            Envoy::Event::FileTriggerType trigger,
                                                            uint32_t events) {
  auto event = std::make_unique<EpollFileEvent>(*this, fd, std::move(cb), trigger, events);
  live_.push_back(event.get());
  ++file_events_created_;
  return event;
}

Envoy::Event::TimerPtr EpollDispatcher::createTimer(Envoy::Event::TimerCb cb) {
  auto timer = std::make_unique<ManualTimer>(std::move(cb));
  last_timer_ = timer.get();
  return timer;
}

void EpollDispatcher::forget(EpollFileEvent* event) {
  live_.erase(std::remove(live_.begin(), live_.end(), event), live_.end());
}

void EpollDispatcher::post(Envoy::Event::PostCb callback) {
  std::lock_guard<std::mutex> lock(posted_mutex_);
  posted_.push_back(std::move(callback));
}

int EpollDispatcher::runOnce(int timeout_ms) {
  int ran = 0;
  std::vector<Envoy::Event::PostCb> posted;
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    posted.swap(posted_);
  }
  for (auto& callback : posted) {
    callback();
    ++ran;
  }
  for (EpollFileEvent* event : std::vector<EpollFileEvent*>(live_)) {
    if (const uint32_t injected = event->takeInjected(); injected != 0) {
      event->fire(injected);
      ++ran;
    }
  }
  if (ran > 0) {
    return ran;
  }
  epoll_event events[16];
  const int n = ::epoll_wait(epoll_fd_, events, 16, timeout_ms);
  for (int i = 0; i < n; ++i) {
    uint32_t ready = 0;
    if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      ready |= Envoy::Event::FileReadyType::Read;
    }
    if (events[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
      ready |= Envoy::Event::FileReadyType::Write;
    }
    if (events[i].events & EPOLLRDHUP) {
      ready |= Envoy::Event::FileReadyType::Closed;
    }
    static_cast<EpollFileEvent*>(events[i].data.ptr)->fire(ready);
    ++ran;
  }
  return ran;
}

} // namespace EnvoySmcTest
