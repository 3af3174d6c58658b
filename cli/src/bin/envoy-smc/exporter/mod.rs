//! `envoy-smc exporter --listen ADDR`: a node agent serving Prometheus text on `/metrics` about
//! every network namespace of the node (each pod's): SMC sockets by state, mode, flavour and
//! fallback reason, the kernel's SMC-R/SMC-D counters, each proxy's adaptive-fallback table,
//! `envoy-smc doctor`'s verdict, and its own `envoy_smc_up` / scrape duration.
//!
//! Everything is read when a scrape comes, from the kernel (netlink, per namespace) and from the
//! files proxies publish in their state directory: nothing touches a proxy or its connect path.
//! SIGTERM or SIGINT end it cleanly (exit 0).

mod http;
pub mod metrics;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_smc_core::adaptive::publish::state_dir;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve /metrics on, e.g. 0.0.0.0:9977 or 127.0.0.1:9977.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Where proxies publish their adaptive-fallback tables, as the proxies see it (read inside
    /// each container's root; default: $ENVOY_SMC_STATE_DIR, else /tmp/envoy-smc).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds between two runs of `envoy-smc doctor` for envoy_smc_doctor_ready (0: never).
    #[arg(long, default_value_t = 60)]
    doctor_interval: u64,
}

/// `envoy_smc_doctor_ready`: 0 not ready, 1 ready, 2 unknown yet.
const DOCTOR_UNKNOWN: u8 = 2;

fn doctor_ready() -> Option<bool> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["doctor", "--json"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("ready")?.as_bool()
}

fn page(state_dir: &Path, doctor: Option<bool>) -> String {
    let started = Instant::now();
    let all = metrics::collect(Path::new("/proc"), state_dir);
    metrics::render(
        &all,
        &metrics::Scrape {
            started,
            doctor_ready: doctor,
        },
    )
}

/// `status --all-netns --prometheus`: one page on stdout, doctor run once.
pub fn print_once(state_dir_arg: Option<PathBuf>) -> u8 {
    let dir = state_dir_arg.unwrap_or_else(state_dir);
    print!("{}", page(&dir, doctor_ready()));
    exit::OK
}

/// Blocks SIGTERM and SIGINT in this thread (and every thread started after) and returns a
/// signalfd that becomes readable when one arrives.
fn stop_signals() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // SAFETY: set is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: set is initialised; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

pub fn run(args: Args) -> u8 {
    use std::os::fd::AsRawFd;
    let stop = match stop_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("envoy-smc exporter: cannot set up signal handling: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("envoy-smc exporter: cannot listen on {}: {e}", args.listen);
            return exit::USAGE;
        }
    };
    let dir = args.state_dir.clone().unwrap_or_else(state_dir);
    let doctor = Arc::new(AtomicU8::new(DOCTOR_UNKNOWN));
    if args.doctor_interval > 0 {
        let d = Arc::clone(&doctor);
        let every = Duration::from_secs(args.doctor_interval);
        // Detached: it ends with the process.
        std::thread::spawn(move || loop {
            let v = doctor_ready().map_or(DOCTOR_UNKNOWN, u8::from);
            d.store(v, Ordering::Relaxed);
            std::thread::sleep(every);
        });
    }
    // Log lines never panic when stderr is gone (eprintln! would).
    let log = |msg: std::fmt::Arguments<'_>| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "envoy-smc exporter: {msg}");
    };
    log(format_args!(
        "serving http://{}/metrics",
        listener.local_addr().map_or(args.listen, |a| a)
    ));
    let mut metrics = || {
        let ready = match doctor.load(Ordering::Relaxed) {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        page(&dir, ready)
    };
    match http::serve(&listener, stop.as_raw_fd(), &mut metrics) {
        Ok(()) => {
            log(format_args!("stopped by signal"));
            exit::OK
        }
        Err(e) => {
            log(format_args!("{e}"));
            exit::UNAVAILABLE
        }
    }
}
