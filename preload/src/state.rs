//! The library's process-wide state: set up once, on the first IP stream `socket()` call.
//!
//! Environment variables (read once):
//! - `ENVOY_SMC_CONFIG`: path of the YAML/JSON configuration (`api/envoy_smc/v1/smc.proto`, proto3
//!   JSON mapping). Unset: the default configuration (SMC only for opted-in workloads and
//!   switched-on clusters — with no annotation source, every socket stays TCP). Unreadable,
//!   not a regular file (a FIFO, a device), larger than 1 MiB, nested too deeply or invalid:
//!   one error line on stderr and the process stays on plain TCP (see
//!   `envoy_smc_core::config::limits`; nothing blocks the first `socket()`).
//! - `ENVOY_SMC_LOG`: a `tracing` filter for stderr (`debug` logs every decision, `off` silences
//!   the library). Unset: warnings and errors only.
//! - `ENVOY_SMC_STATS_FILE`: write the counters as Prometheus text to this path (`{pid}` is
//!   replaced by the process id), every `ENVOY_SMC_STATS_INTERVAL` seconds (default 10; 0: only at
//!   exit) and at exit. Its directory must belong to this uid or root and not be writable by
//!   others unless sticky; the file (0640) is written through a random temporary name and a
//!   rename (see `stats`).
//! - `ENVOY_SMC_STATE_DIR`: where the adaptive-fallback table is published
//!   (`envoy_smc_core::adaptive::publish`).
//! - `ENVOY_SMC_ASSUME_KERNEL`: for tests — `af_smc`, `ipproto_smc`, both comma-separated, or
//!   `none`: what the kernel is taken to support instead of probing it.
//!
//! In a secure-execution process (set-uid, set-gid, file capabilities: `AT_SECURE`) the library
//! reads no environment variable and does nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use envoy_smc_core::config::{self, Config};
use envoy_smc_core::policy::Environment;
use envoy_smc_core::smc::{local_addresses, KernelSupport};
use envoy_smc_core::Runtime;

/// The library's state in this process.
pub enum Lib {
    /// Making decisions.
    Active(Box<Active>),
    /// Doing nothing, for this reason.
    Off(Off),
}

pub struct Active {
    pub runtime: Runtime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Off {
    /// `AT_SECURE`: set-uid/set-gid/capability-raising execution.
    SecureExecution = 2,
    /// The configuration could not be read or is invalid.
    InvalidConfig = 3,
    /// Setting up failed unexpectedly (a bug in envoy-smc, caught).
    InitFailed = 4,
}

impl Off {
    pub fn name(self) -> &'static str {
        match self {
            Off::SecureExecution => "off_secure_execution",
            Off::InvalidConfig => "off_invalid_config",
            Off::InitFailed => "off_internal_error",
        }
    }
}

static LIB: OnceLock<Lib> = OnceLock::new();

/// Counters of the preload layer itself (the runtime counts decisions).
pub struct PreloadCounters {
    /// Epoll registrations carried over to a replacement socket.
    pub epoll_reregistered: AtomicU64,
    /// Carrying a registration over failed (the socket was turned back into TCP).
    pub epoll_reregister_failed: AtomicU64,
    /// Options replayed on a replacement socket that the new socket refused.
    pub option_replay_failed: AtomicU64,
    /// Sockets whose fd number turned out to hold another socket at decision time.
    pub stale_fd: AtomicU64,
    /// Tracked sockets duplicated before listen()/connect() (decided as listeners when bound).
    pub dup_settled: AtomicU64,
    /// Panics caught at a hook boundary (the library then stops acting).
    pub internal_errors: AtomicU64,
    /// Stuck connects not rescued because their options cannot all be carried over to a new
    /// socket (too many, too long, or holding a pointer or an fd).
    pub rescue_options_not_carried: AtomicU64,
}

pub static COUNTERS: PreloadCounters = PreloadCounters {
    epoll_reregistered: AtomicU64::new(0),
    epoll_reregister_failed: AtomicU64::new(0),
    option_replay_failed: AtomicU64::new(0),
    stale_fd: AtomicU64::new(0),
    dup_settled: AtomicU64::new(0),
    internal_errors: AtomicU64::new(0),
    rescue_options_not_carried: AtomicU64::new(0),
};

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Set after a caught panic: from then on every hook only calls the real function.
static POISONED: AtomicBool = AtomicBool::new(false);

pub fn poisoned() -> bool {
    POISONED.load(Ordering::Relaxed)
}

pub fn poison() {
    POISONED.store(true, Ordering::Relaxed);
}

/// The active state, setting the library up if this is the first call. `None` when off.
/// `start` runs once, the first time the state is active, before any caller gets it: the entry
/// point wires in what sits above this module (the rescuer, the stats writer), so that this
/// module, which every other one uses, imports none of them.
/// Must run inside the re-entrancy guard (setting up opens sockets).
pub fn active(start: fn(&'static Active)) -> Option<&'static Active> {
    static STARTED: std::sync::Once = std::sync::Once::new();
    match LIB.get_or_init(init) {
        Lib::Active(a) if !poisoned() => {
            STARTED.call_once(|| start(a));
            Some(a)
        }
        _ => None,
    }
}

/// The active state if the library was set up already.
pub fn active_if_set_up() -> Option<&'static Active> {
    match LIB.get() {
        Some(Lib::Active(a)) if !poisoned() => Some(a),
        _ => None,
    }
}

/// 0: not set up yet; 1: active; otherwise the `Off` reason's number.
pub fn state_code() -> i32 {
    match LIB.get() {
        None => 0,
        Some(Lib::Active(_)) => 1,
        Some(Lib::Off(off)) => *off as i32,
    }
}

pub fn state_name() -> &'static str {
    match LIB.get() {
        None => "not_set_up",
        Some(Lib::Active(_)) if poisoned() => "off_internal_error",
        Some(Lib::Active(_)) => "active",
        Some(Lib::Off(off)) => off.name(),
    }
}

pub fn secure_execution() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

fn init() -> Lib {
    if secure_execution() {
        return Lib::Off(Off::SecureExecution);
    }
    match std::panic::catch_unwind(init_active) {
        Ok(lib) => lib,
        Err(_) => {
            inc(&COUNTERS.internal_errors);
            Lib::Off(Off::InitFailed)
        }
    }
}

fn init_active() -> Lib {
    init_logging();
    let config = match load_config() {
        Ok(c) => c,
        Err(msg) => {
            tracing::error!("envoy-smc: {msg}; this process stays on plain TCP");
            return Lib::Off(Off::InvalidConfig);
        }
    };
    let env = Environment {
        kernel: Some(kernel_support()),
        local_addrs: local_addresses().unwrap_or_default(),
        annotations: Vec::new(),
    };
    let runtime = Runtime::new(&config, &env);
    // The adaptive-fallback table this process may publish goes with it.
    // SAFETY: registering a plain extern "C" function with no arguments.
    unsafe { libc::atexit(remove_table_at_exit) };
    tracing::debug!(
        "envoy-smc preload: active in pid {} ({})",
        std::process::id(),
        std::env::args().next().unwrap_or_default()
    );
    Lib::Active(Box::new(Active { runtime }))
}

extern "C" fn remove_table_at_exit() {
    let _guard = crate::Reentry::enter();
    let _ = std::panic::catch_unwind(envoy_smc_core::adaptive::publish::remove_own_table);
}

fn init_logging() {
    let spec = std::env::var("ENVOY_SMC_LOG").unwrap_or_default();
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("off") {
        return;
    }
    let (filter, bad) = if spec.is_empty() {
        (tracing_subscriber::EnvFilter::new("warn"), false)
    } else {
        match tracing_subscriber::EnvFilter::try_new(spec) {
            Ok(f) => (f, false),
            Err(_) => (tracing_subscriber::EnvFilter::new("warn"), true),
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    if bad {
        tracing::warn!("envoy-smc: ENVOY_SMC_LOG={spec:?} is not a valid filter; logging warnings");
    }
}

fn load_config() -> Result<Config, String> {
    match std::env::var_os("ENVOY_SMC_CONFIG") {
        None => {
            tracing::debug!("envoy-smc: ENVOY_SMC_CONFIG not set, default configuration");
            config::from_yaml("").map_err(|e| e.to_string())
        }
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            config::from_file(&path).map_err(|e| {
                if e.field.is_empty() && e.message.starts_with("cannot read") {
                    e.to_string()
                } else {
                    format!("invalid configuration in {}: {e}", path.display())
                }
            })
        }
    }
}

fn kernel_support() -> KernelSupport {
    let Ok(v) = std::env::var("ENVOY_SMC_ASSUME_KERNEL") else {
        return KernelSupport::probe();
    };
    let mut k = KernelSupport {
        af_smc: false,
        ipproto_smc: false,
    };
    for part in v.split(',').map(str::trim) {
        match part {
            "af_smc" => k.af_smc = true,
            "ipproto_smc" => k.ipproto_smc = true,
            _ => {}
        }
    }
    tracing::info!("envoy-smc: ENVOY_SMC_ASSUME_KERNEL={v}: kernel probe skipped ({k:?})");
    k
}

/// Seconds between stats writes (0: only at exit).
pub fn stats_interval() -> Option<Duration> {
    let secs = std::env::var("ENVOY_SMC_STATS_INTERVAL")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(10.0);
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}
