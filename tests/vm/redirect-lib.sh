# Sourced inside the VM (root) by the scripts that run a client and a server sidecar on the VM's
# one kernel (scripts/demo.sh, tests/vm/adaptive-e2e.sh, tests/vm/live-switch.sh,
# tests/vm/agent-lib.sh): which iptables to use, and Istio's inbound redirect.

# The iptables binary: iptables-legacy where the guest has it, else iptables (nft); both work.
ipt=iptables-legacy
command -v $ipt >/dev/null || ipt=iptables

# istio_redirect: 10.9.0.2:8080 (the app port) arriving on the server's netdev goes to the server
# sidecar's inbound listener :15006, as Istio's iptables redirect does. Both sidecars share this
# kernel, so the client side is left untracked: the server's original_dst then sees the app port
# (FACTS.md, "Istio-shaped interception").
istio_redirect() {
  $ipt -t raw -A OUTPUT -o "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
  $ipt -t raw -A PREROUTING -i "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
  $ipt -t nat -A PREROUTING -i "$ENVOY_SMC_VM_SERVER_NETDEV" -p tcp -d 10.9.0.2 --dport 8080 \
    -j DNAT --to-destination 10.9.0.2:15006
}
