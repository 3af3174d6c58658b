#!/usr/bin/env python3
"""bench/report.py -- turns one bench/run.sh run directory into the report.

    bench/report.py RUN_DIR --json OUT.json --svg OUT.svg [--strict]

Reads RUN_DIR/meta.txt, RUN_DIR/vm/ (SMC off vs on in the SMC-R VM), RUN_DIR/host/ (stock
Envoy vs Envoy under the preload library on the plain kernel) and RUN_DIR/smcd/ (SMC off vs on,
and the raw ping-pong TCP vs SMC-D, in the VM on the built kernel with SMC-D loopback), as
bench/driver.sh left them. Prints a table and a final summary line, writes the results as JSON
and the latency distributions as SVG. Exit status: 0 if every part ran, no request failed and
the SMC-on runs' Envoy<->Envoy connections were SMC-R (VM) and SMC-D (SMC-D VM) (and, with
--strict, the plain-kernel QPS ratio met its target); 1 otherwise. Standard library only.
"""
import argparse
import json
import math
import os
import statistics
import sys

PCTS = [("p50", 50), ("p75", 75), ("p90", 90), ("p99", 99), ("p99_9", 99.9)]
HEADER = "  %-22s %9s %8s %8s %8s %8s %8s  %s" % ("", "QPS", "P50", "P75", "P90", "P99", "P99.9", "failed")
QPS_TARGET = 0.98


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def kv_lines(text, sep="="):
    out = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            out[k.strip()] = v.strip()
    return out


def prom(text):
    """Prometheus text -> {'name{labels}': value} (comments left out)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def nonzero(d):
    return {k: (int(v) if float(v).is_integer() else v) for k, v in d.items() if v}


def envoy_stats(text):
    out = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            try:
                out[k] = int(v)
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------------------------------------
# one side's runs


def cpu_seconds(text):
    """driver's <run>.cpu.txt -> {'client': s, 'server': s} CPU seconds (user+system) over the run."""
    kv = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        kv[k] = v.split()
    try:
        hz = float(kv["ticks_per_second"][0])
        b = [int(x) for x in kv["before"]]
        a = [int(x) for x in kv["after"]]
    except (KeyError, IndexError, ValueError):
        return None
    return {"client": (a[0] - b[0]) / hz, "server": (a[1] - b[1]) / hz}


def load_side(d):
    """The driver's runs: [{phase, round, pair, wrk, stats, before, after}]."""
    runs = []
    for line in read_text(os.path.join(d, "runs.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        phase, rnd, pair, base = parts
        b = os.path.join(d, base)
        runs.append({
            "phase": phase,
            "round": int(rnd),
            "pair": pair,
            "wrk": read_json(b + ".json"),
            "client_stats": envoy_stats(read_text(b + ".client-stats.txt")),
            "cpu": cpu_seconds(read_text(b + ".cpu.txt")),
            "before": {"status": read_json(b + ".before.status.json"), "rxe": read_json(b + ".before.rxe.json")},
            "after": {"status": read_json(b + ".after.status.json"), "rxe": read_json(b + ".after.rxe.json")},
        })
    pids = {}
    for line in read_text(os.path.join(d, "pids.tsv")).splitlines():
        name, _, pid = line.partition("\t")
        if pid.strip().isdigit():
            pids[name] = int(pid)
    preload = {}
    for name in pids:
        p = os.path.join(d, name + ".prom")
        if os.path.exists(p):
            preload[name] = prom(read_text(p))
    return runs, pids, preload


def wrk_summary(w):
    dur = w["duration_us"] / 1e6
    lat = w["latency_us"]
    return {
        "requests": w["requests"],
        "seconds": round(dur, 3),
        "qps": round(w["requests"] / dur, 1) if dur else 0.0,
        "latency_ms": {k: round(lat[k] / 1000, 3) for k, _ in PCTS} | {"mean": round(lat["mean"] / 1000, 3), "max": round(lat["max"] / 1000, 3)},
        "errors": w["errors"],
    }


def aggregate(runs):
    """Runs of one (phase, pair): QPS over all rounds, percentiles as the median over rounds."""
    ok = [r for r in runs if r["wrk"]]
    if not ok:
        return None
    reqs = sum(r["wrk"]["requests"] for r in ok)
    secs = sum(r["wrk"]["duration_us"] for r in ok) / 1e6
    errors = {}
    for r in ok:
        for k, v in r["wrk"]["errors"].items():
            errors[k] = errors.get(k, 0) + v
    lat = {k: round(statistics.median(r["wrk"]["latency_us"][k] for r in ok) / 1000, 3) for k, _ in PCTS}
    dist = []
    for i, (p, _) in enumerate(ok[0]["wrk"]["distribution_us"]):
        dist.append([p, round(statistics.median(r["wrk"]["distribution_us"][i][1] for r in ok) / 1000, 3)])
    cpu = [r["cpu"] for r in ok if r.get("cpu")]
    cpu_us = None
    if len(cpu) == len(ok) and reqs:
        cpu_us = round(sum(c["client"] + c["server"] for c in cpu) / reqs * 1e6, 1)
    return {
        "rounds": len(ok),
        "envoy_cpu_us_per_request": cpu_us,
        "envoy_cpu_seconds": round(sum(c["client"] + c["server"] for c in cpu), 2) if cpu else None,
        "requests": reqs,
        "seconds": round(secs, 3),
        "qps": round(reqs / secs, 1) if secs else 0.0,
        "qps_per_round": [round(r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6), 1) for r in ok],
        "latency_ms": lat,
        "errors": errors,
        "failed_requests": sum(errors.values()),
        "distribution_ms": dist,
    }


def ratio(a, b):
    return round(a / b, 4) if b else None


# ---------------------------------------------------------------------------------------------
# SMC evidence (VM)


def conns_of(status, pids):
    if not status or not status.get("available"):
        return []
    return [c for c in status.get("connections", []) if any(o.get("pid") in pids for o in c.get("processes", []))]


def fb_delta(before, after):
    """Kernel fallback counters over the run: totals and by reason name."""
    def side(st, s):
        kf = (st or {}).get("kernel_fallbacks") or {}
        return kf.get(s + "_total", 0), {r["reason"]["name"]: r["count"] for r in kf.get(s, [])}
    out = {}
    for s in ("client", "server"):
        t0, r0 = side(before, s)
        t1, r1 = side(after, s)
        out[s] = t1 - t0
        out[s + "_by_reason"] = {k: v - r0.get(k, 0) for k, v in r1.items() if v - r0.get(k, 0)}
    return out


def smcr_delta(before, after, tech="smcr"):
    def get(st):
        return ((st or {}).get("kernel_stats") or {}).get(tech) or {}
    b, a = get(before), get(after)
    return {k: a.get(k, 0) - b.get(k, 0) for k in ("client_v2_success", "server_v2_success", "tx_bytes", "rx_bytes", "tx_count", "rx_count")}


def rxe_delta(before, after):
    out = {}
    for dev, c in (after or {}).items():
        b = (before or {}).get(dev, {})
        out[dev] = {k: v - b.get(k, 0) for k, v in c.items()}
    return out


def smc_evidence(run, pids_by_role, tech="SMCR"):
    """What smc_diag, the kernel counters and rxe say about one VM run's pair. tech: the mode the
    SMC-on pair's Envoy<->Envoy connections must have: SMCR (on an rxe device) or SMCD (on the
    loopback device)."""
    st_after = run["after"]["status"]
    st_before = run["before"]["status"]
    cpid, spid = pids_by_role["client"], pids_by_role["server"]
    mine = conns_of(st_after, {cpid, spid})
    non_listen = [c for c in mine if c.get("state") != "LISTEN"]

    def count(pid, pred):
        return sum(1 for c in non_listen if any(o["pid"] == pid for o in c["processes"]) and pred(c))

    def smcr_active(c):
        if tech == "SMCD":
            return (c.get("mode") == "SMCD" and c.get("state") == "ACTIVE"
                    and str(c.get("smcd_device", "")).startswith("lo") and bool(c.get("dmb")))
        link = c.get("link") or {}
        return c.get("mode") == "SMCR" and c.get("state") == "ACTIVE" and str(link.get("ib_device", "")).startswith("rxe")

    fallbacks = {}
    for c in non_listen:
        if c.get("mode") == "TCP":
            name = ((c.get("fallback") or {}).get("reason") or {}).get("name", "unknown")
            fallbacks[name] = fallbacks.get(name, 0) + 1
    devices = sorted({(c.get("link") or {}).get("ib_device") for c in non_listen if c.get("link")}
                     | {c.get("smcd_device") for c in non_listen if c.get("smcd_device")})
    cs = run["client_stats"]
    rxe = rxe_delta(run["before"]["rxe"], run["after"]["rxe"])
    return {
        "status_available": bool(st_after and st_after.get("available")),
        "status_error": (st_after or {}).get("error"),
        "pair_smc_sockets": len(mine),
        "pair_listeners": sum(1 for c in mine if c.get("state") == "LISTEN"),
        "client_smcr_active": count(cpid, smcr_active),
        "server_smcr_active": count(spid, smcr_active),
        "client_smc_sockets": count(cpid, lambda c: True),
        "server_smc_sockets": count(spid, lambda c: True),
        "rdma_devices": devices,
        "pair_fallbacks_by_reason": fallbacks,
        "pair_fallbacks": sum(fallbacks.values()),
        "by_mode_state": _by_mode_state(non_listen),
        "kernel_fallbacks_during_run": fb_delta(st_before, st_after),
        "kernel_smcr_during_run": smcr_delta(st_before, st_after),
        "kernel_smcd_during_run": smcr_delta(st_before, st_after, "smcd"),
        "rxe_packets_during_run": rxe,
        "rxe_packets_total": sum(v.get("sent_pkts", 0) + v.get("rcvd_pkts", 0) for v in rxe.values()),
        "client_upstream_cx_active": cs.get("cluster.server_sidecar.upstream_cx_active"),
        "client_upstream_cx_total": cs.get("cluster.server_sidecar.upstream_cx_total"),
        "client_upstream_rq_5xx": cs.get("cluster.server_sidecar.upstream_rq_5xx", 0),
        "client_upstream_cx_connect_fail": cs.get("cluster.server_sidecar.upstream_cx_connect_fail", 0),
    }


def _by_mode_state(conns):
    out = {}
    for c in conns:
        k = "%s/%s" % (c.get("mode"), c.get("state"))
        out[k] = out.get(k, 0) + 1
    return out


def preload_summary(p):
    if not p:
        return None
    state = next((k.split('state="')[1].split('"')[0] for k in p if k.startswith("envoy_smc_preload_info")), "?")
    # Names as Envoy renders smc.<name> (src/stats: prometheus_name): envoy_smc_tcp_<reason>, ...
    tcp = {k[len("envoy_smc_tcp_"):]: int(v) for k, v in p.items() if k.startswith("envoy_smc_tcp_") and v}
    other = {k[len("envoy_smc_"):]: int(v) for k, v in p.items()
             if k.startswith("envoy_smc_") and not k.startswith("envoy_smc_tcp_") and "{" not in k and v}
    return {"state": state, "tcp_by_reason": tcp, "counters": other}


# ---------------------------------------------------------------------------------------------
# the plot


def svg_plot(panels, path, note):
    """panels: [(title, [(label, colour, distribution_ms, marks)])]; x: percentile on a 'nines' axis."""
    W, H = 560, 400
    ml, mr, mt, mb = 70, 20, 50, 60
    notes = note if isinstance(note, list) else [note]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'
           % (W * len(panels), H + 8 + 16 * len(notes)),
           '<rect width="100%" height="100%" fill="white"/>']

    def esc(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    xmax = 4.0  # 99.99th percentile

    def xv(p):
        return min(xmax, -math.log10(max(1e-4, 1 - p / 100.0)))

    for i, (title, series) in enumerate(panels):
        ox = i * W
        pw, ph = W - ml - mr, H - mt - mb
        ymax = 0.0
        for _, _, dist, _ in series:
            ymax = max([ymax] + [v for p, v in dist if p <= 99.99])
        if ymax <= 0:
            ymax = 1.0
        mag = 10 ** math.floor(math.log10(ymax))
        step = next(s * mag for s in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10) if ymax / (s * mag) <= 6)
        ytop = math.ceil(ymax / step) * step

        def X(p):
            return ox + ml + xv(p) / xmax * pw

        def Y(v):
            return mt + ph - v / ytop * ph

        out.append('<text x="%g" y="22" font-size="14" font-weight="bold">%s</text>' % (ox + ml, esc(title)))
        out.append('<rect x="%g" y="%g" width="%g" height="%g" fill="none" stroke="#888"/>' % (ox + ml, mt, pw, ph))
        k = 0
        while k * step <= ytop + 1e-9:
            v = k * step
            out.append('<line x1="%g" x2="%g" y1="%g" y2="%g" stroke="#eee"/>' % (ox + ml, ox + ml + pw, Y(v), Y(v)))
            out.append('<text x="%g" y="%g" text-anchor="end">%g</text>' % (ox + ml - 6, Y(v) + 4, round(v, 6)))
            k += 1
        for p, lab in ((0, "0"), (50, "50"), (75, "75"), (90, "90"), (99, "99"), (99.9, "99.9"), (99.99, "99.99")):
            out.append('<line x1="%g" x2="%g" y1="%g" y2="%g" stroke="#eee"/>' % (X(p), X(p), mt, mt + ph))
            out.append('<text x="%g" y="%g" text-anchor="middle">%s</text>' % (X(p), mt + ph + 16, lab))
        out.append('<text x="%g" y="%g" text-anchor="middle">percentile</text>' % (ox + ml + pw / 2, mt + ph + 36))
        out.append('<text transform="translate(%g,%g) rotate(-90)" text-anchor="middle">latency (ms)</text>'
                   % (ox + 18, mt + ph / 2))
        for j, (label, colour, dist, marks) in enumerate(series):
            pts = " ".join("%.1f,%.1f" % (X(p), Y(v)) for p, v in dist if p <= 99.99)
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (colour, pts))
            for p, v in marks:
                out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (X(p), Y(v), colour))
            ly = mt + 16 + 18 * j
            out.append('<line x1="%g" x2="%g" y1="%g" y2="%g" stroke="%s" stroke-width="3"/>'
                       % (ox + ml + 10, ox + ml + 34, ly - 4, ly - 4, colour))
            out.append('<text x="%g" y="%g">%s</text>' % (ox + ml + 40, ly, esc(label)))
    for n, line in enumerate(notes):
        out.append('<text x="10" y="%g" font-size="11" fill="#444">%s</text>' % (H + 16 * (n + 1), esc(line)))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------


def fmt_ms(v):
    return "%8.2f" % v if v is not None else "       -"


def fmt_x(v):
    return "%7.3fx" % v if v is not None else "       -"


VM_PARTS = {
    # key: (directory, meta rc key, title lines, mode of the SMC-on pair, seconds key, on-label)
    "vm": ("vm", "vm_rc", [
        "1. SMC-R VM: client sidecar Envoy (10.9.0.1) -> server sidecar Envoy (10.9.0.2:15006) -> echo app,",
        "   both under the preload library; qemu TCG + Soft-RoCE: EMULATED, ratios only, nothing about real RDMA speed"],
        "SMCR", "BENCH_VM_SECONDS", "SMC-R"),
    "smcd": ("smcd", "smcd_rc", [
        "3. SMC-D VM (kernel built from linux-source-7.3, dibs loopback device lo): the same Envoy pair; the",
        "   Envoy<->Envoy hop is SMC-D (shared memory in one kernel, no NIC emulated); qemu TCG: ratios only"],
        "SMCD", "BENCH_SMCD_SECONDS", "SMC-D"),
}


def vm_section(key, run_dir, meta, P, problems, panels, summary):
    """One VM part (SMC off vs on through the Envoy pair); returns its JSON block or None."""
    sub, rc_key, titles, tech, secs_key, tech_name = VM_PARTS[key]
    vm_dir = os.path.join(run_dir, sub)
    vm_rc = meta.get(rc_key, "skipped")
    if vm_rc == "skipped":
        return None
    runs, pids, preload = load_side(vm_dir)
    vm = {"rc": vm_rc, "pids": pids, "tech": tech}
    P("")
    for t in titles:
        P(t)
    if vm_rc != "0":
        problems.append("the %s part failed (exit %s; see %s/vm.stderr)" % (key, vm_rc, vm_dir))
    agg = {p: aggregate([r for r in runs if r["phase"] == "keepalive" and r["pair"] == p]) for p in ("off", "on")}
    vm["keepalive"] = agg
    if agg["off"] and agg["on"]:
        vm["ratio_on_over_off"] = {"qps": ratio(agg["on"]["qps"], agg["off"]["qps"])} | {
            k: ratio(agg["on"]["latency_ms"][k], agg["off"]["latency_ms"][k]) for k, _ in PCTS}
        P(HEADER + "   (latency in ms; %d x %s s per mode)" % (agg["on"]["rounds"], meta.get(secs_key)))
        for p, label in (("off", "SMC off (MODE_OFF)"), ("on", "SMC on (MODE_AUTO)")):
            g = agg[p]
            P("  %-22s %9.1f %s %s %s %s %s  %d" % (label, g["qps"], *(fmt_ms(g["latency_ms"][k]) for k, _ in PCTS), g["failed_requests"]))
            if g["failed_requests"]:
                problems.append("%s %s: %d failed requests %s" % (key, p, g["failed_requests"], g["errors"]))
        r = vm["ratio_on_over_off"]
        r["envoy_cpu_per_request"] = ratio(agg["on"]["envoy_cpu_us_per_request"] or 0, agg["off"]["envoy_cpu_us_per_request"] or 0)
        P("  %-22s %8.3fx %s" % ("on / off", r["qps"], " ".join(fmt_x(r[k]) for k, _ in PCTS)))
        P("  CPU of both Envoys per request (emulated): off %s us, on %s us (%sx)" % (
            agg["off"]["envoy_cpu_us_per_request"], agg["on"]["envoy_cpu_us_per_request"], r["envoy_cpu_per_request"]))
        panels.append(("%s VM (emulated): SMC off vs on" % tech_name, [
            ("SMC off: %.0f QPS" % agg["off"]["qps"], "#1f77b4", agg["off"]["distribution_ms"],
             [(pc, agg["off"]["latency_ms"][k]) for k, pc in PCTS]),
            ("SMC on (%s): %.0f QPS" % (tech_name, agg["on"]["qps"]), "#d62728", agg["on"]["distribution_ms"],
             [(pc, agg["on"]["latency_ms"][k]) for k, pc in PCTS]),
        ]))
    else:
        problems.append("%s: no complete SMC off/on runs" % key)
    # evidence per run
    ev_runs = []
    for r in runs:
        if r["phase"] != "keepalive":
            continue
        roles = {"client": pids.get(r["pair"] + "-client"), "server": pids.get(r["pair"] + "-server")}
        ev = smc_evidence(r, roles, tech)
        ev_runs.append({"round": r["round"], "pair": r["pair"], "evidence": ev,
                        "wrk": wrk_summary(r["wrk"]) if r["wrk"] else None})
        fk = ev["kernel_fallbacks_during_run"]
        if r["pair"] == "on":
            kt = ev["kernel_smcd_during_run"] if tech == "SMCD" else ev["kernel_smcr_during_run"]
            P("  SMC on, round %d: Envoy<->Envoy connections %s ACTIVE: client Envoy %d, server Envoy %d (client's "
              "upstream connections: %s) on %s; fallbacks during the run: kernel client %d, server %d, pair's sockets %d %s; "
              "%s handshakes +%d; %s bytes tx +%d%s"
              % (r["round"], tech, ev["client_smcr_active"], ev["server_smcr_active"], ev["client_upstream_cx_active"],
                 ",".join(d for d in ev["rdma_devices"] if d) or "-", fk["client"], fk["server"], ev["pair_fallbacks"],
                 ev["pair_fallbacks_by_reason"] or "", tech_name, kt["client_v2_success"], tech_name, kt["tx_bytes"],
                 "; rxe packets +%d" % ev["rxe_packets_total"] if tech == "SMCR" else ""))
            carried = ev["rxe_packets_total"] > 0 if tech == "SMCR" else kt["tx_bytes"] > 0
            proven = (ev["status_available"] and ev["client_smcr_active"] >= 1 and ev["server_smcr_active"] >= 1
                      and ev["pair_fallbacks"] == 0 and fk["client"] == 0 and fk["server"] == 0 and carried)
            ev["smc_proven"] = proven
            if not proven:
                problems.append("%s SMC on, round %d: the Envoy<->Envoy connections are not proven %s: %s"
                                % (key, r["round"], tech_name, json.dumps({k: ev[k] for k in ("status_error", "client_smcr_active", "server_smcr_active", "pair_fallbacks_by_reason", "kernel_fallbacks_during_run", "rxe_packets_total", "kernel_smcd_during_run")})))
        else:
            P("  SMC off, round %d: SMC sockets held by the pair: %d; fallbacks during the run: kernel client %d, "
              "server %d; rxe packets +%d (client's upstream connections: %s, plain TCP)"
              % (r["round"], ev["pair_smc_sockets"], fk["client"], fk["server"], ev["rxe_packets_total"],
                 ev["client_upstream_cx_active"]))
            if ev["pair_smc_sockets"]:
                problems.append("%s SMC off, round %d: the pair holds %d SMC sockets" % (key, r["round"], ev["pair_smc_sockets"]))
        for k in ("client_upstream_rq_5xx", "client_upstream_cx_connect_fail"):
            if ev[k]:
                problems.append("%s %s round %d: %s = %s" % (key, r["pair"], r["round"], k, ev[k]))
    vm["runs"] = ev_runs
    vm["preload_stats"] = {k: preload_summary(v) for k, v in preload.items()}
    for name in ("off-client", "off-server", "on-client", "on-server"):
        s = vm["preload_stats"].get(name)
        if s:
            P("  preload stats %-10s state %s; TCP by reason %s; %s" % (
                name, s["state"], s["tcp_by_reason"] or "{}",
                ", ".join("%s %s" % (k, v) for k, v in sorted(s["counters"].items())
                          if k.startswith(("smc_", "socket_replaced", "errors", "preload_epoll", "fallback_switch")))))
    if tech == "SMCD":
        vm["pingpong"] = pingpong_section(vm_dir, P, problems)
    if agg.get("off") and agg.get("on"):
        proven_all = all(e["evidence"].get("smc_proven") for e in ev_runs if e["pair"] == "on")
        line = "%s qps off %.0f on %.0f (%.2fx) p99 %.1f->%.1f ms (%.2fx) fallbacks %d %s %s" % (
            "VM" if key == "vm" else "SMC-D VM",
            agg["off"]["qps"], agg["on"]["qps"], vm["ratio_on_over_off"]["qps"],
            agg["off"]["latency_ms"]["p99"], agg["on"]["latency_ms"]["p99"], vm["ratio_on_over_off"]["p99"] or 0,
            sum(e["evidence"]["kernel_fallbacks_during_run"]["client"] + e["evidence"]["kernel_fallbacks_during_run"]["server"]
                + e["evidence"]["pair_fallbacks"] for e in ev_runs),
            tech_name, "proven" if proven_all else "NOT proven")
        pp = vm.get("pingpong") or {}
        if pp.get("ratio_smc_over_tcp"):
            line += "; ping-pong p50 %.0f->%.0f us (%.2fx)" % (
                pp["tcp"]["p50_us"], pp["smc"]["p50_us"], pp["ratio_smc_over_tcp"]["p50_us"])
        summary.append(line)
    return vm


PP_KEYS = [("p50_us", "P50"), ("p90_us", "P90"), ("p99_us", "P99"), ("p99_9_us", "P99.9"), ("mean_us", "mean")]


def pingpong_section(d, P, problems):
    """The raw ping-pong runs (TCP vs SMC-D, interleaved rounds): medians over rounds, ratios, and
    the proof that the smc runs were SMC-D (the kernel's SMC-D byte counter grew by at least the
    bytes sent) and the tcp runs were not."""
    rows = []
    for line in read_text(os.path.join(d, "pingpong.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        rnd, kind, base = parts
        b = os.path.join(d, base)
        res = read_json(b + ".json")
        before, after = read_json(b + ".before.status.json"), read_json(b + ".after.status.json")
        rows.append({"round": int(rnd), "kind": kind, "result": res,
                     "smcd_delta": smcr_delta(before, after, "smcd")})
    if not rows:
        return None
    out = {"runs": rows}
    P("  raw socket ping-pong (bench/pingpong.c, no Envoy: the upper bound), 10.9.0.1 -> 10.9.0.2, one connection:")
    P("  %-22s %9s %8s %8s %8s %8s %8s %9s" % ("", "trips/s", "P50", "P90", "P99", "P99.9", "mean", "CPU/trip"))
    for kind, label in (("tcp", "TCP"), ("smc", "SMC-D (IPPROTO_SMC)")):
        rs = [r for r in rows if r["kind"] == kind and r["result"]]
        if not rs:
            problems.append("ping-pong: no %s runs" % kind)
            continue
        med = {k: round(statistics.median(r["result"][k] for r in rs), 2)
               for k, _ in PP_KEYS + [("round_trips_per_s", ""), ("cpu_us_per_round_trip", ""), ("connect_us", "")]}
        med["rounds"] = len(rs)
        med["trips_per_round"] = rs[0]["result"]["rounds"]
        med["size"] = rs[0]["result"]["size"]
        out[kind] = med
        P("  %-22s %9.0f %s %8.1fus" % (label, med["round_trips_per_s"],
                                       " ".join("%8.1f" % med[k] for k, _ in PP_KEYS), med["cpu_us_per_round_trip"]))
        for r in rs:
            sent = r["result"]["rounds"] * r["result"]["size"] * 2
            grew = r["smcd_delta"]["tx_bytes"]
            if kind == "smc" and grew < sent:
                problems.append("ping-pong round %d: SMC-D carried %d bytes, the run sent %d: not SMC-D" % (r["round"], grew, sent))
            if kind == "tcp" and grew > 0:
                problems.append("ping-pong round %d: the TCP run moved %d SMC-D bytes" % (r["round"], grew))
    if out.get("tcp") and out.get("smc"):
        out["ratio_smc_over_tcp"] = {k: ratio(out["smc"][k], out["tcp"][k])
                                     for k, _ in PP_KEYS + [("round_trips_per_s", ""), ("cpu_us_per_round_trip", "")]}
        rr = out["ratio_smc_over_tcp"]
        P("  %-22s %8.3fx %s %8.3fx   (latency in us, median of %d rounds of %d round trips of %d bytes;"
          % ("SMC-D / TCP", rr["round_trips_per_s"], " ".join(fmt_x(rr[k]) for k, _ in PP_KEYS),
             rr["cpu_us_per_round_trip"], out["smc"]["rounds"], out["smc"]["trips_per_round"], out["smc"]["size"]))
        P("  %-22s  SMC-D bytes counted by the kernel >= bytes sent in every SMC-D run, none in the TCP runs)" % "")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--json", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--strict", action="store_true")
    a = ap.parse_args()
    run_dir = a.run_dir
    meta = kv_lines(read_text(os.path.join(run_dir, "meta.txt")))
    res = {"meta": meta, "raw_dir": run_dir}
    problems, misses = [], []
    lines = []
    P = lines.append
    P("envoy-smc benchmark: profile %s, %s connections, %s-byte POST bodies, wrk %s, Envoy %s (--concurrency %s), "
      "preload library: %s build" % (meta.get("profile"), meta.get("BENCH_CONNS"), meta.get("BENCH_BODY_SIZE"), meta.get("wrk"),
                                     meta.get("envoy"), meta.get("BENCH_ENVOY_CONCURRENCY"), meta.get("preload_build", "?")))
    panels = []
    summary = []

    # -- 1. the SMC-R VM
    vm = vm_section("vm", run_dir, meta, P, problems, panels, summary)
    if vm is not None:
        res["vm"] = vm

    # -- 2. the plain kernel
    host_dir = os.path.join(run_dir, "host")
    host_rc = meta.get("host_rc", "skipped")
    if host_rc != "skipped":
        runs, pids, preload = load_side(host_dir)
        host = {"rc": host_rc}
        P("")
        P("2. Plain kernel (%s, %s CPUs, no SMC): stock Envoy pair vs the same pair under the preload library, TCP only;"
          % (meta.get("host_kernel"), meta.get("host_cpus")))
        P("   rounds interleaved (plain, preload, then preload, plain, ...); load average before %s, after %s"
          % (meta.get("load_before"), meta.get("load_after")))
        if meta.get("BENCH_HOST_AA") == "1":
            P("   CALIBRATION (BENCH_HOST_AA=1): both pairs are stock Envoy; 'preload' below is a second stock pair")
        if host_rc != "0":
            problems.append("the plain-kernel part failed (exit %s; see %s/driver.stderr)" % (host_rc, host_dir))
        for phase, what in (("keepalive", "keep-alive"), ("close", "connection: close")):
            agg = {p: aggregate([r for r in runs if r["phase"] == phase and r["pair"] == p]) for p in ("plain", "preload")}
            if not (agg["plain"] and agg["preload"]):
                problems.append("plain kernel: no complete %s runs" % what)
                continue
            per_round = []
            for rnd in sorted({r["round"] for r in runs if r["phase"] == phase}):
                q = {r["pair"]: r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6)
                     for r in runs if r["phase"] == phase and r["round"] == rnd and r["wrk"]}
                if q.get("plain") and q.get("preload"):
                    per_round.append(round(q["preload"] / q["plain"], 4))
            rq = ratio(agg["preload"]["qps"], agg["plain"]["qps"])
            block = {"plain": agg["plain"], "preload": agg["preload"], "qps_ratio": rq,
                     "qps_ratio_per_round": per_round,
                     "qps_ratio_median_of_rounds": round(statistics.median(per_round), 4) if per_round else None,
                     "latency_ratio": {k: ratio(agg["preload"]["latency_ms"][k], agg["plain"]["latency_ms"][k]) for k, _ in PCTS}}
            unit = "QPS" if phase == "keepalive" else "conn/s"
            P("  %s (%d x %s s per variant):" % (what, agg["plain"]["rounds"],
                                                 meta.get("BENCH_HOST_SECONDS" if phase == "keepalive" else "BENCH_CLOSE_SECONDS")))
            P(HEADER.replace("      QPS", "%9s" % unit))
            for p, label in (("plain", "stock Envoy"), ("preload", "Envoy + preload lib")):
                g = agg[p]
                P("  %-22s %9.1f %s %s %s %s %s  %d" % (label, g["qps"], *(fmt_ms(g["latency_ms"][k]) for k, _ in PCTS), g["failed_requests"]))
                if g["failed_requests"]:
                    problems.append("plain kernel %s %s: %d failed requests %s" % (what, p, g["failed_requests"], g["errors"]))
            P("  %-22s %8.3fx %s   per round: %s" % ("preload / stock", rq, " ".join(fmt_x(block["latency_ratio"][k]) for k, _ in PCTS),
                                                    " ".join("%.3f" % x for x in per_round)))
            cpu_r = ratio(agg["preload"]["envoy_cpu_us_per_request"] or 0, agg["plain"]["envoy_cpu_us_per_request"] or 0)
            block["envoy_cpu_per_request_ratio"] = cpu_r
            P("  CPU of both Envoys per %s: stock %s us, preload %s us (%sx; less sensitive to other load than %s)" % (
                "request" if phase == "keepalive" else "connection", agg["plain"]["envoy_cpu_us_per_request"],
                agg["preload"]["envoy_cpu_us_per_request"], cpu_r, unit))
            if phase == "keepalive":
                # judged on the median of the per-round (paired, interleaved) ratios: one round hit
                # by a burst of other load moves the total, not the median
                judged = block["qps_ratio_median_of_rounds"] if len(per_round) >= 3 else rq
                block["target"] = QPS_TARGET
                block["target_judged_on"] = "median of per-round ratios" if len(per_round) >= 3 else "total"
                block["meets_target"] = judged is not None and judged >= QPS_TARGET
                P("  QPS ratio: median of rounds %.4f, total %.4f: target >= %.2f (on the %s) %s" % (
                    block["qps_ratio_median_of_rounds"] or 0, rq, QPS_TARGET, block["target_judged_on"],
                    "met" if block["meets_target"] else "NOT met"))
                if not block["meets_target"]:
                    misses.append("plain-kernel QPS ratio %.4f < %.2f" % (judged, QPS_TARGET))
                panels.append(("Plain kernel: stock Envoy vs preload (TCP)", [
                    ("stock Envoy: %.0f QPS" % agg["plain"]["qps"], "#1f77b4", agg["plain"]["distribution_ms"],
                     [(pc, agg["plain"]["latency_ms"][k]) for k, pc in PCTS]),
                    ("Envoy + preload: %.0f QPS" % agg["preload"]["qps"], "#2ca02c", agg["preload"]["distribution_ms"],
                     [(pc, agg["preload"]["latency_ms"][k]) for k, pc in PCTS]),
                ]))
                summary.append("host qps ratio %.4f (median of %d rounds; total %.4f; target %.2f %s), cpu/request ratio %s" % (
                    judged, len(per_round), rq, QPS_TARGET, "met" if block["meets_target"] else "NOT met", cpu_r))
            else:
                cost = None
                if agg["plain"]["qps"] and agg["preload"]["qps"]:
                    cost = round((1 / agg["preload"]["qps"] - 1 / agg["plain"]["qps"]) * 1e6, 1)
                block["extra_wall_us_per_connection"] = cost
                P("  a connection envoy-smc keeps on TCP: %.1f vs %.1f conn/s (%.3fx), %+.1f us per connection at saturation"
                  % (agg["preload"]["qps"], agg["plain"]["qps"], rq, cost or 0))
                summary.append("conn/s ratio %.3f, cpu/connection ratio %s" % (rq, cpu_r))
            host[phase] = block
        host["preload_stats"] = {k: preload_summary(v) for k, v in preload.items()}
        for name in ("preload-client", "preload-server"):
            s = host["preload_stats"].get(name)
            if s:
                P("  preload stats %-14s state %s; TCP by reason %s; SMC sockets %d" % (
                    name, s["state"], s["tcp_by_reason"] or "{}",
                    sum(v for k, v in s["counters"].items() if k.startswith("smc_"))))
                if s["state"] != "active":
                    problems.append("plain kernel: the preload library in %s is %s, not active" % (name, s["state"]))
        res["host"] = host

    # -- 3. SMC-D loopback on the built kernel
    smcd = vm_section("smcd", run_dir, meta, P, problems, panels, summary)
    if smcd is not None:
        res["smcd"] = smcd

    note = ["wrk, %s connections, %s-byte POST bodies, max QPS; median of rounds; profile %s, %s."
            % (meta.get("BENCH_CONNS"), meta.get("BENCH_BODY_SIZE"), meta.get("profile"), meta.get("stamp")),
            "VM numbers: qemu TCG + Soft-RoCE, all emulated in software: they say nothing about real RDMA speed."]
    if panels:
        svg_plot(panels, a.svg, note)
        res["plot_svg"] = a.svg
    res["problems"] = problems
    res["targets_missed"] = misses
    ok = not problems and (not a.strict or not misses)
    res["ok"] = ok
    res["summary"] = "; ".join(summary)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    P("")
    for p in problems:
        P("PROBLEM: " + p)
    for m in misses:
        P("target missed: " + m)
    rel = os.path.relpath
    P("results: %s, plot: %s, raw: %s; %s s" % (rel(a.json), rel(a.svg) if panels else "-", rel(run_dir), meta.get("elapsed_s")))
    P("bench: %s: %s" % ("OK" if ok else "FAILED", res["summary"] or "nothing measured"))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
