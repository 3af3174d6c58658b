// Stand-in (tests only) for Envoy's envoy/event/timer.h: TimerCb and the Timer members the
// counter mirror uses (enableTimer(std::chrono::milliseconds, const ScopeTrackedObject* =
// nullptr), disableTimer, enabled), with the real signatures.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "envoy/common/pure.h"

namespace Envoy {

class ScopeTrackedObject;

namespace Event {

using TimerCb = std::function<void()>;

class Timer {
public:
  virtual ~Timer() = default;
  virtual void disableTimer() PURE;
  virtual void enableTimer(std::chrono::milliseconds ms,
                           const ScopeTrackedObject* object = nullptr) PURE;
  virtual bool enabled() PURE;
};

using TimerPtr = std::unique_ptr<Timer>;

} // namespace Event
} // namespace Envoy
