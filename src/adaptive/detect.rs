//! Seeing a black hole: a connecting SMC socket whose SYNs are being retried (`TCP_INFO`), and a
//! plain TCP connect to the same destination that succeeds.
//!
//! The probe uses raw system calls (`syscall(2)`), not the libc wrappers: under the preload library
//! those wrappers are interposed, and the probe must be a plain TCP socket that envoy-smc itself
//! never touches.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// `SO_COOKIE`: a socket's unique id, to notice an fd number that was closed and reused.
const SO_COOKIE: libc::c_int = 57;
const TCP_ESTABLISHED: u8 = 1;
/// `tcpi_state` of a socket sending SYNs.
pub const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;

/// Where a watched connect stands, from `TCP_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    /// Past the handshake: established, or already closing after it.
    Established,
    /// Still sending SYNs; `retransmits` of them were retried.
    SynSent { retransmits: u8 },
    /// Closed: not connecting yet (watched just before `connect()`), or failed.
    Closed,
    /// Anything else: nothing to learn.
    Other,
}

/// `tcpi_state` and `tcpi_retransmits` from `TCP_INFO` (works on both SMC flavours while they
/// connect: it is answered by the internal TCP socket).
pub fn tcp_info_state(fd: RawFd) -> io::Result<(u8, u8)> {
    // tcpi_state is byte 0 and tcpi_retransmits byte 2 of struct tcp_info.
    let mut info = [0u8; 104];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info is a writable buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    if len < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short TCP_INFO"));
    }
    Ok((info[0], info[2]))
}

/// Where a connecting socket stands.
pub fn connect_state(fd: RawFd) -> io::Result<ConnectState> {
    let (state, retransmits) = tcp_info_state(fd)?;
    Ok(match state {
        // ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: the connect got through.
        TCP_ESTABLISHED | 4 | 5 | 6 | 8 | 9 | 11 => ConnectState::Established,
        TCP_SYN_SENT => ConnectState::SynSent { retransmits },
        TCP_CLOSE => ConnectState::Closed,
        _ => ConnectState::Other,
    })
}

/// The black-hole signature shared by the watchdog and `envoy-smc check`: after `detect_after`,
/// the connect is still in SYN_SENT and at least one SYN was retried (the first retry comes after
/// the 1 s initial RTO; a healthy SMC-R connect finishes well before). It is only a suspicion
/// until a plain TCP connect to the same destination succeeds.
pub fn syn_stalled(
    tcp_state: u8,
    retransmits: u8,
    elapsed: Duration,
    detect_after: Duration,
) -> bool {
    tcp_state == TCP_SYN_SENT && retransmits >= 1 && elapsed >= detect_after
}

/// The socket's cookie, or `None` if `fd` is not an open socket.
pub fn socket_cookie(fd: RawFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie is a writable u64 and len says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// What a plain TCP connect to the destination did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Connected within the timeout: TCP works on this path.
    Connected,
    /// Refused, unreachable or timed out: the destination is down, not black-holed.
    Failed,
}

fn raw(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Connects a plain TCP socket to `dest` and closes it again, within `timeout`.
pub fn tcp_probe(dest: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let (storage, len) = crate::ffi::sockaddr::from_socket_addr(dest);
    let domain = if dest.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = match raw(unsafe {
        libc::syscall(
            libc::SYS_socket,
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    }) {
        Ok(fd) => fd as libc::c_int,
        Err(_) => return ProbeOutcome::Failed,
    };
    let outcome = probe_on(fd, &storage, len, timeout);
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    outcome
}

fn probe_on(
    fd: libc::c_int,
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
    timeout: Duration,
) -> ProbeOutcome {
    // SAFETY: storage holds a valid address of `len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_connect,
            fd,
            (storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return ProbeOutcome::Connected;
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return ProbeOutcome::Failed;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ProbeOutcome::Failed;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                &mut pfd as *mut libc::pollfd,
                1,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return ProbeOutcome::Failed;
        }
        if n == 0 {
            continue;
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err is a writable int and elen says so.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_getsockopt,
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int,
                &mut elen as *mut libc::socklen_t,
            )
        };
        return if rc == 0 && err == 0 {
            ProbeOutcome::Connected
        } else {
            ProbeOutcome::Failed
        };
    }
}
