//! `envoy-smc status`: the live SMC sockets of this network namespace (like smcss, with process
//! names and fallback reasons in words), a summary by mode and reason, the kernel's fallback
//! counters, and the destinations proxies hold on TCP because they dropped SMC's SYNs (adaptive
//! fallback); as a table, JSON, or Prometheus text. Exit 0, or 3 when smc_diag is unavailable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use envoy_smc_cli::diag::dibs::{self, SmcdDevice};
use envoy_smc_cli::diag::genl::{FallbackStats, SmcStats};
use envoy_smc_cli::diag::procs::{self, Owner};
use envoy_smc_cli::diag::{inet_diag, smc_diag, DiagError, Mode, SmcGenl, SmcSocket};
use serde::Serialize;

use envoy_smc_core::adaptive::publish::ProcessTable;

use crate::exporter::metrics::lv;
use crate::{exit, held};

mod all_netns;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print Prometheus text exposition format.
    #[arg(long)]
    prometheus: bool,
    /// Only sockets held by this process id.
    #[arg(long)]
    pid: Option<u32>,
    /// Only sockets held by processes with this command name (e.g. envoy).
    #[arg(long)]
    comm: Option<String>,
    /// Only sockets in this mode: smcr, smcd or tcp (fallback).
    #[arg(long, value_parser = ["smcr", "smcd", "tcp"])]
    mode: Option<String>,
    /// Leave out listening sockets.
    #[arg(long)]
    no_listen: bool,
    /// Where proxies publish their adaptive-fallback tables (default: $ENVOY_SMC_STATE_DIR, else
    /// /run/envoy-smc for root, /tmp/envoy-smc-<uid> for other users). Only a directory nobody
    /// but its owner can write is read, and in it only that owner's regular files.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Every network namespace of the node (each pod's), not only this one: entered one at a
    /// time from a helper thread (needs CAP_SYS_ADMIN); rows labelled with namespace and pod.
    #[arg(long)]
    all_netns: bool,
}

#[derive(Debug, Serialize)]
struct Conn {
    #[serde(flatten)]
    socket: SmcSocket,
    flavour: &'static str,
    processes: Vec<Owner>,
    /// SMC-D: the device this side uses (`lo (loopback)`), found by the GID in DMBINFO.
    #[serde(skip_serializing_if = "Option::is_none")]
    smcd_device: Option<String>,
}

/// What the DEVICE column shows: the RDMA device and port (SMC-R), the SMC-D device and the
/// token of this side's DMB (SMC-D), or `-`.
fn device(c: &Conn) -> String {
    let s = &c.socket;
    if let Some(l) = &s.link {
        return format!("{}/{}", l.ib_device, l.ib_port);
    }
    match (&s.dmb, &c.smcd_device) {
        (Some(d), Some(name)) => format!("{name} dmb {:#x}", d.token),
        (Some(d), None) => format!("smcd gid {:#x} dmb {:#x}", d.my_gid, d.token),
        _ => "-".into(),
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    total: usize,
    by_mode: BTreeMap<String, usize>,
    fallback_by_reason: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    available: bool,
    error: Option<String>,
    connections: Vec<Conn>,
    summary: Summary,
    kernel_fallbacks: Option<FallbackStats>,
    kernel_stats: Option<SmcStats>,
    kernel_counters_error: Option<String>,
    /// Per process: destinations held on TCP, probing or recovered (adaptive fallback).
    black_holes: Vec<ProcessTable>,
}

/// The rows to show (filtered, listeners first) and their summary, for one namespace's dump.
fn rows(args: &Args, socks: Vec<SmcSocket>, owners: &procs::SocketOwners) -> (Vec<Conn>, Summary) {
    // The SMC-D devices (dibs) are not per namespace: sysfs lists them for the whole node.
    let smcd_devices: Vec<SmcdDevice> = dibs::devices();
    let mut conns: Vec<Conn> = socks
        .into_iter()
        .map(|s| Conn {
            flavour: s.flavour(),
            processes: owners.get(s.inode).to_vec(),
            smcd_device: s
                .dmb
                .as_ref()
                .and_then(|d| dibs::device_of(&smcd_devices, d))
                .map(SmcdDevice::describe),
            socket: s,
        })
        .filter(|c| keep(args, c))
        .collect();
    conns.sort_by_key(|c| {
        (
            c.socket.state != envoy_smc_cli::diag::SmcState::LISTEN,
            c.socket.local.port(),
            c.socket.inode,
        )
    });
    let mut summary = Summary {
        total: conns.len(),
        ..Summary::default()
    };
    for c in &conns {
        *summary.by_mode.entry(c.socket.mode.name()).or_default() += 1;
        if let Some(r) = c.socket.fallback_reason() {
            *summary.fallback_by_reason.entry(r.to_string()).or_default() += 1;
        }
    }
    (conns, summary)
}

fn keep(args: &Args, c: &Conn) -> bool {
    if let Some(pid) = args.pid {
        if !c.processes.iter().any(|o| o.pid == pid) {
            return false;
        }
    }
    if let Some(comm) = &args.comm {
        if !c.processes.iter().any(|o| &o.comm == comm) {
            return false;
        }
    }
    if let Some(m) = &args.mode {
        let want = match m.as_str() {
            "smcr" => Mode::SmcR,
            "smcd" => Mode::SmcD,
            _ => Mode::Fallback,
        };
        if c.socket.mode != want {
            return false;
        }
    }
    !(args.no_listen && c.socket.state == envoy_smc_cli::diag::SmcState::LISTEN)
}

fn kernel_counters() -> Result<(FallbackStats, Option<SmcStats>), DiagError> {
    let mut g = SmcGenl::open()?;
    let f = g.fallback_stats()?;
    let s = g.stats().ok().flatten();
    Ok((f, s))
}

fn black_holes(args: &Args) -> Vec<ProcessTable> {
    held::load(args.state_dir.as_deref(), args.pid, args.comm.as_deref())
}

pub fn run(args: Args) -> u8 {
    if args.all_netns {
        return all_netns::run(&args);
    }
    let socks = match smc_diag::dump() {
        Ok(s) => s,
        Err(e) => return unavailable(&args, &e),
    };
    let mut socks = socks;
    inet_diag::fill_addresses(&mut socks);
    let owners = procs::socket_owners();
    let (conns, summary) = rows(&args, socks, &owners);
    let (kernel_fallbacks, kernel_stats, kernel_counters_error) = match kernel_counters() {
        Ok((f, s)) => (Some(f), s, None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    let report = Report {
        available: true,
        error: None,
        connections: conns,
        summary,
        kernel_fallbacks,
        kernel_stats,
        kernel_counters_error,
        black_holes: black_holes(&args),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if args.prometheus {
        print!("{}", prometheus(&report));
    } else {
        print!("{}", table(&report));
    }
    exit::OK
}

fn unavailable(args: &Args, e: &DiagError) -> u8 {
    let msg = e.to_string();
    if args.json {
        let r = Report {
            available: false,
            error: Some(msg),
            connections: Vec::new(),
            summary: Summary::default(),
            kernel_fallbacks: None,
            kernel_stats: None,
            kernel_counters_error: None,
            black_holes: black_holes(args),
        };
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else if args.prometheus {
        // Scrapers get a well-formed page that says "down" rather than an error.
        print!(
            "# HELP envoy_smc_diag_up Whether smc_diag answered (1) or not (0).\n\
             # TYPE envoy_smc_diag_up gauge\nenvoy_smc_diag_up 0\n{}",
            held::prometheus(&black_holes(args))
        );
    } else {
        eprintln!("envoy-smc status: {msg}");
        eprintln!("(run `envoy-smc doctor` to see what this node lacks)");
        print!("{}", held::table(&black_holes(args)));
    }
    exit::UNAVAILABLE
}

fn addr(s: &SmcSocket, local: bool) -> String {
    let a = if local { s.local } else { s.peer };
    if s.addresses_unknown() {
        format!("*:{}", a.port())
    } else {
        a.to_string()
    }
}

fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:<5} {:<11} {:<23} {:<23} {:>9} {:<20} {:<28} DEVICE",
        "STATE", "MODE", "FLAVOUR", "LOCAL", "PEER", "INODE", "PROCESS", "FALLBACK (PEER)"
    );
    for c in &r.connections {
        let s = &c.socket;
        let procs = if c.processes.is_empty() {
            "-".to_string()
        } else {
            c.processes
                .iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        envoy_smc_core::owned_dir::printable(&p.comm),
                        p.pid
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let fb = match s.fallback_reason() {
            Some(r) => {
                let peer = s.fallback.map(|f| f.peer_diagnosis).unwrap_or_default();
                if peer.0 != 0 {
                    format!("{r} ({peer})")
                } else {
                    r.to_string()
                }
            }
            None => "-".into(),
        };
        let dev = device(c);
        let _ = writeln!(
            o,
            "{:<16} {:<5} {:<11} {:<23} {:<23} {:>9} {:<20} {:<28} {}",
            s.state.name(),
            s.mode.name(),
            c.flavour,
            addr(s, true),
            addr(s, false),
            s.inode,
            procs,
            fb,
            dev
        );
    }
    let modes: Vec<String> = r
        .summary
        .by_mode
        .iter()
        .map(|(m, n)| format!("{n} {m}"))
        .collect();
    let _ = writeln!(
        o,
        "\n{} SMC socket(s){}{}",
        r.summary.total,
        if modes.is_empty() {
            String::new()
        } else {
            format!(": {}", modes.join(", "))
        },
        if r.summary.fallback_by_reason.is_empty() {
            String::new()
        } else {
            format!(
                "; fallback reasons: {}",
                r.summary
                    .fallback_by_reason
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    match (&r.kernel_fallbacks, &r.kernel_counters_error) {
        (Some(f), _) => {
            let side = |v: &[envoy_smc_cli::diag::genl::ReasonCount]| {
                v.iter()
                    .map(|rc| format!("{} {}", rc.reason, rc.count))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                o,
                "kernel fallback counters: client {} [{}], server {} [{}]",
                f.client_total,
                side(&f.client),
                f.server_total,
                side(&f.server)
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "kernel fallback counters unavailable: {e}");
        }
        _ => {}
    }
    if let Some(s) = &r.kernel_stats {
        for (tech, t) in [("SMC-R", &s.smcr), ("SMC-D", &s.smcd)] {
            let handshakes = t.client_v1_success
                + t.client_v2_success
                + t.server_v1_success
                + t.server_v2_success;
            if tech == "SMC-D" && handshakes == 0 && t.rx_bytes == 0 && t.tx_bytes == 0 {
                continue; // no SMC-D device, or never used: one line less
            }
            let _ = writeln!(
                o,
                "kernel {tech} handshakes: client v1 {} v2 {}, server v1 {} v2 {}; {tech} bytes rx {} tx {}",
                t.client_v1_success,
                t.client_v2_success,
                t.server_v1_success,
                t.server_v2_success,
                t.rx_bytes,
                t.tx_bytes
            );
        }
        let _ = writeln!(
            o,
            "kernel SMC handshake errors: client {} server {}",
            s.client_handshake_errors, s.server_handshake_errors
        );
    }
    o.push_str(&held::table(&r.black_holes));
    o
}

fn prometheus(r: &Report) -> String {
    let mut o = String::new();
    o.push_str("# HELP envoy_smc_diag_up Whether smc_diag answered (1) or not (0).\n");
    o.push_str("# TYPE envoy_smc_diag_up gauge\nenvoy_smc_diag_up 1\n");

    let mut by_mode_state: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_reason: BTreeMap<(String, String), usize> = BTreeMap::new();
    for c in &r.connections {
        *by_mode_state
            .entry((c.socket.mode.name(), c.socket.state.name()))
            .or_default() += 1;
        if let Some(reason) = c.socket.fallback_reason() {
            let peer = c
                .socket
                .fallback
                .map(|f| f.peer_diagnosis)
                .unwrap_or_default();
            *by_reason
                .entry((reason.to_string(), peer.to_string()))
                .or_default() += 1;
        }
    }
    o.push_str("# HELP envoy_smc_sockets SMC sockets in this network namespace, by mode (SMCR, SMCD, TCP = fallback) and state.\n");
    o.push_str("# TYPE envoy_smc_sockets gauge\n");
    for ((m, s), n) in &by_mode_state {
        let _ = writeln!(
            o,
            "envoy_smc_sockets{{mode=\"{}\",state=\"{}\"}} {n}",
            lv(m),
            lv(s)
        );
    }
    o.push_str("# HELP envoy_smc_fallback_sockets SMC sockets on TCP fallback, by local reason and peer diagnosis.\n");
    o.push_str("# TYPE envoy_smc_fallback_sockets gauge\n");
    for ((reason, peer), n) in &by_reason {
        let _ = writeln!(
            o,
            "envoy_smc_fallback_sockets{{reason=\"{}\",peer_diagnosis=\"{}\"}} {n}",
            lv(reason),
            lv(peer)
        );
    }
    if let Some(f) = &r.kernel_fallbacks {
        o.push_str("# HELP envoy_smc_kernel_fallbacks_total Connections the kernel fell back to TCP, by side (since the smc module loaded).\n");
        o.push_str("# TYPE envoy_smc_kernel_fallbacks_total counter\n");
        let _ = writeln!(
            o,
            "envoy_smc_kernel_fallbacks_total{{side=\"client\"}} {}",
            f.client_total
        );
        let _ = writeln!(
            o,
            "envoy_smc_kernel_fallbacks_total{{side=\"server\"}} {}",
            f.server_total
        );
        o.push_str("# HELP envoy_smc_kernel_fallback_reason The kernel's per-reason fallback count (16-bit, wraps; the most recent reasons only).\n");
        o.push_str("# TYPE envoy_smc_kernel_fallback_reason gauge\n");
        for (side, v) in [("client", &f.client), ("server", &f.server)] {
            for rc in v {
                let _ = writeln!(
                    o,
                    "envoy_smc_kernel_fallback_reason{{side=\"{side}\",reason=\"{}\"}} {}",
                    lv(&rc.reason.to_string()),
                    rc.count
                );
            }
        }
    }
    if let Some(s) = &r.kernel_stats {
        o.push_str("# HELP envoy_smc_kernel_handshakes_total Successful SMC handshakes, by technology, side and SMC version.\n");
        o.push_str("# TYPE envoy_smc_kernel_handshakes_total counter\n");
        for (tech, t) in [("smcr", &s.smcr), ("smcd", &s.smcd)] {
            for (side, ver, v) in [
                ("client", "v1", t.client_v1_success),
                ("client", "v2", t.client_v2_success),
                ("server", "v1", t.server_v1_success),
                ("server", "v2", t.server_v2_success),
            ] {
                let _ = writeln!(
                    o,
                    "envoy_smc_kernel_handshakes_total{{tech=\"{tech}\",side=\"{side}\",version=\"{ver}\"}} {v}"
                );
            }
        }
        o.push_str(
            "# HELP envoy_smc_kernel_handshake_errors_total Failed SMC handshakes, by side.\n",
        );
        o.push_str("# TYPE envoy_smc_kernel_handshake_errors_total counter\n");
        let _ = writeln!(
            o,
            "envoy_smc_kernel_handshake_errors_total{{side=\"client\"}} {}",
            s.client_handshake_errors
        );
        let _ = writeln!(
            o,
            "envoy_smc_kernel_handshake_errors_total{{side=\"server\"}} {}",
            s.server_handshake_errors
        );
        o.push_str("# HELP envoy_smc_kernel_bytes_total Bytes carried over SMC, by technology and direction.\n");
        o.push_str("# TYPE envoy_smc_kernel_bytes_total counter\n");
        for (tech, t) in [("smcr", &s.smcr), ("smcd", &s.smcd)] {
            let _ = writeln!(
                o,
                "envoy_smc_kernel_bytes_total{{tech=\"{tech}\",direction=\"rx\"}} {}",
                t.rx_bytes
            );
            let _ = writeln!(
                o,
                "envoy_smc_kernel_bytes_total{{tech=\"{tech}\",direction=\"tx\"}} {}",
                t.tx_bytes
            );
        }
    }
    o.push_str(&held::prometheus(&r.black_holes));
    o
}
