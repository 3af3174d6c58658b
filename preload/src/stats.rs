//! The counters as Prometheus text: written to `ENVOY_SMC_STATS_FILE` periodically and at exit,
//! and returned by the exported `envoy_smc_preload_stats()`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use crate::state::{self, COUNTERS};

/// The whole exposition: the library's state, the runtime's counters, the preload layer's own.
pub fn render() -> String {
    let mut out = String::with_capacity(4096);
    let pid = std::process::id();
    let _ = writeln!(
        out,
        "# HELP envoy_smc_preload_info The envoy-smc preload library in this process (state: active, not_set_up, off_*).\n\
         # TYPE envoy_smc_preload_info gauge\n\
         envoy_smc_preload_info{{state=\"{}\",pid=\"{pid}\"}} 1",
        state::state_name()
    );
    if let Some(active) = state::active_if_set_up() {
        let mut reasons = Vec::new();
        for (name, value) in active.runtime.stats().named() {
            if let Some(reason) = name.strip_prefix("tcp.") {
                reasons.push((reason, value));
            } else {
                let name = name.replace(['.', '-'], "_");
                let _ = writeln!(
                    out,
                    "# TYPE envoy_smc_{name}_total counter\nenvoy_smc_{name}_total {value}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP envoy_smc_tcp_total Sockets envoy-smc kept on or made plain TCP, by reason.\n\
             # TYPE envoy_smc_tcp_total counter"
        );
        for (reason, value) in reasons {
            let _ = writeln!(out, "envoy_smc_tcp_total{{reason=\"{reason}\"}} {value}");
        }
    }
    let c = &COUNTERS;
    for (name, value) in [
        ("epoll_reregistered", &c.epoll_reregistered),
        ("epoll_reregister_failed", &c.epoll_reregister_failed),
        ("option_replay_failed", &c.option_replay_failed),
        ("stale_fd", &c.stale_fd),
        ("dup_settled", &c.dup_settled),
        ("internal_errors", &c.internal_errors),
    ] {
        let _ = writeln!(
            out,
            "# TYPE envoy_smc_preload_{name}_total counter\nenvoy_smc_preload_{name}_total {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP envoy_smc_preload_tracked_sockets Sockets opened and not yet decided about.\n\
         # TYPE envoy_smc_preload_tracked_sockets gauge\n\
         envoy_smc_preload_tracked_sockets {}",
        crate::table::tracked_now()
    );
    let _ = writeln!(
        out,
        "# HELP envoy_smc_preload_rescuable_connects SMC connects in flight kept for a rescue.\n\
         # TYPE envoy_smc_preload_rescuable_connects gauge\n\
         envoy_smc_preload_rescuable_connects {}",
        crate::table::rescuable_now()
    );
    out
}

/// `ENVOY_SMC_STATS_FILE` as given (read once).
static TEMPLATE: OnceLock<Option<String>> = OnceLock::new();

/// The stats file of this process: `{pid}` is expanded at every write, so a forked child that
/// exits writes its own file, not its parent's.
fn path() -> Option<PathBuf> {
    let t = TEMPLATE
        .get_or_init(|| {
            let raw = std::env::var("ENVOY_SMC_STATS_FILE").ok()?;
            let raw = raw.trim();
            (!raw.is_empty()).then(|| raw.to_string())
        })
        .as_ref()?;
    Some(PathBuf::from(
        t.replace("{pid}", &std::process::id().to_string()),
    ))
}

/// Writes the file atomically (temporary file + rename).
pub fn write_file() {
    let Some(path) = path() else {
        return;
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = std::fs::write(&tmp, render()).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "envoy-smc: cannot write stats to {}: {e}; logged once",
                path.display()
            );
        }
    }
}

extern "C" fn write_at_exit() {
    let _guard = crate::Reentry::enter();
    let _ = std::panic::catch_unwind(write_file);
}

/// Starts the periodic writer and the at-exit write if `ENVOY_SMC_STATS_FILE` is set.
pub fn start_writer() {
    if path().is_none() {
        return;
    }
    // SAFETY: registering a plain extern "C" function with no arguments.
    unsafe { libc::atexit(write_at_exit) };
    write_file();
    if let Some(every) = state::stats_interval() {
        let spawned = std::thread::Builder::new()
            .name("envoy-smc-stats".into())
            .spawn(move || {
                let _guard = crate::Reentry::enter();
                loop {
                    std::thread::sleep(every);
                    let _ = std::panic::catch_unwind(write_file);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("envoy-smc: no periodic stats writer ({e}); stats are written at exit");
        }
    }
}
