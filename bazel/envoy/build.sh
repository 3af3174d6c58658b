#!/usr/bin/env bash
# Builds Envoy v1.40.0 with the envoy-smc socket interface: bazel-bin/envoy in this directory.
#
# 1. the Rust static library, for Envoy's sysroot (glibc 2.28): with cargo-zigbuild when it is
#    installed (`cargo install cargo-zigbuild`, `pip install ziglang`), else plain cargo (then
#    the host's glibc must not be newer than what the link accepts);
# 2. Envoy's own .bazelrc, taken from the pinned @envoy repository;
# 3. bazel build -c opt //:envoy.
# Extra arguments go to `bazel build` (e.g. --config=remote-..., --jobs=8).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

cd "$root"
if command -v cargo-zigbuild >/dev/null; then
  cargo zigbuild --release --lib --target x86_64-unknown-linux-gnu.2.28
  export ENVOY_SMC_STATICLIB="$root/target/x86_64-unknown-linux-gnu/release/libenvoy_smc.a"
else
  cargo build --release --lib
  export ENVOY_SMC_STATICLIB="$root/target/release/libenvoy_smc.a"
fi

cd "$here"
if [ ! -f envoy.bazelrc ]; then
  # Loading @envoy's root package fetches the pinned Envoy; its .bazelrc holds the build
  # configurations (clang, libc++, sanitizers, remote) that Envoy's build expects.
  bazel query --noshow_progress @envoy//:BUILD >/dev/null
  cp "$(bazel info output_base)/external/envoy/.bazelrc" envoy.bazelrc
fi
bazel build -c opt //:envoy "$@"
echo "built: $here/bazel-bin/envoy"
