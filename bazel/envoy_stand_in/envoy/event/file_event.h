// Stand-in (tests only) for Envoy's envoy/event/file_event.h: FileReadyType (:14-21),
// FileTriggerType (:23-39), FileReadyCb = std::function<absl::Status(uint32_t)> (:59) and
// FileEvent, as the shim's IoHandle re-creates its file event with them (line numbers of the
// 1.40-dev version read for the earlier stand-in).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "envoy/common/pure.h"

#include "absl/status/status.h"

namespace Envoy {
namespace Event {

struct FileReadyType {
  static constexpr uint32_t Read = 0x1;
  static constexpr uint32_t Write = 0x2;
  static constexpr uint32_t Closed = 0x4;
};

enum class FileTriggerType { Level, Edge, EmulatedEdge };

using FileReadyCb = std::function<absl::Status(uint32_t events)>;

class FileEvent {
public:
  virtual ~FileEvent() = default;
  virtual void activate(uint32_t events) PURE;
  virtual void setEnabled(uint32_t events) PURE;
  virtual void registerEventIfEmulatedEdge(uint32_t event) PURE;
  virtual void unregisterEventIfEmulatedEdge(uint32_t event) PURE;
};

using FileEventPtr = std::unique_ptr<FileEvent>;

} // namespace Event
} // namespace Envoy
