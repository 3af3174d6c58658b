// Stand-in (tests only) for the two Config::Utility functions of Envoy's
// source/common/config/utility.h that the server uses to create a bootstrap extension:
// getAndCheckFactory (by the type URL of typed_config, the default since
// envoy.reloadable_features.no_extension_lookup_by_name; an unknown type throws) and
// translateAnyToFactoryConfig (unpacks the Any into the factory's empty config proto).
#pragma once

#include <string>

#include "envoy/common/exception.h"
#include "envoy/registry/registry.h"

#include "source/common/protobuf/protobuf.h"

#include "google/protobuf/any.pb.h"

namespace Envoy {
namespace Config {
namespace Utility {

inline std::string typeUrlToFullName(const std::string& type_url) {
  const auto slash = type_url.rfind('/');
  return slash == std::string::npos ? type_url : type_url.substr(slash + 1);
}

// ProtoMessage: anything with name() and typed_config() (TypedExtensionConfig).
template <class Factory, class ProtoMessage>
Factory& getAndCheckFactory(const ProtoMessage& message) {
  const std::string type = typeUrlToFullName(message.typed_config().type_url());
  Factory* factory = type.empty() ? nullptr : Registry::FactoryRegistry<Factory>::getFactoryByType(type);
  if (factory == nullptr) {
    throw EnvoyException("Didn't find a registered implementation for '" + message.name() +
                         "' with type URL: '" + type + "'");
  }
  return *factory;
}

template <class Factory>
ProtobufTypes::MessagePtr translateAnyToFactoryConfig(const google::protobuf::Any& typed_config,
                                                      Factory& factory) {
  ProtobufTypes::MessagePtr config = factory.createEmptyConfigProto();
  if (!typed_config.UnpackTo(config.get())) {
    throw EnvoyException("Unable to unpack as " + config->GetDescriptor()->full_name());
  }
  return config;
}

} // namespace Utility
} // namespace Config
} // namespace Envoy
