//! Seeing every pod of the node, inside the test VM (tests/vm/run.sh; `#[ignore]`d, so skipped
//! by a plain `cargo test`, and returning with a message unless ENVOY_SMC_VM=1). Run with `tests/vm/suite.sh vm_netns` or as part of the whole suite.
//!
//! - Rows of client and accepted sockets, both flavours, on SMC-R and on the TCP fallback, show
//!   the real local and peer addresses and the right flavour (smc_diag reports sockets accepted
//!   by an `IPPROTO_SMC` listener as `AF_SMC` with zero addresses).
//! - `status --all-netns` and `exporter` find two pod-like network namespaces besides the root
//!   one (each with its own UTS namespace and hostname, SMC sockets in each: a listener, a
//!   client and its accepted socket, on loopback, so on TCP fallback: rxe carries SMC-R only in
//!   the initial namespace), labelled with namespace, process and hostname; without
//!   CAP_SYS_ADMIN every namespace is reported as not entered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use envoy_smc_core::smc::SocketKind;
use serde_json::Value;

mod common;
use common::vm::{
    cli, http, in_vm, inode, json, row, smc_client, smc_listener, start_exporter, terminate,
    try_http,
};

const RUN_WITH: &str = "tests/vm/suite.sh vm_netns";

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// A client and the socket its listener accepted, one round trip made; then both rows as
/// `status` (and, for the same namespace, `status --all-netns`) shows them.
fn rows_case(kind: SocketKind, switch: bool, mode: &str) {
    let l = smc_listener(kind, SocketAddrV4::new(SERVER, 0));
    let dst = l.local_addr().unwrap();
    let mut c = smc_client(kind, CLIENT, dst, switch);
    let (mut a, _) = l.accept().expect("accept");
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    a.read_exact(&mut buf).unwrap();
    let client_addr = c.local_addr().unwrap();

    let v = json(&cli(&["status", "--json"]));
    for (what, ino, local, peer) in [
        ("client", inode(&c), client_addr, dst),
        ("accepted", inode(&a), dst, client_addr),
    ] {
        let r = row(&v, ino);
        assert_eq!(r["local"], local.to_string(), "{what}: {r:#}");
        assert_eq!(r["peer"], peer.to_string(), "{what}: {r:#}");
        assert_eq!(r["flavour"], kind.name(), "{what}: {r:#}");
        assert_eq!(r["mode"], mode, "{what}: {r:#}");
    }
    // The table shows the addresses too, not `*:port`.
    let out = cli(&["status", "--pid", &std::process::id().to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains(&inode(&a).to_string()))
        .unwrap_or_else(|| panic!("accepted socket not in the table:\n{table}"));
    assert!(
        line.contains(&dst.to_string()) && line.contains(&client_addr.to_string()),
        "{line}"
    );
    assert!(line.contains(kind.name()), "{line}");
    eprintln!("{}: {line}", kind.name());
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn client_and_accepted_rows_af_smc_smcr() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let _g = lock();
    rows_case(SocketKind::AfSmc, false, "SMCR");
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn client_and_accepted_rows_ipproto_smc_smcr() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let _g = lock();
    rows_case(SocketKind::IpprotoSmc, false, "SMCR");
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn client_and_accepted_rows_ipproto_smc_fallback() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let _g = lock();
    rows_case(SocketKind::IpprotoSmc, true, "TCP");
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn client_and_accepted_rows_af_smc_fallback() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let _g = lock();
    rows_case(SocketKind::AfSmc, true, "TCP");
}

// ---------------------------------------------------------------------------------------------
// namespaces

/// A pod-like network namespace (and UTS namespace with its own hostname) holding a Python
/// process with SMC sockets: an `IPPROTO_SMC` listener on 127.0.0.1:7000 with one client
/// connected and accepted, and an `AF_SMC` listener on 7001. Removed on drop.
struct Pod {
    name: String,
    child: Child,
}

const POD_PY: &str = r#"
import socket, sys
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 256)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7000)); l.listen(8)
l2 = socket.socket(43, socket.SOCK_STREAM, 0)
import ctypes, struct
sin = struct.pack("=H", 2) + struct.pack("!H", 7001) + socket.inet_aton("127.0.0.1") + bytes(8)
assert ctypes.CDLL(None, use_errno=True).bind(l2.fileno(), sin, len(sin)) == 0
l2.listen(8)
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 256)
c.connect(("127.0.0.1", 7000))
a, _ = l.accept()
c.sendall(b"x"); a.recv(1)
print("ready", flush=True)
sys.stdin.read()
"#;

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

impl Pod {
    fn start(name: &str) -> Pod {
        // Left over from an interrupted run, if any.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        let mut child = Command::new("ip")
            .args(["netns", "exec", name, "unshare", "--uts", "sh", "-c"])
            .arg(format!("hostname {name} && exec python3 -c '{POD_PY}'"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pod process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pod {name} did not come up");
        Pod {
            name: name.to_string(),
            child,
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn section<'a>(all: &'a Value, hostname: &str) -> &'a Value {
    all["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == hostname)
        .unwrap_or_else(|| panic!("no namespace with hostname {hostname}: {all:#}"))
}

fn metric(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn all_netns_sees_the_root_and_two_pods() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let _g = lock();
    let root_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    // A socket in the root namespace too.
    let root_l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(SERVER, 0));
    let pods = [Pod::start("pod-a"), Pod::start("pod-b")];

    let out = cli(&["status", "--all-netns", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let all = json(&out);
    let nss = all["namespaces"].as_array().unwrap();
    assert!(nss.len() >= 3, "{all:#}");
    let mut seen = std::collections::HashSet::new();
    assert!(
        nss.iter().all(|s| seen.insert(s["netns"].as_u64())),
        "deduplicated"
    );
    let root = nss.iter().find(|s| s["netns"] == root_ns).expect("root ns");
    row(root, inode(&root_l));

    for pod in &pods {
        let s = section(&all, &pod.name);
        assert_ne!(s["netns"], root_ns);
        assert_eq!(s["error"], Value::Null, "{s:#}");
        let conns = s["connections"].as_array().unwrap();
        let pid = pod.child.id();
        let mine: Vec<&Value> = conns
            .iter()
            .filter(|c| {
                c["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["pid"] == pid)
            })
            .collect();
        assert_eq!(mine.len(), 4, "2 listeners, client, accepted: {s:#}");
        let listeners = mine.iter().filter(|c| c["state"] == "LISTEN").count();
        assert_eq!(listeners, 2, "{s:#}");
        let af_smc_l = mine
            .iter()
            .find(|c| c["state"] == "LISTEN" && c["local"] == "127.0.0.1:7001")
            .unwrap_or_else(|| panic!("AF_SMC listener: {s:#}"));
        assert_eq!(af_smc_l["flavour"], "AF_SMC");
        for c in mine.iter().filter(|c| c["state"] != "LISTEN") {
            assert_eq!(c["flavour"], "IPPROTO_SMC", "{c:#}");
            assert_eq!(c["mode"], "TCP", "no SMC device in a pod namespace: {c:#}");
            assert!(
                c["local"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{c:#}"
            );
            assert!(
                c["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{c:#}"
            );
            assert_eq!(c["processes"][0]["comm"], "python3");
        }
        let reasons: Vec<String> = mine
            .iter()
            .filter(|c| c["state"] != "LISTEN")
            .map(|c| c["fallback"]["reason"]["name"].to_string())
            .collect();
        eprintln!(
            "{}: net:[{}] fallback reasons {reasons:?}",
            pod.name, s["netns"]
        );
        // kernel counters are per namespace and were read there
        assert!(
            s["kernel_fallbacks"]["client_total"].as_u64().unwrap() >= 1,
            "{s:#}"
        );
    }

    // The table: one section per namespace with the hostname in its header.
    let text = String::from_utf8_lossy(&cli(&["status", "--all-netns"]).stdout).to_string();
    for pod in &pods {
        assert!(
            text.lines().any(
                |l| l.starts_with("=== net:[") && l.contains(&format!("hostname {}", pod.name))
            ),
            "{text}"
        );
    }

    // Without CAP_SYS_ADMIN no namespace can be entered: each is reported, none skipped.
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"])
        .arg(env!("CARGO_BIN_EXE_envoy-smc"))
        .args(["status", "--all-netns", "--json"])
        .output()
        .expect("setpriv");
    let v = json(&out);
    let n = v["namespaces"].as_array().unwrap().len();
    assert!(n >= 3, "{v:#}");
    assert_eq!(v["not_entered"], n as u64, "{v:#}");
    let e = v["namespaces"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("not entered") && e.contains("CAP_SYS_ADMIN"),
        "{e}"
    );
    assert_eq!(out.status.code(), Some(3));

    // The exporter: one scrape shows every namespace with its pod label.
    let (mut exp, _err, addr) = start_exporter("0");
    let page = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    for pod in &pods {
        let p = format!("pod=\"{}\"", pod.name);
        let listen = page
            .lines()
            .find(|l| {
                l.starts_with("envoy_smc_sockets{")
                    && l.contains(&p)
                    && l.contains("state=\"LISTEN\"")
            })
            .unwrap_or_else(|| panic!("{page}"));
        assert!(listen.ends_with(" 2"), "{listen}");
        let fb = page
            .lines()
            .find(|l| {
                l.starts_with("envoy_smc_sockets{")
                    && l.contains(&p)
                    && l.contains("mode=\"TCP\"")
                    && l.contains("state=\"ACTIVE\"")
            })
            .unwrap_or_else(|| panic!("{page}"));
        assert!(fb.ends_with(" 2"), "{fb}");
        let up = page
            .lines()
            .find(|l| l.starts_with("envoy_smc_netns_up{") && l.contains(&p))
            .unwrap_or_else(|| panic!("{page}"));
        assert!(up.ends_with(" 1"), "{up}");
    }
    assert_eq!(metric(&page, "envoy_smc_up "), Some(1.0), "{page}");
    let took = metric(&page, "envoy_smc_scrape_duration_seconds ").unwrap();
    eprintln!("exporter scrape of {} namespaces: {took:.4} s", nss.len());
    assert!(http(addr, "GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(addr, "BREW /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(addr, "nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
    // SIGTERM: a clean exit 0.
    let status = terminate(&mut exp, "the exporter");
    assert_eq!(status.code(), Some(0), "exporter exit after SIGTERM");
    drop(pods);
}

// ---------------------------------------------------------------------------------------------
// a real Prometheus

fn prometheus_bin() -> Option<String> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(String::from);
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus not installed (scripts/install-deps.sh installs Debian's package)"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
    }
    found
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query over Prometheus' HTTP API (`None`: no result yet).
fn promql(prom: SocketAddr, q: &str) -> Option<f64> {
    let answer = try_http(
        prom,
        &format!(
            "GET /api/v1/query?query={} HTTP/1.1\r\nHost: prom\r\nConnection: close\r\n\r\n",
            urlencode(q)
        ),
    )?;
    let body = answer.split("\r\n\r\n").nth(1)?;
    // The API may answer chunked; the JSON object is all we need.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    let v: Value = serde_json::from_str(&body[start..=end]).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Kills the child on drop.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs the SMC-R VM (tests/vm/suite.sh runs it)"]
fn prometheus_scrapes_the_exporter_while_traffic_runs() {
    if !in_vm(RUN_WITH) {
        return;
    }
    let Some(prom_bin) = prometheus_bin() else {
        return;
    };
    let _g = lock();
    // Traffic: 4 SMC-R connections and 3 kept on TCP by the fallback switch, echoing all along.
    let l = smc_listener(SocketKind::IpprotoSmc, SocketAddrV4::new(SERVER, 0));
    let dst = l.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for i in 0..7 {
        clients.push(smc_client(SocketKind::IpprotoSmc, CLIENT, dst, i >= 4));
        accepted.push(l.accept().unwrap().0);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (c, a) in clients.iter_mut().zip(accepted.iter_mut()) {
                    c.write_all(&[7u8; 512]).unwrap();
                    let mut buf = [0u8; 512];
                    a.read_exact(&mut buf).unwrap();
                }
                rounds += 1;
                thread::sleep(Duration::from_millis(20));
            }
            rounds
        })
    };

    let (exp, _err, target) = start_exporter("5");
    let exporter = Reaped(exp);
    let target = target.to_string();

    let dir = std::env::temp_dir().join(format!("prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../monitoring/envoy-smc.rules.yaml"
    );
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n  - job_name: envoy-smc\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let prom_addr: SocketAddr = "127.0.0.1:19090".parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prom = Reaped(
        Command::new(&prom_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );

    // Wait (condition, not time) until Prometheus has scraped the numbers the traffic makes.
    let queries = [
        (
            "sum(envoy_smc_sockets{mode=\"SMCR\",state=\"ACTIVE\"})",
            8.0,
        ),
        // Fallback clients that had the switch before connect() stay in state INIT (the
        // kernel's smc_connect returns early for them): count every non-listening state.
        (
            "sum(envoy_smc_sockets{mode=\"TCP\",state!=\"LISTEN\"})",
            6.0,
        ),
        ("sum(envoy_smc_fallback_sockets{reason=\"OPTUNSUPP\"})", 3.0),
        ("sum(envoy_smc_fallback_sockets{reason=\"PEERNOSMC\"})", 3.0),
        ("max(envoy_smc_up)", 1.0),
        ("count(envoy_smc_doctor_ready == 1)", 1.0),
        (
            "sum(rate(envoy_smc_kernel_bytes_total{tech=\"smcr\",direction=\"tx\"}[10s])) > bool 0",
            1.0,
        ),
    ];
    let t0 = Instant::now();
    let last = loop {
        let got: Vec<Option<f64>> = queries.iter().map(|(q, _)| promql(prom_addr, q)).collect();
        if queries
            .iter()
            .zip(&got)
            .all(|((_, want), v)| *v == Some(*want))
        {
            break got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "Prometheus never saw the expected numbers: {:?}\nprometheus log: {}",
            queries.iter().zip(&got).collect::<Vec<_>>(),
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(500));
    };
    for ((q, _), v) in queries.iter().zip(&last) {
        eprintln!("PromQL {q} = {v:?}");
    }
    eprintln!(
        "Prometheus had them after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for state in ["ACTIVE", "INIT"] {
        let q = format!("sum(envoy_smc_sockets{{mode=\"TCP\",state=\"{state}\"}})");
        eprintln!("PromQL {q} = {:?}", promql(prom_addr, &q));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = traffic.join().unwrap();
    assert!(rounds > 0);
    drop(prom);
    drop(exporter);
    let _ = std::fs::remove_dir_all(&dir);
}
