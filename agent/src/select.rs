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

use envoy_smc_core::config::DEFAULT_OPT_IN_ANNOTATION;
use envoy_smc_core::policy::downward_api_value;

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
    /// Every proxy-uid pod is opted in, annotated or not (the configuration's
    /// `opt_in.all_workloads`).
    pub all_workloads: bool,
    /// Where this process's cgroup namespace root sits under `cgroup_root` ("/" in the host's
    /// namespace): /proc/<pid>/cgroup paths are relative to it ([`namespace_root`]).
    pub ns_root: String,
}

impl Selector {
    pub fn new(proc: PathBuf, cgroup_root: PathBuf, uid: u32) -> Selector {
        Selector {
            proc,
            cgroup_root,
            uid,
            annotation: DEFAULT_OPT_IN_ANNOTATION.to_string(),
            annotations_path: DEFAULT_ANNOTATIONS_PATH.to_string(),
            all_workloads: false,
            ns_root: "/".to_string(),
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    let cgroup = cgroup_v2_path(&cgroups)
        .and_then(|rel| pod_cgroup(&sel.ns_root, rel))
        .map_err(|e| other(format!("uid {} process: {e}", sel.uid)))?;
    let cgroup_id = cgroup_id(&sel.cgroup_root, &cgroup)?;
    let (opted_in, reason) = match read_annotations(&dir, &sel.annotations_path) {
        _ if sel.all_workloads => (true, String::new()),
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

/// The cgroup v2 path in /proc/<pid>/cgroup (the `0::/path` line), relative to the reader's
/// cgroup namespace root.
pub fn cgroup_v2_path(text: &str) -> Result<&str, String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            "no cgroup v2 membership (the node must use the unified cgroup hierarchy)".into()
        })
}

/// The cgroup's path from the hierarchy's root, `rel` being relative to `ns_root`. Refuses the
/// root cgroup (selecting it would convert every process of the node not in a child cgroup).
pub fn pod_cgroup(ns_root: &str, rel: &str) -> Result<String, String> {
    if !rel.starts_with('/') {
        return Err(format!("cgroup path {rel:?} is not absolute"));
    }
    let mut parts: Vec<&str> = ns_root.split('/').filter(|c| !c.is_empty()).collect();
    for c in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            parts.pop().ok_or_else(|| {
                format!("cgroup {rel:?} climbs above the hierarchy's root from {ns_root:?}")
            })?;
        } else {
            parts.push(c);
        }
    }
    if parts.is_empty() {
        return Err("in the root cgroup, not in a pod's cgroup: not selected".into());
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Where this process's cgroup namespace root sits under `cgroup_root`. In a pod (a DaemonSet
/// has no host cgroup namespace) /proc/<pid>/cgroup reads "/../../kubepods/..." for other pods;
/// the hierarchy mounted at `cgroup_root` (the host's, by hostPath) has the full paths. Found by
/// looking for the cgroup whose cgroup.procs holds `pid` (this process), then taking off `own`
/// (this process's path relative to its namespace root). Walks at most 100,000 cgroups.
pub fn namespace_root(cgroup_root: &Path, own: &str, pid: u32) -> Result<String, String> {
    let mut queue = std::collections::VecDeque::from([PathBuf::new()]);
    let mut seen = 0usize;
    let found = loop {
        let Some(rel) = queue.pop_front() else {
            return Err(format!(
                "this process (pid {pid}) is in no cgroup under {}: is it the host's cgroup v2 hierarchy?",
                cgroup_root.display()
            ));
        };
        seen += 1;
        if seen > 100_000 {
            return Err(format!(
                "more than 100000 cgroups under {}",
                cgroup_root.display()
            ));
        }
        let dir = cgroup_root.join(&rel);
        let procs =
            std::fs::File::open(dir.join("cgroup.procs")).and_then(|f| read_capped(f, 16 << 20));
        if procs.is_ok_and(|t| t.lines().any(|l| l.trim() == pid.to_string())) {
            break rel;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(rel.join(e.file_name()));
            }
        }
    };
    let mut parts: Vec<String> = found
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for c in own.split('/').filter(|c| !c.is_empty()).rev() {
        if parts.last().map(String::as_str) != Some(c) {
            return Err(format!(
                "this process is in /{} of {} but reads its cgroup as {own:?}",
                parts.join("/"),
                cgroup_root.display()
            ));
        }
        parts.pop();
    }
    Ok(format!("/{}", parts.join("/")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("envoy-smc-agent-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir_fd(p: &Path) -> OwnedFd {
        open_at(None, p, libc::O_PATH | libc::O_DIRECTORY).unwrap()
    }

    /// The downward API's layout: annotations -> ..data/annotations, ..data -> ..<timestamp>.
    fn downward_api(root: &Path, text: &str) {
        let pod = root.join("etc/istio/pod");
        std::fs::create_dir_all(pod.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(pod.join("..2026_01_01_00_00_00.1/annotations"), text).unwrap();
        symlink("..2026_01_01_00_00_00.1", pod.join("..data")).unwrap();
        symlink("..data/annotations", pod.join("annotations")).unwrap();
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tenvoy\nUid:\t0\t1337\t1337\t1337\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(1337));
        assert_eq!(effective_uid("Name:\tx\n"), None);
        assert_eq!(effective_uid("Uid:\t1\n"), None);
    }

    #[test]
    fn cgroup_paths_resolve_from_the_namespace_root() {
        assert_eq!(
            cgroup_v2_path("12:memory:/x\n0::/kubepods/pod1/c1\n"),
            Ok("/kubepods/pod1/c1")
        );
        assert!(cgroup_v2_path("4:memory:/a\n")
            .unwrap_err()
            .contains("cgroup v2"));
        assert_eq!(
            pod_cgroup("/", "/kubepods/pod1/c1").unwrap(),
            "/kubepods/pod1/c1"
        );
        // Read from inside the agent's own pod (its namespace root /kubepods/agentpod/c0).
        assert_eq!(
            pod_cgroup("/kubepods/agentpod/c0", "/../../pod1/c1").unwrap(),
            "/kubepods/pod1/c1"
        );
        assert!(pod_cgroup("/", "/").unwrap_err().contains("root cgroup"));
        assert!(pod_cgroup("/a", "/..").unwrap_err().contains("root cgroup"));
        assert!(pod_cgroup("/a", "/../..")
            .unwrap_err()
            .contains("climbs above"));
    }

    #[test]
    fn namespace_root_is_found_by_this_process_cgroup() {
        let t = TempDir::new("nsroot");
        for (dir, procs) in [
            ("", "1\n"),
            ("kubepods/pod1/c1", "10\n11\n"),
            ("kubepods/agent/c0/sub", "77\n"),
        ] {
            std::fs::create_dir_all(t.0.join(dir)).unwrap();
            std::fs::write(t.0.join(dir).join("cgroup.procs"), procs).unwrap();
        }
        // pid 77 reads its own cgroup as /sub: its namespace root is /kubepods/agent/c0.
        assert_eq!(
            namespace_root(&t.0, "/sub", 77).unwrap(),
            "/kubepods/agent/c0"
        );
        assert_eq!(namespace_root(&t.0, "/kubepods/pod1/c1", 10).unwrap(), "/");
        assert_eq!(namespace_root(&t.0, "/", 1).unwrap(), "/");
        assert!(namespace_root(&t.0, "/", 5)
            .unwrap_err()
            .contains("in no cgroup"));
        assert!(namespace_root(&t.0, "/other", 77)
            .unwrap_err()
            .contains("reads its cgroup as"));
    }

    #[test]
    fn cgroup2_mount_is_found_in_mountinfo() {
        let mi = "25 1 0:22 / /sys rw - sysfs sysfs rw\n\
                  30 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 1 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn annotations_resolve_inside_the_pods_root() {
        let t = TempDir::new("inroot");
        let root = t.0.join("root");
        downward_api(&root, "smc.asm.alibabacloud.com/enabled=\"true\"\n");
        let text = read_capped(
            open_in_root(&dir_fd(&root), DEFAULT_ANNOTATIONS_PATH).unwrap(),
            1024,
        )
        .unwrap();
        assert_eq!(
            downward_api_value(&text, DEFAULT_OPT_IN_ANNOTATION).as_deref(),
            Some("true")
        );

        // An absolute symlink planted by the pod points into the pod's root, not the node's: the
        // node's file of the same name is never read.
        std::fs::write(
            t.0.join("node-secret"),
            "smc.asm.alibabacloud.com/enabled=\"true\"",
        )
        .unwrap();
        let evil = t.0.join("evil");
        std::fs::create_dir_all(evil.join("etc/istio/pod")).unwrap();
        symlink(
            t.0.join("node-secret"),
            evil.join("etc/istio/pod/annotations"),
        )
        .unwrap();
        let err = open_in_root(&dir_fd(&evil), DEFAULT_ANNOTATIONS_PATH).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        // .. cannot climb out either.
        symlink("../../../../node-secret", evil.join("etc/istio/pod/up")).unwrap();
        assert!(open_in_root(&dir_fd(&evil), "etc/istio/pod/up").is_err());
    }

    #[test]
    fn annotations_must_be_a_small_regular_file() {
        let t = TempDir::new("caps");
        let pod = t.0.join("etc/istio/pod");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("annotations"), vec![b'a'; 2048]).unwrap();
        let root = dir_fd(&t.0);
        let err =
            read_capped(open_in_root(&root, DEFAULT_ANNOTATIONS_PATH).unwrap(), 1024).unwrap_err();
        assert!(err.to_string().contains("larger than 1024"), "{err}");
        // A FIFO neither blocks the open (O_NONBLOCK) nor is read.
        std::fs::remove_file(pod.join("annotations")).unwrap();
        let c = CString::new(pod.join("annotations").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err =
            read_capped(open_in_root(&root, DEFAULT_ANNOTATIONS_PATH).unwrap(), 1024).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    /// A scan over a fake /proc tree (a real one needs processes of another uid in pods' cgroups:
    /// tests/vm/agent-e2e.sh does that in the VM) and a fake cgroup tree.
    #[test]
    fn scan_selects_opted_in_pods_by_cgroup() {
        let t = TempDir::new("scan");
        let proc = t.0.join("proc");
        let cgroot = t.0.join("cgroup");
        let process = |pid: i32, uid: u32, cgroup: &str, annotations: Option<&str>| {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(d.join("root")).unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\tenvoy\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
            std::fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            if cgroup != "/" {
                std::fs::create_dir_all(cgroot.join(cgroup.trim_start_matches('/'))).unwrap();
            }
            if let Some(a) = annotations {
                downward_api(&d.join("root"), a);
            }
        };
        let on = "app=\"x\"\nsmc.asm.alibabacloud.com/enabled=\"true\"\n";
        process(10, 1337, "/kubepods/podA/proxy", Some(on)); // pilot-agent
        process(11, 1337, "/kubepods/podA/proxy", Some(on)); // envoy
        process(12, 0, "/kubepods/podA/app", Some(on)); // the app: another uid
        process(
            20,
            1337,
            "/kubepods/podB/proxy",
            Some("smc.asm.alibabacloud.com/enabled=\"false\"\n"),
        );
        process(30, 1337, "/kubepods/podC/proxy", None);
        process(40, 1337, "/", Some(on)); // not in a pod's cgroup
        std::fs::create_dir_all(proc.join("self")).unwrap(); // not a pid

        let scan = scan(&Selector::new(proc.clone(), cgroot.clone(), 1337)).unwrap();
        let id_a = cgroup_id(&cgroot, "/kubepods/podA/proxy").unwrap();
        assert_eq!(scan.selected().collect::<Vec<_>>(), vec![id_a]);
        let a = &scan.pods[&id_a];
        assert_eq!(
            (a.pids.as_slice(), a.cgroup.as_str()),
            (&[10, 11][..], "/kubepods/podA/proxy")
        );
        let reasons: Vec<_> = scan
            .pods
            .values()
            .filter(|p| !p.opted_in)
            .map(|p| p.reason.clone())
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons.iter().any(|r| r.contains("=\"false\"")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("No such file")),
            "{reasons:?}"
        );
        assert_eq!(scan.skipped.len(), 1);
        assert_eq!(scan.skipped[0].pid, 40);
        assert!(scan.skipped[0].reason.contains("root cgroup"));

        // opt_in.all_workloads: every proxy-uid pod, annotated or not; still not the app's
        // cgroup (another uid) nor the root cgroup.
        let mut all = Selector::new(proc, cgroot, 1337);
        all.all_workloads = true;
        let everyone = super::scan(&all).unwrap();
        assert_eq!(everyone.selected().count(), 3);
        assert_eq!(everyone.skipped.len(), 1);
    }
}
