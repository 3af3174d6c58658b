"""The checks of tests/vm/agent-hsctrl.sh (run inside the VM by that script; see its header)."""
import atexit, json, os, signal, socket, subprocess, sys, threading, time

from agent_checks import check, exited, read_state, tally, wait_for

W = os.environ["WORK"]
IPT = os.environ["IPT"]
CG = os.environ["CG"]
AGENT_PID = int(os.environ["AGENT_PID"])
STATE = f"{W}/agent/state.json"
SYSCTL = "/proc/sys/net/smc/hs_ctrl"
T0 = time.time()

ALLOWED = ("10.9.0.2", 8081)
DENIED_CIDR = ("10.9.0.3", 8081)
DENIED_PORT = ("10.9.0.2", 9999)
BLACK_HOLE = ("10.9.0.2", 8080)
DESTS = [ALLOWED, DENIED_CIDR, DENIED_PORT, BLACK_HOLE]


def state():
    return read_state(STATE)


def agent_log():
    return open(f"{W}/agent.log").read()


def ipt(*args):
    subprocess.run([IPT, *args], check=True)


# ---- plain TCP servers (root, not in a pod): say "ok" and close ----
def serve(addr):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(addr)
    ls.listen(64)
    def loop():
        while True:
            c, _ = ls.accept()
            try:
                c.sendall(b"ok")
            finally:
                c.close()
    threading.Thread(target=loop, daemon=True).start()


for d in DESTS:
    serve(d)

# ---- SYN counters: per destination, SYNs with option 254, then all SYNs ----
ipt("-N", "HSCOUNT")
for ip, port in DESTS:
    ipt("-A", "HSCOUNT", "-d", ip, "-p", "tcp", "--dport", str(port), "-m", "tcp", "--tcp-option", "254")
    ipt("-A", "HSCOUNT", "-d", ip, "-p", "tcp", "--dport", str(port))
ipt("-I", "OUTPUT", "1", "-p", "tcp", "--syn", "-j", "HSCOUNT")


def syns(netns=()):
    """{dest: (SYNs with option 254, all SYNs)}; netns: a command prefix entering a pod's namespace"""
    out = subprocess.run([*netns, IPT, "-L", "HSCOUNT", "-n", "-v", "-x"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[2:]
    pkts = [int(l.split()[0]) for l in out if l.strip()]
    return {d: (pkts[2 * i], pkts[2 * i + 1]) for i, d in enumerate(DESTS)}


CLIENT = r"""
import json, socket, sys, time
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proto = s.getsockopt(socket.SOL_SOCKET, 38)  # SO_PROTOCOL: 256 once the agent converted it
    s.settimeout(timeout)
    t0 = time.time()
    try:
        s.connect((host, port))
        res = s.recv(16).decode()
    except Exception as e:
        res = repr(e)
    print(json.dumps({"proto": proto, "result": res, "seconds": round(time.time() - t0, 2)}), flush=True)
    s.close()
"""


def connect(dest, n, timeout=10, pod="client", netns=()):
    """n connects to dest from the pod's cgroup (and network namespace) as uid 1337: [{proto, result, seconds}]"""
    r = subprocess.run([*netns, "bash", "-c", f"echo $$ >{CG}/hs/{pod}/cgroup.procs && exec setpriv --reuid 1337 "
                        f"--regid 1337 --clear-groups python3 -c \"$0\" {dest[0]} {dest[1]} {n} {timeout}", CLIENT],
                       capture_output=True, text=True)
    out = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    if len(out) != n:
        print(r.stdout, r.stderr)
    return out


def all_ok(res, proto=256):
    return bool(res) and all(r["result"] == "ok" and r["proto"] == proto for r in res)


def name(d):
    return f"{d[0]}:{d[1]}"


# ---- the agent comes up ----
st = wait_for(lambda: (lambda s: s if s and len(s["selected"]) == 2 and s["per_destination"].get("namespaces")
                       and s["per_destination"].get("not_selected") else None)(state()), 60)
if not check(bool(st), "the agent selects the annotated pod and its smc_hs_ctrl in the pod's network namespace",
             json.dumps((st or state() or {}).get("per_destination"))):
    print(agent_log())
    st = state()
    if not st:
        sys.exit(1)
pd = st["per_destination"]
pd.setdefault("hs_ctrl", "")
hs_now = open(SYSCTL).read().strip()
own_ns = os.stat("/proc/self/ns/net").st_ino
check(hs_now == pd["hs_ctrl"] and hs_now.startswith("envoy_smc") and pd["namespaces"] == [own_ns],
      "net.smc.hs_ctrl names the agent's struct_ops in the pod's namespace",
      f"net.smc.hs_ctrl = {hs_now!r}, state {pd['hs_ctrl']!r} in {pd['namespaces']} (before: {os.environ['HS_BEFORE']!r})")

netpod_ns = os.stat(f"/proc/{os.environ['NETPOD_PID']}/ns/net").st_ino
netpod_hs = subprocess.run(["nsenter", "-t", os.environ["NETPOD_PID"], "-n", "cat", SYSCTL], capture_output=True,
                           text=True).stdout.strip()
why = pd["not_selected"].get(str(netpod_ns), "")
check("CAP_SYS_ADMIN" in why and netpod_hs == "" and netpod_ns not in pd["namespaces"],
      "a pod in its own network namespace: the agent (DaemonSet capabilities) says why it cannot select it there",
      f"net:[{netpod_ns}]: {why!r}; its net.smc.hs_ctrl = {netpod_hs!r}")
check(agent_log().count("smc_hs_ctrl not selected in net:") == 1, "and says it once in its log, not every round")

# ---- per-destination decisions ----
base = syns()
res = {d: connect(d, 3) for d in (ALLOWED, DENIED_CIDR, DENIED_PORT)}
after = syns()
delta = {d: (after[d][0] - base[d][0], after[d][1] - base[d][1]) for d in DESTS}
for d, r in res.items():
    print(f"     {name(d)}: {[(x['proto'], x['result'], x['seconds']) for x in r]}; SYNs with option 254 / all: "
          f"{delta[d][0]}/{delta[d][1]}", flush=True)
check(all_ok(res[ALLOWED]) and delta[ALLOWED][1] >= 3 and delta[ALLOWED][0] == delta[ALLOWED][1],
      "the allowed destination is offered SMC: every SYN carries TCP option 254",
      f"{name(ALLOWED)}: {delta[ALLOWED][0]}/{delta[ALLOWED][1]}")
check(all_ok(res[DENIED_CIDR]) and delta[DENIED_CIDR][1] >= 3 and delta[DENIED_CIDR][0] == 0,
      "the denied CIDR is never offered SMC (no option 254 on its SYNs); its connections succeed on TCP",
      f"{name(DENIED_CIDR)}: {delta[DENIED_CIDR][0]}/{delta[DENIED_CIDR][1]}")
check(all_ok(res[DENIED_PORT]) and delta[DENIED_PORT][1] >= 3 and delta[DENIED_PORT][0] == 0,
      "the denied port is never offered SMC (no option 254 on its SYNs); its connections succeed on TCP",
      f"{name(DENIED_PORT)}: {delta[DENIED_PORT][0]}/{delta[DENIED_PORT][1]}")
# The agent publishes its state once per round (--interval): wait for the round after the SYNs.
def decisions():
    return (state() or {}).get("per_destination", {}).get("decisions", {})


def decided(d):
    return d.get("offered", 0) >= 3 and d.get("denied_address", 0) >= 3 and d.get("denied_port", 0) >= 3


dec = wait_for(lambda: (lambda d: d if decided(d) else None)(decisions()), 10) or decisions()
check(decided(dec), "the agent reports the BPF program's decisions", json.dumps(dec))

# ---- a black hole: SYNs carrying option 254 to 10.9.0.2:8080 are dropped ----
ipt("-I", "OUTPUT", "2", "-p", "tcp", "--syn", "-d", BLACK_HOLE[0], "--dport", str(BLACK_HOLE[1]),
    "-m", "tcp", "--tcp-option", "254", "-j", "DROP")
base = syns()
first = connect(BLACK_HOLE, 1, timeout=20)
mid = syns()
proven = "black hole proven at " + name(BLACK_HOLE) in agent_log()
held = [h for h in (state() or {}).get("per_destination", {}).get("held", []) if h["destination"] == name(BLACK_HOLE)]
print(f"     first connect behind the black hole: {first}; SYNs with option 254 / all: "
      f"{mid[BLACK_HOLE][0] - base[BLACK_HOLE][0]}/{mid[BLACK_HOLE][1] - base[BLACK_HOLE][1]}", flush=True)
check(proven and held and held[0]["hold_down_s"] == 120,
      "the stalled SMC connect is proven black-holed (SYN retried, plain TCP probe connects) and the destination held",
      f"held: {held}; " + "; ".join(l for l in agent_log().splitlines() if name(BLACK_HOLE) in l)[:600])
check(all_ok(first) and first[0]["seconds"] >= 1 and mid[BLACK_HOLE][0] - base[BLACK_HOLE][0] >= 1,
      "the stalled connect itself gets through on TCP at its next SYN retry (no option 254 on it)",
      f"{first}")
res = connect(BLACK_HOLE, 5)
end = syns()
d_opt, d_all = end[BLACK_HOLE][0] - mid[BLACK_HOLE][0], end[BLACK_HOLE][1] - mid[BLACK_HOLE][1]
check(all_ok(res) and d_opt == 0 and d_all >= 5 and all(r["seconds"] < 1 for r in res),
      "after the proof the black-holed destination is not offered SMC: new connections succeed on TCP at once",
      f"{[(x['result'], x['seconds']) for x in res]}; SYNs with option 254 / all: {d_opt}/{d_all}")
table = subprocess.run([os.environ["AGENT"], "status", "--state-file", STATE], capture_output=True, text=True).stdout
print(table.rstrip())
check(f"held on TCP (black hole): {name(BLACK_HOLE)}" in table and "per destination: smc_hs_ctrl" in table,
      "envoy-smc-agent status shows the per-destination decisions and the held destination")
base = syns()
res = connect(ALLOWED, 2)
d = syns()
check(all_ok(res) and d[ALLOWED][0] - base[ALLOWED][0] == d[ALLOWED][1] - base[ALLOWED][1] >= 2,
      "other destinations are still offered SMC", f"{name(ALLOWED)}: {d[ALLOWED][0] - base[ALLOWED][0]}/"
      f"{d[ALLOWED][1] - base[ALLOWED][1]}")

# ---- withdrawal ----
os.kill(AGENT_PID, signal.SIGTERM)
stopped = wait_for(lambda: exited(AGENT_PID), 10)
hs_after = open(SYSCTL).read().strip()
# An unregistered struct_ops can no longer be selected: the kernel refuses its name (EINVAL).
try:
    with open(SYSCTL, "w") as f:
        f.write(pd["hs_ctrl"])
    unregistered = False
except OSError as e:
    unregistered = e.errno == 22
with open(SYSCTL, "w") as f:
    f.write(os.environ["HS_BEFORE"] + "\n")
check(stopped and hs_after == os.environ["HS_BEFORE"] and not os.path.exists(STATE) and unregistered,
      "on SIGTERM the agent gives net.smc.hs_ctrl back and unregisters its struct_ops",
      f"net.smc.hs_ctrl = {hs_after!r}; selecting {pd['hs_ctrl']!r} again: "
      f"{'EINVAL (unregistered)' if unregistered else 'accepted: STILL REGISTERED'}")
res = connect(ALLOWED, 1)
check(all_ok(res, proto=6), "after the agent stopped, new sockets are plain TCP", f"{res}")

# ---- the pod in its own network namespace, with CAP_SYS_ADMIN (node.agent.cap_sys_admin) ----
# A veth between the VM's namespace and the pod's (pod 10.10.0.2, a default route to the VM's
# side): the servers' addresses are local to the VM's namespace, so the pod reaches them; its
# SYNs are counted in its own namespace's OUTPUT chain.
NETPOD = os.environ["NETPOD_PID"]
NETNS = ("nsenter", "-t", NETPOD, "-n")
subprocess.run(["ip", "link", "add", "hsveth0", "type", "veth", "peer", "name", "hsveth1", "netns", NETPOD], check=True)
subprocess.run(["ip", "addr", "add", "10.10.0.1/24", "dev", "hsveth0"], check=True)
subprocess.run(["ip", "link", "set", "hsveth0", "up"], check=True)
for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "10.10.0.2/24", "dev", "hsveth1"],
            ["ip", "link", "set", "hsveth1", "up"], ["ip", "route", "add", "default", "via", "10.10.0.1"],
            [IPT, "-N", "HSCOUNT"]):
    subprocess.run([*NETNS, *cmd], check=True)
for ip, port in DESTS:
    subprocess.run([*NETNS, IPT, "-A", "HSCOUNT", "-d", ip, "-p", "tcp", "--dport", str(port), "-m", "tcp",
                    "--tcp-option", "254"], check=True)
    subprocess.run([*NETNS, IPT, "-A", "HSCOUNT", "-d", ip, "-p", "tcp", "--dport", str(port)], check=True)
subprocess.run([*NETNS, IPT, "-I", "OUTPUT", "1", "-p", "tcp", "--syn", "-j", "HSCOUNT"], check=True)

netpod_before = subprocess.run([*NETNS, "cat", SYSCTL], capture_output=True, text=True, check=True).stdout.strip()
# The agent as before, with CAP_SYS_ADMIN added to its DaemonSet's three capabilities.
agent2 = subprocess.Popen(
    ["bash", "-c", f"echo $$ >{CG}/hs/agent/cgroup.procs && exec unshare -C \"$0\" \"$@\"",
     "setpriv", "--bounding-set", "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin", "--inh-caps", "-all", "--",
     os.environ["AGENT"], "run", "--interval", "0.2", "--hs-ctrl", os.environ.get("ENVOY_SMC_AGENT_HS_CTRL", "auto"),
     "--config", f"{W}/smc.yaml", "--state-file", STATE],
    stdout=open(f"{W}/agent-sys-admin.log", "w"), stderr=subprocess.STDOUT)
atexit.register(lambda: agent2.poll() is None and agent2.kill())
st = wait_for(lambda: (lambda s: s if s and netpod_ns in s["per_destination"].get("namespaces", []) else None)(state()),
              60) or state() or {}
pd2 = st.get("per_destination", {})
netpod_hs = subprocess.run([*NETNS, "cat", SYSCTL], capture_output=True, text=True).stdout.strip()
check(netpod_ns in pd2.get("namespaces", []) and own_ns in pd2.get("namespaces", []) and not pd2.get("not_selected")
      and netpod_hs == pd2.get("hs_ctrl") and netpod_hs.startswith("envoy_smc"),
      "with CAP_SYS_ADMIN the agent selects its smc_hs_ctrl in the pod's own network namespace too",
      f"namespaces {pd2.get('namespaces')}, not selected {pd2.get('not_selected')}; "
      f"the pod's net.smc.hs_ctrl = {netpod_hs!r}")
base = syns(NETNS)
res = {d: connect(d, 3, pod="netpod", netns=NETNS) for d in (ALLOWED, DENIED_CIDR, DENIED_PORT)}
after = syns(NETNS)
delta = {d: (after[d][0] - base[d][0], after[d][1] - base[d][1]) for d in DESTS}
for d, r in res.items():
    print(f"     own-namespace pod -> {name(d)}: {[(x['proto'], x['result'], x['seconds']) for x in r]}; "
          f"SYNs with option 254 / all: {delta[d][0]}/{delta[d][1]}", flush=True)
check(all_ok(res[ALLOWED]) and delta[ALLOWED][1] >= 3 and delta[ALLOWED][0] == delta[ALLOWED][1],
      "from the pod's own namespace, the allowed destination is offered SMC: every SYN carries option 254",
      f"{name(ALLOWED)}: {delta[ALLOWED][0]}/{delta[ALLOWED][1]}")
check(all(all_ok(res[d]) and delta[d][1] >= 3 and delta[d][0] == 0 for d in (DENIED_CIDR, DENIED_PORT)),
      "from the pod's own namespace, the denied CIDR and port are never offered SMC; their connections succeed",
      f"{name(DENIED_CIDR)}: {delta[DENIED_CIDR][0]}/{delta[DENIED_CIDR][1]}, "
      f"{name(DENIED_PORT)}: {delta[DENIED_PORT][0]}/{delta[DENIED_PORT][1]}")
agent2.send_signal(signal.SIGTERM)
try:
    agent2.wait(10)
except subprocess.TimeoutExpired:
    pass
netpod_hs = subprocess.run([*NETNS, "cat", SYSCTL], capture_output=True, text=True).stdout.strip()
check(agent2.returncode == 0 and netpod_hs == netpod_before,
      "on SIGTERM the agent gives the pod's own namespace its net.smc.hs_ctrl back",
      f"exit {agent2.returncode}; the pod's net.smc.hs_ctrl = {netpod_hs!r} (before: {netpod_before!r})")

print(f"agent-hsctrl scenario took {time.time() - T0:.1f} s in the VM")
print(f"agent-hsctrl: {tally['passed']} passed, {tally['failed']} failed")
if tally["failed"]:
    print(agent_log()[-3000:])
    if os.path.exists(f"{W}/agent-sys-admin.log"):
        print(open(f"{W}/agent-sys-admin.log").read()[-3000:])
sys.exit(1 if tally["failed"] else 0)
