//! Which processes hold which sockets: socket inode -> (pid, command), from `/proc/*/fd`.
//! Processes we may not look into (other users, without CAP_SYS_PTRACE) are skipped and counted.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use serde::Serialize;

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub fd: u32,
}

/// Socket inode -> the processes (and fds) that hold it.
#[derive(Debug, Default, Clone)]
pub struct SocketOwners {
    pub by_inode: HashMap<u64, Vec<Owner>>,
    /// Processes whose fds could not be read.
    pub unreadable: usize,
}

impl SocketOwners {
    pub fn get(&self, inode: u64) -> &[Owner] {
        self.by_inode.get(&inode).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The inode in a `socket:[12345]` link target.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Scans `/proc`.
pub fn socket_owners() -> SocketOwners {
    scan(Path::new("/proc"))
}

/// Scans a proc-like tree (`<root>/<pid>/fd/*`, `<root>/<pid>/comm`).
pub fn scan(root: &Path) -> SocketOwners {
    let mut out = SocketOwners::default();
    let Ok(dir) = fs::read_dir(root) else {
        return out;
    };
    for ent in dir.flatten() {
        let name = ent.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let pdir = ent.path();
        let fds = match fs::read_dir(pdir.join("fd")) {
            Ok(f) => f,
            Err(_) => {
                out.unreadable += 1;
                continue;
            }
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(parse_socket_link) else {
                continue;
            };
            let Some(fdnum) = fd.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let comm = comm
                .get_or_insert_with(|| {
                    fs::read_to_string(pdir.join("comm"))
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default()
                })
                .clone();
            out.by_inode.entry(inode).or_default().push(Owner {
                pid,
                comm,
                fd: fdnum,
            });
        }
    }
    for v in out.by_inode.values_mut() {
        v.sort_by_key(|o| (o.pid, o.fd));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("socket:[]"), None);
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("socket:[1"), None);
    }

    #[test]
    fn finds_this_process_holding_a_real_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = socket_owners();
        let me = std::process::id();
        let o = owners.get(inode);
        assert!(
            o.iter()
                .any(|o| o.pid == me && o.fd == l.as_raw_fd() as u32),
            "{o:?}"
        );
        assert!(!o[0].comm.is_empty());
    }
}
