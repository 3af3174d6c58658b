"""bench/smc_first_report.py -- the numbers of bench/smc-first.sh (run in the VM, standard library).

  smc_first_report.py verify LABEL BEFORE.json DURING.json INODE
      what the kernel says about one cell's connections: the held client socket in smc_diag
      (mode, fallback reason, peer diagnosis) and the kernel's counters between the two
      `envoy-smc status --json` snapshots (SMC-R handshakes and fallbacks by reason, both sides).
  smc_first_report.py table KIND SYSCALLS RESULTS
      SYSCALLS: lines "CELL PER_CONNECT"; RESULTS: the connect runs' "result ..." lines, each
      prefixed with its cell. Prints medians over the rounds, their spread (min-max) and the
      ratios SMC-first / today for each outcome.
"""
import json
import statistics
import sys


def counters(status):
    """(SMC-R client and server handshakes, {side: {reason: count}}) of one status snapshot."""
    stats = status.get("kernel_stats") or {}
    smcr = stats.get("smcr") or {}
    hs = {
        "client": smcr.get("client_v1_success", 0) + smcr.get("client_v2_success", 0),
        "server": smcr.get("server_v1_success", 0) + smcr.get("server_v2_success", 0),
    }
    fb = {}
    for side in ("client", "server"):
        fb[side] = {
            r["reason"]["name"]: r["count"]
            for r in (status.get("kernel_fallbacks") or {}).get(side, [])
        }
    return hs, fb


def verify(label, before_path, during_path, inode):
    with open(before_path) as f:
        before = json.load(f)
    with open(during_path) as f:
        during = json.load(f)
    held = [c for c in during.get("connections", []) if str(c.get("inode")) == inode]
    if held:
        c = held[0]
        fb = c.get("fallback") or {}
        sock = "held client socket: %s %s mode %s, reason %s, peer diagnosis %s" % (
            c.get("flavour"),
            c.get("state"),
            c.get("mode"),
            (fb.get("reason") or {}).get("name", "-"),
            (fb.get("peer_diagnosis") or {}).get("name", "-"),
        )
    else:
        sock = "held client socket: not an SMC socket (absent from smc_diag)"
    hs0, fb0 = counters(before)
    hs1, fb1 = counters(during)
    parts = ["SMC-R handshakes client +%d server +%d" % (
        hs1["client"] - hs0["client"], hs1["server"] - hs0["server"])]
    for side in ("client", "server"):
        grown = {
            r: n - fb0[side].get(r, 0)
            for r, n in fb1[side].items()
            if n - fb0[side].get(r, 0) > 0
        }
        text = ", ".join("%s +%d" % kv for kv in sorted(grown.items())) or "none"
        parts.append("%s fallbacks: %s" % (side, text))
    print("%-16s %s; %s" % (label, sock, "; ".join(parts)))


CELLS = [
    ("smc", "ends as SMC-R"),
    ("tcp", "ends as TCP (policy)"),
]


def table(kind, syscalls_path, results_path):
    calls = {}
    with open(syscalls_path) as f:
        for line in f:
            cell, n = line.split()
            calls[cell] = float(n)
    runs = {}
    with open(results_path) as f:
        for line in f:
            cell, rest = line.split(" ", 1)
            fields = dict(kv.split("=") for kv in rest.split()[1:])
            runs.setdefault(cell, []).append(fields)

    def med(cell, key):
        vals = [float(r[key]) for r in runs.get(cell, [])]
        if not vals:
            return None, ""
        return statistics.median(vals), "%.0f-%.0f" % (min(vals), max(vals))

    rounds = max((len(v) for v in runs.values()), default=0)
    def n_of(cell):
        return runs[cell][0]["n"] if runs.get(cell) else "?"

    print()
    print("SMC-first vs today, client sockets, %s; %s rounds of %s connections per SMC-R cell,"
          " %s per TCP cell" % (kind, rounds, n_of("today-smc"), n_of("today-tcp")))
    print("(syscalls: strace -f -c per connect; others: median of rounds, spread min-max)")
    head = "%-22s %-9s %8s %20s %20s %20s %20s" % (
        "outcome", "strategy", "syscalls", "conn/s", "client CPU us", "server CPU us",
        "VM CPU us")
    print(head)
    print("-" * len(head))
    keys = ["rate", "client_us", "server_us", "vm_us"]
    for out, label in CELLS:
        rows = [("today", "today-" + out), ("SMC-first", "smcfirst-" + out)]
        if out == "tcp":
            rows.insert(0, ("app alone", "plain-tcp"))
        meds = {}
        for name, cell in rows:
            line = "%-22s %-9s %8s" % (label, name, "%.1f" % calls[cell] if cell in calls else "-")
            for k in keys:
                m, spread = med(cell, k)
                meds[(cell, k)] = m
                line += " %20s" % ("-" if m is None else "%.0f (%s)" % (m, spread))
            print(line)
        t, s = "today-" + out, "smcfirst-" + out
        line = "%-22s %-9s %8s" % (label, "ratio", "%.2fx" % (calls[s] / calls[t])
                                   if calls.get(t) else "-")
        for k in keys:
            a, b = meds[(t, k)], meds[(s, k)]
            line += " %20s" % ("%.2fx" % (b / a) if a and b is not None else "-")
        print(line)
        line = "%-22s %-9s %8s" % (label, "paired", "")
        for k in keys:
            pairs = [
                float(b[k]) / float(a[k])
                for a, b in zip(runs.get(t, []), runs.get(s, []))
                if float(a[k]) > 0
            ]
            line += " %20s" % ("%.2fx (%.2f-%.2f)" % (statistics.median(pairs), min(pairs),
                                                      max(pairs)) if pairs else "-")
        print(line)
    print("ratio = SMC-first / today of the medians; paired = median (min-max) of the ratios of"
          " the same round")
    print("(conn/s: above 1 is faster; syscalls and CPU: below 1 is cheaper)")


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        verify(*sys.argv[2:6])
    else:
        table(*sys.argv[2:5])
