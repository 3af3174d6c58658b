//! Seeing a black hole: a connecting SMC socket whose SYNs are being retried (`TCP_INFO`), and a
//! plain TCP connect to the same destination that succeeds.
//!
//! The probe is a [`RawTcpSocket`]: made with raw system calls, not the libc wrappers, because
//! under the preload library those wrappers are interposed and the probe must be a plain TCP
//! socket that envoy-smc itself never touches. The calls themselves live in the kernel layer
//! ([`crate::os::socket`]); this module decides what their answers mean.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::os::socket::{getsockopt_bytes, RawTcpSocket};

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
    let len = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
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
    let mut cookie = [0u8; 8];
    match getsockopt_bytes(fd, libc::SOL_SOCKET, SO_COOKIE, &mut cookie) {
        Ok(8) => Some(u64::from_ne_bytes(cookie)),
        _ => None,
    }
}

/// What a plain TCP connect to the destination did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Connected within the timeout: TCP works on this path.
    Connected,
    /// Refused, unreachable or timed out: the destination is down, not black-holed.
    Failed,
}

/// A plain TCP connect to a destination, in flight: proof that TCP works on the path when it
/// completes. Non-blocking, so one thread can run many at once ([`TcpProbe::poll_many`]); the
/// socket is closed when the probe is dropped.
#[derive(Debug)]
pub struct TcpProbe {
    socket: RawTcpSocket,
}

impl TcpProbe {
    /// Starts connecting to `dest`. `Err` carries the outcome when it is known at once.
    pub fn start(dest: SocketAddr) -> Result<TcpProbe, ProbeOutcome> {
        let socket = RawTcpSocket::for_destination(dest).map_err(|_| ProbeOutcome::Failed)?;
        match socket.connect(dest) {
            Ok(()) => Err(ProbeOutcome::Connected),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(TcpProbe { socket }),
            Err(_) => Err(ProbeOutcome::Failed),
        }
    }

    /// The outcome once the socket reported `revents` (writable, error or hang-up).
    fn outcome(&self) -> ProbeOutcome {
        match self.socket.take_error() {
            Ok(0) => ProbeOutcome::Connected,
            _ => ProbeOutcome::Failed,
        }
    }

    /// Waits up to `timeout` for any of `probes` to finish; returns the finished ones' indexes
    /// and outcomes (empty on timeout or interruption).
    pub fn poll_many(probes: &[&TcpProbe], timeout: Duration) -> Vec<(usize, ProbeOutcome)> {
        let sockets: Vec<&RawTcpSocket> = probes.iter().map(|p| &p.socket).collect();
        RawTcpSocket::poll_writable(&sockets, timeout)
            .into_iter()
            .map(|i| (i, probes[i].outcome()))
            .collect()
    }
}
