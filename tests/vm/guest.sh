#!/bin/bash
# tests/vm/guest.sh -- runs inside the envoy-smc test VM (started by tests/vm/init in a chroot of
# the host root, /tmp = the run's shared directory). Sets up the SMC-R topology, runs the command
# that tests/vm/run.sh wrote into /tmp/.envoy-smc-vm/config, and leaves the command's exit
# status, the kernel log and timings next to it for run.sh.
#
# Topology (all in the initial network namespace: rdma_rxe only works there):
#   va 10.9.0.1/24 (rdma rxea)  <-- veth -->  vb 10.9.0.2/24 (rdma rxeb)
# with policy routing so that traffic between the two local addresses crosses the veth (and so
# Soft-RoCE) instead of lo, static neighbours, and a UEID so that SMC-Rv2 is proposed.
#
# Every exec of a dynamically linked binary costs 0.1-0.5 s under TCG, so this script uses bash
# builtins wherever it can and batches ip/rdma commands.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
D=/tmp/.envoy-smc-vm
CLIENT=10.9.0.1 SERVER=10.9.0.2
CLIENT_DEV=va SERVER_DEV=vb
CLIENT_RDMA=rxea SERVER_RDMA=rxeb
CLIENT_MAC=02:00:0a:09:00:01 SERVER_MAC=02:00:0a:09:00:02

# never on a host: this script rewires the network and routing rules of the machine it runs on
read -r cmdline </proc/cmdline
[[ " $cmdline " == *" envoy_smc_vm=1 "* ]] || { echo "guest.sh runs only inside the envoy-smc test VM" >&2; exit 2; }

uptime_s() { local u; read -r u _ </proc/uptime; printf -v "$1" %s "$u"; }   # uptime_s VAR
mark() { echo "<6>envoy-smc-vm: $*" >/dev/kmsg; }   # timestamped in the kernel log
log() { printf '%s\n' "$*" >>"$D/setup.log"; }
warn() {  # shown to the user, on the command's stderr stream ahead of the command's output
  log "warning: $*"
  printf 'vm: warning: %s\n' "$*" >>"$D/stderr"
}
finish() {  # finish RC: kernel log, then the exit status (written last: run.sh takes it as "done")
  local rc=$1 t
  # the whole kernel log, and its warnings (and worse) since this script started, without the
  # SMC module's informational "warnings" (devices and link groups coming up)
  dmesg -r 2>/dev/null | awk -v t="$GUEST_START" -v all="$D/dmesg" -v warn="$D/kernel-warnings" '
    match($0, /^<[0-9]+>/) {
      pri = substr($0, 2, RLENGTH - 2) % 8; line = substr($0, RLENGTH + 1)
      print line > all
      s = line; sub(/^\[ */, "", s); split(s, a, "]")
      if (pri <= 4 && a[1] + 0 >= t && line !~ /smc: +(adding ib device|ib device .* has pnetid|smcd device .* applied user defined pnetid|SMC-R lg [0-9a-f]+ net [0-9]+ (link added|state changed))/) print line > warn
    }'
  : >>"$D/kernel-warnings"
  mark "finished ($rc)"
  uptime_s t
  echo "FINISHED=$t" >>"$D/times"
  echo "$rc" >"$D/rc.tmp" && mv "$D/rc.tmp" "$D/rc"
  exit 0
}
fatal() {
  log "error: $*"
  : >"$D/setup-failed"
  finish 125
}
run() {  # a setup step that must work
  log "+ $*"
  "$@" >>"$D/setup.log" 2>&1 || fatal "setup step failed: $*"
}
sysctl_w() {
  log "+ sysctl $1=$2"
  echo "$2" >"/proc/sys/${1//.//}" 2>>"$D/setup.log" || fatal "cannot set sysctl $1"
}

uptime_s GUEST_START
mark "guest.sh started"
echo "GUEST_START=$GUEST_START" >"$D/times"
# shellcheck source=/dev/null
. "$D/config" || fatal "cannot read $D/config"
echo envoy-smc-vm >/proc/sys/kernel/hostname

# --- network: veth pair in init_net, policy routing over it ---
sysctl_w net.ipv4.conf.all.accept_local 1
sysctl_w net.ipv4.conf.all.rp_filter 0
sysctl_w net.ipv4.conf.default.rp_filter 0
cat >"$D/setup.ip" <<EOF
link set lo up
link add $CLIENT_DEV address $CLIENT_MAC type veth peer name $SERVER_DEV address $SERVER_MAC
address add $CLIENT/24 dev $CLIENT_DEV
address add $SERVER/24 dev $SERVER_DEV
link set $CLIENT_DEV up
link set $SERVER_DEV up
neighbour replace $SERVER lladdr $SERVER_MAC dev $CLIENT_DEV nud permanent
neighbour replace $CLIENT lladdr $CLIENT_MAC dev $SERVER_DEV nud permanent
route add $SERVER dev $CLIENT_DEV src $CLIENT table 101
route add $CLIENT dev $SERVER_DEV src $SERVER table 102
rule add pref 100 iif lo to $SERVER lookup 101
rule add pref 101 iif lo to $CLIENT lookup 102
rule add pref 1000 lookup local
rule del pref 0 lookup local
EOF
run ip -batch "$D/setup.ip"
for dev in "$CLIENT_DEV" "$SERVER_DEV"; do
  sysctl_w "net.ipv4.conf.$dev.accept_local" 1
  sysctl_w "net.ipv4.conf.$dev.rp_filter" 0
done
mark "network set up"

# --- Soft-RoCE devices and SMC settings ---
printf 'link add %s type rxe netdev %s\n' "$CLIENT_RDMA" "$CLIENT_DEV" "$SERVER_RDMA" "$SERVER_DEV" >"$D/setup.rdma"
run rdma -b "$D/setup.rdma"
# one RoCE device per side: no attempt at a second (asymmetric) link on the same device
sysctl_w net.smc.smcr_max_links_per_lgr 1
# report tasks stuck in D state (SMC teardown bugs) within a test's time
sysctl_w kernel.hung_task_timeout_secs 30
mark "rdma devices added"

# --- UEID: SMC-Rv2 (the only version Soft-RoCE can carry) is proposed only when one is set ---
UEID_SET=
if [ -n "$VM_UEID" ]; then
  if [ ! -x "$VM_ENVOY_SMC_BIN" ]; then
    warn "$VM_ENVOY_SMC_BIN not found: no UEID set, so SMC-R cannot be negotiated (fallback NOSMCDEV 0x03030000); build the CLI (cargo build --bin envoy-smc), set ENVOY_SMC_BIN, or pass --no-ueid"
  elif out=$("$VM_ENVOY_SMC_BIN" ueid add "$VM_UEID" 2>&1); then
    log "+ $VM_ENVOY_SMC_BIN ueid add $VM_UEID: ${out:-ok}"
    UEID_SET=$VM_UEID
    mark "UEID $VM_UEID added"
  else
    warn "'$VM_ENVOY_SMC_BIN ueid add $VM_UEID' failed, so no UEID is set and SMC-R cannot be negotiated (fallback NOSMCDEV 0x03030000): ${out//$'\n'/ }"
  fi
fi

# --- SMC-D loopback (built kernel: the dibs device "lo"): on, or hidden from SMC's proposals by a
# PNET ID no netdev carries (run.sh --smcd-loopback off), so that 10.9.0.1 <-> 10.9.0.2 is SMC-R ---
SMCD_LO=absent
if [ -d /sys/class/dibs/lo ]; then
  SMCD_LO=on
  if [ "${VM_SMCD_LOOPBACK:-on}" = off ]; then
    run python3 "$VM_REPO/tests/vm/pnetid.py" lo NOLOOPBACK
    SMCD_LO=off
    mark "SMC-D loopback hidden (PNET ID NOLOOPBACK)"
  fi
fi

# --- the command ---
cd "$VM_CWD" 2>/dev/null || { warn "working directory $VM_CWD not visible in the VM, using /tmp"; cd /tmp || exit 1; }
read -r kernel </proc/sys/kernel/osrelease
VM_ENV+=(
  ENVOY_SMC_VM=1
  "ENVOY_SMC_VM_CLIENT=$CLIENT" "ENVOY_SMC_VM_SERVER=$SERVER"
  "ENVOY_SMC_VM_CLIENT_NETDEV=$CLIENT_DEV" "ENVOY_SMC_VM_SERVER_NETDEV=$SERVER_DEV"
  "ENVOY_SMC_VM_CLIENT_RDMA=$CLIENT_RDMA" "ENVOY_SMC_VM_SERVER_RDMA=$SERVER_RDMA"
  "ENVOY_SMC_VM_RDMA_DEVICES=$CLIENT_RDMA $SERVER_RDMA"
  "ENVOY_SMC_VM_UEID=$UEID_SET"
  "ENVOY_SMC_VM_KERNEL=$kernel"
  "ENVOY_SMC_VM_SMCD_LOOPBACK=$SMCD_LO"
  "ENVOY_SMC_VM_KERNEL_KIND=${VM_KERNEL_KIND:-stock}"
  ENVOY_SMC_VM_SHARED=/tmp
  "ENVOY_SMC_VM_HOST_SHARED=$VM_HOST_SHARED"
  "ENVOY_SMC_VM_REPO=$VM_REPO"
  TMPDIR=/run/tmp   # tmpfs: unix sockets cannot be bound on the 9p /tmp, and it is faster
)
uptime_s SETUP_DONE
echo "SETUP_DONE=$SETUP_DONE" >>"$D/times"
mark "setup done, running the command"
log "setup done at ${SETUP_DONE}s; running: ${VM_CMD[*]}"

# the command gets exactly VM_ENV as its environment, and its own session (so process group),
# so that a timeout can kill all of it
(
  for v in $(compgen -e); do unset "$v"; done
  for kv in "${VM_ENV[@]}"; do export "${kv?}"; done
  exec setsid -- "${VM_CMD[@]}" </dev/null >>"$D/stdout" 2>>"$D/stderr"
) &
CMD_PID=$!

# watchdog: what is left of run.sh's budget, minus a margin to collect the logs and stop
now=
uptime_s now
budget=$((VM_TIMEOUT - ${now%.*} - 12))
[ "$budget" -ge 5 ] || budget=5
(
  sleep "$budget"
  : >"$D/timed-out"
  echo w >/proc/sysrq-trigger    # blocked tasks into the kernel log
  kill -TERM -- "-$CMD_PID" 2>/dev/null
  sleep 3
  kill -KILL -- "-$CMD_PID" 2>/dev/null
  sleep 2
  # still there: unkillable (D state); record where it is stuck and end the VM anyway
  for p in /proc/[0-9]*; do
    st=$(<"$p/stat") 2>/dev/null || continue
    read -r state _ pgrp _ <<<"${st##*) }"
    if [ "$pgrp" != "$CMD_PID" ] || [ "$state" = Z ]; then continue; fi
    { echo "pid ${p#/proc/} state $state: $(tr '\0' ' ' <"$p/cmdline")"; sed 's/^/    /' "$p/stack"; } >>"$D/blocked-tasks" 2>&1
  done
  uptime_s t
  echo "CMD_DONE=$t" >>"$D/times"
  (finish 124)
  sync
  echo b >/proc/sysrq-trigger
) &
WATCHDOG=$!

wait "$CMD_PID"
rc=$?
kill "$WATCHDOG" 2>/dev/null
wait "$WATCHDOG" 2>/dev/null
uptime_s t
echo "CMD_DONE=$t" >>"$D/times"
mark "command exited ($rc)"
[ ! -f "$D/timed-out" ] || rc=124
finish "$rc"
