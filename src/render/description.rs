//! The short description `envoy-smc render` reads, parsed with errors that name the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::config::proto::{Listeners, SocketOptionMatch};
use crate::config::SmcConfig;

use super::RenderError;

/// What to render: which proxies get the mesh switch, which clusters stay on TCP, and the
/// envoy-smc configuration that goes into the bootstrap.
#[derive(Debug, Clone)]
pub struct Description {
    /// A mesh-wide `EnvoyFilter` in the root namespace.
    pub mesh: bool,
    /// Istio's root namespace (`meshConfig.rootNamespace`).
    pub root_namespace: String,
    /// Namespaces whose every envoy-smc proxy gets the switch.
    pub namespaces: Vec<String>,
    /// Workloads (by labels) that get the switch.
    pub workloads: Vec<Workload>,
    /// Clusters kept on TCP.
    pub keep_tcp: Vec<KeepTcp>,
    /// Keep `PassthroughCluster` (traffic to destinations outside the mesh registry) on TCP.
    pub egress_tcp: bool,
    /// The inbound listener port (Istio: 15006): an SMC listener by this port alone (never patched).
    pub listener_port: u16,
    /// The node metadata (string values) an `EnvoyFilter` requires of a proxy
    /// (`match.proxy.metadata`); empty: no such match.
    pub proxy_metadata: BTreeMap<String, String>,
    /// The envoy-smc configuration (the bootstrap extension's typed config), with
    /// `listeners.ports` containing `listener_port`.
    pub config: SmcConfig,
    /// Socket options the bootstrap sets for every cluster
    /// (`cluster_manager.upstream_bind_config.socket_options`): a cluster-level list replaces
    /// that list, so every cluster patch carries them again.
    pub bootstrap_socket_options: Vec<Json>,
    /// How proxies get the extension into their bootstrap.
    pub bootstrap: BootstrapSource,
    /// The custom proxy image.
    pub image: Option<Image>,
    /// The Fortio seed scenario.
    pub fortio: Option<Fortio>,
    /// The node-level manifests (`node/`); `None`: none of them.
    pub node: Option<Node>,
}

/// The node-level manifests: each part is rendered only when described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The namespace every node manifest lives in (`node/namespace.yaml` creates it).
    pub namespace: String,
    /// `envoy-smc exporter` on every node, its Service and PodMonitor (`node/exporter.yaml`).
    pub exporter: Option<Exporter>,
    /// The PrometheusRule with monitoring/envoy-smc.rules.yaml's groups (`node/prometheusrule.yaml`).
    pub alerts: bool,
    /// Labels of the PodMonitor and the PrometheusRule (the Prometheus Operator selects by them).
    pub monitor_labels: BTreeMap<String, String>,
    /// The BPF node agent, `envoy-smc-agent run` (`node/agent.yaml`).
    pub agent: Option<Agent>,
}

/// The exporter DaemonSet's image and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exporter {
    /// Holding /usr/local/bin/envoy-smc.
    pub image: String,
    /// `--listen 0.0.0.0:PORT` on the node's address (hostNetwork).
    pub port: u16,
}

/// The agent DaemonSet's image and the uid its sidecars run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Holding /usr/local/bin/envoy-smc-agent.
    pub image: String,
    pub uid: u32,
}

/// A workload selected by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// Used in the `EnvoyFilter`'s name.
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A cluster (or set of clusters) kept on TCP, and the namespace its `EnvoyFilter` lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepTcp {
    pub namespace: String,
    pub cluster: ClusterMatch,
}

/// Istio's `EnvoyFilter` cluster match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterMatch {
    /// The full cluster name (`outbound|5432||db.shop.svc.cluster.local`, `PassthroughCluster`).
    Name(String),
    /// Service FQDN, optionally one port and one subset.
    Service {
        service: String,
        port: Option<u16>,
        subset: Option<String>,
    },
}

/// Where the extension's bootstrap block comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapSource {
    /// The custom image's bootstrap template (no per-pod setting).
    Template,
    /// Per pod: `sidecar.istio.io/bootstrapOverride` naming the rendered ConfigMap.
    Override,
}

/// The custom proxy image, as Istio's values name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub hub: String,
    pub tag: String,
    /// `global.proxy.image` (default `proxyv2`).
    pub image: String,
}

impl Image {
    /// The full reference, for `sidecar.istio.io/proxyImage`.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.hub, self.image, self.tag)
    }
}

/// The Fortio seed scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fortio {
    pub namespace: String,
    pub image: String,
}

const TOP_FIELDS: &[&str] = &[
    "mesh",
    "root_namespace",
    "namespaces",
    "workloads",
    "keep_tcp",
    "egress_tcp",
    "listener_port",
    "proxy_metadata",
    "config",
    "bootstrap_socket_options",
    "bootstrap",
    "image",
    "fortio",
    "node",
];

fn err(field: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError {
        field: field.into(),
        message: message.into(),
    }
}

fn check_fields(obj: &Map<String, Json>, known: &[&str], path: &str) -> Result<(), RenderError> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            return Err(err(
                field,
                format!("unknown field (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn as_object<'a>(v: &'a Json, field: &str) -> Result<&'a Map<String, Json>, RenderError> {
    v.as_object()
        .ok_or_else(|| err(field, format!("must be a mapping, not {v}")))
}

fn as_bool(v: Option<&Json>, field: &str, default: bool) -> Result<bool, RenderError> {
    match v {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(err(field, format!("must be true or false, not {other}"))),
    }
}

fn as_string(v: &Json, field: &str) -> Result<String, RenderError> {
    match v {
        Json::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        Json::String(_) => Err(err(field, "must not be empty")),
        other => Err(err(field, format!("must be a string, not {other}"))),
    }
}

fn as_list<'a>(v: Option<&'a Json>, field: &str) -> Result<&'a [Json], RenderError> {
    match v {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(a)) => Ok(a),
        Some(other) => Err(err(field, format!("must be a list, not {other}"))),
    }
}

fn as_port(v: &Json, field: &str) -> Result<u16, RenderError> {
    match v.as_u64() {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(err(
            field,
            format!("must be a port number 1-65535, not {v}"),
        )),
    }
}

/// A Kubernetes name (RFC 1123 label): lower-case letters, digits and '-', at most 63.
pub(crate) fn check_dns_label(s: &str, field: &str) -> Result<(), RenderError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "{s:?} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)"
            ),
        ))
    }
}

fn check_label_value(s: &str, field: &str) -> Result<(), RenderError> {
    let ok = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("{s:?} is not a valid label value")))
    }
}

fn string_map(v: Option<&Json>, field: &str) -> Result<BTreeMap<String, String>, RenderError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    if v.is_null() {
        return Ok(out);
    }
    for (k, val) in as_object(v, field)? {
        let f = format!("{field}.{k}");
        match val {
            Json::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            Json::Bool(_) | Json::Number(_) => {
                return Err(err(
                    f,
                    format!("must be a string (quote it: \"{val}\"), not {val}"),
                ))
            }
            other => return Err(err(f, format!("must be a string, not {other}"))),
        }
    }
    Ok(out)
}

impl Description {
    /// Parses a description from YAML/JSON text. A relative `config` path is read from `base`.
    pub fn from_yaml(text: &str, base: Option<&Path>) -> Result<Description, RenderError> {
        let value: Json = if text.trim().is_empty() {
            Json::Object(Map::new())
        } else {
            serde_yaml::from_str(text).map_err(|e| err("", format!("not valid YAML/JSON: {e}")))?
        };
        Self::from_value(&value, base)
    }

    /// Reads a description file.
    pub fn from_file(path: &Path) -> Result<Description, RenderError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&text, path.parent())
    }

    /// Parses an already-decoded description.
    pub fn from_value(value: &Json, base: Option<&Path>) -> Result<Description, RenderError> {
        let obj = match value {
            Json::Null => &Map::new(),
            v => as_object(v, "")
                .map_err(|_| err("", "the description must be a mapping of fields"))?,
        };
        check_fields(obj, TOP_FIELDS, "")?;

        let mesh = as_bool(obj.get("mesh"), "mesh", false)?;
        let root_namespace = match obj.get("root_namespace") {
            None | Some(Json::Null) => "istio-system".to_owned(),
            Some(v) => as_string(v, "root_namespace")?,
        };
        check_dns_label(&root_namespace, "root_namespace")?;

        let mut namespaces = Vec::new();
        for (i, v) in as_list(obj.get("namespaces"), "namespaces")?
            .iter()
            .enumerate()
        {
            let f = format!("namespaces[{i}]");
            let ns = as_string(v, &f)?;
            check_dns_label(&ns, &f)?;
            if namespaces.contains(&ns) {
                return Err(err(f, format!("{ns:?} is listed twice")));
            }
            namespaces.push(ns);
        }

        let mut workloads: Vec<Workload> = Vec::new();
        for (i, v) in as_list(obj.get("workloads"), "workloads")?
            .iter()
            .enumerate()
        {
            let f = format!("workloads[{i}]");
            let w = as_object(v, &f)?;
            check_fields(w, &["namespace", "name", "labels"], &f)?;
            let namespace = match w.get("namespace") {
                Some(v) => as_string(v, &format!("{f}.namespace"))?,
                None => return Err(err(format!("{f}.namespace"), "is required")),
            };
            check_dns_label(&namespace, &format!("{f}.namespace"))?;
            let labels = string_map(w.get("labels"), &format!("{f}.labels"))?;
            if labels.is_empty() {
                return Err(err(
                    format!("{f}.labels"),
                    "is required: the pod labels that select the workload (workloadSelector)",
                ));
            }
            for (k, v) in &labels {
                check_label_value(v, &format!("{f}.labels.{k}"))?;
            }
            let name = match w.get("name") {
                Some(v) => as_string(v, &format!("{f}.name"))?,
                None => match labels.get("app") {
                    Some(app) => app.clone(),
                    None => {
                        return Err(err(
                            format!("{f}.name"),
                            "is required when the labels have no `app` label",
                        ))
                    }
                },
            };
            check_dns_label(&name, &format!("{f}.name"))?;
            if workloads
                .iter()
                .any(|o| o.namespace == namespace && o.name == name)
            {
                return Err(err(
                    format!("{f}.name"),
                    format!("workload {namespace}/{name} is listed twice"),
                ));
            }
            workloads.push(Workload {
                namespace,
                name,
                labels,
            });
        }

        let mut keep_tcp = Vec::new();
        for (i, v) in as_list(obj.get("keep_tcp"), "keep_tcp")?.iter().enumerate() {
            let f = format!("keep_tcp[{i}]");
            let k = parse_keep_tcp(v, &f, &root_namespace)?;
            if keep_tcp.contains(&k) {
                return Err(err(f, "is listed twice"));
            }
            keep_tcp.push(k);
        }

        let egress_tcp = as_bool(obj.get("egress_tcp"), "egress_tcp", true)?;
        let listener_port = match obj.get("listener_port") {
            None | Some(Json::Null) => 15006,
            Some(v) => as_port(v, "listener_port")?,
        };

        let proxy_metadata = match obj.get("proxy_metadata") {
            None => {
                BTreeMap::from([(super::MARKER_KEY.to_owned(), super::MARKER_VALUE.to_owned())])
            }
            Some(v) => string_map(Some(v), "proxy_metadata")?,
        };

        let mut config = match obj.get("config") {
            None | Some(Json::Null) => SmcConfig::default(),
            Some(Json::String(path)) => {
                let mut p = PathBuf::from(path);
                if p.is_relative() {
                    if let Some(base) = base {
                        p = base.join(p);
                    }
                }
                crate::config::from_file(&p).map(crate::config::Config::into_proto).map_err(|e| {
                    let field = if e.field.is_empty() {
                        "config".to_owned()
                    } else {
                        format!("config ({}): {}", p.display(), e.field)
                    };
                    err(field, e.message)
                })?
            }
            Some(v @ Json::Object(_)) => {
                let text = serde_json::to_string(v).unwrap_or_default();
                crate::config::from_yaml(&text).map(crate::config::Config::into_proto).map_err(|e| {
                    err(
                        if e.field.is_empty() {
                            "config".to_owned()
                        } else {
                            format!("config.{}", e.field)
                        },
                        e.message,
                    )
                })?
            }
            Some(other) => {
                return Err(err(
                    "config",
                    format!(
                        "must be the path of an envoy-smc configuration file or the configuration itself, not {other}"
                    ),
                ))
            }
        };
        if config.mesh_switch.as_ref().is_some_and(|s| s.always_on) {
            return Err(err(
                "config.mesh_switch.always_on",
                "must be false in a mesh: the EnvoyFilter is the switch (deleting it turns SMC off)",
            ));
        }
        let listeners = config.listeners.get_or_insert_with(Listeners::default);
        if listeners.ports.is_empty() {
            listeners.ports.push(u32::from(listener_port));
        } else if !listeners.ports.contains(&u32::from(listener_port)) {
            return Err(err(
                "listener_port",
                format!(
                    "{listener_port} is not one of the configuration's listeners.ports {:?}: the inbound listener would stay TCP",
                    listeners.ports
                ),
            ));
        }

        let mut bootstrap_socket_options = Vec::new();
        for (i, v) in as_list(
            obj.get("bootstrap_socket_options"),
            "bootstrap_socket_options",
        )?
        .iter()
        .enumerate()
        {
            bootstrap_socket_options.push(parse_socket_option(
                v,
                &format!("bootstrap_socket_options[{i}]"),
            )?);
        }

        let bootstrap = match obj.get("bootstrap") {
            None | Some(Json::Null) => BootstrapSource::Template,
            Some(Json::String(s)) if s == "template" => BootstrapSource::Template,
            Some(Json::String(s)) if s == "override" => BootstrapSource::Override,
            Some(other) => {
                return Err(err(
                    "bootstrap",
                    format!("must be \"template\" (the image's bootstrap template) or \"override\" (sidecar.istio.io/bootstrapOverride), not {other}"),
                ))
            }
        };

        let image = match obj.get("image") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let o = as_object(v, "image")?;
                check_fields(o, &["hub", "tag", "image"], "image")?;
                let hub = match o.get("hub") {
                    Some(v) => as_string(v, "image.hub")?,
                    None => {
                        return Err(err(
                            "image.hub",
                            "is required (e.g. registry.example.com/envoy-smc)",
                        ))
                    }
                };
                let tag = match o.get("tag") {
                    Some(v) => as_string(v, "image.tag")?,
                    None => return Err(err("image.tag", "is required")),
                };
                let image = match o.get("image") {
                    Some(v) => as_string(v, "image.image")?,
                    None => "proxyv2".to_owned(),
                };
                for (f, s) in [
                    ("image.hub", &hub),
                    ("image.tag", &tag),
                    ("image.image", &image),
                ] {
                    if s.chars()
                        .any(|c| c.is_whitespace() || c == ':' && f != "image.hub")
                    {
                        return Err(err(f, format!("{s:?} is not part of an image reference")));
                    }
                }
                if !hub.contains('/') && !hub.contains('.') {
                    // Istio uses sidecar.istio.io/proxyImage only if the value contains a '/';
                    // hub/image:tag always does, but a hub without a registry is a likely mistake.
                    return Err(err(
                        "image.hub",
                        format!("{hub:?} names no registry (e.g. registry.example.com/envoy-smc)"),
                    ));
                }
                Some(Image { hub, tag, image })
            }
        };

        let fortio = match obj.get("fortio") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let o = as_object(v, "fortio")?;
                check_fields(o, &["namespace", "image"], "fortio")?;
                let namespace = match o.get("namespace") {
                    Some(v) => as_string(v, "fortio.namespace")?,
                    None => "fortio".to_owned(),
                };
                check_dns_label(&namespace, "fortio.namespace")?;
                let image = match o.get("image") {
                    Some(v) => as_string(v, "fortio.image")?,
                    None => "fortio/fortio:latest_release".to_owned(),
                };
                Some(Fortio { namespace, image })
            }
        };

        let node = match obj.get("node") {
            None | Some(Json::Null) => None,
            Some(v) => Some(parse_node(v)?),
        };

        Ok(Description {
            mesh,
            root_namespace,
            namespaces,
            workloads,
            keep_tcp,
            egress_tcp,
            listener_port,
            proxy_metadata,
            config,
            bootstrap_socket_options,
            bootstrap,
            image,
            fortio,
            node,
        })
    }

    /// The socket option that switches SMC on (from the configuration or the default).
    pub fn enable_option(&self) -> SocketOptionMatch {
        self.config
            .mesh_switch
            .as_ref()
            .and_then(|s| s.enable_option)
            .unwrap_or(crate::config::DEFAULT_ENABLE_OPTION)
    }

    /// The socket option that keeps a cluster on TCP (from the configuration or the default).
    pub fn keep_tcp_option(&self) -> SocketOptionMatch {
        self.config
            .mesh_switch
            .as_ref()
            .and_then(|s| s.keep_tcp_option)
            .unwrap_or(crate::config::DEFAULT_KEEP_TCP_OPTION)
    }

    /// Every namespace a workload of this description runs in (for per-namespace ConfigMaps).
    pub fn workload_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .namespaces
            .iter()
            .chain(self.workloads.iter().map(|w| &w.namespace))
            .chain(self.fortio.iter().map(|f| &f.namespace));
        for ns in all {
            if !out.contains(ns) {
                out.push(ns.clone());
            }
        }
        if out.is_empty() {
            out.push("default".to_owned());
        }
        out
    }
}

fn parse_node(v: &Json) -> Result<Node, RenderError> {
    let o = as_object(v, "node")?;
    check_fields(
        o,
        &["namespace", "exporter", "alerts", "monitor_labels", "agent"],
        "node",
    )?;
    let namespace = match o.get("namespace") {
        None | Some(Json::Null) => "envoy-smc".to_owned(),
        Some(v) => as_string(v, "node.namespace")?,
    };
    check_dns_label(&namespace, "node.namespace")?;
    let exporter = match o.get("exporter") {
        None | Some(Json::Null) => None,
        Some(v) => {
            let e = as_object(v, "node.exporter")?;
            check_fields(e, &["image", "port"], "node.exporter")?;
            let image = node_image(e.get("image"), "node.exporter.image")?;
            let port = match e.get("port") {
                None | Some(Json::Null) => 9977,
                Some(v) => as_port(v, "node.exporter.port")?,
            };
            Some(Exporter { image, port })
        }
    };
    let alerts = as_bool(o.get("alerts"), "node.alerts", false)?;
    let monitor_labels = match o.get("monitor_labels") {
        None | Some(Json::Null) => {
            BTreeMap::from([("release".to_owned(), "kube-prometheus-stack".to_owned())])
        }
        v => string_map(v, "node.monitor_labels")?,
    };
    for (k, val) in &monitor_labels {
        check_label_value(val, &format!("node.monitor_labels.{k}"))?;
    }
    let agent = match o.get("agent") {
        None | Some(Json::Null) => None,
        Some(v) => {
            let a = as_object(v, "node.agent")?;
            check_fields(a, &["image", "uid"], "node.agent")?;
            let image = node_image(a.get("image"), "node.agent.image")?;
            let uid = match a.get("uid") {
                None | Some(Json::Null) => 1337,
                Some(v) => v
                    .as_u64()
                    .and_then(|u| u32::try_from(u).ok())
                    .ok_or_else(|| err("node.agent.uid", format!("must be a uid, not {v}")))?,
            };
            Some(Agent { image, uid })
        }
    };
    if exporter.is_none() && !alerts && agent.is_none() {
        return Err(err(
            "node",
            "describes nothing to render (exporter, alerts or agent)",
        ));
    }
    Ok(Node {
        namespace,
        exporter,
        alerts,
        monitor_labels,
        agent,
    })
}

/// A container image reference: required, no whitespace.
fn node_image(v: Option<&Json>, field: &str) -> Result<String, RenderError> {
    let image = as_string(v.ok_or_else(|| err(field, "is required"))?, field)?;
    if image.chars().any(char::is_whitespace) {
        return Err(err(field, format!("{image:?} is not an image reference")));
    }
    Ok(image)
}

fn parse_keep_tcp(v: &Json, f: &str, root: &str) -> Result<KeepTcp, RenderError> {
    let (cluster, namespace) = match v {
        Json::String(s) => (cluster_from_string(s, f)?, root.to_owned()),
        Json::Object(o) => {
            check_fields(o, &["name", "service", "port", "subset", "namespace"], f)?;
            let namespace = match o.get("namespace") {
                Some(v) => as_string(v, &format!("{f}.namespace"))?,
                None => root.to_owned(),
            };
            check_dns_label(&namespace, &format!("{f}.namespace"))?;
            let cluster = match (o.get("name"), o.get("service")) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        format!("{f}.name"),
                        "give either `name` (the full cluster name) or `service` (with optional `port`/`subset`), not both",
                    ))
                }
                (Some(n), None) => {
                    if o.contains_key("port") || o.contains_key("subset") {
                        return Err(err(
                            format!("{f}.port"),
                            "`port` and `subset` go with `service`, not with `name`",
                        ));
                    }
                    ClusterMatch::Name(as_string(n, &format!("{f}.name"))?)
                }
                (None, Some(s)) => {
                    let service = as_string(s, &format!("{f}.service"))?;
                    check_host(&service, &format!("{f}.service"))?;
                    let port = match o.get("port") {
                        Some(p) => Some(as_port(p, &format!("{f}.port"))?),
                        None => None,
                    };
                    let subset = match o.get("subset") {
                        Some(s) => Some(as_string(s, &format!("{f}.subset"))?),
                        None => None,
                    };
                    ClusterMatch::Service {
                        service,
                        port,
                        subset,
                    }
                }
                (None, None) => {
                    return Err(err(
                        f,
                        "needs `name` (the full cluster name) or `service` (a service host name)",
                    ))
                }
            };
            (cluster, namespace)
        }
        other => {
            return Err(err(
                f,
                format!("must be a cluster name, \"host[:port]\" or a mapping, not {other}"),
            ))
        }
    };
    Ok(KeepTcp { namespace, cluster })
}

/// `outbound|5432||db.ns.svc.cluster.local` and `PassthroughCluster` are cluster names;
/// `db.ns.svc.cluster.local[:5432]` is a service (with a port).
fn cluster_from_string(s: &str, f: &str) -> Result<ClusterMatch, RenderError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(err(f, "must not be empty"));
    }
    if s.contains('|') {
        let parts: Vec<&str> = s.split('|').collect();
        if parts.len() != 4 || !["outbound", "inbound"].contains(&parts[0]) {
            return Err(err(
                f,
                format!("{s:?} is not an Istio cluster name (direction|port|subset|host)"),
            ));
        }
        return Ok(ClusterMatch::Name(s.to_owned()));
    }
    if !s.contains('.') {
        // Istio's own clusters: PassthroughCluster, BlackHoleCluster, ...
        return Ok(ClusterMatch::Name(s.to_owned()));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| err(f, format!("{p:?} in {s:?} is not a port number")))?;
            (h, Some(port))
        }
        None => (s, None),
    };
    check_host(host, f)?;
    Ok(ClusterMatch::Service {
        service: host.to_owned(),
        port,
        subset: None,
    })
}

fn check_host(h: &str, f: &str) -> Result<(), RenderError> {
    let ok = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
    if ok {
        Ok(())
    } else {
        Err(err(f, format!("{h:?} is not a service host name")))
    }
}

/// A socket option in Envoy's JSON form (`core.v3.SocketOption`), checked.
fn parse_socket_option(v: &Json, f: &str) -> Result<Json, RenderError> {
    let o = as_object(v, f)?;
    check_fields(
        o,
        &[
            "description",
            "level",
            "name",
            "int_value",
            "buf_value",
            "state",
        ],
        f,
    )?;
    for key in ["level", "name"] {
        match o.get(key) {
            Some(n) if n.is_i64() => {}
            Some(other) => {
                return Err(err(
                    format!("{f}.{key}"),
                    format!("must be an integer, not {other}"),
                ))
            }
            None => return Err(err(format!("{f}.{key}"), "is required")),
        }
    }
    match (o.get("int_value"), o.get("buf_value")) {
        (Some(n), None) if n.is_i64() => {}
        (None, Some(Json::String(_))) => {}
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{f}.buf_value"),
                "give int_value or buf_value, not both",
            ))
        }
        (Some(other), None) => {
            return Err(err(
                format!("{f}.int_value"),
                format!("must be an integer, not {other}"),
            ))
        }
        (None, Some(other)) => {
            return Err(err(
                format!("{f}.buf_value"),
                format!("must be a base64 string, not {other}"),
            ))
        }
        (None, None) => return Err(err(format!("{f}.int_value"), "is required (or buf_value)")),
    }
    let mut out = o.clone();
    match out.get("state") {
        None => {
            out.insert("state".into(), Json::String("STATE_PREBIND".into()));
        }
        Some(Json::String(s)) if s == "STATE_PREBIND" => {}
        Some(Json::String(s)) if s == "STATE_BOUND" || s == "STATE_LISTENING" => {
            return Err(err(
                format!("{f}.state"),
                format!("{s} is never applied to upstream sockets (Envoy has no such step for client sockets): use STATE_PREBIND"),
            ))
        }
        Some(other) => {
            return Err(err(
                format!("{f}.state"),
                format!("must be STATE_PREBIND, not {other}"),
            ))
        }
    }
    Ok(Json::Object(out))
}
