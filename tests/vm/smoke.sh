#!/usr/bin/env bash
# tests/vm/smoke.sh [run.sh OPTIONS] -- smoke test of the SMC-R test bed: boots the VM once and
# runs tests/vm/checks.sh there (SMC sockets, rxe devices, topology, UEID, iptables, and
# `envoy-smc doctor` if the CLI is built). Exit 0 when every check passes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/run.sh" --timeout 300 "$@" -- bash "$here/checks.sh"
