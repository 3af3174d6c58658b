// Stand-in (tests only) for Envoy's envoy/registry/registry.h: a per-category registry of
// factories, found by name (getFactory) or by the full name of their config proto type
// (getFactoryByType), which is how Envoy finds a bootstrap extension: by the type URL of
// bootstrap_extensions[].typed_config (source/common/config/utility.h getFactory; lookup by name is
// off by default since the runtime guard envoy.reloadable_features.no_extension_lookup_by_name
// became true). Two factories of one category with the same config type make that type
// ambiguous, as in the real registry. REGISTER_FACTORY / DECLARE_FACTORY as in the real macros.
#pragma once

#include <map>
#include <string>

namespace Envoy {
namespace Registry {

template <class Base> class FactoryRegistry {
public:
  static std::map<std::string, Base*>& factories() {
    static auto* factories = new std::map<std::string, Base*>();
    return *factories;
  }
  static Base* getFactory(const std::string& name) {
    const auto it = factories().find(name);
    return it == factories().end() ? nullptr : it->second;
  }
  // Null for an unknown type and for a type two factories registered.
  static Base* getFactoryByType(const std::string& type) {
    Base* found = nullptr;
    for (const auto& [name, factory] : factories()) {
      if (factory->configType() == type) {
        if (found != nullptr) {
          return nullptr;
        }
        found = factory;
      }
    }
    return found;
  }
  static void registerFactory(Base& factory) { factories()[factory.name()] = &factory; }
};

template <class T, class Base> class RegisterFactory {
public:
  RegisterFactory() { FactoryRegistry<Base>::registerFactory(instance_); }

private:
  T instance_{};
};

} // namespace Registry
} // namespace Envoy

#define REGISTER_FACTORY(FACTORY, BASE)                                                            \
  void forceRegister##FACTORY() {}                                                                 \
  static Envoy::Registry::RegisterFactory<FACTORY, BASE> FACTORY##_registered

#define DECLARE_FACTORY(FACTORY) void forceRegister##FACTORY()
