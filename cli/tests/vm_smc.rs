//! Real SMC-R, inside the test VM (tests/vm/run.sh: Debian 6.12 kernel, Soft-RoCE rxea/rxeb on
//! the veth pair 10.9.0.1 <-> 10.9.0.2). Every test is `#[ignore]`d (skipped on the host) and
//! still returns with a message unless ENVOY_SMC_VM=1. Run them with `tests/vm/smc-cases.sh`.
//!
//! What they show, through the library's kernel layer and the `envoy-smc` CLI only:
//! - a library connection is SMC-R, ACTIVE, on the rxe device, and data crossing it makes the rxe
//!   packet counters grow (both flavours: AF_SMC and IPPROTO_SMC);
//! - the fallback switch -> TCP fallback OPTUNSUPP (the server side: PEERNOSMC), counted by the
//!   kernel's fallback counters;
//! - a plain TCP server -> PEERNOSMC;
//! - no UEID -> NOSMCDEV, doctor not ready; the UEID added back -> SMC-R again;
//! - `doctor` ready;
//! - `check` tells SMC-R, fallback and a black hole (SYNs with TCP option 254 dropped by
//!   iptables) apart, the black hole in seconds.
//!
//! The tests share the kernel's global state (UEID table, iptables, counters), so they take a
//! lock and run one at a time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use envoy_smc_cli::diag::genl::{self, SmcGenl};
use envoy_smc_cli::diag::netlink::{self, build_msg, NlSocket};
use envoy_smc_cli::diag::smc_diag;
use envoy_smc_core::smc::SocketKind;
use serde_json::Value;

mod common;
use common::vm::{cli, cli_json, in_vm, inode, row, smc_client, smc_listener};

static SERIAL: Mutex<()> = Mutex::new(());

struct Vm {
    client: Ipv4Addr,
    server: Ipv4Addr,
    client_rdma: String,
    server_rdma: String,
    ueid: String,
}

/// The VM's topology, or `None` (with a message) outside the VM.
fn vm() -> Option<Vm> {
    if !in_vm("tests/vm/smc-cases.sh") {
        return None;
    }
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    Some(Vm {
        client: var("ENVOY_SMC_VM_CLIENT", "10.9.0.1").parse().unwrap(),
        server: var("ENVOY_SMC_VM_SERVER", "10.9.0.2").parse().unwrap(),
        client_rdma: var("ENVOY_SMC_VM_CLIENT_RDMA", "rxea"),
        server_rdma: var("ENVOY_SMC_VM_SERVER_RDMA", "rxeb"),
        ueid: var("ENVOY_SMC_VM_UEID", "ENVOY-SMC-TEST"),
    })
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts one connection and echoes `n` bytes; returns the accepted socket (kept open).
fn echo_once(l: TcpListener, n: usize) -> thread::JoinHandle<TcpStream> {
    thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).expect("server read");
        s.write_all(&buf).expect("server write");
        s
    })
}

/// Sends `n` bytes and reads them back.
fn exchange(c: &mut TcpStream, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
    c.write_all(&data).expect("client write");
    let mut back = vec![0u8; n];
    c.read_exact(&mut back).expect("client read");
    assert_eq!(back, data, "echoed data differs");
}

// ---------------------------------------------------------------------------------------------
// the CLI

/// `envoy-smc status --json`'s entry for the socket with `inode`.
fn status_of(inode: u64) -> Value {
    let (code, v) = cli_json(&["status", "--json"]);
    assert_eq!(code, 0, "{v}");
    row(&v, inode)
}

fn rxe_pkts(dev: &str) -> u64 {
    let p = |f: &str| {
        std::fs::read_to_string(format!(
            "/sys/class/infiniband/{dev}/ports/1/hw_counters/{f}"
        ))
        .unwrap_or_else(|e| panic!("{dev} {f}: {e}"))
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    p("sent_pkts") + p("rcvd_pkts")
}

// ---------------------------------------------------------------------------------------------

fn smcr_case(vm: &Vm, kind: SocketKind) {
    let l = smc_listener(kind, SocketAddrV4::new(vm.server, 0));
    let dst = l.local_addr().unwrap();
    let server = echo_once(l, 256 * 1024);
    let (a0, b0) = (rxe_pkts(&vm.client_rdma), rxe_pkts(&vm.server_rdma));
    let t0 = Instant::now();
    let mut c = smc_client(kind, vm.client, dst, false);
    let connect = t0.elapsed();
    exchange(&mut c, 256 * 1024);
    let accepted = server.join().unwrap();
    let (a1, b1) = (rxe_pkts(&vm.client_rdma), rxe_pkts(&vm.server_rdma));

    let me = status_of(inode(&c));
    assert_eq!(me["mode"], "SMCR", "{me:#}");
    assert_eq!(me["state"], "ACTIVE", "{me:#}");
    assert_eq!(me["flavour"], kind.name());
    assert_eq!(me["link"]["ib_device"], vm.client_rdma.as_str(), "{me:#}");
    assert_eq!(me["link"]["role"], "client");
    assert_eq!(me["fallback"]["reason"]["name"], "none");
    let pid = std::process::id();
    assert!(
        me["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid),
        "the test process holds it: {me:#}"
    );
    // IPPROTO_SMC sockets come with zero addresses from smc_diag; status fills them in
    assert_eq!(me["local"], c.local_addr().unwrap().to_string(), "{me:#}");
    assert_eq!(me["peer"], dst.to_string());

    let srv = status_of(inode(&accepted));
    assert_eq!(srv["mode"], "SMCR", "{srv:#}");
    assert_eq!(srv["link"]["ib_device"], vm.server_rdma.as_str(), "{srv:#}");
    assert_eq!(srv["link"]["role"], "server");

    // 2 x 256 KiB over RDMA: far more than a handful of RoCE packets on each device
    assert!(
        a1 - a0 >= 64,
        "{} RoCE packets on {}",
        a1 - a0,
        vm.client_rdma
    );
    assert!(
        b1 - b0 >= 64,
        "{} RoCE packets on {}",
        b1 - b0,
        vm.server_rdma
    );
    eprintln!(
        "{}: SMC-R connect {:.1} ms, RoCE packets {} / {}",
        kind.name(),
        connect.as_secs_f64() * 1e3,
        a1 - a0,
        b1 - b0
    );

    let out = cli(&["status", "--prometheus"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("envoy_smc_sockets{mode=\"SMCR\",state=\"ACTIVE\"} ")),
        "{text}"
    );
    let out = cli(&["status", "--mode", "smcr", "--pid", &pid.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&vm.client_rdma), "{table}");
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn smcr_af_smc_active_on_rxe_with_data() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    smcr_case(&vm, SocketKind::AfSmc);
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn smcr_ipproto_smc_active_on_rxe_with_data() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    smcr_case(&vm, SocketKind::IpprotoSmc);
}

fn kernel_fallbacks(side: &str, reason: &str) -> u64 {
    let (_, v) = cli_json(&["status", "--json"]);
    v["kernel_fallbacks"][side]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["reason"]["name"] == reason)
                .map(|r| r["count"].as_u64().unwrap())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn fallback_switch_is_optunsupp_and_server_sees_peernosmc() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    let before = kernel_fallbacks("client", "OPTUNSUPP");
    let l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(vm.server, 0));
    let dst = l.local_addr().unwrap();
    let server = echo_once(l, 4096);
    let mut c = smc_client(SocketKind::IpprotoSmc, vm.client, dst, true);
    exchange(&mut c, 4096);
    let accepted = server.join().unwrap();

    let me = status_of(inode(&c));
    assert_eq!(me["mode"], "TCP", "{me:#}");
    assert_eq!(me["fallback"]["reason"]["name"], "OPTUNSUPP", "{me:#}");
    assert_eq!(me["fallback"]["reason"]["code"], "0x03060000");
    let srv = status_of(inode(&accepted));
    assert_eq!(srv["mode"], "TCP", "{srv:#}");
    assert_eq!(srv["fallback"]["reason"]["name"], "PEERNOSMC", "{srv:#}");
    assert!(kernel_fallbacks("client", "OPTUNSUPP") > before);

    let out = cli(&["status", "--prometheus"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("envoy_smc_fallback_sockets{reason=\"OPTUNSUPP\""),
        "{text}"
    );
    assert!(
        text.contains("envoy_smc_kernel_fallback_reason{side=\"client\",reason=\"OPTUNSUPP\"}"),
        "{text}"
    );
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn plain_tcp_server_is_peernosmc() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    let l = TcpListener::bind(SocketAddrV4::new(vm.server, 0)).unwrap();
    let dst = l.local_addr().unwrap();
    let server = echo_once(l, 4096);
    let mut c = smc_client(SocketKind::AfSmc, vm.client, dst, false);
    exchange(&mut c, 4096);
    let _accepted = server.join().unwrap();
    let me = status_of(inode(&c));
    assert_eq!(me["mode"], "TCP", "{me:#}");
    assert_eq!(me["fallback"]["reason"]["name"], "PEERNOSMC", "{me:#}");
    assert_eq!(me["local"], c.local_addr().unwrap().to_string());
}

/// Puts the UEID back however the test ends.
struct UeidBack(String);
impl Drop for UeidBack {
    fn drop(&mut self) {
        let _ = cli(&["ueid", "add", &self.0]);
    }
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn without_ueid_nosmcdev_and_with_it_smcr_again() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    assert!(!vm.ueid.is_empty(), "the harness set no UEID");
    let _back = UeidBack(vm.ueid.clone());
    let (code, v) = cli_json(&["ueid", "remove", &vm.ueid, "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ueids"].as_array().unwrap().len(), 0, "{v}");

    let (code, d) = cli_json(&["doctor", "--json"]);
    assert_eq!(code, 1, "not ready without a UEID: {d:#}");
    let eid = d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "smc-rv2 eid")
        .unwrap()
        .clone();
    assert_eq!(eid["status"], "fail", "{eid}");

    let l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(vm.server, 0));
    let dst = l.local_addr().unwrap();
    let server = echo_once(l, 1024);
    let mut c = smc_client(SocketKind::IpprotoSmc, vm.client, dst, false);
    exchange(&mut c, 1024);
    let accepted = server.join().unwrap();
    let me = status_of(inode(&c));
    assert_eq!(me["mode"], "TCP", "{me:#}");
    assert_eq!(me["fallback"]["reason"]["name"], "NOSMCDEV", "{me:#}");
    eprintln!(
        "server side without UEID: {}",
        status_of(inode(&accepted))["fallback"]
    );

    // back: the CLI's `ueid add` is what turns SMC-Rv2 on
    let (code, v) = cli_json(&["ueid", "add", &vm.ueid.to_lowercase(), "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ueids"][0], vm.ueid.as_str(), "upper-cased: {v}");
    let (code, v) = cli_json(&["ueid", "add", &vm.ueid, "--json"]);
    assert_eq!(code, 0, "adding it twice is fine: {v}");
    let l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(vm.server, 0));
    let dst = l.local_addr().unwrap();
    let server = echo_once(l, 1024);
    let mut c = smc_client(SocketKind::IpprotoSmc, vm.client, dst, false);
    exchange(&mut c, 1024);
    let _accepted = server.join().unwrap();
    assert_eq!(status_of(inode(&c))["mode"], "SMCR");
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn doctor_is_ready() {
    let Some(_vm) = vm() else { return };
    let _g = lock();
    let (code, d) = cli_json(&["doctor", "--json"]);
    assert_eq!(code, 0, "{d:#}");
    assert_eq!(d["ready"], true);
    assert_eq!(d["af_smc"], true);
    assert_eq!(d["ipproto_smc"], true);
    let names: Vec<&str> = d["smcr_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"rxea") && names.contains(&"rxeb"),
        "{names:?}"
    );
    let out = cli(&["doctor"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready: this node"));
}

/// Accepts and holds connections for as long as the test runs.
fn serve_forever(l: TcpListener) {
    thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept() {
            held.push(s);
        }
    });
}

/// Drops SYNs carrying TCP option 254 to one port; removes the rule however the test ends.
struct BlackHole(u16);
impl BlackHole {
    fn rule(&self, op: &str) -> Output {
        Command::new("iptables-legacy")
            .args([op, "INPUT", "-p", "tcp", "--dport", &self.0.to_string()])
            .args(["--syn", "--tcp-option", "254", "-j", "DROP"])
            .output()
            .expect("iptables-legacy")
    }
    fn new(port: u16) -> BlackHole {
        let b = BlackHole(port);
        let out = b.rule("-I");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }
}
impl Drop for BlackHole {
    fn drop(&mut self) {
        let _ = self.rule("-D");
    }
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn check_tells_smcr_fallback_and_black_hole_apart() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    let src = vm.client.to_string();
    let run = |target: &str, extra: &[&str]| {
        let mut a = vec!["check", target, "--source", &src, "--json"];
        a.extend_from_slice(extra);
        let t0 = Instant::now();
        let (code, v) = cli_json(&a);
        (code, v, t0.elapsed())
    };

    // SMC-R, both flavours
    let l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(vm.server, 0));
    let smc_dst = l.local_addr().unwrap().to_string();
    serve_forever(l);
    for kind in ["ipproto-smc", "af-smc"] {
        let (code, v, _) = run(&smc_dst, &["--kind", kind]);
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["verdict"], "smc_r", "{v:#}");
        assert_eq!(v["socket"]["link"]["ib_device"], vm.client_rdma.as_str());
        assert!(v["summary"].as_str().unwrap().starts_with("SMC-R"), "{v}");
    }
    // the fallback switch: fallback OPTUNSUPP
    let (code, v, _) = run(&smc_dst, &["--fallback-switch"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["verdict"], "fallback");
    assert_eq!(
        v["socket"]["fallback"]["reason"]["name"], "OPTUNSUPP",
        "{v:#}"
    );

    // a plain TCP server: fallback PEERNOSMC
    let l = TcpListener::bind(SocketAddrV4::new(vm.server, 0)).unwrap();
    let tcp_dst = l.local_addr().unwrap();
    serve_forever(l);
    let (code, v, _) = run(&tcp_dst.to_string(), &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["verdict"], "fallback");
    assert_eq!(
        v["socket"]["fallback"]["reason"]["name"], "PEERNOSMC",
        "{v:#}"
    );

    // the same server behind a path that drops SYNs with option 254: a black hole, told in
    // seconds (the kernel alone would take 134 s to give up)
    let l = TcpListener::bind(SocketAddrV4::new(vm.server, 0)).unwrap();
    let hole = l.local_addr().unwrap();
    serve_forever(l);
    let _rule = BlackHole::new(hole.port());
    let (code, v, took) = run(&hole.to_string(), &[]);
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(v["verdict"], "black_hole", "{v:#}");
    assert_eq!(v["tcp_connect"]["ok"], true);
    assert_eq!(v["syn_state"]["tcp_state"], 2, "SYN_SENT: {v:#}");
    assert!(v["syn_state"]["retransmits"].as_u64().unwrap() >= 1);
    assert!(
        took < Duration::from_secs(8),
        "black-hole check took {took:?}"
    );
    eprintln!("black hole told apart in {:.2} s", took.as_secs_f64());
    let out = cli(&["check", &hole.to_string(), "--source", &src]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("black hole"));
}

/// Captures the kernel's raw replies (with a live SMC-R and a fallback connection) into
/// `$ENVOY_SMC_VM_SHARED/fixtures/*.bin`; tests/diag_parsers.rs parses the copies kept in
/// tests/fixtures/. Also asserts that the captures parse.
#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn capture_kernel_replies_as_fixtures() {
    let Some(vm) = vm() else { return };
    let _g = lock();
    let l = smc_listener(SocketKind::AfSmc, SocketAddrV4::new(vm.server, 0));
    let dst = l.local_addr().unwrap();
    serve_forever(l);
    let _smcr = smc_client(SocketKind::AfSmc, vm.client, dst, false);
    let _fb = smc_client(SocketKind::AfSmc, vm.client, dst, true);

    let dir = std::path::PathBuf::from(
        std::env::var("ENVOY_SMC_VM_SHARED").unwrap_or_else(|_| "/tmp".into()),
    )
    .join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let save = |name: &str, msgs: &[netlink::OwnedMsg]| {
        let mut bytes = Vec::new();
        for m in msgs {
            bytes.extend(build_msg(m.ty, m.flags, 1, &m.payload));
        }
        bytes.extend(build_msg(netlink::NLMSG_DONE, 2, 1, &0i32.to_ne_bytes()));
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    let mut diag = NlSocket::open(libc::NETLINK_SOCK_DIAG).unwrap();
    let msgs = common::wait_for(
        "smc_diag to show an SMC-R socket with LGRINFO and a fallback socket",
        Duration::from_secs(10),
        || {
            let msgs = diag
                .request(
                    "smc_diag",
                    smc_diag::SOCK_DIAG_BY_FAMILY,
                    libc::NLM_F_DUMP as u16,
                    &smc_diag::dump_request(),
                )
                .unwrap();
            let socks = smc_diag::parse_dump(&msgs).unwrap();
            (socks.iter().any(|s| s.link.is_some())
                && socks.iter().any(|s| s.fallback_reason().is_some()))
            .then_some(msgs)
        },
    );
    save("smc_diag_dump.bin", &msgs);

    let fam = SmcGenl::open().unwrap().family;
    let mut g = NlSocket::open(libc::NETLINK_GENERIC).unwrap();
    for (name, c) in [
        ("genl_sys_info.bin", genl::cmd::GET_SYS_INFO),
        ("genl_dev_smcr.bin", genl::cmd::GET_DEV_SMCR),
        ("genl_stats.bin", genl::cmd::GET_STATS),
        ("genl_fback_stats.bin", genl::cmd::GET_FBACK_STATS),
        ("genl_ueid.bin", genl::cmd::DUMP_UEID),
        ("genl_hs_limitation.bin", genl::cmd::DUMP_HS_LIMITATION),
    ] {
        let msgs = g
            .request(
                "capture",
                fam.id,
                libc::NLM_F_DUMP as u16,
                &genl::genl_payload(c, genl::SMC_GENL_FAMILY_VERSION, &[]),
            )
            .unwrap();
        assert!(!msgs.is_empty(), "{name}: no reply");
        save(name, &msgs);
    }
    eprintln!("fixtures written to {}", dir.display());
}
