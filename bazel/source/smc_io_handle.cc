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
  }
  return result;
}

Api::SysCallIntResult SmcIoHandle::listen(int backlog) {
  decideListener();
  return IoSocketHandleImpl::listen(backlog);
}

IoHandlePtr SmcIoHandle::duplicate() {
  // The duplicate shares this open file. Replacing the socket afterwards would leave the
  // duplicates on the old one, so the listener is decided before it is shared.
  decideListener();
  return IoSocketHandleImpl::duplicate();
}

Api::SysCallIntResult SmcIoHandle::connect(Address::InstanceConstSharedPtr address) {
  if (!decided_) {
    decided_ = true;
    envoy_smc_verdict verdict{};
    if (!activated_ && address->type() == Address::Type::Ip && address->sockAddr() != nullptr &&
        runtime_->decideConnect(state_, address->sockAddr(), address->sockAddrLen(), &verdict)) {
      carryOut(verdict, false);
      if (verdict_.kind != ENVOY_SMC_KIND_TCP) {
        watch(address);
      }
    }
  }
  return IoSocketHandleImpl::connect(std::move(address));
}

void SmcIoHandle::watch(const Address::InstanceConstSharedPtr& address) {
  // Rescuable only with a file event to make again; without one, later connections are still
  // kept on TCP once the destination is proven black-holed.
  if (file_event_ == nullptr || dispatcher_ == nullptr || !cb_) {
    runtime_->watchConnect(fd_, address->sockAddr(), address->sockAddrLen());
    return;
  }
  auto rescue = std::make_shared<ConnectRescue>(*dispatcher_, *this);
  cookie_ = runtime_->watchRescuableConnect(fd_, address->sockAddr(), address->sockAddrLen(),
                                            rescue);
  if (cookie_ != 0) {
    rescue_ = std::move(rescue);
    remote_ = address;
  }
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

void SmcIoHandle::decideListener() {
  if (decided_) {
    return;
  }
  decided_ = true;
  envoy_smc_verdict verdict{};
  if (runtime_->decideListen(fd_, state_, &verdict)) {
    carryOut(verdict, true);
  }
}

void SmcIoHandle::carryOut(envoy_smc_verdict verdict, bool listener) {
  // Drop the epoll registration while the old socket still exists: once it is replaced, the
  // registration is gone with it and removing it would hit the new socket instead.
  const bool had_event = file_event_ != nullptr;
  const bool re_register = had_event && verdict.kind != ENVOY_SMC_KIND_TCP;
  if (re_register) {
    file_event_.reset();
  }
  const bool applied = listener ? runtime_->applyListen(fd_, state_, &verdict)
                                : runtime_->applyConnect(fd_, state_, &verdict);
  if (had_event && (re_register || verdict.replaced)) {
    file_event_.reset();
    IoSocketHandleImpl::initializeFileEvent(*dispatcher_, cb_, trigger_, events_);
  }
  verdict_ = verdict;
  // An SMC client keeps the callback until its connect is known not to need a rescue.
  if (listener || verdict.kind == ENVOY_SMC_KIND_TCP) {
    cb_ = nullptr;
  }
  if (!applied) {
    ENVOY_LOG_MISC(warn, "envoy-smc: could not carry out the {} verdict on fd {}; it stays TCP",
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
