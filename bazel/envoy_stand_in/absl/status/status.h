// Stand-in (tests only) for abseil's absl/status/status.h: just enough for Envoy's
// Event::FileReadyCb signature. Not abseil code.
#pragma once

#include <string>
#include <utility>

namespace absl {

class Status {
public:
  Status() = default;
  explicit Status(std::string message) : ok_(false), message_(std::move(message)) {}
  bool ok() const { return ok_; }
  const std::string& message() const { return message_; }

private:
  bool ok_{true};
  std::string message_;
};

inline Status OkStatus() { return Status(); }

} // namespace absl
