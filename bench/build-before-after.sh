#!/usr/bin/env bash
# bench/build-before-after.sh -- builds the preload library, the staticlib and the header of two
# trees for the before/after benchmarks of issue 16 (bench/connect-syscalls.sh, bench/conn-rate.sh):
#
#   bench/build-before-after.sh            -> .cache/connect-syscalls/{before,after}/
#
# "before" is the tree at BEFORE_REF (default: a9642dc, the single-crate tree before issue 16; its
# build commands are the old layout's), checked out in a git worktree under .cache/connect-syscalls/;
# "after" is this tree. Both in PROFILE (default release, what ships).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
gen=$repo/.cache/connect-syscalls
profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
mkdir -p "$gen/before" "$gen/after"
src=$gen/before-src
before_ref=${BEFORE_REF:-a9642dc}
[ -d "$src" ] || git worktree add --detach "$src" "$before_ref" >/dev/null
git -C "$src" checkout -q --detach "$before_ref"
# The same target directory: dependencies are built once; the final artifacts are copied out
# before the other tree overwrites them (touched, so that cargo links them again even when the
# other tree's build replaced them last).
touch "$src/src/lib.rs" "$src/preload/src/lib.rs"
cargo build --quiet $flag -p envoy-smc-preload -p envoy-smc --lib \
  --manifest-path "$src/Cargo.toml" --target-dir "$repo/target"
cp "$repo/target/$profile/libenvoy_smc_preload.so" "$repo/target/$profile/libenvoy_smc.a" \
  "$src/include/envoy_smc.h" "$gen/before/"
git -C "$src" rev-parse HEAD >"$gen/before/commit"
touch capi/src/lib.rs preload/src/lib.rs
cargo build --quiet $flag -p envoy-smc-preload -p envoy-smc-capi --lib
cp "$repo/target/$profile/libenvoy_smc_preload.so" "$repo/target/$profile/libenvoy_smc.a" \
  include/envoy_smc.h "$gen/after/"
{ git rev-parse HEAD; git diff --quiet HEAD -- . ':!bench' || echo "(with uncommitted changes)"; } \
  >"$gen/after/commit"
