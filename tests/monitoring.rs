//! monitoring/: the PrometheusRule for the Prometheus Operator carries exactly the rule groups
//! that `promtool` checks and unit-tests (monitoring/check.sh, run by scripts/test.sh), and every
//! metric the alerts use is one `envoy-smc exporter` serves.

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn prometheusrule_groups_are_the_promtool_checked_ones() {
    let plain = yaml("monitoring/envoy-smc.rules.yaml");
    let cr = yaml("monitoring/prometheusrule.yaml");
    assert_eq!(cr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(cr["spec"]["groups"], plain["groups"]);
}

#[test]
fn alerts_use_only_metrics_the_exporter_serves() {
    let exporter =
        std::fs::read_to_string(format!("{ROOT}/src/bin/envoy-smc/exporter/metrics.rs")).unwrap();
    let plain = yaml("monitoring/envoy-smc.rules.yaml");
    let mut n = 0;
    for rule in plain["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("envoy_smc_") {
                assert!(
                    exporter.contains(&format!("\"{word}\"")),
                    "{}: {word} is not a metric of the exporter",
                    rule["alert"]
                );
                n += 1;
            }
        }
    }
    assert!(n >= 5);
}
