#!/usr/bin/env bash
# bench/connect-syscalls.sh -- system calls per connect that envoy-smc adds, before and after,
# side by side in one run in the SMC-R VM (issue 16, "a cheap SMC connect").
#
#   bench/connect-syscalls.sh [--no-build] [N]        (N connects per count, default 100)
#
# "before" is the tree at BEFORE_REF (default: a9642dc, the single-crate tree before issue 16),
# "after" is this tree, both built by bench/build-before-after.sh in PROFILE (default release;
# the counts do not depend on it).
# Each count is `strace -f -c` over a client that makes 1 + N connects minus the same client
# making 1 (the first connect carries the library's set-up), divided by N:
#   preload:  bench/connect_syscalls.py, a Python client that opens a socket, sets TCP_NODELAY,
#             connects and closes (its own calls: 4), alone and under LD_PRELOAD of each build;
#   C ABI:    bench/abi-connect.c, which drives the C ABI the way the native extension's
#             SmcIoHandle does (socket with the remote address, the option told to the library,
#             the connect decision, connect, close), linked with each build's staticlib; its
#             "app alone" is the same program without the library. No Envoy and no epoll: the
#             shim's epoll re-registration of a replaced socket (2 calls) is not in these counts.
# Destinations: 10.9.0.2:9000 (SMC: an IPPROTO_SMC listener, SMC-R over Soft-RoCE) and
# 10.9.0.2:9001 (kept on TCP by `upstream.deny_ports`). MODE_IPPROTO_SMC, mesh switch always on.
# Prints one table. Not part of CI (about 3 minutes in the VM after the builds).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
gen=$repo/.cache/connect-syscalls

if [ "${1:-}" != --in-vm ]; then
  build=1
  [ "${1:-}" = --no-build ] && { build=0; shift; }
  n=${1:-100}
  [ "$build" = 0 ] || bash bench/build-before-after.sh
  cc -O2 -Wall -Wextra -Werror -DENVOY_SMC_SPLIT_ABI -I "$gen/before" -o "$gen/before/abi-connect" \
    bench/abi-connect.c "$gen/before/libenvoy_smc.a" -lpthread -ldl -lm
  cc -O2 -Wall -Wextra -Werror -I "$gen/after" -o "$gen/after/abi-connect" \
    bench/abi-connect.c "$gen/after/libenvoy_smc.a" -lpthread -ldl -lm
  exec tests/vm/run.sh --quiet --timeout 1200 --env "GEN=$gen" --env "N=$n" \
    -- bash "$repo/bench/connect-syscalls.sh" --in-vm
fi

# ---- inside the VM ----
work=${TMPDIR:-/run/tmp}/connect-syscalls
mkdir -p "$work"
cfg='mode: MODE_IPPROTO_SMC
opt_in: {all_workloads: true}
mesh_switch: {always_on: true}
upstream: {allow_local: true, deny_ports: ["9001"]}
adaptive_fallback: {disabled: true}'
printf '%s\n' "$cfg" >"$work/smc.yaml"
python3 "$repo/bench/connect_syscalls.py" serve 10.9.0.2 9000 9001 >"$work/server.log" 2>&1 &
for _ in $(seq 100); do grep -q serving "$work/server.log" 2>/dev/null && break; sleep 0.1; done

# calls COMMAND...: the total number of system calls strace counts for COMMAND (all threads).
calls() {
  strace -f -c -o "$work/strace.out" "$@" >/dev/null 2>>"$work/client.log"
  awk '$NF == "total" { print $4 }' "$work/strace.out"
}
# per_connect PORT COMMAND-PREFIX...: (calls with N connects - calls with 0) / N.
per_connect() {
  local port=$1; shift
  local with without
  with=$(calls "$@" 10.9.0.2 "$port" "$N")
  without=$(calls "$@" 10.9.0.2 "$port" 0)
  awk -v a="$with" -v b="$without" -v n="$N" 'BEGIN { printf "%.1f", (a - b) / n }'
}
py=(python3 "$repo/bench/connect_syscalls.py" connect)
declare -A r
for dest in smc:9000 tcp:9001; do
  name=${dest%%:*} port=${dest#*:}
  r[py_app_$name]=$(per_connect "$port" "${py[@]}")
  for b in before after; do
    r[py_${b}_$name]=$(per_connect "$port" env ENVOY_SMC_CONFIG="$work/smc.yaml" \
      ENVOY_SMC_STATS_FILE="$work/$b-$name.prom" ENVOY_SMC_STATS_INTERVAL=0 \
      LD_PRELOAD="$GEN/$b/libenvoy_smc_preload.so" "${py[@]}")
    r[abi_${b}_$name]=$(per_connect "$port" "$GEN/$b/abi-connect" abi "$cfg")
  done
  r[abi_app_$name]=$(per_connect "$port" "$GEN/after/abi-connect" plain "$cfg")
done

extra() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", a - b }'; }
echo
echo "system calls per connect, N=$N connects, strace -f -c (beyond = minus the app alone)"
printf '%-22s %-12s %10s %8s %10s %8s\n' "entry point" build "SMC conn." beyond "TCP-kept" beyond
for ep in py:"preload (Python)" abi:"C ABI (abi-connect)"; do
  k=${ep%%:*} label=${ep#*:}
  printf '%-22s %-12s %10s %8s %10s %8s\n' "$label" "app alone" "${r[${k}_app_smc]}" "" \
    "${r[${k}_app_tcp]}" ""
  for b in before after; do
    printf '%-22s %-12s %10s %8s %10s %8s\n' "$label" "$b" "${r[${k}_${b}_smc]}" \
      "$(extra "${r[${k}_${b}_smc]}" "${r[${k}_app_smc]}")" "${r[${k}_${b}_tcp]}" \
      "$(extra "${r[${k}_${b}_tcp]}" "${r[${k}_app_tcp]}")"
  done
done
echo
echo "decisions the preload counted (last run of each build; 1 + N connects, or 1):"
grep -h -E '^envoy_smc_(smc_connect|connect|tcp)[^ ]* [1-9]' "$work"/*.prom 2>/dev/null | sort | uniq -c || true
echo "decisions the C ABI counted (stderr of the last runs):"
grep -h 'abi-connect:' "$work/client.log" | sort | uniq -c || true
echo
echo "the after build's extra calls on an SMC connect (strace -c of the preload run, 1 + $N connects):"
strace -f -c -o "$work/strace.out" env ENVOY_SMC_CONFIG="$work/smc.yaml" \
  LD_PRELOAD="$GEN/after/libenvoy_smc_preload.so" "${py[@]}" 10.9.0.2 9000 "$N" >/dev/null 2>&1
awk '$1 ~ /^[0-9.]+$/ && NF >= 5' "$work/strace.out" | sort -k4 -n -r | head -16
