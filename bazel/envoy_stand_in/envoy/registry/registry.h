// Stand-in (tests only) for Envoy's envoy/registry/registry.h: a per-category registry keyed by
// factory name, REGISTER_FACTORY and DECLARE_FACTORY. The real registry also tracks
// deprecated names, config types and canonical names; the stand-in only finds by name.
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
};

template <class T, class Base> class RegisterFactory {
public:
  RegisterFactory() { FactoryRegistry<Base>::factories()[instance_.name()] = &instance_; }

private:
  T instance_{};
};

} // namespace Registry
} // namespace Envoy

#define REGISTER_FACTORY(FACTORY, BASE)                                                            \
  void forceRegister##FACTORY() {}                                                                 \
  static Envoy::Registry::RegisterFactory<FACTORY, BASE> FACTORY##_registered

#define DECLARE_FACTORY(FACTORY) void forceRegister##FACTORY()
