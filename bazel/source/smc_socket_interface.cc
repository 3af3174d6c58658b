#include "smc_socket_interface.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <utility>

#include "envoy/common/exception.h"

#include "source/common/common/logger.h"
#include "source/common/network/address_impl.h"
#include "source/common/network/io_socket_handle_impl.h"

#include "smc_io_handle.h"

#include "api/envoy_smc/v1/smc.pb.h"

namespace Envoy {
namespace Network {
namespace Smc {

namespace {
constexpr const char* StatPrefix = "smc.";
} // namespace

RuntimeSharedPtr SmcSocketInterface::runtime() const {
  return extension_ != nullptr ? extension_->runtime() : nullptr;
}

IoHandlePtr SmcSocketInterface::openStream(const RuntimeSharedPtr& runtime, int domain,
                                           bool socket_v6only, const sockaddr* addr,
                                           socklen_t addrlen) const {
  envoy_smc_socket_state state{};
  // The same flags as the default interface: Envoy's sockets are non-blocking from the start.
  const int fd = runtime->socket(domain, SOCK_STREAM | SOCK_NONBLOCK, 0, addr, addrlen, &state);
  if (fd < 0) {
    return nullptr;
  }
  if (!state.tracked) {
    return std::make_unique<IoSocketHandleImpl>(fd, socket_v6only, domain);
  }
  return std::make_unique<SmcIoHandle>(runtime, state, fd, socket_v6only, domain);
}

IoHandlePtr SmcSocketInterface::socket(Socket::Type socket_type, Address::Type addr_type,
                                       Address::IpVersion version, bool socket_v6only,
                                       const SocketCreationOptions& options) const {
  if (socket_type == Socket::Type::Stream && addr_type == Address::Type::Ip &&
      !options.mptcp_enabled_) {
    if (const RuntimeSharedPtr rt = runtime(); rt != nullptr) {
      const int domain =
          (version == Address::IpVersion::v6 || Address::forceV6()) ? AF_INET6 : AF_INET;
      if (IoHandlePtr handle = openStream(rt, domain, socket_v6only, nullptr, 0);
          handle != nullptr) {
        return handle;
      }
    }
  }
  return SocketInterfaceImpl::socket(socket_type, addr_type, version, socket_v6only, options);
}

IoHandlePtr SmcSocketInterface::socket(Socket::Type socket_type,
                                       const Address::InstanceConstSharedPtr addr,
                                       const SocketCreationOptions& options) const {
  if (socket_type == Socket::Type::Stream && addr->type() == Address::Type::Ip &&
      !options.mptcp_enabled_) {
    if (const RuntimeSharedPtr rt = runtime(); rt != nullptr) {
      const bool v6 = addr->ip()->version() == Address::IpVersion::v6;
      const int v6only = v6 ? addr->ip()->ipv6()->v6only() : 0;
      const int domain = (v6 || Address::forceV6()) ? AF_INET6 : AF_INET;
      if (IoHandlePtr handle = openStream(rt, domain, v6only, addr->sockAddr(), addr->sockAddrLen());
          handle != nullptr) {
        // As the default interface does for every IPv6 socket built from an address. Through
        // the handle, so that envoy-smc carries the option over if it replaces the socket.
        if (v6 && !Address::forceV6() &&
            handle->setOption(IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)).return_value_ !=
                0) {
          ENVOY_LOG_MISC(warn, "envoy-smc: unable to set IPV6_V6ONLY on {}", addr->asString());
        }
        return handle;
      }
    }
  }
  return SocketInterfaceImpl::socket(socket_type, addr, options);
}

Runtime::Annotations nodeAnnotations(const LocalInfo::LocalInfo& local_info) {
  Runtime::Annotations annotations;
  const auto& fields = local_info.node().metadata().fields();
  const auto it = fields.find("ANNOTATIONS");
  if (it == fields.end() || !it->second.has_struct_value()) {
    return annotations;
  }
  for (const auto& [key, value] : it->second.struct_value().fields()) {
    if (value.kind_case() == Protobuf::Value::kStringValue) {
      annotations.emplace_back(key, value.string_value());
    }
  }
  return annotations;
}

Server::BootstrapExtensionPtr
SmcSocketInterface::createBootstrapExtension(const Protobuf::Message& config,
                                             Server::Configuration::ServerFactoryContext& context) {
  // The library validates the configuration: the Rust loader is the one source of truth for
  // what the message means, shared with the preload library and the CLI.
  std::string error;
  RuntimeSharedPtr runtime =
      Runtime::fromProto(config.SerializeAsString(), nodeAnnotations(context.localInfo()), &error);
  if (runtime == nullptr) {
    throw EnvoyException("envoy-smc: " + error);
  }
  return std::make_unique<SmcSocketInterfaceExtension>(*this, std::move(runtime), context);
}

ProtobufTypes::MessagePtr SmcSocketInterface::createEmptyConfigProto() {
  return std::make_unique<envoy_smc::v1::SmcConfig>();
}

SmcSocketInterfaceExtension::SmcSocketInterfaceExtension(
    SmcSocketInterface& sock_interface, RuntimeSharedPtr runtime,
    Server::Configuration::ServerFactoryContext& context)
    : SocketInterfaceExtension(sock_interface), runtime_(std::move(runtime)) {
  // Only what exists while Envoy creates bootstrap extensions (see the class comment).
  for (const std::string& name : Runtime::counterNames()) {
    counters_.push_back({&context.scope().counterFromString(StatPrefix + name), 0});
  }
  flush_timer_ = context.mainThreadDispatcher().createTimer([this] {
    flushStats();
    flush_timer_->enableTimer(MirrorInterval);
  });
  flush_timer_->enableTimer(MirrorInterval);
  sock_interface.extension_ = this;
  ENVOY_LOG_MISC(info, "envoy-smc {} registered as socket interface {}", Runtime::version(),
                 sock_interface.name());
}

SmcSocketInterfaceExtension::~SmcSocketInterfaceExtension() {
  // Only if it is still ours: a second extension may have taken the singleton over.
  auto& sock_interface = static_cast<SmcSocketInterface&>(sock_interface_);
  if (sock_interface.extension_ == this) {
    sock_interface.extension_ = nullptr;
  }
}

void SmcSocketInterfaceExtension::flushStats() {
  const std::vector<uint64_t> values = runtime_->counters();
  for (size_t i = 0; i < counters_.size() && i < values.size(); ++i) {
    // Envoy counters only grow; the library's do too, so the difference is what happened since
    // the last flush.
    if (values[i] > counters_[i].last) {
      counters_[i].counter->add(values[i] - counters_[i].last);
      counters_[i].last = values[i];
    }
  }
}

REGISTER_FACTORY(SmcSocketInterface, Server::Configuration::BootstrapExtensionFactory);

} // namespace Smc
} // namespace Network
} // namespace Envoy
