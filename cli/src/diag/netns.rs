//! Every network namespace of the node, and a way into each.
//!
//! In a cluster every sidecar lives in its pod's own network namespace, and smc_diag, inet_diag
//! and the SMC generic-netlink counters answer per namespace. [`list`] finds the namespaces
//! through `/proc/<pid>/ns/net` (deduplicated by the namespace's inode) with the processes in
//! each; [`enter_each`] runs a closure in each of them on one helper thread that `setns`-es
//! from namespace to namespace and is discarded afterwards, so the caller's own namespaces never
//! change. Entering needs `CAP_SYS_ADMIN` (and ptrace access to a process of the namespace).
//!
//! [`pod_labels`] says which pod a namespace belongs to where that can be read, without
//! depending on one container runtime: the hostname of the process's UTS namespace (a pod's
//! hostname is its name), else `/proc/<pid>/root/etc/hostname`, and the Kubernetes pod cgroup
//! (`kubepods…/…pod<uid>…`) from `/proc/<pid>/cgroup`, which kubelet names the same way for every
//! runtime and both cgroup drivers.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

/// One network namespace and the processes in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Netns {
    /// The namespace's inode (as `ip netns identify`, `lsns` and `/proc/<pid>/ns/net` show it).
    pub inode: u64,
    /// Processes in it, by pid (the first is the oldest pid, usually the pod's pause or init).
    pub pids: Vec<u32>,
}

/// A namespace that was found but could not be entered, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotEntered {
    pub inode: u64,
    pub error: String,
}

/// What a namespace's processes tell about the pod it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodLabels {
    /// pid and command of the process the labels were read from.
    pub pid: u32,
    pub comm: String,
    /// The hostname in the process's UTS namespace (a pod's name), or its `/etc/hostname`.
    pub hostname: Option<String>,
    /// The pod's cgroup path (`/kubepods.slice/…-pod<uid>.slice`), when it is a Kubernetes pod.
    pub kube_cgroup: Option<String>,
    /// The pod UID from that path.
    pub pod_uid: Option<String>,
}

/// Every network namespace with a process in it, from a proc tree (`/proc`), ordered by the
/// namespace's first pid (so the host's, holding pid 1, comes first), and how many processes
/// could not be looked at.
pub fn list(proc_root: &Path) -> (Vec<Netns>, usize) {
    let mut by_inode: std::collections::HashMap<u64, Vec<u32>> = Default::default();
    let mut unreadable = 0;
    let Ok(dir) = fs::read_dir(proc_root) else {
        return (Vec::new(), 0);
    };
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // stat follows the ns link to the namespace file itself: its inode names the namespace.
        match fs::metadata(ent.path().join("ns/net")) {
            Ok(m) => by_inode.entry(m.ino()).or_default().push(pid),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // exited meanwhile
            Err(_) => unreadable += 1,
        }
    }
    let mut out: Vec<Netns> = by_inode
        .into_iter()
        .map(|(inode, mut pids)| {
            pids.sort_unstable();
            Netns { inode, pids }
        })
        .collect();
    out.sort_by_key(|n| n.pids[0]);
    (out, unreadable)
}

/// The hostname as `uname` reports it on this thread.
fn hostname_here() -> Option<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn setns(file: &File, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: file is an open namespace file; setns changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), nstype) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The namespace files of the first of `ns.pids` that is still in `ns`: (net, uts if readable).
fn open_ns(proc_root: &Path, ns: &Netns) -> Result<(File, Option<File>), String> {
    let mut last = String::from("no process left in it");
    for pid in &ns.pids {
        let dir = proc_root.join(pid.to_string());
        match File::open(dir.join("ns/net")) {
            // The pid may have been reused by a process of another namespace since `list`.
            Ok(f) if f.metadata().is_ok_and(|m| m.ino() == ns.inode) => {
                return Ok((f, File::open(dir.join("ns/uts")).ok()));
            }
            Ok(_) => {}
            Err(e) => last = format!("{}: {e}", dir.join("ns/net").display()),
        }
    }
    Err(last)
}

/// Moves the calling thread into `ns`; the hostname of its UTS namespace when that could be
/// entered too (labels only: best effort).
fn move_into(proc_root: &Path, ns: &Netns) -> Result<Option<String>, String> {
    let (net, uts) = open_ns(proc_root, ns)?;
    setns(&net, libc::CLONE_NEWNET).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (needs CAP_SYS_ADMIN)"
        } else {
            ""
        };
        format!("setns into net:[{}]: {e}{hint}", ns.inode)
    })?;
    Ok(uts
        .filter(|u| setns(u, libc::CLONE_NEWUTS).is_ok())
        .and_then(|_| hostname_here()))
}

/// Runs `f` inside each namespace of `nss` in turn, on ONE helper thread that `setns`-es from
/// one namespace to the next (for the first of each namespace's pids that is still in it) and
/// ends afterwards, so the caller's thread never changes namespace. Per namespace: `f`'s result
/// and the hostname of that process's UTS namespace (when it could be entered), or why the
/// namespace could not be entered (then `f` does not run for it).
pub fn enter_each<T: Send>(
    proc_root: &Path,
    nss: &[Netns],
    mut f: impl FnMut(&Netns) -> T + Send,
) -> Vec<Result<(T, Option<String>), String>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nss.iter()
                .map(|ns| {
                    let host = move_into(proc_root, ns)?;
                    Ok((f(ns), host))
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|_| {
            nss.iter()
                .map(|ns| {
                    Err(format!(
                        "the helper thread panicked before net:[{}]",
                        ns.inode
                    ))
                })
                .collect()
        })
    })
}

/// [`enter_each`] for one namespace.
pub fn enter<T: Send>(
    proc_root: &Path,
    ns: &Netns,
    f: impl FnOnce() -> T + Send,
) -> Result<(T, Option<String>), String> {
    let mut f = Some(f);
    let mut out = enter_each(proc_root, std::slice::from_ref(ns), |_| {
        f.take().map(|f| f())
    });
    match out.pop() {
        Some(Ok((Some(t), host))) => Ok((t, host)),
        Some(Err(e)) => Err(e),
        _ => Err(format!("net:[{}] was not entered", ns.inode)),
    }
}

/// At most this many bytes of a file we only need a short line from.
const SMALL_FILE_MAX: u64 = 64 * 1024;

fn read_small(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    File::open(p)
        .ok()?
        .take(SMALL_FILE_MAX)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The Kubernetes pod part of a `/proc/<pid>/cgroup` file and the pod UID in it: the path up to
/// the segment naming the pod, under a `kubepods` segment. Works for the systemd driver
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/…`) and the
/// cgroupfs driver (`/kubepods/burstable/pod1234-5678/…`); `None` for anything else.
pub fn kube_pod_cgroup(cgroup_file: &str) -> Option<(String, String)> {
    for line in cgroup_file.lines() {
        // "hierarchy-ID:controllers:path"; the path may itself contain ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let segs: Vec<&str> = path.split('/').collect();
        let Some(k) = segs.iter().position(|s| s.starts_with("kubepods")) else {
            continue;
        };
        for (i, seg) in segs.iter().enumerate().skip(k) {
            let body = seg.strip_suffix(".slice").unwrap_or(seg);
            let uid = body
                .rsplit_once("-pod")
                .map(|(_, u)| u)
                .or_else(|| body.strip_prefix("pod"));
            if let Some(uid) = uid.filter(|u| !u.is_empty()) {
                // The systemd driver writes the UID's dashes as underscores.
                return Some((segs[..=i].join("/"), uid.replace('_', "-")));
            }
        }
    }
    None
}

/// What can be read about the pod of namespace `ns` (from its first readable process);
/// `hostname`: the one [`enter_each`] read in its UTS namespace, else `/etc/hostname` is read.
pub fn pod_labels(proc_root: &Path, ns: &Netns, hostname: Option<String>) -> PodLabels {
    let mut out = PodLabels::default();
    for &pid in &ns.pids {
        let dir = proc_root.join(pid.to_string());
        let Some(comm) = read_small(&dir.join("comm")) else {
            continue;
        };
        out.pid = pid;
        out.comm = comm.trim_end().to_string();
        out.hostname = hostname
            .clone()
            .or_else(|| read_small(&dir.join("root/etc/hostname")).map(|h| h.trim().to_string()))
            .filter(|h| !h.is_empty());
        if let Some((cg, uid)) = read_small(&dir.join("cgroup")).and_then(|c| kube_pod_cgroup(&c)) {
            out.kube_cgroup = Some(cg);
            out.pod_uid = Some(uid);
        }
        break;
    }
    out
}

/// `state_dir` (a path as the proxies see it) inside the root of `proc_root/<pid>`, when no
/// component of it is a symbolic link there: a link resolved from the node would point into the
/// node's own tree, not the container's.
fn state_dir_in_root(proc_root: &Path, pid: u32, state_dir: &Path) -> Option<std::path::PathBuf> {
    let mut p = proc_root.join(pid.to_string()).join("root");
    for c in state_dir.components() {
        match c {
            std::path::Component::Normal(n) => p.push(n),
            std::path::Component::RootDir => continue,
            _ => return None, // `..` or `.`: refuse rather than reason about it
        }
        if !fs::symlink_metadata(&p).ok()?.is_dir() {
            return None;
        }
    }
    Some(p)
}

fn ns_inode(proc_root: &Path, pid: &str, kind: &str) -> Option<u64> {
    fs::metadata(proc_root.join(pid).join("ns").join(kind))
        .ok()
        .map(|m| m.ino())
}

/// The adaptive-fallback tables proxies published (see [`envoy_smc_core::adaptive::publish`]), read in
/// every mount namespace of the node once, by network namespace. A table goes to the network
/// namespace of the process that wrote it when that process is in our pid namespace, else to
/// the namespace of the process whose root it was found under (same pod).
pub fn black_hole_tables(
    proc_root: &Path,
    nss: &[Netns],
    state_dir: &Path,
) -> std::collections::HashMap<u64, Vec<envoy_smc_core::adaptive::publish::ProcessTable>> {
    use envoy_smc_core::adaptive::publish::read_tables;
    let my_pidns = ns_inode(proc_root, "self", "pid");
    let pid_netns: std::collections::HashMap<u32, u64> = nss
        .iter()
        .flat_map(|n| n.pids.iter().map(move |&p| (p, n.inode)))
        .collect();
    let mut seen_mnt = std::collections::HashSet::new();
    let mut out: std::collections::HashMap<u64, Vec<_>> = Default::default();
    for ns in nss {
        for &pid in &ns.pids {
            let Some(mnt) = ns_inode(proc_root, &pid.to_string(), "mnt") else {
                continue;
            };
            if !seen_mnt.insert(mnt) {
                continue;
            }
            let Some(dir) = state_dir_in_root(proc_root, pid, state_dir) else {
                continue;
            };
            let same_pidns =
                my_pidns.is_some() && ns_inode(proc_root, &pid.to_string(), "pid") == my_pidns;
            // The pids in the tables are those of the writer's pid namespace.
            let tables_proc = if same_pidns {
                proc_root.to_path_buf()
            } else {
                proc_root.join(pid.to_string()).join("root/proc")
            };
            for t in read_tables(&dir, &tables_proc) {
                let owner = if same_pidns {
                    pid_netns.get(&t.pid).copied().unwrap_or(ns.inode)
                } else {
                    ns.inode
                };
                out.entry(owner).or_default().push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_of_both_drivers_and_none_elsewhere() {
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f6e2d7a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-abc.scope\n";
        assert_eq!(
            kube_pod_cgroup(systemd),
            Some((
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f6e2d7a_1b2c_4d5e_8f90_123456789abc.slice".into(),
                "0f6e2d7a-1b2c-4d5e-8f90-123456789abc".into()
            ))
        );
        let cgroupfs = "12:memory:/kubepods/besteffort/pod7c1e-aa/0123456789\n0::/\n";
        assert_eq!(
            kube_pod_cgroup(cgroupfs),
            Some(("/kubepods/besteffort/pod7c1e-aa".into(), "7c1e-aa".into()))
        );
        let guaranteed = "0::/kubepods.slice/kubepods-pod11_22.slice/crio-x.scope";
        assert_eq!(kube_pod_cgroup(guaranteed).unwrap().1, "11-22");
        assert_eq!(kube_pod_cgroup("0::/system.slice/sshd.service\n"), None);
        assert_eq!(kube_pod_cgroup("0::/kubepods.slice\n"), None);
        assert_eq!(kube_pod_cgroup("garbage"), None);
        assert_eq!(kube_pod_cgroup(""), None);
    }

    #[test]
    fn lists_our_own_namespace_with_us_in_it() {
        let (all, _) = list(Path::new("/proc"));
        let mine = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let ns = all.iter().find(|n| n.inode == mine).expect("our netns");
        assert!(ns.pids.contains(&std::process::id()));
        let mut seen = std::collections::HashSet::new();
        assert!(all.iter().all(|n| seen.insert(n.inode)), "deduplicated");
    }

    #[test]
    fn entering_needs_privilege_or_works_and_never_moves_the_caller() {
        let mine = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let me = Netns {
            inode: mine,
            pids: vec![std::process::id()],
        };
        match enter(Path::new("/proc"), &me, || {
            fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
        }) {
            Ok((ino, host)) => {
                assert_eq!(ino, mine);
                assert!(host.is_some_and(|h| !h.is_empty()));
            }
            Err(e) => assert!(e.contains("setns"), "{e}"),
        }
        let gone = Netns {
            inode: mine,
            pids: vec![],
        };
        assert!(enter(Path::new("/proc"), &gone, || ()).is_err());
        assert_eq!(fs::metadata("/proc/self/ns/net").unwrap().ino(), mine);
    }
}
