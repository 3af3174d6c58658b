// The shim through Envoy's start-up, on the stand-in server (bazel/envoy_stand_in/source/server/):
// the order of source/server/server.cc and of --mode validate, the factory lookup by type URL,
// what each ServerFactoryContext accessor allows at which step, and what happens where Envoy's
// default socket interface would have used io_uring. Stand-in only (tests named StandIn*): in a
// real build the integration test (bazel/envoy/test/smc_integration_test.cc) starts a real Envoy.

#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "envoy/common/exception.h"
#include "envoy/registry/registry.h"

#include "source/common/network/address_impl.h"
#include "source/common/network/io_uring_socket_handle_impl.h"
#include "source/common/network/socket_interface_impl.h"
#include "source/server/server.h"

#include "bazel/source/smc_io_handle.h"
#include "bazel/source/smc_socket_interface.h"

#include "gtest/gtest.h"

#include "api/envoy_smc/v1/smc.pb.h"
#include "envoy/extensions/network/socket_interface/v3/default_socket_interface.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/json_util.h"

namespace {

using namespace Envoy;
using Network::Smc::SmcSocketInterface;
using Network::Smc::SmcSocketInterfaceExtension;
using Bootstrap = envoy::config::bootstrap::v3::Bootstrap;
using SmcConfig = envoy_smc::v1::SmcConfig;

constexpr const char* kDefaultInterface =
    "envoy.extensions.network.socket_interface.default_socket_interface";

void addExtension(Bootstrap& bootstrap, const std::string& name, const Protobuf::Message& config) {
  auto* entry = bootstrap.add_bootstrap_extensions();
  entry->set_name(name);
  entry->mutable_typed_config()->PackFrom(config);
}

// The shipped extension as a bootstrap carries it (like the image's template), opted in.
Bootstrap smcBootstrap(const SmcConfig& config = SmcConfig()) {
  Bootstrap bootstrap;
  auto& fields = *bootstrap.mutable_node()->mutable_metadata()->mutable_fields();
  (*fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields())
      ["smc.asm.alibabacloud.com/enabled"]
          .set_string_value("true");
  addExtension(bootstrap, SmcSocketInterface::Name, config);
  bootstrap.set_default_socket_interface(SmcSocketInterface::Name);
  return bootstrap;
}

SmcSocketInterface& registeredSmc() {
  return dynamic_cast<SmcSocketInterface&>(
      *Registry::FactoryRegistry<Server::Configuration::BootstrapExtensionFactory>::getFactory(
          SmcSocketInterface::Name));
}

Network::IoHandlePtr streamSocket(const std::string& ip, uint32_t port) {
  return Network::SocketInterfaceSingleton::get().socket(
      Network::Socket::Type::Stream, std::make_shared<Network::Address::Ipv4Instance>(ip, port),
      {});
}

bool isIoUring(const Network::IoHandlePtr& handle) {
  return dynamic_cast<Network::IoUringSocketHandleImpl*>(handle.get()) != nullptr;
}

// THE test this stand-in exists for: the shim created at Envoy's step 2 may touch only what
// exists then. A shim that reads statsConfig() (or anything config_.initialize() creates) in
// createBootstrapExtension aborts here, as Envoy crashes on the null stats config.
TEST(StandInStartup, ShimSurvivesEnvoysStartupOrder) {
  Server::StandInServer server(smcBootstrap());
  server.initialize();
  ASSERT_EQ(server.stage(), Server::StandInServer::Stage::Initialized);
  ASSERT_EQ(server.bootstrapExtensions().size(), 1u);
  EXPECT_EQ(server.serverInitializedCalls(), 1);
  // default_socket_interface made it the process-wide interface, with its extension attached.
  EXPECT_EQ(Network::SocketInterfaceSingleton::getExisting(), &registeredSmc());
  EXPECT_NE(registeredSmc().extension_, nullptr);
  server.startWorkers();

  // The counters exist from creation; the mirror timer fills them once the main loop runs.
  Network::IoHandlePtr a = streamSocket("192.0.2.10", 8080);
  Network::IoHandlePtr b = streamSocket("192.0.2.11", 8080);
  EXPECT_TRUE(server.store().hasCounter("smc.sockets_seen"));
  EXPECT_EQ(server.store().counterValue("smc.sockets_seen"), 0u);
  EXPECT_TRUE(server.runUntil([&] { return server.store().counterValue("smc.sockets_seen") == 2; },
                              3 * SmcSocketInterfaceExtension::MirrorInterval));
}

// A probe extension that uses one ServerFactoryContext accessor at creation, to show that the
// stand-in stops where Envoy would crash. Its config type is its own (google.protobuf.Timestamp)
// so that the registry finds it by type URL.
class ProbeFactory : public Server::Configuration::BootstrapExtensionFactory {
public:
  static inline int accessor = 0;
  Server::BootstrapExtensionPtr
  createBootstrapExtension(const Protobuf::Message&,
                           Server::Configuration::ServerFactoryContext& context) override {
    if (accessor == 1) {
      context.statsConfig();
    } else if (accessor == 2) {
      context.clusterManager();
    } else {
      context.localInfo();
      context.scope();
      context.mainThreadDispatcher();
    }
    return std::make_unique<Network::SocketInterfaceExtension>(
        Network::SocketInterfaceSingleton::get());
  }
  ProtobufTypes::MessagePtr createEmptyConfigProto() override {
    return std::make_unique<google::protobuf::Timestamp>();
  }
  std::string name() const override { return "envoy_smc.test.probe"; }
};
const Registry::RegisterFactory<ProbeFactory, Server::Configuration::BootstrapExtensionFactory>
    probe_registered;

Bootstrap probeBootstrap(int accessor) {
  ProbeFactory::accessor = accessor;
  Bootstrap bootstrap;
  addExtension(bootstrap, "envoy_smc.test.probe", google::protobuf::Timestamp());
  return bootstrap;
}

TEST(StandInStartup, AccessorsAreUsableWhenEnvoyMakesThemUsable) {
  {
    Server::StandInServer server(probeBootstrap(0));
    server.initialize(); // node, scope and dispatcher exist at creation
  }
  EXPECT_DEATH(
      {
        Server::StandInServer server(probeBootstrap(1));
        server.initialize();
      },
      "statsConfig\\(\\) used too early.*config_.initialize\\(\\)");
  EXPECT_DEATH(
      {
        Server::StandInServer server(probeBootstrap(2));
        server.initialize();
      },
      "clusterManager\\(\\) used too early");
}

TEST(StandInStartup, FactoryFoundByTypeUrlNotByName) {
  // Any name: Envoy goes by the type URL of typed_config.
  Bootstrap bootstrap;
  addExtension(bootstrap, "some.other.name", SmcConfig());
  {
    Server::StandInServer server(bootstrap);
    server.initialize();
    ASSERT_EQ(server.bootstrapExtensions().size(), 1u);
    EXPECT_NE(dynamic_cast<SmcSocketInterfaceExtension*>(server.bootstrapExtensions()[0].get()),
              nullptr);
    // Without default_socket_interface the interface is registered but not used.
    EXPECT_NE(Network::SocketInterfaceSingleton::getExisting(), &registeredSmc());
  }
  // Our name with a type nobody registered: Envoy refuses to start.
  Bootstrap unknown;
  addExtension(unknown, SmcSocketInterface::Name, google::protobuf::Struct());
  Server::StandInServer server(unknown);
  try {
    server.initialize();
    FAIL() << "an unknown type URL must refuse the configuration";
  } catch (const EnvoyException& e) {
    EXPECT_NE(std::string(e.what()).find("Didn't find a registered implementation"),
              std::string::npos);
  }
}

TEST(StandInStartup, InvalidTypedConfigRefusesStartWithOurMessage) {
  SmcConfig config;
  config.mutable_upstream()->add_allow("10.0.0.0/33");
  Network::SocketInterface* before = Network::SocketInterfaceSingleton::getExisting();
  {
    Server::StandInServer server(smcBootstrap(config));
    try {
      server.initialize();
      FAIL() << "invalid typed_config must refuse to start";
    } catch (const EnvoyException& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind("envoy-smc: ", 0), 0u) << message;
      EXPECT_NE(message.find("upstream.allow"), std::string::npos) << message;
    }
  }
  EXPECT_EQ(Network::SocketInterfaceSingleton::getExisting(), before);
  EXPECT_EQ(registeredSmc().extension_, nullptr);
}

TEST(StandInStartup, UnknownDefaultSocketInterfaceIsIgnoredAsInEnvoy) {
  Bootstrap bootstrap = smcBootstrap();
  bootstrap.set_default_socket_interface("envoy.extensions.network.socket_interface.nope");
  Network::SocketInterface* before = Network::SocketInterfaceSingleton::getExisting();
  Server::StandInServer server(bootstrap);
  server.initialize();
  EXPECT_EQ(Network::SocketInterfaceSingleton::getExisting(), before);
}

// --mode validate on the shipped bootstrap fragment (envoy-config/bootstrap/smc-bootstrap.yaml,
// converted to JSON by run.sh): extensions are created from it, no lifecycle hook runs, no
// interface is swapped.
TEST(StandInStartup, ValidateModeAcceptsTheShippedFragment) {
  const char* path = std::getenv("ENVOY_SMC_BOOTSTRAP_FRAGMENT_JSON");
  if (path == nullptr) {
    GTEST_SKIP() << "ENVOY_SMC_BOOTSTRAP_FRAGMENT_JSON not set (run.sh sets it)";
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  std::stringstream json;
  json << in.rdbuf();
  Bootstrap bootstrap;
  const auto status = google::protobuf::util::JsonStringToMessage(json.str(), &bootstrap);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(bootstrap.bootstrap_extensions_size(), 1);
  Network::SocketInterface* before = Network::SocketInterfaceSingleton::getExisting();
  Server::StandInServer server(bootstrap);
  server.validate();
  EXPECT_EQ(server.bootstrapExtensions().size(), 1u);
  EXPECT_EQ(server.serverInitializedCalls(), 0);
  EXPECT_EQ(Network::SocketInterfaceSingleton::getExisting(), before);
}

// Event::PostCb is absl::AnyInvocable<void()> in Envoy: post() takes move-only callables, and
// they run only in the loop, on the dispatcher's thread.
TEST(StandInDispatcher, PostTakesMoveOnlyCallablesAndRunsThemInTheLoop) {
  Server::StandInServer server(smcBootstrap());
  server.initialize();
  int ran = 0;
  auto owned = std::make_unique<int>(7);
  server.dispatcher().post([&ran, owned = std::move(owned)]() { ran = *owned; });
  EXPECT_EQ(ran, 0);
  EXPECT_TRUE(server.runUntil([&] { return ran == 7; }, std::chrono::seconds(1)));
}

// io_uring: Envoy's default interface builds IoUringSocketHandleImpl when its own bootstrap
// extension has io_uring_options and the worker thread registered. The control case first.
TEST(StandInIoUring, DefaultInterfaceWithIoUringOptionsBuildsIoUringHandles) {
  envoy::extensions::network::socket_interface::v3::DefaultSocketInterface default_config;
  default_config.mutable_io_uring_options()->set_io_uring_size(1000);
  Bootstrap bootstrap;
  addExtension(bootstrap, kDefaultInterface, default_config);
  bootstrap.set_default_socket_interface(kDefaultInterface);
  Server::StandInServer server(bootstrap);
  server.initialize();
  server.startWorkers(); // this thread is the worker now
  EXPECT_TRUE(isIoUring(streamSocket("192.0.2.10", 8080)));
  EXPECT_FALSE(isIoUring(Network::SocketInterfaceSingleton::get().socket(
      Network::Socket::Type::Datagram, std::make_shared<Network::Address::Ipv4Instance>("192.0.2.10", 53),
      {})));
}

// With envoy-smc the process-wide interface is envoy-smc's, and every socket it hands out is an
// epoll-driven IoSocketHandleImpl (or SmcIoHandle): io_uring_options on the default interface
// does not reach it. That is the intended behaviour: envoy-smc replaces a socket under its fd
// before connect()/listen(), which an io_uring handle with requests in flight against the old
// socket could not follow; and Envoy itself treats io_uring as "where available, else the
// default socket API". The default interface object keeps its io_uring for anything that names
// it explicitly.
TEST(StandInIoUring, SmcInterfaceKeepsEpollHandlesWhereDefaultWouldUseIoUring) {
  envoy::extensions::network::socket_interface::v3::DefaultSocketInterface default_config;
  default_config.mutable_io_uring_options()->set_io_uring_size(1000);
  SmcConfig smc;
  smc.mutable_mesh_switch()->set_always_on(true);
  smc.mutable_upstream()->set_allow_local(true);
  Bootstrap bootstrap = smcBootstrap(smc);
  addExtension(bootstrap, kDefaultInterface, default_config);
  Server::StandInServer server(bootstrap);
  server.initialize();
  server.startWorkers();
  ASSERT_EQ(Network::SocketInterfaceSingleton::getExisting(), &registeredSmc());

  Network::IoHandlePtr remote = streamSocket("192.0.2.10", 8080);
  Network::IoHandlePtr loopback = streamSocket("127.0.0.1", 8080);
  Network::IoHandlePtr unspecified = Network::SocketInterfaceSingleton::get().socket(
      Network::Socket::Type::Stream, Network::Address::Type::Ip, Network::Address::IpVersion::v4,
      false, {});
  Network::IoHandlePtr udp = Network::SocketInterfaceSingleton::get().socket(
      Network::Socket::Type::Datagram,
      std::make_shared<Network::Address::Ipv4Instance>("192.0.2.10", 53), {});
  for (const auto* handle : {&remote, &loopback, &unspecified, &udp}) {
    ASSERT_NE(*handle, nullptr);
    EXPECT_FALSE(isIoUring(*handle));
  }
  // The stream sockets went through envoy-smc's policy.
  auto& extension = dynamic_cast<SmcSocketInterfaceExtension&>(*server.bootstrapExtensions()[0]);
  extension.flushStats();
  EXPECT_EQ(server.store().counterValue("smc.sockets_seen"), 3u);
  // The default interface itself still builds io_uring handles on this worker.
  const auto* default_interface = Network::socketInterface(kDefaultInterface);
  ASSERT_NE(default_interface, nullptr);
  EXPECT_TRUE(isIoUring(default_interface->socket(
      Network::Socket::Type::Stream, std::make_shared<Network::Address::Ipv4Instance>("192.0.2.10", 80),
      {})));
}

} // namespace
