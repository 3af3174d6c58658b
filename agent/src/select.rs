//! Which pods the agent selects: processes running as the proxy's uid whose pod opted in through
//! the downward-API annotations file, keyed by their cgroup v2 id (what the BPF program sees as
//! `bpf_get_current_cgroup_id()`).
//!
//! Everything read here is under the control of the workloads: /proc/<pid>/root is the pod's own
//! file system, so its files are opened with openat2(RESOLVE_IN_ROOT) (absolute symlinks, such as
//! the downward API's `..data` links, stay inside the pod's root; no /proc magic links), must be
//! regular files, and are read up to a size cap. Each process is read through one /proc/<pid>
//! directory fd, so a pid reused mid-scan cannot mix two processes' answers.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use envoy_smc::config::DEFAULT_OPT_IN_ANNOTATION;
use envoy_smc::policy::downward_api_value;

/// Istio's proxy uid (pilot-agent and Envoy run as it).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Where Istio's sidecar sees the pod's annotations (downward API volume), inside the pod's root.
pub const DEFAULT_ANNOTATIONS_PATH: &str = "etc/istio/pod/annotations";
/// The largest annotations file read (Kubernetes caps all of a pod's annotations at 256 KiB).
pub const MAX_ANNOTATIONS_BYTES: u64 = 256 * 1024;
/// Small /proc files (status, cgroup) are read up to this size.
const MAX_PROC_FILE_BYTES: u64 = 64 * 1024;

/// What the agent looks for.
#[derive(Debug, Clone)]
pub struct Selector {
    /// The proc file system (`/proc`).
    pub proc: PathBuf,
    /// The cgroup v2 hierarchy as this process sees it (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    pub uid: u32,
    /// The opt-in annotation (`smc.asm.alibabacloud.com/enabled`).
    pub annotation: String,
    /// The annotations file, relative to the pod's root.
    pub annotations_path: String,
}

impl Selector {
    pub fn new(proc: PathBuf, cgroup_root: PathBuf, uid: u32) -> Selector {
        Selector {
            proc,
            cgroup_root,
            uid,
            annotation: DEFAULT_OPT_IN_ANNOTATION.to_string(),
            annotations_path: DEFAULT_ANNOTATIONS_PATH.to_string(),
        }
    }
}

/// One pod's proxy cgroup, as found by a scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pod {
    /// The cgroup's path under the cgroup root (`/kubepods/.../<container>`).
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The proxy-uid processes seen in it.
    pub pids: Vec<i32>,
    /// The opt-in annotation is "true".
    pub opted_in: bool,
    /// Why not, when not opted in (annotation absent or false, file unreadable, ...).
    pub reason: String,
}

/// A proxy-uid process the agent could not place in a pod (no cgroup v2 path, root cgroup, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub pid: i32,
    pub reason: String,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Scan {
    /// By cgroup id.
    pub pods: BTreeMap<u64, Pod>,
    pub skipped: Vec<Skipped>,
}

impl Scan {
    /// The cgroup ids to convert.
    pub fn selected(&self) -> impl Iterator<Item = u64> + '_ {
        self.pods
            .values()
            .filter(|p| p.opted_in)
            .map(|p| p.cgroup_id)
    }
}

/// Walks /proc once.
pub fn scan(sel: &Selector) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    for entry in std::fs::read_dir(&sel.proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        match inspect(sel, pid) {
            Ok(None) => {}
            Ok(Some(found)) => {
                let pod = out.pods.entry(found.cgroup_id).or_insert_with(|| Pod {
                    cgroup: found.cgroup.clone(),
                    cgroup_id: found.cgroup_id,
                    pids: Vec::new(),
                    opted_in: found.opted_in,
                    reason: found.reason.clone(),
                });
                pod.pids.push(pid);
                // Any process of the pod that reads the annotation as "true" opts it in.
                if found.opted_in && !pod.opted_in {
                    pod.opted_in = true;
                    pod.reason.clear();
                }
            }
            // The process exited mid-scan: that is not worth reporting.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => out.skipped.push(Skipped {
                pid,
                reason: e.to_string(),
            }),
        }
    }
    for pod in out.pods.values_mut() {
        pod.pids.sort_unstable();
    }
    Ok(out)
}

struct Found {
    cgroup: String,
    cgroup_id: u64,
    opted_in: bool,
    reason: String,
}

fn other(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// One process: None when it does not run as the proxy uid.
fn inspect(sel: &Selector, pid: i32) -> std::io::Result<Option<Found>> {
    let dir = match open_at(
        None,
        &sel.proc.join(pid.to_string()),
        libc::O_RDONLY | libc::O_DIRECTORY,
    ) {
        Ok(d) => d,
        // Gone since the directory was listed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let status = read_capped(
        open_at(Some(&dir), Path::new("status"), libc::O_RDONLY)?,
        MAX_PROC_FILE_BYTES,
    )?;
    if effective_uid(&status) != Some(sel.uid) {
        return Ok(None);
    }
    let cgroups = read_capped(
        open_at(Some(&dir), Path::new("cgroup"), libc::O_RDONLY)?,
        MAX_PROC_FILE_BYTES,
    )?;
    let cgroup =
        cgroup_v2_path(&cgroups).map_err(|e| other(format!("uid {} process: {e}", sel.uid)))?;
    let cgroup_id = cgroup_id(&sel.cgroup_root, &cgroup)?;
    let (opted_in, reason) = match read_annotations(&dir, &sel.annotations_path) {
        Ok(text) => match downward_api_value(&text, &sel.annotation) {
            Some(v) if v.trim().eq_ignore_ascii_case("true") => (true, String::new()),
            Some(v) => (false, format!("{}={v:?}", sel.annotation)),
            None => (false, format!("no {} annotation", sel.annotation)),
        },
        Err(e) => (false, format!("/{}: {e}", sel.annotations_path)),
    };
    Ok(Some(Found {
        cgroup,
        cgroup_id,
        opted_in,
        reason,
    }))
}

/// The effective uid from /proc/<pid>/status (`Uid: real effective saved fs`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The cgroup v2 path from /proc/<pid>/cgroup (the `0::/path` line). Refuses the root cgroup
/// (selecting it would convert every process of the node that is not in a child cgroup) and paths
/// outside this process's cgroup namespace.
pub fn cgroup_v2_path(text: &str) -> Result<String, String> {
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 membership (the node must use the unified cgroup hierarchy)")?;
    if path == "/" {
        return Err("in the root cgroup, not in a pod's cgroup: not selected".into());
    }
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!(
            "cgroup {path:?} is outside the agent's cgroup namespace (run the agent in the host's)"
        ));
    }
    Ok(path.to_string())
}

/// The cgroup's id: the inode number of its directory in the cgroup v2 file system.
pub fn cgroup_id(cgroup_root: &Path, cgroup: &str) -> std::io::Result<u64> {
    let dir = cgroup_root.join(cgroup.trim_start_matches('/'));
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() {
        return Err(other(format!(
            "{} is not a cgroup directory",
            dir.display()
        )));
    }
    Ok(meta.ino())
}

/// The pod's annotations file through /proc/<pid>/root: resolved inside that root, a regular
/// file, at most MAX_ANNOTATIONS_BYTES.
fn read_annotations(proc_dir: &OwnedFd, path: &str) -> std::io::Result<String> {
    let root = open_at(
        Some(proc_dir),
        Path::new("root"),
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    let file = open_in_root(&root, path)?;
    read_capped(file, MAX_ANNOTATIONS_BYTES)
}

/// openat(2) with O_CLOEXEC; `dir` None means relative to the current directory.
fn open_at(dir: Option<&OwnedFd>, path: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| other("NUL in a path".into()))?;
    let dirfd: RawFd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned by the OwnedFd.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat2(2) of `path` with `root` as the root of the resolution (RESOLVE_IN_ROOT), no /proc
/// magic links, non-blocking (a FIFO planted there must not hang the agent), read-only.
pub fn open_in_root(root: &OwnedFd, path: &str) -> std::io::Result<File> {
    let c = CString::new(path).map_err(|_| other("NUL in a path".into()))?;
    // SAFETY: open_how is plain data; zeroed is a valid value before the fields are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path, `how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// A regular file's text, refused when larger than `cap`.
fn read_capped(fd: impl Into<File>, cap: u64) -> std::io::Result<String> {
    let file: File = fd.into();
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(other("not a regular file".into()));
    }
    let mut buf = Vec::new();
    file.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(other(format!("larger than {cap} bytes")));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The cgroup v2 mount point from /proc/self/mountinfo (field 5 of the first `cgroup2` entry).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}
