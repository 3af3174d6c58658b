// Stand-in (tests only) for Envoy's source/common/network/socket_interface.h: the bootstrap
// extension wrapper a socket interface returns, and SocketInterfaceBase. As in Envoy 1.40 the
// wrapper implements both BootstrapExtension hooks as no-ops.
#pragma once

#include "envoy/network/socket_interface.h"
#include "envoy/registry/registry.h"
#include "envoy/server/bootstrap_extension_config.h"

namespace Envoy {
namespace Network {

class SocketInterfaceExtension : public Server::BootstrapExtension {
public:
  SocketInterfaceExtension(SocketInterface& sock_interface) : sock_interface_(sock_interface) {}
  void onServerInitialized(Server::Instance&) override {}
  void onWorkerThreadInitialized() override {}

protected:
  SocketInterface& sock_interface_;
};

class SocketInterfaceBase : public SocketInterface,
                            public Server::Configuration::BootstrapExtensionFactory {};

} // namespace Network
} // namespace Envoy
