#include "smc_io_handle.h"

#include <utility>

#include "source/common/common/logger.h"

namespace Envoy {
namespace Network {
namespace Smc {

void ConnectRescue::rescue() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (handle_ != nullptr) {
    // The handle is alive, so its worker's dispatcher is too.
    dispatcher_->post([self = shared_from_this()]() { self->run(); });
  }
}

void ConnectRescue::detach() {
  std::lock_guard<std::mutex> lock(mutex_);
  handle_ = nullptr;
}

void ConnectRescue::run() {
  SmcIoHandle* handle = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    handle = handle_;
  }
  // The handle is destroyed on this thread only, so it cannot go away from here on.
  if (handle != nullptr) {
    handle->rescueConnect();
  }
}

SmcIoHandle::SmcIoHandle(RuntimeSharedPtr runtime, const envoy_smc_socket_state& state,
                         os_fd_t fd, bool socket_v6only, int domain)
    : IoSocketHandleImpl(fd, socket_v6only, domain), runtime_(std::move(runtime)), state_(state) {}

SmcIoHandle::~SmcIoHandle() {
  if (rescue_ != nullptr) {
    rescue_->detach();
  }
}

Api::SysCallIntResult SmcIoHandle::bind(Address::InstanceConstSharedPtr address) {
  // A rescue connects from the same source address (not port).
  if (!decided_) {
    source_ = address;
  }
  const Api::SysCallIntResult result = IoSocketHandleImpl::bind(address);
  if (!decided_ && result.return_value_ == 0) {
    bound_ = address;
  }
  // A listener update's new socket on the address of this process's shared AF_SMC listener
  // (Envoy's default enable_reuse_port in AF_SMC mode) cannot bind beside it: it takes the
  // listener over instead, so the update is not rejected and no connection is lost.
  if (!decided_ && result.return_value_ != 0 && result.errno_ == EADDRINUSE &&
      address->type() == Address::Type::Ip && address->sockAddr() != nullptr &&
      runtime_->joinSharedListener(fd_, state_, address->sockAddr(), address->sockAddrLen())) {
    decided_ = true;
    verdict_ = envoy_smc_verdict{};
    verdict_.kind = ENVOY_SMC_KIND_AF_SMC;
    verdict_.replaced = true;
    cb_ = nullptr;
    return {0, 0};
  }
  return result;
}

Api::SysCallIntResult SmcIoHandle::setOption(int level, int optname, const void* optval,
                                             socklen_t optlen) {
  const Api::SysCallIntResult result =
      IoSocketHandleImpl::setOption(level, optname, optval, optlen);
  // An option the kernel refused is not on the socket; Envoy fails the socket for it anyway.
  if (!decided_ && result.return_value_ == 0) {
    runtime_->noteSockopt(&state_, level, optname, optval, optlen);
    // Recorded (latest value wins) so that a replacement carries it without reading it back.
    std::string value(static_cast<const char*>(optval), optval != nullptr ? optlen : 0);
    bool found = false;
    for (auto& o : options_) {
      if (o.level == level && o.name == optname) {
        o.value = value;
        found = true;
      }
    }
    if (!found) {
      options_.push_back({level, optname, std::move(value)});
    }
  }
  return result;
}

Api::SysCallIntResult SmcIoHandle::listen(int backlog) {
  decideListener(false);
  return IoSocketHandleImpl::listen(backlog);
}

IoHandlePtr SmcIoHandle::duplicate() {
  // The duplicate shares this open file. Replacing the socket afterwards would leave the
  // duplicates on the old one, so it is settled before it is shared: the library's one rule
  // (a bound socket gets its listener decision, an unbound one stays TCP).
  decideListener(true);
  return IoSocketHandleImpl::duplicate();
}

envoy_smc_socket_record SmcIoHandle::record() const {
  envoy_smc_socket_record r{};
  r.options = option_views_.empty() ? nullptr : option_views_.data();
  r.n_options = option_views_.size();
  if (bound_ != nullptr && bound_->type() == Address::Type::Ip && bound_->sockAddr() != nullptr) {
    r.bound = bound_->sockAddr();
    r.bound_len = bound_->sockAddrLen();
  }
  return r;
}

Api::SysCallIntResult SmcIoHandle::connect(Address::InstanceConstSharedPtr address) {
  if (!decided_) {
    decided_ = true;
    envoy_smc_verdict verdict{};
    if (!activated_ && address->type() == Address::Type::Ip && address->sockAddr() != nullptr) {
      option_views_.clear();
      for (const auto& o : options_) {
        option_views_.push_back({o.level, o.name, o.value.data(),
                                 static_cast<socklen_t>(o.value.size())});
      }
      // Rescuable only with a file event to make again; without one, later connections are
      // still kept on TCP once the destination is proven black-holed.
      std::shared_ptr<ConnectRescue> rescue;
      if (file_event_ != nullptr && dispatcher_ != nullptr && cb_) {
        rescue = std::make_shared<ConnectRescue>(*dispatcher_, *this);
      }
      const bool had_event = file_event_ != nullptr;
      uint64_t cookie = 0;
      const bool applied =
          runtime_->onConnect(fd_, state_, record(), address->sockAddr(), address->sockAddrLen(),
                              &SmcIoHandle::beforeReplace, this, rescue, &cookie, &verdict);
      afterVerdict(verdict, had_event, applied, false);
      if (cookie != 0) {
        rescue_ = std::move(rescue);
        cookie_ = cookie;
        remote_ = address;
        source_ = bound_;
      }
    }
    options_.clear();
    option_views_.clear();
  }
  return IoSocketHandleImpl::connect(std::move(address));
}

bool SmcIoHandle::beforeReplace(void* self) {
  // Drop the epoll registration while the old socket still exists: once it is replaced, the
  // registration is gone with it and removing it would hit the new socket instead.
  static_cast<SmcIoHandle*>(self)->file_event_.reset();
  return true;
}

void SmcIoHandle::rescueConnect() {
  if (rescue_ == nullptr) {
    return;
  }
  rescue_->detach();
  rescue_.reset();
  // Closed meanwhile, or Envoy dropped the file event: nothing to carry over.
  if (!isOpen() || file_event_ == nullptr || dispatcher_ == nullptr || !cb_) {
    return;
  }
  // Drop the registration while the stuck socket still exists (as for a replacement).
  file_event_.reset();
  const sockaddr* source = source_ != nullptr ? source_->sockAddr() : nullptr;
  const socklen_t source_len = source_ != nullptr ? source_->sockAddrLen() : 0;
  const bool moved = runtime_->rescueConnect(fd_, cookie_, remote_->sockAddr(),
                                             remote_->sockAddrLen(), source, source_len);
  // Moved: a TCP connect is under way on the fd; not moved: the stuck socket is still there.
  // Either way the connection keeps its events.
  IoSocketHandleImpl::initializeFileEvent(*dispatcher_, cb_, trigger_, events_);
  cb_ = nullptr;
  if (moved) {
    ENVOY_LOG_MISC(info, "envoy-smc: connect on fd {} moved to TCP in flight", fd_);
  }
}

void SmcIoHandle::decideListener(bool duplicate) {
  if (decided_) {
    return;
  }
  decided_ = true;
  option_views_.clear();
  for (const auto& o : options_) {
    option_views_.push_back(
        {o.level, o.name, o.value.data(), static_cast<socklen_t>(o.value.size())});
  }
  const bool had_event = file_event_ != nullptr;
  envoy_smc_verdict verdict{};
  const bool applied = duplicate ? runtime_->onDup(fd_, state_, record(), &verdict)
                                 : runtime_->onListen(fd_, state_, record(), &verdict);
  afterVerdict(verdict, had_event, applied, true);
  options_.clear();
  option_views_.clear();
}

void SmcIoHandle::afterVerdict(const envoy_smc_verdict& verdict, bool had_event, bool applied,
                               bool listener) {
  // A listener has no file event before listen(); a replaced client socket had its event dropped
  // by beforeReplace. Either way, a new open file needs the event made again.
  if (had_event && (verdict.replaced || file_event_ == nullptr)) {
    file_event_.reset();
    IoSocketHandleImpl::initializeFileEvent(*dispatcher_, cb_, trigger_, events_);
  }
  verdict_ = verdict;
  // An SMC client keeps the callback until its connect is known not to need a rescue.
  if (listener || verdict.kind == ENVOY_SMC_KIND_TCP) {
    cb_ = nullptr;
  }
  if (!applied) {
    ENVOY_LOG_MISC(warn, "envoy-smc: could not decide the {} on fd {}; it stays TCP",
                   listener ? "listener" : "client", fd_);
  }
}

void SmcIoHandle::initializeFileEvent(Event::Dispatcher& dispatcher, Event::FileReadyCb cb,
                                      Event::FileTriggerType trigger, uint32_t events) {
  if (!decided_) {
    dispatcher_ = &dispatcher;
    cb_ = cb;
    trigger_ = trigger;
    events_ = events;
  }
  IoSocketHandleImpl::initializeFileEvent(dispatcher, std::move(cb), trigger, events);
}

void SmcIoHandle::activateFileEvents(uint32_t events) {
  if (!decided_) {
    activated_ = true;
  }
  IoSocketHandleImpl::activateFileEvents(events);
}

void SmcIoHandle::enableFileEvents(uint32_t events) {
  if (!decided_ || rescue_ != nullptr) {
    events_ = events;
  }
  IoSocketHandleImpl::enableFileEvents(events);
}

} // namespace Smc
} // namespace Network
} // namespace Envoy
