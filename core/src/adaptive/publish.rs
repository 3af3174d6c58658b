//! The breaker's table where `envoy-smc status` can read it: one JSON file per process.
//!
//! The table lives in the proxy's memory; the CLI is another process (often `kubectl exec` into
//! the sidecar container). So the watchdog thread writes `<state dir>/<pid>.json` whenever a
//! destination changed state (never on the connect path). A process that never met a black hole
//! writes nothing.
//!
//! The state dir is `ENVOY_SMC_STATE_DIR`, else `/run/envoy-smc` for root and
//! `/tmp/envoy-smc-<uid>` for other users. The proxy creates it 0700 or uses it only if it is
//! its own and nobody else can write in it ([`OwnedDir::private`]); files are written 0600 through
//! an exclusive temporary file and a rename, never through a symlink. Writers remove the files of
//! processes that are gone; readers accept only regular files of the directory's owner, at most
//! [`MAX_TABLE_BYTES`], of running processes (pid and start time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, Entry, Phase};
use crate::owned_dir::{OwnedDir, TrustedDir};

/// The state directory of root processes when `ENVOY_SMC_STATE_DIR` is not set.
pub const ROOT_STATE_DIR: &str = "/run/envoy-smc";
/// Largest table file a reader accepts.
pub const MAX_TABLE_BYTES: usize = 2 << 20;
/// Most destinations published per process (held first, then probing, then recovered).
pub const MAX_PUBLISHED: usize = 4096;
/// Mode of the published files.
const TABLE_MODE: u32 = 0o600;
/// How often a writer looks for files of processes that are gone.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The default state directory of a process with effective uid `uid`.
pub fn default_state_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        PathBuf::from(ROOT_STATE_DIR)
    } else {
        PathBuf::from(format!("/tmp/envoy-smc-{uid}"))
    }
}

/// The state directory: `ENVOY_SMC_STATE_DIR`, else [`default_state_dir`] of this uid.
pub fn state_dir() -> PathBuf {
    std::env::var_os("ENVOY_SMC_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || default_state_dir(crate::os::process::geteuid()),
            PathBuf::from,
        )
}

/// One process's remembered destinations, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTable {
    pub pid: u32,
    pub comm: String,
    /// The process's start time (`/proc/<pid>/stat` field 22): a reused pid is not this process.
    pub start_time: u64,
    pub written_unix_ms: u64,
    pub destinations: Vec<DestinationState>,
    /// Destinations left out beyond [`MAX_PUBLISHED`].
    #[serde(default)]
    pub omitted: usize,
}

/// One remembered destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationState {
    pub destination: SocketAddr,
    /// `held` (on TCP until `next_retry_unix_ms`), `probing` (one connection is trying SMC), or
    /// `recovered` (back on SMC; strikes remembered for a repeat offence).
    pub state: String,
    pub strikes: u8,
    /// When the current state began.
    pub since_unix_ms: u64,
    /// When a held destination may try SMC again.
    pub next_retry_unix_ms: Option<u64>,
}

impl DestinationState {
    fn of(e: &Entry) -> DestinationState {
        let (state, next_retry) = match e.phase {
            Phase::Open => ("held", Some(unix_ms(e.until))),
            Phase::Probing => ("probing", None),
            Phase::Closed => ("recovered", None),
        };
        DestinationState {
            destination: e.destination,
            state: state.to_string(),
            strikes: e.strikes,
            since_unix_ms: unix_ms(e.since),
            next_retry_unix_ms: next_retry,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The start time of process `pid` in clock ticks since boot, from `/proc/<pid>/stat`.
pub fn process_start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is field 3,
    // starttime field 22.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes one runtime's table when it changed.
#[derive(Debug, Default)]
pub struct Publisher {
    /// `Breaker::changes()` when the table was last written (+1, so 0 means never).
    written: AtomicU64,
    warned: AtomicBool,
    last_sweep: std::sync::Mutex<Option<Instant>>,
}

impl Publisher {
    /// Writes the table to [`state_dir`] if the breaker changed since the last write, and now and
    /// then removes the files of processes that are gone. Errors are logged once.
    pub fn publish_if_changed(&self, breaker: &Breaker) {
        let changes = breaker.changes();
        if changes == 0 || self.written.load(Ordering::Acquire) == changes + 1 {
            return;
        }
        self.written.store(changes + 1, Ordering::Release);
        let dir = state_dir();
        let result = OwnedDir::private(&dir).and_then(|d| {
            write_table_in(breaker, &d)?;
            if let Ok(mut last) = self.last_sweep.try_lock() {
                if last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                    *last = Some(Instant::now());
                    sweep(&d, Path::new("/proc"));
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "envoy-smc: cannot publish the black-hole table in {} ({e}); \
                     `envoy-smc status` will not show it (set ENVOY_SMC_STATE_DIR); logged once",
                    dir.display()
                );
            }
        }
    }
}

/// Removes this process's table from [`state_dir`] (the preload library calls it at exit; tables
/// of processes that are gone are also removed by the next process that publishes).
pub fn remove_own_table() {
    if let Ok(d) = OwnedDir::private_existing(&state_dir()) {
        let _ = d.remove(&format!("{}.json", std::process::id()));
    }
}

/// This process's table of `breaker`.
fn table_of(breaker: &Breaker) -> ProcessTable {
    let pid = std::process::id();
    let proc_root = Path::new("/proc");
    let mut destinations: Vec<DestinationState> =
        breaker.entries().iter().map(DestinationState::of).collect();
    // Held first, then probing, then recovered; the most recent first within each.
    let rank = |d: &DestinationState| match d.state.as_str() {
        "held" => 0,
        "probing" => 1,
        _ => 2,
    };
    destinations.sort_by_key(|d| (rank(d), std::cmp::Reverse(d.since_unix_ms), d.destination));
    let omitted = destinations.len().saturating_sub(MAX_PUBLISHED);
    destinations.truncate(MAX_PUBLISHED);
    destinations.sort_by_key(|d| d.destination);
    let comm = std::fs::read(proc_root.join("self/comm"))
        .map(|c| String::from_utf8_lossy(&c).trim().to_string())
        .unwrap_or_default();
    ProcessTable {
        pid,
        comm,
        start_time: process_start_time(proc_root, pid).unwrap_or(0),
        written_unix_ms: unix_ms(SystemTime::now()),
        destinations,
        omitted,
    }
}

fn write_table_in(breaker: &Breaker, dir: &OwnedDir) -> std::io::Result<()> {
    let text = serde_json::to_vec(&table_of(breaker)).map_err(std::io::Error::other)?;
    dir.write_atomic(&format!("{}.json", std::process::id()), &text, TABLE_MODE)
}

/// Writes this process's table of `breaker` to `dir/<pid>.json` (see the module doc for how
/// `dir` is checked and the file written).
pub fn write_table(breaker: &Breaker, dir: &Path) -> std::io::Result<()> {
    write_table_in(breaker, &OwnedDir::private(dir)?)
}

/// The pid a file of the state dir belongs to: `<pid>.json`, or a temporary
/// `.<pid>.json.<writer pid>.<random>.tmp`.
fn file_pid(name: &str) -> Option<(u32, bool)> {
    if let Some(pid) = name.strip_suffix(".json") {
        return pid.parse().ok().map(|p| (p, false));
    }
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.split('.');
    let (_, _, writer) = (parts.next()?, parts.next()?, parts.next()?);
    writer.parse().ok().map(|p| (p, true))
}

/// Removes the tables (and leftover temporary files) of processes that are gone.
fn sweep(dir: &OwnedDir, proc_root: &Path) {
    let Ok(names) = dir.names() else { return };
    for name in names {
        let Some((pid, _tmp)) = file_pid(&name) else {
            continue;
        };
        if pid != std::process::id() && !proc_root.join(pid.to_string()).exists() {
            let _ = dir.remove(&name);
        }
    }
}

/// What [`read_tables_checked`] found.
#[derive(Debug, Default)]
pub struct Tables {
    /// Tables of running processes, by pid.
    pub tables: Vec<ProcessTable>,
    /// Files skipped, each with why (a forged or foreign file, too large, unparsable); an
    /// unusable directory is one entry.
    pub skipped: Vec<String>,
}

/// Every table in `dir` whose process is still running (per `proc_root`), by pid. Unusable
/// files are skipped.
pub fn read_tables(dir: &Path, proc_root: &Path) -> Vec<ProcessTable> {
    read_tables_checked(dir, proc_root).tables
}

/// Like [`read_tables`], saying what was skipped and why. The directory must be writable by
/// nobody but its owner ([`TrustedDir`]); only regular files of that owner named `<pid>.json`,
/// of at most [`MAX_TABLE_BYTES`], whose pid and process start time match a running process,
/// are read.
pub fn read_tables_checked(dir: &Path, proc_root: &Path) -> Tables {
    let mut out = Tables::default();
    let d = match TrustedDir::open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.skipped.push(e.to_string());
            return out;
        }
    };
    let Ok(names) = d.names() else { return out };
    for name in names {
        let Some((pid, false)) = file_pid(&name) else {
            continue;
        };
        let table = d
            .read(&name, MAX_TABLE_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<ProcessTable>(&bytes)
                    .map_err(|e| format!("{name}: not a table ({e})"))
            })
            .and_then(|t| {
                if t.pid != pid {
                    Err(format!("{name}: names pid {}", t.pid))
                } else if let Some(d) = t
                    .destinations
                    .iter()
                    .find(|d| !matches!(d.state.as_str(), "held" | "probing" | "recovered"))
                {
                    Err(format!(
                        "{name}: unknown state {:?}",
                        crate::owned_dir::printable(&d.state)
                    ))
                } else {
                    Ok(t)
                }
            });
        match table {
            // A table whose process is gone (or whose pid now names another process) is stale.
            Ok(t) if process_start_time(proc_root, t.pid) == Some(t.start_time) => {
                out.tables.push(t)
            }
            Ok(_) => {}
            Err(e) => out.skipped.push(crate::owned_dir::printable(&e)),
        }
    }
    out.tables.sort_by_key(|t| t.pid);
    out
}
