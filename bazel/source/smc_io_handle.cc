#include "smc_io_handle.h"

#include <utility>

#include "source/common/common/logger.h"

namespace Envoy {
namespace Network {
namespace Smc {

SmcIoHandle::SmcIoHandle(RuntimeSharedPtr runtime, const envoy_smc_socket_state& state,
                         os_fd_t fd, bool socket_v6only, int domain)
    : IoSocketHandleImpl(fd, socket_v6only, domain), runtime_(std::move(runtime)), state_(state) {}

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
        runtime_->watchConnect(fd_, address->sockAddr(), address->sockAddrLen());
      }
    }
  }
  return IoSocketHandleImpl::connect(std::move(address));
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
  cb_ = nullptr;
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
  if (!decided_) {
    events_ = events;
  }
  IoSocketHandleImpl::enableFileEvents(events);
}

} // namespace Smc
} // namespace Network
} // namespace Envoy
