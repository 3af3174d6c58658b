//! `envoy-smc-agent manifest` prints the manifests `envoy-smc render` writes into
//! envoy-config/node/agent.yaml: one definition (envoy_smc_cli::render::node::agent_manifests).

use serde::Deserialize;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn yaml_docs(text: &[u8]) -> Vec<Value> {
    serde_yaml::Deserializer::from_slice(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

fn manifest(args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envoy-smc-agent"))
        .arg("manifest")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&out.stdout)
}

#[test]
fn manifest_is_the_rendered_agent_daemonset() {
    // envoy-config/render.yaml describes the agent with `config: smc.yaml`: its policy ConfigMap,
    // then the DaemonSet.
    let text = std::fs::read(format!("{ROOT}/envoy-config/node/agent.yaml")).unwrap();
    let rendered = yaml_docs(&text);
    assert_eq!(rendered.len(), 2);
    assert_eq!(rendered[0]["kind"], "ConfigMap");
    let ds = &rendered[1];
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let uid = c["command"][3].as_str().unwrap();
    let config = format!("{ROOT}/envoy-config/smc.yaml");
    let printed = manifest(&[
        "--image",
        c["image"].as_str().unwrap(),
        "--namespace",
        ds["metadata"]["namespace"].as_str().unwrap(),
        "--uid",
        uid,
        "--config",
        &config,
    ]);
    assert_eq!(printed, rendered);
    assert_eq!(
        printed[1]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE"])
    );
}

#[test]
fn manifest_without_config_is_the_daemonset_alone_and_sys_admin_is_opt_in() {
    let plain = manifest(&["--image", "r.example/agent:1"]);
    assert_eq!(plain.len(), 1);
    let c = &plain[0]["spec"]["template"]["spec"]["containers"][0];
    assert!(!c["command"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("--config")));
    let admin = manifest(&["--image", "r.example/agent:1", "--cap-sys-admin"]);
    assert_eq!(
        admin[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"])
    );
}

#[test]
fn manifest_refuses_a_bad_configuration_naming_it() {
    let dir = std::env::temp_dir().join(format!("agent-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("smc.yaml");
    std::fs::write(&bad, "upstream:\n  deny: [\"10.9.0.300/32\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envoy-smc-agent"))
        .args(["manifest", "--image", "r.example/agent:1", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config") && err.contains("10.9.0.300"),
        "{err}"
    );
}
