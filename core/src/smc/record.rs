//! What an entry point saw the application do to a socket since `socket()`, and the replacement
//! built from it.
//!
//! Every entry point sees each call the application makes on a socket it watches: the flags it
//! opened it with (or set later), the options it set, the address it bound. That record is all a
//! replacement socket needs, so replacing costs `socket()`, one `setsockopt` per recorded option,
//! a `bind` if the application bound one, `dup3` and `close` -- nothing is read back from the old
//! socket. An option the new socket refuses fails the replacement before the switch-over (the
//! fd keeps its socket, counted as `tcp.options_not_carried`): nothing the application set is
//! ever lost.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::socket::{open_socket, SocketKind};
use super::sys::{syscall, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT};

/// Options recorded per socket, at most: a socket with more can no longer be replaced.
pub const MAX_OPTS: usize = 16;
/// Longest option value recorded: a socket with a longer one can no longer be replaced.
pub const MAX_OPT_LEN: usize = 64;

/// A socket option the application set (its latest value), as it passed it to `setsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedOpt {
    pub level: libc::c_int,
    pub name: libc::c_int,
    len: u8,
    value: [u8; MAX_OPT_LEN],
}

impl RecordedOpt {
    /// `None` when `value` is longer than [`MAX_OPT_LEN`].
    pub fn new(level: libc::c_int, name: libc::c_int, value: &[u8]) -> Option<RecordedOpt> {
        let len = u8::try_from(value.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_OPT_LEN)?;
        let mut rec = RecordedOpt {
            level,
            name,
            len,
            value: [0; MAX_OPT_LEN],
        };
        rec.value[..value.len()].copy_from_slice(value);
        Some(rec)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.value[..usize::from(self.len)]
    }

    fn is(&self, level: libc::c_int, name: libc::c_int) -> bool {
        self.level == level && self.name == name
    }

    /// A fast-open option: on an SMC socket any of them is the kernel's fallback switch.
    fn is_fast_open(&self) -> bool {
        self.level == libc::IPPROTO_TCP
            && (self.name == TCP_FASTOPEN || self.name == TCP_FASTOPEN_CONNECT)
    }
}

/// What the application did to a socket envoy-smc may still replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    /// The kind of socket under the fd now (TCP first: a plain TCP socket until a verdict).
    pub kind: SocketKind,
    pub ipv6: bool,
    /// `O_NONBLOCK` on the open file (`SOCK_NONBLOCK`, `F_SETFL`, `FIONBIO`).
    pub nonblock: bool,
    /// `FD_CLOEXEC` on the fd (`SOCK_CLOEXEC`, `F_SETFD`, `FIOCLEX`).
    pub cloexec: bool,
    /// The address the application bound (its port may be 0: the kernel chose one).
    pub bound: Option<SocketAddr>,
    opts: Vec<RecordedOpt>,
    /// An option could not be recorded (too many, too long, no value): a replacement could not
    /// carry every option, so the socket stays as it is.
    overflow: bool,
}

impl SocketRecord {
    /// The record of a socket just opened by `socket(domain, ty, _)` (a plain TCP socket).
    pub fn opened(domain: libc::c_int, ty: libc::c_int) -> SocketRecord {
        SocketRecord {
            kind: SocketKind::Tcp,
            ipv6: domain == libc::AF_INET6,
            nonblock: ty & libc::SOCK_NONBLOCK != 0,
            cloexec: ty & libc::SOCK_CLOEXEC != 0,
            bound: None,
            opts: Vec::new(),
            overflow: false,
        }
    }

    /// Records an option the application set successfully (the latest value of each level/name
    /// wins). One that cannot be recorded marks the record as not carryable.
    pub fn record_opt(&mut self, level: libc::c_int, name: libc::c_int, value: &[u8]) {
        let Some(rec) = RecordedOpt::new(level, name, value) else {
            self.overflow = true;
            return;
        };
        if let Some(old) = self.opts.iter_mut().find(|o| o.is(level, name)) {
            *old = rec;
        } else if self.opts.len() < MAX_OPTS {
            self.opts.push(rec);
        } else {
            self.overflow = true;
        }
    }

    /// An option the entry point saw set but could not read (no value pointer, an unreadable
    /// length): the socket can no longer be replaced.
    pub fn mark_not_carried(&mut self) {
        self.overflow = true;
    }

    /// Whether every option set so far can be given to a replacement socket.
    pub fn options_carried(&self) -> bool {
        !self.overflow
    }

    pub fn options(&self) -> &[RecordedOpt] {
        &self.opts
    }

    /// Opens a socket of `kind` carrying the recorded flags and options, except those in
    /// `left_out` (level, name). Fast-open options never go on an SMC socket (any of them is
    /// the fallback switch there; the policy keeps a socket with one set to non-zero on TCP).
    fn build(
        &self,
        kind: SocketKind,
        left_out: &[(libc::c_int, libc::c_int)],
    ) -> io::Result<OwnedFd> {
        let flags = if self.nonblock {
            libc::SOCK_NONBLOCK
        } else {
            0
        } | libc::SOCK_CLOEXEC;
        let new = open_socket(kind, self.ipv6, flags)?;
        for o in &self.opts {
            if (kind.is_smc() && o.is_fast_open()) || left_out.iter().any(|&(l, n)| o.is(l, n)) {
                continue;
            }
            let bytes = o.bytes();
            syscall!(setsockopt(
                new.as_raw_fd(),
                o.level,
                o.name,
                bytes.as_ptr().cast(),
                bytes.len() as libc::socklen_t
            ))
            .map_err(|e| NotCarried::error(o, e))?;
        }
        Ok(new)
    }

    /// Replaces the socket under `fd` (which must be the socket this record describes, neither
    /// connected nor listening) with a socket of `to` carrying the record, under the same fd
    /// number, and updates `kind`. Options in `left_out` stay off the new socket.
    ///
    /// Errors: before the switch-over the old socket is untouched (an option the new socket
    /// refuses is a [`NotCarried`] error); if binding the new socket again fails, a socket of
    /// the old kind carrying the record is put back and the bind error returned.
    pub fn replace(
        &mut self,
        fd: BorrowedFd<'_>,
        to: SocketKind,
        left_out: &[(libc::c_int, libc::c_int)],
    ) -> io::Result<()> {
        if self.kind == to {
            return Ok(());
        }
        let raw = fd.as_raw_fd();
        // A port the kernel chose (bind to port 0) is read back once: the new socket takes the
        // same one, which the program may have asked for with getsockname already.
        let bound = match self.bound {
            Some(a) if a.port() == 0 => Some(crate::runtime::local_address(fd)?),
            other => other,
        };
        let new = self.build(to, left_out)?;
        match install(new, raw, self.cloexec, bound) {
            Ok(()) => {
                self.kind = to;
                Ok(())
            }
            Err(err) => {
                let back = self.build(self.kind, &[])?;
                install(back, raw, self.cloexec, bound)?;
                Err(err)
            }
        }
    }
}

/// Puts `new` under `fd` (dup3 closes the old socket) and binds it where the old one was.
fn install(
    new: OwnedFd,
    fd: libc::c_int,
    cloexec: bool,
    bound: Option<SocketAddr>,
) -> io::Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    syscall!(dup3(new.as_raw_fd(), fd, flags))?;
    drop(new);
    if let Some(addr) = bound {
        let sa = socket2::SockAddr::from(addr);
        syscall!(bind(fd, sa.as_ptr().cast(), sa.len()))?;
    }
    Ok(())
}

/// The error of an option the replacement socket refused: the replacement did not happen.
#[derive(Debug)]
pub struct NotCarried {
    pub level: libc::c_int,
    pub name: libc::c_int,
    pub source: io::Error,
}

impl NotCarried {
    fn error(o: &RecordedOpt, source: io::Error) -> io::Error {
        io::Error::new(
            source.kind(),
            NotCarried {
                level: o.level,
                name: o.name,
                source,
            },
        )
    }

    /// Whether `e` is an option the replacement socket refused.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<NotCarried>())
    }
}

impl std::fmt::Display for NotCarried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "setsockopt({}, {}) on the new socket: {}",
            self.level, self.name, self.source
        )
    }
}

impl std::error::Error for NotCarried {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_the_latest_value_and_an_overflow_stops_replacement() {
        let mut r = SocketRecord::opened(libc::AF_INET, libc::SOCK_STREAM);
        r.record_opt(1, 2, &1i32.to_ne_bytes());
        r.record_opt(1, 2, &0i32.to_ne_bytes());
        assert_eq!(r.options().len(), 1);
        assert_eq!(r.options()[0].bytes(), &0i32.to_ne_bytes());
        assert!(r.options_carried());
        for n in 0..40 {
            r.record_opt(9, n, &[1]);
        }
        assert_eq!(r.options().len(), MAX_OPTS);
        assert!(!r.options_carried(), "the 17th option cannot be carried");
        let mut long = SocketRecord::opened(libc::AF_INET, libc::SOCK_STREAM);
        long.record_opt(6, 14, &[0; MAX_OPT_LEN + 1]);
        assert!(!long.options_carried(), "TCP_MD5SIG is longer than a slot");
    }

    #[test]
    fn flags_come_from_the_socket_type() {
        let r = SocketRecord::opened(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        );
        assert!(r.ipv6 && r.nonblock && r.cloexec && r.kind == SocketKind::Tcp);
        let r = SocketRecord::opened(libc::AF_INET, libc::SOCK_STREAM);
        assert!(!r.ipv6 && !r.nonblock && !r.cloexec);
    }
}
