#!/usr/bin/env bash
# Builds the archive the Envoy builds link (bazel/envoy/build.sh, bazel/istio-proxy/build.sh):
#
#   bazel/build-archive.sh OUT.a
#
# 1. The Rust static library for Envoy's sysroot (glibc 2.28): with cargo-zigbuild when it is
#    installed (`cargo install cargo-zigbuild`, `pip install ziglang`), else plain cargo (then the
#    host's glibc must not be newer than what the link accepts). ENVOY_SMC_RUST_STATICLIB skips
#    this step and uses that file.
# 2. OUT.a from it: bazel/ship-archive.sh (only envoy_smc_* stays global).
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT.a" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rust_lib="${ENVOY_SMC_RUST_STATICLIB:-}"
if [ -z "$rust_lib" ]; then
  if command -v cargo-zigbuild >/dev/null; then
    cargo zigbuild --release -p envoy-smc-capi --lib --target x86_64-unknown-linux-gnu.2.28
    rust_lib="$root/target/x86_64-unknown-linux-gnu/release/libenvoy_smc.a"
  else
    cargo build --release -p envoy-smc-capi --lib
    rust_lib="$root/target/release/libenvoy_smc.a"
  fi
fi
bash "$root/bazel/ship-archive.sh" "$rust_lib" "$1"
