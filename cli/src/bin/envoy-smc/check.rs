//! `envoy-smc check HOST:PORT`: connect once over SMC and say what was negotiated; tell a path
//! that drops SYNs carrying TCP option 254 (a black hole) from one that merely falls back.
//!
//! Exit codes: 0 SMC-R or SMC-D; 1 TCP fallback; 2 bad arguments; 3 this kernel cannot do SMC
//! (or smc_diag cannot say how the connection went); 4 black hole or SMC connect failed while
//! TCP works; 5 unreachable even over TCP.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use envoy_smc_cli::diag::{check, CheckOptions, Verdict};
use envoy_smc_core::smc::{KernelSupport, SocketKind};

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// Destination, HOST:PORT (an IPv6 address in brackets: [::1]:80).
    target: String,
    /// SMC socket flavour: auto (IPPROTO_SMC where the kernel has it, else AF_SMC), af-smc,
    /// ipproto-smc.
    #[arg(long, default_value = "auto", value_parser = ["auto", "af-smc", "ipproto-smc"])]
    kind: String,
    /// Source address to bind.
    #[arg(long)]
    source: Option<IpAddr>,
    /// Longest wait for a connect, in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Apply the per-socket fallback switch first (shows what a cluster kept on TCP gets).
    #[arg(long)]
    fallback_switch: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target:?} (want HOST:PORT): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{target:?} resolves to no address"))
}

pub fn run(args: Args) -> u8 {
    let target = match resolve(&args.target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("envoy-smc check: {e}");
            return exit::USAGE;
        }
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 600.0) {
        eprintln!("envoy-smc check: --timeout must be between 0 and 600 seconds");
        return exit::USAGE;
    }
    let kind = match args.kind.as_str() {
        "af-smc" => SocketKind::AfSmc,
        "ipproto-smc" => SocketKind::IpprotoSmc,
        _ => {
            let k = KernelSupport::probe();
            if k.ipproto_smc {
                SocketKind::IpprotoSmc
            } else {
                // Also when neither works: the check then says so, with a TCP comparison.
                SocketKind::AfSmc
            }
        }
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let opts = CheckOptions {
        kind,
        source: args.source,
        timeout,
        syn_grace: Duration::from_millis(1100).min(timeout),
        fallback_switch: args.fallback_switch,
    };
    let report = check(target, &opts);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "{} via {}{}: {}",
            report.target,
            report.kind,
            if report.fallback_switch {
                " (fallback switch)"
            } else {
                ""
            },
            report.summary
        );
        // The summary already says how TCP did when SMC could not even be tried.
        let tcp_in_summary = report.verdict == Verdict::SmcUnavailable;
        if let Some(t) = report.tcp_connect.as_ref().filter(|_| !tcp_in_summary) {
            println!(
                "  plain TCP connect: {}",
                if t.ok {
                    format!("ok in {:.1} ms", t.millis)
                } else {
                    format!(
                        "failed after {:.1} ms: {}",
                        t.millis,
                        t.error.clone().unwrap_or_default()
                    )
                }
            );
        }
    }
    match report.verdict {
        Verdict::SmcR | Verdict::SmcD => exit::OK,
        Verdict::Fallback => exit::NEGATIVE,
        Verdict::SmcUnavailable | Verdict::Undetermined => exit::UNAVAILABLE,
        Verdict::BlackHole | Verdict::SmcFailed => exit::PATH_BROKEN,
        Verdict::Unreachable => exit::UNREACHABLE,
    }
}
