// Stand-in (tests only) for Envoy's envoy/event/dispatcher.h: only createFileEvent, createTimer
// and post, the Dispatcher calls the shim makes. Tests provide an implementation. (Real: post()
// is declared in DispatcherBase and PostCb is absl::AnyInvocable<void()>; a copyable lambda
// converts to either.)
#pragma once

#include <cstdint>
#include <functional>

#include "envoy/common/platform.h"
#include "envoy/common/pure.h"
#include "envoy/event/file_event.h"
#include "envoy/event/timer.h"

namespace Envoy {
namespace Event {

using PostCb = std::function<void()>;

class Dispatcher {
public:
  virtual ~Dispatcher() = default;
  // Safe from any thread: runs callback on the dispatcher's thread.
  virtual void post(PostCb callback) PURE;
  virtual FileEventPtr createFileEvent(os_fd_t fd, FileReadyCb cb, FileTriggerType trigger,
                                       uint32_t events) PURE;
  virtual TimerPtr createTimer(TimerCb cb) PURE;
};

} // namespace Event
} // namespace Envoy
