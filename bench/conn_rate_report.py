#!/usr/bin/env python3
"""bench/conn-rate.sh's report: reads the raw files bench/driver.sh left in RUN (runs.tsv and the
files it names) and prints, per variant, the connection rate and CPU per connection (medians of
the rounds, with their spread), the ratios after/before and each/tcp, and the checks: no failed
request, one new Envoy<->Envoy connection per request, SMC-R for the SMC variants (the kernel's
SMC-R handshake counters) and none for tcp. Exit status 1 when a check fails.

  bench/conn_rate_report.py RUN
"""
import json
import os
import re
import statistics
import sys

VARIANTS = ("tcp", "before", "after")
CLIENT_CX = "cluster.server_sidecar_close.upstream_cx_total"
SERVER_CX = "http.inbound.downstream_cx_total"


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def envoy_stats(text):
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep and v.strip().isdigit():
            out[k] = int(v)
    return out


def ticks(text):
    kv = {k: v.split() for k, _, v in (l.partition(" ") for l in text.splitlines())}
    hz = float(kv["ticks_per_second"][0])
    b, a = [int(x) for x in kv["before"]], [int(x) for x in kv["after"]]
    busy = [int(x) for x in kv["vm_busy"]]
    return hz, a[0] - b[0], a[1] - b[1], busy[1] - busy[0]


def kernel(status):
    """(SMC-R client handshakes, SMC-R server handshakes, client fallbacks, server fallbacks)."""
    st = json.loads(status) if status.strip() else {}
    smcr = (st.get("kernel_stats") or {}).get("smcr") or {}
    fb = st.get("kernel_fallbacks") or {}
    return (smcr.get("client_v1_success", 0) + smcr.get("client_v2_success", 0),
            smcr.get("server_v1_success", 0) + smcr.get("server_v2_success", 0),
            fb.get("client_total", 0), fb.get("server_total", 0))


def load(run):
    rows, last = [], {}
    for line in read(os.path.join(run, "runs.tsv")).splitlines():
        phase, rnd, pair, base = line.split("\t")
        b = os.path.join(run, base)
        wrk = json.loads(read(b + ".json"))
        cs, ss = envoy_stats(read(b + ".client-stats.txt")), envoy_stats(read(b + ".server-stats.txt"))
        prev = last.get(pair, (0, 0))
        last[pair] = (cs.get(CLIENT_CX, 0), ss.get(SERVER_CX, 0))
        if phase != "close":
            continue  # the unrecorded first round
        k0, k1 = kernel(read(b + ".before.status.json")), kernel(read(b + ".after.status.json"))
        hz, cpu_c, cpu_s, busy = ticks(read(b + ".cpu.txt"))
        secs = wrk["duration_us"] / 1e6
        reqs = wrk["requests"]
        cx = max(last[pair][0] - prev[0], 1)
        rows.append({
            "round": int(rnd), "variant": pair, "requests": reqs, "rate": reqs / secs,
            "errors": sum(wrk["errors"].values()),
            "client_5xx": cs.get("cluster.server_sidecar_close.upstream_rq_5xx", 0),
            "client_cx": last[pair][0] - prev[0], "server_cx": last[pair][1] - prev[1],
            "smcr_client": k1[0] - k0[0], "smcr_server": k1[1] - k0[1],
            "fallback_client": k1[2] - k0[2], "fallback_server": k1[3] - k0[3],
            # CPU microseconds per Envoy<->Envoy connection (the client Envoy's count: it also
            # holds the requests in flight when wrk stopped, which cost CPU inside the run)
            "cpu_client_us": cpu_c / hz * 1e6 / cx,
            "cpu_server_us": cpu_s / hz * 1e6 / cx,
            "cpu_vm_us": busy / hz * 1e6 / cx,
        })
    return rows


def main(run):
    rows = load(run)
    by = {v: [r for r in rows if r["variant"] == v] for v in VARIANTS}
    if not all(by.values()):
        print(f"conn-rate: no rounds for {[v for v in VARIANTS if not by[v]]} in {run}")
        return 1
    med = {v: {k: statistics.median(r[k] for r in by[v]) for k in
               ("rate", "cpu_client_us", "cpu_server_us", "cpu_vm_us")} for v in VARIANTS}
    m = re.search(r"\bconns=([0-9]+)", read(os.path.join(run, "meta.txt")))
    conns = int(m.group(1)) if m else 8  # wrk's connections: the slack of the connection counts

    print(read(os.path.join(run, "meta.txt")).strip())
    print("\nper round (requests/s; Envoy<->Envoy connections: client upstream_cx_total, server "
          "downstream_cx_total, kernel SMC-R handshakes client/server; kernel fallbacks client/server)")
    print(f"{'round':>5} {'variant':<7} {'req/s':>7} {'requests':>8} {'errors':>6} {'client cx':>9} "
          f"{'server cx':>9} {'SMC-R c/s':>11} {'fallback c/s':>12} {'CPU us/conn client':>18}")
    for r in rows:
        print(f"{r['round']:>5} {r['variant']:<7} {r['rate']:7.1f} {r['requests']:>8} {r['errors']:>6} "
              f"{r['client_cx']:>9} {r['server_cx']:>9} {r['smcr_client']:>5}/{r['smcr_server']:<5} "
              f"{r['fallback_client']:>5}/{r['fallback_server']:<6} {r['cpu_client_us']:18.0f}")

    print("\nmedian of the rounds (spread: min-max over the rounds)")
    print(f"{'variant':<7} {'req/s':>7} {'spread':>13} {'client Envoy CPU us/conn':>25} "
          f"{'server Envoy':>12} {'whole VM':>9} {'SMC-R share':>11}")
    for v in VARIANTS:
        rates = [r["rate"] for r in by[v]]
        cx = sum(r["client_cx"] for r in by[v])
        share = sum(r["smcr_client"] for r in by[v]) / max(cx, 1)
        print(f"{v:<7} {med[v]['rate']:7.1f} {min(rates):6.1f}-{max(rates):<6.1f} "
              f"{med[v]['cpu_client_us']:25.0f} {med[v]['cpu_server_us']:12.0f} "
              f"{med[v]['cpu_vm_us']:9.0f} {share:11.2f}")

    def ratio(a, b, k):
        return med[a][k] / med[b][k] if med[b][k] else float("nan")

    def paired(a, b, k):
        """a/b within each round: the two runs were next to each other, under the same load."""
        rb = {r["round"]: r[k] for r in by[b]}
        return [r[k] / rb[r["round"]] for r in by[a] if rb.get(r["round"])]

    print("\nratios: of the medians, and the median of the per-round ratios (min-max) -- the runs of")
    print("one round are next to each other, so the per-round ratio cancels most of the load's drift")
    print(f"  {'':<16} {'req/s':>7} {'per round':>21} {'client CPU/conn':>16} {'per round':>9} "
          f"{'VM CPU/conn':>12} {'per round':>9}")
    for a, b in (("after", "before"), ("before", "tcp"), ("after", "tcp")):
        cols = []
        for k in ("rate", "cpu_client_us", "cpu_vm_us"):
            pr = paired(a, b, k)
            cols.append((ratio(a, b, k), statistics.median(pr), min(pr), max(pr)))
        (r0, p0, lo, hi), (r1, p1, _, _), (r2, p2, _, _) = cols
        print(f"  {a + ' / ' + b:<16} {r0:7.3f} {p0:7.3f} ({lo:.3f}-{hi:.3f}) {r1:16.3f} {p1:9.3f} "
              f"{r2:12.3f} {p2:9.3f}")
    pr = paired("after", "before", "rate")
    print(f"  after / before req/s, each round: {', '.join(f'{x:.3f}' for x in pr)}; after ahead in "
          f"{sum(x > 1 for x in pr)} of {len(pr)}")

    print("\nthe preload libraries' counters at exit (client Envoys, non-zero, connect-related):")
    for v in ("before", "after"):
        for line in read(os.path.join(run, f"{v}-client.prom")).splitlines():
            if not line.startswith("#") and "connect" in line and not line.endswith(" 0"):
                print(f"  {v}: {line}")

    bad = []
    for r in rows:
        tag = f"round {r['round']} {r['variant']}"
        if r["errors"] or r["client_5xx"]:
            bad.append(f"{tag}: {r['errors']} wrk errors, {r['client_5xx']} 5xx")
        # every request a new connection on the Envoy<->Envoy hop (a few more: the requests in
        # flight when wrk stopped were not counted by wrk)
        for side in ("client_cx", "server_cx"):
            if not r["requests"] <= r[side] <= r["requests"] + 2 * conns:
                bad.append(f"{tag}: {side} {r[side]} for {r['requests']} requests")
        smc = r["variant"] != "tcp"
        # the kernel counters are read around the run, not exactly at wrk's ends: allow the same slack
        if smc and not (r["client_cx"] - 2 * conns <= r["smcr_client"] and r["smcr_server"] >= r["client_cx"] - 2 * conns):
            bad.append(f"{tag}: {r['smcr_client']}/{r['smcr_server']} SMC-R handshakes for {r['client_cx']} connections")
        if not smc and (r["smcr_client"] or r["smcr_server"]):
            bad.append(f"{tag}: SMC-R handshakes on the tcp variant")
    print()
    if bad:
        print("conn-rate: FAILED: " + "; ".join(bad))
        return 1
    print(f"conn-rate: OK: req/s tcp {med['tcp']['rate']:.1f}, before {med['before']['rate']:.1f}, "
          f"after {med['after']['rate']:.1f}; after/before x{ratio('after', 'before', 'rate'):.3f} "
          f"(per round x{statistics.median(pr):.3f}), after/tcp x{ratio('after', 'tcp', 'rate'):.3f}; every request a new Envoy<->Envoy "
          f"connection, the SMC variants' all SMC-R")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    sys.exit(main(sys.argv[1]))
