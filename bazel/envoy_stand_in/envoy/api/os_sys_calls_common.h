// Stand-in (tests only) for Envoy's envoy/api/os_sys_calls_common.h: the result type of the
// IoHandle calls the shim overrides.
#pragma once

#include <sys/types.h>

namespace Envoy {
namespace Api {

template <typename T> struct SysCallResult {
  T return_value_;
  int errno_;
};

using SysCallIntResult = SysCallResult<int>;
using SysCallSizeResult = SysCallResult<ssize_t>;

} // namespace Api
} // namespace Envoy
