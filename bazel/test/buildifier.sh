#!/usr/bin/env bash
# buildifier (format and lint=warn) on the Bazel files of bazel/envoy (the Envoy 1.40 module and
# @envoy_smc's BUILD file, which istio-proxy/build.sh also uses). buildifier comes from npm
# (@bazel/buildifier, which ships the binaries; scripts/install-deps.sh installs it).
# Prints "N passed, N failed" last: one per file.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
buildifier="${BUILDIFIER:-buildifier}"
command -v "$buildifier" >/dev/null || { echo "buildifier.sh: no buildifier (npm install -g @bazel/buildifier)"; echo "0 passed, 1 failed"; exit 1; }
cd "$root/bazel/envoy"
passed=0
failed=0
check() {
  if out="$("$buildifier" -mode=check -lint=warn "$@" 2>&1)" && [ -z "$out" ]; then
    passed=$((passed + 1))
  else
    echo "FAIL buildifier $*: $out"
    failed=$((failed + 1))
  fi
}
for f in MODULE.bazel BUILD.bazel envoy_smc.bzl envoy_smc_defs.bzl test/BUILD.bazel; do
  check "$f"
done
check --type=build envoy_smc.BUILD.bazel
echo "buildifier $("$buildifier" --version | head -n 1 | awk '{print $3}'): $((passed + failed)) files"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
