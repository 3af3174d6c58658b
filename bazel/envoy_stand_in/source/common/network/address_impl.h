// Stand-in (tests only) for Envoy's source/common/network/address_impl.h: Address::forceV6()
// (false on Linux unless a runtime flag says otherwise; always false here) and minimal
// Ipv4Instance / Ipv6Instance / PipeInstance for tests to build addresses with. The real
// classes resolve, validate and cache far more; these only fill a sockaddr. The Ipv4Instance and
// Ipv6Instance constructors take the real ones' parameters (a SocketInterface* before v6only);
// the socket interface is ignored.
#pragma once

#include <sys/un.h>

#include <string>

#include "envoy/network/address.h"

namespace Envoy {
namespace Network {
namespace Address {

bool forceV6();

class InstanceBase : public Instance {
public:
  const std::string& asString() const override { return friendly_name_; }
  const sockaddr* sockAddr() const override { return reinterpret_cast<const sockaddr*>(&ss_); }
  socklen_t sockAddrLen() const override { return len_; }

protected:
  sockaddr_storage ss_{};
  socklen_t len_{0};
  std::string friendly_name_;
};

class Ipv4Instance : public InstanceBase, public Ip {
public:
  Ipv4Instance(const std::string& address, uint32_t port,
               const SocketInterface* sock_interface = nullptr);
  const Ip* ip() const override { return this; }
  Type type() const override { return Type::Ip; }
  const std::string& addressAsString() const override { return address_; }
  const Ipv6* ipv6() const override { return nullptr; }
  uint32_t port() const override;
  IpVersion version() const override { return IpVersion::v4; }

private:
  std::string address_;
};

class Ipv6Instance : public InstanceBase, public Ip, public Ipv6 {
public:
  Ipv6Instance(const std::string& address, uint32_t port,
               const SocketInterface* sock_interface = nullptr, bool v6only = true);
  const Ip* ip() const override { return this; }
  Type type() const override { return Type::Ip; }
  const std::string& addressAsString() const override { return address_; }
  const Ipv6* ipv6() const override { return this; }
  uint32_t port() const override;
  IpVersion version() const override { return IpVersion::v6; }
  bool v6only() const override { return v6only_; }

private:
  std::string address_;
  bool v6only_;
};

class PipeInstance : public InstanceBase {
public:
  explicit PipeInstance(const std::string& path);
  const Ip* ip() const override { return nullptr; }
  Type type() const override { return Type::Pipe; }
};

} // namespace Address
} // namespace Network
} // namespace Envoy
