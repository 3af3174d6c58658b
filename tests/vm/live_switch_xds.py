#!/usr/bin/env python3
"""The control plane of tests/vm/live-switch.sh, computed ahead on the host.

    live_switch_xds.py ENVOY_SMC_CLI OUT_DIR

Renders a mesh description with `envoy-smc render --json` and applies the rendered EnvoyFilters'
configPatches to Istio-shaped resources the way istiod does (MERGE: messages merged field by
field, repeated fields appended; `match.context`, `match.cluster.name`, `match.listener.name` /
`portNumber`, `match.proxy.metadata` against the node metadata). Writes, for each state the test
walks through, the CDS/LDS files the Envoys read (JSON DiscoveryResponses), the two bootstraps
(with `XDS` for the directory the VM fills in) and the envoy-smc configuration of both proxies.
Nothing the updates carry is typed in here: every option comes from the render output.
"""
import copy
import json
import os
import subprocess
import sys

CLI, OUT = sys.argv[1], sys.argv[2]
# LIVE_SWITCH_LOG_ALL=1: every request in the Envoys' access logs, to follow a step's connections.
LOG_FROM_STATUS = 0 if os.environ.get("LIVE_SWITCH_LOG_ALL") else 201
NODE_METADATA = {"ENVOY_SMC": "true"}  # what ISTIO_META_ENVOY_SMC=true puts into the node

# One envoy-smc configuration for both sidecars (the seed platform: AF_SMC only). Both ends share
# the VM's kernel, so 10.9.0.2 is a local address for the client too.
SMC_CONFIG = {
    "mode": "MODE_AF_SMC",
    "opt_in": {"annotations": {"smc.asm.alibabacloud.com/enabled": "true"}},
    "listeners": {"ports": [15006, 15007]},
    "upstream": {"allow": ["10.9.0.0/24"], "allow_local": True},
}
DESCRIPTION = {
    "mesh": True,
    "root_namespace": "istio-system",
    "keep_tcp": [{"name": "server"}],
    "egress_tcp": False,
    "listener_port": 15006,
    "proxy_metadata": NODE_METADATA,
    "config": SMC_CONFIG,
}


def write(name, obj):
    with open(f"{OUT}/{name}", "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def render():
    write("description.yaml", DESCRIPTION)  # JSON is YAML
    out = subprocess.run([CLI, "render", f"{OUT}/description.yaml", "--json"],
                         check=True, capture_output=True, text=True).stdout
    files = {f["path"]: f["documents"] for f in json.loads(out)["files"]}
    with open(f"{OUT}/render.json", "w") as f:
        f.write(out)

    def patches(path):
        return [p for d in files[path] if d.get("kind") == "EnvoyFilter"
                for p in d["spec"]["configPatches"]]
    return patches("istio/mesh-enable.yaml"), patches("istio/keep-tcp.yaml")


# ---- istiod's patching, the part the rendered filters use ----

def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k] = dst[k] + copy.deepcopy(v)
        else:
            dst[k] = copy.deepcopy(v)


def matches(patch, kind, ctx, res):
    if patch["applyTo"] != kind:
        return False
    m = patch.get("match", {})
    if m.get("context", "ANY") not in ("ANY", ctx):
        return False
    for k, v in m.get("proxy", {}).get("metadata", {}).items():
        if NODE_METADATA.get(k) != v:
            return False
    if kind == "CLUSTER":
        c = m.get("cluster", {})
        if set(c) - {"name"}:
            raise SystemExit(f"cluster match not supported by this harness: {c}")
        return c.get("name", res["name"]) == res["name"]
    lm = m.get("listener", {})
    if set(lm) - {"name", "portNumber"}:
        raise SystemExit(f"listener match not supported by this harness: {lm}")
    port = res["address"]["socket_address"]["port_value"]
    return lm.get("name", res["name"]) == res["name"] and lm.get("portNumber", port) == port


def patched(resources, kind, patches):
    """resources: [(context, resource)] -> the resources with every matching MERGE applied."""
    out = []
    for ctx, res in resources:
        res = copy.deepcopy(res)
        for p in patches:
            if matches(p, kind, ctx, res):
                if p["patch"]["operation"] != "MERGE":
                    raise SystemExit(f"operation not supported by this harness: {p}")
                merge(res, p["patch"]["value"])
        out.append(res)
    return out


def discovery(version, type_name, resources):
    t = f"type.googleapis.com/envoy.config.{type_name}"
    return {"version_info": version, "resources": [{"@type": t, **r} for r in resources]}


# ---- the Istio-shaped resources ----

def hcm(prefix, routes):
    return [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": p}, "route": {"cluster": c}} for p, c in routes]}]},
            # Every request not answered 200 in the Envoy's log, with why (flags, details, the
            # connections): a failed request must be explainable from the logs.
            "access_log": [{
                "name": "envoy.access_loggers.stderr",
                "filter": {"or_filter": {"filters": [
                    {"status_code_filter": {"comparison": {"op": "GE", "value": {
                        "default_value": LOG_FROM_STATUS, "runtime_key": "live_switch.log_from"}}}},
                    # 0: no response at all (the downstream connection closed under the request)
                    {"status_code_filter": {"comparison": {"op": "LE", "value": {
                        "default_value": 199, "runtime_key": "live_switch.log_below"}}}}]}},
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                    "log_format": {"text_format_source": {"inline_string":
                        f"access[{prefix}] %START_TIME% %REQ(:PATH)% %RESPONSE_CODE% flags=%RESPONSE_FLAGS% "
                        "details=%RESPONSE_CODE_DETAILS% termination=%CONNECTION_TERMINATION_DETAILS% "
                        "upstream=%UPSTREAM_HOST% local=%UPSTREAM_LOCAL_ADDRESS% "
                        "upstream_cx=%UPSTREAM_CONNECTION_ID% failure=%UPSTREAM_TRANSPORT_FAILURE_REASON% "
                        "duration=%DURATION%ms downstream=%DOWNSTREAM_REMOTE_ADDRESS% cx=%CONNECTION_ID% "
                        "connection=%RESP(CONNECTION)%\n"}},
                },
            }],
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }]


def cluster(name, ip, port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        # Idle upstream connections close after 2 s, so the fd counts come back to the baseline.
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": "2s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}]}]},
    }


CLIENT_CLUSTERS = [("SIDECAR_OUTBOUND", cluster("server", "10.9.0.2", 8080)),
                   ("SIDECAR_OUTBOUND", cluster("server2", "10.9.0.2", 15007))]
CLIENT_LISTENERS = [("SIDECAR_OUTBOUND", {
    "name": "app_outbound",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
    "filter_chains": [{"filters": hcm("app_outbound", [("/a", "server"), ("/b", "server2")])}],
})]
SERVER_CLUSTERS = [("SIDECAR_INBOUND", cluster("inbound|8081||", "127.0.0.1", 8081))]


def server_listeners(stat_prefix="inbound", extra=None):
    app = [("/", "inbound|8081||")]
    listeners = [
        # Istio's inbound listener, Envoy's default enable_reuse_port (true).
        {"name": "virtualInbound", "traffic_direction": "INBOUND",
         "address": {"socket_address": {"address": "10.9.0.2", "port_value": 15006}},
         "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
         "filter_chains": [{"name": "inbound_8080", "filter_chain_match": {"destination_port": 8080},
                            "filters": hcm(stat_prefix + "_8080", app)}]},
        # An inbound listener with enable_reuse_port: false, the setting AF_SMC listeners needed
        # before issue 19: any change of its socket options is a rejected LDS update.
        {"name": "inbound-noreuse", "traffic_direction": "INBOUND", "enable_reuse_port": False,
         "address": {"socket_address": {"address": "10.9.0.2", "port_value": 15007}},
         "filter_chains": [{"filters": hcm(stat_prefix + "_15007", app)}]},
    ]
    for name, fields in (extra or {}).items():
        for listener in listeners:
            if listener["name"] == name:
                merge(listener, fields)
    return [("SIDECAR_INBOUND", listener) for listener in listeners]


def bootstrap(node, admin_port):
    src = lambda f: {"path_config_source": {"path": f"XDS/{f}", "watched_directory": {"path": "XDS"}},
                     "resource_api_version": "V3"}
    return {
        "node": {"id": node, "cluster": node, "metadata": NODE_METADATA},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {"lds_config": src("lds.json"), "cds_config": src("cds.json")},
    }


def main():
    mesh, keep = render()
    write("smc.yaml", SMC_CONFIG)
    write("client-bootstrap.yaml", bootstrap("client", 15000))
    write("server-bootstrap.yaml", bootstrap("server", 15100))
    states = {"none": [], "mesh": mesh, "mesh-keep": mesh + keep}
    for i, (state, patches) in enumerate(states.items()):
        write(f"client-cds-{i}-{state}.json",
              discovery(state, "cluster.v3.Cluster", patched(CLIENT_CLUSTERS, "CLUSTER", patches)))
        # Istio pushes the same filters to the server sidecar: they change none of its resources.
        for kind, res in (("LISTENER", server_listeners()), ("CLUSTER", SERVER_CLUSTERS)):
            if patched(res, kind, patches) != [r for _, r in res]:
                raise SystemExit(f"the rendered filters ({state}) change a server {kind}")
        if patched(CLIENT_LISTENERS, "LISTENER", patches) != [r for _, r in CLIENT_LISTENERS]:
            raise SystemExit(f"the rendered filters ({state}) change a client listener")
    write("client-lds.json", discovery("1", "listener.v3.Listener", [r for _, r in CLIENT_LISTENERS]))
    write("server-cds.json", discovery("1", "cluster.v3.Cluster", [r for _, r in SERVER_CLUSTERS]))
    lds = lambda v, ls: discovery(v, "listener.v3.Listener", [r for _, r in ls])
    write("server-lds-0-none.json", lds("none", server_listeners()))
    # Listener updates of the kinds istiod makes, on both inbound listeners.
    write("server-lds-1-filter-chain.json", lds("fc", server_listeners("inbound2")))
    field = {"virtualInbound": {"per_connection_buffer_limit_bytes": 65536},
             "inbound-noreuse": {"per_connection_buffer_limit_bytes": 65536}}
    write("server-lds-2-listener-field.json", lds("field", server_listeners("inbound2", field)))
    # A socket option on the reuse_port listener (a user's EnvoyFilter, not envoy-smc's): Envoy
    # opens new listen sockets for it while the old listener drains.
    opt = copy.deepcopy(field)
    opt["virtualInbound"]["socket_options"] = [
        {"description": "a user's option", "level": 1, "name": 9, "int_value": 1,
         "state": "STATE_PREBIND"}]  # SOL_SOCKET/SO_KEEPALIVE
    write("server-lds-3-socket-option.json", lds("sockopt", server_listeners("inbound2", opt)))
    # The contrast: the listener patch render wrote before issue 19 (the enable option of the
    # rendered mesh switch, on the inbound listener), on the enable_reuse_port: false listener.
    enable = next(p for p in mesh if "cluster" not in p["match"])[
        "patch"]["value"]["upstream_bind_config"]["socket_options"][-1]
    legacy = {"applyTo": "LISTENER",
              "match": {"context": "SIDECAR_INBOUND", "listener": {"portNumber": 15007},
                        "proxy": {"metadata": NODE_METADATA}},
              "patch": {"operation": "MERGE", "value": {"socket_options": [enable]}}}
    legacy_listeners = patched(server_listeners("inbound2", opt), "LISTENER", [legacy])
    write("server-lds-4-legacy-listener-patch.json",
          discovery("legacy", "listener.v3.Listener", legacy_listeners))
    print(f"live_switch_xds: {len(mesh)} mesh-switch patch(es), {len(keep)} keep-tcp patch(es) "
          f"rendered; enable option {enable['level']}/{enable['name']}={enable['int_value']}")


main()
