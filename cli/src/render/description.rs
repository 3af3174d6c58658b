//! The short description `envoy-smc render` reads: serde types that refuse unknown fields
//! ([`Raw`] and its parts), read with errors that name the field path, then checked and given
//! their defaults in [`Description`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use envoy_smc_core::config::proto::{Listeners, SocketOptionMatch};
use envoy_smc_core::config::SmcConfig;

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
    /// The description gave `config` (the node agent then gets it as its policy ConfigMap).
    pub config_given: bool,
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

/// The agent DaemonSet's image, the uid its sidecars run as, and its privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Holding /usr/local/bin/envoy-smc-agent.
    pub image: String,
    pub uid: u32,
    /// Add CAP_SYS_ADMIN (default false): smc_hs_ctrl and the black-hole watch also in pods'
    /// own network namespaces (`setns`), at the cost of the broadest capability on every node.
    pub cap_sys_admin: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapSource {
    /// The custom image's bootstrap template (no per-pod setting).
    #[default]
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

/// The description as written: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    mesh: Option<bool>,
    root_namespace: Option<String>,
    namespaces: Option<Vec<String>>,
    workloads: Option<Vec<RawWorkload>>,
    /// A cluster name, `host[:port]`, or a [`RawKeepTcp`] mapping.
    keep_tcp: Option<Vec<Json>>,
    egress_tcp: Option<bool>,
    listener_port: Option<u16>,
    /// Absent: the marker; `null` or `{}`: no match.
    #[serde(deserialize_with = "present")]
    proxy_metadata: Option<Option<BTreeMap<String, String>>>,
    /// The path of an envoy-smc configuration file, or the configuration itself.
    config: Option<Json>,
    bootstrap_socket_options: Option<Vec<RawSocketOption>>,
    bootstrap: Option<BootstrapSource>,
    image: Option<RawImage>,
    fortio: Option<RawFortio>,
    node: Option<RawNode>,
}

/// A field that is present, even as `null` (`Some(None)`), apart from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    namespace: String,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeepTcp {
    name: Option<String>,
    service: Option<String>,
    port: Option<u16>,
    subset: Option<String>,
    namespace: Option<String>,
}

/// Envoy's `core.v3.SocketOption` as the bootstrap carries it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocketOption {
    description: Option<String>,
    level: i64,
    name: i64,
    int_value: Option<i64>,
    buf_value: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    hub: String,
    tag: String,
    image: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFortio {
    namespace: Option<String>,
    image: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNode {
    namespace: Option<String>,
    exporter: Option<RawExporter>,
    alerts: Option<bool>,
    monitor_labels: Option<BTreeMap<String, String>>,
    agent: Option<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExporter {
    image: String,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    image: String,
    uid: Option<u32>,
    cap_sys_admin: Option<bool>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError {
        field: field.into(),
        message: message.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Reads `value` (found at `path`) as a `T`; an error names the field path. A missing or an
/// unknown field is named in the path itself (`image.hub: is required`).
fn read<T: DeserializeOwned>(value: &Json, path: &str) -> Result<T, RenderError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut at = path.to_owned();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => at.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => at = join(&at, key),
                _ => {}
            }
        }
        let message = e.inner().to_string();
        let quoted = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        };
        if let Some(name) = quoted("missing field `") {
            return err(join(&at, &name), "is required");
        }
        if let Some(name) = quoted("unknown field `") {
            let at = if at.ends_with(&name) {
                at
            } else {
                join(&at, &name)
            };
            let known = message.split_once(", expected ").map_or("", |(_, k)| k);
            return err(at, format!("unknown field (expected {known})"));
        }
        err(at, message)
    })
}

/// A string that is not empty or only blanks.
fn non_empty(s: String, field: &str) -> Result<String, RenderError> {
    if s.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    Ok(s)
}

fn check_port(port: u16, field: &str) -> Result<u16, RenderError> {
    if port == 0 {
        return Err(err(field, "must be a port number 1-65535, not 0"));
    }
    Ok(port)
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

impl Description {
    /// Parses a description from YAML/JSON text. A relative `config` path is read from `base`.
    pub fn from_yaml(text: &str, base: Option<&Path>) -> Result<Description, RenderError> {
        let value: Json = if text.trim().is_empty() {
            json!({})
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
        if !value.is_object() && !value.is_null() {
            return Err(err("", "the description must be a mapping of fields"));
        }
        let raw: Raw = if value.is_null() {
            Raw::default()
        } else {
            read(value, "")?
        };

        let root_namespace = match raw.root_namespace {
            None => "istio-system".to_owned(),
            Some(s) => non_empty(s, "root_namespace")?,
        };
        check_dns_label(&root_namespace, "root_namespace")?;

        let mut namespaces: Vec<String> = Vec::new();
        for (i, ns) in raw.namespaces.unwrap_or_default().into_iter().enumerate() {
            let f = format!("namespaces[{i}]");
            check_dns_label(&ns, &f)?;
            if namespaces.contains(&ns) {
                return Err(err(f, format!("{ns:?} is listed twice")));
            }
            namespaces.push(ns);
        }

        let mut workloads: Vec<Workload> = Vec::new();
        for (i, w) in raw.workloads.unwrap_or_default().into_iter().enumerate() {
            let f = format!("workloads[{i}]");
            let workload = workload(w, &f)?;
            if workloads
                .iter()
                .any(|o| o.namespace == workload.namespace && o.name == workload.name)
            {
                return Err(err(
                    format!("{f}.name"),
                    format!(
                        "workload {}/{} is listed twice",
                        workload.namespace, workload.name
                    ),
                ));
            }
            workloads.push(workload);
        }

        let mut keep_tcp = Vec::new();
        for (i, v) in raw.keep_tcp.unwrap_or_default().iter().enumerate() {
            let f = format!("keep_tcp[{i}]");
            let k = parse_keep_tcp(v, &f, &root_namespace)?;
            if keep_tcp.contains(&k) {
                return Err(err(f, "is listed twice"));
            }
            keep_tcp.push(k);
        }

        let listener_port = check_port(raw.listener_port.unwrap_or(15006), "listener_port")?;
        let proxy_metadata = match raw.proxy_metadata {
            None => {
                BTreeMap::from([(super::MARKER_KEY.to_owned(), super::MARKER_VALUE.to_owned())])
            }
            Some(m) => m.unwrap_or_default(),
        };

        let config_given = !matches!(raw.config, None | Some(Json::Null));
        let mut config = smc_config(raw.config.as_ref(), base)?;
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

        let bootstrap_socket_options = raw
            .bootstrap_socket_options
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, o)| socket_option(o, &format!("bootstrap_socket_options[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Description {
            mesh: raw.mesh.unwrap_or(false),
            root_namespace,
            namespaces,
            workloads,
            keep_tcp,
            egress_tcp: raw.egress_tcp.unwrap_or(true),
            listener_port,
            proxy_metadata,
            config,
            config_given,
            bootstrap_socket_options,
            bootstrap: raw.bootstrap.unwrap_or_default(),
            image: raw.image.map(image).transpose()?,
            fortio: raw.fortio.map(fortio).transpose()?,
            node: raw.node.map(node).transpose()?,
        })
    }

    /// The socket option that switches SMC on (from the configuration or the default).
    pub fn enable_option(&self) -> SocketOptionMatch {
        self.config
            .mesh_switch
            .as_ref()
            .and_then(|s| s.enable_option)
            .unwrap_or(envoy_smc_core::config::DEFAULT_ENABLE_OPTION)
    }

    /// The socket option that keeps a cluster on TCP (from the configuration or the default).
    pub fn keep_tcp_option(&self) -> SocketOptionMatch {
        self.config
            .mesh_switch
            .as_ref()
            .and_then(|s| s.keep_tcp_option)
            .unwrap_or(envoy_smc_core::config::DEFAULT_KEEP_TCP_OPTION)
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

fn workload(w: RawWorkload, f: &str) -> Result<Workload, RenderError> {
    check_dns_label(&w.namespace, &format!("{f}.namespace"))?;
    let labels = w.labels.unwrap_or_default();
    if labels.is_empty() {
        return Err(err(
            format!("{f}.labels"),
            "is required: the pod labels that select the workload (workloadSelector)",
        ));
    }
    for (k, v) in &labels {
        check_label_value(v, &format!("{f}.labels.{k}"))?;
    }
    let name = match w.name {
        Some(name) => name,
        None => labels.get("app").cloned().ok_or_else(|| {
            err(
                format!("{f}.name"),
                "is required when the labels have no `app` label",
            )
        })?,
    };
    check_dns_label(&name, &format!("{f}.name"))?;
    Ok(Workload {
        namespace: w.namespace,
        name,
        labels,
    })
}

/// The `config` field: a configuration file (relative to `base`) or the configuration itself,
/// read by the envoy-smc loader (the same one every entry point uses).
fn smc_config(v: Option<&Json>, base: Option<&Path>) -> Result<SmcConfig, RenderError> {
    let named = |e: envoy_smc_core::ConfigError, prefix: String| {
        let field = if e.field.is_empty() {
            "config".to_owned()
        } else {
            format!("{prefix}{}", e.field)
        };
        err(field, e.message)
    };
    match v {
        None | Some(Json::Null) => Ok(SmcConfig::default()),
        Some(Json::String(path)) => {
            let mut p = PathBuf::from(path);
            if p.is_relative() {
                if let Some(base) = base {
                    p = base.join(p);
                }
            }
            envoy_smc_core::config::from_file(&p)
                .map(envoy_smc_core::config::Config::into_proto)
                .map_err(|e| named(e, format!("config ({}): ", p.display())))
        }
        Some(v @ Json::Object(_)) => {
            let text = serde_json::to_string(v).unwrap_or_default();
            envoy_smc_core::config::from_yaml(&text)
                .map(envoy_smc_core::config::Config::into_proto)
                .map_err(|e| named(e, "config.".to_owned()))
        }
        Some(other) => Err(err(
            "config",
            format!(
                "must be the path of an envoy-smc configuration file or the configuration itself, not {other}"
            ),
        )),
    }
}

fn image(i: RawImage) -> Result<Image, RenderError> {
    let hub = non_empty(i.hub, "image.hub")?;
    let tag = non_empty(i.tag, "image.tag")?;
    let image = non_empty(
        i.image.unwrap_or_else(|| "proxyv2".to_owned()),
        "image.image",
    )?;
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
    Ok(Image { hub, tag, image })
}

fn fortio(f: RawFortio) -> Result<Fortio, RenderError> {
    let namespace = f.namespace.unwrap_or_else(|| "fortio".to_owned());
    check_dns_label(&namespace, "fortio.namespace")?;
    let image = non_empty(
        f.image
            .unwrap_or_else(|| "fortio/fortio:latest_release".to_owned()),
        "fortio.image",
    )?;
    Ok(Fortio { namespace, image })
}

fn node(n: RawNode) -> Result<Node, RenderError> {
    let namespace = n.namespace.unwrap_or_else(|| "envoy-smc".to_owned());
    check_dns_label(&namespace, "node.namespace")?;
    let exporter = match n.exporter {
        None => None,
        Some(e) => Some(Exporter {
            image: image_reference(e.image, "node.exporter.image")?,
            port: check_port(e.port.unwrap_or(9977), "node.exporter.port")?,
        }),
    };
    let alerts = n.alerts.unwrap_or(false);
    let monitor_labels = n.monitor_labels.unwrap_or_else(|| {
        BTreeMap::from([("release".to_owned(), "kube-prometheus-stack".to_owned())])
    });
    for (k, val) in &monitor_labels {
        check_label_value(val, &format!("node.monitor_labels.{k}"))?;
    }
    let agent = match n.agent {
        None => None,
        Some(a) => Some(Agent {
            image: image_reference(a.image, "node.agent.image")?,
            uid: a.uid.unwrap_or(1337),
            cap_sys_admin: a.cap_sys_admin.unwrap_or(false),
        }),
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

/// A container image reference: not empty, no whitespace.
fn image_reference(image: String, field: &str) -> Result<String, RenderError> {
    let image = non_empty(image, field)?;
    if image.chars().any(char::is_whitespace) {
        return Err(err(field, format!("{image:?} is not an image reference")));
    }
    Ok(image)
}

fn parse_keep_tcp(v: &Json, f: &str, root: &str) -> Result<KeepTcp, RenderError> {
    let o: RawKeepTcp = match v {
        Json::String(s) => {
            return Ok(KeepTcp {
                namespace: root.to_owned(),
                cluster: cluster_from_string(s, f)?,
            })
        }
        Json::Object(_) => read(v, f)?,
        other => {
            return Err(err(
                f,
                format!("must be a cluster name, \"host[:port]\" or a mapping, not {other}"),
            ))
        }
    };
    let namespace = o.namespace.unwrap_or_else(|| root.to_owned());
    check_dns_label(&namespace, &format!("{f}.namespace"))?;
    let cluster = match (o.name, o.service) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{f}.name"),
                "give either `name` (the full cluster name) or `service` (with optional `port`/`subset`), not both",
            ))
        }
        (Some(n), None) => {
            if o.port.is_some() || o.subset.is_some() {
                return Err(err(
                    format!("{f}.port"),
                    "`port` and `subset` go with `service`, not with `name`",
                ));
            }
            ClusterMatch::Name(non_empty(n, &format!("{f}.name"))?)
        }
        (None, Some(service)) => {
            check_host(&service, &format!("{f}.service"))?;
            ClusterMatch::Service {
                service,
                port: o
                    .port
                    .map(|p| check_port(p, &format!("{f}.port")))
                    .transpose()?,
                subset: o
                    .subset
                    .map(|s| non_empty(s, &format!("{f}.subset")))
                    .transpose()?,
            }
        }
        (None, None) => {
            return Err(err(
                f,
                "needs `name` (the full cluster name) or `service` (a service host name)",
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

/// A bootstrap-wide socket option, checked, in Envoy's JSON form (`core.v3.SocketOption`).
fn socket_option(o: RawSocketOption, f: &str) -> Result<Json, RenderError> {
    let mut out = json!({"level": o.level, "name": o.name});
    match (o.int_value, o.buf_value) {
        (Some(v), None) => out["int_value"] = json!(v),
        (None, Some(b)) => out["buf_value"] = json!(b),
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{f}.buf_value"),
                "give int_value or buf_value, not both",
            ))
        }
        (None, None) => return Err(err(format!("{f}.int_value"), "is required (or buf_value)")),
    }
    if let Some(d) = o.description {
        out["description"] = json!(d);
    }
    // Envoy reads enum names in any case (see config/json.rs); the output spells them in full.
    let state = o.state.as_deref().map(str::to_ascii_uppercase);
    match state.as_deref() {
        None | Some("STATE_PREBIND") => out["state"] = json!("STATE_PREBIND"),
        Some(s @ ("STATE_BOUND" | "STATE_LISTENING")) => {
            return Err(err(
                format!("{f}.state"),
                format!("{s} is never applied to upstream sockets (Envoy has no such step for client sockets): use STATE_PREBIND"),
            ))
        }
        Some(_) => {
            return Err(err(
                format!("{f}.state"),
                format!("must be STATE_PREBIND, not {:?}", o.state.unwrap_or_default()),
            ))
        }
    }
    Ok(out)
}
