#!/usr/bin/env bash
# The node agent's per-destination decisions (issue 20) on the kernel built from source (Linux
# 7.3, smc_hs_ctrl; tests/vm/run.sh --kernel built): envoy-smc-agent with a configuration that
# allows 10.9.0.0/24, denies 10.9.0.3/32 and port 9999, and its black-hole watch.
#
#   one "pod" (a cgroup v2 directory and a private mount namespace whose
#   /etc/istio/pod/annotations opts it in, a uid-1337 process in it as pilot-agent would be);
#   its connections are made by a Python client in the pod's cgroup as uid 1337 (the agent
#   converts by cgroup: what it does to Envoy's sockets, tests/vm/agent-e2e.sh shows); plain TCP
#   servers (root, not in a pod) on 10.9.0.2:8080, 10.9.0.2:8081, 10.9.0.2:9999, 10.9.0.3:8081.
#
# SYNs are counted with iptables (OUTPUT, `-p tcp --syn`, with and without `-m tcp --tcp-option
# 254`, per destination). Checks: the agent registers its smc_hs_ctrl and selects it in the pod's
# network namespace (net.smc.hs_ctrl), and says why it cannot in a second pod's own namespace
# (setns needs CAP_SYS_ADMIN, which its DaemonSet does not have); the allowed destination's SYNs all carry option 254; the
# denied CIDR's and the denied port's SYNs never do, and those connections succeed on TCP; with
# option-254 SYNs to 10.9.0.2:8080 dropped, the stalled connect is proven black-holed (plain TCP
# probe), the destination is held, the stalled connect itself gets through on TCP at its next SYN
# retry, and new connections go out without the option and succeed; on SIGTERM the agent gives
# net.smc.hs_ctrl back and new sockets are plain TCP. Then the agent again with CAP_SYS_ADMIN
# added (node.agent.cap_sys_admin): it selects its smc_hs_ctrl in the second pod's own namespace
# too, that pod's SYNs (over a veth to the VM's namespace) follow the policy, and SIGTERM gives
# that namespace its value back.
#
#   tests/vm/agent-hsctrl.sh [--no-build]
#
# ENVOY_SMC_AGENT_HS_CTRL=off runs the agent with --hs-ctrl off: the per-destination and
# black-hole checks must then FAIL (a way to see that they can).
#
# Boots the VM on the built kernel itself; about 60-100 s with the boot.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    bash scripts/install-deps.sh >/dev/null
    echo "agent-hsctrl: building envoy-smc (the VM sets a UEID with it) and envoy-smc-agent"
    cargo build --quiet -p envoy-smc -p envoy-smc-agent
  fi
  start=$(date +%s)
  rc=0
  tests/vm/run.sh --quiet --kernel built --timeout 300 \
    --env "ENVOY_SMC_AGENT_HS_CTRL=${ENVOY_SMC_AGENT_HS_CTRL:-auto}" -- bash "$repo/tests/vm/agent-hsctrl.sh" --in-vm || rc=$?
  echo "agent-hsctrl: whole run (VM boot included) $(($(date +%s) - start)) s, exit $rc"
  exit $rc
fi

# ---- inside the VM (root) ----
agent=$repo/target/debug/envoy-smc-agent
work=${TMPDIR:-/run/tmp}/agent-hsctrl
mkdir -p "$work" && chmod 755 "$work"
ipt=iptables-legacy
command -v $ipt >/dev/null || ipt=iptables
cg=/sys/fs/cgroup
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mkdir -p /tmp/agent-hsctrl && cp -f "$work"/*.log "$work"/*.yaml /tmp/agent-hsctrl/ 2>/dev/null || true
  echo "agent-hsctrl: logs in ${ENVOY_SMC_VM_HOST_SHARED:-/tmp}/agent-hsctrl/"
}
trap cleanup EXIT

grep -q "^cgroup2 $cg " /proc/mounts || mount -t cgroup2 cgroup2 "$cg"
ip addr add 10.9.0.3/32 dev "$ENVOY_SMC_VM_SERVER_NETDEV"

cat >"$work/smc.yaml" <<'EOF'
upstream:
  allow: ["10.9.0.0/24"]
  deny: ["10.9.0.3/32"]
  deny_ports: ["9999"]
adaptive_fallback:
  hold_down_ms: 120000
EOF

# The pod: its cgroup, its annotations where Istio's sidecar has them, a uid-1337 process.
mkdir -p "$cg/hs/client" "$cg/hs/agent"
printf 'smc.asm.alibabacloud.com/enabled="true"\n' >"$work/annotations"
unshare -m --propagation private bash -c '
  set -e
  echo $$ >'"$cg/hs/client"'/cgroup.procs
  mount -t tmpfs -o mode=755 pod-etc /etc   # the VM root is read-only; sleep needs no /etc
  mkdir -p /etc/istio/pod
  cp '"$work/annotations"' /etc/istio/pod/annotations
  exec setpriv --reuid 1337 --regid 1337 --clear-groups sleep 600' >"$work/pod.log" 2>&1 &
pids+=($!)
# A second opted-in pod in a network namespace of its own (as pods are on a node): the agent,
# with the DaemonSet's capabilities only, cannot setns into it and must say so.
mkdir -p "$cg/hs/netpod"
unshare -m -n --propagation private bash -c '
  set -e
  echo $$ >'"$cg/hs/netpod"'/cgroup.procs
  mount -t tmpfs -o mode=755 pod-etc /etc
  mkdir -p /etc/istio/pod
  cp '"$work/annotations"' /etc/istio/pod/annotations
  exec setpriv --reuid 1337 --regid 1337 --clear-groups sleep 600' >"$work/netpod.log" 2>&1 &
netpod_pid=$!
pids+=("$netpod_pid")

# The agent as in its DaemonSet pod: only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, its own cgroup
# and cgroup namespace.
before=$(cat /proc/sys/net/smc/hs_ctrl)
bash -c 'echo $$ >'"$cg/hs/agent"'/cgroup.procs && exec unshare -C "$0" "$@"' \
  setpriv --bounding-set -all,+bpf,+perfmon,+sys_ptrace --inh-caps -all -- \
  "$agent" run --interval 0.2 --hs-ctrl "${ENVOY_SMC_AGENT_HS_CTRL:-auto}" --config "$work/smc.yaml" --state-file "$work/agent/state.json" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")

WORK=$work AGENT=$agent AGENT_PID=$agent_pid NETPOD_PID=$netpod_pid IPT=$ipt CG=$cg HS_BEFORE=$before \
  python3 "$repo/tests/vm/agent-hsctrl.py"
