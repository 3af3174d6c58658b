//! `envoy-smc-agent manifest`: the DaemonSet that runs the agent on every node.
//!
//! What it needs and why (nothing else is granted):
//! - CAP_BPF + CAP_PERFMON: load the program and attach it to a kernel function (tracing
//!   programs need CAP_PERFMON). No CAP_SYS_RESOURCE: on Linux 5.11+ BPF memory is charged to
//!   the cgroup, not to RLIMIT_MEMLOCK, and the agent needs 6.6+ anyway.
//! - CAP_SYS_PTRACE: /proc/<pid>/root of a process of another uid (the sidecars run as 1337).
//! - hostPID: the sidecars' /proc entries. No hostNetwork, no privileged, no CAP_SYS_ADMIN.
//! - read-only hostPath of /sys/fs/cgroup (pods' cgroup ids, and this pod's own place in the
//!   hierarchy); /run/envoy-smc-agent (DirectoryOrCreate) for the state file `status` reads.
//! - /sys/kernel/btf is part of /sys, mounted read-only in every container.
//! - seccomp RuntimeDefault: the container runtimes' default profile allows bpf(2) and
//!   perf_event_open(2) to a container granted CAP_BPF / CAP_PERFMON (not tried here: no
//!   Kubernetes in this test bed; tests/vm/agent-e2e.sh runs the agent with exactly these
//!   three capabilities).
use serde_json::json;

pub struct Params<'a> {
    pub image: &'a str,
    pub namespace: &'a str,
    pub uid: u32,
}

pub fn daemonset(p: &Params) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "envoy-smc-agent",
            "namespace": p.namespace,
            "labels": {"app.kubernetes.io/name": "envoy-smc-agent"}
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "envoy-smc-agent"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "envoy-smc-agent"}},
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_the_bpf_capabilities_and_no_more() {
        let d = daemonset(&Params {
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
}
