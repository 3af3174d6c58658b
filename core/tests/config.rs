//! The configuration model: every field from YAML, JSON and Envoy's binary form, the defaults,
//! and bad input rejected with a message naming the field and the value.

use envoy_smc_core::config::{self, proto, SmcConfig};
use prost::Message;

const FULL: &str = r#"
mode: IPPROTO_SMC
mesh_switch:
  always_on: true
  enable_option: {level: 1, name: 18, int_value: 1}
  keep_tcp_option: {level: 6, name: 30, int_value: 0}
opt_in:
  all_workloads: false
  annotation: example.com/smc
  annotations: {example.com/smc: "true", other: "x"}
  annotations_file: /etc/istio/pod/annotations
listeners:
  ports: [15006, 8443]
  limit_handshake: true
upstream:
  allow: ["10.0.0.0/8", "fd00::/8"]
  deny: ["10.96.0.0/12"]
  allow_ports: ["8080", "9000-9100"]
  deny_ports: ["15000"]
  allow_local: true
"#;

#[test]
fn every_field_loads_from_yaml() {
    let c = config::from_yaml(FULL).expect("valid");
    assert_eq!(c.mode, proto::smc_config::Mode::IpprotoSmc as i32);
    let sw = c.mesh_switch.as_ref().unwrap();
    assert!(sw.always_on);
    assert_eq!(
        sw.enable_option,
        Some(proto::SocketOptionMatch {
            level: 1,
            name: 18,
            int_value: 1
        })
    );
    assert_eq!(
        sw.keep_tcp_option,
        Some(proto::SocketOptionMatch {
            level: 6,
            name: 30,
            int_value: 0
        })
    );
    let o = c.opt_in.as_ref().unwrap();
    assert!(!o.all_workloads);
    assert_eq!(o.annotation, "example.com/smc");
    assert_eq!(
        o.annotations.get("example.com/smc").map(String::as_str),
        Some("true")
    );
    assert_eq!(o.annotations_file, "/etc/istio/pod/annotations");
    let l = c.listeners.as_ref().unwrap();
    assert_eq!(l.ports, vec![15006, 8443]);
    assert!(l.limit_handshake);
    let u = c.upstream.as_ref().unwrap();
    assert_eq!(u.allow, vec!["10.0.0.0/8", "fd00::/8"]);
    assert_eq!(u.deny, vec!["10.96.0.0/12"]);
    assert_eq!(u.allow_ports, vec!["8080", "9000-9100"]);
    assert_eq!(u.deny_ports, vec!["15000"]);
    assert!(u.allow_local);
}

#[test]
fn json_with_camel_case_names_and_numeric_strings_is_the_same_config() {
    let json = r#"{"mode": "IPPROTO_SMC",
        "meshSwitch": {"alwaysOn": true, "enableOption": {"level": "1", "name": 18, "intValue": 1},
                       "keepTcpOption": {"level": 6, "name": 30, "intValue": "0"}},
        "optIn": {"annotation": "example.com/smc", "annotations": {"example.com/smc": "true", "other": "x"},
                  "annotationsFile": "/etc/istio/pod/annotations"},
        "listeners": {"ports": [15006, 8443], "limitHandshake": true},
        "upstream": {"allow": ["10.0.0.0/8", "fd00::/8"], "deny": ["10.96.0.0/12"],
                     "allowPorts": ["8080", "9000-9100"], "denyPorts": ["15000"], "allowLocal": true}}"#;
    assert_eq!(
        config::from_yaml(json).unwrap(),
        config::from_yaml(FULL).unwrap()
    );
}

#[test]
fn binary_form_round_trips() {
    let c = config::from_yaml(FULL).unwrap();
    let bytes = c.encode_to_vec();
    assert_eq!(config::from_proto_bytes(&bytes).unwrap(), c);
    // Envoy's empty typed_config is the default configuration.
    assert_eq!(config::from_proto_bytes(&[]).unwrap(), SmcConfig::default());
}

#[test]
fn defaults_are_the_safe_ones() {
    for text in ["", "{}", "mode: AUTO", "~"] {
        let c = config::from_yaml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c.mode, proto::smc_config::Mode::Auto as i32);
        // Unset messages: the mesh switch is required, no workload opted in without its
        // annotation, no listener selected, local destinations excluded.
        assert_eq!(c.mesh_switch, None);
        assert_eq!(c.opt_in, None);
        assert_eq!(c.listeners, None);
        assert_eq!(c.upstream, None);
    }
    let json = config::to_json(&SmcConfig::default());
    assert_eq!(json["mode"], "MODE_AUTO");
}

#[test]
fn enum_by_full_name_short_name_and_number() {
    let af = proto::smc_config::Mode::AfSmc as i32;
    assert_eq!(config::from_yaml("mode: MODE_AF_SMC").unwrap().mode, af);
    assert_eq!(config::from_yaml("mode: AF_SMC").unwrap().mode, af);
    assert_eq!(config::from_yaml("mode: 1").unwrap().mode, af);
    assert_eq!(
        config::from_yaml("mode: 3").unwrap().mode,
        proto::smc_config::Mode::Off as i32
    );
}

/// (input, expected error text)
const BAD: &[(&str, &str)] = &[
    (
        "upstream: {allow: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/33]}",
        r#"upstream.allow[2]: "10.0.0.0/33" is not a CIDR"#,
    ),
    (
        "upstream: {deny: [banana]}",
        r#"upstream.deny[0]: "banana" is not a CIDR"#,
    ),
    (
        "upstream: {allow: [\"fd00::/129\"]}",
        r#"upstream.allow[0]: "fd00::/129" is not a CIDR"#,
    ),
    (
        "upstream: {allow_ports: [\"0\"]}",
        r#"upstream.allow_ports[0]: "0" is not a port"#,
    ),
    (
        "upstream: {deny_ports: [\"9000-8000\"]}",
        r#"upstream.deny_ports[0]: "9000-8000" is an empty port range"#,
    ),
    (
        "upstream: {allow_ports: [\"70000\"]}",
        r#"upstream.allow_ports[0]: "70000" is not a port"#,
    ),
    (
        "mode: FAST",
        "mode: \"FAST\" is not one of MODE_AUTO, MODE_AF_SMC, MODE_IPPROTO_SMC, MODE_OFF",
    ),
    (
        "mode: 9",
        "mode: 9 is not one of MODE_AUTO, MODE_AF_SMC, MODE_IPPROTO_SMC, MODE_OFF",
    ),
    (
        "listeners: {ports: [15006, 0]}",
        "listeners.ports[1]: 0 is not a port",
    ),
    (
        "listeners: {ports: [15006, 15006]}",
        "listeners.ports[1]: 15006 is listed twice",
    ),
    (
        "listeners: {ports: [-1]}",
        "listeners.ports[0]: -1 is not an unsigned 32-bit integer",
    ),
    (
        "listeners: {ports: 15006}",
        "listeners.ports: must be a list, not 15006",
    ),
    (
        "listeners: {limit_handshake: yes please}",
        "listeners.limit_handshake: \"yes please\" is not true or false",
    ),
    (
        "upstreams: {}",
        "upstreams: unknown field (known fields: mode, mesh_switch, opt_in, listeners, upstream, adaptive_fallback)",
    ),
    ("upstream: {alow: []}", "upstream.alow: unknown field"),
    (
        "mesh_switch: {enable_option: {level: 6, name: 30, int_value: 0}}",
        "mesh_switch.keep_tcp_option: is the same socket option as mesh_switch.enable_option",
    ),
    (
        "mesh_switch: {enable_option: {level: -1, name: 18}}",
        "mesh_switch.enable_option.level: -1 is not a socket option level",
    ),
    (
        "mesh_switch: {enable_option: {level: 1, name: 18, int_value: 5000000000}}",
        "mesh_switch.enable_option.int_value: 5000000000 does not fit a 32-bit int",
    ),
    (
        "opt_in: {annotation: \"has space\"}",
        "opt_in.annotation: \"has space\" is not an annotation key",
    ),
    (
        "opt_in: {annotations: [a, b]}",
        "opt_in.annotations: must be a mapping of names to values",
    ),
    (
        "opt_in: {annotations: {k: 1}}",
        "opt_in.annotations[\"k\"]: 1 is not a string",
    ),
    ("[1, 2]", "the configuration must be a mapping"),
    ("mode: [unclosed", "not valid YAML/JSON"),
];

#[test]
fn bad_input_names_the_field_and_the_value() {
    for (input, want) in BAD {
        let err = config::from_yaml(input).expect_err(input).to_string();
        assert!(
            err.contains(want),
            "input {input:?}\n  got:  {err}\n  want: {want}"
        );
    }
}

#[test]
fn bad_binary_input_is_an_error_not_a_panic() {
    let err = config::from_proto_bytes(&[0xff, 0xff, 0xff])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid envoy_smc.v1.SmcConfig"), "{err}");
    // A well-formed message with an invalid value is caught by validation.
    let mut c = SmcConfig {
        upstream: Some(proto::Upstream {
            allow: vec!["300.0.0.0/8".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = config::from_proto_bytes(&c.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("upstream.allow[0]: \"300.0.0.0/8\" is not a CIDR"),
        "{err}"
    );
    c.upstream = None;
    c.mode = 42;
    let err = config::from_proto_bytes(&c.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("mode: 42 is not one of"), "{err}");
}

#[test]
fn the_documented_example_files_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/config exists") {
        let path = entry.unwrap().path();
        config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}

/// Loads `path` on another thread: the result and how long it took, or `None` if it hung (the
/// old loader blocked forever on a FIFO and read /dev/zero until memory ran out).
fn load_timed(
    path: &std::path::Path,
) -> Option<(Result<SmcConfig, config::ConfigError>, std::time::Duration)> {
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let r = config::from_file(&path);
        let _ = tx.send((r, t0.elapsed()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
}

/// Rejected within 100 ms (best of three, so a busy machine does not decide) with a message
/// containing `want`.
fn rejected_fast(path: &std::path::Path, want: &str) {
    let mut best = std::time::Duration::MAX;
    for _ in 0..3 {
        let (r, took) =
            load_timed(path).unwrap_or_else(|| panic!("loading {} hung for 5 s", path.display()));
        let e = r.expect_err("must be rejected").to_string();
        assert!(e.contains(want), "{}: {e}", path.display());
        best = best.min(took);
    }
    assert!(
        best < std::time::Duration::from_millis(100),
        "{}: rejected only after {best:?}",
        path.display()
    );
}

#[test]
fn a_fifo_is_rejected_at_once_not_waited_on() {
    let fifo = std::env::temp_dir().join(format!("envoy-smc-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    rejected_fast(&fifo, "is a FIFO, not a regular file");
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn dev_zero_is_rejected_at_once_not_read() {
    rejected_fast(
        std::path::Path::new("/dev/zero"),
        "cannot read /dev/zero: the configuration file is a character device, not a regular file",
    );
}

#[test]
fn deep_nesting_is_rejected_before_parsing() {
    let dir = std::env::temp_dir();
    let cases = [
        // 200 KB of nested flow collections: 21 s in the old loader.
        ("flow", format!("upstream: {}", "[".repeat(200_000))),
        (
            "json",
            format!("{}1{}", "{\"a\": ".repeat(60_000), "}".repeat(60_000)),
        ),
        (
            "block",
            (0..200)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect(),
        ),
    ];
    for (name, text) in cases {
        let p = dir.join(format!("envoy-smc-deep-{name}-{}.yaml", std::process::id()));
        std::fs::write(&p, &text).unwrap();
        rejected_fast(&p, "the document is nested more than 32 levels deep (line ");
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn oversized_files_and_long_lists_are_rejected_with_the_limit() {
    let p = std::env::temp_dir().join(format!("envoy-smc-big-{}.yaml", std::process::id()));
    std::fs::write(&p, format!("# {}\n", "x".repeat(1 << 20))).unwrap();
    rejected_fast(&p, "bytes, more than the limit of 1048576");
    std::fs::remove_file(&p).unwrap();
    let ranges: Vec<String> = (1..=5000).map(|i| format!("\"{i}\"")).collect();
    let e = config::from_yaml(&format!(
        "upstream: {{allow_ports: [{}]}}",
        ranges.join(",")
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "upstream.allow_ports: 5000 entries, more than 4096"
    );
    let ranges: Vec<String> = (1..=2000).map(|i| format!("\"{i}\"")).collect();
    let e = config::from_yaml(&format!("upstream: {{deny_ports: [{}]}}", ranges.join(",")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "upstream.deny_ports: 2000 entries, more than the limit of 1024"
    );
}

#[test]
fn every_adaptive_number_is_bounded() {
    for (yaml, want) in [
        (
            "adaptive_fallback: {detect_after_ms: 4294967295, probe_timeout_ms: 4294967295}",
            "adaptive_fallback.detect_after_ms: 4294967295 is outside 100..=60000",
        ),
        (
            "adaptive_fallback: {probe_timeout_ms: 10}",
            "adaptive_fallback.probe_timeout_ms: 10 is outside 100..=60000",
        ),
        (
            "adaptive_fallback: {hold_down_ms: 4000000000}",
            "adaptive_fallback.hold_down_ms: 4000000000 is outside 1..=86400000",
        ),
        (
            "adaptive_fallback: {max_hold_down_ms: 4000000000}",
            "adaptive_fallback.max_hold_down_ms: 4000000000 is outside 1..=604800000",
        ),
        (
            "adaptive_fallback: {max_destinations: 1048577}",
            "adaptive_fallback.max_destinations: 1048577 is outside 1..=1048576",
        ),
    ] {
        let e = config::from_yaml(yaml).unwrap_err().to_string();
        assert!(e.starts_with(want), "{yaml}: {e}");
    }
    // The largest table is accepted and costs memory only as it fills.
    let c = config::from_yaml("adaptive_fallback: {max_destinations: 1048576}").unwrap();
    let b = envoy_smc_core::adaptive::Breaker::new(config::AdaptiveSettings::from_config(&c));
    assert!(b.entries().is_empty());
}
