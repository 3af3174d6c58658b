//! Opening sockets of each kind, telling which kind an fd is, and the per-socket SMC options.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::sys::{
    getsockopt_int, setsockopt_int, syscall, AF_SMC, IPPROTO_SMC, SMCPROTO_SMC, SMCPROTO_SMC6,
    SMC_LIMIT_HS, SOL_SMC, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT,
};

/// The kind of stream socket behind an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SocketKind {
    /// A plain `AF_INET`/`AF_INET6` TCP socket.
    Tcp = 0,
    /// `socket(AF_SMC, SOCK_STREAM, SMCPROTO_SMC|SMCPROTO_SMC6)`.
    AfSmc = 1,
    /// `socket(AF_INET|AF_INET6, SOCK_STREAM, IPPROTO_SMC)`.
    IpprotoSmc = 2,
}

impl SocketKind {
    pub fn is_smc(self) -> bool {
        self != SocketKind::Tcp
    }

    pub fn name(self) -> &'static str {
        match self {
            SocketKind::Tcp => "TCP",
            SocketKind::AfSmc => "AF_SMC",
            SocketKind::IpprotoSmc => "IPPROTO_SMC",
        }
    }

    /// The `socket()` arguments (domain, protocol) for this kind and address family.
    pub fn socket_args(self, ipv6: bool) -> (libc::c_int, libc::c_int) {
        let inet = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        match self {
            SocketKind::Tcp => (inet, libc::IPPROTO_TCP),
            SocketKind::AfSmc => (AF_SMC, if ipv6 { SMCPROTO_SMC6 } else { SMCPROTO_SMC }),
            SocketKind::IpprotoSmc => (inet, IPPROTO_SMC),
        }
    }
}

/// Whether `socket(domain, type, protocol)` asks for an IP stream socket, the only sockets
/// envoy-smc ever touches. `type` may carry `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
pub fn is_ip_stream(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> bool {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && base == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP)
}

/// Opens a stream socket of `kind`. `flags` are `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
pub fn open_socket(kind: SocketKind, ipv6: bool, flags: libc::c_int) -> io::Result<OwnedFd> {
    let (domain, protocol) = kind.socket_args(ipv6);
    let flags = flags & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let fd = syscall!(socket(domain, libc::SOCK_STREAM | flags, protocol))?;
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kind of stream socket behind `fd` and whether its addresses are IPv6, read from the kernel
/// (`SO_DOMAIN`, `SO_PROTOCOL`). `None` for anything that is not an IP or SMC stream socket.
pub fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<Option<(SocketKind, bool)>> {
    let raw = fd.as_raw_fd();
    let domain = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let ty = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    if ty != libc::SOCK_STREAM {
        return Ok(None);
    }
    Ok(match (domain, protocol) {
        (AF_SMC, p) => Some((SocketKind::AfSmc, p == SMCPROTO_SMC6)),
        (libc::AF_INET | libc::AF_INET6, IPPROTO_SMC) => {
            Some((SocketKind::IpprotoSmc, domain == libc::AF_INET6))
        }
        (libc::AF_INET | libc::AF_INET6, libc::IPPROTO_TCP) => {
            Some((SocketKind::Tcp, domain == libc::AF_INET6))
        }
        _ => None,
    })
}

/// The per-socket fallback switch: on an SMC socket that is not yet connected or listening, the
/// kernel switches the socket to plain TCP (reason `SMC_CLC_DECL_OPTUNSUPP`) and passes the
/// option (value 0: no fast open) to its TCP socket. A no-op on a TCP socket. Safe after epoll
/// registration for client sockets; never use it on a listener (accepted sockets then lose epoll
/// wakeups, FACTS.md).
pub fn apply_fallback_switch(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    match setsockopt_int(raw, libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 0) {
        Ok(()) => Ok(()),
        // Kernels without TCP_FASTOPEN_CONNECT (< 4.11): TCP_FASTOPEN trips the same switch.
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            setsockopt_int(raw, libc::IPPROTO_TCP, TCP_FASTOPEN, 0)
        }
        Err(e) => Err(e),
    }
}

/// Handshake limitation on an SMC listener (`SOL_SMC`/`SMC_LIMIT_HS` = 1, Linux >= 5.18).
pub fn set_limit_handshake(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd.as_raw_fd(), SOL_SMC, SMC_LIMIT_HS, 1)
}
