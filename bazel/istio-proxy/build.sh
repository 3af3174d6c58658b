#!/usr/bin/env bash
# Builds istio-proxy (the Envoy of the istio/proxyv2 image) with the envoy-smc socket interface.
#
# Pinned: istio/proxy tag 1.28.10 (commit 6aa6f06f5c5ff0d8ef4d3cff073f73be90f05d22), which builds
# Envoy 57198c441a298a75097c690726d90974549a9778 (release/v1.36) with bazel 7.7.1: the proxy of
# docker.io/istio/proxyv2:1.28.10. Override with ISTIO_PROXY_REF / ISTIO_PROXY_COMMIT for
# another 1.28 patch; the image must then use the same tag (bazel/Dockerfile ISTIO_VERSION).
#
# istio/proxy 1.28.10 still builds with WORKSPACE (Envoy 1.36, bazel 7.7.1), with its own
# .bazelrc (which imports its copy of Envoy's, where --config=clang still exists and is its
# default) and its own workspace-status script (bazel/bazel_get_workspace_status): both are used
# as they are. Checked against the tag's files: WORKSPACE, BUILD (ISTIO_EXTENSIONS),
# .bazelrc, envoy.bazelrc, .bazelversion.
#
# Steps: check out istio/proxy into $WORKDIR (default target/istio-proxy), add @envoy_smc to its
# WORKSPACE and envoy-smc to ISTIO_EXTENSIONS in its BUILD, build the Rust library for the
# sysroot and the shipped archive from it (bazel/build-archive.sh), bazel build -c opt //:envoy
# there. Istio builds its proxy inside its build-tools container
# (gcr.io/istio-testing/build-tools-proxy); run this script there too.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
ref="${ISTIO_PROXY_REF:-1.28.10}"
commit="${ISTIO_PROXY_COMMIT:-6aa6f06f5c5ff0d8ef4d3cff073f73be90f05d22}"
work="${WORKDIR:-$root/target/istio-proxy}"

if [ ! -d "$work/.git" ]; then
  git clone --branch "$ref" https://github.com/istio/proxy.git "$work"
fi
git -C "$work" checkout --quiet "$commit"
git -C "$work" checkout --quiet -- WORKSPACE BUILD

mkdir -p "$work/bazel/envoy_smc"
cp "$root/bazel/envoy/envoy_smc.bzl" "$root/bazel/envoy/envoy_smc_defs.bzl" \
  "$root/bazel/envoy/envoy_smc.BUILD.bazel" "$work/bazel/envoy_smc/"
printf 'exports_files(["envoy_smc.BUILD.bazel"])\n' >"$work/bazel/envoy_smc/BUILD.bazel"
cat >>"$work/WORKSPACE" <<WORKSPACE

load("//bazel/envoy_smc:envoy_smc.bzl", "envoy_smc_repository")

envoy_smc_repository(
    name = "envoy_smc",
    build_file = "//bazel/envoy_smc:envoy_smc.BUILD.bazel",
    envoy_repository = "@envoy",
    path = "$root",
)
WORKSPACE
grep -q '^ISTIO_EXTENSIONS = \[' "$work/BUILD" ||
  { echo "istio/proxy BUILD has no ISTIO_EXTENSIONS list: update this script" >&2; exit 1; }
sed -i 's|^ISTIO_EXTENSIONS = \[|ISTIO_EXTENSIONS = [\n    "@envoy_smc//:socket_interface",|' "$work/BUILD"

cd "$root"
export ENVOY_SMC_STATICLIB="$root/target/envoy-smc-shipped/libenvoy_smc.a"
bash "$root/bazel/build-archive.sh" "$ENVOY_SMC_STATICLIB"

cd "$work"
bazel build -c opt //:envoy "$@"
echo "built: $work/bazel-bin/envoy"
