// Stand-in (tests only) for Envoy's envoy/config/typed_config.h: the factory base every
// bootstrap extension factory derives from. configType() stands in for the real configTypes():
// the full name of the message createEmptyConfigProto() returns, which the registry matches
// against a typed_config's type URL.
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
  std::string configType() { return createEmptyConfigProto()->GetDescriptor()->full_name(); }
};

} // namespace Config
} // namespace Envoy
