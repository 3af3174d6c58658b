// Behaviour of the Envoy stand-in (tests only): the default socket interface, the POSIX socket
// handle and the test addresses, written for envoy-smc's shim tests. Not Envoy code; see
// README.md in this directory.
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "source/common/network/address_impl.h"
#include "source/common/network/io_socket_handle_impl.h"
#include "source/common/network/io_uring_socket_handle_impl.h"
#include "source/common/network/socket_interface_impl.h"

#include "envoy/extensions/network/socket_interface/v3/default_socket_interface.pb.h"

namespace Envoy {
namespace Network {

namespace {
Api::SysCallIntResult result(int rc) { return {rc, rc == -1 ? errno : 0}; }
} // namespace

namespace Address {

bool forceV6() { return false; }

Ipv4Instance::Ipv4Instance(const std::string& address, uint32_t port, const SocketInterface*)
    : address_(address) {
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss_);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  if (inet_pton(AF_INET, address.c_str(), &sin->sin_addr) != 1) {
    throw std::invalid_argument("not an IPv4 address: " + address);
  }
  len_ = sizeof(sockaddr_in);
  friendly_name_ = address + ":" + std::to_string(port);
}

uint32_t Ipv4Instance::port() const {
  return ntohs(reinterpret_cast<const sockaddr_in*>(&ss_)->sin_port);
}

Ipv6Instance::Ipv6Instance(const std::string& address, uint32_t port, const SocketInterface*,
                           bool v6only)
    : address_(address), v6only_(v6only) {
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss_);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  if (inet_pton(AF_INET6, address.c_str(), &sin6->sin6_addr) != 1) {
    throw std::invalid_argument("not an IPv6 address: " + address);
  }
  len_ = sizeof(sockaddr_in6);
  friendly_name_ = "[" + address + "]:" + std::to_string(port);
}

uint32_t Ipv6Instance::port() const {
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss_)->sin6_port);
}

PipeInstance::PipeInstance(const std::string& path) {
  auto* sun = reinterpret_cast<sockaddr_un*>(&ss_);
  sun->sun_family = AF_UNIX;
  if (path.size() >= sizeof(sun->sun_path)) {
    throw std::invalid_argument("pipe path too long: " + path);
  }
  std::memcpy(sun->sun_path, path.data(), path.size());
  len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  friendly_name_ = path;
}

} // namespace Address

Api::SysCallIntResult IoSocketHandleBaseImpl::setOption(int level, int optname,
                                                        const void* optval, socklen_t optlen) {
  return result(::setsockopt(fd_, level, optname, optval, optlen));
}

Api::SysCallIntResult IoSocketHandleBaseImpl::getOption(int level, int optname, void* optval,
                                                        socklen_t* optlen) {
  return result(::getsockopt(fd_, level, optname, optval, optlen));
}

IoSocketHandleImpl::~IoSocketHandleImpl() {
  if (SOCKET_VALID(fd_)) {
    IoSocketHandleImpl::close();
  }
}

namespace {
class CloseError : public Api::IoError {
public:
  explicit CloseError(int err) : errno_(err) {}
  IoErrorCode getErrorCode() const override { return IoErrorCode::UnknownError; }
  std::string getErrorDetails() const override { return std::strerror(errno_); }
  int getSystemErrorCode() const override { return errno_; }

private:
  const int errno_;
};
} // namespace

Api::IoCallUint64Result IoSocketHandleImpl::close() {
  file_event_.reset();
  const int rc = ::close(fd_);
  const int err = errno;
  SET_SOCKET_INVALID(fd_);
  if (rc == -1) {
    return {0, Api::IoError::wrap(new CloseError(err))};
  }
  return {0, Api::IoError::none()};
}

Api::SysCallIntResult IoSocketHandleImpl::bind(Address::InstanceConstSharedPtr address) {
  return result(::bind(fd_, address->sockAddr(), address->sockAddrLen()));
}

Api::SysCallIntResult IoSocketHandleImpl::listen(int backlog) {
  return result(::listen(fd_, backlog));
}

IoHandlePtr IoSocketHandleImpl::accept(struct sockaddr* addr, socklen_t* addrlen) {
  const int fd = ::accept4(fd_, addr, addrlen, SOCK_NONBLOCK);
  if (fd < 0) {
    return nullptr;
  }
  return std::make_unique<IoSocketHandleImpl>(fd, socket_v6only_, domain_);
}

Api::SysCallIntResult IoSocketHandleImpl::connect(Address::InstanceConstSharedPtr address) {
  return result(::connect(fd_, address->sockAddr(), address->sockAddrLen()));
}

void IoSocketHandleImpl::initializeFileEvent(Event::Dispatcher& dispatcher, Event::FileReadyCb cb,
                                             Event::FileTriggerType trigger, uint32_t events) {
  if (file_event_ != nullptr) {
    throw std::logic_error("two file events for one IoHandle");
  }
  file_event_ = dispatcher.createFileEvent(fd_, cb, trigger, events);
}

IoHandlePtr IoSocketHandleImpl::duplicate() {
  const int fd = ::dup(fd_);
  if (fd < 0) {
    throw std::runtime_error("dup failed");
  }
  return std::make_unique<IoSocketHandleImpl>(fd, socket_v6only_, domain_);
}

void IoSocketHandleImpl::activateFileEvents(uint32_t events) {
  if (file_event_ != nullptr) {
    file_event_->activate(events);
  }
}

void IoSocketHandleImpl::enableFileEvents(uint32_t events) {
  if (file_event_ != nullptr) {
    file_event_->setEnabled(events);
  }
}

void DefaultSocketInterfaceExtension::onWorkerThreadInitialized() {
  if (io_uring_worker_factory_ != nullptr) {
    io_uring_worker_factory_->onWorkerThreadInitialized();
  }
}

IoHandlePtr SocketInterfaceImpl::makePlatformSpecificSocket(
    int socket_fd, bool socket_v6only, absl::optional<int> domain,
    const SocketCreationOptions& options, Io::IoUringWorkerFactory* io_uring_worker_factory) {
  // As Envoy: io_uring only once the worker factory exists and this thread registered with it.
  if (io_uring_worker_factory != nullptr && io_uring_worker_factory->currentThreadRegistered()) {
    return std::make_unique<IoUringSocketHandleImpl>(*io_uring_worker_factory, socket_fd,
                                                     socket_v6only, domain);
  }
  return std::make_unique<IoSocketHandleImpl>(socket_fd, socket_v6only, domain,
                                              options.max_addresses_cache_size_);
}

IoHandlePtr SocketInterfaceImpl::makeSocket(int socket_fd, bool socket_v6only,
                                            Socket::Type socket_type, absl::optional<int> domain,
                                            const SocketCreationOptions& options) const {
  if (socket_type == Socket::Type::Datagram) {
    return makePlatformSpecificSocket(socket_fd, socket_v6only, domain, options, nullptr);
  }
  return makePlatformSpecificSocket(socket_fd, socket_v6only, domain, options,
                                    io_uring_worker_factory_.lock().get());
}

IoHandlePtr SocketInterfaceImpl::socket(Socket::Type socket_type, Address::Type addr_type,
                                        Address::IpVersion version, bool socket_v6only,
                                        const SocketCreationOptions& options) const {
  int protocol = 0;
  int flags = SOCK_NONBLOCK;
  if (options.mptcp_enabled_) {
    protocol = IPPROTO_MPTCP;
  }
  flags |= socket_type == Socket::Type::Stream ? SOCK_STREAM : SOCK_DGRAM;
  int domain;
  if (addr_type == Address::Type::Ip) {
    domain = (version == Address::IpVersion::v6 || Address::forceV6()) ? AF_INET6 : AF_INET;
  } else if (addr_type == Address::Type::Pipe) {
    domain = AF_UNIX;
  } else {
    throw std::logic_error("internal addresses have no socket");
  }
  const int fd = ::socket(domain, flags, protocol);
  if (fd < 0) {
    return nullptr;
  }
  return makeSocket(fd, socket_v6only, socket_type, domain, options);
}

IoHandlePtr SocketInterfaceImpl::socket(Socket::Type socket_type,
                                        const Address::InstanceConstSharedPtr addr,
                                        const SocketCreationOptions& options) const {
  const Address::IpVersion ip_version =
      addr->ip() != nullptr ? addr->ip()->version() : Address::IpVersion::v4;
  int v6only = 0;
  if (addr->type() == Address::Type::Ip && ip_version == Address::IpVersion::v6) {
    v6only = addr->ip()->ipv6()->v6only();
  }
  IoHandlePtr io_handle =
      SocketInterfaceImpl::socket(socket_type, addr->type(), ip_version, v6only, options);
  if (io_handle != nullptr && addr->type() == Address::Type::Ip &&
      ip_version == Address::IpVersion::v6 && !Address::forceV6()) {
    io_handle->setOption(IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
  }
  return io_handle;
}

bool SocketInterfaceImpl::ipFamilySupported(int domain) {
  const int fd = ::socket(domain, SOCK_STREAM, 0);
  if (fd >= 0) {
    ::close(fd);
  }
  return fd >= 0;
}

Server::BootstrapExtensionPtr
SocketInterfaceImpl::createBootstrapExtension(const Protobuf::Message& config,
                                              Server::Configuration::ServerFactoryContext&) {
  const auto& message =
      dynamic_cast<const envoy::extensions::network::socket_interface::v3::DefaultSocketInterface&>(
          config);
  // io_uring_options turn io_uring on for the sockets of this interface object, on the worker
  // threads that registered (Envoy also checks that the kernel has io_uring).
  if (message.has_io_uring_options()) {
    auto factory = std::make_shared<Io::IoUringWorkerFactory>();
    io_uring_worker_factory_ = factory;
    return std::make_unique<DefaultSocketInterfaceExtension>(*this, std::move(factory));
  }
  return std::make_unique<DefaultSocketInterfaceExtension>(*this, nullptr);
}

ProtobufTypes::MessagePtr SocketInterfaceImpl::createEmptyConfigProto() {
  return std::make_unique<envoy::extensions::network::socket_interface::v3::DefaultSocketInterface>();
}

REGISTER_FACTORY(SocketInterfaceImpl, Server::Configuration::BootstrapExtensionFactory);

namespace {
// As Envoy's SocketInterfaceLoader in socket_interface_impl.cc: a default interface object of
// its own (not the registered factory) is the process-wide interface until the server swaps in
// the one default_socket_interface names.
const bool default_interface_loaded = [] {
  static SocketInterfaceImpl loaded;
  SocketInterfaceSingleton::initialize(&loaded);
  return true;
}();
} // namespace

} // namespace Network
} // namespace Envoy
