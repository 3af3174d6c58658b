// Stand-in (tests only) for Envoy's source/common/network/socket_interface_impl.h: the default
// socket interface the shim derives from. Same public/protected surface as the real class
// minus io_uring; behaviour (domain and flags chosen inside socket(), IPV6_V6ONLY set by the
// address overload, which calls the other overload by qualified name) follows the real one.
#pragma once

#include "envoy/network/socket.h"

#include "source/common/network/socket_interface.h"

namespace Envoy {
namespace Network {

class SocketInterfaceImpl : public SocketInterfaceBase {
public:
  IoHandlePtr socket(Socket::Type socket_type, Address::Type addr_type, Address::IpVersion version,
                     bool socket_v6only, const SocketCreationOptions& options) const override;
  IoHandlePtr socket(Socket::Type socket_type, const Address::InstanceConstSharedPtr addr,
                     const SocketCreationOptions& options) const override;
  bool ipFamilySupported(int domain) override;

  Server::BootstrapExtensionPtr
  createBootstrapExtension(const Protobuf::Message& config,
                           Server::Configuration::ServerFactoryContext& context) override;
  ProtobufTypes::MessagePtr createEmptyConfigProto() override;
  std::string name() const override {
    return "envoy.extensions.network.socket_interface.default_socket_interface";
  }

protected:
  virtual IoHandlePtr makeSocket(int socket_fd, bool socket_v6only, Socket::Type socket_type,
                                 absl::optional<int> domain,
                                 const SocketCreationOptions& options) const;
};

} // namespace Network
} // namespace Envoy
