#!/usr/bin/env bash
# preload/bench/hooks.sh -- nanoseconds per call of the interposed functions, without the
# library, with it on a kernel without SMC (nothing tracked), and with SMC assumed (every TCP
# socket tracked until closed). Best of 5 batches of MICRO_N (20,000) calls each, 3 runs each, interleaved.
#
#   preload/bench/hooks.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
cargo build -q --release -p envoy-smc-preload
exe=$(cargo test -q --release -p envoy-smc-preload --test preload_host --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
LIB=$REPO/target/release/libenvoy_smc_preload.so
cfg=$(mktemp); trap 'rm -f "$cfg"' EXIT
printf 'mode: MODE_AUTO\nopt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\n' >"$cfg"
run() { env "$@" ENVOY_SMC_TEST_ROLE=microbench MICRO_N=${MICRO_N:-20000} "$exe" role_entry --exact --quiet --nocapture --test-threads=1 | sed -n 's/^RESULT //p'; }
for i in 1 2 3; do
  echo "stock:             $(run X=1)"
  echo "preload, no SMC:   $(run LD_PRELOAD="$LIB" ENVOY_SMC_CONFIG="$cfg")"
  echo "preload, tracked:  $(run LD_PRELOAD="$LIB" ENVOY_SMC_CONFIG="$cfg" ENVOY_SMC_ASSUME_KERNEL=ipproto_smc)"
done
