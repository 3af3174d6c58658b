// Stand-in (tests only) for the Node message of Envoy's generated envoy/config/core/v3/base.pb.h:
// only the metadata Struct, where Istio puts node.metadata.ANNOTATIONS. The Struct is the real
// protobuf well-known type.
#pragma once

#include "google/protobuf/struct.pb.h"

namespace envoy {
namespace config {
namespace core {
namespace v3 {

class Node {
public:
  const google::protobuf::Struct& metadata() const { return metadata_; }
  google::protobuf::Struct* mutable_metadata() { return &metadata_; }

private:
  google::protobuf::Struct metadata_;
};

} // namespace v3
} // namespace core
} // namespace config
} // namespace envoy
