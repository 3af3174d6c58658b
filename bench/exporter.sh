#!/usr/bin/env bash
# bench/exporter.sh -- what one scrape of `envoy-smc exporter` costs on a busy node: 10,000 SMC
# sockets spread over 20 network namespaces (plus the root one), in the SMC-R test VM.
#
#   bench/exporter.sh [--namespaces N] [--sockets-per-ns M] [--scrapes K]
#   bench/exporter.sh --host [--namespaces N]   (this machine, natively: its kernel has no SMC,
#                                               so it measures the per-namespace cost alone)
#
# Each namespace holds one Python process with M IPPROTO_SMC listening sockets (listeners are
# real SMC sockets for smc_diag: a count is a count; SMC-R connections need the VM's root
# namespace, see docs/operations.md). The release build of the CLI serves /metrics; K scrapes
# (curl) are timed one after the other; the exporter's own envoy_smc_scrape_duration_seconds and
# its peak resident memory (VmHWM) are reported. Prints a table for bench/README.md.
# Not a timed test: numbers only, under TCG emulation (about 5-10x slower than the host).
set -euo pipefail
cd "$(dirname "$0")/.."
NS=20 PER=500 SCRAPES=20
while [ $# -gt 0 ]; do
  case $1 in
    --namespaces) NS=$2; shift 2 ;;
    --sockets-per-ns) PER=$2; shift 2 ;;
    --scrapes) SCRAPES=$2; shift 2 ;;
    --in-vm) IN_VM=1; shift ;;
    --host) IN_VM=1; HOST=1; PER=0; shift ;;
    *) echo "usage: $0 [--namespaces N] [--sockets-per-ns M] [--scrapes K]" >&2; exit 2 ;;
  esac
done

if [ -n "${HOST:-}" ]; then
  cargo build --release --quiet --bin envoy-smc
fi
if [ -z "${IN_VM:-}" ]; then
  echo "bench/exporter: building envoy-smc (release)" >&2
  cargo build --release --quiet --bin envoy-smc
  exec tests/vm/run.sh --timeout 900 --env "ENVOY_SMC_BIN_RELEASE=$PWD/target/release/envoy-smc" -- \
    bash bench/exporter.sh --in-vm --namespaces "$NS" --sockets-per-ns "$PER" --scrapes "$SCRAPES"
fi

# --- in the VM ---
source scripts/test-lib.sh
bin=${ENVOY_SMC_BIN_RELEASE:-target/release/envoy-smc}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in $(seq 1 "$NS"); do ip netns del "esmc-bench-$i" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
py='
import socket, sys
n = int(sys.argv[1]); keep = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 256)  # never on the host: n = 0
    s.bind(("127.0.0.1", 20000 + i)); s.listen(4); keep.append(s)
print("ready", flush=True)
import time
time.sleep(3600)
'
ulimit -n 4096
t0=$(date +%s.%N)
for i in $(seq 1 "$NS"); do
  ip netns add "esmc-bench-$i"
  ip -n "esmc-bench-$i" link set lo up
  ip netns exec "esmc-bench-$i" unshare --uts sh -c "hostname esmc-bench-$i; exec python3 -c '$py' $PER" \
    </dev/null >"$work/esmc-bench-$i.out" &
  pids+=($!)
done
for i in $(seq 1 "$NS"); do
  wait_until 120 "namespace esmc-bench-$i to hold its $PER sockets" grep -q ready "$work/esmc-bench-$i.out" || exit 1
done
t1=$(date +%s.%N)
[ -z "${HOST:-}" ] || echo "bench/exporter: on the host (no SMC in its kernel: no sockets, the per-namespace cost only)" >&2
echo "bench/exporter: $((NS * PER)) SMC listening sockets in $NS namespaces, set up in $(echo "$t1 - $t0" | bc) s" >&2

"$bin" exporter --listen 127.0.0.1:0 --doctor-interval 0 2>"$work/exporter.err" &
exp=$!
pids+=("$exp")
wait_until 60 "the exporter to serve" grep -q "serving http://" "$work/exporter.err" || exit 1
url=$(grep -o 'http://[^ ]*/metrics' "$work/exporter.err")
url=${url%/metrics}
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$exp/status")

# The VM's own speed, for scale: a request the exporter answers without collecting anything.
base=()
for _ in $(seq 1 "$SCRAPES"); do
  base+=("$(curl -s -o /dev/null -w '%{time_total}' $url/)")
done
times=() selfs=()
for _ in $(seq 1 "$SCRAPES"); do
  t=$(curl -s -o $work/page -w '%{time_total}' $url/metrics)
  times+=("$t")
  selfs+=("$(awk '/^envoy_smc_scrape_duration_seconds / {print $2}' $work/page)")
done
counted=$(awk '/^envoy_smc_sockets\{/ {s += $2} END {print s + 0}' "$work/page")
nslines=$(grep -c '^envoy_smc_netns_up{.*} 1$' $work/page || true)
bytes=$(wc -c <$work/page)
rss_peak=$(awk '/VmHWM/ {print $2}' "/proc/$exp/status")

stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "median %.1f ms, p90 %.1f ms, max %.1f ms", a[int((NR+1)/2)]*1000, a[int(NR*0.9+0.5)]*1000, a[NR]*1000}'; }
echo
echo "| what | value |"
echo "|---|---|"
echo "| SMC sockets counted in the page | $counted (expected >= $((NS * PER))) |"
echo "| namespaces entered | $nslines |"
echo "| page size | $bytes bytes |"
echo "| index page, no collection (curl time_total, $SCRAPES requests) | $(stats "${base[@]}") |"
echo "| scrape, client side (curl time_total, $SCRAPES scrapes) | $(stats "${times[@]}") |"
echo "| scrape, exporter's own envoy_smc_scrape_duration_seconds | $(stats "${selfs[@]}") |"
echo "| exporter RSS idle / peak (VmRSS / VmHWM) | $((rss_idle / 1024)).$(( (rss_idle % 1024) * 10 / 1024 )) MB / $((rss_peak / 1024)).$(( (rss_peak % 1024) * 10 / 1024 )) MB |"
echo "| sockets, namespaces | $((NS * PER)) in $NS namespaces + the root one |"
[ "$counted" -ge $((NS * PER)) ] || { echo "bench/exporter: counted $counted sockets, fewer than created" >&2; exit 1; }
