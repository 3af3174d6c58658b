// Unit tests of the native extension (bazel/source/), gtest style, on the bed of test_support.h:
// here the Envoy stand-in (bazel/envoy_stand_in/, through the stand-in server's start-up) and the
// shipped envoy-smc archive (bazel/test/run.sh); in a real build Envoy's own classes
// (bazel/envoy/test/BUILD). The kernel decides what the "SMC" cases can show:
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

#include "source/common/network/address_impl.h"

#include "bazel/source/smc_io_handle.h"
#include "bazel/source/smc_socket_interface.h"
#include "bazel/test/test_support.h"

#include "gtest/gtest.h"

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
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len), 0);
  len = sizeof(int);
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len), 0);
  if (domain == kAfSmc) {
    return ENVOY_SMC_KIND_AF_SMC;
  }
  return protocol == kIpprotoSmc ? ENVOY_SMC_KIND_IPPROTO_SMC : ENVOY_SMC_KIND_TCP;
}

int intOption(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof(value);
  EXPECT_EQ(::getsockopt(fd, level, name, &value, &len), 0);
  return value;
}

// ---- the bed (test_support.h) -----------------------------------------------------------------

Network::IoHandlePtr streamSocket(Bed& bed, const std::string& ip, uint32_t port) {
  return bed.iface().socket(Network::Socket::Type::Stream,
                            std::make_shared<Network::Address::Ipv4Instance>(ip, port), {});
}

SmcConfig meshConfig() {
  SmcConfig config;
  config.mutable_upstream()->set_allow_local(true);
  return config;
}

uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  socklen_t len = sizeof(sin);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len), 0);
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
  ASSERT_EQ(handle.setOption(SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)).return_value_, 0);
}

void setKeepTcp(Network::IoHandle& handle) {
  const int zero = 0;
  ASSERT_EQ(handle.setOption(IPPROTO_TCP, kTcpFastopenConnect, &zero, sizeof(zero)).return_value_,
           0);
}

// Envoy's default listener options (enable_reuse_port defaults to true on Linux).
void setListenerDefaults(Network::IoHandle& handle) {
  const int one = 1;
  ASSERT_EQ(handle.setOption(SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)).return_value_, 0);
  ASSERT_EQ(handle.setOption(SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)).return_value_, 0);
}

SmcIoHandle* asSmc(const Network::IoHandlePtr& handle) {
  return dynamic_cast<SmcIoHandle*>(handle.get());
}

void connectTo(Network::IoHandle& handle, const std::string& ip, uint32_t port) {
  const auto rc = handle.connect(std::make_shared<Network::Address::Ipv4Instance>(ip, port));
  // Non-blocking: in progress, or at once; an unreachable TEST-NET address may fail at once.
  ASSERT_TRUE(rc.return_value_ == 0 || rc.errno_ == EINPROGRESS || rc.errno_ == ENETUNREACH);
}

absl::Status ignoreEvents(uint32_t) { return absl::OkStatus(); }

// Accepts one pending connection on a listening handle, waiting up to a second.
// A plain TCP listener on ip:port (a peer without SMC: an SMC client falls back to TCP).
Network::IoHandlePtr plainListener(const std::string& ip, uint16_t port) {
  Network::SocketInterfaceImpl plain;
  const auto address = std::make_shared<Network::Address::Ipv4Instance>(ip, port);
  Network::IoHandlePtr server = plain.socket(Network::Socket::Type::Stream, address, {});
  EXPECT_EQ(server->bind(address).return_value_, 0);
  EXPECT_EQ(server->listen(16).return_value_, 0);
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
  ASSERT_TRUE(accepted != nullptr);
  ASSERT_TRUE(dynamic_cast<SmcIoHandle*>(accepted.get()) == nullptr);
}

// ---- tests -----------------------------------------------------------------------------------

TEST(SmcShim, FactoryRegisteredUnderItsName) {
  SmcSocketInterface& iface = registeredInterface();
  ASSERT_EQ(iface.name(), std::string("envoy.extensions.network.socket_interface.smc"));
  ASSERT_EQ(iface.category(), std::string("envoy.bootstrap"));
  ASSERT_EQ(iface.createEmptyConfigProto()->GetTypeName(), std::string("envoy_smc.v1.SmcConfig"));
}

TEST(SmcShim, NoExtensionMeansDefaultInterface) {
  SmcSocketInterface& iface = registeredInterface();
  ASSERT_TRUE(iface.extension_ == nullptr);
  Network::IoHandlePtr handle = iface.socket(
      Network::Socket::Type::Stream,
      std::make_shared<Network::Address::Ipv4Instance>(kRemote, 80), {});
  ASSERT_TRUE(handle != nullptr);
  ASSERT_TRUE(asSmc(handle) == nullptr);
  ASSERT_EQ(kindOfFd(handle->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
}

TEST(SmcShim, BadConfigThrowsEnvoyExceptionWithLibraryMessage) {
  SmcConfig config = meshConfig();
  config.mutable_upstream()->add_allow("10.0.0.0/33");
  bool threw = false;
  try {
    Bed bed(config);
  } catch (const EnvoyException& e) {
    threw = true;
    const std::string message = e.what();
    ASSERT_TRUE(message.rfind("envoy-smc: ", 0) == 0);
    ASSERT_TRUE(message.find("upstream.allow") != std::string::npos);
    ASSERT_TRUE(message.find("10.0.0.0/33") != std::string::npos);
  }
  ASSERT_TRUE(threw);
  // A refused configuration leaves the interface as if the extension was never configured.
  ASSERT_TRUE(registeredInterface().extension_ == nullptr);

  SmcConfig bad_port;
  bad_port.mutable_listeners()->add_ports(70000);
  threw = false;
  try {
    Bed bed(bad_port);
  } catch (const EnvoyException& e) {
    threw = true;
    ASSERT_TRUE(std::string(e.what()).find("listeners.ports") != std::string::npos);
  }
  ASSERT_TRUE(threw);
}

TEST(SmcShim, ResultNamesComeFromTheLibrary) {
  using Network::Smc::Runtime;
  ASSERT_EQ(Runtime::resultName(ENVOY_SMC_OK), "ok");
  ASSERT_EQ(Runtime::resultName(ENVOY_SMC_INVALID_CONFIG), "invalid_config");
  ASSERT_EQ(Runtime::resultName(ENVOY_SMC_INTERNAL_ERROR), "internal_error");
  // A code the library does not know has a name too, not NULL.
  ASSERT_EQ(Runtime::resultName(static_cast<envoy_smc_result>(4242)), "unknown_result");
  ASSERT_EQ(std::string(envoy_smc_result_name(UINT32_MAX)), "unknown_result");
}

TEST(SmcShim, NodeAnnotationsReadFromMetadata) {
  envoy::config::core::v3::Node node;
  auto& fields = *node.mutable_metadata()->mutable_fields();
  auto& pod = *fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields();
  pod[kOptIn].set_string_value("true");
  pod["not.a.string"].set_number_value(3);
  (*fields["LABELS"].mutable_struct_value()->mutable_fields())["app"].set_string_value("fortio");
  const auto annotations = Network::Smc::nodeAnnotations(*makeLocalInfo(node));
  ASSERT_EQ(annotations.size(), size_t(1));
  ASSERT_EQ(annotations[0].first, std::string(kOptIn));
  ASSERT_EQ(annotations[0].second, std::string("true"));
  ASSERT_TRUE(Network::Smc::nodeAnnotations(*makeLocalInfo({})).empty());
}

TEST(SmcShim, OptInAbsentEverythingTcp) {
  for (const std::optional<std::string>& opt_in :
       {std::optional<std::string>(), std::optional<std::string>("false")}) {
    const uint16_t port = freePort();
    const std::string ip = listenerIp();
    SmcConfig config = meshConfig();
    config.mutable_mesh_switch()->set_always_on(true);
    config.mutable_listeners()->add_ports(port);
    Bed bed(config, Annotations{opt_in});

    Network::IoHandlePtr client = streamSocket(bed, kRemote, 8080);
    ASSERT_TRUE(asSmc(client) == nullptr);
    setEnableSwitch(*client);
    connectTo(*client, kRemote, 8080);
    ASSERT_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);

    Network::IoHandlePtr listener = streamSocket(bed, ip, port);
    ASSERT_TRUE(asSmc(listener) == nullptr);
    setListenerDefaults(*listener);
    ASSERT_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    ASSERT_EQ(listener->listen(16).return_value_, 0);
    ASSERT_EQ(kindOfFd(listener->fdDoNotUse()), ENVOY_SMC_KIND_TCP);

    ASSERT_EQ(bed.stat("tcp.not_opted_in"), uint64_t(2));
    ASSERT_EQ(bed.stat("smc_connect_af_smc") + bed.stat("smc_connect_ipproto_smc") +
                 bed.stat("smc_listen_af_smc") + bed.stat("smc_listen_ipproto_smc"),
             uint64_t(0));
  }
}

TEST(SmcShim, SmcForAllowedUpstreamOfEnabledCluster) {
  SmcConfig config = meshConfig();
  config.mutable_upstream()->add_allow("192.0.2.0/24");
  config.mutable_upstream()->add_allow_ports("8000-8100");
  Bed bed(config);

  Network::IoHandlePtr client = streamSocket(bed, kRemote, 8080);
  ASSERT_TRUE(client != nullptr);
  const int fd = client->fdDoNotUse();
  if (!kernel().any()) {
    ASSERT_TRUE(asSmc(client) == nullptr);
    connectTo(*client, kRemote, 8080);
    ASSERT_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
    ASSERT_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  SmcIoHandle* smc = asSmc(client);
  ASSERT_TRUE(smc != nullptr);
  client->initializeFileEvent(bed.dispatcher(), ignoreEvents, Event::FileTriggerType::Edge,
                              Event::FileReadyType::Read | Event::FileReadyType::Write);
  setEnableSwitch(*client);
  const int one = 1;
  ASSERT_EQ(client->setOption(IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)).return_value_, 0);
  connectTo(*client, kRemote, 8080);

  ASSERT_TRUE(smc->decided());
  ASSERT_EQ(smc->verdict().kind, kernel().autoKind());
  ASSERT_TRUE(smc->verdict().replaced);
  ASSERT_EQ(client->fdDoNotUse(), fd);
  ASSERT_EQ(kindOfFd(fd), kernel().autoKind());
  // The options Envoy set before the decision are on the new socket.
  ASSERT_EQ(intOption(fd, IPPROTO_TCP, TCP_NODELAY), 1);
  ASSERT_EQ(intOption(fd, SOL_SOCKET, SO_RCVLOWAT), 1);
  // The file event was removed while the old socket existed and created again on the new one.
  if (const EventProbe* probe = bed.probe(); probe != nullptr) {
    ASSERT_EQ(probe->removalErrors(), 0);
    ASSERT_EQ(probe->fileEventsCreated(), 2);
  }
  ASSERT_EQ(bed.stat(kernel().ipproto_smc ? "smc_connect_ipproto_smc" : "smc_connect_af_smc"),
           uint64_t(1));
}

TEST(SmcShim, TcpWithoutMeshSwitch) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = streamSocket(bed, kRemote, 8080);
  if (!kernel().any()) {
    ASSERT_TRUE(asSmc(client) == nullptr);
    ASSERT_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  client->initializeFileEvent(bed.dispatcher(), ignoreEvents, Event::FileTriggerType::Edge,
                              Event::FileReadyType::Read | Event::FileReadyType::Write);
  connectTo(*client, kRemote, 8080);
  SmcIoHandle* smc = asSmc(client);
  ASSERT_TRUE(smc != nullptr && smc->decided());
  ASSERT_EQ(smc->verdict().kind, ENVOY_SMC_KIND_TCP);
  ASSERT_EQ(smc->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_MESH_SWITCH_ABSENT));
  ASSERT_TRUE(!smc->verdict().replaced);
  ASSERT_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  // A TCP verdict leaves Envoy's file event alone.
  if (const EventProbe* probe = bed.probe(); probe != nullptr) {
    ASSERT_EQ(probe->fileEventsCreated(), 1);
  }
  ASSERT_EQ(bed.stat("tcp.mesh_switch_absent"), uint64_t(1));
}

TEST(SmcShim, TcpForLoopback) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = streamSocket(bed, "127.0.0.1", 8080);
  // ENVOY_SMC_TCP_REASON_LOOPBACK is known when the socket is built from the address: never tracked.
  ASSERT_TRUE(asSmc(client) == nullptr);
  setEnableSwitch(*client);
  connectTo(*client, "127.0.0.1", freePort());
  ASSERT_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  ASSERT_EQ(bed.stat(kernel().any() ? "tcp.loopback" : "tcp.kernel_lacks_smc"), uint64_t(1));
}

TEST(SmcShim, PerClusterFallback) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = streamSocket(bed, kRemote, 8080);
  setEnableSwitch(*client);
  setKeepTcp(*client);
  connectTo(*client, kRemote, 8080);
  ASSERT_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  if (!kernel().any()) {
    ASSERT_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    return;
  }
  SmcIoHandle* smc = asSmc(client);
  ASSERT_TRUE(smc != nullptr && smc->decided());
  ASSERT_EQ(smc->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_KEPT_ON_TCP));
  ASSERT_EQ(bed.stat("tcp.kept_on_tcp"), uint64_t(1));
}

TEST(SmcShim, ListenerSelectionByPort) {
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
    Network::IoHandlePtr listener = streamSocket(bed, ip, port);
    setListenerDefaults(*listener);
    setEnableSwitch(*listener);
    ASSERT_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    ASSERT_EQ(listener->listen(16).return_value_, 0);
    listeners.push_back(std::move(listener));
  }

  const envoy_smc_socket_kind want = kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP;
  ASSERT_EQ(kindOfFd(listeners[0]->fdDoNotUse()), want);
  // An unselected listener is a plain TCP socket: never an SMC socket with the fallback switch.
  ASSERT_EQ(kindOfFd(listeners[1]->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  if (kernel().any()) {
    ASSERT_EQ(asSmc(listeners[1])->verdict().reason, uint32_t(ENVOY_SMC_TCP_REASON_LISTENER_NOT_SELECTED));
    ASSERT_EQ(bed.stat("tcp.listener_not_selected"), uint64_t(1));
    ASSERT_EQ(bed.stat(kernel().ipproto_smc ? "smc_listen_ipproto_smc" : "smc_listen_af_smc"),
             uint64_t(1));
  } else {
    ASSERT_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(2));
  }
  checkServes(*listeners[0], ip, selected);
  checkServes(*listeners[1], ip, other);
}

TEST(SmcShim, WildcardListenerIsSelectable) {
  // Istio's inbound listener binds 0.0.0.0:15006: the wildcard address accepts from every
  // interface; it is not a loopback listener.
  const uint16_t port = freePort();
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);
  Network::IoHandlePtr listener = streamSocket(bed, "0.0.0.0", port);
  setListenerDefaults(*listener);
  ASSERT_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>("0.0.0.0", port))
               .return_value_,
           0);
  ASSERT_EQ(listener->listen(16).return_value_, 0);
  ASSERT_EQ(kindOfFd(listener->fdDoNotUse()),
           kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP);
  checkServes(*listener, "127.0.0.1", port);
}

TEST(SmcShim, DefaultListenerOptionsAcceptedInEveryMode) {
  for (const SmcConfig::Mode mode : {SmcConfig::MODE_AUTO, SmcConfig::MODE_AF_SMC,
                                     SmcConfig::MODE_IPPROTO_SMC, SmcConfig::MODE_OFF}) {
    const uint16_t port = freePort();
    const std::string ip = listenerIp();
    SmcConfig config = meshConfig();
    config.set_mode(mode);
    config.mutable_mesh_switch()->set_always_on(true);
    config.mutable_listeners()->add_ports(port);
    Bed bed(config);

    Network::IoHandlePtr listener = streamSocket(bed, ip, port);
    setListenerDefaults(*listener);
    ASSERT_EQ(listener->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port))
                 .return_value_,
             0);
    ASSERT_EQ(listener->listen(16).return_value_, 0);
    ASSERT_EQ(intOption(listener->fdDoNotUse(), SOL_SOCKET, SO_REUSEADDR), 1);
    checkServes(*listener, ip, port);

    const int fd = listener->fdDoNotUse();
    if (mode == SmcConfig::MODE_OFF) {
      ASSERT_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
      ASSERT_EQ(bed.stat("tcp.disabled"), uint64_t(1));
    } else if (mode == SmcConfig::MODE_AF_SMC && kernel().af_smc) {
      // AF_SMC refuses the SO_REUSEPORT Envoy set: an AF_SMC listener without it, which the
      // listener's other per-worker sockets would share.
      ASSERT_EQ(kindOfFd(fd), ENVOY_SMC_KIND_AF_SMC);
      ASSERT_EQ(intOption(fd, SOL_SOCKET, SO_REUSEPORT), 0);
      ASSERT_EQ(bed.stat("smc_listen_af_smc"), uint64_t(1));
    } else if (mode == SmcConfig::MODE_IPPROTO_SMC && kernel().ipproto_smc) {
      ASSERT_EQ(kindOfFd(fd), ENVOY_SMC_KIND_IPPROTO_SMC);
      ASSERT_EQ(intOption(fd, SOL_SOCKET, SO_REUSEPORT), 1);
    } else if (mode == SmcConfig::MODE_AUTO && kernel().any()) {
      ASSERT_EQ(kindOfFd(fd), kernel().autoKind());
    } else {
      ASSERT_EQ(kindOfFd(fd), ENVOY_SMC_KIND_TCP);
      ASSERT_EQ(bed.stat("tcp.kernel_lacks_smc"), uint64_t(1));
    }
  }
}

TEST(SmcShim, NonIpAndDatagramUntouched) {
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  Bed bed(config);
  auto& iface = bed.iface();

  const std::string path = "/tmp/envoy-smc-stand-in-" + std::to_string(::getpid());
  Network::IoHandlePtr pipe = iface.socket(
      Network::Socket::Type::Stream, pipeAddress(path), {});
  ASSERT_TRUE(pipe != nullptr && asSmc(pipe) == nullptr);
  ASSERT_EQ(intOption(pipe->fdDoNotUse(), SOL_SOCKET, SO_DOMAIN), AF_UNIX);

  Network::IoHandlePtr udp =
      iface.socket(Network::Socket::Type::Datagram,
                   std::make_shared<Network::Address::Ipv4Instance>(kRemote, 53), {});
  ASSERT_TRUE(udp != nullptr && asSmc(udp) == nullptr);
  ASSERT_EQ(intOption(udp->fdDoNotUse(), SOL_SOCKET, SO_TYPE), SOCK_DGRAM);

  Network::IoHandlePtr udp6 =
      iface.socket(Network::Socket::Type::Datagram, Network::Address::Type::Ip,
                   Network::Address::IpVersion::v6, false, {});
  ASSERT_TRUE(udp6 != nullptr && asSmc(udp6) == nullptr);

  Network::SocketCreationOptions mptcp;
  mptcp.mptcp_enabled_ = true;
  Network::IoHandlePtr mp =
      iface.socket(Network::Socket::Type::Stream,
                   std::make_shared<Network::Address::Ipv4Instance>(kRemote, 80), mptcp);
  ASSERT_TRUE(asSmc(mp) == nullptr);

  // None of them reached envoy-smc.
  ASSERT_EQ(bed.stat("sockets_seen"), uint64_t(0));
}

TEST(SmcShim, StatsMirroredUnderSmcPrefix) {
  Bed bed(meshConfig());
  // Every counter exists from the extension's creation on (zero until something happens).
  for (const std::string& name : Network::Smc::Runtime::counterNames()) {
    ASSERT_TRUE(bed.peekStat(name).has_value()) << name;
  }
  Network::IoHandlePtr a = streamSocket(bed, kRemote, 8080);
  Network::IoHandlePtr b = streamSocket(bed, "127.0.0.1", 8080);
  // The main loop's mirror timer copies the library's counters (at most MirrorInterval late).
  const auto deadline = std::chrono::steady_clock::now() +
                        3 * Network::Smc::SmcSocketInterfaceExtension::MirrorInterval;
  while (bed.peekStat("sockets_seen") != std::optional<uint64_t>(2) &&
         std::chrono::steady_clock::now() < deadline) {
    bed.runOnce(50);
  }
  ASSERT_EQ(bed.peekStat("sockets_seen"), std::optional<uint64_t>(2));
  // Flushing again adds only what happened since.
  Network::IoHandlePtr c = streamSocket(bed, kRemote, 8081);
  ASSERT_EQ(bed.stat("sockets_seen"), uint64_t(3));
  ASSERT_EQ(bed.stat("sockets_seen"), uint64_t(3));
}

TEST(SmcShim, DuplicateDecidesListenerBeforeSharing) {
  const uint16_t port = freePort();
  const std::string ip = listenerIp();
  SmcConfig config = meshConfig();
  config.mutable_mesh_switch()->set_always_on(true);
  config.mutable_listeners()->add_ports(port);
  Bed bed(config);

  // enable_reuse_port: false: one bound socket, duplicated for the other workers before listen().
  Network::IoHandlePtr first = streamSocket(bed, ip, port);
  const int one = 1;
  ASSERT_EQ(first->setOption(SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)).return_value_, 0);
  ASSERT_EQ(
      first->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, port)).return_value_, 0);
  Network::IoHandlePtr second = first->duplicate();
  if (SmcIoHandle* smc = asSmc(first); smc != nullptr) {
    ASSERT_TRUE(smc->decided());
  }
  ASSERT_EQ(kindOfFd(first->fdDoNotUse()), kindOfFd(second->fdDoNotUse()));
  ASSERT_EQ(kindOfFd(first->fdDoNotUse()),
           kernel().any() ? kernel().autoKind() : ENVOY_SMC_KIND_TCP);
  ASSERT_EQ(first->listen(16).return_value_, 0);
  ASSERT_EQ(second->listen(16).return_value_, 0);
  checkServes(*second, ip, port);
}

TEST(SmcShim, ClientEventsArriveAfterReplacement) {
  const std::optional<std::string> ip = localIpv4();
  if (!ip.has_value()) {
    GTEST_SKIP() << "no non-loopback IPv4 address";
  }
  const uint16_t port = freePort();
  Network::IoHandlePtr server = plainListener(*ip, port);

  Bed bed(meshConfig());
  Network::IoHandlePtr client = streamSocket(bed, *ip, port);
  uint32_t seen = 0;
  recordEvents(*client, bed.dispatcher(), seen);
  setEnableSwitch(*client);
  connectTo(*client, *ip, port);
  if (kernel().any()) {
    ASSERT_TRUE(asSmc(client) != nullptr && asSmc(client)->verdict().replaced);
    if (const EventProbe* probe = bed.probe(); probe != nullptr) {
      ASSERT_EQ(probe->removalErrors(), 0);
    }
  }
  for (int i = 0; i < 100 && (seen & Event::FileReadyType::Write) == 0; ++i) {
    bed.runOnce(10);
  }
  ASSERT_TRUE((seen & Event::FileReadyType::Write) != 0);
  ASSERT_EQ(intOption(client->fdDoNotUse(), SOL_SOCKET, SO_ERROR), 0);
  Network::IoHandlePtr accepted = acceptOne(*server);
  ASSERT_TRUE(accepted != nullptr);
  // Data from the server wakes the client's (re-created) read event.
  ASSERT_EQ(::send(accepted->fdDoNotUse(), "x", 1, 0), ssize_t(1));
  seen = 0;
  for (int i = 0; i < 100 && (seen & Event::FileReadyType::Read) == 0; ++i) {
    bed.runOnce(10);
  }
  ASSERT_TRUE((seen & Event::FileReadyType::Read) != 0);
}

sockaddr_in ipv4(const std::string& ip, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  EXPECT_EQ(::inet_pton(AF_INET, ip.c_str(), &sin.sin_addr), 1);
  return sin;
}

// Adaptive fallback's rescue in the extension. Fake kernel only: it stands in for the kernel's
// SMC sockets and for the middlebox (an SMC connect to the server goes to a listener whose accept
// queue is full, which drops its SYNs, while plain TCP reaches the server; the real middlebox is
// an iptables rule in the SMC-R VM). The library's watchdog proves the black hole and hands the
// connect back; the shim posts the rescue to the dispatcher, and on its thread the connect moves
// to a TCP socket under the same fd whose write event then arrives through the same callback.
TEST(SmcShim, StuckConnectIsRescuedThroughTheDispatcher) {
  const std::optional<std::string> ip = localIpv4();
  if (!fakeKernelActive() || !ip.has_value()) {
    GTEST_SKIP() << "needs the fake SMC kernel and a non-loopback IPv4 address";
  }
  const uint16_t port = freePort();
  Network::IoHandlePtr server = plainListener(*ip, port);
  // The stall: backlog 0 holds one connection (the filler); later SYNs are dropped.
  const uint16_t stall_port = freePort();
  const int stall = ::socket(AF_INET, SOCK_STREAM, 0);
  const sockaddr_in stall_addr = ipv4(*ip, stall_port);
  ASSERT_EQ(::bind(stall, reinterpret_cast<const sockaddr*>(&stall_addr), sizeof(stall_addr)), 0);
  ASSERT_EQ(::listen(stall, 0), 0);
  const int filler = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(::connect(filler, reinterpret_cast<const sockaddr*>(&stall_addr), sizeof(stall_addr)),
           0);
  fakeBlackHole(ipv4(*ip, port), stall_addr);

  SmcConfig config = meshConfig();
  config.mutable_adaptive_fallback()->set_detect_after_ms(300);
  Bed bed(config);
  Network::IoHandlePtr client = streamSocket(bed, *ip, port);
  uint32_t seen = 0;
  recordEvents(*client, bed.dispatcher(), seen);
  setEnableSwitch(*client);
  connectTo(*client, *ip, port);
  const int fd = client->fdDoNotUse();
  ASSERT_TRUE(asSmc(client) != nullptr && asSmc(client)->verdict().kind != ENVOY_SMC_KIND_TCP);
  ASSERT_TRUE(asSmc(client)->rescuable());
  const auto start = std::chrono::steady_clock::now();
  while ((seen & Event::FileReadyType::Write) == 0 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(6)) {
    bed.runOnce(10);
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
  std::cout << "  (write event " << took << " ms after connect)\n";
  ASSERT_TRUE((seen & Event::FileReadyType::Write) != 0);
  ASSERT_EQ(client->fdDoNotUse(), fd);
  ASSERT_EQ(intOption(fd, SOL_SOCKET, SO_ERROR), 0);
  ASSERT_EQ(intOption(fd, SOL_SOCKET, SO_PROTOCOL), IPPROTO_TCP);
  ASSERT_TRUE(!asSmc(client)->rescuable());
  ASSERT_EQ(bed.stat("adaptive.black_hole_tripped"), uint64_t(1));
  ASSERT_EQ(bed.stat("adaptive.rescued"), uint64_t(1));
  ASSERT_EQ(bed.stat("adaptive.rescue_failed"), uint64_t(0));
  // The server got the watchdog's plain TCP probe and the rescued connection; data flows on it.
  ASSERT_EQ(::send(fd, "rescued", 7, MSG_NOSIGNAL), ssize_t(7));
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
  ASSERT_TRUE(got);
  ::close(filler);
  ::close(stall);
}

TEST(SmcShim, PendingActivationKeepsTcp) {
  Bed bed(meshConfig());
  Network::IoHandlePtr client = streamSocket(bed, kRemote, 8080);
  uint32_t activated = 0;
  recordEvents(*client, bed.dispatcher(), activated);
  setEnableSwitch(*client);
  // What Envoy does when bind or a socket option failed: close out of band through a write event.
  client->activateFileEvents(Event::FileReadyType::Write);
  connectTo(*client, kRemote, 8080);
  ASSERT_EQ(kindOfFd(client->fdDoNotUse()), ENVOY_SMC_KIND_TCP);
  if (const EventProbe* probe = bed.probe(); probe != nullptr) {
    ASSERT_EQ(probe->fileEventsCreated(), 1);
  }
  // The activation Envoy made still fires on the same file event.
  uint32_t seen = 0;
  for (int i = 0; i < 10 && seen == 0; ++i) {
    bed.runOnce(0);
    seen = activated;
  }
  ASSERT_NE(seen, 0u);
  if (kernel().any()) {
    ASSERT_TRUE(asSmc(client)->decided());
    ASSERT_TRUE(!asSmc(client)->verdict().replaced);
  }
}

TEST(SmcShim, Ipv6V6onlyFollowsTheAddress) {
  Bed bed(meshConfig());
  for (const bool v6only : {true, false}) {
    Network::IoHandlePtr handle = bed.iface().socket(
        Network::Socket::Type::Stream,
        std::make_shared<Network::Address::Ipv6Instance>("2001:db8::1", 443, nullptr, v6only), {});
    if (handle == nullptr) {
      GTEST_SKIP() << "no IPv6 sockets here";
    }
    ASSERT_EQ(intOption(handle->fdDoNotUse(), SOL_SOCKET, SO_DOMAIN), AF_INET6);
    ASSERT_EQ(intOption(handle->fdDoNotUse(), IPPROTO_IPV6, IPV6_V6ONLY), v6only ? 1 : 0);
  }
}

// ---- the workers' fds of an AF_SMC listener share it (issue 19) ----------------------------

// AF_SMC mode with one selected listener port (a free one) on the non-loopback IPv4 address.
class AfSmcListener : public testing::Test {
protected:
  void SetUp() override {
    if (!kernel().af_smc || !localIpv4().has_value()) {
      GTEST_SKIP() << "needs AF_SMC (real or the fake kernel) and a non-loopback IPv4 address";
    }
    port = freePort();
    ip = listenerIp();
    SmcConfig config = meshConfig();
    config.set_mode(SmcConfig::MODE_AF_SMC);
    config.mutable_listeners()->add_ports(port);
    bed_ = std::make_unique<Bed>(config);
    address = std::make_shared<Network::Address::Ipv4Instance>(ip, port);
  }

  Bed& bed() { return *bed_; }

  uint16_t port{};
  std::string ip;
  Network::Address::InstanceConstSharedPtr address;

private:
  std::unique_ptr<Bed> bed_;
};

// Envoy's default listener in AF_SMC mode: one socket per worker, each with SO_REUSEPORT, all bound
// to the address before the first listen(). The first becomes the AF_SMC listener, the second's
// fd a duplicate of it: both fds accept from one queue.
TEST_F(AfSmcListener, ReusePortSocketsShareOneListener) {
  std::vector<Network::IoHandlePtr> workers;
  for (int i = 0; i < 2; ++i) {
    workers.push_back(streamSocket(bed(), ip, port));
    setListenerDefaults(*workers.back());
    ASSERT_EQ(workers.back()->bind(address).return_value_, 0);
  }
  for (auto& w : workers) {
    ASSERT_EQ(w->listen(16).return_value_, 0);
    ASSERT_EQ(kindOfFd(w->fdDoNotUse()), ENVOY_SMC_KIND_AF_SMC);
  }
  struct stat a {};
  struct stat b {};
  ASSERT_EQ(::fstat(workers[0]->fdDoNotUse(), &a), 0);
  ASSERT_EQ(::fstat(workers[1]->fdDoNotUse(), &b), 0);
  ASSERT_EQ(a.st_ino, b.st_ino);
  ASSERT_EQ(bed().stat("smc_listen_af_smc"), uint64_t(1));
  ASSERT_EQ(bed().stat("listen_shared"), uint64_t(1));
  ASSERT_EQ(bed().stat("tcp.reuse_port_unsupported"), uint64_t(0));
  checkServes(*workers[1], ip, port);
  checkServes(*workers[0], ip, port);
}

// A listener update that opens new sockets on the address while the old listener drains (Envoy
// does for a changed socket option with enable_reuse_port): their bind() meets EADDRINUSE beside
// the listening AF_SMC socket and takes it over; the old fds close and the listener serves on.
TEST_F(AfSmcListener, ListenerUpdateTakesTheSharedListenerOver) {
  Network::IoHandlePtr old_listener = streamSocket(bed(), ip, port);
  setListenerDefaults(*old_listener);
  ASSERT_EQ(old_listener->bind(address).return_value_, 0);
  ASSERT_EQ(old_listener->listen(16).return_value_, 0);
  // Envoy clones the old listener's fds for an update that keeps its sockets (dup), then closes
  // the originals: the library finds the listener without the fd it first knew.
  Network::IoHandlePtr clone = old_listener->duplicate();
  old_listener->close();

  Network::IoHandlePtr fresh = streamSocket(bed(), ip, port);
  setListenerDefaults(*fresh);
  ASSERT_EQ(fresh->bind(address).return_value_, 0);
  ASSERT_EQ(fresh->listen(16).return_value_, 0);
  ASSERT_EQ(kindOfFd(fresh->fdDoNotUse()), ENVOY_SMC_KIND_AF_SMC);
  ASSERT_TRUE(asSmc(fresh)->decided());
  ASSERT_EQ(bed().stat("listen_shared"), uint64_t(1));
  clone->close();
  checkServes(*fresh, ip, port);

  // A clash on an unselected port gets the kernel's answer unchanged.
  const uint16_t other = freePort();
  Network::IoHandlePtr plain = plainListener(ip, other);
  Network::IoHandlePtr clash = streamSocket(bed(), ip, other);
  setListenerDefaults(*clash);
  ASSERT_EQ(clash->bind(std::make_shared<Network::Address::Ipv4Instance>(ip, other)).errno_,
           EADDRINUSE);
}

} // namespace

// In a real build Envoy's test main runs the tests; here the kernel under test is named first.
#ifndef ENVOY_SMC_REAL_ENVOY
int main(int argc, char** argv) {
  std::cout << "envoy-smc shim tests; kernel SMC: "
            << (fakeKernelActive() ? "fake (ENVOY_SMC_FAKE_KERNEL=1)"
                                   : (kernel().any() ? "real" : "none"))
            << " (af_smc=" << kernel().af_smc << ", ipproto_smc=" << kernel().ipproto_smc
            << "), library " << Envoy::Network::Smc::Runtime::version() << "\n";
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
#endif
