// Stand-in (tests only) for Envoy's envoy/event/dispatcher.h: only createFileEvent and
// createTimer, the two Dispatcher calls the shim makes. Tests provide an implementation.
#pragma once

#include <cstdint>

#include "envoy/common/platform.h"
#include "envoy/common/pure.h"
#include "envoy/event/file_event.h"
#include "envoy/event/timer.h"

namespace Envoy {
namespace Event {

class Dispatcher {
public:
  virtual ~Dispatcher() = default;
  virtual FileEventPtr createFileEvent(os_fd_t fd, FileReadyCb cb, FileTriggerType trigger,
                                       uint32_t events) PURE;
  virtual TimerPtr createTimer(TimerCb cb) PURE;
};

} // namespace Event
} // namespace Envoy
