#!/usr/bin/env bash
# preload/tests/vm.sh -- runs the preload library's VM tests (preload_vm.rs) inside the SMC-R VM.
#
#   preload/tests/vm.sh [TEST-FILTER...]
#
# Builds the test binary, the preload cdylib and the envoy-smc CLI (the VM harness uses it to
# set the UEID), then boots the VM with tests/vm/run.sh and runs the binary there, one test at a
# time. Extra arguments go to the test binary (a name filter, --nocapture).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
cargo build -q --bin envoy-smc -p envoy-smc
cargo build -q -p envoy-smc-preload
exe=$(cargo test -q -p envoy-smc-preload --test preload_vm --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "preload/tests/vm.sh: cannot find the preload_vm test binary" >&2; exit 1; }
exec tests/vm/run.sh --timeout "${ENVOY_SMC_VM_TIMEOUT:-600}" -- "$exe" --test-threads=1 "$@"
