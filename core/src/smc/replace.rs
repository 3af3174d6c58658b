//! Replacing the socket under an fd number with a socket of another kind.
//!
//! Envoy (and any application under the preload library) holds the fd number; envoy-smc may
//! need a different kind of socket behind it (a plain TCP listener instead of an SMC one, an SMC
//! client socket instead of a TCP one). The replacement keeps the fd number, the file status and
//! descriptor flags, every option the old socket visibly carries, and its bound address. On any
//! failure before the switch-over nothing has changed; a failure to bind again afterwards puts a
//! socket of the old kind back.
//!
//! The caller re-registers the fd with epoll afterwards where it had registered it: the old open
//! file, and with it its epoll registration, is gone.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::socket::{open_socket, socket_kind, SocketKind};
use super::sys::{getsockopt_int, setsockopt_int, syscall, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT};

/// An `int` socket option an entry point recorded and wants set on the new socket, typically
/// one the old socket's kernel object refused (`SO_REUSEPORT` on `AF_SMC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOpt {
    pub level: libc::c_int,
    pub name: libc::c_int,
    pub value: libc::c_int,
}

/// Options copied from the old socket when their value differs from a fresh socket's.
/// `half` marks buffer sizes, which the kernel reports doubled.
const COPIED: &[(libc::c_int, libc::c_int, bool)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, false),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, false),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, false),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, false),
    (libc::SOL_SOCKET, libc::SO_MARK, false),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, false),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, false),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, true),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, true),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, false),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, false),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, false),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, false),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, false),
    (libc::IPPROTO_TCP, TCP_FASTOPEN, false),
    (libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT, false),
];
const COPIED_V4: &[(libc::c_int, libc::c_int, bool)] = &[
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, false),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, false),
    (libc::IPPROTO_IP, libc::IP_TOS, false),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, false),
];
const COPIED_V6: &[(libc::c_int, libc::c_int, bool)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, false),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, false),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, false),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, false),
];
const MAX_COPIED: usize = 32;

/// What the old socket carried, captured before the switch-over.
#[derive(Clone)]
struct Snapshot {
    kind: SocketKind,
    ipv6: bool,
    nonblock: bool,
    cloexec: bool,
    bound: Option<(libc::sockaddr_storage, libc::socklen_t)>,
    opts: [Option<SockOpt>; MAX_COPIED],
}

impl Snapshot {
    fn take(fd: BorrowedFd<'_>) -> io::Result<Snapshot> {
        let raw = fd.as_raw_fd();
        let Some((kind, ipv6)) = socket_kind(fd)? else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an IP stream socket",
            ));
        };
        let status = syscall!(fcntl(raw, libc::F_GETFL))?;
        let fdflags = syscall!(fcntl(raw, libc::F_GETFD))?;
        let mut snap = Snapshot {
            kind,
            ipv6,
            nonblock: status & libc::O_NONBLOCK != 0,
            cloexec: fdflags & libc::FD_CLOEXEC != 0,
            bound: bound_address(raw, ipv6)?,
            opts: [None; MAX_COPIED],
        };
        // A fresh socket of the same kind tells which values are defaults (not worth copying).
        let fresh = open_socket(kind, ipv6, libc::SOCK_CLOEXEC)?;
        let family_opts = if ipv6 { COPIED_V6 } else { COPIED_V4 };
        let mut n = 0;
        for &(level, name, half) in COPIED.iter().chain(family_opts) {
            let Ok(value) = getsockopt_int(raw, level, name) else {
                continue;
            };
            if getsockopt_int(fresh.as_raw_fd(), level, name).ok() == Some(value) {
                continue;
            }
            let value = if half { value / 2 } else { value };
            snap.opts[n] = Some(SockOpt { level, name, value });
            n += 1;
        }
        Ok(snap)
    }

    /// Opens a socket of `kind` carrying the snapshot's flags and options plus `extra`.
    fn build(&self, kind: SocketKind, extra: &[SockOpt]) -> io::Result<std::os::fd::OwnedFd> {
        let flags = if self.nonblock {
            libc::SOCK_NONBLOCK
        } else {
            0
        } | libc::SOCK_CLOEXEC;
        let new = open_socket(kind, self.ipv6, flags)?;
        for opt in self.opts.iter().flatten().chain(extra) {
            let fast_open = opt.level == libc::IPPROTO_TCP
                && (opt.name == TCP_FASTOPEN || opt.name == TCP_FASTOPEN_CONNECT);
            if kind.is_smc() && fast_open {
                // Any fast-open option switches an SMC socket to TCP: SMC is impossible here.
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the socket uses TCP fast open, which SMC does not support",
                ));
            }
            setsockopt_int(new.as_raw_fd(), opt.level, opt.name, opt.value).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "setsockopt({}, {}) on the new socket: {e}",
                        opt.level, opt.name
                    ),
                )
            })?;
        }
        Ok(new)
    }

    /// Puts `new` under `fd` and binds it where the old socket was bound.
    fn install(&self, new: std::os::fd::OwnedFd, fd: RawFd) -> io::Result<()> {
        let flags = if self.cloexec { libc::O_CLOEXEC } else { 0 };
        syscall!(dup3(new.as_raw_fd(), fd, flags))?;
        drop(new);
        if let Some((addr, len)) = &self.bound {
            syscall!(bind(
                fd,
                (addr as *const libc::sockaddr_storage).cast(),
                *len
            ))?;
        }
        Ok(())
    }
}

/// Replaces the socket under `fd` with a fresh socket of kind `to` (same address family), keeping
/// the fd number, `O_NONBLOCK`/`FD_CLOEXEC`, the options it carries (plus `extra`) and its bound
/// address. The socket must not be connected or listening yet.
///
/// Errors: before the switch-over the old socket is untouched; if binding the new socket fails,
/// a socket of the old kind with the same options and address is put back and the bind error is
/// returned.
pub fn replace_socket(fd: BorrowedFd<'_>, to: SocketKind, extra: &[SockOpt]) -> io::Result<()> {
    replace_socket_without(fd, to, extra, &[])
}

/// Like [`replace_socket`], leaving the options in `left_out` (level, name) off the new socket:
/// `SO_REUSEPORT`, which an `AF_SMC` socket refuses, for a listener that is shared instead. A
/// socket put back after a failed bind carries them again.
pub fn replace_socket_without(
    fd: BorrowedFd<'_>,
    to: SocketKind,
    extra: &[SockOpt],
    left_out: &[(libc::c_int, libc::c_int)],
) -> io::Result<()> {
    let snap = Snapshot::take(fd)?;
    if snap.kind == to && extra.is_empty() {
        return Ok(());
    }
    let raw = fd.as_raw_fd();
    let mut wanted = snap.clone();
    for slot in wanted.opts.iter_mut() {
        if slot.is_some_and(|o| left_out.contains(&(o.level, o.name))) {
            *slot = None;
        }
    }
    let new = wanted.build(to, extra)?;
    match snap.install(new, raw) {
        Ok(()) => Ok(()),
        Err(err) => {
            // The old socket is gone; put one of its kind back so the caller still has what it had.
            let back = snap.build(snap.kind, &[])?;
            snap.install(back, raw)?;
            Err(err)
        }
    }
}

/// The address `fd` is bound to, if it is bound (a non-zero port or a specific address).
fn bound_address(
    fd: RawFd,
    ipv6: bool,
) -> io::Result<Option<(libc::sockaddr_storage, libc::socklen_t)>> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    syscall!(getsockname(fd, storage.as_mut_ptr().cast(), &mut len))?;
    // SAFETY: zero-initialised, then filled in by the kernel up to `len` bytes.
    let storage = unsafe { storage.assume_init() };
    let bound = if ipv6 {
        // SAFETY: an IPv6 socket reports a sockaddr_in6, which fits in sockaddr_storage.
        let a =
            unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
        a.sin6_family as libc::c_int == libc::AF_INET6
            && (a.sin6_port != 0 || a.sin6_addr.s6_addr != [0; 16])
    } else {
        // SAFETY: an IPv4 socket reports a sockaddr_in, which fits in sockaddr_storage.
        let a =
            unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        a.sin_family as libc::c_int == libc::AF_INET && (a.sin_port != 0 || a.sin_addr.s_addr != 0)
    };
    Ok(bound.then_some((storage, len)))
}

/// Replaces the connecting socket under `fd` with a plain TCP socket that is already connecting
/// to `dest`: same fd number and flags, the options the old socket visibly carries, bound to the
/// IP address of `source` when the program bound one before connecting (not its port: the stuck
/// socket still holds that port, and a port chosen by `bind(ip, 0)` cannot be told from one the
/// program asked for). `prepare` runs on the new socket before it connects (an entry point sets
/// the options it recorded).
///
/// Only a non-blocking socket is replaced (a thread blocked in `connect()` on the old socket
/// would wait on it regardless). Nothing changes unless the new connect is under way or done:
/// any error before the switch-over leaves the old socket in place. The caller re-registers the
/// fd with epoll afterwards.
pub fn reconnect_tcp(
    fd: BorrowedFd<'_>,
    dest: std::net::SocketAddr,
    source: Option<std::net::SocketAddr>,
    prepare: impl FnOnce(RawFd),
) -> io::Result<()> {
    let mut snap = Snapshot::take(fd)?;
    if !snap.nonblock {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a blocking connect is not replaced",
        ));
    }
    let dest = match dest {
        // An IPv6 socket reaches an IPv4 destination through its mapped address.
        std::net::SocketAddr::V4(v4) if snap.ipv6 => {
            std::net::SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        std::net::SocketAddr::V6(_) if !snap.ipv6 => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an IPv6 destination for an IPv4 socket",
            ))
        }
        _ => dest,
    };
    // A connecting socket reports the ephemeral address the kernel picked for it: never bind
    // that (it is still in use); bind only what the program chose.
    snap.bound = None;
    let new = snap.build(SocketKind::Tcp, &[])?;
    prepare(new.as_raw_fd());
    if let Some(source) = source.filter(|s| !s.ip().is_unspecified()) {
        let addr = socket2::SockAddr::from(std::net::SocketAddr::new(source.ip(), 0));
        syscall!(bind(new.as_raw_fd(), addr.as_ptr().cast(), addr.len()))?;
    }
    let addr = socket2::SockAddr::from(dest);
    if let Err(e) = syscall!(connect(new.as_raw_fd(), addr.as_ptr().cast(), addr.len())) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let flags = if snap.cloexec { libc::O_CLOEXEC } else { 0 };
    syscall!(dup3(new.as_raw_fd(), fd.as_raw_fd(), flags))?;
    Ok(())
}
