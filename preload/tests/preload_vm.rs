//! The preload library on a kernel with real SMC-R: the socket replacement, the epoll
//! carry-over, and what the kernel negotiated (smc_diag).
//!
//! Runs inside the test VM only (`ENVOY_SMC_VM=1`, set by tests/vm/run.sh): every test is
//! `#[ignore]`d (skipped by a plain `cargo test`) and, run with `--ignored` elsewhere, prints why
//! it returns. Run it with `preload/tests/vm.sh` (builds, boots the VM, runs this
//! binary there), or by hand:
//!   cargo test -p envoy-smc-preload --test preload_vm --no-run
//!   tests/vm/run.sh -- target/debug/deps/preload_vm-<hash> --ignored --test-threads=1
//!
//! Topology (tests/vm/README.md): 10.9.0.1 (va, rxea) and 10.9.0.2 (vb, rxeb) in one network
//! namespace, SMC-R between them. Both addresses are local, so the configurations here set
//! `upstream.allow_local`.

mod common;

use std::net::SocketAddr;

use common::*;

const CLIENT_IP: &str = "10.9.0.1";
const SERVER_IP: &str = "10.9.0.2";

#[test]
fn role_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    assert!(run_common_role(&role), "unknown role {role}");
}

fn in_vm() -> bool {
    if std::env::var("ENVOY_SMC_VM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipped: needs the SMC-R test VM (ENVOY_SMC_VM=1); run preload/tests/vm.sh, or \
         tests/vm/run.sh -- {} --ignored --test-threads=1",
        std::env::current_exe().unwrap().display()
    );
    false
}

fn mode_config(mode: &str, listener_port: u16) -> Cfg {
    config(&format!(
        "mode: MODE_{mode}\nopt_in: {{all_workloads: true}}\nmesh_switch: {{always_on: true}}\n\
         listeners: {{ports: [{listener_port}]}}\nupstream: {{allow_local: true}}\n"
    ))
}

/// The SMC socket kind a mode gives on this kernel (6.12 has both flavours; AUTO prefers
/// IPPROTO_SMC).
fn kind_of(mode: &str) -> &'static str {
    match mode {
        "AF_SMC" => "AF_SMC",
        _ => "IPPROTO_SMC",
    }
}

/// Parses every `RESULT conn=` line of a client run into maps.
fn conns(out: &RoleOutput) -> Vec<std::collections::HashMap<String, String>> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("RESULT conn="))
        .map(|l| {
            l["RESULT ".len()..]
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// SMC client and SMC listener, both made by the library from TCP sockets: the client is
/// replaced after Envoy-style epoll registration and every edge (connect, each data exchange,
/// FIN) still arrives; smc_diag shows the connection ACTIVE in SMC-R mode on the rxe device.
/// For each mode; the AF_SMC server listens without SO_REUSEPORT (AF_SMC rejects it), the others
/// with it, and one run duplicates the bound listener before listen() as Envoy's workers do.
#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn smc_r_client_and_listener_with_epoll_carry_over() {
    if !in_vm() {
        return;
    }
    let cases = [
        ("AF_SMC", false, false),
        ("AF_SMC", false, true),
        ("IPPROTO_SMC", true, false),
        ("AUTO", true, false),
        ("AUTO", false, true),
    ];
    for (i, (mode, reuse_port, dup)) in cases.into_iter().enumerate() {
        let port = 20000 + i as u16;
        let cfg = mode_config(mode, port);
        let listen: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
        let srv = server(
            Some(&cfg),
            listen,
            &[
                (
                    "ENVOY_SMC_TEST_REUSE_PORT",
                    if reuse_port { "1" } else { "0" },
                ),
                ("ENVOY_SMC_TEST_DUP", if dup { "1" } else { "0" }),
            ],
        );
        let what = format!("{mode} reuse_port={reuse_port} dup={dup}");
        let want = kind_of(mode);
        assert!(
            srv.ready.contains(&format!("kind={want}")),
            "{what}: {}",
            srv.ready
        );
        if dup {
            assert!(
                srv.ready.contains(&format!("dup_kind={want}")),
                "{what}: {}",
                srv.ready
            );
            assert!(
                srv.ready.contains("same_socket=true"),
                "{what}: {}",
                srv.ready
            );
        }
        let n = 3;
        let out = client(
            Some(&cfg),
            listen,
            n,
            &[
                ("ENVOY_SMC_TEST_SRC", CLIENT_IP),
                ("ENVOY_SMC_TEST_ROUNDS", "5"),
                ("ENVOY_SMC_TEST_SIZE", "100000"),
                ("ENVOY_SMC_TEST_DIAG", "1"),
            ],
        );
        out.assert_ok();
        assert_eq!(out.num("ok"), n as i64, "{what}: {}", out.describe());
        assert_eq!(
            out.result("fds_before"),
            out.result("fds_after"),
            "{what}: fd leaked"
        );
        for c in conns(&out) {
            let f = |k: &str| c.get(k).cloned().unwrap_or_default();
            assert_eq!(f("kind_before"), "TCP", "{what}: {c:?}");
            assert_eq!(f("kind_after"), want, "{what}: {c:?}");
            assert_eq!(f("fd_flags_kept"), "true", "{what}: {c:?}");
            assert_eq!(f("connect_edge"), "true", "{what}: {c:?}");
            assert_eq!(f("rounds_ok"), "5", "{what}: {c:?}");
            assert_eq!(f("fin_edge"), "true", "{what}: {c:?}");
            assert_eq!(f("diag_mode"), "SMCR", "{what}: {c:?}\n{}", out.describe());
            assert_eq!(f("diag_state"), "1", "{what}: ACTIVE expected: {c:?}");
            assert!(f("diag_dev").starts_with("rxe"), "{what}: {c:?}");
        }
        let s = out.stats();
        assert_eq!(
            s.get("socket_replaced"),
            n as u64,
            "{what}: {}",
            out.describe()
        );
        assert_eq!(s.preload("epoll_reregistered"), n as u64, "{what}");
        assert_eq!(s.preload("epoll_reregister_failed"), 0, "{what}");
        assert_eq!(s.get("errors"), 0, "{what}: {}", out.describe());
        let smc_connect = if want == "AF_SMC" {
            "smc_connect_af_smc"
        } else {
            "smc_connect_ipproto_smc"
        };
        assert_eq!(s.get(smc_connect), n as u64, "{what}");
        let srv = srv.finish(T);
        srv.assert_ok();
        assert_eq!(srv.result("listener_kind"), want, "{what}");
        assert_eq!(srv.num("accepted"), n as i64, "{what}");
        assert_eq!(srv.num("closed"), n as i64, "{what}");
        let ss = srv.stats();
        let smc_listen = if want == "AF_SMC" {
            "smc_listen_af_smc"
        } else {
            "smc_listen_ipproto_smc"
        };
        assert_eq!(ss.get(smc_listen), 1, "{what}: {}", srv.describe());
        assert_eq!(ss.get("socket_replaced"), 1, "{what}");
        if dup {
            assert_eq!(ss.preload("dup_settled"), 1, "{what}");
        }
        eprintln!("ok: {what}: {n} SMC-R connections, every edge");
    }
}

/// The other outcomes, each with every edge: an AF_SMC listener that Envoy gave SO_REUSEPORT is
/// an AF_SMC listener all the same (SO_REUSEPORT left off, shared by the listener's fds) and
/// serves SMC-R; a client kept on TCP by the per-cluster option is a plain TCP socket; an SMC
/// client to an unselected (plain TCP) listener falls back (PEERNOSMC); a client without the mesh
/// switch stays TCP.
#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn tcp_outcomes_keep_every_edge() {
    if !in_vm() {
        return;
    }
    // AF_SMC + SO_REUSEPORT: an AF_SMC listener (Envoy's default listener options in AF_SMC mode)
    let port = 20100;
    let cfg = mode_config("AF_SMC", port);
    let listen: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let srv = server(Some(&cfg), listen, &[("ENVOY_SMC_TEST_REUSE_PORT", "1")]);
    assert!(srv.ready.contains("kind=AF_SMC"), "{}", srv.ready);
    let out = client(
        Some(&cfg),
        listen,
        2,
        &[
            ("ENVOY_SMC_TEST_SRC", CLIENT_IP),
            ("ENVOY_SMC_TEST_DIAG", "1"),
        ],
    );
    assert_all_connections_ok(&out, 2);
    for c in conns(&out) {
        assert_eq!(c["diag_mode"], "SMCR", "{c:?}");
    }
    assert_eq!(out.stats().get("socket_replaced"), 2);
    let srv = srv.finish(T);
    srv.assert_ok();
    assert_eq!(
        srv.stats().get("smc_listen_af_smc"),
        1,
        "{}",
        srv.describe()
    );
    assert_eq!(srv.stats().tcp("reuse_port_unsupported"), 0);

    // an SMC listener; a client kept on TCP by the per-cluster option; a client of a config
    // that needs the mesh switch and does not get it
    let port = 20101;
    let cfg = mode_config("IPPROTO_SMC", port);
    let listen: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let srv = server(Some(&cfg), listen, &[]);
    assert!(srv.ready.contains("kind=IPPROTO_SMC"), "{}", srv.ready);
    let kept = client(
        Some(&cfg),
        listen,
        2,
        &[
            ("ENVOY_SMC_TEST_SRC", CLIENT_IP),
            ("ENVOY_SMC_TEST_DIAG", "1"),
            ("ENVOY_SMC_TEST_OPTS", "6:30:0"),
        ],
    );
    assert_all_connections_ok(&kept, 2);
    for c in conns(&kept) {
        assert_eq!(c["kind_after"], "TCP", "{c:?}");
        assert_eq!(
            c["diag_mode"], "none",
            "a plain TCP socket has no smc_diag entry: {c:?}"
        );
    }
    assert_eq!(kept.stats().tcp("kept_on_tcp"), 2);
    assert_eq!(kept.stats().get("socket_replaced"), 0);
    let no_switch = config(&format!(
        "mode: MODE_IPPROTO_SMC\nopt_in: {{all_workloads: true}}\nupstream: {{allow_local: true}}\n\
         listeners: {{ports: [{port}]}}\n"
    ));
    let out = client(
        Some(&no_switch),
        listen,
        2,
        &[("ENVOY_SMC_TEST_SRC", CLIENT_IP)],
    );
    assert_all_connections_ok(&out, 2);
    assert_eq!(out.stats().tcp("mesh_switch_absent"), 2);
    assert_eq!(out.stats().get("socket_replaced"), 0);
    srv.finish(T).assert_ok();

    // an unselected listener is plain TCP; SMC clients fall back PEERNOSMC
    let port = 20102;
    let cfg = mode_config("IPPROTO_SMC", 1);
    let listen: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let srv = server(Some(&cfg), listen, &[]);
    assert!(srv.ready.contains("kind=TCP"), "{}", srv.ready);
    let out = client(
        Some(&cfg),
        listen,
        2,
        &[
            ("ENVOY_SMC_TEST_SRC", CLIENT_IP),
            ("ENVOY_SMC_TEST_DIAG", "1"),
        ],
    );
    assert_all_connections_ok(&out, 2);
    for c in conns(&out) {
        assert_eq!(c["diag_mode"], "TCP", "{c:?}");
        assert_eq!(c["diag_reason"], "0x03010000", "{c:?}");
    }
    assert_eq!(out.stats().get("socket_replaced"), 2);
    let srv = srv.finish(T);
    srv.assert_ok();
    assert_eq!(srv.stats().tcp("listener_not_selected"), 1);
}

/// Adaptive fallback through the library: a path that drops SYNs carrying SMC's TCP option
/// (iptables `--tcp-option 254`, the middlebox problem) in front of a plain TCP server. The first
/// SMC connect stalls; the watchdog sees it stuck in SYN_SENT, proves plain TCP works, holds the
/// destination on TCP and hands the stuck connect back to the library, which moves it to a TCP
/// socket under the same fd with its epoll registration: the client's first connection succeeds
/// too (its connect edge comes after about 2 s instead of never), and the next connections go out
/// as plain TCP sockets at once. For both SMC flavours.
#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn black_holed_path_falls_back_to_tcp_and_the_first_connect_is_rescued() {
    if !in_vm() {
        return;
    }
    for (mode, port) in [("IPPROTO_SMC", 20200u16), ("AF_SMC", 20201)] {
        black_holed_path(mode, port);
    }
}

fn black_holed_path(mode: &str, port: u16) {
    let rule = format!("INPUT -p tcp -d {SERVER_IP} --dport {port} --syn --tcp-option 254 -j DROP");
    let ipt = |op: &str| {
        std::process::Command::new("iptables-legacy")
            .arg(op)
            .args(rule.split_whitespace())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(ipt("-A"), "iptables-legacy -A {rule} failed");
    struct Undo<F: Fn(&str) -> bool>(F);
    impl<F: Fn(&str) -> bool> Drop for Undo<F> {
        fn drop(&mut self) {
            (self.0)("-D");
        }
    }
    let _undo = Undo(ipt);
    let listen: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let srv = server(None, listen, &[]);
    let cfg = config(&format!(
        "mode: MODE_{mode}\nopt_in: {{all_workloads: true}}\nmesh_switch: {{always_on: true}}\n\
         upstream: {{allow_local: true}}\nadaptive_fallback: {{detect_after_ms: 1000, probe_timeout_ms: 1000}}\n",
    ));
    let out = client(
        Some(&cfg),
        listen,
        3,
        &[
            ("ENVOY_SMC_TEST_SRC", CLIENT_IP),
            ("ENVOY_SMC_TEST_CONNECT_TIMEOUT_MS", "8000"),
            ("ENVOY_SMC_LOG", "info"),
        ],
    );
    out.assert_ok();
    let c = conns(&out);
    let first = &c[0];
    let f = |k: &str| first.get(k).map(String::as_str).unwrap_or("-");
    assert_eq!(
        f("kind_after"),
        kind_of(mode),
        "{mode}: {first:?}\n{}",
        out.describe()
    );
    assert_eq!(
        f("kind_connected"),
        "TCP",
        "{mode}: the stuck connect is moved to TCP: {first:?}\n{}",
        out.describe()
    );
    let ms: u64 = f("connect_ms").parse().unwrap_or(u64::MAX);
    assert!(
        (900..4000).contains(&ms),
        "{mode}: rescued after {ms} ms (detect 1 s + probe): {first:?}"
    );
    assert_eq!(f("fin_edge"), "true", "{mode}: {first:?}");
    for later in &c[1..] {
        assert_eq!(
            later.get("kind_after").map(String::as_str),
            Some("TCP"),
            "{mode}: {later:?}\n{}",
            out.describe()
        );
        assert_eq!(
            later.get("fin_edge").map(String::as_str),
            Some("true"),
            "{later:?}"
        );
    }
    let s = out.stats();
    assert_eq!(
        s.get("adaptive_black_hole_tripped"),
        1,
        "{}",
        out.describe()
    );
    assert_eq!(s.get("adaptive_rescued"), 1, "{}", out.describe());
    assert_eq!(s.get("adaptive_rescue_failed"), 0, "{}", out.describe());
    assert_eq!(s.tcp("black_hole_hold_down"), 2, "{}", out.describe());
    assert_eq!(s.rescuable(), 0, "nothing kept after the run");
    srv.finish(T).assert_ok();
}
