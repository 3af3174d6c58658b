//! Rescuing an SMC connect stuck behind a black hole, under the same fd (adaptive fallback).
//!
//! Runs on the core's watchdog thread once a destination is proven to drop SMC's SYNs. The fd's
//! slot is held for the whole rescue (`table::rescue_with`), so the program's `close()`/`dup2()`
//! of the fd wait until it is done, and so do its `setsockopt()`/`epoll_ctl()` on the fd (they
//! then act on the new socket); the socket cookie proves the fd is still the watched socket. A
//! socket whose options cannot all be carried over is not rescued. The new TCP socket gets the options the
//! program set, is connecting before it replaces the old one, and is added to every epoll
//! instance the old one was in with the same events and data: the program's event loop sees the
//! connect complete (EPOLLOUT, `SO_ERROR` 0) as if the first socket had made it. What it cannot
//! hide: the local port differs from what `getsockname()` said before.

use std::os::fd::BorrowedFd;

use envoy_smc_core::adaptive::{detect::socket_cookie, RescueOutcome, Rescuer, WatchedConnect};
use envoy_smc_core::smc::{reconnect_tcp, SocketKind};

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
            std::panic::catch_unwind(|| table::rescue_with(c.fd, c.cookie, |t| rescue(c, t)))
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
    if !t.options_carried() {
        inc(&COUNTERS.rescue_options_not_carried);
        tracing::warn!(
            "envoy-smc: fd {}: the stuck connect to {} carries options a new socket cannot be \
             given; it is not moved and ends at the program's connect timeout",
            c.fd,
            c.dest
        );
        return false;
    }
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

#[cfg(test)]
mod race_tests {
    //! The program closes the fd of a connect being rescued and opens something else, which
    //! gets the same number: the rescue must never land on the new file.

    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    use envoy_smc_core::adaptive::detect::socket_cookie;
    use envoy_smc_core::adaptive::{Rescuer, WatchedConnect};

    use super::PreloadRescuer;
    use crate::table::{self, Rescue, Tracked};

    fn nonblocking_connect(to: SocketAddr) -> libc::c_int {
        // SAFETY: plain socket/connect calls on an fd owned by the caller.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0);
            let sa = socket2::SockAddr::from(to);
            let rc = libc::connect(fd, sa.as_ptr().cast(), sa.len());
            assert!(rc == 0 || *libc::__errno_location() == libc::EINPROGRESS);
            fd
        }
    }

    fn mode(fd: libc::c_int) -> libc::mode_t {
        // SAFETY: plain old data filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        st.st_mode & libc::S_IFMT
    }

    /// Two threads meet here and leave together (both spin, so they leave within a few
    /// hundred nanoseconds of each other).
    struct SpinBarrier(std::sync::atomic::AtomicU64);

    impl SpinBarrier {
        fn wait(&self, round: u64) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let mut spins = 0u32;
            while self.0.load(std::sync::atomic::Ordering::Acquire) < 2 * round {
                spins += 1;
                if spins % 1024 == 0 {
                    std::thread::yield_now(); // the other thread may not be on a CPU
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// 1,000 runs, each lining up (a spin barrier) a rescue on the watchdog's side with the
    /// program's `close(fd); open("/dev/null")` on its side, the program starting 0–63 µs later
    /// (the run number decides) so that its close sweeps the whole rescue. A stalled connect (a
    /// full accept queue drops its SYNs) stands in for the SMC connect stuck behind a black
    /// hole; the rescue moves it to a working listener. Counted: runs where the freshly opened
    /// /dev/null fd ended up as a socket (before the fix: 3–36 of every 400–1,000 runs).
    #[test]
    fn a_rescue_never_lands_on_a_reused_fd() {
        let full = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on an open socket: backlog 0 queues one connection, then drops SYNs.
        assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
        let _filler = TcpStream::connect(full.local_addr().unwrap()).unwrap();
        let working = TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = working.local_addr().unwrap();
        working.set_nonblocking(true).unwrap();
        const RUNS: u64 = 1000;
        let barrier = Arc::new(SpinBarrier(std::sync::atomic::AtomicU64::new(0)));
        let (to_watchdog, jobs) = std::sync::mpsc::channel::<WatchedConnect>();
        let (outcomes, from_watchdog) = std::sync::mpsc::channel();
        let b = Arc::clone(&barrier);
        let watchdog = std::thread::spawn(move || {
            for (round, c) in jobs.iter().enumerate() {
                b.wait(round as u64 + 1);
                outcomes.send(PreloadRescuer.rescue(&c)).unwrap();
            }
        });
        let (mut hits, mut rescued) = (0, 0);
        for run in 0..RUNS {
            let fd = nonblocking_connect(full.local_addr().unwrap());
            let cookie = socket_cookie(fd).unwrap();
            // SAFETY: plain old data filled by fstat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: valid out-pointer.
            unsafe { libc::fstat(fd, &mut st) };
            table::track(fd, Tracked::new(st.st_ino, table::test_watched()));
            table::settle(fd, |mut t| {
                t.rescue = Some(Rescue {
                    cookie,
                    source: None,
                });
                Some(t)
            });
            to_watchdog
                .send(WatchedConnect {
                    fd,
                    cookie,
                    dest,
                    token: 0,
                })
                .unwrap();
            barrier.wait(run + 1);
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_micros(run % 64) {
                std::hint::spin_loop();
            }
            // SAFETY: the program's own calls: close its fd (through the library's hook) and
            // open another file, which takes the lowest free number.
            let null = unsafe {
                crate::close(fd);
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
            };
            if from_watchdog.recv().unwrap() == envoy_smc_core::adaptive::RescueOutcome::Moved {
                rescued += 1;
            }
            if mode(null) != libc::S_IFCHR {
                hits += 1;
            }
            // SAFETY: closing the file this run opened.
            unsafe { crate::close(null) };
            while working.accept().is_ok() {}
        }
        drop(to_watchdog);
        watchdog.join().unwrap();
        eprintln!("{RUNS} runs: {rescued} rescued, {hits} hits");
        assert_eq!(
            hits, 0,
            "a rescue replaced a reused fd in {hits} of {RUNS} runs"
        );
        assert!(
            rescued > 0 && rescued < RUNS,
            "the close never overlapped the rescue ({rescued} of {RUNS} rescued)"
        );
    }
}
