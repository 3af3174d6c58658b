#!/usr/bin/env bash
# tests/vm/checks.sh -- runs INSIDE the SMC-R VM (tests/vm/smoke.sh, tests/vm/suite.sh): checks
# that the test bed is what the VM tests expect: SMC sockets, smc_diag, the veth topology and its
# routing, the rxe devices, the UEID, the netfilter rules the tests use, and `envoy-smc doctor`
# when the CLI is built. Ends with "smoke: N passed, M failed"; exit status 1 if any failed.
set -uo pipefail
if [ "${ENVOY_SMC_VM:-}" != 1 ]; then
  echo "tests/vm/checks.sh runs inside the VM: tests/vm/smoke.sh" >&2
  exit 2
fi
CLIENT=$ENVOY_SMC_VM_CLIENT SERVER=$ENVOY_SMC_VM_SERVER
BIN=${ENVOY_SMC_BIN:-$ENVOY_SMC_VM_REPO/target/debug/envoy-smc}
passed=0 failed=0

check() {  # check NAME COMMAND...
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name${out:+: ${out//$'\n'/ }}"
    failed=$((failed + 1))
  fi
}
has() { grep -q "$1" <<<"$2"; }

protocols=$(cat /proc/net/protocols)
check "AF_SMC sockets (SMC in /proc/net/protocols)" has "^SMC " "$protocols"
check "IPPROTO_SMC sockets (INET_SMC)" has "^INET_SMC " "$protocols"
# smc_diag answers (a module on the stock kernel, built in on the built one)
if [ -x "$BIN" ]; then
  check "smc_diag answers (envoy-smc status)" "$BIN" status --json
else
  check "smc_diag loaded" test -d /sys/module/smc_diag
fi
addrs=$(ip -4 -o addr show)
check "va has $CLIENT" has "va  *inet $CLIENT/" "$addrs"
check "vb has $SERVER" has "vb  *inet $SERVER/" "$addrs"
check "$CLIENT -> $SERVER routed over va" has "dev va" "$(ip route get "$SERVER" from "$CLIENT")"
check "$SERVER -> $CLIENT routed over vb" has "dev vb" "$(ip route get "$CLIENT" from "$SERVER")"
links=$(rdma link show)
for dev in $ENVOY_SMC_VM_RDMA_DEVICES; do
  check "rdma $dev ACTIVE" has "^link $dev/1 state ACTIVE" "$links"
done
check "UEID set (ENVOY_SMC_VM_UEID=$ENVOY_SMC_VM_UEID)" test -n "$ENVOY_SMC_VM_UEID"
check "iptables: raw notrack, nat DNAT/REDIRECT, filter SYN with option 254" sh -c "
  iptables-legacy -t raw -A OUTPUT -o va -j CT --notrack &&
  iptables-legacy -t nat -A PREROUTING -i vb -p tcp --dport 8080 -j DNAT --to-destination $SERVER:15006 &&
  iptables-legacy -t nat -A OUTPUT -p tcp -d $SERVER --dport 8081 -j REDIRECT --to-ports 15001 &&
  iptables-legacy -t filter -A INPUT -p tcp --syn --tcp-option 254 -j DROP &&
  for t in raw nat filter; do iptables-legacy -t \$t -F || exit 1; done"
if [ "${ENVOY_SMC_VM_KERNEL_KIND:-stock}" = built ]; then
  # what the kernel built from source adds: SMC-D loopback, and BPF that can choose SMC at socket()
  check "dibs loopback device lo" test -d /sys/class/dibs/lo
  check "SMC-D loopback ${ENVOY_SMC_VM_SMCD_LOOPBACK:-?} for this run" test -n "${ENVOY_SMC_VM_SMCD_LOOPBACK:-}"
  check "BTF, net.smc.hs_ctrl, fmod_ret on update_socket_protocol (tests/vm/bpf-probe.py)" \
    python3 "$(dirname "$0")/bpf-probe.py"
fi
if [ -x "$BIN" ]; then
  check "envoy-smc doctor" "$BIN" doctor
else
  echo "skip  envoy-smc doctor ($BIN not built)"
fi

echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
