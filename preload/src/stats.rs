//! The counters as Prometheus text: written to `ENVOY_SMC_STATS_FILE` periodically and at exit,
//! and returned by the exported `envoy_smc_preload_stats()`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use envoy_smc_core::owned_dir::OwnedDir;

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
        active.runtime.stats().write_prometheus(&mut out);
    }
    // The preload layer's own counters, named as if they were Envoy stats `smc.preload.<name>`.
    let c = &COUNTERS;
    for (name, value, help) in [
        ("epoll_reregistered", &c.epoll_reregistered, "Epoll registrations carried over to a replacement socket."),
        ("epoll_reregister_failed", &c.epoll_reregister_failed, "Carrying an epoll registration over failed (the socket was turned back into TCP)."),
        ("option_replay_failed", &c.option_replay_failed, "Options replayed on a replacement socket that the new socket refused."),
        ("stale_fd", &c.stale_fd, "Sockets whose fd number turned out to hold another socket at decision time."),
        ("dup_settled", &c.dup_settled, "Tracked sockets duplicated before listen()/connect()."),
        ("internal_errors", &c.internal_errors, "Panics caught at a hook boundary (the library then stops acting)."),
        ("rescue_options_not_carried", &c.rescue_options_not_carried, "Stuck connects not rescued because their options cannot all be carried over to a new socket."),
    ] {
        let _ = writeln!(
            out,
            "# HELP envoy_smc_preload_{name} {help}\n# TYPE envoy_smc_preload_{name} counter\nenvoy_smc_preload_{name} {}",
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
/// The process that started the writer: a fork child of it (same memory, another pid) writes
/// only when the path names its own pid.
static WRITER_PID: AtomicU32 = AtomicU32::new(0);
/// Mode of the stats file: the proxy's group may read it (a node exporter, a sidecar scraper).
const STATS_MODE: u32 = 0o640;

fn template() -> Option<&'static str> {
    TEMPLATE
        .get_or_init(|| {
            let raw = std::env::var("ENVOY_SMC_STATS_FILE").ok()?;
            let raw = raw.trim();
            (!raw.is_empty()).then(|| raw.to_string())
        })
        .as_deref()
}

/// The stats file of this process: `{pid}` is expanded at every write, so a forked child writes
/// its own file. Without `{pid}` in the path only the process that started the writer writes:
/// a forked child never overwrites its parent's file.
fn path() -> Option<PathBuf> {
    let t = template()?;
    let pid = std::process::id();
    if !t.contains("{pid}") && WRITER_PID.load(Ordering::Acquire) != pid {
        return None;
    }
    Some(PathBuf::from(t.replace("{pid}", &pid.to_string())))
}

/// Writes the file atomically, in a directory that must be this uid's or root's and not
/// writable by others unless sticky (like /tmp): a fresh temporary file with a random name,
/// created exclusively without following symlinks, then renamed over the file.
pub fn write_file() {
    let Some(path) = path() else {
        return;
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let result = OwnedDir::for_output(dir)
        .and_then(|d| d.write_atomic(name, render().as_bytes(), STATS_MODE));
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
    if template().is_none() {
        return;
    }
    WRITER_PID.store(std::process::id(), Ordering::Release);
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
