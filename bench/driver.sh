#!/usr/bin/env bash
# bench/driver.sh -- runs one side of the benchmark: starts the app (bench/echo) and two Envoy
# pairs (client sidecar -> server sidecar -> app), drives wrk through them in interleaved rounds,
# and leaves the raw results in BENCH_DIR. Started by bench/run.sh, on this machine (the plain
# kernel: stock Envoy vs Envoy under the preload library) and inside the SMC-R VM (both pairs
# under the library: SMC off vs SMC on). Not meant to be run by hand.
#
# Inputs (environment):
#   BENCH_DIR        output directory; BENCH_DIR/cfg holds what run.sh generated:
#                    <pair>-client.yaml, <pair>-server.yaml, <pair>.env (CLIENT_ADMIN, SERVER_ADMIN,
#                    OUTBOUND, SMC_CONFIG = envoy-smc config file, empty: no preload library;
#                    PRELOAD = that pair's preload library, empty: BENCH_PRELOAD)
#   BENCH_PAIRS      pair names in their first-round order, e.g. "off on"
#   BENCH_PHASES     "NAME:PATH:CLOSE:SECONDS:ROUNDS ...", e.g. "keepalive:/:0:5:1 close:/close:1:5:2"
#   BENCH_WARMUP     seconds of unrecorded load per pair before the first phase
#   BENCH_CONNS, BENCH_THREADS, BENCH_BODY_SIZE, BENCH_ENVOY_CONCURRENCY, BENCH_APP_PORT
#   BENCH_SNAPSHOTS  1: around every run, `envoy-smc status --json` and the rxe counters (VM)
#   BENCH_PINGPONG   "ROUNDS:TRIPS:SIZE" (optional): before the Envoys start, ROUNDS interleaved
#                    runs of BENCH_PINGPONG_BIN (bench/pingpong.c) per kind, tcp and smc, each
#                    TRIPS round trips of SIZE bytes between 10.9.0.1 and 10.9.0.2
#   BENCH_REPO, BENCH_ECHO, BENCH_PRELOAD, BENCH_ENVOY_SMC, ENVOY_BIN, BENCH_WRK
# Output: BENCH_DIR/runs.tsv (phase round pair file) and the files it names, envoy logs and the
# preload libraries' stats files (<pair>-<role>.prom), pids.tsv, driver.log; pingpong.tsv (round
# kind file) and its files.
#
# Under TCG every exec of a binary costs 0.1-0.5 s, so this script uses bash builtins
# (/dev/tcp for HTTP, read -t for sleeping) wherever it can.
set -uo pipefail

D=${BENCH_DIR:?}
CFG=$D/cfg
REPO=${BENCH_REPO:?}
WRK=${BENCH_WRK:-wrk}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
CONCURRENCY=${BENCH_ENVOY_CONCURRENCY:-2}
read -r -a PAIRS <<<"${BENCH_PAIRS:?}"
read -r -a PHASES <<<"${BENCH_PHASES:?}"
WARMUP=${BENCH_WARMUP:-2}
SNAP=${BENCH_SNAPSHOTS:-0}
export BENCH_BODY_SIZE=${BENCH_BODY_SIZE:-128}
TMP=${TMPDIR:-/tmp}

log() { printf '%s bench: %s\n' "${EPOCHREALTIME%.*}" "$*" | tee -a "$D/driver.log" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$TMP"
SLEEP_FIFO=$TMP/bench-sleep.$$
mkfifo "$SLEEP_FIFO" || die "mkfifo $SLEEP_FIFO"
exec {SLEEP_FD}<>"$SLEEP_FIFO"
nap() { read -r -t "$1" -u "$SLEEP_FD" _ || true; }

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  nap 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -f "$SLEEP_FIFO" "$TMP/bench-echo.$$"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# HTTP/1.1 over bash's /dev/tcp: http PORT METHOD PATH [BODY] -> HTTP_STATUS, HTTP_BODY
# (Content-Length and chunked bodies; LC_ALL=C makes string offsets byte offsets)
export LC_ALL=C
http() {
  local port=$1 method=$2 path=$3 body=${4:-} fd resp="" head line n out=""
  HTTP_STATUS=0 HTTP_BODY=""
  { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf '%s %s HTTP/1.1\r\nhost: bench\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&"$fd"
  IFS= read -r -d '' -t 10 -u "$fd" resp
  exec {fd}>&-
  [[ $resp == HTTP/1.?\ * && $resp == *$'\r\n\r\n'* ]] || return 1
  HTTP_STATUS=${resp#HTTP/1.? }
  HTTP_STATUS=${HTTP_STATUS%% *}
  head=${resp%%$'\r\n\r\n'*}
  HTTP_BODY=${resp#*$'\r\n\r\n'}
  shopt -s nocasematch
  if [[ $head == *$'\r\n'transfer-encoding:*chunked* ]]; then
    resp=$HTTP_BODY
    while [[ $resp == *$'\r\n'* ]]; do
      line=${resp%%$'\r\n'*}
      resp=${resp#*$'\r\n'}
      [[ ${line%%;*} =~ ^[0-9a-fA-F]+$ ]] || break
      n=$((16#${line%%;*}))
      ((n > 0)) || break
      out+=${resp:0:n}
      resp=${resp:n+2}
    done
    HTTP_BODY=$out
  fi
  shopt -u nocasematch
  return 0
}

wait_ready() {  # wait_ready NAME PID ADMIN_PORT
  local name=$1 pid=$2 port=$3 i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || die "$name exited at start: $(cat "$D/$name.stderr" "$D/$name.log" 2>/dev/null | tail -20)"
    if http "$port" GET /ready && [ "$HTTP_STATUS" = 200 ] && [ "${HTTP_BODY%%$'\n'*}" = LIVE ]; then
      return 0
    fi
    nap 0.2
  done
  die "$name not ready after 120 s"
}

start_envoy() {  # start_envoy NAME CONFIG SMC_CONFIG [PRELOAD] -> LAST_PID
  local name=$1 cfg=$2 smc=$3 lib=${4:-${BENCH_PRELOAD:-}}
  local env=()
  if [ -n "$smc" ]; then
    env=(LD_PRELOAD="$lib" ENVOY_SMC_CONFIG="$smc" ENVOY_SMC_STATS_FILE="$D/$name.prom"
      ENVOY_SMC_STATS_INTERVAL=1 ENVOY_SMC_LOG=warn)
  fi
  env "${env[@]}" "$ENVOY_BIN" --disable-hot-restart --concurrency "$CONCURRENCY" -l warning \
    -c "$cfg" --log-path "$D/$name.log" </dev/null >/dev/null 2>"$D/$name.stderr" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  printf '%s\t%s\n' "$name" "$LAST_PID" >>"$D/pids.tsv"
}

# rxe packet counters as JSON (VM): {"rxea": {"sent_pkts": N, "rcvd_pkts": N}, ...}
rxe_counters() {
  local out="{" dev c v sep="" csep
  for dev in /sys/class/infiniband/rxe*; do
    [ -d "$dev" ] || continue
    out+="$sep\"${dev##*/}\": {"
    csep=""
    for c in sent_pkts rcvd_pkts; do
      v=0
      read -r v <"$dev/ports/1/hw_counters/$c" 2>/dev/null || true
      out+="$csep\"$c\": ${v:-0}"
      csep=", "
    done
    out+="}"
    sep=", "
  done
  printf '%s}\n' "$out"
}

snapshot() {  # snapshot FILE-PREFIX
  [ "$SNAP" = 1 ] || return 0
  rxe_counters >"$1.rxe.json"
  "$BENCH_ENVOY_SMC" status --json >"$1.status.json" 2>"$1.status.err" || true
}

# CPU time (clock ticks, user+system) of a process: cpu_ticks PID -> CPU_TICKS
cpu_ticks() {
  local line f
  CPU_TICKS=0
  IFS= read -r line <"/proc/$1/stat" 2>/dev/null || return 0
  read -r -a f <<<"${line##*) }"   # fields after "pid (comm) ": state is f[0], utime f[11], stime f[12]
  CPU_TICKS=$((f[11] + f[12]))
}

cpu_snapshot() {  # cpu_snapshot PAIR -> CPU_PAIR "client server" ticks, VM_BUSY ticks
  cpu_ticks "${CPID[$1]}"; local c=$CPU_TICKS f
  cpu_ticks "${SPID[$1]}"
  CPU_PAIR="$c $CPU_TICKS"
  # the whole machine's non-idle time (user nice system irq softirq steal): SMC-R's RDMA work runs
  # in kernel threads, not charged to the Envoys
  read -r -a f </proc/stat
  VM_BUSY=$((f[1] + f[2] + f[3] + f[6] + f[7] + f[8]))
}

admin_stats() {  # admin_stats PORT FILE [FILTER]
  if http "$1" GET "/stats?filter=${3:-cluster.server_sidecar}"; then
    printf '%s' "$HTTP_BODY" >"$2"
  fi
}

# ---------------------------------------------------------------------------------------------
CLK_TCK=${BENCH_CLK_TCK:-100}
: >"$D/pids.tsv"
: >"$D/runs.tsv"
log "start: pairs ${PAIRS[*]}, phases ${PHASES[*]}, $CONNS connections, $BENCH_BODY_SIZE-byte bodies"

# the raw socket ping-pong (no Envoy): the upper bound of what SMC can change for one hop
: >"$D/pingpong.tsv"
if [ -n "${BENCH_PINGPONG:-}" ]; then
  IFS=: read -r pp_rounds pp_trips pp_size <<<"$BENCH_PINGPONG"
  pp_kinds=(tcp smc)
  pp_port=19000
  for ((r = 1; r <= pp_rounds; r++)); do
    order=("${pp_kinds[@]}")
    ((r % 2 == 0)) && order=(smc tcp)
    for k in "${order[@]}"; do
      base=$D/pingpong-$r-$k
      pp_port=$((pp_port + 1))
      snapshot "$base.before"
      log "ping-pong round $r/$pp_rounds: $k ($pp_trips round trips of $pp_size bytes)"
      "$BENCH_PINGPONG_BIN" --kind "$k" --client 10.9.0.1 --server 10.9.0.2 --port "$pp_port" \
        --rounds "$pp_trips" --warmup $((pp_trips / 10)) --size "$pp_size" >"$base.json" 2>"$base.err" ||
        die "pingpong $k failed: $(cat "$base.err")"
      snapshot "$base.after"
      printf '%s\t%s\t%s\n' "$r" "$k" "${base##*/}" >>"$D/pingpong.tsv"
    done
  done
fi

# the app
ECHO_IN=$TMP/bench-echo.$$
mkfifo "$ECHO_IN" || die "mkfifo"
"$BENCH_ECHO" 127.0.0.1 "$BENCH_APP_PORT" <"$ECHO_IN" >"$D/echo.log" 2>&1 &
PIDS+=("$!")
# shellcheck disable=SC2034  # held open: the app exits when this script's end closes it
exec {ECHO_FD}>"$ECHO_IN"

# the Envoys: all servers first (in parallel), then all clients
declare -A CLIENT_ADMIN SERVER_ADMIN OUTBOUND SMC LIB
for p in "${PAIRS[@]}"; do
  CLIENT_ADMIN_PORT='' SERVER_ADMIN_PORT='' OUTBOUND_PORT='' SMC_CONFIG='' PRELOAD=''
  # shellcheck disable=SC1090
  . "$CFG/$p.env"
  CLIENT_ADMIN[$p]=$CLIENT_ADMIN_PORT SERVER_ADMIN[$p]=$SERVER_ADMIN_PORT
  OUTBOUND[$p]=$OUTBOUND_PORT SMC[$p]=$SMC_CONFIG LIB[$p]=$PRELOAD
done
declare -A SPID CPID
for p in "${PAIRS[@]}"; do start_envoy "$p-server" "$CFG/$p-server.yaml" "${SMC[$p]}" "${LIB[$p]}"; SPID[$p]=$LAST_PID; done
for p in "${PAIRS[@]}"; do start_envoy "$p-client" "$CFG/$p-client.yaml" "${SMC[$p]}" "${LIB[$p]}"; CPID[$p]=$LAST_PID; done
for p in "${PAIRS[@]}"; do
  wait_ready "$p-server" "${SPID[$p]}" "${SERVER_ADMIN[$p]}"
  wait_ready "$p-client" "${CPID[$p]}" "${CLIENT_ADMIN[$p]}"
done
log "Envoys ready"

# one request through each pair, the body echoed back
for p in "${PAIRS[@]}"; do
  want="bench-smoke-$p-0123456789"
  http "${OUTBOUND[$p]}" POST / "$want" || die "$p: no answer through the Envoy pair"
  [ "$HTTP_STATUS" = 200 ] && [ "$HTTP_BODY" = "$want" ] ||
    die "$p: smoke request: status $HTTP_STATUS, body '${HTTP_BODY:0:200}'"
done
log "smoke requests ok"

wrk_run() {  # wrk_run PAIR PATH CLOSE SECONDS OUT-JSON
  local p=$1 path=$2 close=$3 secs=$4 out=$5
  BENCH_OUT=$out BENCH_CLOSE=$close "$WRK" -t "$THREADS" -c "$CONNS" -d "${secs}s" --timeout 10s \
    -s "$REPO/bench/wrk.lua" "http://127.0.0.1:${OUTBOUND[$p]}$path" >"${out%.json}.txt" 2>&1
}

if [ "$WARMUP" != 0 ]; then
  for p in "${PAIRS[@]}"; do
    log "warm-up $p (${WARMUP} s)"
    wrk_run "$p" / 0 "$WARMUP" "$D/warmup-$p.json" || die "wrk failed (warm-up $p)"
  done
fi

for ph in "${PHASES[@]}"; do
  IFS=: read -r name path close secs rounds <<<"$ph"
  for ((r = 1; r <= rounds; r++)); do
    order=("${PAIRS[@]}")
    if ((r % 2 == 0)); then
      order=()
      for ((i = ${#PAIRS[@]} - 1; i >= 0; i--)); do order+=("${PAIRS[$i]}"); done
    fi
    for p in "${order[@]}"; do
      base=$D/$name-$r-$p
      snapshot "$base.before"
      log "$name round $r/$rounds: $p (${secs} s)"
      cpu_snapshot "$p"; cpu0=$CPU_PAIR busy0=$VM_BUSY
      wrk_run "$p" "$path" "$close" "$secs" "$base.json" || die "wrk failed ($name $r $p): $(tail -5 "$base.txt")"
      cpu_snapshot "$p"
      printf 'ticks_per_second %s\nbefore %s\nafter %s\nvm_busy %s %s\n' "$CLK_TCK" "$cpu0" "$CPU_PAIR" \
        "$busy0" "$VM_BUSY" >"$base.cpu.txt"
      snapshot "$base.after"
      admin_stats "${CLIENT_ADMIN[$p]}" "$base.client-stats.txt"
      admin_stats "${SERVER_ADMIN[$p]}" "$base.server-stats.txt" cx_total
      printf '%s\t%s\t%s\t%s\n' "$name" "$r" "$p" "${base##*/}" >>"$D/runs.tsv"
    done
  done
done

# stop the Envoys (SIGTERM: the preload library writes its stats file at exit)
stop_pids=()
for p in "${PAIRS[@]}"; do stop_pids+=("${CPID[$p]}" "${SPID[$p]}"); done
kill -TERM "${stop_pids[@]}" 2>/dev/null
for ((i = 0; i < 150; i++)); do
  alive=0
  for pid in "${stop_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  nap 0.2
done
kill -KILL "${stop_pids[@]}" 2>/dev/null
for pid in "${stop_pids[@]}"; do wait "$pid" 2>/dev/null; done
PIDS=("${PIDS[0]}")  # the app is left
log "done"
touch "$D/driver.done"
