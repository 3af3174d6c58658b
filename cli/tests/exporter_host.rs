//! `envoy-smc status --all-netns` and `envoy-smc exporter` on this host (no SMC in its kernel):
//! every namespace is entered (the tests run as root here; without CAP_SYS_ADMIN each one is
//! reported as not entered), smc_diag's absence is said per namespace, and the exporter serves,
//! refuses bad requests and exits 0 on SIGTERM. The SMC side is tests/vm_netns.rs, in the VM.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

mod common;
use common::vm::{http, start_exporter, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_envoy-smc");

#[test]
fn all_netns_lists_our_namespace_and_says_what_is_missing() {
    let out = Command::new(BIN)
        .args(["status", "--all-netns", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    let mine = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let nss = v["namespaces"].as_array().unwrap();
    let me = nss
        .iter()
        .find(|n| n["netns"] == mine)
        .unwrap_or_else(|| panic!("{v:#}"));
    let err = me["error"].as_str().unwrap_or("");
    if v["not_entered"] == 0 {
        // entered; this kernel has no smc_diag (else the VM tests cover it)
        assert!(err.is_empty() || err.contains("smc_diag"), "{me:#}");
        assert_eq!(out.status.code(), Some(0));
    } else {
        assert!(err.contains("not entered"), "{me:#}");
    }
}

#[test]
fn exporter_serves_refuses_bad_requests_and_stops_on_sigterm() {
    let (mut exp, mut err, addr) = start_exporter("0");
    let page = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(
        page.contains("\nenvoy_smc_scrape_duration_seconds "),
        "{page}"
    );
    assert!(page.contains("# TYPE envoy_smc_sockets gauge\n"), "{page}");
    let mine = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert!(
        page.contains(&format!("envoy_smc_netns_up{{netns=\"{mine}\"")),
        "{page}"
    );
    assert!(http(addr, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(addr, "DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(addr, "\r\n\r\n").starts_with("HTTP/1.1 400"));
    let status = terminate(&mut exp, "the exporter");
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(rest.contains("stopped by signal"), "{rest}");
}
