#!/usr/bin/env bash
# tests/vm/smc-cases.sh -- the diagnostics VM cases (cli/tests/vm_smc.rs) inside the SMC-R VM:
# SMC-R on rxe with growing counters, OPTUNSUPP / PEERNOSMC / NOSMCDEV fallbacks, doctor ready,
# and `envoy-smc check` telling SMC-R, fallback and a black hole apart.
#
#   tests/vm/smc-cases.sh [TEST-FILTER...]
#
# Builds the test binary and the envoy-smc CLI on the host (the harness uses the CLI to set the
# UEID; the tests drive it), boots one VM with tests/vm/run.sh and runs the binary there, one
# test at a time. Extra arguments go to the test binary (a name filter, --nocapture). The
# kernel's raw replies captured by the last test land in <shared dir>/fixtures/.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
cargo build -q --bin envoy-smc -p envoy-smc
exe=$(cargo test -q -p envoy-smc --test vm_smc --no-run --message-format=json 2>/dev/null |
  grep '"name":"vm_smc"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "tests/vm/smc-cases.sh: cannot find the vm_smc test binary" >&2; exit 1; }
exec tests/vm/run.sh --timeout "${ENVOY_SMC_VM_TIMEOUT:-300}" \
  --env "ENVOY_SMC_BIN=$REPO/target/debug/envoy-smc" -- "$exe" --ignored --test-threads=1 "$@"
