//! The `envoy-smc` diagnostics commands on a host whose kernel has no SMC (this build machine):
//! each gives a clear answer and a documented exit code, never a stack trace. On a kernel with
//! SMC (the VM) the host-specific expectations are skipped with a message; tests/vm_smc.rs covers
//! that side.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use envoy_smc_core::smc::KernelSupport;

const OK: i32 = 0;
const NEGATIVE: i32 = 1;
const USAGE: i32 = 2;
const UNAVAILABLE: i32 = 3;
const UNREACHABLE: i32 = 5;

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_envoy-smc"))
        .args(args)
        .output()
        .expect("run envoy-smc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "envoy-smc {args:?} panicked: {stderr}"
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The expectations below are for a kernel without SMC; say so and skip elsewhere.
fn host_without_smc() -> bool {
    let none = KernelSupport::probe_now().none();
    if !none {
        eprintln!(
            "skipped: this kernel has SMC; the host-without-SMC answers are not expected here"
        );
    }
    none
}

#[test]
fn doctor_says_why_not_ready() {
    if !host_without_smc() {
        return;
    }
    let out = run(&["doctor"]);
    assert_eq!(out.status.code(), Some(NEGATIVE), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("NOT READY"), "{t}");
    assert!(t.contains("cannot open AF_SMC or IPPROTO_SMC"), "{t}");
    assert!(t.contains("fix:"), "{t}");

    let out = run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(NEGATIVE));
    let v = json(&out);
    assert_eq!(v["ready"], false);
    assert_eq!(v["af_smc"], false);
    let checks = v["checks"].as_array().unwrap();
    let sockets = checks.iter().find(|c| c["name"] == "smc sockets").unwrap();
    assert_eq!(sockets["status"], "fail");
    assert!(sockets["fix"].as_str().unwrap().contains("smc"));
    let diag = checks.iter().find(|c| c["name"] == "smc_diag").unwrap();
    assert_eq!(diag["status"], "fail");
}

#[test]
fn doctor_reads_rdma_devices_and_roce_versions_from_sysfs() {
    // A sysfs-shaped tree: rxe0 (RoCE v2 only, ACTIVE) and mlx0 (RoCE v1 and v2, DOWN).
    let root = std::env::temp_dir().join(format!("envoy-smc-ib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let port = |dev: &str, state: &str, types: &[&str]| {
        let p = root.join(dev).join("ports/1");
        std::fs::create_dir_all(p.join("gid_attrs/types")).unwrap();
        std::fs::create_dir_all(p.join("gid_attrs/ndevs")).unwrap();
        std::fs::write(p.join("state"), format!("{state}\n")).unwrap();
        std::fs::write(p.join("link_layer"), "Ethernet\n").unwrap();
        for (i, t) in types.iter().enumerate() {
            std::fs::write(p.join(format!("gid_attrs/types/{i}")), format!("{t}\n")).unwrap();
            std::fs::write(p.join(format!("gid_attrs/ndevs/{i}")), "eth0\n").unwrap();
        }
    };
    port("rxe0", "4: ACTIVE", &["RoCE v2", "RoCE v2"]);
    port("mlx0", "1: DOWN", &["IB/RoCE v1", "RoCE v2"]);
    let out = run(&["doctor", "--json", "--rdma-sysfs", root.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&root);
    let v = json(&out);
    let devs = v["rdma_devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0]["name"], "mlx0");
    assert_eq!(devs[0]["ports"][0]["state"], "DOWN");
    assert_eq!(devs[0]["ports"][0]["roce_v1"], true);
    assert_eq!(devs[1]["ports"][0]["state"], "ACTIVE");
    assert_eq!(devs[1]["ports"][0]["roce_v1"], false);
    assert_eq!(devs[1]["ports"][0]["roce_v2"], true);
    assert_eq!(devs[1]["ports"][0]["netdevs"][0], "eth0");
    let rdma = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rdma devices")
        .unwrap()
        .clone();
    assert_eq!(rdma["status"], "ok", "{rdma}");
    assert!(rdma["detail"].as_str().unwrap().contains("rxe0/1"));
}

#[test]
fn status_says_smc_diag_is_unavailable() {
    if !host_without_smc() {
        return;
    }
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(UNAVAILABLE));
    let t = text(&out);
    assert!(t.contains("smc_diag is not available"), "{t}");
    assert!(t.contains("envoy-smc doctor"), "{t}");

    let out = run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(UNAVAILABLE));
    let v = json(&out);
    assert_eq!(v["available"], false);
    assert!(v["error"].as_str().unwrap().contains("smc_diag"));

    let out = run(&["status", "--prometheus"]);
    assert_eq!(out.status.code(), Some(UNAVAILABLE));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("# TYPE envoy_smc_diag_up gauge"), "{t}");
    assert!(t.lines().any(|l| l == "envoy_smc_diag_up 0"), "{t}");
}

/// `status` lists the destinations a proxy holds on TCP (adaptive fallback) from the tables
/// processes publish, also where smc_diag is missing. This test process publishes a table of its
/// own (it is alive, so the table counts); a table of a process that is gone is left out.
#[test]
fn status_lists_destinations_held_on_tcp() {
    use envoy_smc_core::adaptive::{publish, Breaker};
    use envoy_smc_core::config::AdaptiveSettings;
    let dir = std::env::temp_dir().join(format!("envoy-smc-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let b = Breaker::new(AdaptiveSettings {
        enabled: true,
        detect_after_ms: 1000,
        probe_timeout_ms: 1000,
        hold_down_ms: 30_000,
        max_hold_down_ms: 600_000,
        max_destinations: 16,
    });
    let held: std::net::SocketAddr = "10.9.0.2:9001".parse().unwrap();
    b.trip(held, b.now_ms());
    publish::write_table(&b, &dir).unwrap();
    let mut gone = publish::read_tables(&dir, Path::new("/proc")).remove(0);
    gone.pid = u32::MAX;
    gone.destinations[0].destination = "10.9.9.9:1".parse().unwrap();
    std::fs::write(dir.join("gone.json"), serde_json::to_vec(&gone).unwrap()).unwrap();
    let d = dir.to_str().unwrap();

    let out = run(&["status", "--state-dir", d]);
    let t = text(&out);
    let row = t
        .lines()
        .find(|l| l.contains("10.9.0.2:9001"))
        .unwrap_or_else(|| panic!("no row for the held destination:\n{t}"));
    assert!(row.contains("held") && row.contains("in 30 s"), "{row}");
    assert!(row.contains(&format!("/{}", std::process::id())), "{row}");
    assert!(
        !t.contains("10.9.9.9:1"),
        "a gone process's table is left out:\n{t}"
    );

    let v = json(&run(&["status", "--json", "--state-dir", d]));
    let tables = v["black_holes"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{v}");
    assert_eq!(tables[0]["destinations"][0]["state"], "held");
    assert_eq!(tables[0]["destinations"][0]["destination"], "10.9.0.2:9001");

    let out = run(&["status", "--prometheus", "--state-dir", d]);
    let p = String::from_utf8_lossy(&out.stdout);
    assert!(
        p.contains("destination=\"10.9.0.2:9001\",state=\"held\"} 1"),
        "{p}"
    );
    // --pid filters processes.
    let v = json(&run(&["status", "--json", "--state-dir", d, "--pid", "1"]));
    assert_eq!(v["black_holes"].as_array().unwrap().len(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_without_smc_still_compares_with_tcp() {
    if !host_without_smc() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let out = run(&["check", &addr, "--json"]);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "smc_unavailable");
    assert_eq!(v["tcp_connect"]["ok"], true);
    assert!(v["summary"].as_str().unwrap().contains("no SMC"));

    let out = run(&["check", &addr]);
    assert_eq!(out.status.code(), Some(UNAVAILABLE));
    assert!(
        text(&out).contains("plain TCP connect: ok"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_rejects_bad_targets_as_usage_errors() {
    for bad in ["nonsense", "127.0.0.1", "[::1]", "host.invalid:80"] {
        let out = run(&["check", bad]);
        assert_eq!(out.status.code(), Some(USAGE), "{bad}: {}", text(&out));
    }
    let out = run(&["check", "127.0.0.1:1", "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(USAGE));
}

#[test]
fn check_of_a_refused_port() {
    // A port with no listener: on this host SMC is unavailable and TCP is refused; on an SMC
    // kernel the SMC connect is refused too.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run(&["check", &format!("127.0.0.1:{port}"), "--json"]);
    let v = json(&out);
    assert_eq!(v["tcp_connect"]["ok"], false, "{v}");
    let code = out.status.code().unwrap();
    if KernelSupport::probe_now().none() {
        assert_eq!(code, UNAVAILABLE);
    } else {
        assert_eq!(code, UNREACHABLE);
        assert_eq!(v["verdict"], "unreachable");
    }
}

#[test]
fn ueid_input_errors_come_before_the_kernel() {
    for bad in ["bad_id", ".x", "A B", &"X".repeat(33)] {
        let out = run(&["ueid", "add", bad]);
        assert_eq!(out.status.code(), Some(USAGE), "{bad}: {}", text(&out));
        assert!(text(&out).contains("invalid UEID"));
        let out = run(&["ueid", "remove", bad, "--json"]);
        assert_eq!(out.status.code(), Some(USAGE));
        assert_eq!(json(&out)["ok"], false);
    }
}

#[test]
fn ueid_without_smc_gen_netlink() {
    if !host_without_smc() {
        return;
    }
    for args in [
        &["ueid", "list"][..],
        &["ueid", "add", "ENVOY-SMC-TEST"],
        &["ueid", "remove", "--all"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(UNAVAILABLE), "{args:?}");
        assert!(
            text(&out).contains("SMC_GEN_NETLINK is not available"),
            "{}",
            text(&out)
        );
    }
    let out = run(&["ueid", "list", "--json"]);
    let v = json(&out);
    assert_eq!(v["ok"], false);
}

#[test]
fn every_command_has_help() {
    for c in ["doctor", "status", "check", "ueid"] {
        let out = run(&[c, "--help"]);
        assert_eq!(out.status.code(), Some(OK), "{c}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--json"),
            "{c}"
        );
    }
    assert!(Path::new(env!("CARGO_BIN_EXE_envoy-smc")).exists());
}
