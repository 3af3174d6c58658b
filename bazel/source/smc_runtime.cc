#include "smc_runtime.h"

#include <algorithm>
#include <cstdint>

namespace Envoy {
namespace Network {
namespace Smc {

bool Runtime::abiMatches(std::string* error) {
  // A library built for another ABI would read our structs with another layout: refuse to start
  // rather than misread every socket decision.
  const uint32_t library_abi = envoy_smc_abi_version();
  if (library_abi == ENVOY_SMC_ABI_VERSION) {
    return true;
  }
  *error = "envoy-smc library " + version() + " implements ABI " + std::to_string(library_abi) +
           ", this extension was built for ABI " + std::to_string(ENVOY_SMC_ABI_VERSION);
  return false;
}

std::shared_ptr<const Runtime> Runtime::adopt(envoy_smc_result result, envoy_smc_runtime* runtime,
                                              char* message, std::string* error) {
  if (result == ENVOY_SMC_OK && runtime != nullptr) {
    envoy_smc_string_free(message);
    envoy_smc_runtime_set_rescuer(runtime, &Runtime::onRescue, nullptr);
    return std::shared_ptr<const Runtime>(new Runtime(runtime));
  }
  *error = message != nullptr ? std::string(message) : resultName(result);
  envoy_smc_string_free(message);
  envoy_smc_runtime_free(runtime);
  return nullptr;
}

std::shared_ptr<const Runtime> Runtime::fromProto(const std::string& config_bytes,
                                                  const Annotations& annotations,
                                                  std::string* error) {
  if (!abiMatches(error)) {
    return nullptr;
  }
  std::vector<envoy_smc_annotation> flat;
  flat.reserve(annotations.size());
  for (const auto& [key, value] : annotations) {
    flat.push_back({key.data(), key.size(), value.data(), value.size()});
  }
  envoy_smc_runtime* runtime = nullptr;
  char* message = nullptr;
  const envoy_smc_result result = envoy_smc_runtime_new_from_proto(
      reinterpret_cast<const uint8_t*>(config_bytes.data()), config_bytes.size(),
      flat.empty() ? nullptr : flat.data(), flat.size(), &runtime, &message);
  return adopt(result, runtime, message, error);
}

std::shared_ptr<const Runtime> Runtime::fromYaml(const std::string& yaml, std::string* error) {
  if (!abiMatches(error)) {
    return nullptr;
  }
  envoy_smc_runtime* runtime = nullptr;
  char* message = nullptr;
  const envoy_smc_result result =
      envoy_smc_runtime_new_from_yaml(yaml.data(), yaml.size(), &runtime, &message);
  return adopt(result, runtime, message, error);
}

Runtime::~Runtime() { envoy_smc_runtime_free(runtime_); }

int Runtime::socket(int domain, int type, int protocol, const sockaddr* addr, socklen_t addrlen,
                    envoy_smc_socket_state* state) const {
  return envoy_smc_socket(runtime_, domain, type, protocol, addr, addrlen, state);
}

void Runtime::noteSockopt(envoy_smc_socket_state* state, int level, int name, const void* value,
                          socklen_t len) const {
  envoy_smc_note_sockopt(runtime_, state, level, name, value, len);
}

bool Runtime::onListen(int fd, const envoy_smc_socket_state& state,
                       const envoy_smc_socket_record& record, envoy_smc_verdict* out) const {
  return envoy_smc_on_listen(runtime_, fd, &state, &record, out) == ENVOY_SMC_OK;
}

bool Runtime::onDup(int fd, const envoy_smc_socket_state& state,
                    const envoy_smc_socket_record& record, envoy_smc_verdict* out) const {
  return envoy_smc_on_dup(runtime_, fd, &state, &record, out) == ENVOY_SMC_OK;
}

bool Runtime::onConnect(int fd, const envoy_smc_socket_state& state,
                        const envoy_smc_socket_record& record, const sockaddr* addr,
                        socklen_t addrlen, bool (*before_replace)(void*), void* ctx,
                        RescueTicketSharedPtr ticket, uint64_t* cookie,
                        envoy_smc_verdict* out) const {
  // The token is a heap copy of the ticket, owned by the library until onRescue takes it back.
  auto* held = ticket != nullptr ? new RescueTicketSharedPtr(std::move(ticket)) : nullptr;
  *cookie = 0;
  const bool ok = envoy_smc_on_connect(runtime_, fd, &state, &record, addr, addrlen,
                                       before_replace, ctx, reinterpret_cast<uintptr_t>(held),
                                       held != nullptr ? cookie : nullptr, out) == ENVOY_SMC_OK;
  if (held != nullptr && *cookie == 0) {
    delete held; // not watched: the library never calls the rescuer with it
  }
  return ok;
}

bool Runtime::joinSharedListener(int fd, const envoy_smc_socket_state& state,
                                 const sockaddr* addr, socklen_t addrlen) const {
  bool joined = false;
  return envoy_smc_join_shared_listener(runtime_, fd, &state, addr, addrlen, &joined) ==
             ENVOY_SMC_OK &&
         joined;
}

bool Runtime::rescueConnect(int fd, uint64_t cookie, const sockaddr* addr, socklen_t addrlen,
                            const sockaddr* source, socklen_t source_len) const {
  return envoy_smc_rescue_connect(runtime_, fd, cookie, addr, addrlen, source, source_len) ==
         ENVOY_SMC_OK;
}

void Runtime::onRescue(void*, uint64_t token, bool rescue) noexcept {
  std::unique_ptr<RescueTicketSharedPtr> held(reinterpret_cast<RescueTicketSharedPtr*>(token));
  if (!rescue || held == nullptr || *held == nullptr) {
    return;
  }
  // Called from Rust: nothing may unwind out of here.
  try {
    (*held)->rescue();
  } catch (...) {
  }
}

std::vector<uint64_t> Runtime::counters() const {
  std::vector<uint64_t> values(envoy_smc_stats_snapshot(runtime_, nullptr, 0));
  const size_t total = envoy_smc_stats_snapshot(runtime_, values.data(), values.size());
  values.resize(std::min(total, values.size()));
  return values;
}

std::vector<std::string> Runtime::counterNames() {
  std::vector<std::string> names;
  for (size_t i = 0;; ++i) {
    const char* name = envoy_smc_counter_name(i);
    if (name == nullptr) {
      return names;
    }
    names.emplace_back(name);
  }
}

std::string Runtime::resultName(envoy_smc_result result) {
  // The library names every code, unknown ones included ("unknown_result"), never NULL.
  return envoy_smc_result_name(static_cast<uint32_t>(result));
}

std::string Runtime::reasonName(uint32_t reason) {
  const char* name = envoy_smc_reason_name(reason);
  return name != nullptr ? name : "reason " + std::to_string(reason);
}

std::string Runtime::version() { return envoy_smc_version(); }

} // namespace Smc
} // namespace Network
} // namespace Envoy
