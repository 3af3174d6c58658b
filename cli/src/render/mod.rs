//! `envoy-smc render`: the Istio manifests and Envoy bootstrap fragments that put a mesh on SMC,
//! written from a short [`Description`].
//!
//! What is rendered (paths relative to the output directory, the layout of `envoy-config/`):
//!
//! - `bootstrap/smc-bootstrap.yaml`: the bootstrap fragment that registers the extension
//!   (`bootstrap_extensions` + `default_socket_interface`), for the proxy image's bootstrap template;
//! - `bootstrap/bootstrap-override.yaml`: the same as a `sidecar.istio.io/bootstrapOverride`
//!   ConfigMap (key `custom_bootstrap.json`) in every namespace that runs opted-in workloads;
//! - `istio/mesh-enable.yaml`, `istio/namespace-enable.yaml`, `istio/workload-enable.yaml`: the
//!   switch, an `EnvoyFilter` that adds `enable_option` to every outbound cluster's
//!   `upstream_bind_config.socket_options`. No patch ever touches a listener: the inbound listener
//!   is an SMC listener by its port (`listener_port`, in the config's `listeners.ports`) and the
//!   workload's opt-in, from the proxy's start. A listener patch could not switch it live anyway:
//!   Envoy rejects an LDS update that changes a listener's socket options when
//!   `enable_reuse_port` is false, and opens new listen sockets for it otherwise;
//! - `istio/keep-tcp.yaml`: per-cluster fallback, `keep_tcp_option` on the named clusters;
//! - `istio/pod-annotation.yaml`: the pod template patch that opts a workload in;
//! - `istio/istio-operator.yaml`: mesh-wide image selection (when an image is described);
//! - `istio/fortio.yaml`: the Fortio seed scenario (when described);
//! - `node/namespace.yaml`, `node/exporter.yaml`, `node/prometheusrule.yaml`, `node/agent.yaml`:
//!   the node-level manifests, each when the description's `node` section asks for it
//!   ([`node`]).
//!
//! Every `EnvoyFilter` matches only proxies whose node metadata carries [`MARKER_KEY`] =
//! [`MARKER_VALUE`] (set by `ISTIO_META_ENVOY_SMC=true` in the proxy's environment: the custom
//! image, `meshConfig.defaultConfig.proxyMetadata`, or the pod's `proxy.istio.io/config`).

mod description;
pub mod node;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value as Json};

pub use description::{
    Agent, BootstrapSource, ClusterMatch, Description, Exporter, Fortio, Image, KeepTcp, Node,
    Workload,
};

use envoy_smc_core::config::proto::SocketOptionMatch;

/// The name the extension registers under (bazel/source/smc_socket_interface.h).
pub const EXTENSION_NAME: &str = "envoy.extensions.network.socket_interface.smc";
/// The typed config's type URL.
pub const CONFIG_TYPE_URL: &str = "type.googleapis.com/envoy_smc.v1.SmcConfig";
/// Node metadata key that says a proxy runs envoy-smc (`match.proxy.metadata`).
pub const MARKER_KEY: &str = "ENVOY_SMC";
/// Its value.
pub const MARKER_VALUE: &str = "true";
/// The proxy environment variable that puts [`MARKER_KEY`] into the node metadata.
pub const MARKER_ENV: &str = "ISTIO_META_ENVOY_SMC";
/// The workload opt-in annotation.
pub const OPT_IN_ANNOTATION: &str = envoy_smc_core::config::DEFAULT_OPT_IN_ANNOTATION;
/// The name of the rendered bootstrap-override ConfigMap.
pub const BOOTSTRAP_CONFIGMAP: &str = "envoy-smc-bootstrap";
/// Istio's cluster for destinations outside its registry.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// A description error: which field, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// Path of the field, e.g. `workloads[1].labels`; empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for RenderError {}

/// One output file: a comment header and its YAML documents.
#[derive(Debug, Clone)]
pub struct RenderedFile {
    /// Relative path (`istio/mesh-enable.yaml`).
    pub path: String,
    /// Comment lines (without `# `) written at the top.
    pub header: Vec<String>,
    pub documents: Vec<Json>,
}

impl RenderedFile {
    /// The file as YAML: the header as comments, then the documents separated by `---`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
        }
        for doc in &self.documents {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(doc).unwrap_or_default());
        }
        out
    }
}

/// A socket option in Envoy's JSON form, applied before bind/connect.
fn socket_option(o: SocketOptionMatch, description: &str) -> Json {
    json!({
        "description": description,
        "level": o.level,
        "name": o.name,
        "int_value": o.int_value,
        "state": "STATE_PREBIND",
    })
}

const ENABLE_DESCRIPTION: &str = "envoy-smc: SMC on (mesh switch)";
const KEEP_TCP_DESCRIPTION: &str = "envoy-smc: keep on TCP";

/// Renders everything the description asks for.
pub fn render(d: &Description) -> Vec<RenderedFile> {
    let mut files = vec![bootstrap_fragment(d), bootstrap_override(d)];
    if d.mesh {
        files.push(RenderedFile {
            path: "istio/mesh-enable.yaml".into(),
            header: vec![
                "Mesh-wide SMC switch: every envoy-smc proxy in the mesh (EnvoyFilter in the root namespace).".into(),
                "Outbound clusters get the enable socket option: their new connections to envoy-smc proxies are".into(),
                "SMC. Deleting this EnvoyFilter turns SMC off for new connections, no restart. No listener is".into(),
                "patched: the inbound listener is SMC by its port from the proxy's start and serves TCP clients".into(),
                "as TCP, so no update of it can be rejected.".into(),
                "Generated by `envoy-smc render`.".into(),
            ],
            documents: vec![enable_filter(d, "envoy-smc-mesh", &d.root_namespace, None)],
        });
    }
    if !d.namespaces.is_empty() {
        files.push(RenderedFile {
            path: "istio/namespace-enable.yaml".into(),
            header: vec![
                "Per-namespace SMC switch: every envoy-smc proxy in the namespace.".into(),
                "Generated by `envoy-smc render`.".into(),
            ],
            documents: d
                .namespaces
                .iter()
                .map(|ns| enable_filter(d, "envoy-smc", ns, None))
                .collect(),
        });
    }
    if !d.workloads.is_empty() {
        files.push(RenderedFile {
            path: "istio/workload-enable.yaml".into(),
            header: vec![
                "Per-workload SMC switch: the envoy-smc proxies of the pods with these labels (workloadSelector).".into(),
                "Generated by `envoy-smc render`.".into(),
            ],
            documents: d
                .workloads
                .iter()
                .map(|w| {
                    enable_filter(
                        d,
                        &format!("envoy-smc-{}", w.name),
                        &w.namespace,
                        Some(&w.labels),
                    )
                })
                .collect(),
        });
    }
    if !d.keep_tcp.is_empty() {
        files.push(keep_tcp_file(d));
    }
    files.push(pod_annotation(d));
    if let Some(image) = &d.image {
        files.push(istio_operator(d, image));
    }
    if let Some(f) = &d.fortio {
        files.push(fortio(d, f));
    }
    node::render(d, &mut files);
    files
}

/// The extension's typed config as JSON (proto3 JSON mapping) with its `@type`.
/// Fields at their default value are left out, and 64-bit integers are written as numbers.
pub fn typed_config(d: &Description) -> Json {
    let mut body = config_json(&d.config);
    if let Json::Object(map) = &mut body {
        map.insert("@type".into(), Json::String(CONFIG_TYPE_URL.into()));
    }
    body
}

/// The configuration as JSON (proto3 JSON mapping), fields at their default value left out and
/// the socket options' 64-bit integers (strings in the mapping) written as numbers: the body of
/// [`typed_config`], and the node agent's policy file.
pub(crate) fn config_json(config: &envoy_smc_core::config::SmcConfig) -> Json {
    let mut body =
        drop_defaults(envoy_smc_core::config::to_json(config)).unwrap_or_else(|| json!({}));
    // Only the int64 fields: a port list's "9999" is a string and must stay one.
    for option in ["enable_option", "keep_tcp_option"] {
        if let Some(Json::Object(o)) = body.pointer_mut(&format!("/mesh_switch/{option}")) {
            for v in o.values_mut() {
                if let Some(n) = v.as_str().and_then(|s| s.parse::<i64>().ok()) {
                    *v = json!(n);
                }
            }
        }
    }
    body
}

/// Drops false, empty strings, empty lists and empty mappings. `None`: the value itself is a
/// default.
fn drop_defaults(v: Json) -> Option<Json> {
    match v {
        Json::Bool(false) | Json::Null => None,
        Json::String(s) if s.is_empty() => None,
        Json::Array(a) => {
            let a: Vec<Json> = a.into_iter().filter_map(drop_defaults).collect();
            (!a.is_empty()).then_some(Json::Array(a))
        }
        Json::Object(o) => {
            let o: serde_json::Map<String, Json> = o
                .into_iter()
                .filter_map(|(k, v)| drop_defaults(v).map(|v| (k, v)))
                .collect();
            (!o.is_empty()).then_some(Json::Object(o))
        }
        other => Some(other),
    }
}

/// The bootstrap fragment that registers the extension.
pub fn bootstrap_block(d: &Description) -> Json {
    json!({
        "bootstrap_extensions": [{
            "name": EXTENSION_NAME,
            "typed_config": typed_config(d),
        }],
        "default_socket_interface": EXTENSION_NAME,
    })
}

fn bootstrap_fragment(d: &Description) -> RenderedFile {
    RenderedFile {
        path: "bootstrap/smc-bootstrap.yaml".into(),
        header: vec![
            "Envoy bootstrap fragment that registers envoy-smc as the socket interface.".into(),
            "The custom proxy image's bootstrap template carries it (Istio >= 1.21 ignores BOOTSTRAP".into(),
            "EnvoyFilter patches); it is read at proxy start: a change needs a pod restart.".into(),
            "With this block alone no socket is SMC: the EnvoyFilter switch (istio/) turns SMC on.".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![bootstrap_block(d)],
    }
}

fn bootstrap_override(d: &Description) -> RenderedFile {
    let body = serde_json::to_string_pretty(&bootstrap_block(d)).unwrap_or_default() + "\n";
    RenderedFile {
        path: "bootstrap/bootstrap-override.yaml".into(),
        header: vec![
            "Per-pod alternative to the image's bootstrap template: a ConfigMap that Istio merges into".into(),
            format!("the generated bootstrap for pods annotated `sidecar.istio.io/bootstrapOverride: {BOOTSTRAP_CONFIGMAP}`"),
            "(repeated fields such as bootstrap_extensions append). Use it only with an image whose".into(),
            "template does not register the extension already. Read at proxy start: restart the pods.".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: d
            .workload_namespaces()
            .iter()
            .map(|ns| {
                json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": BOOTSTRAP_CONFIGMAP,
                        "namespace": ns,
                        "labels": {"app.kubernetes.io/part-of": "envoy-smc"},
                    },
                    "data": {"custom_bootstrap.json": body},
                })
            })
            .collect(),
    }
}

fn proxy_match(d: &Description) -> Option<Json> {
    (!d.proxy_metadata.is_empty()).then(|| json!({"metadata": d.proxy_metadata}))
}

fn with_proxy(mut m: Json, d: &Description) -> Json {
    if let (Some(p), Json::Object(map)) = (proxy_match(d), &mut m) {
        map.insert("proxy".into(), p);
    }
    m
}

/// The socket options every cluster patch carries: the bootstrap-wide ones (a cluster-level
/// list replaces them), then `extra`.
fn cluster_options(d: &Description, extra: Json) -> Json {
    let mut opts = d.bootstrap_socket_options.clone();
    opts.push(extra);
    Json::Array(opts)
}

fn labels_meta(name: &str, namespace: &str) -> Json {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "envoy-smc"},
    })
}

/// The switch: an `EnvoyFilter` for the given namespace (and workload).
pub fn enable_filter(
    d: &Description,
    name: &str,
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
) -> Json {
    let enable = socket_option(d.enable_option(), ENABLE_DESCRIPTION);
    // Clusters only: see the module documentation for why no listener is ever patched.
    let mut patches = vec![json!({
        "applyTo": "CLUSTER",
        "match": with_proxy(json!({"context": "SIDECAR_OUTBOUND"}), d),
        "patch": {
            "operation": "MERGE",
            "value": {"upstream_bind_config": {"socket_options": cluster_options(d, enable)}},
        },
    })];
    if d.egress_tcp {
        // The previous patch already carried the bootstrap-wide options to this cluster.
        patches.push(json!({
            "applyTo": "CLUSTER",
            "match": with_proxy(json!({
                "context": "SIDECAR_OUTBOUND",
                "cluster": {"name": PASSTHROUGH_CLUSTER},
            }), d),
            "patch": {
                "operation": "MERGE",
                "value": {"upstream_bind_config": {"socket_options": [
                    socket_option(d.keep_tcp_option(), "envoy-smc: egress stays on TCP"),
                ]}},
            },
        }));
    }
    let mut spec = json!({"configPatches": patches});
    if let Some(labels) = selector {
        spec["workloadSelector"] = json!({"labels": labels});
    }
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": labels_meta(name, namespace),
        "spec": spec,
    })
}

/// Istio's cluster match for a kept cluster.
pub fn cluster_match(c: &ClusterMatch) -> Json {
    match c {
        ClusterMatch::Name(n) => json!({"name": n}),
        ClusterMatch::Service {
            service,
            port,
            subset,
        } => {
            let mut m = json!({"service": service});
            if let Some(p) = port {
                m["portNumber"] = json!(p);
            }
            if let Some(s) = subset {
                m["subset"] = json!(s);
            }
            m
        }
    }
}

fn keep_tcp_file(d: &Description) -> RenderedFile {
    let mut by_ns: Vec<(String, Vec<Json>)> = Vec::new();
    for k in &d.keep_tcp {
        let keep = socket_option(d.keep_tcp_option(), KEEP_TCP_DESCRIPTION);
        let patch = json!({
            "applyTo": "CLUSTER",
            "match": with_proxy(json!({
                "context": "SIDECAR_OUTBOUND",
                "cluster": cluster_match(&k.cluster),
            }), d),
            "patch": {
                "operation": "MERGE",
                "value": {"upstream_bind_config": {"socket_options": cluster_options(d, keep)}},
            },
        });
        match by_ns.iter_mut().find(|(ns, _)| *ns == k.namespace) {
            Some((_, list)) => list.push(patch),
            None => by_ns.push((k.namespace.clone(), vec![patch])),
        }
    }
    RenderedFile {
        path: "istio/keep-tcp.yaml".into(),
        header: vec![
            "Per-cluster fallback: these clusters stay on TCP even where the switch is on (the keep-TCP".into(),
            "option wins). MERGE appends to the cluster's socket options, so options already there stay;".into(),
            "bootstrap-wide options (cluster_manager.upstream_bind_config) are repeated here because a".into(),
            "cluster-level list replaces them. On a proxy without envoy-smc the option is a no-op.".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: by_ns
            .into_iter()
            .map(|(ns, patches)| {
                json!({
                    "apiVersion": "networking.istio.io/v1alpha3",
                    "kind": "EnvoyFilter",
                    "metadata": labels_meta("envoy-smc-keep-tcp", &ns),
                    "spec": {"configPatches": patches},
                })
            })
            .collect(),
    }
}

/// The annotations that opt a pod in (and select the image / bootstrap, and mark the proxy).
pub fn pod_annotations(d: &Description) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(OPT_IN_ANNOTATION.to_owned(), "true".to_owned());
    if let Some(image) = &d.image {
        a.insert("sidecar.istio.io/proxyImage".to_owned(), image.reference());
    }
    if d.bootstrap == BootstrapSource::Override {
        a.insert(
            "sidecar.istio.io/bootstrapOverride".to_owned(),
            BOOTSTRAP_CONFIGMAP.to_owned(),
        );
    }
    if d.image.is_none() && !d.proxy_metadata.is_empty() {
        // The envoy-smc image sets ISTIO_META_ENVOY_SMC itself; any other proxy (a stock image
        // with the preload library) is marked through its ProxyConfig.
        let meta: BTreeMap<String, &String> = d
            .proxy_metadata
            .iter()
            .map(|(k, v)| (format!("ISTIO_META_{k}"), v))
            .collect();
        a.insert(
            "proxy.istio.io/config".to_owned(),
            serde_json::to_string(&json!({"proxyMetadata": meta})).unwrap_or_default(),
        );
    }
    a
}

fn pod_annotation(d: &Description) -> RenderedFile {
    RenderedFile {
        path: "istio/pod-annotation.yaml".into(),
        header: vec![
            "Opt a workload in: `kubectl -n <namespace> patch deployment <name> --patch-file istio/pod-annotation.yaml`.".into(),
            format!("`{OPT_IN_ANNOTATION}: \"true\"` is read from the node metadata at proxy start (a change"),
            "restarts the pods: it is in the pod template). The proxy image (sidecar.istio.io/proxyImage, or".into(),
            "mesh-wide istio-operator.yaml) marks the proxy for the EnvoyFilters (ISTIO_META_ENVOY_SMC=true);".into(),
            "without an image, `proxy.istio.io/config` does (merge it with any value the pod already has).".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![json!({
            "spec": {"template": {"metadata": {"annotations": pod_annotations(d)}}},
        })],
    }
}

fn istio_operator(d: &Description, image: &Image) -> RenderedFile {
    RenderedFile {
        path: "istio/istio-operator.yaml".into(),
        header: vec![
            "Mesh-wide: every injected sidecar runs the envoy-smc proxy image (which registers the extension".into(),
            "in its bootstrap template and sets ISTIO_META_ENVOY_SMC=true, the EnvoyFilters' proxy match).".into(),
            "Helm: the same keys under `values:` (global.hub, global.tag, global.proxy.image).".into(),
            "New pods get it; restart existing ones (kubectl rollout restart).".into(),
            format!("Per pod instead: `sidecar.istio.io/proxyImage: {}` (Istio uses it only if it contains a '/').", image.reference()),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![json!({
            "apiVersion": "install.istio.io/v1alpha1",
            "kind": "IstioOperator",
            "metadata": {"name": "envoy-smc", "namespace": d.root_namespace},
            "spec": {
                "values": {
                    "global": {
                        "hub": image.hub,
                        "tag": image.tag,
                        "proxy": {"image": image.image},
                    },
                },
            },
        })],
    }
}

fn fortio(d: &Description, f: &Fortio) -> RenderedFile {
    let ns = &f.namespace;
    let annotations = pod_annotations(d);
    let anti_affinity = |other: &str| {
        json!({
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchExpressions": [{
                        "key": "app", "operator": "In", "values": [other],
                    }]},
                    "topologyKey": "kubernetes.io/hostname",
                }],
            },
        })
    };
    let deployment = |app: &str, other: &str, args: Json, ports: Json| {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app, "namespace": ns, "labels": {"app": app}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": app}},
                "template": {
                    "metadata": {"labels": {"app": app}, "annotations": annotations},
                    "spec": {
                        "affinity": anti_affinity(other),
                        "containers": [{
                            "name": "fortio",
                            "image": f.image,
                            "args": args,
                            "ports": ports,
                            "resources": {"requests": {"cpu": "1000m", "memory": "1G"}},
                        }],
                    },
                },
            },
        })
    };
    RenderedFile {
        path: "istio/fortio.yaml".into(),
        header: vec![
            "The seed scenario: a Fortio client/server pair on different nodes (anti-affinity) with SMC on".into(),
            "(fortioserver.yaml shape: HTTP echo 8080, TCP echo 8078, gRPC ping 8079; client UI on a".into(),
            "LoadBalancer 8080). Both pods are opted in; apply an enable EnvoyFilter for the namespace too.".into(),
            format!("Load: kubectl -n {ns} exec deploy/fortioclient -c fortio -- fortio load -c 32 -qps 0 -t 60s http://fortioserver:8080/echo"),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"istio-injection": "enabled"}},
            }),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "fortioserver", "namespace": ns, "labels": {"app": "fortioserver"}},
                "spec": {
                    "selector": {"app": "fortioserver"},
                    "ports": [
                        {"name": "http-echo", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "tcp-echo", "port": 8078, "targetPort": 8078, "protocol": "TCP"},
                        {"name": "grpc-ping", "port": 8079, "targetPort": 8079, "protocol": "TCP"},
                    ],
                },
            }),
            deployment(
                "fortioserver",
                "fortioclient",
                json!(["server", "-http-port", "8080", "-tcp-port", "8078", "-grpc-port", "8079", "-redirect-port", "disabled"]),
                json!([
                    {"name": "http-echo", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "tcp-echo", "containerPort": 8078, "protocol": "TCP"},
                    {"name": "grpc-ping", "containerPort": 8079, "protocol": "TCP"},
                ]),
            ),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "fortioclient", "namespace": ns, "labels": {"app": "fortioclient"}},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "fortioclient"},
                    "ports": [{"name": "http-ui", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
                },
            }),
            deployment(
                "fortioclient",
                "fortioserver",
                json!(["server", "-http-port", "8080", "-redirect-port", "disabled"]),
                json!([{"name": "http-ui", "containerPort": 8080, "protocol": "TCP"}]),
            ),
        ],
    }
}

/// Everything as one JSON value (`--json`): `{"files": [{"path", "documents"}]}`.
pub fn to_json(files: &[RenderedFile]) -> Json {
    json!({
        "files": files.iter().map(|f| json!({"path": f.path, "documents": f.documents})).collect::<Vec<_>>(),
    })
}

/// Everything as one multi-document YAML stream, each file introduced by a `# file:` comment.
pub fn to_yaml_stream(files: &[RenderedFile]) -> String {
    let mut out = String::new();
    for f in files {
        out.push_str(&format!("# file: {}\n", f.path));
        out.push_str(&f.to_yaml());
    }
    out
}
