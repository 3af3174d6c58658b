// Unit tests of the native extension (bazel/source/) against the Envoy stand-in
// (bazel/envoy_stand_in/) and the real envoy-smc library (target/debug/libenvoy_smc.a).
//
// Every test is named stand_in_*: it exercises the shim through stand-in Envoy classes, not
// through a real Envoy. The kernel decides what the "SMC" cases can show:
// - no SMC in the kernel (these machines): the library leaves every socket plain TCP with reason
//   kernel_lacks_smc, and the tests check that and that Envoy's view is unchanged;
// - ENVOY_SMC_FAKE_KERNEL=1 (fake_smc_kernel.cc): TCP sockets reported as SMC, so the whole
//   decision path runs (mesh switch, fallback, listener selection, replacement under the fd,
//   file events registered again);
// - a kernel with SMC (the SMC-R VM): the same path on real SMC sockets.

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "envoy/common/exception.h"
#include "envoy/registry/registry.h"

#include "source/common/network/address_impl.h"

#include "smc_io_handle.h"
#include "smc_socket_interface.h"
#include "test_support.h"

#include "api/envoy_smc/v1/smc.pb.h"

namespace EnvoySmcTest {
bool fakeKernelActive();
void fakeBlackHole(const sockaddr_in& dest, const sockaddr_in& stall);
} // namespace EnvoySmcTest

namespace {

using namespace Envoy;
using namespace EnvoySmcTest;
using Envoy::Network::Smc::SmcIoHandle;
using Envoy::Network::Smc::SmcSocketInterface;
using Envoy::Network::Smc::SmcSocketInterfaceExtension;
using SmcConfig = envoy_smc::v1::SmcConfig;

constexpr int kAfSmc = 43;
constexpr int kIpprotoSmc = 256;
constexpr int kTcpFastopenConnect = 30;
constexpr const char* kOptIn = "smc.asm.alibabacloud.com/enabled";
// TEST-NET-1: a destination that is neither loopback nor local, never answered.
constexpr const char* kRemote = "192.0.2.10";

// ---- the kernel under test -------------------------------------------------------------------

bool canOpen(int domain, int protocol) {
  const int fd = ::socket(domain, SOCK_STREAM | SOCK_CLOEXEC, protocol);
  if (fd < 0) {
    return false;
  }
  ::close(fd);
  return true;
}

struct KernelSmc {
  bool af_smc = canOpen(kAfSmc, 0);
  bool ipproto_smc = canOpen(AF_INET, kIpprotoSmc);
  bool any() const { return af_smc || ipproto_smc; }
  // What mode AUTO opens (the library prefers IPPROTO_SMC).
  envoy_smc_socket_kind autoKind() const {
    return ipproto_smc ? ENVOY_SMC_KIND_IPPROTO_SMC : ENVOY_SMC_KIND_AF_SMC;
  }
};

const KernelSmc& kernel() {
  static const KernelSmc k;
  return k;
}

envoy_smc_socket_kind kindOfFd(int fd) {
  int domain = 0;
  int protocol = 0;
  socklen_t len = sizeof(int);
  CHECK_EQ(::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len), 0);
  len = sizeof(int);
  CHECK_EQ(::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len), 0);
  if (domain == kAfSmc) {
    return ENVOY_SMC_KIND_AF_SMC;
  }
  return protocol == kIpprotoSmc ? ENVOY_SMC_KIND_IPPROTO_SMC : ENVOY_SMC_KIND_TCP;
}

int intOption(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof(value);
  CHECK_EQ(::getsockopt(fd, level, name, &value, &len), 0);
  return value;
}

// ---- the bed: the registered interface, a context, an extension -------------------------------

SmcSocketInterface& registeredInterface() {
  auto* factory =
      Registry::FactoryRegistry<Server::Configuration::BootstrapExtensionFactory>::getFactory(
          SmcSocketInterface::Name);
  CHECK(factory != nullptr);
  auto* iface = dynamic_cast<SmcSocketInterface*>(factory);
  CHECK(iface != nullptr);
  return *iface;
}

struct Annotations {
  std::optional<std::string> opt_in = "true";
};

class Bed {
public:
  explicit Bed(const SmcConfig& config, Annotations annotations = {})
      : iface_(registeredInterface()) {
    auto& fields = *context_.localInfoForTest().mutableNode().mutable_metadata()->mutable_fields();
    auto& pod = *fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields();
    pod["sidecar.istio.io/status"].set_string_value("{}");
    if (annotations.opt_in.has_value()) {
      pod[kOptIn].set_string_value(*annotations.opt_in);
    }
    fields["LABELS"].mutable_struct_value();
    extension_ = iface_.createBootstrapExtension(config, context_);
    CHECK(iface_.extension_ != nullptr);
  }

  SmcSocketInterface& iface() { return iface_; }
  EpollDispatcher& dispatcher() { return context_.dispatcher(); }
  SmcSocketInterfaceExtension& extension() {
    return static_cast<SmcSocketInterfaceExtension&>(*extension_);
  }

  // The Envoy counter "smc.<name>" after a flush.
  uint64_t stat(const std::string& name) {
    extension().flushStats();
    return context_.memoryScope().counter("smc." + name);
  }
  MemoryScope& scope() { return context_.memoryScope(); }

  Network::IoHandlePtr client(const std::string& ip, uint32_t port) {
    return iface_.socket(Network::Socket::Type::Stream,
                         std::make_shared<Network::Address::Ipv4Instance>(ip, port), {});
  }
  Network::IoHandlePtr listenerSocket(const std::string& ip, uint32_t port) {
    return iface_.socket(Network::Socket::Type::Stream,
                         std::make_shared<Network::Address::Ipv4Instance>(ip, port), {});
  }

private:
  TestServerContext context_;
  SmcSocketInterface& iface_;
  Server::BootstrapExtensionPtr extension_;
};

SmcConfig meshConfig() {
  SmcConfig config;
  config.mutable_upstream()->set_allow_local(true);
  return config;
}

uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  CHECK_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  socklen_t len = sizeof(sin);
  CHECK_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len), 0);
  ::close(fd);
  return ntohs(sin.sin_port);
}

// A non-loopback IPv4 address of this host, where a test listener can be reached without being
// "loopback" to the policy.
std::optional<std::string> localIpv4() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) {
    return std::nullopt;
  }
  std::optional<std::string> found;
  for (ifaddrs* it = list; it != nullptr && !found; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET) {
      continue;
    }
    const auto* sin = reinterpret_cast<const sockaddr_in*>(it->ifa_addr);
    if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127) {
      continue;
    }
    char text[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
    found = text;
  }
  ::freeifaddrs(list);
  return found;
}

// Where the listener tests bind: this host's own address, which the policy may select (a
// loopback listener always stays TCP). Without one, the wildcard address.
std::string listenerIp() { return localIpv4().value_or("0.0.0.0"); }

// What Envoy does to a cluster's socket before connect(): the file event first, then the
// socket options (here: the mesh switch, which EnvoyFilter puts on the cluster), then connect.
void setEnableSwitch(Network::IoHandle& handle) {
  const int one = 1;
  CHECK_EQ(handle.setOption(SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)).return_value_, 0);
}

void setKeepTcp(Network::IoHandle& handle) {
  const int zero = 0;
  CHECK_EQ(handle.setOption(IPPROTO_TCP, kTcpFastopenConnect, &zero, sizeof(zero)).return_value_,
           0);
}

// Envoy's default listener options (enable_reuse_port defaults to true on Linux).
void setListenerDefaults(Network::IoHandle& handle) {
  const int one = 1;
  CHECK_EQ(handle.setOption(SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)).return_value_, 0);
  CHECK_EQ(handle.setOption(SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)).return_value_, 0);
}

SmcIoHandle* asSmc(const Network::IoHandlePtr& handle) {
  return dynamic_cast<SmcIoHandle*>(handle.get());
}

void connectTo(Network::IoHandle& handle, const std::string& ip, uint32_t port) {
  const auto rc = handle.connect(std::make_shared<Network::Address::Ipv4Instance>(ip, port));
  // Non-blocking: in progress, or at once; an unreachable TEST-NET address may fail at once.
  CHECK(rc.return_value_ == 0 || rc.errno_ == EINPROGRESS || rc.errno_ == ENETUNREACH);
}

absl::Status ignoreEvents(uint32_t) { return absl::OkStatus(); }

// Accepts one pending connection on a listening handle, waiting up to a second.
// A plain TCP listener on ip:port (a peer without SMC: an SMC client falls back to TCP).
Network::IoHandlePtr plainListener(const std::string& ip, uint16_t port) {
  Network::SocketInterfaceImpl plain;
  const auto address = std::make_shared<Network::Address::Ipv4Instance>(ip, port);
  Network::IoHandlePtr server = plain.socket(Network::Socket::Type::Stream, address, {});
  CHECK_EQ(server->bind(address).return_value_, 0);
  CHECK_EQ(server->listen(16).return_value_, 0);
  return server;
}

// Envoy's client file event (edge-triggered read|write); every event that fires is OR-ed into
// `seen`.
void recordEvents(Network::IoHandle& handle, Event::Dispatcher& dispatcher, uint32_t& seen) {
  handle.initializeFileEvent(
      dispatcher,
      [&seen](uint32_t events) {
        seen |= events;
        return absl::OkStatus();
      },
      Event::FileTriggerType::Edge, Event::FileReadyType::Read | Event::FileReadyType::Write);
}

Network::IoHandlePtr acceptOne(Network::IoHandle& listener) {
  for (int i = 0; i < 100; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (Network::IoHandlePtr accepted = listener.accept(reinterpret_cast<sockaddr*>(&peer), &len)) {
      return accepted;
    }
    ::usleep(10000);
  }
  return nullptr;
}

// Checks that a listener bound to ip:port accepts a plain TCP client, and that the accepted
// socket gets Envoy's plain handle.
void checkServes(Network::IoHandle& listener, const std::string& ip, uint16_t port) {
  Network::SocketInterfaceImpl plain;
  Network::IoHandlePtr client = plain.socket(
      Network::Socket::Type::Stream, std::make_shared<Network::Address::Ipv4Instance>(ip, port),
      {});
  connectTo(*client, ip, port);
  Network::IoHandlePtr accepted = acceptOne(listener);
  CHECK(accepted != nullptr);
  CHECK(dynamic_cast<SmcIoHandle*>(accepted.get()) == nullptr);
}

// ---- tests -----------------------------------------------------------------------------------

STAND_IN_TEST(stand_in_factory_registered_under_its_name) {
  SmcSocketInterface& iface = registeredInterface();
  CHECK_EQ(iface.name(), std::string("envoy.extensions.network.socket_interface.smc"));
  CHECK_EQ(iface.category(), std::string("envoy.bootstrap"));
  CHECK_EQ(iface.createEmptyConfigProto()->GetTypeName(), std::string("envoy_smc.v1.SmcConfig"));
}

STAND_IN_TEST(stand_in_no_extension_means_default_interface) {
  SmcSocketInterface& iface = registeredInterface();
  CHECK(iface.extension_ == nullptr);
  Network::IoHandlePtr handle = iface.socket(
      Network::Socket::Type::Stream,
      std::make_shared<Network::Address::Ipv4Instance>(kRemote, 80), {});
  CHECK(handle != nullptr);
  CHECK(asSmc(handle) == nullptr);
  CHECK_EQ(kindOfFd(handle->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
}

STAND_IN_TEST(stand_in_bad_config_throws_envoy_exception_with_library_message) {
  SmcConfig config = meshConfig();
  config.mutable_upstream()->add_allow("10.0.0.0/33");
  bool threw = false;
  try {
    Bed bed(config);
  } catch (const EnvoyException& e) {
    threw = true;
    const std::string message = e.what();
    CHECK(message.rfind("envoy-smc: ", 0) == 0);
    CHECK(message.find("upstream.allow") != std::string::npos);
    CHECK(message.find("10.0.0.0/33") != std::string::npos);
  }
  CHECK(threw);
  // A refused configuration leaves the interface as if the extension was never configured.
  CHECK(registeredInterface().extension_ == nullptr);

  SmcConfig bad_port;
  bad_port.mutable_listeners()->add_ports(70000);
  threw = false;
  try {
    Bed bed(bad_port);
  } catch (const EnvoyException& e) {
    threw = true;
    CHECK(std::string(e.what()).find("listeners.ports") != std::string::npos);
  }
  CHECK(threw);
}

STAND_IN_TEST(stand_in_node_annotations_read_from_metadata) {
  FixedLocalInfo info;
  auto& fields = *info.mutableNode().mutable_metadata()->mutable_fields();
  auto& pod = *fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields();
  pod[kOptIn].set_string_value("true");
  pod["not.a.string"].set_number_value(3);
  (*fields["LABELS"].mutable_struct_value()->mutable_fields())["app"].set_string_value("fortio");
  const auto annotations = Network::Smc::nodeAnnotations(info);
  CHECK_EQ(annotations.size(), size_t(1));
  CHECK_EQ(annotations[0].first, std::string(kOptIn));
  CHECK_EQ(annotations[0].second, std::string("true"));
  CHECK(Network::Smc::nodeAnnotations(FixedLocalInfo()).empty());
}

STAND_IN_TEST(stand_in_opt_in_absent_everything_tcp) {
  for (const std::optional<std::string>& opt_in :
       {std::optional<std::string>(), std::optional<std::string>("false")}) {
    const uint16_t port = freePort();
    const std::string ip = listenerIp();
    SmcConfig config = meshConfig();
    config.mutable_mesh_switch()->set_always_on(true);
    config.mutable_listeners()->add_ports(port);
    Bed bed(config, Annotations{opt_in});

    Network::IoHandlePtr client = bed.client(kRemote, 8080);
    CHECK(asSmc(client) == nullptr);
    setEnableSwitch(*client);
    connectTo(*client, kRemote, 8080);
    CHECK_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);

    Network::IoHandlePtr listener = bed.listenerSocket(ip, port);
    CHECK(asSmc(listener) == nullptr);
    setListenerDefaults(*listener);
    CHECK_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    CHECK_EQ(listener->listen(16).return_value_, 0);
    CHECK_EQ(kindOfFd(listener->fdDoNotUse()), ENVOY_SMC_KIND_TCP);

    CHECK_EQ(bed.stat("tcp.not_opted_in"), uint64_t(2));
    CHECK_EQ(bed.stat("smc_connect_af_smc") + bed.stat("smc_connect_ipproto_smc") +
                 bed.stat("smc_listen_af_smc") + bed.stat("smc_listen_ipproto_smc"),
             uint64_t(0));
  }
}

STAND_IN_TEST(stand_in_smc_for_allowed_upstream_of_enabled_cluster) {
  SmcConfig config = meshConfig();
  config.mutable_upstream()->add_allow("192.0.2.0/24");
  config.mutable_upstream()->add_allow_ports("8000-8100");
  Bed bed(config);

  Network::IoHandlePtr client = bed.client(kRemote, 8080);
  CHECK(client != nullptr);
  const int fd = client->fdDoNotUse();
  if (!kernel().any()) {
    CHECK(asSmc(client) == nullptr);
    connectTo(*client, kRemote, 8080);
    CHECK_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
    CHECK_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  SmcIoHandle* smc = asSmc(client);
  CHECK(smc != nullptr);
  client->initializeFileEvent(bed.dispatcher(), ignoreEvents, Event::FileTriggerType::Edge,
                              Event::FileReadyType::Read | Event::FileReadyType::Write);
  setEnableSwitch(*client);
  const int one = 1;
  CHECK_EQ(client->setOption(IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)).return_value_, 0);
  connectTo(*client, kRemote, 8080);

  CHECK(smc->decided());
  CHECK_EQ(smc->verdict().kind, kernel().autoKind());
  CHECK(smc->verdict().replaced);
  CHECK_EQ(client->fdDoNotUse(), fd);
  CHECK_EQ(kindOfFd(fd), kernel().autoKind());
  // The options Envoy set before the decision are on the new socket.
  CHECK_EQ(intOption(fd, IPPROTO_TCP, TCP_NODELAY), 1);
  CHECK_EQ(intOption(fd, SOL_SOCKET, SO_RCVLOWAT), 1);
  // The file event was removed while the old socket existed and created again on the new one.
  CHECK_EQ(bed.dispatcher().removalErrors(), 0);
  CHECK_EQ(bed.dispatcher().fileEventsCreated(), 2);
  CHECK_EQ(bed.stat(kernel().ipproto_smc ? "smc_connect_ipproto_smc" : "smc_connect_af_smc"),
           uint64_t(1));
}

STAND_IN_TEST(stand_in_tcp_without_mesh_switch) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = bed.client(kRemote, 8080);
  if (!kernel().any()) {
    CHECK(asSmc(client) == nullptr);
    CHECK_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  client->initializeFileEvent(bed.dispatcher(), ignoreEvents, Event::FileTriggerType::Edge,
                              Event::FileReadyType::Read | Event::FileReadyType::Write);
  connectTo(*client, kRemote, 8080);
  SmcIoHandle* smc = asSmc(client);
  CHECK(smc != nullptr && smc->decided());
  CHECK_EQ(smc->verdict().kind, ENVOY_SMC_KIND_TCP);
  CHECK_EQ(smc->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_MESH_SWITCH_ABSENT));
  CHECK(!smc->verdict().replaced);
  CHECK_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  // A TCP verdict leaves Envoy's file event alone.
  CHECK_EQ(bed.dispatcher().fileEventsCreated(), 1);
  CHECK_EQ(bed.stat("tcp.mesh_switch_absent"), uint64_t(1));
}

STAND_IN_TEST(stand_in_tcp_for_loopback) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = bed.client("127.0.0.1", 8080);
  // ENVOY_SMC_TCP_REASON_LOOPBACK is known when the socket is built from the address: never tracked.
  CHECK(asSmc(client) == nullptr);
  setEnableSwitch(*client);
  connectTo(*client, "127.0.0.1", freePort());
  CHECK_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  CHECK_EQ(bed.stat(kernel().any() ? "tcp.loopback" : "tcp.kernel_lacks_smc"), uint64_t(1));
}

STAND_IN_TEST(stand_in_per_cluster_fallback) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = bed.client(kRemote, 8080);
  setEnableSwitch(*client);
  setKeepTcp(*client);
  connectTo(*client, kRemote, 8080);
  CHECK_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  if (!kernel().any()) {
    CHECK_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  SmcIoHandle* smc = asSmc(client);
  CHECK(smc != nullptr && smc->decided());
  CHECK_EQ(smc->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_KEPT_ON_TCP));
  CHECK_EQ(bed.stat("tcp.kept_on_tcp"), uint64_t(1));
}

STAND_IN_TEST(stand_in_listener_selection_by_port) {
  const uint16_t selected = freePort();
  uint16_t other = freePort();
  while (other == selected) {
    other = freePort();
  }
  const std::string ip = listenerIp();
  SmcConfig config = meshConfig();
  config.mutable_listeners()->add_ports(selected);
  Bed bed(config);

  std::vector<Network::IoHandlePtr> listeners;
  for (const uint16_t port : {selected, other}) {
    Network::IoHandlePtr listener = bed.listenerSocket(ip, port);
    setListenerDefaults(*listener);
    setEnableSwitch(*listener);
    CHECK_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    CHECK_EQ(listener->listen(16).return_value_, 0);
    listeners.push_back(std::move(listener));
  }

  const envoy_smc_socket_kind want = kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP;
  CHECK_EQ(kindOfFd(listeners[0]->fdDoNotUse()), want);
  // An unselected listener is a plain TCP socket: never an SMC socket with the fallback switch.
  CHECK_EQ(kindOfFd(listeners[1]->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  if (kernel().any()) {
    CHECK_EQ(asSmc(listeners[1])->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_LISTENER_NOT_SELECTED));
    CHECK_EQ(bed.stat("tcp.listener_not_selected"), uint64_t(1));
    CHECK_EQ(bed.stat(kernel().ipproto_smc ? "smc_listen_ipproto_smc" : "smc_listen_af_smc"),
             uint64_t(1));
  } else {
    CHECK_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(2));
  }
  checkServes(*listeners[0], ip, selected);
  checkServes(*listeners[1], ip, other);
}

STAND_IN_TEST(stand_in_wildcard_listener_is_selectable) {
  // Istio's inbound listener binds 0.0.0.0:15006: the wildcard address accepts from every
  // interface; it is not a loopback listener.
  const uint16_t port = freePort();
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);
  Network::IoHandlePtr listener = bed.listenerSocket("0.0.0.0", port);
  setListenerDefaults(*listener);
  CHECK_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>("0.0.0.0", port))
               .return_value_,
           0);
  CHECK_EQ(listener->listen(16).return_value_, 0);
  CHECK_EQ(kindOfFd(listener->fdDoNotUse()),
           kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP);
  checkServes(*listener, "127.0.0.1", port);
}

STAND_IN_TEST(stand_in_default_listener_options_accepted_in_every_mode) {
  for (const SmcConfig::Mode mode : {SmcConfig::MODE_AUTO, SmcConfig::MODE_AF_SMC,
                                     SmcConfig::MODE_IPPROTO_SMC, SmcConfig::MODE_OFF}) {
    const uint16_t port = freePort();
    const std::string ip = listenerIp();
    SmcConfig config = meshConfig();
    config.set_mode(mode);
    config.mutable_mesh_switch()->set_always_on(true);
    config.mutable_listeners()->add_ports(port);
    Bed bed(config);

    Network::IoHandlePtr listener = bed.listenerSocket(ip, port);
    setListenerDefaults(*listener);
    CHECK_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    CHECK_EQ(listener->listen(16).return_value_, 0);
    CHECK_EQ(intOption(listener->fdDoNotUse(), SOL_SOCKET, SO_REUSEADDR), 1);
    checkServes(*listener, ip, port);

    const int fd = listener->fdDoNotUse();
    if (mode == SmcConfig::MODE_OFF) {
      CHECK_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
      CHECK_EQ(bed.stat("tcp.disabled"), uint64_t(1));
    } else if (mode == SmcConfig::MODE_AF_SMC && kernel().af_smc) {
      // AF_SMC refuses the SO_REUSEPORT Envoy set: an AF_SMC listener without it, which the
      // listener's other per-worker sockets would share.
      CHECK_EQ(kindOfFd(fd), ENVOY_SMC_KIND_AF_SMC);
      CHECK_EQ(intOption(fd, SOL_SOCKET, SO_REUSEPORT), 0);
      CHECK_EQ(bed.stat("smc_listen_af_smc"), uint64_t(1));
    } else if (mode == SmcConfig::MODE_IPPROTO_SMC && kernel().ipproto_smc) {
      CHECK_EQ(kindOfFd(fd), ENVOY_SMC_KIND_IPPROTO_SMC);
      CHECK_EQ(intOption(fd, SOL_SOCKET, SO_REUSEPORT), 1);
    } else if (mode == SmcConfig::MODE_AUTO && kernel().any()) {
      CHECK_EQ(kindOfFd(fd), kernel().autoKind());
    } else {
      CHECK_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
      CHECK_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    }
  }
}

STAND_IN_TEST(stand_in_non_ip_and_datagram_untouched) {
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  Bed bed(config);
  auto& iface = bed.iface();

  const std::string path = "/tmp/envoy-smc-stand-in-" + std::to_string(::getpid());
  Network::IoHandlePtr pipe = iface.socket(
      Network::Socket::Type::Stream, std::make_shared<Network::Address::PipeInstance>(path), {});
  CHECK(pipe != nullptr && asSmc(pipe) == nullptr);
  CHECK_EQ(intOption(pipe->fdDoNotUse(), SOL_SOCKET, SO_DOMAIN), AF_UNIX);

  Network::IoHandlePtr udp =
      iface.socket(Network::Socket::Type::Datagram,
                   std::make_shared<Network::Address::Ipv4Instance>(kRemote, 53), {});
  CHECK(udp != nullptr && asSmc(udp) == nullptr);
  CHECK_EQ(intOption(udp->fdDoNotUse(), SOL_SOCKET, SO_TYPE), SOCK_DGRAM);

  Network::IoHandlePtr udp6 =
      iface.socket(Network::Socket::Type::Datagram, Network::Address::Type::Ip,
                   Network::Address::IpVersion::v6, false, {});
  CHECK(udp6 != nullptr && asSmc(udp6) == nullptr);

  Network::SocketCreationOptions mptcp;
  mptcp.mptcp_enabled_ = true;
  Network::IoHandlePtr mp =
      iface.socket(Network::Socket::Type::Stream,
                   std::make_shared<Network::Address::Ipv4Instance>(kRemote, 80), mptcp);
  CHECK(asSmc(mp) == nullptr);

  // None of them reached envoy-smc.
  CHECK_EQ(bed.stat("sockets_seen"), uint64_t(0));
}

STAND_IN_TEST(stand_in_stats_mirrored_under_smc_prefix) {
  Bed bed(meshConfig());
  for (const std::string& name : Network::Smc::Runtime::counterNames()) {
    CHECK(bed.scope().hasCounter("smc." + name));
  }
  CHECK(bed.dispatcher().lastTimer() != nullptr);
  CHECK(bed.dispatcher().lastTimer()->enabled());
  CHECK_EQ(bed.dispatcher().lastTimer()->interval().count(), 5000);

  Network::IoHandlePtr a = bed.client(kRemote, 8080);
  Network::IoHandlePtr b = bed.client("127.0.0.1", 8080);
  bed.dispatcher().lastTimer()->fire();
  CHECK(bed.dispatcher().lastTimer()->enabled());
  CHECK_EQ(bed.scope().counter("smc.sockets_seen"), uint64_t(2));
  // Flushing again adds only what happened since.
  Network::IoHandlePtr c = bed.client(kRemote, 8081);
  CHECK_EQ(bed.stat("sockets_seen"), uint64_t(3));
  CHECK_EQ(bed.stat("sockets_seen"), uint64_t(3));
}

STAND_IN_TEST(stand_in_duplicate_decides_listener_before_sharing) {
  const uint16_t port = freePort();
  const std::string ip = listenerIp();
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);

  // enable_reuse_port: false: one bound socket, duplicated for the other workers before listen().
  Network::IoHandlePtr first = bed.listenerSocket(ip, port);
  const int one = 1;
  CHECK_EQ(first->setOption(SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)).return_value_, 0);
  CHECK_EQ(
      first->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port)).return_value_, 0);
  Network::IoHandlePtr second = first->duplicate();
  if (SmcIoHandle* smc = asSmc(first); smc != nullptr) {
    CHECK(smc->decided());
  }
  CHECK_EQ(kindOfFd(first->fdDoNotUse()), kindOfFd(second->fdDoNotUse()));
  CHECK_EQ(kindOfFd(first->fdDoNotUse()),
           kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP);
  CHECK_EQ(first->listen(16).return_value_, 0);
  CHECK_EQ(second->listen(16).return_value_, 0);
  checkServes(*second, ip, port);
}

STAND_IN_TEST(stand_in_client_events_arrive_after_replacement) {
  const std::optional<std::string> ip = localIpv4();
  if (!ip.has_value()) {
    std::cout << "  (no non-loopback IPv4 address: connection part skipped)\n";
    return;
  }
  const uint16_t port = freePort();
  Network::IoHandlePtr server = plainListener(*ip, port);

  Bed bed(meshConfig());
  Network::IoHandlePtr client = bed.client(*ip, port);
  uint32_t seen = 0;
  recordEvents(*client, bed.dispatcher(), seen);
  setEnableSwitch(*client);
  connectTo(*client, *ip, port);
  if (kernel().any()) {
    CHECK(asSmc(client) != nullptr && asSmc(client)->verdict().replaced);
    CHECK_EQ(bed.dispatcher().removalErrors(), 0);
  }
  for (int i = 0; i < 100 && (seen & Event::FileReadyType::Write) == 0; ++i) {
    bed.dispatcher().runOnce(10);
  }
  CHECK((seen & Event::FileReadyType::Write) != 0);
  CHECK_EQ(intOption(client->fdDoNotUse(), SOL_SOCKET, SO_ERROR), 0);
  Network::IoHandlePtr accepted = acceptOne(*server);
  CHECK(accepted != nullptr);
  // Data from the server wakes the client's (re-created) read event.
  CHECK_EQ(::send(accepted->fdDoNotUse(), "x", 1, 0), ssize_t(1));
  seen = 0;
  for (int i = 0; i < 100 && (seen & Event::FileReadyType::Read) == 0; ++i) {
    bed.dispatcher().runOnce(10);
  }
  CHECK((seen & Event::FileReadyType::Read) != 0);
}

sockaddr_in ipv4(const std::string& ip, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  CHECK_EQ(::inet_pton(AF_INET, ip.c_str(), &sin.sin_addr), 1);
  return sin;
}

// Adaptive fallback's rescue in the extension. Fake kernel only: it stands in for the kernel's
// SMC sockets and for the middlebox (an SMC connect to the server goes to a listener whose accept
// queue is full, which drops its SYNs, while plain TCP reaches the server; the real middlebox is
// an iptables rule in the SMC-R VM). The library's watchdog proves the black hole and hands the
// connect back; the shim posts the rescue to the dispatcher, and on its thread the connect moves
// to a TCP socket under the same fd whose write event then arrives through the same callback.
STAND_IN_TEST(stand_in_stuck_connect_is_rescued_through_the_dispatcher) {
  const std::optional<std::string> ip = localIpv4();
  if (!fakeKernelActive() || !ip.has_value()) {
    std::cout << "  (needs the fake SMC kernel and a non-loopback IPv4 address: skipped)\n";
    return;
  }
  const uint16_t port = freePort();
  Network::IoHandlePtr server = plainListener(*ip, port);
  // The stall: backlog 0 holds one connection (the filler); later SYNs are dropped.
  const uint16_t stall_port = freePort();
  const int stall = ::socket(AF_INET, SOCK_STREAM, 0);
  const sockaddr_in stall_addr = ipv4(*ip, stall_port);
  CHECK_EQ(::bind(stall, reinterpret_cast<const sockaddr*>(&stall_addr), sizeof(stall_addr)), 0);
  CHECK_EQ(::listen(stall, 0), 0);
  const int filler = ::socket(AF_INET, SOCK_STREAM, 0);
  CHECK_EQ(::connect(filler, reinterpret_cast<const sockaddr*>(&stall_addr), sizeof(stall_addr)),
           0);
  fakeBlackHole(ipv4(*ip, port), stall_addr);

  SmcConfig config = meshConfig();
  config.mutable_adaptive_fallback()->set_detect_after_ms(300);
  Bed bed(config);
  Network::IoHandlePtr client = bed.client(*ip, port);
  uint32_t seen = 0;
  recordEvents(*client, bed.dispatcher(), seen);
  setEnableSwitch(*client);
  connectTo(*client, *ip, port);
  const int fd = client->fdDoNotUse();
  CHECK(asSmc(client) != nullptr && asSmc(client)->verdict().kind != ENVOY_SMC_KIND_TCP);
  CHECK(asSmc(client)->rescuable());
  const auto start = std::chrono::steady_clock::now();
  while ((seen & Event::FileReadyType::Write) == 0 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(6)) {
    bed.dispatcher().runOnce(10);
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
  std::cout << "  (write event " << took << " ms after connect)\n";
  CHECK((seen & Event::FileReadyType::Write) != 0);
  CHECK_EQ(client->fdDoNotUse(), fd);
  CHECK_EQ(intOption(fd, SOL_SOCKET, SO_ERROR), 0);
  CHECK_EQ(intOption(fd, SOL_SOCKET, SO_PROTOCOL), IPPROTO_TCP);
  CHECK(!asSmc(client)->rescuable());
  CHECK_EQ(bed.stat("adaptive.black_hole_tripped"), uint64_t(1));
  CHECK_EQ(bed.stat("adaptive.rescued"), uint64_t(1));
  CHECK_EQ(bed.stat("adaptive.rescue_failed"), uint64_t(0));
  // The server got the watchdog's plain TCP probe and the rescued connection; data flows on it.
  CHECK_EQ(::send(fd, "rescued", 7, MSG_NOSIGNAL), ssize_t(7));
  bool got = false;
  for (int i = 0; i < 2 && !got; ++i) {
    Network::IoHandlePtr accepted = acceptOne(*server);
    if (accepted == nullptr) {
      break;
    }
    timeval tv{0, 300 * 1000};
    ::setsockopt(accepted->fdDoNotUse(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[8] = {};
    got = ::recv(accepted->fdDoNotUse(), buf, 7, MSG_WAITALL) == 7 &&
          std::string(buf, 7) == "rescued";
  }
  CHECK(got);
  ::close(filler);
  ::close(stall);
}

STAND_IN_TEST(stand_in_pending_activation_keeps_tcp) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = bed.client(kRemote, 8080);
  client->initializeFileEvent(bed.dispatcher(), ignoreEvents, Event::FileTriggerType::Edge,
                              Event::FileReadyType::Read | Event::FileReadyType::Write);
  setEnableSwitch(*client);
  // What Envoy does when bind or a socket option failed: close out of band through a write event.
  client->activateFileEvents(Event::FileReadyType::Write);
  connectTo(*client, kRemote, 8080);
  CHECK_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  CHECK_EQ(bed.dispatcher().fileEventsCreated(), 1);
  CHECK_EQ(bed.dispatcher().runOnce(0), 1);
  if (kernel().any()) {
    CHECK(asSmc(client)->decided());
    CHECK(!asSmc(client)->verdict().replaced);
  }
}

STAND_IN_TEST(stand_in_ipv6_v6only_follows_the_address) {
  Bed bed(meshConfig());
  for (const bool v6only : {true, false}) {
    Network::IoHandlePtr handle = bed.iface().socket(
        Network::Socket::Type::Stream,
        std::make_shared<Network::Address::Ipv6Instance>("2001:db8::1", 443, v6only), {});
    if (handle == nullptr) {
      std::cout << "  (no IPv6 sockets here: skipped)\n";
      return;
    }
    CHECK_EQ(intOption(handle->fdDoNotUse(), SOL_SOCKET, SO_DOMAIN), AF_INET6);
    CHECK_EQ(intOption(handle->fdDoNotUse(), IPPROTO_IPV6, IPV6_V6ONLY), v6only ? 1 : 0);
  }
}

// ---- the workers' fds of an AF_SMC listener share it (issue 19) ----------------------------

// Envoy's default listener in AF_SMC mode: one socket per worker, each with SO_REUSEPORT, all bound
// to the address before the first listen(). The first becomes the AF_SMC listener, the second's
// fd a duplicate of it: both fds accept from one queue.
STAND_IN_TEST(stand_in_af_smc_reuse_port_sockets_share_one_listener) {
  if (!kernel().af_smc || !localIpv4().has_value()) {
    std::cout << "  (needs AF_SMC (real or the fake kernel) and a non-loopback IPv4 address: "
                 "skipped)\n";
    return;
  }
  const uint16_t port = freePort();
  const std::string ip = listenerIp();
  SmcConfig config = meshConfig();
  config.set_mode(SmcConfig::MODE_AF_SMC);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);
  const auto address = std::make_shared<Network::Address::Ipv4Instance>(ip, port);
  std::vector<Network::IoHandlePtr> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(bed.listenerSocket(ip, port));
    setListenerDefaults(*workers.back());
    CHECK_EQ(workers.back()->bind(address).return_value_, 0);
  }
  for (auto& w : workers) {
    CHECK_EQ(w->listen(16).return_value_, 0);
    CHECK_EQ(kindOfFd(w->fdDoNotUse()), ENVOY_SMC_KIND_AF_SMC);
  }
  struct stat a {};
  struct stat b {};
  CHECK_EQ(::fstat(workers[0]->fdDoNotUse(), &a), 0);
  CHECK_EQ(::fstat(workers[1]->fdDoNotUse(), &b), 0);
  CHECK_EQ(a.st_ino, b.st_ino);
  CHECK_EQ(bed.stat("smc_listen_af_smc"), uint64_t(1));
  CHECK_EQ(bed.stat("listen_shared"), uint64_t(1));
  CHECK_EQ(bed.stat("tcp.reuse_port_unsupported"), uint64_t(0));
  checkServes(*workers[1], ip, port);
  checkServes(*workers[0], ip, port);
}

// A listener update that opens new sockets on the address while the old listener drains (Envoy
// does for a changed socket option with enable_reuse_port): their bind() meets EADDRINUSE beside
// the listening AF_SMC socket and takes it over; the old fds close and the listener serves on.
STAND_IN_TEST(stand_in_listener_update_takes_the_shared_af_smc_listener_over) {
  if (!kernel().af_smc || !localIpv4().has_value()) {
    std::cout << "  (needs AF_SMC (real or the fake kernel) and a non-loopback IPv4 address: "
                 "skipped)\n";
    return;
  }
  const uint16_t port = freePort();
  const std::string ip = listenerIp();
  SmcConfig config = meshConfig();
  config.set_mode(SmcConfig::MODE_AF_SMC);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);
  const auto address = std::make_shared<Network::Address::Ipv4Instance>(ip, port);
  Network::IoHandlePtr old_listener = bed.listenerSocket(ip, port);
  setListenerDefaults(*old_listener);
  CHECK_EQ(old_listener->bind(address).return_value_, 0);
  CHECK_EQ(old_listener->listen(16).return_value_, 0);
  // Envoy clones the old listener's fds for an update that keeps its sockets (dup), then closes
  // the originals: the library finds the listener without the fd it first knew.
  Network::IoHandlePtr clone = old_listener->duplicate();
  old_listener->close();

  Network::IoHandlePtr fresh = bed.listenerSocket(ip, port);
  setListenerDefaults(*fresh);
  CHECK_EQ(fresh->bind(address).return_value_, 0);
  CHECK_EQ(fresh->listen(16).return_value_, 0);
  CHECK_EQ(kindOfFd(fresh->fdDoNotUse()), ENVOY_SMC_KIND_AF_SMC);
  CHECK(asSmc(fresh)->decided());
  CHECK_EQ(bed.stat("listen_shared"), uint64_t(1));
  clone->close();
  checkServes(*fresh, ip, port);

  // A clash on an unselected port gets the kernel's answer unchanged.
  const uint16_t other = freePort();
  Network::IoHandlePtr plain = plainListener(ip, other);
  Network::IoHandlePtr clash = bed.listenerSocket(ip, other);
  setListenerDefaults(*clash);
  CHECK_EQ(clash->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, other)).errno_,
           EADDRINUSE);
}

} // namespace

int main() {
  std::cout << "envoy-smc shim tests against the Envoy stand-in; kernel SMC: "
            << (fakeKernelActive() ? "fake (ENVOY_SMC_FAKE_KERNEL=1)"
                                   : (kernel().any() ? "real" : "none"))
            << " (af_smc=" << kernel().af_smc << ", ipproto_smc=" << kernel().ipproto_smc
            << "), library " << Envoy::Network::Smc::Runtime::version() << "\n";
  int passed = 0;
  int failed = 0;
  for (const TestCase& test : allTests()) {
    try {
      test.body();
      ++passed;
      std::cout << "ok   " << test.name << "\n";
    } catch (const std::exception& e) {
      ++failed;
      std::cout << "FAIL " << test.name << ": " << e.what() << "\n";
    }
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}
