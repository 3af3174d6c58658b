// Integration test of the envoy-smc socket interface in a real Envoy (Envoy's own integration-test
// form: BaseIntegrationTest, a fake upstream, the test server in this process).
//
// IT CANNOT RUN ON THE DEVELOPMENT MACHINES: it needs Envoy built with Bazel (bazel/envoy,
// `bazel test //test:smc_integration_test`), which these machines cannot fetch. It has not been
// compiled; what it asserts was checked here only against the Envoy stand-in
// (bazel/test/stand_in_startup_test.cc) and, where possible, the stock Envoy 1.40
// (bazel/test/stock_envoy_test.sh). bazel/README.md ("The first real build") says how to run it.
//
// On a host without SMC (a CI machine, a laptop) it checks, with the extension as the default
// socket interface and tcp_proxy to a fake upstream:
// - Envoy starts (the extension is created at Envoy's bootstrap-extension step) and the
//   process-wide socket interface is envoy-smc's;
// - bytes flow both ways through tcp_proxy;
// - the smc.* counters count the sockets as tcp.kernel_lacks_smc;
// - an invalid typed_config makes Envoy refuse to start with envoy-smc's message.
// `envoy --mode validate` on the shipped fragment is validate_fragment_test.sh (same BUILD).

#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "envoy/config/bootstrap/v3/bootstrap.pb.h"

#include "source/common/network/socket_interface.h"

#include "test/integration/integration.h"
#include "test/test_common/environment.h"
#include "test/test_common/utility.h"

#include "gtest/gtest.h"

namespace Envoy {
namespace {

constexpr absl::string_view SmcInterface = "envoy.extensions.network.socket_interface.smc";

bool kernelHasSmc() {
  const int fd = ::socket(43 /* AF_SMC */, SOCK_STREAM, 0);
  if (fd >= 0) {
    ::close(fd);
    return true;
  }
  return false;
}

class SmcIntegrationTest : public BaseIntegrationTest,
                           public testing::TestWithParam<Network::Address::IpVersion> {
public:
  SmcIntegrationTest() : BaseIntegrationTest(GetParam(), ConfigHelper::tcpProxyConfig()) {}

  // The extension as the shipped fragment registers it, with `typed_config_body` as its config.
  void addSmcExtension(const std::string& typed_config_body) {
    config_helper_.addConfigModifier(
        [typed_config_body](envoy::config::bootstrap::v3::Bootstrap& bootstrap) {
          auto* extension = bootstrap.add_bootstrap_extensions();
          TestUtility::loadFromYaml(
              absl::StrCat("name: ", SmcInterface, "\n", "typed_config:\n",
                           "  \"@type\": type.googleapis.com/envoy_smc.v1.SmcConfig\n",
                           typed_config_body),
              *extension);
          bootstrap.set_default_socket_interface(std::string(SmcInterface));
        });
  }
};

INSTANTIATE_TEST_SUITE_P(IpVersions, SmcIntegrationTest,
                         testing::ValuesIn(TestEnvironment::getIpVersionsForTest()),
                         TestUtility::ipTestParamsToString);

TEST_P(SmcIntegrationTest, TcpProxyCarriesBytesAndCountersNameTheReason) {
  addSmcExtension("  mesh_switch: {always_on: true}\n"
                  "  opt_in: {all_workloads: true}\n"
                  "  upstream: {allow_local: true}\n");
  initialize();
  ASSERT_EQ(Network::SocketInterfaceSingleton::getExisting(),
            Network::socketInterface(std::string(SmcInterface)));

  IntegrationTcpClientPtr tcp_client = makeTcpConnection(lookupPort("tcp_proxy"));
  ASSERT_TRUE(tcp_client->write("hello"));
  FakeRawConnectionPtr fake_upstream_connection;
  ASSERT_TRUE(fake_upstreams_[0]->waitForRawConnection(fake_upstream_connection));
  ASSERT_TRUE(fake_upstream_connection->waitForData(5));
  ASSERT_TRUE(fake_upstream_connection->write("world"));
  tcp_client->waitForData("world");
  tcp_client->close();
  ASSERT_TRUE(fake_upstream_connection->waitForDisconnect());

  if (kernelHasSmc()) {
    GTEST_SKIP() << "this host has SMC: the kernel_lacks_smc counter does not apply";
  }
  // At least the listener and the upstream connection; the mirror timer copies them within 1 s.
  test_server_->waitForCounterGe("smc.tcp.kernel_lacks_smc", 2);
  test_server_->waitForCounterGe("smc.sockets_seen", 2);
  EXPECT_EQ(0, test_server_->counter("smc.smc_connect_af_smc")->value());
  EXPECT_EQ(0, test_server_->counter("smc.smc_connect_ipproto_smc")->value());
}

TEST_P(SmcIntegrationTest, InvalidTypedConfigRefusesToStartWithOurMessage) {
  addSmcExtension("  upstream: {allow: [\"10.0.0.0/33\"]}\n");
  EXPECT_DEATH(initialize(), "envoy-smc: upstream.allow\\[0\\]: \"10.0.0.0/33\" is not a CIDR");
}

} // namespace
} // namespace Envoy
