//! The node-level manifests (`node/`): the exporter DaemonSet with its Service and PodMonitor,
//! the PrometheusRule, and the BPF node agent's DaemonSet. [`agent_daemonset`] is the one
//! definition of the agent's DaemonSet: `envoy-smc-agent manifest` prints it too.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::{Description, Exporter, Node, RenderedFile};

/// The alert rules `promtool` checks (monitoring/check.sh), compiled in: the PrometheusRule's
/// groups are read from this one source.
pub const ALERT_RULES: &str = include_str!("../../../monitoring/envoy-smc.rules.yaml");

const EXPORTER_NAME: &str = "envoy-smc-node";
const AGENT_NAME: &str = "envoy-smc-agent";

/// What varies in the agent's DaemonSet.
pub struct AgentParams<'a> {
    /// Holding /usr/local/bin/envoy-smc-agent.
    pub image: &'a str,
    pub namespace: &'a str,
    /// The uid the sidecars run as.
    pub uid: u32,
}

/// The DaemonSet that runs `envoy-smc-agent run` on every node.
///
/// What it needs and why (nothing else is granted):
/// - CAP_BPF + CAP_PERFMON: load the program and attach it to a kernel function (tracing
///   programs need CAP_PERFMON). No CAP_SYS_RESOURCE: on Linux 5.11+ BPF memory is charged to
///   the cgroup, not to RLIMIT_MEMLOCK, and the agent needs 6.6+ anyway.
/// - CAP_SYS_PTRACE: /proc/<pid>/root of a process of another uid (the sidecars run as 1337).
/// - hostPID: the sidecars' /proc entries. No hostNetwork, no privileged, no CAP_SYS_ADMIN.
/// - read-only hostPath of /sys/fs/cgroup (pods' cgroup ids, and this pod's own place in the
///   hierarchy); /run/envoy-smc-agent (DirectoryOrCreate) for the state file `status` reads.
/// - /sys/kernel/btf is part of /sys, mounted read-only in every container.
/// - seccomp RuntimeDefault: the container runtimes' default profile allows bpf(2) and
///   perf_event_open(2) to a container granted CAP_BPF / CAP_PERFMON (not tried here: no
///   Kubernetes in this test bed; tests/vm/agent-e2e.sh runs the agent with exactly these
///   three capabilities).
pub fn agent_daemonset(p: &AgentParams) -> Json {
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
                "metadata": {"labels": {"app.kubernetes.io/name": AGENT_NAME}},
                "spec": {
                    "hostPID": true,
                    "automountServiceAccountToken": false,
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [{
                        "name": "agent",
                        "image": p.image,
                        "command": ["/usr/local/bin/envoy-smc-agent", "run",
                                    "--uid", p.uid.to_string(),
                                    "--cgroup-root", "/host/sys/fs/cgroup",
                                    "--state-file", "/run/envoy-smc-agent/state.json"],
                        "securityContext": {
                            "runAsUser": 0,
                            "privileged": false,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_PTRACE"]},
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "32Mi"},
                            "limits": {"memory": "128Mi"}
                        },
                        "volumeMounts": [
                            {"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": true},
                            {"name": "state", "mountPath": "/run/envoy-smc-agent"}
                        ]
                    }],
                    "volumes": [
                        {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
                        {"name": "state", "hostPath": {"path": "/run/envoy-smc-agent", "type": "DirectoryOrCreate"}}
                    ]
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
        out.push(RenderedFile {
            path: "node/agent.yaml".into(),
            header: vec![
                "The BPF node agent (envoy-smc-agent run) on every node: opted-in pods' stock sidecars on".into(),
                "SMC, no custom image (agent/README.md). Capabilities BPF, PERFMON, SYS_PTRACE; hostPID; the".into(),
                "host's /sys/fs/cgroup read-only. `envoy-smc-agent manifest` prints the same DaemonSet.".into(),
                "Generated by `envoy-smc render`.".into(),
            ],
            documents: vec![agent_daemonset(&AgentParams {
                image: &a.image,
                namespace: &n.namespace,
                uid: a.uid,
            })],
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

    #[test]
    fn agent_gets_the_bpf_capabilities_and_no_more() {
        let d = agent_daemonset(&AgentParams {
            image: "registry.example/envoy-smc-agent:0.1",
            namespace: "istio-system",
            uid: 1337,
        });
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
        assert_eq!(d["metadata"]["namespace"], json!("istio-system"));
    }

    #[test]
    fn alert_groups_are_the_rules_file() {
        let groups = alert_groups();
        assert_eq!(groups[0]["name"], "envoy-smc");
        assert!(groups[0]["rules"].as_array().is_some_and(|r| r.len() >= 3));
    }
}
