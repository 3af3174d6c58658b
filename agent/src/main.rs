//! envoy-smc-agent: the node agent that puts opted-in pods' stock sidecars on SMC.
//!
//! A BPF program on `update_socket_protocol` turns the TCP sockets that processes of selected
//! cgroups create into IPPROTO_SMC; this agent decides which cgroups (the proxy-uid processes
//! of pods annotated `smc.asm.alibabacloud.com/enabled: "true"`) and follows pods as they come
//! and go. No custom proxy image, no LD_PRELOAD, no envoy-smc code in the proxy.
mod blackhole;
mod bpf;
mod hsctrl;
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
    /// Print the DaemonSet that runs the agent on every node, after its policy ConfigMap when
    /// --config is given (YAML; the same as `envoy-smc render` writes into node/agent.yaml).
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
    /// An envoy-smc configuration file: printed as the policy ConfigMap the DaemonSet mounts
    /// and passes as `run --config`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Grant CAP_SYS_ADMIN: smc_hs_ctrl and the black-hole watch also in pods' own network
    /// namespaces (setns). The broadest capability, on every node: see agent/README.md.
    #[arg(long)]
    cap_sys_admin: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The uid the sidecars run as (Istio: 1337).
    #[arg(long, default_value_t = select::DEFAULT_PROXY_UID)]
    uid: u32,
    /// Seconds between two scans of /proc.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The opt-in annotation. Default: the configuration's `opt_in.annotation`
    /// (smc.asm.alibabacloud.com/enabled).
    #[arg(long)]
    annotation: Option<String>,
    /// The downward-API annotations file, relative to each sidecar's root (/proc/<pid>/root).
    /// Default: the configuration's `opt_in.annotations_file`, else etc/istio/pod/annotations.
    #[arg(long)]
    annotations_path: Option<String>,
    /// The cgroup v2 mount (default: the first cgroup2 mount in /proc/self/mountinfo).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// The proc file system (the host's: run with hostPID).
    #[arg(long, default_value = "/proc")]
    proc: PathBuf,
    /// Where the agent publishes what it selected (JSON, rewritten after every change).
    #[arg(long, default_value = state::DEFAULT_STATE_FILE)]
    state_file: PathBuf,
    /// The envoy-smc configuration (the file the other entry points read): its upstream
    /// allow/deny CIDRs and ports and its adaptive-fallback settings are applied per
    /// destination where the kernel has smc_hs_ctrl. Default: nothing denied, default
    /// adaptive fallback.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Per-destination decisions with smc_hs_ctrl: `auto` (where the kernel has it) or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    hs_ctrl: String,
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
        Command::Manifest(m) => manifest(&m),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envoy-smc-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the agent's manifests: the one definition, also rendered into
/// envoy-config/node/agent.yaml.
fn manifest(m: &ManifestArgs) -> Result<(), String> {
    let config = match &m.config {
        Some(p) => Some(
            envoy_smc_core::config::from_file(p)
                .map_err(|e| format!("--config {}: {e}", p.display()))?
                .into_proto(),
        ),
        None => None,
    };
    let docs =
        envoy_smc_cli::render::node::agent_manifests(&envoy_smc_cli::render::node::AgentParams {
            image: &m.image,
            namespace: &m.namespace,
            uid: m.uid,
            config: config.as_ref(),
            cap_sys_admin: m.cap_sys_admin,
        });
    for d in docs {
        let yaml = serde_yaml::to_string(&d).map_err(|e| e.to_string())?;
        print!("---\n{yaml}");
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<(), String> {
    if !(args.interval.is_finite() && (0.05..=3600.0).contains(&args.interval)) {
        return Err(format!(
            "--interval {}: must be between 0.05 and 3600 seconds",
            args.interval
        ));
    }
    // The same opt-in as the other entry points: the configuration's, unless the flags say.
    let smc_config = match &args.config {
        Some(p) => envoy_smc_core::config::from_file(p)
            .map_err(|e| format!("--config {}: {e}", p.display()))?,
        None => envoy_smc_core::config::Config::default(),
    };
    let annotation = args
        .annotation
        .unwrap_or_else(|| smc_config.opt_in.annotation.clone());
    if annotation.is_empty() {
        return Err("--annotation: empty".into());
    }
    let (annotations_path, path_from) =
        match (&args.annotations_path, &smc_config.opt_in.annotations_file) {
            (Some(p), _) => (p.clone(), "--annotations-path"),
            (None, Some(f)) => (
                f.to_string_lossy().trim_start_matches('/').to_string(),
                "opt_in.annotations_file",
            ),
            (None, None) => (
                select::DEFAULT_ANNOTATIONS_PATH.to_string(),
                "--annotations-path",
            ),
        };
    if annotations_path.is_empty()
        || annotations_path.starts_with('/')
        || annotations_path.split('/').any(|c| c == "..")
    {
        return Err(format!(
            "{path_from} {annotations_path:?}: must be a file in the pod's root, without .."
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
    sel.annotation = annotation;
    sel.annotations_path = annotations_path;
    sel.all_workloads = smc_config.opt_in.all_workloads;
    let publisher = state::Publisher::new(args.state_file)?;
    let rules = hsctrl::Rules::from_config(&smc_config);
    let adaptive = smc_config.adaptive;

    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }

    let converter = bpf::Converter::attach()?;
    eprintln!(
        "envoy-smc-agent: attached to update_socket_protocol; selecting uid {} processes of {} ({} under {}, this agent's cgroup namespace at {})",
        sel.uid,
        if sel.all_workloads {
            "every pod (opt_in.all_workloads)".to_string()
        } else {
            format!("pods with {}=\"true\"", sel.annotation)
        },
        sel.annotations_path,
        sel.cgroup_root.display(),
        sel.ns_root
    );
    let mut per_dest = PerDestination::start(&args.hs_ctrl, &sel.proc, &rules, adaptive)?;
    let interval = Duration::from_secs_f64(args.interval);
    let mut last_pods = String::new();
    while !STOP.load(Ordering::Relaxed) {
        let started = Instant::now();
        let scan = select::scan(&sel).map_err(|e| format!("{}: {e}", sel.proc.display()))?;
        reconcile(&converter, &scan)?;
        let counts = converter.selected()?;
        let mut published = state::State::new(&sel, &scan, &counts);
        published.per_destination = per_dest.round(&sel.proc, &scan);
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
    // Each namespace gets its hs_ctrl value back and the struct_ops is unregistered; then
    // dropping the converter detaches the program: new sockets are plain TCP from here on.
    drop(per_dest);
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

/// Per-destination decisions (smc_hs_ctrl) and the black-hole watch, where the kernel allows.
enum PerDestination {
    Active(Box<Decider>),
    /// Why not (kernel without smc_hs_ctrl, or --hs-ctrl off).
    Unavailable(String),
}

/// The registered struct_ops and its black-hole watch.
struct Decider {
    hs: hsctrl::HsCtrl,
    watcher: blackhole::Watcher,
    /// adaptive_fallback is not disabled.
    watch: bool,
    /// Namespaces where the struct_ops could not be selected last round (logged on change).
    not_selected: std::collections::BTreeMap<u64, String>,
}

impl PerDestination {
    fn start(
        mode: &str,
        proc: &std::path::Path,
        rules: &hsctrl::Rules,
        adaptive: envoy_smc_core::config::AdaptiveSettings,
    ) -> Result<PerDestination, String> {
        if mode == "off" {
            return Ok(PerDestination::Unavailable("off (--hs-ctrl off)".into()));
        }
        if !hsctrl::kernel_has_hs_ctrl() {
            let why = "this kernel has no smc_hs_ctrl (Linux 6.19+, CONFIG_SMC_HS_CTRL_BPF): \
                       no per-destination decisions, no black-hole rescue";
            eprintln!("envoy-smc-agent: {why}");
            return Ok(PerDestination::Unavailable(why.into()));
        }
        // A name of this process's own: a registration left by an agent that died stays in
        // the kernel (the struct_ops cannot be held by a link) and keeps its name.
        let name = format!("envoy_smc{:x}", std::process::id());
        let hs = hsctrl::HsCtrl::register(&name, proc.to_path_buf())?;
        hs.set_rules(rules)?;
        eprintln!(
            "envoy-smc-agent: smc_hs_ctrl {name:?} registered: {} denied and {} allowed CIDRs, {} denied and {} allowed port ranges; black-hole watch {}",
            rules.deny.len(),
            rules.allow.len(),
            rules.deny_ports.len(),
            rules.allow_ports.len(),
            if adaptive.enabled { "on" } else { "off (adaptive_fallback.disabled)" }
        );
        Ok(PerDestination::Active(Box::new(Decider {
            hs,
            watcher: blackhole::Watcher::new(adaptive),
            watch: adaptive.enabled,
            not_selected: Default::default(),
        })))
    }

    /// Selects the struct_ops in the selected pods' namespaces, watches them for black holes,
    /// and says where things stand.
    fn round(&mut self, proc: &std::path::Path, scan: &select::Scan) -> state::PerDestination {
        let d = match self {
            PerDestination::Unavailable(why) => {
                return state::PerDestination {
                    unavailable: why.clone(),
                    ..Default::default()
                }
            }
            PerDestination::Active(d) => d,
        };
        // One pid per namespace of the selected pods.
        let mut namespaces = std::collections::BTreeMap::new();
        for pod in scan.pods.values().filter(|p| p.opted_in) {
            if let Some(&pid) = pod.pids.first() {
                if let Some(ns) = hsctrl::netns_of(proc, pid) {
                    namespaces.entry(ns).or_insert(pid);
                }
            }
        }
        let not_selected = d.hs.select_in(&namespaces);
        for (ns, e) in &not_selected {
            if !d.not_selected.contains_key(ns) {
                eprintln!("envoy-smc-agent: smc_hs_ctrl not selected in net:[{ns}]: {e}");
            }
        }
        d.not_selected = not_selected;
        namespaces.retain(|ns, _| !d.not_selected.contains_key(ns));
        if d.watch {
            for e in d.watcher.round(&d.hs, proc, &namespaces) {
                eprintln!("envoy-smc-agent: {e}");
            }
        }
        state::PerDestination {
            hs_ctrl: d.hs.name().to_string(),
            namespaces: d.hs.namespaces(),
            not_selected: d.not_selected.clone(),
            decisions: d.hs.decisions(),
            held: d.watcher.held(),
            unavailable: String::new(),
        }
    }
}
