// Stand-in (tests only) for Envoy's envoy/config/typed_config.h: the factory base every
// bootstrap extension factory derives from.
#pragma once

#include <string>

#include "envoy/common/pure.h"

#include "source/common/protobuf/protobuf.h"

namespace Envoy {
namespace Config {

class UntypedFactory {
public:
  virtual ~UntypedFactory() = default;
  virtual std::string name() const PURE;
  virtual std::string category() const PURE;
};

class TypedFactory : public UntypedFactory {
public:
  virtual ProtobufTypes::MessagePtr createEmptyConfigProto() PURE;
};

} // namespace Config
} // namespace Envoy
