// Stand-in (tests only) for abseil's absl/types/optional.h. Envoy builds abseil with
// ABSL_USES_STD_OPTIONAL, where absl::optional is std::optional; the stand-in does the same.
#pragma once

#include <optional>

namespace absl {
using std::nullopt;
using std::optional;
} // namespace absl
