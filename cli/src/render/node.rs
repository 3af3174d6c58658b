//! The node-level manifests (`node/`): the exporter DaemonSet with its Service and PodMonitor,
//! the PrometheusRule, and the BPF node agent's DaemonSet with its policy ConfigMap.
//! [`agent_manifests`] is the one definition of the agent's manifests: `envoy-smc-agent manifest`
//! prints them too.

use std::collections::BTreeMap;

use envoy_smc_core::config::SmcConfig;
use serde_json::{json, Value as Json};

use super::{Description, Exporter, Node, RenderedFile};

/// The alert rules `promtool` checks (monitoring/check.sh), compiled in: the PrometheusRule's
/// groups are read from this one source.
pub const ALERT_RULES: &str = include_str!("../../../monitoring/envoy-smc.rules.yaml");

const EXPORTER_NAME: &str = "envoy-smc-node";
const AGENT_NAME: &str = "envoy-smc-agent";

/// The ConfigMap holding the agent's policy, mounted read-only at [`AGENT_CONFIG_DIR`].
pub const AGENT_CONFIGMAP: &str = "envoy-smc-agent-config";
/// Where the agent's container sees [`AGENT_CONFIGMAP`].
pub const AGENT_CONFIG_DIR: &str = "/etc/envoy-smc-agent";
/// The ConfigMap's key: the envoy-smc configuration file `run --config` reads.
pub const AGENT_CONFIG_KEY: &str = "smc.yaml";
/// The pod template annotation carrying a hash of the policy: a changed policy changes the
/// template, so applying it rolls the DaemonSet (the agent reads `--config` once, at start).
pub const AGENT_CONFIG_HASH_ANNOTATION: &str = "envoy-smc.io/agent-config-hash";

/// What varies in the agent's manifests.
pub struct AgentParams<'a> {
    /// Holding /usr/local/bin/envoy-smc-agent.
    pub image: &'a str,
    pub namespace: &'a str,
    /// The uid the sidecars run as.
    pub uid: u32,
    /// The envoy-smc configuration the agent applies per destination (`run --config`): upstream
    /// allow/deny CIDRs and ports, adaptive fallback. `None`: no ConfigMap, the agent's defaults.
    pub config: Option<&'a SmcConfig>,
    /// Grant CAP_SYS_ADMIN, for smc_hs_ctrl and the black-hole watch in pods' own network
    /// namespaces (setns); see [`agent_daemonset`].
    pub cap_sys_admin: bool,
}

/// The agent's policy as the YAML file `envoy-smc-agent run --config` reads: the configuration
/// as the bootstrap's typed_config carries it (proto3 JSON mapping, defaults left out).
pub fn agent_policy_yaml(config: &SmcConfig) -> String {
    serde_yaml::to_string(&super::config_json(config)).unwrap_or_default()
}

/// The agent's manifests: the policy ConfigMap (when a configuration is given), then the
/// DaemonSet.
pub fn agent_manifests(p: &AgentParams) -> Vec<Json> {
    let mut docs = Vec::new();
    let mut policy = None;
    if let Some(config) = p.config {
        let text = agent_policy_yaml(config);
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": AGENT_CONFIGMAP,
                "namespace": p.namespace,
                "labels": {"app.kubernetes.io/name": AGENT_NAME},
            },
            "data": {AGENT_CONFIG_KEY: text},
        }));
        policy = Some(fnv1a64(
            docs[0]["data"][AGENT_CONFIG_KEY].as_str().unwrap_or(""),
        ));
    }
    docs.push(agent_daemonset(p, policy));
    docs
}

/// FNV-1a, 64 bits: a change detector for [`AGENT_CONFIG_HASH_ANNOTATION`], not a security hash.
fn fnv1a64(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The DaemonSet that runs `envoy-smc-agent run` on every node; `policy_hash`: the hash of the
/// policy ConfigMap's file, which it then mounts and passes as `--config`.
///
/// What it needs and why (nothing else is granted):
/// - CAP_BPF + CAP_PERFMON: load the program and attach it to a kernel function (tracing
///   programs need CAP_PERFMON). No CAP_SYS_RESOURCE: on Linux 5.11+ BPF memory is charged to
///   the cgroup, not to RLIMIT_MEMLOCK, and the agent needs 6.6+ anyway.
/// - CAP_SYS_PTRACE: /proc/<pid>/root of a process of another uid (the sidecars run as 1337).
/// - hostPID: the sidecars' /proc entries. No hostNetwork, no privileged.
/// - CAP_SYS_ADMIN only when asked ([`AgentParams::cap_sys_admin`], default off): `setns` into
///   a pod's own network namespace, to select smc_hs_ctrl there (`net.smc.hs_ctrl` is per
///   namespace) and to read its smc_diag/inet_diag for the black-hole watch. Without it those
///   pods keep per-pod decisions only and `status` says why per namespace. It is the broadest
///   capability (mount, namespaces, most of the administrative syscalls) on every node, for a
///   container that already has hostPID and CAP_SYS_PTRACE: grant it where per-destination
///   decisions matter on a 6.19+ kernel, not by default.
/// - read-only hostPath of /sys/fs/cgroup (pods' cgroup ids, and this pod's own place in the
///   hierarchy); /run/envoy-smc-agent (DirectoryOrCreate) for the state file `status` reads;
///   the policy ConfigMap read-only, when there is one.
/// - /sys/kernel/btf is part of /sys, mounted read-only in every container.
/// - seccomp RuntimeDefault: the container runtimes' default profile allows bpf(2) and
///   perf_event_open(2) to a container granted CAP_BPF / CAP_PERFMON (not tried here: no
///   Kubernetes in this test bed; tests/vm/agent-e2e.sh runs the agent with exactly these
///   three capabilities, tests/vm/agent-hsctrl.sh also with CAP_SYS_ADMIN added).
fn agent_daemonset(p: &AgentParams, policy_hash: Option<String>) -> Json {
    let mut command = vec![
        "/usr/local/bin/envoy-smc-agent".to_owned(),
        "run".to_owned(),
        "--uid".to_owned(),
        p.uid.to_string(),
        "--cgroup-root".to_owned(),
        "/host/sys/fs/cgroup".to_owned(),
        "--state-file".to_owned(),
        "/run/envoy-smc-agent/state.json".to_owned(),
    ];
    let mut caps = vec!["BPF", "PERFMON", "SYS_PTRACE"];
    if p.cap_sys_admin {
        caps.push("SYS_ADMIN");
    }
    let mut mounts = vec![
        json!({"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": true}),
        json!({"name": "state", "mountPath": "/run/envoy-smc-agent"}),
    ];
    let mut volumes = vec![
        json!({"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}),
        json!({"name": "state", "hostPath": {"path": "/run/envoy-smc-agent", "type": "DirectoryOrCreate"}}),
    ];
    let mut template_metadata = json!({"labels": {"app.kubernetes.io/name": AGENT_NAME}});
    if let Some(hash) = policy_hash {
        command.push("--config".to_owned());
        command.push(format!("{AGENT_CONFIG_DIR}/{AGENT_CONFIG_KEY}"));
        mounts.push(json!({"name": "config", "mountPath": AGENT_CONFIG_DIR, "readOnly": true}));
        volumes.push(json!({"name": "config", "configMap": {"name": AGENT_CONFIGMAP}}));
        template_metadata["annotations"] = json!({AGENT_CONFIG_HASH_ANNOTATION: hash});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": AGENT_NAME,
            "namespace": p.namespace,
            "labels": {"app.kubernetes.io/name": AGENT_NAME}
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": template_metadata,
                "spec": {
                    "hostPID": true,
                    "automountServiceAccountToken": false,
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [{
                        "name": "agent",
                        "image": p.image,
                        "command": command,
                        "securityContext": {
                            "runAsUser": 0,
                            "privileged": false,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"], "add": caps},
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "32Mi"},
                            "limits": {"memory": "128Mi"}
                        },
                        "volumeMounts": mounts
                    }],
                    "volumes": volumes
                }
            }
        }
    })
}

/// The rule groups of [`ALERT_RULES`].
pub fn alert_groups() -> Json {
    let rules: Json = serde_yaml::from_str(ALERT_RULES)
        .expect("monitoring/envoy-smc.rules.yaml is valid YAML (tests/monitoring.rs)");
    rules["groups"].clone()
}

/// The node files the description asks for.
pub(super) fn render(d: &Description, out: &mut Vec<RenderedFile>) {
    let Some(n) = &d.node else { return };
    out.push(RenderedFile {
        path: "node/namespace.yaml".into(),
        header: vec![
            "The namespace of the node-level manifests (node/*.yaml): apply it first.".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": n.namespace},
        })],
    });
    if let Some(e) = &n.exporter {
        out.push(exporter(n, e));
    }
    if n.alerts {
        out.push(prometheus_rule(n));
    }
    if let Some(a) = &n.agent {
        let mut header = vec![
            "The BPF node agent (envoy-smc-agent run) on every node: opted-in pods' stock sidecars on".into(),
            format!(
                "SMC, no custom image (agent/README.md). Capabilities {}; hostPID; the",
                if a.cap_sys_admin { "BPF, PERFMON, SYS_PTRACE, SYS_ADMIN" } else { "BPF, PERFMON, SYS_PTRACE" }
            ),
            format!(
                "host's /sys/fs/cgroup read-only. `envoy-smc-agent manifest` prints the same {}.",
                if d.config_given { "manifests" } else { "DaemonSet" }
            ),
        ];
        if a.cap_sys_admin {
            header.push("SYS_ADMIN (node.agent.cap_sys_admin): setns into pods' own network namespaces, for".into());
            header.push("smc_hs_ctrl and the black-hole watch there; the broadest capability, on every node.".into());
        }
        if d.config_given {
            header.push(format!(
                "The ConfigMap {AGENT_CONFIGMAP} is the description's envoy-smc configuration (upstream allow/deny,"
            ));
            header.push(
                "adaptive_fallback: applied per destination where the kernel has smc_hs_ctrl), read at start:".into(),
            );
            header.push("its hash in the pod template rolls the DaemonSet when it changes.".into());
        }
        header.push("Generated by `envoy-smc render`.".into());
        out.push(RenderedFile {
            path: "node/agent.yaml".into(),
            header,
            documents: agent_manifests(&AgentParams {
                image: &a.image,
                namespace: &n.namespace,
                uid: a.uid,
                config: d.config_given.then_some(&d.config),
                cap_sys_admin: a.cap_sys_admin,
            }),
        });
    }
}

fn labels(extra: &BTreeMap<String, String>, name: &str) -> Json {
    let mut l = json!({"app.kubernetes.io/name": name});
    for (k, v) in extra {
        l[k] = json!(v);
    }
    l
}

fn exporter(n: &Node, e: &Exporter) -> RenderedFile {
    let ns = &n.namespace;
    let selector = json!({"app.kubernetes.io/name": EXPORTER_NAME});
    let daemonset = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": EXPORTER_NAME, "namespace": ns, "labels": selector},
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "hostPID": true,
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "exporter",
                        "image": e.image,
                        "command": ["/usr/local/bin/envoy-smc"],
                        "args": ["exporter", "--listen", format!("0.0.0.0:{}", e.port),
                                 "--state-dir", "/tmp/envoy-smc"],
                        "ports": [{"name": "metrics", "containerPort": e.port, "protocol": "TCP"}],
                        // Ready when the node can carry SMC-R (doctor exits 0); the exporter is
                        // scraped either way and says so in envoy_smc_doctor_ready.
                        "readinessProbe": {
                            "exec": {"command": ["/usr/local/bin/envoy-smc", "doctor"]},
                            "periodSeconds": 60,
                            "timeoutSeconds": 20,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/", "port": "metrics"},
                            "periodSeconds": 30,
                            "timeoutSeconds": 10,
                        },
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"memory": "64Mi"},
                        },
                        "securityContext": {
                            "runAsUser": 0,
                            "privileged": false,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {
                                "drop": ["ALL"],
                                "add": ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"],
                            },
                        },
                        // doctor looks for the smc, smc_diag and RDMA modules.
                        "volumeMounts": [{"name": "modules", "mountPath": "/lib/modules", "readOnly": true}],
                    }],
                    "volumes": [{"name": "modules", "hostPath": {"path": "/lib/modules"}}],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": EXPORTER_NAME, "namespace": ns, "labels": selector},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "metrics", "port": e.port, "targetPort": "metrics"}],
        },
    });
    let pod_monitor = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            "name": EXPORTER_NAME,
            "namespace": ns,
            "labels": labels(&n.monitor_labels, EXPORTER_NAME),
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "podMetricsEndpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": "30s",
                // Series labelled by the node, not the pod IP (hostNetwork: the node's).
                "relabelings": [{
                    "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                    "targetLabel": "instance",
                }],
            }],
        },
    });
    RenderedFile {
        path: "node/exporter.yaml".into(),
        header: vec![
            "`envoy-smc exporter` on every node, its Service and PodMonitor (docs/operations.md, \"Watch it\").".into(),
            "The image only needs the envoy-smc binary at /usr/local/bin/envoy-smc. Capabilities, and nothing else:".into(),
            "  SYS_ADMIN        setns into each pod's network and UTS namespace (from a helper thread)".into(),
            "  SYS_PTRACE       open /proc/<pid>/ns/*, /proc/<pid>/fd and /proc/<pid>/root of other users".into(),
            "  DAC_READ_SEARCH  read the proxies' state directories (0700, owned by the proxy's uid)".into(),
            "No NET_ADMIN: smc_diag dumps and the SMC counters are readable without it. hostPID shows every".into(),
            "pod's processes in /proc; hostNetwork serves /metrics on the node's address.".into(),
            "Generated by `envoy-smc render`.".into(),
        ],
        documents: vec![daemonset, service, pod_monitor],
    }
}

fn prometheus_rule(n: &Node) -> RenderedFile {
    RenderedFile {
        path: "node/prometheusrule.yaml".into(),
        header: vec![
            "The alerts of monitoring/envoy-smc.rules.yaml (promtool-checked) for the Prometheus Operator,".into(),
            "which picks up PrometheusRules whose labels match its ruleSelector (node.monitor_labels).".into(),
            "Generated by `envoy-smc render` from that file: edit it, not this one.".into(),
        ],
        documents: vec![json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": "envoy-smc",
                "namespace": n.namespace,
                "labels": labels(&n.monitor_labels, "envoy-smc"),
            },
            "spec": {"groups": alert_groups()},
        })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(config: Option<&SmcConfig>, cap_sys_admin: bool) -> AgentParams<'_> {
        AgentParams {
            image: "registry.example/envoy-smc-agent:0.1",
            namespace: "istio-system",
            uid: 1337,
            config,
            cap_sys_admin,
        }
    }

    #[test]
    fn agent_gets_the_bpf_capabilities_and_no_more() {
        let docs = agent_manifests(&params(None, false));
        assert_eq!(docs.len(), 1, "no configuration: no ConfigMap");
        let d = &docs[0];
        let spec = &d["spec"]["template"]["spec"];
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            sc["capabilities"]["add"],
            json!(["BPF", "PERFMON", "SYS_PTRACE"])
        );
        assert_eq!(sc["privileged"], json!(false));
        assert_eq!(spec["hostPID"], json!(true));
        assert!(spec.get("hostNetwork").is_none());
        let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
        assert_eq!(
            mounts
                .iter()
                .filter(|m| m["readOnly"] == json!(true))
                .count(),
            1
        );
        assert!(!spec["containers"][0]["command"]
            .as_array()
            .unwrap()
            .contains(&json!("--config")));
        assert_eq!(d["metadata"]["namespace"], json!("istio-system"));
    }

    #[test]
    fn sys_admin_only_when_asked() {
        let docs = agent_manifests(&params(None, true));
        assert_eq!(
            docs[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
                ["add"],
            json!(["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"])
        );
    }

    #[test]
    fn the_policy_is_a_configmap_mounted_read_only_and_passed_as_config() {
        let config = envoy_smc_core::config::from_yaml(
            "upstream:\n  allow: [\"10.9.0.0/24\"]\n  deny: [\"10.9.0.3/32\"]\n  deny_ports: [\"9999\", \"7000-7010\"]\nadaptive_fallback:\n  hold_down_ms: 120000\n",
        )
        .unwrap();
        let docs = agent_manifests(&params(Some(config.proto()), false));
        assert_eq!(docs.len(), 2);
        let (cm, ds) = (&docs[0], &docs[1]);
        assert_eq!(cm["kind"], "ConfigMap");
        assert_eq!(cm["metadata"]["name"], AGENT_CONFIGMAP);
        assert_eq!(cm["metadata"]["namespace"], "istio-system");
        // The file reads back as the same compiled configuration.
        let text = cm["data"][AGENT_CONFIG_KEY].as_str().unwrap();
        assert_eq!(envoy_smc_core::config::from_yaml(text).unwrap(), config);
        let pod = &ds["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        let command: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = command.iter().position(|a| *a == "--config").unwrap();
        assert_eq!(command[at + 1], "/etc/envoy-smc-agent/smc.yaml");
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "config", "mountPath": AGENT_CONFIG_DIR, "readOnly": true})));
        assert!(pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "config", "configMap": {"name": AGENT_CONFIGMAP}})));
        // A changed policy changes the pod template (the DaemonSet rolls).
        let hash = pod["metadata"]["annotations"][AGENT_CONFIG_HASH_ANNOTATION].clone();
        assert!(hash.is_string());
        let other =
            envoy_smc_core::config::from_yaml("upstream:\n  deny_ports: [\"9998\"]\n").unwrap();
        let docs2 = agent_manifests(&params(Some(other.proto()), false));
        assert_ne!(
            docs2[1]["spec"]["template"]["metadata"]["annotations"][AGENT_CONFIG_HASH_ANNOTATION],
            hash
        );
        // Still no privilege beyond the three capabilities.
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["BPF", "PERFMON", "SYS_PTRACE"])
        );
    }

    #[test]
    fn alert_groups_are_the_rules_file() {
        let groups = alert_groups();
        assert_eq!(groups[0]["name"], "envoy-smc");
        assert!(groups[0]["rules"].as_array().is_some_and(|r| r.len() >= 3));
    }
}
