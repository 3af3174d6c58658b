//! `envoy-smc-agent manifest` prints the DaemonSet `envoy-smc render` writes into
//! envoy-config/node/agent.yaml: one definition (envoy_smc_cli::render::node::agent_daemonset).

use serde::Deserialize;
use serde_json::Value;

#[test]
fn manifest_is_the_rendered_agent_daemonset() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../envoy-config/node/agent.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    assert_eq!(docs.len(), 1);
    let rendered = &docs[0];
    let c = &rendered["spec"]["template"]["spec"]["containers"][0];
    let uid = c["command"][3].as_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envoy-smc-agent"))
        .args(["manifest", "--image", c["image"].as_str().unwrap()])
        .args([
            "--namespace",
            rendered["metadata"]["namespace"].as_str().unwrap(),
        ])
        .args(["--uid", uid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(&printed, rendered);
    assert_eq!(
        printed["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE"])
    );
}
