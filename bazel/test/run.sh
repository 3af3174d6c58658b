#!/usr/bin/env bash
# Builds and runs the native extension's unit tests: the C++ shim (bazel/source/) against the
# Envoy stand-in (bazel/envoy_stand_in/), linked with the real envoy-smc static library
# (target/debug/libenvoy_smc.a), with g++ -Wall -Wextra -Werror. Runs the tests twice: on the
# machine's own kernel, and with the fake SMC kernel of fake_smc_kernel.cc, so that the SMC
# decision path is exercised on machines without SMC too; then the image's bootstrap-template
# patch (test_image_bootstrap.py). Prints "N passed, N failed" last.
#
# Environment: CXX (default g++), CARGO (default cargo), SKIP_CARGO_BUILD=1 to use the archive
# as it is, BUILD_DIR (default target/bazel-shim-test).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cxx="${CXX:-g++}"
build="${BUILD_DIR:-$root/target/bazel-shim-test}"
mkdir -p "$build"

need_pkg=()
command -v protoc >/dev/null || need_pkg+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/message.h ] || need_pkg+=(libprotobuf-dev)
if [ "${#need_pkg[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing ${need_pkg[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkg[@]}" >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkg[@]}"; }
  else
    echo "run.sh: needs ${need_pkg[*]}" >&2
    exit 1
  fi
fi

if [ "${SKIP_CARGO_BUILD:-0}" != 1 ]; then
  "${CARGO:-cargo}" build --lib --quiet
fi
lib="$root/target/debug/libenvoy_smc.a"
[ -f "$lib" ] || { echo "run.sh: $lib missing (cargo build --lib)" >&2; exit 1; }

protoc -I"$root" --cpp_out="$build" api/envoy_smc/v1/smc.proto

flags=(-std=c++17 -Wall -Wextra -Werror -Wnon-virtual-dtor -Woverloaded-virtual -Wold-style-cast -Wformat -Wformat-security -Wvla -g -O0
  -I"$root/bazel/envoy_stand_in" -I"$root/bazel/source" -I"$root/include" -I"$build")
srcs=(
  bazel/source/smc_runtime.cc
  bazel/source/smc_io_handle.cc
  bazel/source/smc_socket_interface.cc
  bazel/envoy_stand_in/stand_in_impl.cc
  bazel/test/test_support.cc
  bazel/test/fake_smc_kernel.cc
  bazel/test/smc_shim_stand_in_test.cc
)
objs=()
for src in "${srcs[@]}"; do
  obj="$build/$(basename "${src%.cc}").o"
  "$cxx" "${flags[@]}" -c "$src" -o "$obj"
  objs+=("$obj")
done
# Generated code is not ours to hold to -Werror.
"$cxx" -std=c++17 -g -O0 -I"$build" -c "$build/api/envoy_smc/v1/smc.pb.cc" -o "$build/smc.pb.o"
objs+=("$build/smc.pb.o")

bin="$build/smc_shim_stand_in_test"
"$cxx" -o "$bin" "${objs[@]}" "$lib" -lprotobuf -lpthread -ldl -lm

passed=0
failed=0
run() {
  local out
  set +e
  out="$("$@" 2>&1)"
  set -e
  printf '%s\n' "$out" | sed '$d'
  local last p f
  last="$(printf '%s\n' "$out" | tail -n 1)"
  if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    p="${BASH_REMATCH[1]}"
    f="${BASH_REMATCH[2]}"
  else
    printf '%s\n' "$last"
    p=0
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
}
run "$bin"
run env ENVOY_SMC_FAKE_KERNEL=1 "$bin"
run python3 "$root/bazel/test/test_image_bootstrap.py"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
