// archive_test.sh's link check: one C++ program linked with the shipped envoy-smc archive and a
// second, unrelated Rust static library. Each library is called and must work: envoy-smc builds a
// runtime, opens a socket through the policy and reports its counters; the other library runs a
// thread and catches its own panic (its unwinder and personality routine are the ones it brought).

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "envoy_smc.h"

extern "C" uint64_t second_rust_sum_on_thread(uint64_t n);
extern "C" int32_t second_rust_catches_its_panic();

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

} // namespace

int main() {
  check(envoy_smc_abi_version() == ENVOY_SMC_ABI_VERSION, "envoy-smc ABI version matches the header");
  check(std::strlen(envoy_smc_version()) > 0, "envoy-smc reports its version");

  const std::string yaml = "mode: MODE_AUTO\nmesh_switch: {always_on: true}\n";
  envoy_smc_runtime* runtime = nullptr;
  char* message = nullptr;
  const envoy_smc_result result =
      envoy_smc_runtime_new_from_yaml(yaml.data(), yaml.size(), &runtime, &message);
  check(result == ENVOY_SMC_OK && runtime != nullptr, "envoy-smc builds a runtime from YAML");
  envoy_smc_string_free(message);

  envoy_smc_socket_state state{};
  const int fd = envoy_smc_socket(runtime, AF_INET, SOCK_STREAM, 0, nullptr, 0, &state);
  check(fd >= 0, "envoy-smc opens a socket through its policy");
  if (fd >= 0) {
    ::close(fd);
  }
  uint64_t counters[64] = {};
  const size_t n = envoy_smc_stats_snapshot(runtime, counters, 64);
  bool seen = false;
  for (size_t i = 0; i < n && i < 64; ++i) {
    const char* name = envoy_smc_counter_name(i);
    if (name != nullptr && std::strcmp(name, "sockets_seen") == 0) {
      seen = counters[i] == 1;
    }
  }
  check(seen, "envoy-smc counted the socket (sockets_seen == 1)");
  envoy_smc_runtime_free(runtime);

  check(second_rust_sum_on_thread(100) == 5050, "the second Rust library runs a thread");
  check(second_rust_catches_its_panic() == 1, "the second Rust library catches its own panic");

  std::printf("%d of 6 checks failed\n", failures);
  return failures == 0 ? 0 : 1;
}
