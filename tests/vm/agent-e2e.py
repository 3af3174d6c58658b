"""The checks of tests/vm/agent-e2e.sh (run inside the VM by that script; see its header)."""
import http.client, json, os, signal, subprocess, sys, threading, time

from agent_checks import check, exited, read_state, tally, wait_for

W = os.environ["WORK"]
CLI = os.environ["CLI"]
AGENT_PID = int(os.environ["AGENT_PID"])
PIDS = {n: int(os.environ[f"{n.upper()}_PID"]) for n in ("server", "client", "plain")}
STATE = f"{W}/agent/state.json"
T0 = time.time()
results = []  # every request's (path, status)


def note(msg):
    print(f"     {msg}", flush=True)


def state():
    return read_state(STATE)


def cgroups(st, key):
    return {p["cgroup"].rsplit("/", 1)[-1]: p for p in (st or {}).get(key, [])}


def get(port, path, timeout=30):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        res = (r.status, body)
    except Exception as e:  # noqa: BLE001
        res = (None, repr(e).encode())
    results.append((f":{port}{path}", res[0]))
    return res


def ok(res):
    return res[0] == 200 and res[1].startswith(b"echo ")


def status(pid, listen=False):
    args = [CLI, "status", "--json", "--pid", str(pid)] + ([] if listen else ["--no-listen"])
    r = subprocess.run(args, capture_output=True, text=True)
    try:
        return json.loads(r.stdout).get("connections", [])
    except ValueError:
        print(r.stdout, r.stderr)
        return []


def to_server(conns):
    return [c for c in conns if str(c["peer"]).endswith(":8080") or str(c["local"]).endswith(":15006")]


def modes(cs):
    return ", ".join(f"{c['state']}/{c['mode']}" + (f"/{fb_name(c)}" if c["mode"] == "TCP" else "")
                     for c in cs) or "none"


def fb_name(c):
    return ((c.get("fallback") or {}).get("reason") or {}).get("name", "?")


def fb_reason(c):
    fb = c.get("fallback") or {}
    r = fb.get("reason")
    return json.dumps(r) if not isinstance(r, str) else r


def tcp_conns(pid, port):
    """Established TCP sockets of `pid` to 10.9.0.2:`port` (ss; SMC sockets are not in it)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"10.9.0.2:{port}"],
                         capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if f"pid={pid}," in l]


def during_slow(port, path, seconds, look, seen_enough):
    """Runs a request that takes `seconds` at the app and polls `look()` while it is in flight,
    until `seen_enough(result)` (the connection is up: a loaded host may take a while)."""
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("r", get(port, f"{path}/slow{seconds}")))
    th.start()
    seen = look()
    while th.is_alive() and not seen_enough(seen):
        time.sleep(0.1)
        seen = look()
    th.join()
    return res["r"], seen


# ---- the node ----
check_log = open(f"{W}/check.log").read()
print(check_log.rstrip())
check(os.environ["CHECK_RC"] == "0" and "fmod_ret on update_socket_protocol   yes" in check_log,
      "envoy-smc-agent check: this node runs the agent (BTF, fmod_ret on update_socket_protocol)")
if "smc_hs_ctrl            yes" in check_log:
    # Linux 6.19+ (the kernel built from source): tests/vm/agent-hsctrl.sh tests these.
    check("black-hole rescue      yes" in check_log and "per-destination choice yes" in check_log,
          "check says: per-destination choice and black-hole rescue with smc_hs_ctrl on this kernel")
else:
    check("black-hole rescue      NO" in check_log and "per-destination choice NO" in check_log,
          "check says plainly: no per-destination choice, no black-hole rescue on this kernel")

# ---- selection ----
st = wait_for(lambda: (lambda s: s if s and len(s["selected"]) == 2 and len(s["not_selected"]) == 1 else None)(state()), 60)
sel, unsel = cgroups(st, "selected"), cgroups(st, "not_selected")
check(set(sel) == {"client", "server"} and set(unsel) == {"plain"},
      "the agent selects exactly the annotated pods (client, server), not the unannotated one",
      f"selected {sorted(sel)}, not selected {sorted(unsel)}: {[p.get('reason') for p in unsel.values()]}")
if not st:
    print(open(f"{W}/agent.log").read(), json.dumps(state(), indent=1))
    subprocess.run("ps -eo pid,euid,comm,args | grep -v ' \\['", shell=True)
    for n in PIDS:
        print(n, open(f"{W}/{n}.log", errors="replace").read()[-1500:])
    sys.exit(1)
agent_log = open(f"{W}/agent.log").read()
caps = [l.split()[1] for l in open(f"/proc/{AGENT_PID}/status") if l.startswith("CapEff:")][0]
check(int(caps, 16) == (1 << 39) | (1 << 38) | (1 << 19),
      "the agent runs with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE only (its DaemonSet's set)", f"CapEff {caps}")
own_ns = open(f"/proc/{AGENT_PID}/cgroup").read().strip()
check("this agent's cgroup namespace at /agent-e2e/agent" in agent_log
      and all(p["cgroup"] == f"/agent-e2e/{n}" for n, p in {**sel, **unsel}.items()),
      "the agent, in its own cgroup namespace like a DaemonSet pod, resolves the pods' cgroups",
      f"agent's cgroup {own_ns!r}; pods: {[p['cgroup'] for p in {**sel, **unsel}.values()]}")
for name in ("server", "client", "plain"):
    open(f"{W}/go-{name}", "w").close()

def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/ready")
        return c.getresponse().status == 200
    except Exception:  # noqa: BLE001
        return False
up = wait_for(lambda: all(ready(p) for p in (15000, 15100, 15200)), 120, 0.3)
check(up, "the three stock Envoys (uid 1337, no LD_PRELOAD) are ready", f"after {time.time() - T0:.1f} s")
if not up:
    for n in PIDS:
        print(n, open(f"{W}/{n}.log", errors="replace").read()[-1500:])
    sys.exit(1)
for n, pid in PIDS.items():
    env = open(f"/proc/{pid}/environ", "rb").read()
    uid = [l for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")][0].split()[2]
    exe = os.readlink(f"/proc/{pid}/exe")
    if b"LD_PRELOAD" in env or uid != "1337" or "envoy" not in exe:
        check(False, f"{n} is a stock Envoy as uid 1337 without LD_PRELOAD", f"uid {uid}, exe {exe}")

listen = [c for c in status(PIDS["server"], listen=True) if c["state"] == "LISTEN"]
check(any(str(c["local"]).endswith(":15006") for c in listen),
      "the server Envoy's inbound listener :15006 is an SMC socket (converted at socket())",
      f"{[c['local'] for c in listen]}")
check(not status(PIDS["plain"], listen=True),
      "the unannotated pod's Envoy has no SMC socket at all (listeners included)")

# ---- SMC-R between the Envoys ----
res, (cs, ss) = during_slow(10000, "/smc", 4, lambda: (to_server(status(PIDS["client"])),
                                                      to_server(status(PIDS["server"]))),
                            # every client connection past its SMC handshake (INIT while the
                            # link group comes up), and the server's side seen
                            lambda v: v[0] and all(c["mode"] == "SMCR" and c["state"] == "ACTIVE"
                                                   for c in v[0])
                            and any(c["mode"] == "SMCR" for c in v[1]))
check(ok(res) and cs and all(c["mode"] == "SMCR" and c["state"] == "ACTIVE" for c in cs)
      and any(c["mode"] == "SMCR" for c in ss),
      "client -> server is SMC-R on both stock Envoys (smc_diag)",
      f"client: {modes(cs)}; server: {modes(ss)}")
burst = []
def burst_worker(i):
    burst.append(get(10000, f"/burst/{i}"))
ths = [threading.Thread(target=burst_worker, args=(i,)) for i in range(40)]
for t in ths:
    t.start()
for t in ths:
    t.join()
check(sum(ok(r) for r in burst) == 40, "40 concurrent requests over SMC-R all succeed",
      f"{sum(ok(r) for r in burst)}/40")

res, cs = during_slow(10000, "/tcp", 4, lambda: to_server(status(PIDS["client"])), bool)
check(ok(res) and cs and all(c["mode"] == "TCP" and "0x03060000" in fb_reason(c) for c in cs),
      "the keep-TCP cluster falls back through the kernel's switch (OPTUNSUPP)", modes(cs))

res, (ps, pt) = during_slow(10200, "/plain", 4, lambda: (status(PIDS["plain"]), tcp_conns(PIDS["plain"], 8080)),
                            lambda v: v[1])
check(ok(res) and not ps and pt, "the unannotated pod's proxy stays on plain TCP",
      f"SMC sockets: {len(ps)}, TCP connections to 10.9.0.2:8080: {len(pt)}")

st = state()
table = subprocess.run([os.environ["AGENT"], "status", "--state-file", STATE], capture_output=True, text=True).stdout
print(table.rstrip())
rows = {l.split()[1]: l.split()[0] for l in table.splitlines()[2:] if len(l.split()) > 1}
check(rows.get("/agent-e2e/client") == "yes" and rows.get("/agent-e2e/server") == "yes"
      and rows.get("/agent-e2e/plain") == "no", "envoy-smc-agent status shows which pods are selected")
counts = {k: v.get("sockets_converted") for k, v in cgroups(st, "selected").items()}
note(f"sockets converted by the BPF program so far: {counts}")
check(counts.get("client", 0) > 0 and counts.get("server", 0) > 0,
      "the agent reports the sockets it converted per pod", str(counts))

# ---- agent stop ----
long_req = {}
# 10 s at the app: under the server route's default 15 s timeout
th = threading.Thread(target=lambda: long_req.setdefault("r", get(10000, "/before-stop/slow10")))
th.start()
before = wait_for(lambda: [c for c in to_server(status(PIDS["client"])) if c["state"] == "ACTIVE"], 12)
os.kill(AGENT_PID, signal.SIGTERM)
stopped = wait_for(lambda: exited(AGENT_PID), 10)
check(stopped and not os.path.exists(STATE), "the agent exits on SIGTERM and withdraws its state file")
res, (cs, ct) = during_slow(10000, "/after-stop", 4, lambda: (to_server(status(PIDS["client"])),
                                                             tcp_conns(PIDS["client"], 8080)),
                            lambda v: v[1])
new_smc = [c for c in cs if c["inode"] not in {b["inode"] for b in before}]
check(ok(res) and not new_smc and ct, "after agent stop, new connections are plain TCP",
      f"new SMC sockets: {modes(new_smc)}; TCP connections to 10.9.0.2:8080: {len(ct)}")
th.join()
check(ok(long_req["r"]) and before and all(c["mode"] == "SMCR" for c in before),
      "a connection opened before the stop stays SMC-R and completes its request",
      f"before the stop: {modes(before)}; request: {long_req['r'][0]}")
after = [get(10000, f"/after/{i}") for i in range(10)]
check(all(ok(r) for r in after), "requests after the stop succeed", f"{sum(ok(r) for r in after)}/10")

# ---- totals ----
failed_reqs = [r for r in results if r[1] != 200]
check(not failed_reqs, "0 failed requests", f"{len(results)} requests, failed: {failed_reqs[:5]}")
time.sleep(0.5)
cw = subprocess.run(["ss", "-Htan", "state", "close-wait"], capture_output=True, text=True).stdout.split("\n")
cw = [l for l in cw if l.strip()]
smc_cw = [c for n in PIDS for c in status(PIDS[n]) if c["state"] in ("APPCLW1", "APPCLW2", "PEERCLW1", "PEERCLW2", "CLOSE_WAIT")]
check(not cw and not smc_cw, "0 CLOSE-WAIT (TCP and SMC)", f"tcp: {cw[:3]}, smc: {modes(smc_cw)}")
print(f"agent-e2e scenario took {time.time() - T0:.1f} s in the VM")
print(f"agent-e2e: {tally['passed']} passed, {tally['failed']} failed")
sys.exit(1 if tally["failed"] else 0)
