//! The configuration model: every field from YAML, JSON and Envoy's binary form, the defaults,
//! and bad input rejected with a message naming the field and the value.

use envoy_smc_core::config::proto::smc_config::Mode;
use envoy_smc_core::config::{self, proto, Config, OptionMatch, PortRange, SmcConfig};
use prost::Message;

const FULL: &str = r#"
mode: MODE_IPPROTO_SMC
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
    assert_eq!(c.mode, Mode::IpprotoSmc);
    assert!(c.always_on);
    let option = |level, name, value| OptionMatch { level, name, value };
    assert_eq!(c.enable_option, option(1, 18, 1));
    assert_eq!(c.keep_tcp_option, option(6, 30, 0));
    let o = &c.opt_in;
    assert!(!o.all_workloads);
    assert_eq!(o.annotation, "example.com/smc");
    assert_eq!(
        o.annotations.get("example.com/smc").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        o.annotations_file.as_deref(),
        Some(std::path::Path::new("/etc/istio/pod/annotations"))
    );
    assert_eq!(c.listener_ports, vec![15006, 8443]);
    assert!(c.limit_handshake);
    let cidr = |s| config::parse_cidr(s).unwrap();
    assert_eq!(c.allow, vec![cidr("10.0.0.0/8"), cidr("fd00::/8")]);
    assert_eq!(c.deny, vec![cidr("10.96.0.0/12")]);
    let ports = |first, last| PortRange { first, last };
    assert_eq!(c.allow_ports, vec![ports(8080, 8080), ports(9000, 9100)]);
    assert_eq!(c.deny_ports, vec![ports(15000, 15000)]);
    assert!(c.allow_local);
    // The message it came from is kept as written, for showing and rendering.
    let u = c.proto().upstream.as_ref().unwrap();
    assert_eq!(u.allow_ports, vec!["8080", "9000-9100"]);
}

#[test]
fn json_with_camel_case_names_and_numeric_strings_is_the_same_config() {
    let json = r#"{"mode": "MODE_IPPROTO_SMC",
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
    let bytes = c.proto().encode_to_vec();
    assert_eq!(config::from_proto_bytes(&bytes).unwrap(), c);
    // Envoy's empty typed_config is the default configuration.
    assert_eq!(config::from_proto_bytes(&[]).unwrap(), Config::default());
}

#[test]
fn defaults_are_the_safe_ones() {
    for text in ["", "{}", "mode: MODE_AUTO", "~"] {
        let c = config::from_yaml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(c, Config::default());
        assert_eq!(c.mode, Mode::Auto);
        // The mesh switch is required, no workload opted in without its annotation, no
        // listener selected, local destinations excluded, adaptive fallback on.
        assert!(!c.always_on);
        assert!(!c.opt_in.all_workloads);
        assert_eq!(c.opt_in.annotation, config::DEFAULT_OPT_IN_ANNOTATION);
        assert!(c.listener_ports.is_empty());
        assert!(c.allow.is_empty() && !c.allow_local);
        assert!(c.adaptive.enabled);
    }
    let json = config::to_json(&SmcConfig::default());
    assert_eq!(json["mode"], "MODE_AUTO");
}

/// Envoy reads enum values by their full names in any case, or by number (also as a string):
/// `MessageUtil::loadFromJsonNoThrow` turns on protobuf's `case_insensitive_enum_parsing`.
/// tests/envoy_config.rs checks the same spellings against a real Envoy 1.40.
#[test]
fn enum_values_are_spelt_as_envoy_reads_them() {
    for (text, mode) in [
        ("mode: MODE_AF_SMC", Mode::AfSmc),
        ("mode: mode_af_smc", Mode::AfSmc),
        ("mode: Mode_Ipproto_Smc", Mode::IpprotoSmc),
        ("mode: 1", Mode::AfSmc),
        ("mode: \"2\"", Mode::IpprotoSmc),
        ("{\"mode\": \"MODE_OFF\"}", Mode::Off),
        ("mode: 3", Mode::Off),
    ] {
        let c = config::from_yaml(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.mode, mode, "{text}");
    }
}

/// The short names older versions took are refused with the spelling Envoy takes.
#[test]
fn short_enum_names_are_refused_with_the_full_name() {
    for (short, full) in [
        ("AF_SMC", "MODE_AF_SMC"),
        ("af_smc", "MODE_AF_SMC"),
        ("IPPROTO_SMC", "MODE_IPPROTO_SMC"),
        ("AUTO", "MODE_AUTO"),
        ("OFF", "MODE_OFF"),
    ] {
        let e = config::from_yaml(&format!("mode: {short}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "mode: \"{short}\" is not a value of envoy_smc.v1.SmcConfig.Mode: write {full} \
                 (Envoy accepts only the full enum value names: MODE_AUTO, MODE_AF_SMC, \
                 MODE_IPPROTO_SMC, MODE_OFF)"
            )
        );
    }
}

/// The four kinds of mistake, each with its exact message.
#[test]
fn unknown_field_wrong_type_bad_cidr_and_short_enum_have_exact_messages() {
    for (input, want) in [
        (
            "upstream: {alow: [10.0.0.0/8]}",
            "upstream.alow: unknown field (known fields: allow, deny, allow_ports, deny_ports, allow_local)",
        ),
        (
            "listeners: {ports: 15006}",
            "listeners.ports: invalid type: integer `15006`, expected a list",
        ),
        (
            "upstream: {allow: [10.0.0.0/8, 10.1.0.0/16, 10.0.0.0/33]}",
            "upstream.allow[2]: \"10.0.0.0/33\" is not a CIDR (like 10.0.0.0/8 or fd00::/8)",
        ),
        (
            "mode: AF_SMC",
            "mode: \"AF_SMC\" is not a value of envoy_smc.v1.SmcConfig.Mode: write MODE_AF_SMC \
             (Envoy accepts only the full enum value names: MODE_AUTO, MODE_AF_SMC, \
             MODE_IPPROTO_SMC, MODE_OFF)",
        ),
    ] {
        let e = config::from_yaml(input).expect_err(input);
        assert_eq!(e.to_string(), want, "{input}");
        // Envoy's binary form goes through the same checks (an unknown field or a wrong type
        // cannot be written in it).
        if input.starts_with("upstream: {allow") {
            let bad = SmcConfig {
                upstream: Some(proto::Upstream {
                    allow: vec!["10.0.0.0/8".into(), "10.1.0.0/16".into(), "10.0.0.0/33".into()],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let e = config::from_proto_bytes(&bad.encode_to_vec()).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
    }
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
        "listeners.ports[0]: -1 is out of range for this field",
    ),
    (
        "listeners: {ports: 15006}",
        "listeners.ports: invalid type: integer `15006`, expected a list",
    ),
    (
        "listeners: {limit_handshake: yes please}",
        "listeners.limit_handshake: invalid type: string \"yes please\", expected a boolean",
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
        "opt_in.annotations: invalid type: sequence, expected a map",
    ),
    (
        "opt_in: {annotations: {k: 1}}",
        "opt_in.annotations.k: invalid type: integer `1`, expected a string",
    ),
    ("[1, 2]", "the configuration must be a mapping"),
    ("mode: [unclosed", "not valid YAML/JSON"),
];

#[test]
fn bad_input_names_the_field_and_the_value() {
    let wrong: Vec<String> = BAD
        .iter()
        .filter_map(|(input, want)| {
            let err = config::from_yaml(input).expect_err(input).to_string();
            (!err.contains(want)).then(|| format!("input {input:?}\n  got:  {err}\n  want: {want}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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
) -> Option<(Result<Config, config::ConfigError>, std::time::Duration)> {
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
    let b = envoy_smc_core::adaptive::Breaker::new(c.adaptive);
    assert!(b.entries().is_empty());
}
