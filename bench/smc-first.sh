#!/usr/bin/env bash
# bench/smc-first.sh -- SMC-first vs today for the native extension's client sockets, side by
# side in one VM boot (issue 16, item 4). By hand; not part of CI.
#
#   bench/smc-first.sh [--no-build] [--kernel stock|built] [--kind afsmc|ipproto|both] [N] [ROUNDS]
#                      [N_TCP]
#
# today:     the shim opens a plain TCP socket at socket() (envoy_smc_socket, with the remote
#            address) and decides in connect(): SMC -> the library replaces the socket under the
#            fd with an SMC one and the shim registers it with epoll again; TCP -> nothing.
# SMC-first: an SMC socket at socket(); in connect() SMC -> nothing, TCP -> the kernel's
#            fallback switch (one setsockopt). Not in the library: bench/smc-first.c does it.
# Both driven the way Envoy drives a client socket (bench/smc-first.c), against an SMC listener
# of the same flavour on 10.9.0.2 (:9000 ends as SMC-R; :9001 is kept on TCP by the policy,
# upstream.deny_ports, as a cluster in a mesh whose server side is an SMC listener).
# Per kind and cell: the outcome (smc_diag of a held connection, the kernel's SMC-R and fallback
# counters, the SYNs on the wire with and without SMC's option 254), system calls per connect
# (strace -f -c, N connects minus 0, / N), then ROUNDS interleaved rounds of connect+close, N
# per SMC-R cell and N_TCP per TCP cell (cell order rotated per round): connections per second,
# CPU per connection of the client (getrusage), of the server process and of the whole VM
# (/proc/stat: the kernel's SMC work runs in kworkers too). Defaults: N=300, ROUNDS=7,
# N_TCP=10*N (a TCP connect is ~10x cheaper here), kind afsmc on --kernel stock (Debian 6.12),
# ipproto on --kernel built (7.3). Runs under nice: about 11 minutes for --kind both on 6.12,
# 8 for 7.3, on this loaded 2-core machine (after the release build of the library and CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
gen=$repo/.cache/smc-first

if [ "${1:-}" != --in-vm ]; then
  build=1 kernel=stock kind=
  while [ $# -gt 0 ]; do
    case $1 in
      --no-build) build=0; shift ;;
      --kernel) kernel=$2; shift 2 ;;
      --kind) kind=$2; shift 2 ;;
      *) break ;;
    esac
  done
  [ -n "$kind" ] || kind=$([ "$kernel" = built ] && echo ipproto || echo afsmc)
  case $kind in afsmc|ipproto|both) ;; *) echo "smc-first.sh: --kind must be afsmc, ipproto or both, not '$kind'" >&2; exit 2 ;; esac
  case $kernel in stock|built) ;; *) echo "smc-first.sh: --kernel must be stock or built, not '$kernel'" >&2; exit 2 ;; esac
  [ "$kind" = both ] && kind="afsmc ipproto"
  n=${1:-300} rounds=${2:-7}
  n_tcp=${3:-$((n * 10))}
  mkdir -p "$gen"
  if [ "$build" = 1 ]; then
    nice -n 10 cargo build --quiet --release -p envoy-smc-capi -p envoy-smc
  fi
  cc -O2 -Wall -Wextra -Werror -I include -o "$gen/smc-first" bench/smc-first.c \
    target/release/libenvoy_smc.a -lpthread -ldl -lm
  # The CLI sets the UEID in the VM (without one SMC-Rv2 is not negotiated) and reads smc_diag.
  export ENVOY_SMC_BIN=$repo/target/release/envoy-smc
  # The built kernel's SMC-D loopback would make these connections SMC-D: hide it, SMC-R is measured.
  loopback=()
  [ "$kernel" = built ] && loopback=(--smcd-loopback off)
  exec nice -n 10 tests/vm/run.sh --quiet --kernel "$kernel" "${loopback[@]}" --timeout 3000 \
    --env "GEN=$gen" --env "N=$n" --env "ROUNDS=$rounds" --env "N_TCP=$n_tcp" --env "KINDS=$kind" \
    --env "CLI=$repo/target/release/envoy-smc" -- bash "$repo/bench/smc-first.sh" --in-vm
fi

# ---- inside the VM ----
work=${TMPDIR:-/run/tmp}/smc-first
mkdir -p "$work"
bin=$GEN/smc-first
report=(python3 "$repo/bench/smc_first_report.py")
echo "kernel $(uname -r); $ROUNDS rounds of $N connections per SMC-R cell, $N_TCP per TCP cell; nproc $(nproc)"

# port_of CELL: the destination of a cell (…-smc → 9000, …-tcp → 9001).
port_of() { case $1 in *-smc) echo 9000 ;; *) echo 9001 ;; esac; }

# calls ARGS...: the system calls strace counts for one client run.
calls() {
  strace -f -c -o "$work/strace.out" "$bin" connect "$@" >/dev/null
  awk '$NF == "total" { print $4 }' "$work/strace.out"
}

for kind in $KINDS; do
  mode=$([ "$kind" = afsmc ] && echo MODE_AF_SMC || echo MODE_IPPROTO_SMC)
  cfg="mode: $mode
opt_in: {all_workloads: true}
mesh_switch: {always_on: true}
upstream: {allow_local: true, deny_ports: [\"9001\"]}
adaptive_fallback: {disabled: true}"
  "$bin" serve "$kind" 10.9.0.2 9000 9001 >"$work/server-$kind.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do grep -q serving "$work/server-$kind.log" 2>/dev/null && break; sleep 0.1; done
  grep -q serving "$work/server-$kind.log" || { cat "$work/server-$kind.log"; exit 1; }
  cells="today-smc smcfirst-smc plain-tcp today-tcp smcfirst-tcp"

  echo
  echo "== $kind ($mode): outcome of each cell (20 connections, one held open) =="
  for cell in $cells; do
    rm -f "$work/release" "$work/held.out"
    "$CLI" status --json >"$work/before.json" 2>/dev/null || true
    rm -f "$work/stop-sniff"
    # The SYNs arrive on vb (10.9.0.2): do they carry SMC's option?
    python3 "$repo/bench/syn_options.py" vb "$(port_of "$cell")" "$work/stop-sniff" \
      >"$work/syn.out" 2>&1 &
    sniff=$!
    for _ in $(seq 100); do grep -q ready "$work/syn.out" 2>/dev/null && break; sleep 0.1; done
    HOLD=$work/release "$bin" connect "${cell%-*}" "$kind" "$cfg" 10.9.0.2 "$(port_of "$cell")" 20 \
      >"$work/held.out" &
    client=$!
    for _ in $(seq 600); do grep -q '^held' "$work/held.out" 2>/dev/null && break; sleep 0.1; done
    "$CLI" status --json >"$work/during.json" 2>/dev/null || true
    touch "$work/release"
    wait "$client"
    touch "$work/stop-sniff"
    wait "$sniff"
    "${report[@]}" verify "$cell" "$work/before.json" "$work/during.json" \
      "$(awk '/^held/ { print $2 }' "$work/held.out")"
    grep -v ready "$work/syn.out" | sed 's/^/                 /'
    awk '/^held/ { print "                 the held fd answers as " $3 ", " $4 }' "$work/held.out"
  done

  : >"$work/syscalls-$kind"
  for cell in $cells; do
    port=$(port_of "$cell")
    with=$(calls "${cell%-*}" "$kind" "$cfg" 10.9.0.2 "$port" "$N")
    without=$(calls "${cell%-*}" "$kind" "$cfg" 10.9.0.2 "$port" 0)
    awk -v c="$cell" -v a="$with" -v b="$without" -v n="$N" \
      'BEGIN { printf "%s %.2f\n", c, (a - b) / n }' >>"$work/syscalls-$kind"
  done
  echo
  echo "system calls of one connect by name (strace -f -c, 1 + $N connects, calls column):"
  for cell in today-smc smcfirst-smc today-tcp smcfirst-tcp; do
    strace -f -c -o "$work/strace.out" "$bin" connect "${cell%-*}" "$kind" "$cfg" 10.9.0.2 \
      "$(port_of "$cell")" "$N" >/dev/null
    printf '%-13s' "$cell"
    awk -v n="$N" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" && $4 >= n {
      printf " %s=%.2f", $NF, $4 / (n + 1) } END { print "" }' "$work/strace.out"
  done

  : >"$work/results-$kind"
  set -- $cells
  for r in $(seq "$ROUNDS"); do
    for cell in "$@"; do
      n=$([ "$(port_of "$cell")" = 9000 ] && echo "$N" || echo "$N_TCP")
      "$bin" connect "${cell%-*}" "$kind" "$cfg" 10.9.0.2 "$(port_of "$cell")" "$n" "$server" |
        sed "s/^/$cell /" >>"$work/results-$kind"
    done
    set -- "${@:2}" "$1" # rotate: each cell takes each place in the order
  done
  "${report[@]}" table "$kind" "$work/syscalls-$kind" "$work/results-$kind"
  echo "per round:"
  sed 's/^/  /' "$work/results-$kind"
  kill "$server"
  wait "$server" 2>/dev/null || true
done
