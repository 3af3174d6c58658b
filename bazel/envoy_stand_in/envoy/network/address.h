// Stand-in (tests only) for Envoy's envoy/network/address.h: the address interfaces the shim
// reads (type, ip version, v6only, the sockaddr). Members the shim does not use are left out.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>

#include "envoy/common/platform.h"
#include "envoy/common/pure.h"

namespace Envoy {
namespace Network {

class SocketInterface;

namespace Address {

class Instance;
using InstanceConstSharedPtr = std::shared_ptr<const Instance>;

class Ipv6 {
public:
  virtual ~Ipv6() = default;
  virtual bool v6only() const PURE;
};

enum class IpVersion { v4, v6 }; // NOLINT(readability-identifier-naming)

class Ip {
public:
  virtual ~Ip() = default;
  virtual const std::string& addressAsString() const PURE;
  virtual const Ipv6* ipv6() const PURE;
  virtual uint32_t port() const PURE;
  virtual IpVersion version() const PURE;
};

enum class Type { Ip, Pipe, EnvoyInternal };

class Instance {
public:
  virtual ~Instance() = default;
  virtual const std::string& asString() const PURE;
  virtual const Ip* ip() const PURE;
  virtual const sockaddr* sockAddr() const PURE;
  virtual socklen_t sockAddrLen() const PURE;
  virtual Type type() const PURE;
};

} // namespace Address
} // namespace Network
} // namespace Envoy
