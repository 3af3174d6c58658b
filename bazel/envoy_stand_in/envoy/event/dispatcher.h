// Stand-in (tests only) for Envoy's envoy/event/dispatcher.h. As in the real header:
// PostCb = absl::AnyInvocable<void()> (:57, move-only), post() is declared on DispatcherBase
// (:65, :73), Dispatcher derives from it (:112) and adds createFileEvent (:129) and createTimer
// (:136). (Line numbers of the stored 1.3x-era version read; the declarations are the same in
// 1.36 and 1.40.) The real Dispatcher has some thirty more members (connections, DNS, scaled
// timers, run(), ...); the stand-in declares what the shim and the stand-in server use, and
// Event::DispatcherImpl (source/common/event/dispatcher_impl.h) implements them over epoll.
#pragma once

#include <cstdint>
#include <string>

#include "envoy/common/platform.h"
#include "envoy/common/pure.h"
#include "envoy/event/file_event.h"
#include "envoy/event/timer.h"

#include "absl/functional/any_invocable.h"

namespace Envoy {
namespace Event {

using PostCb = absl::AnyInvocable<void()>;

class DispatcherBase {
public:
  virtual ~DispatcherBase() = default;
  // Safe from any thread: the callback runs on the dispatcher's thread, in its event loop.
  virtual void post(PostCb callback) PURE;
  virtual bool isThreadSafe() const PURE;
};

class Dispatcher : public DispatcherBase {
public:
  virtual const std::string& name() PURE;
  virtual FileEventPtr createFileEvent(os_fd_t fd, FileReadyCb cb, FileTriggerType trigger,
                                       uint32_t events) PURE;
  virtual TimerPtr createTimer(TimerCb cb) PURE;
};

} // namespace Event
} // namespace Envoy
