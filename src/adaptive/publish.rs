//! The breaker's table where `envoy-smc status` can read it: one JSON file per process.
//!
//! The table lives in the proxy's memory; the CLI is another process (often `kubectl exec` into
//! the sidecar container). So the watchdog thread writes `<state dir>/<pid>.json` whenever a
//! destination changed state (never on the connect path), atomically (temporary file + rename).
//! The state dir is `ENVOY_SMC_STATE_DIR`, else `/tmp/envoy-smc`; a process that never met a black
//! hole writes nothing. Readers skip files of processes that are gone (pid and start time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, Entry, Phase};

/// Where processes publish their tables when `ENVOY_SMC_STATE_DIR` is not set.
pub const DEFAULT_STATE_DIR: &str = "/tmp/envoy-smc";

/// The state directory: `ENVOY_SMC_STATE_DIR` or [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    std::env::var_os("ENVOY_SMC_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
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
}

impl Publisher {
    /// Writes the table to [`state_dir`] if the breaker changed since the last write. Errors are
    /// logged once.
    pub fn publish_if_changed(&self, breaker: &Breaker) {
        let changes = breaker.changes();
        if changes == 0 || self.written.load(Ordering::Acquire) == changes + 1 {
            return;
        }
        self.written.store(changes + 1, Ordering::Release);
        if let Err(e) = write_table(breaker, &state_dir()) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "envoy-smc: cannot publish the black-hole table to {} ({e}); \
                     `envoy-smc status` will not show it (set ENVOY_SMC_STATE_DIR); logged once",
                    state_dir().display()
                );
            }
        }
    }
}

/// Writes this process's table of `breaker` to `dir/<pid>.json` (temporary file + rename).
pub fn write_table(breaker: &Breaker, dir: &Path) -> std::io::Result<()> {
    {
        let pid = std::process::id();
        let proc_root = Path::new("/proc");
        let mut destinations: Vec<DestinationState> =
            breaker.entries().iter().map(DestinationState::of).collect();
        destinations.sort_by_key(|d| d.destination);
        let table = ProcessTable {
            pid,
            comm: std::fs::read_to_string(proc_root.join("self/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
            start_time: process_start_time(proc_root, pid).unwrap_or(0),
            written_unix_ms: unix_ms(SystemTime::now()),
            destinations,
        };
        let text = serde_json::to_vec_pretty(&table).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{pid}.json"));
        let tmp = dir.join(format!(".{pid}.json.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }
}

/// Every table in `dir` whose process is still running (per `proc_root`), by pid. Unreadable
/// or malformed files are skipped.
pub fn read_tables(dir: &Path, proc_root: &Path) -> Vec<ProcessTable> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut tables: Vec<ProcessTable> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<ProcessTable>(&bytes).ok())
        .filter(|t| process_start_time(proc_root, t.pid) == Some(t.start_time))
        .collect();
    tables.sort_by_key(|t| t.pid);
    tables
}
