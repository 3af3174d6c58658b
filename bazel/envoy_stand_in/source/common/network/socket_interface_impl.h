// Stand-in (tests only) for Envoy's source/common/network/socket_interface_impl.h (the io_uring
// worker factory version: DefaultSocketInterfaceExtension overriding onWorkerThreadInitialized,
// makePlatformSpecificSocket(fd, v6only, domain, options, io_uring_worker_factory),
// protected virtual makeSocket(fd, v6only, socket_type, domain, options), a private weak_ptr to
// the worker factory). Behaviour follows source/common/network/socket_interface_impl.cc: the
// family and flags are chosen inside socket(); the address overload calls the other by
// qualified name and sets IPV6_V6ONLY through the handle; a socket is an io_uring handle only when
// this interface's own bootstrap extension was configured with io_uring_options and the calling
// thread has registered its io_uring worker (a worker thread, after onWorkerThreadInitialized).
// The real code also requires a kernel with io_uring (Io::isIoUringSupported()); the stand-in
// assumes one. Datagram sockets never use io_uring here.
#pragma once

#include <memory>

#include "envoy/network/socket.h"

#include "source/common/io/io_uring_worker_factory_impl.h"
#include "source/common/network/socket_interface.h"

namespace Envoy {
namespace Network {

class DefaultSocketInterfaceExtension : public SocketInterfaceExtension {
public:
  DefaultSocketInterfaceExtension(SocketInterface& sock_interface,
                                  std::shared_ptr<Io::IoUringWorkerFactory> io_uring_worker_factory)
      : SocketInterfaceExtension(sock_interface),
        io_uring_worker_factory_(std::move(io_uring_worker_factory)) {}

  // Server::BootstrapExtension
  void onWorkerThreadInitialized() override;

protected:
  std::shared_ptr<Io::IoUringWorkerFactory> io_uring_worker_factory_;
};

class SocketInterfaceImpl : public SocketInterfaceBase {
public:
  // SocketInterface
  IoHandlePtr socket(Socket::Type socket_type, Address::Type addr_type, Address::IpVersion version,
                     bool socket_v6only, const SocketCreationOptions& options) const override;
  IoHandlePtr socket(Socket::Type socket_type, const Address::InstanceConstSharedPtr addr,
                     const SocketCreationOptions& options) const override;
  bool ipFamilySupported(int domain) override;

  // Server::Configuration::BootstrapExtensionFactory
  Server::BootstrapExtensionPtr
  createBootstrapExtension(const Protobuf::Message& config,
                           Server::Configuration::ServerFactoryContext& context) override;
  ProtobufTypes::MessagePtr createEmptyConfigProto() override;
  std::string name() const override {
    return "envoy.extensions.network.socket_interface.default_socket_interface";
  }

  static IoHandlePtr
  makePlatformSpecificSocket(int socket_fd, bool socket_v6only, absl::optional<int> domain,
                             const SocketCreationOptions& options,
                             Io::IoUringWorkerFactory* io_uring_worker_factory = nullptr);

protected:
  virtual IoHandlePtr makeSocket(int socket_fd, bool socket_v6only, Socket::Type socket_type,
                                 absl::optional<int> domain,
                                 const SocketCreationOptions& options) const;

private:
  std::weak_ptr<Io::IoUringWorkerFactory> io_uring_worker_factory_;
};

DECLARE_FACTORY(SocketInterfaceImpl);

} // namespace Network
} // namespace Envoy
