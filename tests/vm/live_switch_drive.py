#!/usr/bin/env python3
"""The scenarios of tests/vm/live-switch.sh, run inside the SMC-R VM (see that script).

Environment: WORK (the Envoys' files and xDS directories), GEN (the resource files computed on
the host), CLI (envoy-smc), CLIENT_PID, SERVER_PID.
"""
import http.client
import json
import os
import subprocess
import sys
import threading
import time

W, GEN, CLI = os.environ["WORK"], os.environ["GEN"], os.environ["CLI"]
CLIENT_PID, SERVER_PID = int(os.environ["CLIENT_PID"]), int(os.environ["SERVER_PID"])
CLIENT_ADMIN, SERVER_ADMIN = 15000, 15100
T0 = time.time()
passed = failed = 0
timeline = []


def check(cond, what, detail=""):
    global passed, failed
    passed, failed = passed + bool(cond), failed + (not cond)
    print(f"{'ok  ' if cond else 'FAIL'} {what}" + (f"  [{detail}]" if detail else ""), flush=True)
    return cond


def phase(msg):
    now = time.time()
    print(f"\n== {msg}  (t+{now - T0:.1f} s, {utc(now)})", flush=True)


def utc(t):
    """Wall-clock time as in the Envoys' logs, to find a step's lines there."""
    return f"{time.strftime('%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1000):03d} UTC"


def admin(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode(errors="replace")
    c.close()
    return r.status, body


def ready(port):
    """The admin port answers /ready with 200; False while Envoy is not listening yet."""
    try:
        return admin(port, "/ready")[0] == 200
    except OSError:
        return False


def stats(port):
    out = {}
    for line in admin(port, "/stats")[1].splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


REJECTED = "listener_manager.lds.update_rejected"
rejected_seen = {CLIENT_ADMIN: 0, SERVER_ADMIN: 0}


def rejected_still_zero(when):
    for port, name in ((CLIENT_ADMIN, "client"), (SERVER_ADMIN, "server")):
        n = stats(port).get(REJECTED, -1)
        rejected_seen[port] = max(rejected_seen[port], n)
        if n != 0:
            check(False, f"{name} Envoy: {REJECTED} stays 0 ({when})", f"{n}")


def put(src, xds_dir, name):
    """The control plane's push: write next to the file, rename over it (atomic)."""
    tmp = f"{W}/{xds_dir}/.{name}.tmp"
    with open(f"{GEN}/{src}") as f, open(tmp, "w") as g:
        g.write(f.read())
    os.rename(tmp, f"{W}/{xds_dir}/{name}")
    now = time.time()
    print(f"     {src} renamed over {xds_dir}/{name} at {utc(now)}", flush=True)
    return now


# ---- what the sockets are ----

def socket_inodes(pid):
    out = set()
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            link = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_tcp():
    """(local port, remote 'ip:port', state hex, inode) of every TCP socket."""
    rows = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        lip, lport = f[1].split(":")
        rip, rport = f[2].split(":")
        ip = ".".join(str(int(rip[i:i + 2], 16)) for i in (6, 4, 2, 0))
        rows.append((int(lport, 16), f"{ip}:{int(rport, 16)}", f[3], int(f[9])))
    return rows


def tcp_conns(pid, peer):
    """Plain TCP sockets of `pid` connected to `peer` (SMC sockets are not in /proc/net/tcp under
    the fd's inode: their internal TCP socket has its own)."""
    mine = socket_inodes(pid)
    return {ino for _, remote, st, ino in proc_tcp() if remote == peer and st == "01" and ino in mine}


def smc_all():
    """Every SMC socket of both Envoys (smc_diag via envoy-smc status), listeners included."""
    r = subprocess.run([CLI, "status", "--json", "--comm", "envoy"], capture_output=True, text=True)
    try:
        return json.loads(r.stdout).get("connections", [])
    except ValueError:
        print(f"     envoy-smc status failed (exit {r.returncode}): {r.stdout[-300:]} {r.stderr[-300:]}")
        return []


def owned(conns, pid):
    return [c for c in conns if any(o.get("pid") == pid for o in c.get("processes", []))]


def smc(pid, listen=False):
    return [c for c in owned(smc_all(), pid) if listen or c["state"] != "LISTEN"]


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def smcr_to(pid, port, conns=None):
    conns = owned(smc_all() if conns is None else conns, pid)
    return {c["inode"] for c in conns if port_of(c["peer"]) == port
            and c["mode"] == "SMCR" and c["state"] == "ACTIVE"}


def accepted(pid, port, mode, conns=None):
    """The server Envoy's accepted SMC sockets on its listener `port` in `mode` (SMCR, or TCP:
    fallen back)."""
    conns = owned(smc_all() if conns is None else conns, pid)
    return {c["inode"] for c in conns if port_of(c["local"]) == port and c["mode"] == mode
            and c["state"] != "LISTEN"}


def listeners_at(pid, port):
    return [c for c in smc(pid, listen=True) if c["state"] == "LISTEN" and port_of(c["local"]) == port]


# ---- traffic ----

class SteadyClient:
    """Two threads, one per route, each a keep-alive connection like an app's pool: every request
    counted, every failure kept with its time and reason."""

    def __init__(self):
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(p,)) for p in ("/a", "/b")]

    def run(self, path):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", 10000, timeout=20)
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                good = r.status == 200
                detail = f"HTTP {r.status} {body[:300]!r}"
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001
                good, detail = False, repr(e)
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append((time.time() - T0, path, detail))
            time.sleep(0.03)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        for t in self.threads:
            t.join()


def wait_for(what, cond, timeout=30.0, every=0.2):
    """Polls cond() until it returns something truthy: (seconds since the call, value) or None."""
    start = time.time()
    while time.time() - start < timeout:
        v = cond()
        if v:
            return time.time() - start, v
        time.sleep(every)
    return None


def ack_after(port, counter, before, t_put, timeout=20.0):
    """Seconds from the rename to the moment Envoy counted the update (polled every 50 ms)."""
    start = time.time()
    while time.time() - start < timeout:
        if stats(port).get(counter, 0) > before:
            return time.time() - t_put
        time.sleep(0.05)
    return None


def first_new(t_put, probes, timeout=30.0):
    """probes: {name: (seen inodes, probe(conns) -> inodes)}. Polls one smc_diag snapshot at a
    time until every probe shows an inode not in its `seen`; returns {name: (seconds from the
    rename or None, new inodes)}."""
    found = {}
    start = time.time()
    while time.time() - start < timeout and len(found) < len(probes):
        conns = smc_all()
        now = time.time()
        for name, (seen, probe) in probes.items():
            if name not in found:
                new = probe(conns) - seen
                if new:
                    found[name] = (now - t_put, new)
        time.sleep(0.05)
    return {name: found.get(name, (None, set())) for name in probes}


def fmt(t):
    return f"{t:.2f} s" if t is not None else "never"


def cds_step(name, src, expect):
    """Pushes client CDS `src`; waits for the ACK and the first new connection of the expected
    kind (SMCR or TCP) on each route whose cluster changed, and at the inbound listeners.
    expect: {route: kind or None (cluster unchanged: its connections carry on)}, plus "inbound"."""
    phase(name)
    ports = {"/a": 8080, "/b": 15007}
    conns = smc_all()
    tcp_before = {r: tcp_conns(CLIENT_PID, f"10.9.0.2:{p}") for r, p in ports.items()}
    probes = {}
    for route, kind in expect.items():
        if route == "inbound":
            mode = "SMCR" if kind == "SMCR" else "TCP"  # smc_diag's fallback mode
            probe = (lambda c, m=mode: accepted(SERVER_PID, 15006, m, c) | accepted(SERVER_PID, 15007, m, c))
        elif kind == "SMCR":
            probe = (lambda c, p=ports[route]: smcr_to(CLIENT_PID, p, c))
        elif kind == "TCP":
            probe = (lambda c, p=ports[route]: tcp_conns(CLIENT_PID, f"10.9.0.2:{p}"))
        else:
            continue
        probes[f"{route} {kind}"] = (probe(conns), probe)
    n0 = stats(CLIENT_ADMIN).get("cluster_manager.cds.update_success", 0)
    t_put = put(src, "client-xds", "cds.json")
    ack = ack_after(CLIENT_ADMIN, "cluster_manager.cds.update_success", n0, t_put)
    check(ack is not None, f"{name}: the client Envoy took the CDS update", fmt(ack))
    found = first_new(t_put, probes)
    for probe_name, (t, new) in found.items():
        route, kind = probe_name.split()
        what = "the inbound listeners accept" if route == "inbound" else f"{route} opens"
        check(t is not None, f"{name}: {what} a new {kind} connection",
              f"after {fmt(t)}, inode(s) {sorted(new)[:3]}")
    for route, kind in expect.items():
        if kind is None:
            still = smcr_to(CLIENT_PID, ports[route])
            check(still, f"{name}: {route} (cluster unchanged) keeps its SMC-R connections",
                  f"{len(still)} SMC-R")
    rejected_still_zero(name)
    return {"scenario": name, "ack": ack, "found": found, "t_put": t_put}, tcp_before


def lds_step(name, src, port, timeout=30.0):
    """Pushes server LDS `src` while SMC-R flows; the update is taken, the listen socket stays one
    AF_SMC socket, the inbound listener accepts new SMC-R connections."""
    phase(name)
    s0 = stats(SERVER_ADMIN)
    lst0 = {c["inode"] for c in listeners_at(SERVER_PID, port)}
    probe = (lambda c: accepted(SERVER_PID, port, "SMCR", c))
    probes = {f"inbound SMCR": (probe(smc_all()), probe)}
    t_put = put(src, "server-xds", "lds.json")
    ack = ack_after(SERVER_ADMIN, "listener_manager.lds.update_success",
                    s0.get("listener_manager.lds.update_success", 0), t_put)
    s1 = stats(SERVER_ADMIN)
    delta = lambda k: s1.get(f"listener_manager.{k}", 0) - s0.get(f"listener_manager.{k}", 0)
    check(ack is not None and delta("listener_modified") >= 1,
          f"{name}: the server Envoy took the LDS update",
          f"after {fmt(ack)}; listeners modified +{delta('listener_modified')}, "
          f"in place +{delta('listener_in_place_updated')}")
    found = first_new(t_put, probes, timeout)
    t = found["inbound SMCR"][0]
    check(t is not None, f"{name}: the listener on :{port} accepts new SMC-R connections",
          f"after {fmt(t)}")
    lst = listeners_at(SERVER_PID, port)
    same = {c["inode"] for c in lst} == lst0
    check(len(lst) == 1 and lst[0]["flavour"] == "AF_SMC",
          f"{name}: one AF_SMC listen socket on :{port} (smc_diag)",
          f"{[(c['flavour'], c['inode']) for c in lst]}, before {sorted(lst0)}: "
          f"{'the same socket' if same else 'another socket'}")
    rejected_still_zero(name)
    return {"scenario": name, "ack": ack, "found": found,
            "listen": "same listen socket" if same else "new listen socket"}


def main():
    phase("waiting for both sidecars")
    up = wait_for("up", lambda: all(ready(p) for p in (CLIENT_ADMIN, SERVER_ADMIN))
                  if all(os.path.exists(f"/proc/{p}") for p in (CLIENT_PID, SERVER_PID)) else None, 60, 0.3)
    if up is None:
        for n in ("client", "server"):
            print(f"--- {n}.log\n" + open(f"{W}/{n}.log", errors="replace").read()[-2000:])
        check(False, "both sidecars ready within 60 s")
        return
    # Both inbound listeners: AF_SMC (the reuse_port one shared by the 2 workers' fds).
    for port in (15006, 15007):
        lst = listeners_at(SERVER_PID, port)
        check(len(lst) == 1 and lst[0]["flavour"] == "AF_SMC",
              f"inbound listener :{port} is one AF_SMC listen socket from the start, no EnvoyFilter",
              f"{[(c['flavour'], c['state']) for c in lst]}")
    prom = open(f"{W}/server.prom").read() if os.path.exists(f"{W}/server.prom") else ""
    shared = [l for l in prom.splitlines() if "listen_shared" in l and not l.startswith("#")]
    print(f"     server preload counters: {shared}")
    rejected_still_zero("at start")
    time.sleep(1)
    base_fds = (fd_count(CLIENT_PID), fd_count(SERVER_PID))
    print(f"     baseline fds: client {base_fds[0]}, server {base_fds[1]}")

    rows = []
    with SteadyClient() as traffic:
        # Traffic before any switch: TCP.
        got = wait_for("tcp", lambda: tcp_conns(CLIENT_PID, "10.9.0.2:8080") and
                       tcp_conns(CLIENT_PID, "10.9.0.2:15007"), 30)
        check(got is not None and not smcr_to(CLIENT_PID, 8080),
              "no EnvoyFilter: the upstream connections are plain TCP")
        row, tcp_before = cds_step("1 mesh-enable applied", "client-cds-1-mesh.json",
                                   {"/a": "SMCR", "/b": "SMCR", "inbound": "SMCR"})
        old_tcp = tcp_before["/a"] | tcp_before["/b"]
        gone = wait_for("drained", lambda: not (old_tcp & (tcp_conns(CLIENT_PID, "10.9.0.2:8080")
                                                           | tcp_conns(CLIENT_PID, "10.9.0.2:15007"))), 30)
        row["old"] = time.time() - row["t_put"] if gone else None
        check(old_tcp and gone is not None,
              "1: the TCP connections opened before the switch stay TCP until drained, then go",
              f"{len(old_tcp)} TCP connection(s) at the update, all gone {fmt(row['old'])} after it "
              "(by then at most)")
        rows.append(row)
        row, _ = cds_step("2 keep-tcp applied (cluster server)", "client-cds-2-mesh-keep.json",
                          {"/a": "TCP", "/b": None, "inbound": "TCP"})
        rows.append(row)
        row, _ = cds_step("3 keep-tcp deleted", "client-cds-1-mesh.json",
                          {"/a": "SMCR", "/b": None, "inbound": "SMCR"})
        rows.append(row)
        rows.append(lds_step("4a inbound listeners: filter-chain change (in place)",
                             "server-lds-1-filter-chain.json", 15006))
        rows.append(lds_step("4b inbound listeners: listener field change (full update)",
                             "server-lds-2-listener-field.json", 15007))
        rows.append(lds_step("4c inbound listener: a socket option, reuse_port (new sockets)",
                             "server-lds-3-socket-option.json", 15006))
        row, _ = cds_step("5 mesh-enable deleted", "client-cds-0-none.json",
                          {"/a": "TCP", "/b": "TCP", "inbound": "TCP"})
        rows.append(row)
        time.sleep(1)
    phase("traffic stopped")
    total = traffic.ok + len(traffic.failures)
    check(total > 0 and not traffic.failures, "zero failed requests across every update",
          f"{traffic.ok}/{total} ok" + (f"; first failures: {traffic.failures[:5]}" if traffic.failures else ""))
    print(f"     requests: {traffic.ok} ok in {time.time() - T0:.0f} s")
    if traffic.failures:
        # Why, from both Envoys: the client's upstream failures and the server's closes.
        for port, name in ((CLIENT_ADMIN, "client"), (SERVER_ADMIN, "server")):
            for k, v in sorted(stats(port).items()):
                if v and any(w in k for w in ("cx_connect_timeout", "cx_connect_fail", "with_active_rq",
                                              "rq_rx_reset", "rq_tx_reset", "pending_failure",
                                              "drain_close", "cx_destroy_remote", "cx_protocol_error",
                                              "rq_retry", "downstream_cx_destroy_local_active_rq")):
                    print(f"     {name} {k}: {v}")
        for name in ("client", "server"):
            lines = [l for l in open(f"{W}/{name}.log", errors="replace")
                     if l.startswith("access[") and l.split()[3] != "200"]
            print(f"     {name} Envoy, requests not answered 200:\n       " + "       ".join(lines[-10:]))
        r = subprocess.run([CLI, "status", "--json"], capture_output=True, text=True)
        try:
            print(f"     kernel SMC fallbacks: {json.dumps(json.loads(r.stdout).get('kernel_fallbacks'))[:1500]}")
        except ValueError:
            print(f"     envoy-smc status failed (exit {r.returncode})")
    check(rejected_seen[SERVER_ADMIN] == 0 and rejected_seen[CLIENT_ADMIN] == 0,
          f"{REJECTED} was 0 on both Envoys after every update (admin /stats)",
          f"server max {rejected_seen[SERVER_ADMIN]}, client max {rejected_seen[CLIENT_ADMIN]}")

    back = wait_for("fds", lambda: fd_count(CLIENT_PID) <= base_fds[0] and fd_count(SERVER_PID) <= base_fds[1], 30, 0.5)
    check(back is not None, "fd counts back to the baseline",
          f"client {fd_count(CLIENT_PID)} (baseline {base_fds[0]}), server {fd_count(SERVER_PID)} (baseline {base_fds[1]})")
    mine = socket_inodes(CLIENT_PID) | socket_inodes(SERVER_PID)
    cw_tcp = [r for r in proc_tcp() if r[2] == "08" and r[3] in mine]
    cw_smc = [c for pid in (CLIENT_PID, SERVER_PID) for c in smc(pid) if "WAIT" in str(c["state"])]
    check(not cw_tcp and not cw_smc, "no socket of either Envoy in CLOSE-WAIT",
          f"TCP {cw_tcp[:3]}, SMC {[(c['state'], c['local']) for c in cw_smc[:3]]}")

    phase("contrast: the listener patch render wrote before issue 19, on the enable_reuse_port: false listener")
    n0 = stats(SERVER_ADMIN).get(REJECTED, 0)
    put("server-lds-4-legacy-listener-patch.json", "server-xds", "lds.json")
    got = wait_for("rejected", lambda: stats(SERVER_ADMIN).get(REJECTED, 0) > n0, 20, 0.1)
    check(got is not None, "a listener socket-option patch on an enable_reuse_port: false listener is rejected "
          "(so the zero above is a real check)", f"{REJECTED}: {n0} -> {stats(SERVER_ADMIN).get(REJECTED, 0)}")

    print("\ntimeline (seconds from the update's rename to: Envoy's ACK, the first new connection of each")
    print("kind seen in smc_diag or /proc/net/tcp, polled about twice a second under TCG):")
    for r in rows:
        parts = [f"{k} {fmt(v[0])}" for k, v in r["found"].items()]
        if r.get("old") is not None:
            parts.append(f"TCP ones from before gone {fmt(r['old'])}")
        if "listen" in r:
            parts.append(r["listen"])
        print(f"  {r['scenario']:<60} ACK {fmt(r['ack']):>7} | " + "; ".join(parts))
    print(f"\nscenario took {time.time() - T0:.1f} s in the VM")


main()
print(f"live-switch: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
