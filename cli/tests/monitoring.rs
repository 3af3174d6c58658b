//! The rendered node manifests (envoy-config/node/, written by `envoy-smc render`; the drift
//! check is tests/envoy_config.rs): the PrometheusRule for the Prometheus Operator carries exactly
//! the rule groups that `promtool` checks and unit-tests (monitoring/check.sh, run by
//! scripts/test.sh), every metric the alerts use is one `envoy-smc exporter` serves, and the
//! exporter and agent DaemonSets get the capabilities they need and no more.

use serde_json::Value;

/// The repository root (this crate is cli/).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    // Skip the generated files' comment header and document marker.
    let mut all = docs_of(&text, path);
    assert_eq!(all.len(), 1, "{path}: one document");
    all.remove(0)
}

fn docs_of(text: &str, path: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn prometheusrule_groups_are_the_promtool_checked_ones() {
    let plain = yaml("monitoring/envoy-smc.rules.yaml");
    let cr = yaml("envoy-config/node/prometheusrule.yaml");
    assert_eq!(cr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(cr["spec"]["groups"], plain["groups"]);
}

#[test]
fn alerts_use_only_metrics_the_exporter_or_the_proxies_serve() {
    let exporter =
        std::fs::read_to_string(format!("{ROOT}/cli/src/bin/envoy-smc/exporter/metrics.rs"))
            .unwrap();
    // The proxies' counters, as Envoy's /stats/prometheus and the preload stats file name them.
    let proxy: Vec<String> = envoy_smc_core::stats::SLOTS
        .iter()
        .map(|s| {
            envoy_smc_core::stats::prometheus_name(&format!(
                "{}{}",
                envoy_smc_core::stats::ENVOY_STAT_PREFIX,
                s.name()
            ))
        })
        .collect();
    // The two families never share a name (docs/operations.md, "Metrics").
    for p in &proxy {
        assert!(
            !exporter.contains(&format!("\"{p}\"")),
            "{p} is both a proxy counter and an exporter metric"
        );
    }
    let plain = yaml("monitoring/envoy-smc.rules.yaml");
    let mut n = 0;
    for group in plain["groups"].as_array().unwrap() {
        let of_proxies = group["name"] == "envoy-smc-proxy";
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("envoy_smc_") {
                    let known = if of_proxies {
                        proxy.iter().any(|p| p == word)
                    } else {
                        exporter.contains(&format!("\"{word}\""))
                    };
                    assert!(
                        known,
                        "{}: {word} is not a metric of the {}",
                        rule["alert"],
                        if of_proxies { "proxies" } else { "exporter" }
                    );
                    n += 1;
                }
            }
        }
    }
    assert!(n >= 6);
}

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    docs_of(&text, path)
}

fn kind<'a>(all: &'a [Value], k: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn node_agent_runs_the_exporter_with_the_capabilities_it_needs_and_no_more() {
    let all = docs("envoy-config/node/exporter.yaml");
    let ds = kind(&all, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the exporter reads every pod's /proc");
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..3], ["exporter", "--listen", "0.0.0.0:9977"]);
    assert_eq!(c["ports"][0]["containerPort"], 9977);
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["readinessProbe"]["exec"]["command"][1], "doctor");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    let labels = &ds["spec"]["selector"]["matchLabels"];
    assert_eq!(&ds["spec"]["template"]["metadata"]["labels"], labels);
    let svc = kind(&all, "Service");
    assert_eq!(&svc["spec"]["selector"], labels);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    let pm = kind(&all, "PodMonitor");
    assert_eq!(&pm["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    // The CLI really has these arguments.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envoy-smc"))
        .args(["exporter", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(a), "exporter has no {a}: {help}");
    }
}

#[test]
fn node_agent_daemonset_grants_the_bpf_capabilities_and_no_more() {
    let all = docs("envoy-config/node/agent.yaml");
    let ds = kind(&all, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "the agent reads the sidecars' /proc entries"
    );
    assert!(pod.get("hostNetwork").is_none());
    let c = &pod["containers"][0];
    assert_eq!(c["command"][0], "/usr/local/bin/envoy-smc-agent");
    assert_eq!(c["command"][1], "run");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE"])
    );
    let ro: Vec<&Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] == true)
        .collect();
    // The host's cgroup tree and the policy ConfigMap (envoy-config/render.yaml gives `config`).
    assert_eq!(ro.len(), 2);
    assert_eq!(ro[0]["mountPath"], "/host/sys/fs/cgroup");
    assert_eq!(ro[1]["mountPath"], "/etc/envoy-smc-agent");
    let labels = &ds["spec"]["selector"]["matchLabels"];
    assert_eq!(&ds["spec"]["template"]["metadata"]["labels"], labels);
    // Every node manifest lives in the namespace node/namespace.yaml creates.
    let ns =
        kind(&docs("envoy-config/node/namespace.yaml"), "Namespace")["metadata"]["name"].clone();
    for f in ["agent", "exporter", "prometheusrule"] {
        for d in docs(&format!("envoy-config/node/{f}.yaml")) {
            assert_eq!(d["metadata"]["namespace"], ns, "{f}: {}", d["kind"]);
        }
    }
}
