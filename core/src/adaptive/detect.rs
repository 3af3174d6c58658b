//! Seeing a black hole: a connecting SMC socket whose SYNs are being retried (`TCP_INFO`), and a
//! plain TCP connect to the same destination that succeeds.
//!
//! The probe uses raw system calls (`syscall(2)`), not the libc wrappers: under the preload library
//! those wrappers are interposed, and the probe must be a plain TCP socket that envoy-smc itself
//! never touches.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

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

/// A plain TCP connect to a destination, in flight: proof that TCP works on the path when it
/// completes. Non-blocking, so one thread can run many at once ([`TcpProbe::poll_many`]); the
/// socket is closed when the probe is dropped.
#[derive(Debug)]
pub struct TcpProbe {
    fd: libc::c_int,
}

impl TcpProbe {
    /// Starts connecting to `dest`. `Err` carries the outcome when it is known at once.
    pub fn start(dest: SocketAddr) -> Result<TcpProbe, ProbeOutcome> {
        let addr = socket2::SockAddr::from(dest);
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
            Err(_) => return Err(ProbeOutcome::Failed),
        };
        let probe = TcpProbe { fd };
        // SAFETY: addr holds a valid address of addr.len() bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_connect,
                fd,
                addr.as_ptr().cast::<libc::sockaddr>(),
                addr.len(),
            )
        };
        if rc == 0 {
            return Err(ProbeOutcome::Connected);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(ProbeOutcome::Failed);
        }
        Ok(probe)
    }

    /// The outcome once the socket reported `revents` (writable, error or hang-up).
    fn outcome(&self) -> ProbeOutcome {
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err is a writable int and elen says so.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_getsockopt,
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int,
                &mut elen as *mut libc::socklen_t,
            )
        };
        if rc == 0 && err == 0 {
            ProbeOutcome::Connected
        } else {
            ProbeOutcome::Failed
        }
    }

    /// Waits up to `timeout` for any of `probes` to finish; returns the finished ones' indexes
    /// and outcomes (empty on timeout or interruption).
    pub fn poll_many(probes: &[&TcpProbe], timeout: Duration) -> Vec<(usize, ProbeOutcome)> {
        let mut fds: Vec<libc::pollfd> = probes
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd,
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` has fds.len() valid entries; a valid timespec; no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0,
            )
        };
        if n <= 0 {
            return Vec::new();
        }
        fds.iter()
            .enumerate()
            .filter(|(_, f)| f.revents != 0)
            .map(|(i, _)| (i, probes[i].outcome()))
            .collect()
    }
}

impl Drop for TcpProbe {
    fn drop(&mut self) {
        // SAFETY: fd was opened by `start` and is closed once, here.
        unsafe { libc::syscall(libc::SYS_close, self.fd) };
    }
}
