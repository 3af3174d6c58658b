//! envoy-smc-agent: the node agent that puts opted-in pods' stock sidecars on SMC.
//!
//! A BPF program on `update_socket_protocol` turns the TCP sockets that processes of selected
//! cgroups create into IPPROTO_SMC; this agent decides which cgroups (the proxy-uid processes
//! of pods annotated `smc.asm.alibabacloud.com/enabled: "true"`) and follows pods as they come
//! and go. No custom proxy image, no LD_PRELOAD, no envoy-smc code in the proxy.
mod bpf;
mod node;
mod select;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "envoy-smc-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the BPF program and keep the selection up to date until SIGTERM/SIGINT (which
    /// detaches it: new sockets are plain TCP again).
    Run(RunArgs),
    /// Say whether this node can run the agent and what it can do here (BTF, fmod_ret on
    /// update_socket_protocol, smc_hs_ctrl).
    Check,
    /// Show which pods the running agent selected (from its state file).
    Status(StatusArgs),
    /// Print the DaemonSet that runs the agent on every node (YAML; the same as
    /// `envoy-smc render` writes into node/agent.yaml).
    Manifest(ManifestArgs),
}

#[derive(clap::Args)]
struct StatusArgs {
    #[arg(long, default_value = state::DEFAULT_STATE_FILE)]
    state_file: PathBuf,
    /// Print the state file's JSON as it is.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ManifestArgs {
    /// The agent's image (holding /usr/local/bin/envoy-smc-agent).
    #[arg(long)]
    image: String,
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// The uid the sidecars run as.
    #[arg(long, default_value_t = select::DEFAULT_PROXY_UID)]
    uid: u32,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The uid the sidecars run as (Istio: 1337).
    #[arg(long, default_value_t = select::DEFAULT_PROXY_UID)]
    uid: u32,
    /// Seconds between two scans of /proc.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The opt-in annotation.
    #[arg(long, default_value = envoy_smc_core::config::DEFAULT_OPT_IN_ANNOTATION)]
    annotation: String,
    /// The downward-API annotations file, relative to each sidecar's root (/proc/<pid>/root).
    #[arg(long, default_value = select::DEFAULT_ANNOTATIONS_PATH)]
    annotations_path: String,
    /// The cgroup v2 mount (default: the first cgroup2 mount in /proc/self/mountinfo).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// The proc file system (the host's: run with hostPID).
    #[arg(long, default_value = "/proc")]
    proc: PathBuf,
    /// Where the agent publishes what it selected (JSON, rewritten after every change).
    #[arg(long, default_value = state::DEFAULT_STATE_FILE)]
    state_file: PathBuf,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check => node::check(),
        Command::Status(a) => state::show(&a.state_file, a.json),
        Command::Manifest(m) => {
            // The one definition, also rendered into envoy-config/node/agent.yaml.
            let d = envoy_smc_cli::render::node::agent_daemonset(
                &envoy_smc_cli::render::node::AgentParams {
                    image: &m.image,
                    namespace: &m.namespace,
                    uid: m.uid,
                },
            );
            serde_yaml::to_string(&d)
                .map(|y| print!("{y}"))
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envoy-smc-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    if !(args.interval.is_finite() && (0.05..=3600.0).contains(&args.interval)) {
        return Err(format!(
            "--interval {}: must be between 0.05 and 3600 seconds",
            args.interval
        ));
    }
    if args.annotation.is_empty() {
        return Err("--annotation: empty".into());
    }
    if args.annotations_path.starts_with('/') || args.annotations_path.split('/').any(|c| c == "..")
    {
        return Err(format!(
            "--annotations-path {:?}: must be relative to the pod's root, without ..",
            args.annotations_path
        ));
    }
    let cgroup_root = match args.cgroup_root {
        Some(p) => p,
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
            select::cgroup2_mount(&mountinfo)
                .ok_or("no cgroup2 file system mounted (the agent keys pods by cgroup v2)")?
        }
    };
    let own_cgroup = std::fs::read_to_string(args.proc.join("self/cgroup"))
        .map_err(|e| format!("{}/self/cgroup: {e}", args.proc.display()))?;
    let own = select::cgroup_v2_path(&own_cgroup)?;
    let ns_root = select::namespace_root(&cgroup_root, own, std::process::id())?;
    let mut sel = select::Selector::new(args.proc, cgroup_root, args.uid);
    sel.ns_root = ns_root;
    sel.annotation = args.annotation;
    sel.annotations_path = args.annotations_path;
    let publisher = state::Publisher::new(args.state_file)?;

    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    let converter = bpf::Converter::attach()?;
    eprintln!(
        "envoy-smc-agent: attached to update_socket_protocol; selecting uid {} processes of pods with {}=\"true\" ({} under {}, this agent's cgroup namespace at {})",
        sel.uid,
        sel.annotation,
        sel.annotations_path,
        sel.cgroup_root.display(),
        sel.ns_root
    );
    let interval = Duration::from_secs_f64(args.interval);
    let mut last_pods = String::new();
    while !STOP.load(Ordering::Relaxed) {
        let started = Instant::now();
        let scan = select::scan(&sel).map_err(|e| format!("{}: {e}", sel.proc.display()))?;
        reconcile(&converter, &scan)?;
        let counts = converter.selected()?;
        let published = state::State::new(&sel, &scan, &counts);
        // Log selection changes (not every count change).
        let pods = published.selection_summary();
        if pods != last_pods {
            eprintln!("envoy-smc-agent: selection: {pods}");
            last_pods = pods;
        }
        publisher.write(&published)?;
        while !STOP.load(Ordering::Relaxed) && started.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
    }
    // Dropping the converter detaches the program: new sockets are plain TCP from here on.
    drop(converter);
    publisher.remove();
    eprintln!("envoy-smc-agent: detached; new sockets are plain TCP");
    Ok(())
}

/// Makes the map hold exactly the scan's selected cgroups.
fn reconcile(converter: &bpf::Converter, scan: &select::Scan) -> Result<(), String> {
    let want: std::collections::BTreeSet<u64> = scan.selected().collect();
    for id in converter.selected()?.keys() {
        if !want.contains(id) {
            converter.release(*id)?;
        }
    }
    for id in &want {
        converter.select(*id)?;
    }
    Ok(())
}
