//! Workers' listen sockets sharing one `AF_SMC` listener.
//!
//! Envoy's default TCP listener (`enable_reuse_port: true`) opens one socket per worker, each with
//! `SO_REUSEPORT`, binds them all to the same address, then calls `listen()` on them in order.
//! `AF_SMC` sockets refuse `SO_REUSEPORT` (only inet sockets join a reuse-port group), so they
//! cannot each become an SMC listener. Instead the first one to listen becomes a single `AF_SMC`
//! listener -- without `SO_REUSEPORT`; `SO_REUSEADDR` lets it bind beside the other sockets, which
//! are bound but not listening yet -- and every later socket of the same address is replaced,
//! under its own fd number, by a duplicate of that listener. The workers then share one accept
//! queue, as they do with `enable_reuse_port: false`.
//!
//! A socket that binds the same address while the shared listener listens (a listener update
//! that opens new sockets while the old listener drains) gets `EADDRINUSE`: the listening
//! `AF_SMC` socket is in no reuse-port group. [`SharedListeners::join`] then puts the shared
//! listener under its fd instead, so the new listener takes over the same accept queue and the
//! old one closes its fds without losing a connection.
//!
//! The registry keeps fd numbers, not sockets: a number may be closed and reused at any moment,
//! so each use first duplicates it (`F_DUPFD_CLOEXEC`, which pins the open file) and checks that
//! the duplicate is an `AF_SMC` socket listening on the address. It never holds an fd of its own:
//! a listener closed by its owner is gone.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::replace::replace_socket_without;
use super::socket::{socket_kind, SocketKind};
use super::sys::{getsockopt_int, syscall};

/// fd numbers remembered per address (the newest are kept).
const MAX_HOLDERS: usize = 64;

/// What [`SharedListeners::listen`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The socket became the `AF_SMC` listener of its address (it listens next).
    Created,
    /// The address's `AF_SMC` listener is under the fd now, already listening.
    Joined,
}

/// The `AF_SMC` listeners this process shares between fds, by local address.
#[derive(Debug, Default)]
pub struct SharedListeners {
    entries: Mutex<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    local: SocketAddr,
    /// fds that held the listener when last seen, oldest first.
    holders: Vec<RawFd>,
}

impl SharedListeners {
    /// Before `listen()` on `fd`, a TCP socket with `SO_REUSEPORT` bound to `local`: puts the
    /// `AF_SMC` listener shared at `local` under `fd`, or, when there is none, replaces the socket
    /// under `fd` with an `AF_SMC` socket bound to `local` (without `SO_REUSEPORT`) that later
    /// sockets of the address join. On error `fd` keeps a working TCP socket.
    pub fn listen(&self, fd: BorrowedFd<'_>, local: SocketAddr) -> io::Result<Shared> {
        let mut entries = self.lock()?;
        if join_locked(&mut entries, fd, local)? {
            return Ok(Shared::Joined);
        }
        replace_socket_without(
            fd,
            SocketKind::AfSmc,
            &[],
            &[(libc::SOL_SOCKET, libc::SO_REUSEPORT)],
        )?;
        remember(&mut entries, local, fd.as_raw_fd());
        Ok(Shared::Created)
    }

    /// After `bind(fd, local)` failed with `EADDRINUSE`: puts the `AF_SMC` listener shared at
    /// `local` under `fd` if this process has one. `Ok(false)`: it has none; `fd` is unchanged.
    pub fn join(&self, fd: BorrowedFd<'_>, local: SocketAddr) -> io::Result<bool> {
        let mut entries = self.lock()?;
        join_locked(&mut entries, fd, local)
    }

    /// Addresses with a live shared listener (for tests and diagnostics).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let Ok(mut entries) = self.lock() else {
            return Vec::new();
        };
        entries.retain_mut(|e| {
            e.holders.retain(|&h| live_holder(h, e.local).is_some());
            !e.holders.is_empty()
        });
        entries.iter().map(|e| e.local).collect()
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Vec<Entry>>> {
        self.entries
            .lock()
            .map_err(|_| io::Error::other("shared listener registry poisoned"))
    }
}

/// Puts a live shared listener of `local` under `fd`; forgets the holders that no longer hold it.
fn join_locked(
    entries: &mut Vec<Entry>,
    fd: BorrowedFd<'_>,
    local: SocketAddr,
) -> io::Result<bool> {
    let Some(i) = entries.iter().position(|e| e.local == local) else {
        return Ok(false);
    };
    let target = fd.as_raw_fd();
    let entry = &mut entries[i];
    let mut listener = None;
    while let Some(&holder) = entry.holders.last() {
        if let Some(dup) = live_holder(holder, local) {
            listener = Some(dup);
            break;
        }
        entry.holders.pop();
    }
    // Envoy clones a listener's fds on an update (dup) and closes the old ones after the drain:
    // the remembered numbers may all be gone while the listener lives on under others.
    let listener = listener.or_else(|| find_in_process(local, target));
    let Some(listener) = listener else {
        entries.remove(i);
        return Ok(false);
    };
    let cloexec = syscall!(fcntl(target, libc::F_GETFD))? & libc::FD_CLOEXEC != 0;
    syscall!(dup3(
        listener.as_raw_fd(),
        target,
        if cloexec { libc::O_CLOEXEC } else { 0 }
    ))?;
    remember(entries, local, target);
    Ok(true)
}

/// A duplicate of this process's `AF_SMC` socket listening on `local`, found among its fds
/// (`/proc/self/fd`). Only on the rare path: a listener update's new socket, after the fds the
/// registry knew were closed.
fn find_in_process(local: SocketAddr, except: RawFd) -> Option<OwnedFd> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd != except)
        .find_map(|fd| live_holder(fd, local))
}

/// A duplicate of `holder` if it is an `AF_SMC` socket listening on `local`.
fn live_holder(holder: RawFd, local: SocketAddr) -> Option<OwnedFd> {
    let dup = syscall!(fcntl(holder, libc::F_DUPFD_CLOEXEC, 0)).ok()?;
    // SAFETY: fcntl just returned this fd; nobody else owns it.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let is_smc = matches!(socket_kind(dup.as_fd()), Ok(Some((SocketKind::AfSmc, _))));
    let listening = getsockopt_int(dup.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .is_ok_and(|v| v != 0);
    let at = crate::runtime::local_address(dup.as_fd()).ok() == Some(local);
    (is_smc && listening && at).then_some(dup)
}

fn remember(entries: &mut Vec<Entry>, local: SocketAddr, fd: RawFd) {
    let i = match entries.iter().position(|e| e.local == local) {
        Some(i) => i,
        None => {
            entries.push(Entry {
                local,
                holders: Vec::new(),
            });
            entries.len() - 1
        }
    };
    let holders = &mut entries[i].holders;
    holders.retain(|&h| h != fd);
    if holders.len() >= MAX_HOLDERS {
        holders.remove(0);
    }
    holders.push(fd);
}
