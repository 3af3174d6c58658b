// Stand-in (tests only) for Envoy's envoy/local_info/local_info.h: node(), from which the shim
// reads the workload's annotations.
#pragma once

#include "envoy/common/pure.h"
#include "envoy/config/core/v3/base.pb.h"

namespace Envoy {
namespace LocalInfo {

class LocalInfo {
public:
  virtual ~LocalInfo() = default;
  virtual const envoy::config::core::v3::Node& node() const PURE;
};

} // namespace LocalInfo
} // namespace Envoy
