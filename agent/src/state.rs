//! What the agent selected, published as a JSON file for `status`, tests and operators. Written
//! whole to a new file in the state directory, then renamed over the old one, so readers never
//! see half a file.
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use crate::select::{Scan, Selector};

pub const DEFAULT_STATE_FILE: &str = "/run/envoy-smc-agent/state.json";

#[derive(serde::Serialize, serde::Deserialize)]
pub struct State {
    pub uid: u32,
    pub annotation: String,
    /// Pods whose proxy sockets are converted, with the sockets converted so far.
    pub selected: Vec<PodState>,
    /// Proxy-uid pods seen but not selected, and why.
    pub not_selected: Vec<PodState>,
    /// Proxy-uid processes that are not in a pod's cgroup.
    pub skipped: Vec<crate::select::Skipped>,
    /// Per-destination decisions (smc_hs_ctrl) and black holes.
    #[serde(default)]
    pub per_destination: PerDestination,
}

/// Where the smc_hs_ctrl struct_ops stands.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PerDestination {
    /// The registered struct_ops' name (what net.smc.hs_ctrl reads where it is selected).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hs_ctrl: String,
    /// Network namespaces (inodes) where it is selected.
    #[serde(default)]
    pub namespaces: Vec<u64>,
    /// Selected pods' namespaces where it could not be selected, and why.
    #[serde(default)]
    pub not_selected: BTreeMap<u64, String>,
    /// The BPF program's decisions so far, by outcome (`offered`, `denied_address`, ...).
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
    /// Destinations held on TCP after a proven black hole.
    #[serde(default)]
    pub held: Vec<crate::blackhole::Held>,
    /// Why there are no per-destination decisions on this node (empty when there are).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unavailable: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct PodState {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub pids: Vec<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets_converted: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl State {
    pub fn new(sel: &Selector, scan: &Scan, counts: &BTreeMap<u64, u64>) -> State {
        let pod = |p: &crate::select::Pod| PodState {
            cgroup: p.cgroup.clone(),
            cgroup_id: p.cgroup_id,
            pids: p.pids.clone(),
            sockets_converted: p
                .opted_in
                .then(|| counts.get(&p.cgroup_id).copied().unwrap_or(0)),
            reason: p.reason.clone(),
        };
        State {
            uid: sel.uid,
            annotation: sel.annotation.clone(),
            selected: scan.pods.values().filter(|p| p.opted_in).map(pod).collect(),
            not_selected: scan
                .pods
                .values()
                .filter(|p| !p.opted_in)
                .map(pod)
                .collect(),
            skipped: scan.skipped.clone(),
            per_destination: PerDestination::default(),
        }
    }

    /// One line naming the selected cgroups and the others (for the log).
    pub fn selection_summary(&self) -> String {
        let names = |v: &[PodState]| {
            v.iter()
                .map(|p| p.cgroup.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "{} pod(s) selected [{}], {} not opted in [{}]",
            self.selected.len(),
            names(&self.selected),
            self.not_selected.len(),
            names(&self.not_selected)
        )
    }
}

pub struct Publisher {
    path: PathBuf,
}

impl Publisher {
    /// Creates the state file's directory (0755) when missing; refuses a directory that is a
    /// symlink or not owned by this user.
    pub fn new(path: PathBuf) -> Result<Publisher, String> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| format!("--state-file {}: needs a directory", path.display()))?;
        if path.file_name().is_none() {
            return Err(format!("--state-file {}: not a file name", path.display()));
        }
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "state directory {}: must be a directory owned by uid {me}, not writable by others",
                dir.display()
            ));
        }
        Ok(Publisher { path })
    }

    pub fn write(&self, state: &State) -> Result<(), String> {
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&text)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `envoy-smc-agent status`: the running agent's selection, as a table (or its JSON).
pub fn show(path: &std::path::Path, json: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (is the agent running? it writes this file while it runs)",
            path.display()
        )
    })?;
    if json {
        print!("{text}");
        return Ok(());
    }
    let st: State = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("proxy uid {}, opt-in annotation {}", st.uid, st.annotation);
    println!(
        "{:<12} {:<60} {:>10} {:>9}  PIDS / REASON",
        "SELECTED", "CGROUP", "ID", "CONVERTED"
    );
    for p in &st.selected {
        println!(
            "{:<12} {:<60} {:>10} {:>9}  {:?}",
            "yes",
            p.cgroup,
            p.cgroup_id,
            p.sockets_converted.unwrap_or(0),
            p.pids
        );
    }
    for p in &st.not_selected {
        println!(
            "{:<12} {:<60} {:>10} {:>9}  {}",
            "no", p.cgroup, p.cgroup_id, "-", p.reason
        );
    }
    for s in &st.skipped {
        println!(
            "{:<12} pid {:<56} {:>10} {:>9}  {}",
            "skipped", s.pid, "-", "-", s.reason
        );
    }
    let pd = &st.per_destination;
    if !pd.unavailable.is_empty() {
        println!("per destination: {}", pd.unavailable);
    } else if !pd.hs_ctrl.is_empty() {
        let decisions: Vec<String> = pd
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "per destination: smc_hs_ctrl {:?} selected in {} network namespace(s); SYN decisions: {}",
            pd.hs_ctrl,
            pd.namespaces.len(),
            decisions.join(", ")
        );
        for (ns, why) in &pd.not_selected {
            println!("  not selected in net:[{ns}]: {why}");
        }
        for h in &pd.held {
            println!(
                "  held on TCP (black hole): {} for {:.0} s, {:.0} s left",
                h.destination, h.hold_down_s, h.remaining_s
            );
        }
    }
    Ok(())
}
