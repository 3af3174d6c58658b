//! The hooks' work on tracked sockets. Every function here runs inside the re-entrancy guard and
//! a panic boundary (see `body` in lib.rs), and only ever prepares the fd for the real call the
//! hook makes afterwards.

use std::ffi::{c_int, c_void};
use std::os::fd::BorrowedFd;

use envoy_smc_core::runtime::{Applied, Watch};
use envoy_smc_core::smc::{SocketKind, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT};
use envoy_smc_core::Verdict;
use libc::{epoll_event, socklen_t};

use crate::real;
use crate::state::{self, inc, Active, COUNTERS};
use crate::table::{self, Held, Rescue, Tracked};
use crate::user_mem;

/// The inode of the socket under `fd`.
fn inode(fd: c_int) -> Option<u64> {
    // SAFETY: stat is plain old data; fstat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// After `socket()` returned `fd`: track it if SMC is still possible for it. Its inode is the
/// one system call envoy-smc adds to a socket it watches: a replacement later checks the fd
/// still holds this socket (the program may have closed the number behind the library's back,
/// with a raw system call, and opened something else under it).
pub fn opened(active: &Active, fd: c_int, domain: c_int, ty: c_int, protocol: c_int) {
    match active.runtime.on_socket(domain, ty, protocol, None) {
        Ok(watched) => match inode(fd) {
            Some(ino) => table::track(fd, Tracked::new(ino, watched)),
            None => table::forget(fd),
        },
        Err(_) if !table::quiet(fd) => table::forget(fd),
        Err(_) => {}
    }
}

/// After a successful `setsockopt` on a tracked fd (its slot `held` since before the call): the
/// option is recorded for a replacement. One that cannot be recorded (no value, longer than a
/// record holds, too many) or that holds a pointer or an fd means the socket must stay as it is:
/// no replacement, no rescue.
pub fn sockopt_set(
    held: &mut Held,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) {
    let Some(active) = state::active_if_set_up() else {
        return;
    };
    let Some(t) = held.tracked() else {
        return;
    };
    let bytes = (!value.is_null()).then(|| {
        // SAFETY: setsockopt just read `len` bytes at `value` successfully.
        unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) }
    });
    active
        .runtime
        .on_sockopt(&mut t.watched, level, name, bytes);
}

/// After a successful `bind` of a tracked fd: the address, for a replacement.
pub fn bound(fd: c_int, addr: *const libc::sockaddr, len: socklen_t) {
    let Some(mut held) = table::hold(fd) else {
        return;
    };
    let Some(t) = held.tracked() else {
        return;
    };
    match user_mem::read_sockaddr(addr, len) {
        Ok(Some(a)) => t.watched.record.bound = Some(a),
        // The kernel took it, yet it is not an IP address or not readable now: a replacement
        // could not bind the same way.
        _ => t.watched.record.mark_not_carried(),
    }
}

/// After the program changed a tracked fd's `O_NONBLOCK` (`Some` in `nonblock`) or
/// `FD_CLOEXEC` (`Some` in `cloexec`) successfully: recorded for a replacement.
pub fn flags_set(fd: c_int, nonblock: Option<bool>, cloexec: Option<bool>) {
    let Some(mut held) = table::hold(fd) else {
        return;
    };
    let Some(t) = held.tracked() else {
        return;
    };
    if let Some(on) = nonblock {
        t.watched.record.nonblock = on;
    }
    if let Some(on) = cloexec {
        t.watched.record.cloexec = on;
    }
}

/// After a successful `epoll_ctl` naming a tracked fd (its slot `held` since before the call).
pub fn epoll_registered(held: &mut Held, epfd: c_int, op: c_int, event: *mut epoll_event) {
    let (events, data) = if event.is_null() {
        (0, 0)
    } else {
        // SAFETY: epoll_ctl just read the event successfully; epoll_event may be packed, so read
        // it unaligned.
        let ev = unsafe { std::ptr::read_unaligned(event) };
        (ev.events, ev.u64)
    };
    let Some(t) = held.tracked() else {
        return;
    };
    if op == libc::EPOLL_CTL_DEL {
        t.record_epoll(op, epfd, 0, 0, 0);
        return;
    }
    let Some(gen) = table::mark_epoll(epfd) else {
        return;
    };
    t.record_epoll(op, epfd, gen, events, data);
}

/// Before `listen()` on a tracked fd: the listener decision.
pub fn before_listen(fd: c_int) {
    let Some(active) = state::active_if_set_up() else {
        table::forget(fd);
        return;
    };
    table::settle(fd, |t| {
        decide_listener(active, fd, t, "listen");
        None
    });
}

/// Before a tracked fd is duplicated: the one rule of `Runtime::on_dup` (a bound socket gets its
/// listener decision now; any other stays TCP, undecided).
pub fn before_dup(fd: c_int) {
    let Some(active) = state::active_if_set_up() else {
        table::forget(fd);
        return;
    };
    // A duplicate would keep the old socket of a rescued connect: no rescue for this one.
    table::release_rescuable(fd, None);
    table::settle(fd, |mut t| {
        inc(&COUNTERS.dup_settled);
        if inode(fd) != Some(t.ino) {
            inc(&COUNTERS.stale_fd);
            return None;
        }
        // SAFETY: fd is open (checked just above) and only borrowed during this call.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        match active.runtime.on_dup(bfd, &mut t.watched) {
            Some(applied) => {
                let local = t.watched.record.bound;
                after_decision(fd, &t, applied, "dup", local);
            }
            None => tracing::debug!("envoy-smc: fd {fd} duplicated before bind/connect: stays TCP"),
        }
        None
    });
}

/// After `bind()` of a tracked fd failed with `EADDRINUSE`: a listener update's new socket on
/// the address of a shared `AF_SMC` listener takes that listener over (see
/// `Runtime::join_shared_listener`). Returns true when the bind is to be reported as done.
pub fn bind_in_use(fd: c_int, addr: *const libc::sockaddr, len: socklen_t) -> bool {
    let Some(active) = state::active_if_set_up() else {
        return false;
    };
    // The kernel read the address already (EADDRINUSE), but it is the program's memory: copy it
    // the same careful way as connect()'s.
    let Ok(Some(local)) = user_mem::read_sockaddr(addr, len) else {
        return false;
    };
    let mut joined = false;
    table::settle(fd, |mut t| {
        if inode(fd) != Some(t.ino) {
            inc(&COUNTERS.stale_fd);
            return None;
        }
        // SAFETY: fd is open (checked just above) and only borrowed during this call.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        joined = active
            .runtime
            .join_shared_listener(bfd, local, &mut t.watched);
        // Not joined: still the program's unbound socket, which stays TCP (decided now).
        None
    });
    joined
}

/// After `setsockopt(SO_REUSEPORT)` failed: true for an `AF_SMC` socket that is listening already
/// -- a listener shared by its fds, which is what SO_REUSEPORT asked for (every worker accepts).
/// Envoy sets the option again on the listen sockets a hot-restart parent passes to it (they
/// never went through `socket()` here); failing it would stop the new Envoy.
pub fn reuse_port_on_shared_listener(fd: c_int) -> bool {
    if state::active_if_set_up().is_none() {
        return false;
    }
    // SAFETY: fd is the caller's open fd, only borrowed during this call.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let smc = matches!(
        envoy_smc_core::smc::socket_kind(bfd),
        Ok(Some((SocketKind::AfSmc, _)))
    );
    let mut listening: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: listening/len are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut c_int).cast(),
            &mut len,
        )
    };
    let shared = smc && rc == 0 && listening != 0;
    if shared {
        tracing::debug!(
            "envoy-smc: fd {fd}: SO_REUSEPORT on a shared AF_SMC listener: already shared"
        );
    }
    shared
}

fn decide_listener(active: &Active, fd: c_int, mut t: Tracked, at: &str) {
    if inode(fd) != Some(t.ino) {
        inc(&COUNTERS.stale_fd);
        return;
    }
    // SAFETY: fd is open (checked just above) and only borrowed during this call.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let applied = active.runtime.on_listen(bfd, &mut t.watched);
    let local = t.watched.record.bound;
    after_decision(fd, &t, applied, at, local);
}

/// Before `connect()` on a tracked fd: the client decision, in one runtime call. A TCP verdict
/// costs no system call: the socket stays the plain TCP socket the program opened. Only before a
/// replacement does the library check that the fd still holds that socket, and that this is not
/// a vfork child (whose fd table is its own: a replacement there would leave the parent's fd on
/// the old socket). An address the program passed that is not readable decides nothing (the
/// real call answers `EFAULT`; the socket stays tracked).
pub fn before_connect(fd: c_int, addr: *const libc::sockaddr, len: socklen_t) {
    let Some(active) = state::active_if_set_up() else {
        table::forget(fd);
        return;
    };
    let Ok(remote) = user_mem::read_sockaddr(addr, len) else {
        return;
    };
    table::settle(fd, |mut t| {
        // AF_UNSPEC (dissolve) or a bad address: the real call answers; stays TCP.
        let remote = remote?;
        // SAFETY: only borrowed during this call; used only once `still_ours` proved it is open
        // and the tracked socket.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let ino = t.ino;
        let still_ours = || {
            let ours = crate::own_memory() && inode(fd) == Some(ino);
            if !ours {
                inc(&COUNTERS.stale_fd);
            }
            ours
        };
        // Adaptive fallback: the watchdog watches SMC connects for paths that drop SMC's SYNs
        // and hands a stuck one back to `rescue::PreloadRescuer`, which needs the options and
        // epoll registrations recorded so far (and those made until then).
        let connected = active.runtime.on_connect(
            bfd,
            &mut t.watched,
            remote,
            Watch::Rescuable(0),
            still_ours,
        )?;
        if !after_decision(fd, &t, connected.applied, "connect", Some(remote)) {
            return None;
        }
        let cookie = connected.cookie?;
        let source = t.watched.record.bound.filter(|a| !a.ip().is_unspecified());
        t.rescue = Some(Rescue { cookie, source });
        Some(t)
    });
}

/// Logs a decision and, when the socket was replaced, carries options and epoll registrations
/// over to the new socket (turning it back into TCP if a registration cannot be carried over).
/// Returns whether an SMC socket is under `fd` now.
fn after_decision(
    fd: c_int,
    t: &Tracked,
    applied: Applied,
    at: &str,
    addr: Option<std::net::SocketAddr>,
) -> bool {
    let addr = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    match applied.verdict {
        Verdict::Smc { kind, .. } => tracing::debug!(
            "envoy-smc: fd {fd} {at} {addr}: SMC ({}){}",
            kind.name(),
            if applied.replaced {
                ", socket replaced"
            } else {
                ""
            }
        ),
        Verdict::Tcp(reason) => {
            tracing::debug!("envoy-smc: fd {fd} {at} {addr}: TCP ({})", reason.name())
        }
    }
    if !applied.replaced {
        return false;
    }
    if applied.shared {
        // A listener configured and listening already, shared with other fds.
        return true;
    }
    let kind = match applied.verdict {
        Verdict::Smc { kind, .. } => kind,
        Verdict::Tcp(_) => SocketKind::Tcp,
    };
    if let Err(e) = reregister(fd, t) {
        inc(&COUNTERS.epoll_reregister_failed);
        tracing::warn!(
            "envoy-smc: fd {fd}: cannot carry its epoll registration over to the new socket ({e}); \
             turning it back into TCP"
        );
        // SAFETY: fd is open and only borrowed during this call.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut back = t.watched.record.clone();
        if kind.is_smc() && back.replace(bfd, SocketKind::Tcp, &[]).is_ok() {
            if let Err(e) = reregister(fd, t) {
                tracing::error!("envoy-smc: fd {fd}: epoll registration lost: {e}");
            }
            return false;
        }
    }
    kind.is_smc()
}

/// Sets the options the program set on the old socket again on `fd`, the TCP socket a rescue
/// moves a stuck connect to. Fast-open options are never replayed on an SMC socket: any of them
/// is the kernel's fallback switch there.
pub(crate) fn replay_options(fd: c_int, t: &Tracked, kind: SocketKind) {
    for o in t.watched.record.options() {
        let fast_open = o.level == libc::IPPROTO_TCP
            && (o.name == TCP_FASTOPEN || o.name == TCP_FASTOPEN_CONNECT);
        if kind.is_smc() && fast_open {
            continue;
        }
        // AF_SMC refuses it; a listener that had it is shared by its fds instead.
        let reuse_port = o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEPORT;
        if kind == SocketKind::AfSmc && reuse_port {
            continue;
        }
        let bytes = o.bytes();
        // SAFETY: `bytes` is a valid buffer of the given length.
        let rc = unsafe {
            real::setsockopt()(
                fd,
                o.level,
                o.name,
                bytes.as_ptr().cast(),
                bytes.len() as socklen_t,
            )
        };
        if rc != 0 {
            inc(&COUNTERS.option_replay_failed);
            tracing::debug!(
                "envoy-smc: fd {fd}: option ({}, {}) not accepted by the new socket: {}",
                o.level,
                o.name,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Adds the new socket under `fd` to every epoll instance the old one was registered with (each
/// epoll fd held meanwhile, so the program cannot close it and reuse its number under us).
pub(crate) fn reregister(fd: c_int, t: &Tracked) -> std::io::Result<()> {
    let mut result = Ok(());
    for reg in &t.regs {
        let mut ev = epoll_event {
            events: reg.events,
            u64: reg.data,
        };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        let added = table::with_live_epoll(reg, || unsafe {
            real::epoll_ctl()(reg.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev)
        });
        let Some(rc) = added else {
            continue; // the epoll instance is gone
        };
        if rc == 0 {
            inc(&COUNTERS.epoll_reregistered);
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                result = Err(e);
            }
        }
    }
    result
}
