// Stand-in (tests only) for Envoy's source/common/protobuf/protobuf.h: the Protobuf namespace
// alias and ProtobufTypes::MessagePtr, over the real protobuf library.
#pragma once

#include <memory>

#include "google/protobuf/message.h"
#include "google/protobuf/struct.pb.h"

namespace Envoy {

namespace Protobuf = google::protobuf;

namespace ProtobufTypes {
using MessagePtr = std::unique_ptr<Protobuf::Message>;
} // namespace ProtobufTypes

} // namespace Envoy
