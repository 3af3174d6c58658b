#!/usr/bin/env bash
# Builds Envoy v1.40.0 with the envoy-smc socket interface: bazel-bin/envoy in this directory.
#
# 1-2. The Rust static library for Envoy's sysroot and the shipped archive from it
#    (bazel/build-archive.sh: cargo-zigbuild when installed, ENVOY_SMC_RUST_STATICLIB to use
#    another library; only envoy_smc_* stays global).
# 3. envoy.bazelrc: Envoy's own .bazelrc at the commit in MODULE.bazel, read with git (a shallow,
#    blobless fetch of that one commit into $ENVOY_SMC_CACHE, default target/envoy-src) before any
#    bazel command: .bazelrc imports it, so bazel cannot start without it. The same fetch checks
#    that .bazelversion and the root-only overrides in MODULE.bazel match Envoy's.
# 4. bazel build -c opt //:envoy (extra arguments go to bazel build, e.g. --config=remote-...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${ENVOY_SMC_CACHE:-$root/target/envoy-src}"
envoy_commit="$(sed -n 's/^ENVOY_COMMIT = "\([0-9a-f]\{40\}\)"$/\1/p' "$here/MODULE.bazel")"
[ -n "$envoy_commit" ] || { echo "build.sh: no ENVOY_COMMIT in MODULE.bazel" >&2; exit 1; }

# 1-2. The archive.
cd "$root"
export ENVOY_SMC_STATICLIB="$root/target/envoy-smc-shipped/libenvoy_smc.a"
bash "$root/bazel/build-archive.sh" "$ENVOY_SMC_STATICLIB"

# 3. Envoy's .bazelrc and the checks against the pinned Envoy.
if [ ! -d "$cache/.git" ]; then
  git init -q "$cache"
  git -C "$cache" remote add origin https://github.com/envoyproxy/envoy.git
fi
if ! git -C "$cache" cat-file -e "$envoy_commit^{commit}" 2>/dev/null; then
  git -C "$cache" fetch -q --depth 1 --filter=blob:none origin "$envoy_commit"
fi
git -C "$cache" show "$envoy_commit:.bazelrc" >"$here/envoy.bazelrc.tmp"
mv "$here/envoy.bazelrc.tmp" "$here/envoy.bazelrc"
envoy_bazel="$(git -C "$cache" show "$envoy_commit:.bazelversion" | tr -d '[:space:]')"
ours="$(tr -d '[:space:]' <"$here/.bazelversion")"
if [ "$envoy_bazel" != "$ours" ]; then
  echo "build.sh: Envoy $envoy_commit wants bazel $envoy_bazel, .bazelversion says $ours: update it" >&2
  exit 1
fi
# Each single_version_override of Envoy's MODULE.bazel must be in ours (only the root module's
# overrides count).
envoy_module="$(git -C "$cache" show "$envoy_commit:MODULE.bazel")"
missing=0
while read -r module version; do
  if ! grep -A2 "module_name = \"$module\"" "$here/MODULE.bazel" | grep -q "version = \"$version\""; then
    echo "build.sh: Envoy's MODULE.bazel overrides $module to $version; add that to ours" >&2
    missing=1
  fi
done < <(printf '%s\n' "$envoy_module" | awk '
  /^single_version_override\(/ {inside = 1; m = ""; v = ""; next}
  inside && /module_name =/ {gsub(/[",]/, "", $3); m = $3}
  inside && /version =/ {gsub(/[",]/, "", $3); v = $3}
  inside && /^\)/ {if (m != "" && v != "") print m, v; inside = 0}')
[ "$missing" = 0 ] || exit 1

# 4. Envoy.
cd "$here"
bazel build -c opt //:envoy "$@"
echo "built: $here/bazel-bin/envoy"
