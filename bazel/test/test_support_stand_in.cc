// The unit tests' bed on the Envoy stand-in (tests only; see test_support.h): a stand-in server
// started from a bootstrap that carries the extension, as Envoy starts, so every test also runs
// the shim through Envoy's start-up order.

#include "envoy/registry/registry.h"

#include "source/common/network/address_impl.h"
#include "source/server/server.h"

#include "bazel/test/test_support.h"

namespace EnvoySmcTest {

using namespace Envoy;

Network::Smc::SmcSocketInterface& registeredInterface() {
  auto* factory =
      Registry::FactoryRegistry<Server::Configuration::BootstrapExtensionFactory>::getFactory(
          Network::Smc::SmcSocketInterface::Name);
  auto* iface = dynamic_cast<Network::Smc::SmcSocketInterface*>(factory);
  if (iface == nullptr) {
    throw std::logic_error("envoy-smc factory not registered");
  }
  return *iface;
}

namespace {
class NodeLocalInfo : public LocalInfo::LocalInfo {
public:
  explicit NodeLocalInfo(envoy::config::core::v3::Node node) : node_(std::move(node)) {}
  const envoy::config::core::v3::Node& node() const override { return node_; }

private:
  const envoy::config::core::v3::Node node_;
};
} // namespace

Network::Address::InstanceConstSharedPtr pipeAddress(const std::string& path) {
  return std::make_shared<Network::Address::PipeInstance>(path);
}

std::unique_ptr<LocalInfo::LocalInfo> makeLocalInfo(const envoy::config::core::v3::Node& node) {
  return std::make_unique<NodeLocalInfo>(node);
}

namespace {
class StandInProbe : public EventProbe {
public:
  explicit StandInProbe(Event::DispatcherImpl& dispatcher) : dispatcher_(dispatcher) {}
  int fileEventsCreated() const override { return dispatcher_.fileEventsCreated(); }
  int removalErrors() const override { return dispatcher_.removalErrors(); }

private:
  Event::DispatcherImpl& dispatcher_;
};

envoy::config::bootstrap::v3::Bootstrap bootstrapFor(const envoy_smc::v1::SmcConfig& config,
                                                     const Annotations& annotations) {
  envoy::config::bootstrap::v3::Bootstrap bootstrap;
  auto& fields = *bootstrap.mutable_node()->mutable_metadata()->mutable_fields();
  auto& pod = *fields["ANNOTATIONS"].mutable_struct_value()->mutable_fields();
  pod["sidecar.istio.io/status"].set_string_value("{}");
  if (annotations.opt_in.has_value()) {
    pod["smc.asm.alibabacloud.com/enabled"].set_string_value(*annotations.opt_in);
  }
  fields["LABELS"].mutable_struct_value();
  auto* extension = bootstrap.add_bootstrap_extensions();
  extension->set_name(Network::Smc::SmcSocketInterface::Name);
  extension->mutable_typed_config()->PackFrom(config);
  bootstrap.set_default_socket_interface(Network::Smc::SmcSocketInterface::Name);
  return bootstrap;
}
} // namespace

struct Bed::Impl {
  Impl(const envoy_smc::v1::SmcConfig& config, const Annotations& annotations)
      : server(bootstrapFor(config, annotations)), probe(server.dispatcher()) {
    server.initialize();
    server.startWorkers();
  }
  Server::StandInServer server;
  StandInProbe probe;
};

Bed::Bed(const envoy_smc::v1::SmcConfig& config, Annotations annotations)
    : impl_(std::make_unique<Impl>(config, annotations)) {}
Bed::~Bed() = default;

Network::Smc::SmcSocketInterface& Bed::iface() { return registeredInterface(); }

Network::Smc::SmcSocketInterfaceExtension& Bed::extension() {
  return dynamic_cast<Network::Smc::SmcSocketInterfaceExtension&>(
      *impl_->server.bootstrapExtensions().at(0));
}

Event::Dispatcher& Bed::dispatcher() { return impl_->server.dispatcher(); }

void Bed::runOnce(int timeout_ms) { impl_->server.dispatcher().runOnce(timeout_ms); }

uint64_t Bed::stat(const std::string& name) {
  extension().flushStats();
  return impl_->server.store().counterValue("smc." + name);
}

std::optional<uint64_t> Bed::peekStat(const std::string& name) {
  if (!impl_->server.store().hasCounter("smc." + name)) {
    return std::nullopt;
  }
  return impl_->server.store().counterValue("smc." + name);
}

const EventProbe* Bed::probe() { return &impl_->probe; }

} // namespace EnvoySmcTest
