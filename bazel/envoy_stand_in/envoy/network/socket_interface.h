// Stand-in (tests only) for Envoy's envoy/network/socket_interface.h: SocketCreationOptions (:15,
// mptcp_enabled_ :18, max_addresses_cache_size_ :24) and the SocketInterface the shim implements
// (:32; socket() :46-47 and :57-58, ipFamilySupported :64; line numbers of the stored version
// read, which has the options' operator== too).
#pragma once

#include <cstddef>

#include "envoy/common/pure.h"
#include "envoy/network/address.h"
#include "envoy/network/io_handle.h"
#include "envoy/network/socket.h"

namespace Envoy {
namespace Network {

struct SocketCreationOptions {
  bool mptcp_enabled_{false};
  size_t max_addresses_cache_size_{0};
};

class SocketInterface {
public:
  virtual ~SocketInterface() = default;
  virtual IoHandlePtr socket(Socket::Type type, Address::Type addr_type, Address::IpVersion version,
                             bool socket_v6only, const SocketCreationOptions& options) const PURE;
  virtual IoHandlePtr socket(Socket::Type socket_type, const Address::InstanceConstSharedPtr addr,
                             const SocketCreationOptions& options) const PURE;
  virtual bool ipFamilySupported(int domain) PURE;
};

} // namespace Network
} // namespace Envoy
