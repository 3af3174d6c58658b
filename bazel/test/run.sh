#!/usr/bin/env bash
# The native extension's tests that run here:
# 1. the shipped archive: bazel/ship-archive.sh on the cargo staticlib, then archive_test.sh (only
#    envoy_smc_* defined, undefined only libc family + unwinder, linked and run next to a second
#    Rust staticlib);
# 2. the shim's unit tests (smc_shim_test.cc) and the start-up tests (stand_in_startup_test.cc):
#    the C++ shim (bazel/source/) against the Envoy stand-in (bazel/envoy_stand_in/), gtest
#    (Debian's libgtest-dev), linked with the SHIPPED archive, g++ with Envoy's warning flags;
#    the unit tests run twice, on the machine's kernel and with the fake SMC kernel of
#    fake_smc_kernel.cc;
# 3. the image's bootstrap-template patch (test_image_bootstrap.py).
# Prints "N passed, N failed" last (every gtest test and every check).
#
# Environment: CXX (default g++), CARGO (default cargo), SKIP_CARGO_BUILD=1 to use the staticlib
# as it is, ENVOY_SMC_STATICLIB (default target/debug/libenvoy_smc.a), BUILD_DIR (default
# target/bazel-shim-test).
set -eEuo pipefail
# A command that stops the script before its summary is named (CI shows only the output's tail).
last_error=""
summarized=0
trap 'last_error="line $LINENO: $BASH_COMMAND (status $?)"' ERR
trap 'rc=$?; [ "$rc" = 0 ] || [ "$summarized" = 1 ] || echo "run.sh: stopped before its summary, status $rc${last_error:+, at $last_error}"' EXIT

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cxx="${CXX:-g++}"
build="${BUILD_DIR:-$root/target/bazel-shim-test}"
export BUILD_DIR="$build"
mkdir -p "$build"

need_pkg=()
command -v protoc >/dev/null || need_pkg+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/message.h ] || need_pkg+=(libprotobuf-dev)
[ -e /usr/include/gtest/gtest.h ] || need_pkg+=(libgtest-dev)
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
  "${CARGO:-cargo}" build -p envoy-smc-capi --lib --quiet
fi
staticlib="${ENVOY_SMC_STATICLIB:-$root/target/debug/libenvoy_smc.a}"
[ -f "$staticlib" ] || { echo "run.sh: $staticlib missing (cargo build -p envoy-smc-capi --lib)" >&2; exit 1; }

passed=0
failed=0
skipped=0
# Runs a runner that prints "N passed, N failed" (its last such line counts; a runner that prints
# none, or exits non-zero without a failure, is one failure); prints the rest of its output.
run() {
  local out rc summary p f
  set +e
  out="$("$@" 2>&1)"
  rc=$?
  set -e
  # No summary line is a finding, not a reason to stop (grep finds nothing: status 1).
  summary="$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1 || true)"
  printf '%s\n' "$out" | grep -vE '^[0-9]+ passed, [0-9]+ failed$' || true
  if [[ "$summary" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    p="${BASH_REMATCH[1]}"
    f="${BASH_REMATCH[2]}"
  else
    p=0
    f=0
  fi
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    echo "run.sh: $* exited with status $rc"
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
}
# Runs a gtest binary and adds its counts; a binary that dies before its summary is one failure.
run_gtest() {
  local out rc p f s
  set +e
  out="$("$@" --gtest_brief=1 2>&1)"
  rc=$?
  set -e
  printf '%s\n' "$out" | grep -vE '^\[==========\]|^\[----------\]' || true
  p="$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)"
  f="$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)"
  s="$(printf '%s\n' "$out" | sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | tail -n 1)"
  p="${p:-0}"
  f="${f:-0}"
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    echo "run.sh: ${*: -1} exited with status $rc before reporting a failed test"
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + ${s:-0}))
}

# 1. The shipped archive.
shipped="$build/libenvoy_smc_shipped.a"
if [ ! -f "$shipped" ] || [ "$staticlib" -nt "$shipped" ] || [ "$root/bazel/ship-archive.sh" -nt "$shipped" ]; then
  bash "$root/bazel/ship-archive.sh" "$staticlib" "$shipped"
fi
run bash "$root/bazel/test/archive_test.sh" "$shipped"

# 2. The shim, the stand-in and the tests.
stand_in="$root/bazel/envoy_stand_in"
# protoc only when a .proto changed (it rewrites its outputs, which would recompile them).
gen_proto() {
  local include="$1" proto="$2"
  [ "$build/${proto%.proto}.pb.cc" -nt "$include/$proto" ] || protoc -I"$include" --cpp_out="$build" "$proto"
}
gen_proto "$root" api/envoy_smc/v1/smc.proto
for proto in envoy/config/core/v3/base.proto envoy/config/core/v3/extension.proto \
  envoy/config/bootstrap/v3/bootstrap.proto \
  envoy/extensions/network/socket_interface/v3/default_socket_interface.proto; do
  gen_proto "$stand_in/api" "$proto"
done

flags=(-std=c++17 -Wall -Wextra -Werror -Wnon-virtual-dtor -Woverloaded-virtual -Wold-style-cast -Wformat -Wformat-security -Wvla -g -O0
  -I"$stand_in" -I"$root" -I"$root/include" -I"$build")
compile() {
  local src="$1" obj="$2"
  shift 2
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find "$stand_in" "$root/bazel/source" "$root/bazel/test" "$root/include" -name '*.h' -newer "$obj" -print -quit)" ]; then
    "$cxx" "$@" -c "$src" -o "$obj"
  fi
}
common=(
  bazel/source/smc_runtime.cc
  bazel/source/smc_io_handle.cc
  bazel/source/smc_socket_interface.cc
  bazel/envoy_stand_in/stand_in_impl.cc
  bazel/envoy_stand_in/source/common/event/dispatcher_impl.cc
  bazel/envoy_stand_in/source/server/server.cc
  bazel/test/fake_smc_kernel.cc
)
common_objs=()
for src in "${common[@]}"; do
  obj="$build/$(basename "${src%.cc}").o"
  compile "$src" "$obj" "${flags[@]}"
  common_objs+=("$obj")
done
# Generated code is not ours to hold to -Werror.
for pb in api/envoy_smc/v1/smc envoy/config/core/v3/base envoy/config/core/v3/extension \
  envoy/config/bootstrap/v3/bootstrap envoy/extensions/network/socket_interface/v3/default_socket_interface; do
  obj="$build/pb_$(echo "$pb" | tr '/' '_').o"
  compile "$build/$pb.pb.cc" "$obj" -std=c++17 -g -O0 -I"$build"
  common_objs+=("$obj")
done

link_test() {
  local name="$1" main_lib="$2"
  shift 2
  local objs=()
  for src in "$@"; do
    obj="$build/$(basename "${src%.cc}").o"
    compile "$src" "$obj" "${flags[@]}"
    objs+=("$obj")
  done
  "$cxx" -o "$build/$name" "${objs[@]}" "${common_objs[@]}" "$shipped" \
    $main_lib -lgtest -lprotobuf -lpthread -ldl -lm
}
# smc_shim_test.cc has its own main (it names the kernel under test first).
link_test smc_shim_test "" bazel/test/smc_shim_test.cc bazel/test/test_support_stand_in.cc
link_test stand_in_startup_test -lgtest_main bazel/test/stand_in_startup_test.cc
# The shipped bootstrap fragment, as JSON for the stand-in's --mode validate.
fragment_json="$build/smc-bootstrap.json"
python3 -c 'import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), open(sys.argv[2], "w"))' \
  "$root/envoy-config/bootstrap/smc-bootstrap.yaml" "$fragment_json"

run_gtest "$build/smc_shim_test"
run_gtest env ENVOY_SMC_FAKE_KERNEL=1 "$build/smc_shim_test"
run_gtest env ENVOY_SMC_BOOTSTRAP_FRAGMENT_JSON="$fragment_json" "$build/stand_in_startup_test"

# 3. The image.
run python3 "$root/bazel/test/test_image_bootstrap.py"
summarized=1
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
