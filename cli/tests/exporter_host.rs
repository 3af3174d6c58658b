//! `envoy-smc status --all-netns` and `envoy-smc exporter` on this host (no SMC in its kernel):
//! every namespace is entered (the tests run as root here; without CAP_SYS_ADMIN each one is
//! reported as not entered), smc_diag's absence is said per namespace, and the exporter serves,
//! refuses bad requests and exits 0 on SIGTERM. The SMC side is tests/vm_netns.rs, in the VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_envoy-smc");

fn get(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

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
    let mut exp = Command::new(BIN)
        .args([
            "exporter",
            "--listen",
            "127.0.0.1:0",
            "--doctor-interval",
            "0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(exp.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|s| s.strip_suffix("/metrics"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("exporter said: {line}"));
    let page = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
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
    assert!(get(addr, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(get(addr, "DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(get(addr, "\r\n\r\n").starts_with("HTTP/1.1 400"));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(exp.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = exp.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert!(rest.contains("stopped by signal"), "{rest}");
}
