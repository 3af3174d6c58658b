#!/usr/bin/env python3
"""The Envoy bootstraps of the tests, the benchmarks and the demo, written in one place.

  scripts/envoy-bootstrap.py BED [key=value ...]   one bootstrap (YAML) on stdout
  scripts/envoy-bootstrap.py --list                the beds and their parameters
  scripts/envoy-bootstrap.py --all DIR             every bed, with its defaults and with the
                                                   variants below, as DIR/BED[-N].yaml
  scripts/envoy-bootstrap.py --demo [--check]      writes envoy-config/envoy/{client,server}.yaml
                                                   (--check: fails when they differ)

A parameter's default is in its bed's signature; `true`/`false` and numbers are converted.
Every bed is a valid Envoy 1.40 bootstrap: bazel/test/stock_envoy_test.sh (the stock-envoy step
of scripts/test.sh) runs each of `--all` through `envoy --mode validate`. The SMC socket options are the ones `envoy-smc render` writes
(cli/src/render/): cli/tests/envoy_config.rs checks the demo's clusters decide as the render's do.
"""
import inspect
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# building blocks

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The mesh switch and the per-cluster TCP option, as `envoy-smc render` writes them.
SMC_ON = {"description": "envoy-smc: SMC on (mesh switch)", "level": 1, "name": 18,
          "int_value": 1, "state": "STATE_PREBIND"}
KEEP_TCP = {"description": "envoy-smc: keep on TCP", "level": 6, "name": 30, "int_value": 0,
            "state": "STATE_PREBIND"}

# Istio's default retry policy for HTTP routes.
ISTIO_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "host_selection_retry_max_attempts": 5,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }],
}


def address(ip, port):
    return {"socket_address": {"address": ip, "port_value": port}}


def route(prefix, cluster, timeout="30s", retry=None):
    r = {"cluster": cluster}
    if timeout is not None:
        r["timeout"] = timeout
    if retry:
        r["retry_policy"] = retry
    return {"match": {"prefix": prefix}, "route": r}


def direct(prefix, body):
    return {"match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": body}}}


def hcm(stat_prefix, routes, vhost="all", access_log=None, codec_auto=False, attempt_count=False):
    """An HTTP connection manager with one virtual host for every domain."""
    vh = {"name": vhost, "domains": ["*"]}
    if attempt_count:
        vh["include_attempt_count_in_response"] = True
    vh["routes"] = routes
    c = {"@type": HCM, "stat_prefix": stat_prefix}
    if codec_auto:
        c["codec_type"] = "AUTO"
    if access_log:
        c["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": access_log,
                "log_format": {"text_format_source": {"inline_string":
                    "[%START_TIME%] %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                    "attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% ms=%DURATION% "
                    "%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"}},
            },
        }]
    c["route_config"] = {"virtual_hosts": [vh]}
    c["http_filters"] = [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": c}


def tcp_proxy(cluster):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp", "cluster": cluster}}


def listener(name, ip, port, filters, reuse_port=None, original_dst_port=None,
             socket_options=None, inbound=False):
    """A listener; `original_dst_port`: Istio's inbound shape (the original_dst listener filter
    and one filter chain for that destination port)."""
    l = {"name": name, "address": address(ip, port)}
    if inbound:
        l["traffic_direction"] = "INBOUND"
    if reuse_port is not None:
        l["enable_reuse_port"] = reuse_port
    if socket_options:
        l["socket_options"] = socket_options
    chain = {"filters": filters}
    if original_dst_port is not None:
        l["listener_filters"] = [{"name": "envoy.filters.listener.original_dst", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}]
        chain = {"name": f"inbound_{original_dst_port}",
                 "filter_chain_match": {"destination_port": original_dst_port}, "filters": filters}
    l["filter_chains"] = [chain]
    return l


def cluster(name, ip, port, connect_timeout="5s", http=None, h2=False, idle_timeout=None,
            per_conn=0, socket_options=None):
    """A STATIC cluster of one endpoint. `http`: set the HTTP protocol options (HTTP/1.1, or
    HTTP/2 with `h2`), with `idle_timeout` and `per_conn` (> 0: requests per connection)."""
    c = {"name": name, "type": "STATIC", "connect_timeout": connect_timeout}
    if http:
        common = {}
        if idle_timeout:
            common["idle_timeout"] = idle_timeout
        if per_conn:
            common["max_requests_per_connection"] = per_conn
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "common_http_protocol_options": common,
            "explicit_http_config": {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {}},
        }}
    if socket_options:
        c["upstream_bind_config"] = {"socket_options": socket_options}
    c["load_assignment"] = {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": address(ip, port)}}]}]}
    return c


def bootstrap(admin_port, listeners, clusters):
    sr = {"listeners": listeners}
    if clusters:
        sr["clusters"] = clusters
    return {"admin": {"address": address("127.0.0.1", admin_port)}, "static_resources": sr}


# ---------------------------------------------------------------------------------------------
# the beds: each function's keyword defaults are its parameters

def demo_client():
    """The demo's client sidecar (envoy-config/envoy/client.yaml): the three cases of the mesh
    switch, each a cluster to 10.9.0.2:8080."""
    dest = ("10.9.0.2", 8080)
    return bootstrap(15000, [listener("app_outbound", "127.0.0.1", 10000, [hcm(
        "app_outbound", [route("/tcp", "server-tcp", None), route("/off", "server-off", None),
                         route("/", "server", None)], vhost="server")])], [
        cluster("server", *dest, socket_options=[SMC_ON]),
        cluster("server-tcp", *dest, socket_options=[SMC_ON, KEEP_TCP]),
        cluster("server-off", *dest),
    ])


def demo_server():
    """The demo's server sidecar (envoy-config/envoy/server.yaml), Istio-shaped."""
    return bootstrap(15100, [listener(
        "virtualInbound", "10.9.0.2", 15006, [hcm("inbound_8080", [route("/", "app", None)], vhost="app")],
        original_dst_port=8080, inbound=True)], [cluster("app", "127.0.0.1", 8080)])


def sidecar_client(admin=15000, listen=15001, server_ip="127.0.0.1", inbound=15006, h2=False,
                   per_conn=0, idle_timeout="2s", close_route=False):
    """The client sidecar of preload/tests/preload_envoy.rs and bench/run.sh: an app-facing
    listener on 127.0.0.1:`listen`, a cluster to the server sidecar; `close_route`: /close goes
    to a copy of the cluster with one request per connection."""
    routes = [route("/", "server_sidecar")]
    clusters = [cluster("server_sidecar", server_ip, inbound, "10s", http=True, h2=h2,
                        idle_timeout=idle_timeout, per_conn=per_conn)]
    if close_route:
        routes.insert(0, route("/close", "server_sidecar_close"))
        clusters.append(cluster("server_sidecar_close", server_ip, inbound, "10s", http=True,
                                h2=h2, idle_timeout=idle_timeout, per_conn=1))
    return bootstrap(admin, [listener("outbound", "127.0.0.1", listen,
                                      [hcm("outbound", routes, codec_auto=True)])], clusters)


def sidecar_server(admin=15010, server_ip="127.0.0.1", inbound=15006, app=18080, reuse_port=None,
                   istio_app_port=0, idle_timeout="2s"):
    """The server sidecar: its inbound listener (`istio_app_port` > 0: Istio's shape, traffic
    for that port redirected here) and a cluster to the app on 127.0.0.1:`app`."""
    prefix = f"inbound_{istio_app_port}" if istio_app_port else "inbound"
    return bootstrap(admin, [listener(
        "virtualInbound" if istio_app_port else "inbound", server_ip, inbound,
        [hcm(prefix, [route("/", "app")], codec_auto=True)], reuse_port=reuse_port,
        original_dst_port=istio_app_port or None)],
        [cluster("app", "127.0.0.1", app, "10s", http=True, idle_timeout=idle_timeout)])


def tcp_proxy_pair(admin=15000, listen_ip="127.0.0.1", listen=15001, upstream_ip="127.0.0.1",
                   upstream=15006):
    """Raw TCP: one tcp_proxy listener to one upstream."""
    return bootstrap(admin, [listener("tcp", listen_ip, listen, [tcp_proxy("upstream")])],
                     [cluster("upstream", upstream_ip, upstream, "10s")])


def adaptive_client(access_log="/tmp/client-access.log"):
    """tests/vm/adaptive-e2e.sh's client sidecar: one cluster per upstream of 10.9.0.2, every
    route with Istio's default retry policy; -tcp clusters kept on TCP."""
    ups = [("/healthy", "healthy", 8080, "10s", False), ("/bh", "blackholed", 9001, "10s", False),
           ("/lone", "lone", 9004, "10s", False), ("/nl-smc", "nolisten", 9002, "2s", False),
           ("/nl-tcp", "nolisten-tcp", 9002, "2s", True), ("/da-smc", "dropall", 9003, "2s", False),
           ("/da-tcp", "dropall-tcp", 9003, "2s", True)]
    routes = [route(p, n, "0s", ISTIO_RETRY) for p, n, *_ in ups]
    return bootstrap(15000, [listener("app_outbound", "127.0.0.1", 10000, [hcm(
        "app_outbound", routes, vhost="upstreams", access_log=access_log, attempt_count=True)])],
        [cluster(n, "10.9.0.2", port, t, socket_options=[SMC_ON, KEEP_TCP] if tcp else [SMC_ON])
         for _, n, port, t, tcp in ups])


def agent_client(admin=15000, listen=10000):
    """The node agent's client sidecar (tests/vm/agent-lib.sh): the clusters of the demo client,
    one request per upstream connection (every request shows what a new connection gets)."""
    dest = ("10.9.0.2", 8080)
    return bootstrap(admin, [listener("app_outbound", "127.0.0.1", listen, [hcm(
        "app_outbound", [route("/tcp", "server-tcp", "0s"), route("/", "server", "0s")],
        vhost="server")])], [
        cluster("server", *dest, http=True, per_conn=1, socket_options=[SMC_ON]),
        cluster("server-tcp", *dest, http=True, per_conn=1, socket_options=[SMC_ON, KEEP_TCP]),
    ])


def smcd_pod(side="a", switch=True):
    """tests/vm/smcd-e2e.sh's pods: pod a's outbound sidecar to pod b's inbound one (10.9.1.2),
    `switch`: the mesh switch on pod a's cluster and pod b's listener."""
    opts = [SMC_ON] if switch else None
    if side == "a":
        return bootstrap(15000, [listener("outbound", "127.0.0.1", 15001, [hcm("outbound", [route("/", "pod_b")])])],
                         [cluster("pod_b", "10.9.1.2", 15006, "10s", http=True, idle_timeout="2s",
                                  socket_options=opts)])
    return bootstrap(15000, [listener("inbound", "10.9.1.2", 15006, [hcm("inbound", [route("/", "app")])],
                                      socket_options=opts)],
                     [cluster("app", "127.0.0.1", 18080, "10s", http=True, idle_timeout="2s")])


def inbound_server(admin=15100, ip="10.9.0.2", app=8081, listeners="smc:15006"):
    """A server sidecar with plain HTTP inbound listeners to one app on 127.0.0.1:`app`
    (tests/vm/hot-restart.sh, bench/listener-cost.sh). `listeners`: NAME:PORT[:shared],...;
    `shared`: one socket for all workers (enable_reuse_port false)."""
    ls = []
    for spec in listeners.split(","):
        name, port, *shared = spec.split(":")
        ls.append(listener(f"{name}_listener", ip, int(port), [hcm(name, [route("/", "app", None)])],
                           reuse_port=False if shared else None))
    return bootstrap(admin, ls, [cluster("app", "127.0.0.1", app)])


def direct_backend(admin=15200, listen=18080):
    """An Envoy that answers every request itself: 200 "ok" (preload/bench/overhead.sh)."""
    return bootstrap(admin, [listener("app", "127.0.0.1", listen, [hcm("app", [direct("/", "ok")])])], [])


def proxy(admin=15000, listen=15001, upstream=18080, per_conn=0):
    """A loopback HTTP proxy to one upstream (preload/bench/overhead.sh)."""
    return bootstrap(admin, [listener("outbound", "127.0.0.1", listen, [hcm("outbound", [route("/", "app", None)])])],
                     [cluster("app", "127.0.0.1", upstream, http=True, per_conn=per_conn)])


BEDS = {f.__name__.replace("_", "-"): f for f in [
    demo_client, demo_server, sidecar_client, sidecar_server, tcp_proxy_pair, adaptive_client,
    agent_client, smcd_pod, inbound_server, direct_backend, proxy]}

# Parameters that take other branches of the beds, for --all (what the callers pass).
VARIANTS = [
    ("sidecar-client", ["h2=true", "per_conn=1"]),
    ("sidecar-client", ["close_route=true", "idle_timeout=300s"]),
    ("sidecar-server", ["reuse_port=false", "istio_app_port=8080"]),
    ("smcd-pod", ["side=b"]),
    ("smcd-pod", ["switch=false"]),
    ("inbound-server", ["listeners=smc:15006,tcp:15008,tcp_shared:15009:shared"]),
    ("proxy", ["per_conn=1"]),
]

DEMO_HEADERS = {
    "client": """\
# Client-side sidecar of the test bed (stock Envoy 1.40 + the envoy-smc preload library, or the
# envoy-smc build with the extension registered): on 10.9.0.1, the app talks HTTP to
# 127.0.0.1:10000. Clusters carry the EnvoyFilter switch as `envoy-smc render` writes it:
#   server      -> 10.9.0.2:8080 with the enable option (SMC-R when both ends can)
#   server-tcp  -> the same endpoint, kept on TCP (per-cluster fallback), routed for /tcp
#   server-off  -> the same endpoint without any option (the switch absent: TCP), for /off
# The Istio-style redirect on the server host (DNAT 10.9.0.2:8080 -> 15006) brings every one of
# them to the server sidecar's inbound listener. Run: envoy -c client.yaml --disable-hot-restart
""",
    "server": """\
# Server-side sidecar of the test bed, Istio-shaped: the inbound listener on 10.9.0.2:15006 (an
# SMC listener by its port: listeners.ports in smc-preload.yaml) with the original_dst listener
# filter (traffic to 10.9.0.2:8080 is DNATed here, as Istio's iptables redirect does), the app on
# 127.0.0.1:8080 behind it.
# Run: envoy -c server.yaml --disable-hot-restart --base-id 1
""",
}

# ---------------------------------------------------------------------------------------------
# YAML out: block style, with flow style for whatever fits on its line

PLAIN = re.compile(r"^[A-Za-z_./][A-Za-z0-9_./-]*$|^[0-9][0-9.]*[a-z]+$|^[0-9]+(\.[0-9]+){2,}$")
RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
WIDTH = 120


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if PLAIN.match(v) and v.lower() not in RESERVED:
        return v
    return json.dumps(v)


def flow(v):
    if isinstance(v, dict):
        return "{" + ", ".join(f"{scalar(k)}: {flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(flow(x) for x in v) + "]"
    return scalar(v)


def block(v, indent):
    """Lines of `v` (a dict or list) at `indent` spaces."""
    pad = " " * indent
    out = []
    items = v.items() if isinstance(v, dict) else ((None, x) for x in v)
    for k, x in items:
        head = f"{pad}{scalar(k)}:" if k is not None else f"{pad}-"
        if not isinstance(x, (dict, list)) or not x or len(head) + 1 + len(flow(x)) <= WIDTH:
            out.append(f"{head} {flow(x)}")
        elif k is None and isinstance(x, dict):
            # "- key: value" with the rest of the mapping under it
            inner = block(x, indent + 2)
            out.append(f"{pad}- {inner[0].lstrip()}")
            out.extend(inner[1:])
        else:
            out.append(head)
            out.extend(block(x, indent + 2 if isinstance(x, dict) or k is None else indent))
    return out


def to_yaml(doc):
    return "\n".join(block(doc, 0)) + "\n"


# ---------------------------------------------------------------------------------------------

def convert(text):
    if text in ("true", "false"):
        return text == "true"
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else text


def render(name, args):
    f = BEDS.get(name)
    if f is None:
        sys.exit(f"envoy-bootstrap: no bed {name!r}; --list shows them")
    params = inspect.signature(f).parameters
    kw = {}
    for a in args:
        k, eq, v = a.partition("=")
        k = k.replace("-", "_")
        if not eq or k not in params:
            sys.exit(f"envoy-bootstrap: {name}: {a!r} is not KEY=VALUE with KEY one of "
                     f"{', '.join(params) or '(none)'}")
        kw[k] = convert(v)
    return to_yaml(f(**kw))


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--list":
        for name, f in BEDS.items():
            sig = ", ".join(f"{k}={p.default}" for k, p in inspect.signature(f).parameters.items())
            print(f"{name}  {sig}")
        return 0
    if argv[0] == "--all":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        for name in BEDS:
            (out / f"{name}.yaml").write_text(render(name, []))
        for i, (name, args) in enumerate(VARIANTS, 1):
            (out / f"{name}-{i}.yaml").write_text(render(name, args))
        return 0
    if argv[0] == "--demo":
        stale = []
        for side in ("client", "server"):
            path = REPO / "envoy-config" / "envoy" / f"{side}.yaml"
            text = DEMO_HEADERS[side] + render(f"demo-{side}", [])
            if "--check" in argv[1:]:
                if path.read_text() != text:
                    stale.append(str(path.relative_to(REPO)))
            else:
                path.write_text(text)
        if stale:
            print(f"envoy-bootstrap: {', '.join(stale)} differ from what scripts/envoy-bootstrap.py "
                  "--demo writes: run it and commit the result", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(render(argv[0], argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
