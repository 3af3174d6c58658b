//! Rescuing an SMC connect stuck behind a black hole, under the same fd (adaptive fallback).
//!
//! Runs on the core's watchdog thread once a destination is proven to drop SMC's SYNs. The slot
//! lock of the fd is held throughout, so the program's `close()` of the fd waits; the socket
//! cookie proves the fd is still the watched socket. The new TCP socket gets the options the
//! program set, is connecting before it replaces the old one, and is added to every epoll
//! instance the old one was in with the same events and data: the program's event loop sees the
//! connect complete (EPOLLOUT, `SO_ERROR` 0) as if the first socket had made it. What it cannot
//! hide: the local port differs from what `getsockname()` said before.

use std::os::fd::BorrowedFd;

use envoy_smc::adaptive::{detect::socket_cookie, RescueOutcome, Rescuer, WatchedConnect};
use envoy_smc::smc::{reconnect_tcp, SocketKind};

use crate::hooks::{replay_options, reregister};
use crate::state::{inc, COUNTERS};
use crate::{table, Reentry};

pub struct PreloadRescuer;

impl Rescuer for PreloadRescuer {
    fn rescue(&self, c: &WatchedConnect) -> RescueOutcome {
        let Some(_guard) = Reentry::enter() else {
            return RescueOutcome::Failed;
        };
        let moved =
            std::panic::catch_unwind(|| table::take_rescuable(c.fd, c.cookie, |t| rescue(c, &t)))
                .ok()
                .flatten()
                .unwrap_or(false);
        if moved {
            RescueOutcome::Moved
        } else {
            RescueOutcome::Failed
        }
    }

    fn release(&self, c: &WatchedConnect) {
        if let Some(_guard) = Reentry::enter() {
            let _ = std::panic::catch_unwind(|| table::release_rescuable(c.fd, Some(c.cookie)));
        }
    }
}

fn rescue(c: &WatchedConnect, t: &table::Tracked) -> bool {
    let Some(kept) = t.rescue else {
        return false;
    };
    if socket_cookie(c.fd) != Some(c.cookie) {
        return false;
    }
    // SAFETY: the cookie check above proves fd is the open, watched socket; the slot lock we
    // hold keeps the program's close() of it waiting until we are done.
    let fd = unsafe { BorrowedFd::borrow_raw(c.fd) };
    if let Err(e) = reconnect_tcp(fd, c.dest, kept.source, |new| {
        replay_options(new, t, SocketKind::Tcp)
    }) {
        tracing::warn!(
            "envoy-smc: fd {}: cannot move the stuck connect to {} to TCP ({e}); it ends at the \
             program's connect timeout",
            c.fd,
            c.dest
        );
        return false;
    }
    if let Err(e) = reregister(c.fd, t) {
        inc(&COUNTERS.epoll_reregister_failed);
        tracing::warn!(
            "envoy-smc: fd {}: TCP connect to {} made, but its epoll registration was not \
             carried over ({e}); it ends at the program's connect timeout",
            c.fd,
            c.dest
        );
    }
    true
}
