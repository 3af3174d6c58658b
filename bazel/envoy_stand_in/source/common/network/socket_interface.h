// Stand-in (tests only) for Envoy's source/common/network/socket_interface.h:
// - SocketInterfaceExtension, the bootstrap extension a socket interface returns; it implements
//   both BootstrapExtension hooks as no-ops (Envoy 1.40's sockmap extension,
//   source/extensions/network/socket_interface/sockmap/socket_interface.h, derives from it
//   without overriding either, and the default interface's extension overrides only
//   onWorkerThreadInitialized);
// - SocketInterfaceBase (a SocketInterface that is also a BootstrapExtensionFactory);
// - socketInterface(name): the registry lookup the server uses for default_socket_interface;
// - SocketInterfaceSingleton: the process-wide interface (InjectableSingleton in Envoy), which
//   the default interface's loader sets at static initialisation and the server swaps when
//   default_socket_interface names a registered interface.
#pragma once

#include <string>

#include "envoy/network/socket_interface.h"
#include "envoy/registry/registry.h"
#include "envoy/server/bootstrap_extension_config.h"

namespace Envoy {
namespace Network {

class SocketInterfaceExtension : public Server::BootstrapExtension {
public:
  SocketInterfaceExtension(SocketInterface& sock_interface) : sock_interface_(sock_interface) {}
  // Server::BootstrapExtension
  void onServerInitialized(Server::Instance&) override {}
  void onWorkerThreadInitialized() override {}

protected:
  SocketInterface& sock_interface_;
};

class SocketInterfaceBase : public SocketInterface,
                            public Server::Configuration::BootstrapExtensionFactory {};

inline const SocketInterface* socketInterface(const std::string& name) {
  auto* factory =
      Registry::FactoryRegistry<Server::Configuration::BootstrapExtensionFactory>::getFactory(name);
  return dynamic_cast<SocketInterface*>(factory);
}

class SocketInterfaceSingleton {
public:
  static SocketInterface& get() { return *instance(); }
  static SocketInterface* getExisting() { return instance(); }
  static void initialize(SocketInterface* value) { instance() = value; }
  static void clear() { instance() = nullptr; }

private:
  static SocketInterface*& instance() {
    static SocketInterface* value = nullptr;
    return value;
  }
};

} // namespace Network
} // namespace Envoy
