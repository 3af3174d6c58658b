// The unit tests' bed on Envoy itself (see test_support.h): Envoy's dispatcher, an isolated stats
// store and a MockServerFactoryContext that hands out only what Envoy's server has when it
// creates bootstrap extensions (the dispatcher, the scope, the node), the extension created by
// the registered factory. For the real build (@envoy_smc//:smc_shim_test, bazel/envoy); it CANNOT
// BE COMPILED on the development machines and has not been: the Envoy test APIs it uses
// (Api::createApiForTest, the mocks, TestUtility::findCounter) were written from their use in
// Envoy's own tests, and a first real build may have to adjust them.

#include "envoy/registry/registry.h"

#include "source/common/network/address_impl.h"
#include "source/common/stats/isolated_store_impl.h"

#include "test/mocks/local_info/mocks.h"
#include "test/mocks/server/server_factory_context.h"
#include "test/test_common/utility.h"

#include "bazel/test/test_support.h"

namespace EnvoySmcTest {

using namespace Envoy;
using testing::NiceMock;
using testing::ReturnRef;

Network::Smc::SmcSocketInterface& registeredInterface() {
  auto* factory =
      Registry::FactoryRegistry<Server::Configuration::BootstrapExtensionFactory>::getFactory(
          Network::Smc::SmcSocketInterface::Name);
  auto* iface = dynamic_cast<Network::Smc::SmcSocketInterface*>(factory);
  RELEASE_ASSERT(iface != nullptr, "envoy-smc factory not registered");
  return *iface;
}

Network::Address::InstanceConstSharedPtr pipeAddress(const std::string& path) {
  auto address = Network::Address::PipeInstance::create(path);
  RELEASE_ASSERT(address.ok(), "bad pipe path");
  return std::move(*address);
}

namespace {
class NodeLocalInfo : public NiceMock<LocalInfo::MockLocalInfo> {
public:
  explicit NodeLocalInfo(envoy::config::core::v3::Node node) : node_(std::move(node)) {
    ON_CALL(*this, node()).WillByDefault(ReturnRef(node_));
  }

private:
  const envoy::config::core::v3::Node node_;
};

envoy::config::core::v3::Node nodeFor(const Annotations& annotations) {
  envoy::config::core::v3::Node node;
  auto& fields = *node.mutable_metadata()->mutable_fields();
  auto& pod = *fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields();
  pod["sidecar.istio.io/status"].set_string_value("{}");
  if (annotations.opt_in.has_value()) {
    pod["smc.asm.alibabacloud.com/enabled"].set_string_value(*annotations.opt_in);
  }
  fields["LABELS"].mutable_struct_value();
  return node;
}
} // namespace

std::unique_ptr<LocalInfo::LocalInfo> makeLocalInfo(const envoy::config::core::v3::Node& node) {
  return std::make_unique<NodeLocalInfo>(node);
}

struct Bed::Impl {
  Impl(const envoy_smc::v1::SmcConfig& config, const Annotations& annotations)
      : local_info(nodeFor(annotations)) {
    ON_CALL(context, mainThreadDispatcher()).WillByDefault(ReturnRef(*dispatcher));
    ON_CALL(context, scope()).WillByDefault(ReturnRef(*store.rootScope()));
    ON_CALL(context, localInfo()).WillByDefault(ReturnRef(local_info));
    extension = registeredInterface().createBootstrapExtension(config, context);
  }

  Api::ApiPtr api{Api::createApiForTest()};
  Event::DispatcherPtr dispatcher{api->allocateDispatcher("envoy_smc_test")};
  Stats::IsolatedStoreImpl store;
  NodeLocalInfo local_info;
  NiceMock<Server::Configuration::MockServerFactoryContext> context;
  Server::BootstrapExtensionPtr extension;
};

Bed::Bed(const envoy_smc::v1::SmcConfig& config, Annotations annotations)
    : impl_(std::make_unique<Impl>(config, annotations)) {}
Bed::~Bed() = default;

Network::Smc::SmcSocketInterface& Bed::iface() { return registeredInterface(); }

Network::Smc::SmcSocketInterfaceExtension& Bed::extension() {
  return dynamic_cast<Network::Smc::SmcSocketInterfaceExtension&>(*impl_->extension);
}

Event::Dispatcher& Bed::dispatcher() { return *impl_->dispatcher; }

void Bed::runOnce(int) { impl_->dispatcher->run(Event::Dispatcher::RunType::NonBlock); }

uint64_t Bed::stat(const std::string& name) {
  extension().flushStats();
  return peekStat(name).value_or(0);
}

std::optional<uint64_t> Bed::peekStat(const std::string& name) {
  Stats::CounterSharedPtr counter = TestUtility::findCounter(impl_->store, "smc." + name);
  if (counter == nullptr) {
    return std::nullopt;
  }
  return counter->value();
}

const EventProbe* Bed::probe() { return nullptr; }

} // namespace EnvoySmcTest
