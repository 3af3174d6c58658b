//! `check HOST:PORT`: connect once over SMC through the library's kernel layer, and say what the
//! kernel negotiated — SMC-R, SMC-D, or TCP fallback with its reason (from smc_diag, by inode) —
//! or that the path drops SYNs carrying TCP option 254 (a "black hole": the kernel retries the
//! SYN with the option for 134 s and never without it, FACTS.md).
//!
//! Black-hole test: an SMC connect still in SYN_SENT with a retransmitted SYN (`TCP_INFO`
//! `tcpi_retransmits >= 1`, i.e. after the 1 s initial RTO) while a plain TCP connect to the same
//! destination succeeds. That costs about 1 s, not 134.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::smc_diag::{self, Mode, SmcSocket, SmcState};
use super::DiagError;
use envoy_smc_core::smc::sys::syscall;
use envoy_smc_core::smc::{self, SocketKind};

use envoy_smc_core::adaptive::detect::{self, TCP_SYN_SENT};

/// How a check runs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `AfSmc` or `IpprotoSmc` (a `Tcp` kind checks nothing SMC and is refused).
    pub kind: SocketKind,
    /// Source address to bind before connecting.
    pub source: Option<IpAddr>,
    /// Longest wait for each connect.
    pub timeout: Duration,
    /// When to look for a retransmitted SYN (after the 1 s initial RTO).
    pub syn_grace: Duration,
    /// Apply the per-socket fallback switch first (what a cluster kept on TCP gets).
    pub fallback_switch: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            kind: SocketKind::IpprotoSmc,
            source: None,
            timeout: Duration::from_secs(5),
            syn_grace: Duration::from_millis(1100),
            fallback_switch: false,
        }
    }
}

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Connected over SMC-R.
    SmcR,
    /// Connected over SMC-D.
    SmcD,
    /// Connected, the kernel fell back to TCP (see the reason).
    Fallback,
    /// The SMC connect's SYNs (with option 254) go unanswered while plain TCP connects.
    BlackHole,
    /// The SMC connect failed with an error while plain TCP connects.
    SmcFailed,
    /// Neither an SMC nor a TCP connect got through.
    Unreachable,
    /// This kernel cannot open SMC sockets of the requested kind.
    SmcUnavailable,
    /// Connected, but smc_diag could not say how.
    Undetermined,
}

/// One connect attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub ok: bool,
    pub millis: f64,
    pub error: Option<String>,
}

/// `TCP_INFO` of the SMC socket while it was connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SynState {
    pub tcp_state: u8,
    pub retransmits: u8,
    pub after_millis: u64,
}

/// The result of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub target: SocketAddr,
    pub kind: &'static str,
    pub fallback_switch: bool,
    pub verdict: Verdict,
    /// One sentence for people.
    pub summary: String,
    pub smc_connect: Option<Attempt>,
    pub tcp_connect: Option<Attempt>,
    pub syn_state: Option<SynState>,
    /// The socket as smc_diag saw it right after the connect.
    pub socket: Option<SmcSocket>,
    pub diag_error: Option<String>,
}

fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    socket2::SockRef::from(&fd).bind(&(*addr).into())
}

/// Starts a non-blocking connect: `Ok(true)` connected at once, `Ok(false)` in progress.
fn start_connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<bool> {
    match socket2::SockRef::from(&fd).connect(&(*addr).into()) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits up to `wait` for the connect to finish: `Some(Ok)` connected, `Some(Err)` failed,
/// `None` still in progress.
fn wait_connect(fd: BorrowedFd<'_>, wait: Duration) -> Option<io::Result<()>> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
    match syscall!(poll(&mut pfd, 1, ms)) {
        Ok(0) => None,
        Ok(_) => {
            match envoy_smc_core::smc::sys::getsockopt_int(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
            ) {
                Ok(0) => Some(Ok(())),
                Ok(e) => Some(Err(io::Error::from_raw_os_error(e))),
                Err(e) => Some(Err(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(e) => Some(Err(e)),
    }
}

/// The socket's inode (the key smc_diag reports for both flavours).
pub fn socket_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: stat is plain data, filled in by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    Ok(st.st_ino)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn open(kind: SocketKind, target: &SocketAddr, source: Option<IpAddr>) -> io::Result<OwnedFd> {
    let fd = smc::open_socket(
        kind,
        target.is_ipv6(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
    )?;
    if let Some(src) = source {
        bind(fd.as_fd(), &SocketAddr::new(src, 0))?;
    }
    Ok(fd)
}

/// A plain TCP connect, for comparison.
fn tcp_attempt(target: &SocketAddr, source: Option<IpAddr>, timeout: Duration) -> Attempt {
    let t0 = Instant::now();
    let res = (|| -> io::Result<()> {
        let fd = open(SocketKind::Tcp, target, source)?;
        if start_connect(fd.as_fd(), target)? {
            return Ok(());
        }
        match wait_connect(fd.as_fd(), timeout) {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:.1} s", timeout.as_secs_f64()),
            )),
        }
    })();
    Attempt {
        ok: res.is_ok(),
        millis: ms(t0.elapsed()),
        error: res.err().map(|e| e.to_string()),
    }
}

/// Looks the socket up in smc_diag, waiting (up to `wait`) for it to leave INIT: a socket still
/// in INIT reports mode SMCR without being SMC-R (SMC-VM.md).
fn settled_diag(inode: u64, wait: Duration) -> Result<Option<SmcSocket>, DiagError> {
    let t0 = Instant::now();
    loop {
        let s = smc_diag::find_by_inode(inode)?;
        let settled = match &s {
            Some(s) => s.state != SmcState::INIT || s.mode == Mode::Fallback,
            None => false,
        };
        if settled || t0.elapsed() >= wait {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one check against `target`.
pub fn check(target: SocketAddr, opts: &CheckOptions) -> CheckReport {
    let mut r = CheckReport {
        target,
        kind: opts.kind.name(),
        fallback_switch: opts.fallback_switch,
        verdict: Verdict::Undetermined,
        summary: String::new(),
        smc_connect: None,
        tcp_connect: None,
        syn_state: None,
        socket: None,
        diag_error: None,
    };
    let compare_timeout = opts.timeout.min(Duration::from_secs(3));

    if !opts.kind.is_smc() {
        r.verdict = Verdict::SmcUnavailable;
        r.summary = "a TCP socket kind checks nothing about SMC".into();
        return r;
    }
    let fd = match open(opts.kind, &target, opts.source) {
        Ok(fd) => fd,
        Err(e) => {
            let tcp = tcp_attempt(&target, opts.source, compare_timeout);
            let unsupported = matches!(
                e.raw_os_error(),
                Some(
                    libc::EAFNOSUPPORT
                        | libc::EPROTONOSUPPORT
                        | libc::ESOCKTNOSUPPORT
                        | libc::EINVAL
                )
            );
            r.verdict = if unsupported {
                Verdict::SmcUnavailable
            } else {
                Verdict::SmcFailed
            };
            r.summary = format!(
                "cannot open an {} socket ({e}){}; plain TCP connect: {}",
                opts.kind.name(),
                if unsupported {
                    ": this kernel has no SMC of that kind (smc module not loaded, or no CONFIG_SMC)"
                } else {
                    ""
                },
                if tcp.ok {
                    format!("ok in {:.1} ms", tcp.millis)
                } else {
                    format!("failed: {}", tcp.error.clone().unwrap_or_default())
                }
            );
            r.smc_connect = Some(Attempt {
                ok: false,
                millis: 0.0,
                error: Some(e.to_string()),
            });
            r.tcp_connect = Some(tcp);
            return r;
        }
    };
    if opts.fallback_switch {
        if let Err(e) = smc::apply_fallback_switch(fd.as_fd()) {
            r.verdict = Verdict::SmcFailed;
            r.summary = format!("the fallback switch failed: {e}");
            return r;
        }
    }

    let t0 = Instant::now();
    let mut outcome: Option<io::Result<()>> = match start_connect(fd.as_fd(), &target) {
        Ok(true) => Some(Ok(())),
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    };
    let mut stuck = false;
    while outcome.is_none() {
        let elapsed = t0.elapsed();
        if elapsed >= opts.timeout {
            break;
        }
        outcome = wait_connect(
            fd.as_fd(),
            Duration::from_millis(50).min(opts.timeout - elapsed),
        );
        if outcome.is_none() && t0.elapsed() >= opts.syn_grace {
            if let Ok((state, retrans)) = detect::tcp_info_state(fd.as_raw_fd()) {
                r.syn_state = Some(SynState {
                    tcp_state: state,
                    retransmits: retrans,
                    after_millis: t0.elapsed().as_millis() as u64,
                });
                // The same signature the adaptive-fallback watchdog acts on.
                if detect::syn_stalled(state, retrans, t0.elapsed(), opts.syn_grace) {
                    stuck = true;
                    break;
                }
            }
        }
    }
    let smc_elapsed = t0.elapsed();

    match outcome {
        Some(Ok(())) => {
            r.smc_connect = Some(Attempt {
                ok: true,
                millis: ms(smc_elapsed),
                error: None,
            });
            classify_connected(&mut r, fd.as_fd());
        }
        Some(Err(e)) => {
            r.smc_connect = Some(Attempt {
                ok: false,
                millis: ms(smc_elapsed),
                error: Some(e.to_string()),
            });
            let tcp = tcp_attempt(&target, opts.source, compare_timeout);
            if tcp.ok {
                r.verdict = Verdict::SmcFailed;
                r.summary = format!(
                    "the SMC connect failed ({e}) but a plain TCP connect succeeded in {:.1} ms",
                    tcp.millis
                );
            } else {
                r.verdict = Verdict::Unreachable;
                r.summary = format!(
                    "unreachable: SMC connect failed ({e}), TCP connect failed ({})",
                    tcp.error.clone().unwrap_or_default()
                );
            }
            r.tcp_connect = Some(tcp);
        }
        None => {
            // Still connecting: stuck with retransmitted SYNs, or simply slow.
            let tcp = tcp_attempt(&target, opts.source, compare_timeout);
            let still = detect::tcp_info_state(fd.as_raw_fd()).ok();
            if let Some((state, retrans)) = still {
                r.syn_state = Some(SynState {
                    tcp_state: state,
                    retransmits: retrans,
                    after_millis: t0.elapsed().as_millis() as u64,
                });
            }
            let syn_sent = matches!(still, Some((TCP_SYN_SENT, _)));
            r.smc_connect = Some(Attempt {
                ok: false,
                millis: ms(smc_elapsed),
                error: Some(format!(
                    "still connecting after {:.1} s{}",
                    smc_elapsed.as_secs_f64(),
                    match r.syn_state {
                        Some(s) if s.tcp_state == TCP_SYN_SENT =>
                            format!(" (SYN_SENT, {} SYN retransmission(s))", s.retransmits),
                        _ => String::new(),
                    }
                )),
            });
            if tcp.ok && syn_sent {
                r.verdict = Verdict::BlackHole;
                r.summary =
                    format!(
                    "black hole: SYNs carrying TCP option 254 (SMC) go unanswered{} while a plain \
                     TCP connect succeeded in {:.1} ms; a middlebox or the server drops them — \
                     keep this destination on TCP",
                    if stuck { " and are being retransmitted" } else { "" },
                    tcp.millis
                );
            } else if tcp.ok {
                r.verdict = Verdict::SmcFailed;
                r.summary = format!(
                    "the SMC connect did not finish within {:.1} s while a plain TCP connect \
                     succeeded in {:.1} ms",
                    smc_elapsed.as_secs_f64(),
                    tcp.millis
                );
            } else {
                r.verdict = Verdict::Unreachable;
                r.summary = format!(
                    "unreachable: neither an SMC nor a plain TCP connect got through ({})",
                    tcp.error.clone().unwrap_or_default()
                );
            }
            r.tcp_connect = Some(tcp);
        }
    }
    r
}

fn classify_connected(r: &mut CheckReport, fd: BorrowedFd<'_>) {
    let inode = match socket_inode(fd) {
        Ok(i) => i,
        Err(e) => {
            r.verdict = Verdict::Undetermined;
            r.diag_error = Some(e.to_string());
            r.summary = format!("connected, but the socket's inode is unreadable: {e}");
            return;
        }
    };
    match settled_diag(inode, Duration::from_secs(1)) {
        Ok(Some(s)) => {
            let connect_ms = r.smc_connect.as_ref().map(|a| a.millis).unwrap_or(0.0);
            match s.mode {
                Mode::SmcR => {
                    r.verdict = Verdict::SmcR;
                    r.summary = format!(
                        "SMC-R, state {}{} (connect {:.1} ms)",
                        s.state.name(),
                        s.link
                            .as_ref()
                            .map(|l| format!(", RDMA device {} port {}", l.ib_device, l.ib_port))
                            .unwrap_or_default(),
                        connect_ms
                    );
                }
                Mode::SmcD => {
                    r.verdict = Verdict::SmcD;
                    let devices = super::dibs::devices();
                    let device =
                        s.dmb
                            .as_ref()
                            .map(|d| match super::dibs::device_of(&devices, d) {
                                Some(dev) => format!(", device {}", dev.describe()),
                                None => format!(", device gid {:#x}", d.my_gid),
                            });
                    r.summary = format!(
                        "SMC-D, state {}{} (connect {connect_ms:.1} ms)",
                        s.state.name(),
                        device.unwrap_or_default()
                    );
                }
                Mode::Fallback => {
                    let f = s.fallback.unwrap_or(smc_diag::Fallback {
                        reason: super::DeclineCode::NONE,
                        peer_diagnosis: super::DeclineCode::NONE,
                    });
                    r.verdict = Verdict::Fallback;
                    r.summary = format!(
                        "TCP fallback: reason {} ({}){} (connect {connect_ms:.1} ms)",
                        f.reason,
                        f.reason.description(),
                        if f.peer_diagnosis.0 != 0 {
                            format!(
                                ", peer diagnosis {} ({})",
                                f.peer_diagnosis,
                                f.peer_diagnosis.description()
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                Mode::Unknown(m) => {
                    r.verdict = Verdict::Undetermined;
                    r.summary = format!("connected, smc_diag reports an unknown mode {m}");
                }
            }
            r.socket = Some(s);
        }
        Ok(None) => {
            r.verdict = Verdict::Undetermined;
            r.summary = "connected, but smc_diag does not list the socket".into();
        }
        Err(e) => {
            r.verdict = Verdict::Undetermined;
            r.summary = format!("connected, but how is unknown: {e}");
            r.diag_error = Some(e.to_string());
        }
    }
}
