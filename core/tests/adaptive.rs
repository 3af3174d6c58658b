//! Adaptive fallback: the breaker's state machine, its behaviour under many threads, and the
//! watchdog on real sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_smc_core::adaptive::detect::socket_cookie;
use envoy_smc_core::adaptive::publish;
use envoy_smc_core::adaptive::{Admission, Breaker, Phase, RescueOutcome, Rescuer, WatchedConnect};
use envoy_smc_core::config::{self, AdaptiveSettings};
use envoy_smc_core::policy::{Environment, TcpReason, Verdict};
use envoy_smc_core::smc::{reconnect_tcp, KernelSupport};
use envoy_smc_core::stats::Counter;
use envoy_smc_core::Runtime;

mod common;
use common::{wait_for, wait_until};

fn settings(hold: u32, max_hold: u32, max_destinations: u32) -> AdaptiveSettings {
    AdaptiveSettings {
        enabled: true,
        detect_after_ms: 1000,
        probe_timeout_ms: 1000,
        hold_down_ms: hold,
        max_hold_down_ms: max_hold,
        max_destinations,
    }
}

fn dest(i: u32) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

#[test]
fn trip_holds_then_one_probe_then_recovery() {
    let b = Breaker::new(settings(1000, 8000, 64));
    let d = dest(1);
    assert_eq!(b.admit(d, 0), Admission::Smc);
    assert_eq!(b.trip(d, 0), Duration::from_millis(1000));
    assert_eq!(b.held(), 1);
    assert_eq!(b.admit(d, 10), Admission::Hold);
    assert_eq!(b.admit(d, 999), Admission::Hold);
    // Other destinations are not affected.
    assert_eq!(b.admit(dest(2), 10), Admission::Smc);
    // After the hold-down: exactly one probe, the others keep TCP.
    assert_eq!(b.admit(d, 1000), Admission::Probe);
    assert_eq!(b.admit(d, 1001), Admission::Hold);
    assert_eq!(b.admit(d, 1002), Admission::Hold);
    // The probe connected over SMC: recovered.
    assert!(b.recovered(d, 1100));
    assert_eq!(b.held(), 0);
    assert_eq!(b.admit(d, 1101), Admission::Smc);
    assert!(!b.recovered(d, 1200), "recovering twice does nothing");
    let e = b.entries();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].destination, e[0].phase, e[0].strikes),
        (d, Phase::Closed, 1)
    );
}

#[test]
fn hold_down_grows_on_repeat_offences_up_to_the_cap_and_resets_after_a_clean_period() {
    let b = Breaker::new(settings(1000, 5000, 64));
    let d = dest(7);
    assert_eq!(b.trip(d, 0), Duration::from_millis(1000));
    assert_eq!(b.admit(d, 1000), Admission::Probe);
    // The probe hit the black hole again.
    assert_eq!(b.trip(d, 2000), Duration::from_millis(2000));
    assert_eq!(b.admit(d, 3999), Admission::Hold);
    assert_eq!(b.admit(d, 4000), Admission::Probe);
    assert_eq!(b.trip(d, 4000), Duration::from_millis(4000));
    assert_eq!(b.admit(d, 8000), Admission::Probe);
    assert_eq!(
        b.trip(d, 8000),
        Duration::from_millis(5000),
        "capped at max_hold_down"
    );
    assert_eq!(b.admit(d, 13_000), Admission::Probe);
    assert!(b.recovered(d, 13_000));
    // Clean for longer than the longest hold-down: a new offence starts over.
    assert_eq!(b.trip(d, 13_000 + 5001), Duration::from_millis(1000));
    assert_eq!(b.held(), 1);
}

#[test]
fn connects_that_stall_in_one_episode_are_one_offence() {
    let b = Breaker::new(settings(1000, 8000, 64));
    let d = dest(11);
    assert_eq!(b.trip(d, 0), Duration::from_millis(1000));
    // Other connects opened before the trip stall and are proven too: no new strike.
    assert_eq!(b.trip(d, 300), Duration::from_millis(700));
    assert_eq!(b.trip(d, 900), Duration::from_millis(100));
    assert_eq!(b.entries()[0].strikes, 1);
    assert_eq!(b.held(), 1);
    assert_eq!(b.admit(d, 1000), Admission::Probe);
    // The probe itself stalls: that is a repeat offence.
    assert_eq!(b.trip(d, 1500), Duration::from_millis(2000));
    assert_eq!(b.entries()[0].strikes, 2);
}

#[test]
fn every_state_change_is_counted_for_the_publisher() {
    let b = Breaker::new(settings(1000, 8000, 64));
    let d = dest(12);
    let c0 = b.changes();
    b.trip(d, 0);
    let c1 = b.changes();
    assert!(c1 > c0);
    assert_eq!(b.admit(d, 10), Admission::Hold);
    assert_eq!(b.changes(), c1, "a held connect changes nothing");
    assert_eq!(b.admit(d, 1000), Admission::Probe);
    let c2 = b.changes();
    assert!(c2 > c1);
    assert!(b.recovered(d, 1100));
    assert!(b.changes() > c2);
}

#[test]
fn a_probe_that_never_reports_expires_and_another_may_probe() {
    let b = Breaker::new(settings(1000, 8000, 64));
    let d = dest(3);
    b.trip(d, 0);
    assert_eq!(b.admit(d, 1000), Admission::Probe);
    // The probe window is 4 × (detect_after + probe_timeout) = 8 s.
    assert_eq!(b.admit(d, 8999), Admission::Hold);
    assert_eq!(b.admit(d, 9000), Admission::Probe);
}

#[test]
fn memory_is_bounded_and_the_earliest_expiring_entries_are_evicted() {
    let b = Breaker::new(settings(1000, 8000, 64));
    for i in 0..1000 {
        b.trip(dest(i), u64::from(i));
    }
    let entries = b.entries();
    // The table's bound: four slots per destination to remember.
    assert!(entries.len() <= 4 * 64, "{} entries", entries.len());
    assert_eq!(
        b.held(),
        entries.iter().filter(|e| e.phase != Phase::Closed).count()
    );
    // The most recent offenders are remembered.
    let held_recent = (990..1000)
        .filter(|&i| b.admit(dest(i), 1000) == Admission::Hold)
        .count();
    assert!(
        held_recent >= 8,
        "only {held_recent} of the last 10 are held"
    );
}

#[test]
fn many_threads_many_destinations_no_lost_updates() {
    let b = Arc::new(Breaker::new(settings(60_000, 600_000, 16_384)));
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for i in 0..1000u32 {
                    // Each thread trips its own 1000 destinations and reads everyone's.
                    let mine = dest(t * 1000 + i);
                    b.trip(mine, 0);
                    assert_eq!(b.admit(mine, 1), Admission::Hold);
                    let _ = b.admit(dest((t + 1) % 8 * 1000 + i), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 8,000 destinations, 16,384 to remember: every trip is remembered and counted once (with one
    // 8-slot window per destination a third of the runs forgot one: 7999).
    assert_eq!(b.held(), 8000);
    let held = (0..8000)
        .filter(|&i| b.admit(dest(i), 1) == Admission::Hold)
        .count();
    assert_eq!(held, 8000);
}

#[test]
fn concurrent_probes_admit_exactly_one() {
    let b = Arc::new(Breaker::new(settings(1000, 8000, 64)));
    let d = dest(9);
    b.trip(d, 0);
    let probes: usize = (0..8)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                (0..1000)
                    .filter(|_| b.admit(d, 1500) == Admission::Probe)
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(probes, 1);
}

fn runtime() -> Runtime {
    let env = Environment::assuming(KernelSupport::BOTH);
    let text = "opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\nadaptive_fallback: {hold_down_ms: 60000}";
    Runtime::new(&config::from_yaml(text).unwrap(), &env)
}

#[test]
fn the_runtime_consults_the_breaker_only_for_smc_verdicts() {
    let rt = runtime();
    let d = dest(5);
    assert!(rt.decide_connect(d, Default::default()).is_smc());
    let disabled =
        config::from_yaml("opt_in: {all_workloads: true}\nadaptive_fallback: {disabled: true}")
            .unwrap();
    assert!(!disabled.adaptive.enabled);
    let err = config::from_yaml("adaptive_fallback: {hold_down_ms: 5000, max_hold_down_ms: 1000}")
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "adaptive_fallback.max_hold_down_ms: 1000 is shorter than hold_down_ms (5000)"
        ),
        "{err}"
    );
    assert_eq!(
        rt.decide_connect("127.0.0.1:80".parse().unwrap(), Default::default()),
        Verdict::Tcp(TcpReason::Loopback)
    );
}

/// Stands in for the middlebox: a listener whose accept queue is full drops SYNs, so a connect
/// to it sits in SYN_SENT with its SYN retried, exactly as a path dropping SMC's SYNs looks from
/// the client. (The real option-254 black hole is made with iptables in the SMC-R VM suite.)
fn stalled_connect() -> (TcpListener, TcpStream, socket2_like::Pending) {
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on an open socket: backlog 0 queues one connection, then drops SYNs.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
    let filler = TcpStream::connect(full.local_addr().unwrap()).unwrap();
    let pending = socket2_like::connect_nonblocking(full.local_addr().unwrap());
    (full, filler, pending)
}

#[test]
fn watchdog_trips_when_the_stalled_path_answers_plain_tcp_full_queue_stands_in_for_the_middlebox() {
    let rt = runtime();
    let (_full, _filler, pending) = stalled_connect();
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let proven = working.local_addr().unwrap();
    let t0 = Instant::now();
    // The stalled socket is watched as if it were connecting to `proven`, whose plain TCP works.
    rt.watch_connect(pending.fd.as_fd(), proven);
    wait_until("the watchdog to trip", Duration::from_secs(5), || {
        rt.stats().get(Counter::BlackHoleTripped) > 0
    });
    let took = t0.elapsed();
    assert_eq!(
        rt.stats().get(Counter::BlackHoleTripped),
        1,
        "tripped after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "tripped after {took:?}"
    );
    let entries = rt.black_holes();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].destination, entries[0].phase),
        (proven, Phase::Open)
    );
    assert_eq!(rt.stats().get(Counter::ConnectsWatched), 1);
    // The watchdog published the table for `envoy-smc status` (other tests of this process may
    // have added their own destinations to the same file).
    let mine = wait_for(
        "this process's table in the state dir, with the tripped destination",
        Duration::from_secs(2),
        || {
            let tables = publish::read_tables(&publish::state_dir(), Path::new("/proc"));
            tables.into_iter().find(|t| {
                t.pid == std::process::id()
                    && t.destinations.iter().any(|d| d.destination == proven)
            })
        },
    );
    let d = mine
        .destinations
        .iter()
        .find(|d| d.destination == proven)
        .expect("the tripped destination is published");
    assert_eq!((d.state.as_str(), d.strikes), ("held", 1));
    let hold = d.next_retry_unix_ms.unwrap() - d.since_unix_ms;
    assert!((59_000..=60_100).contains(&hold), "hold-down {hold} ms");
}

#[test]
fn published_tables_of_gone_processes_are_skipped() {
    let dir = std::env::temp_dir().join(format!("envoy-smc-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let b = Breaker::new(settings(1000, 8000, 64));
    b.trip(dest(1), b.now_ms());
    b.trip(dest(2), b.now_ms());
    assert_eq!(b.admit(dest(2), b.now_ms() + 1000), Admission::Probe);
    publish::write_table(&b, &dir).unwrap();
    // A table left behind by a process that is gone (its pid now has another start time).
    let mut stale = publish::read_tables(&dir, Path::new("/proc")).remove(0);
    stale.start_time += 1;
    stale.pid = 1;
    std::fs::write(dir.join("1.json"), serde_json::to_vec(&stale).unwrap()).unwrap();
    std::fs::write(dir.join("2.json"), b"not json").unwrap();
    let tables = publish::read_tables(&dir, Path::new("/proc"));
    assert_eq!(tables.len(), 1, "{tables:?}");
    let t = &tables[0];
    assert_eq!(t.pid, std::process::id());
    let states: Vec<_> = t
        .destinations
        .iter()
        .map(|d| {
            (
                d.destination,
                d.state.as_str(),
                d.next_retry_unix_ms.is_some(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![(dest(1), "held", true), (dest(2), "probing", false)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watchdog_trips_nothing_when_plain_tcp_fails_too() {
    let rt = runtime();
    let (full, _filler, pending) = stalled_connect();
    rt.watch_connect(pending.fd.as_fd(), full.local_addr().unwrap());
    wait_until("a not-proven verdict", Duration::from_secs(6), || {
        rt.stats().get(Counter::BlackHoleNotProven) > 0
    });
    assert_eq!(rt.stats().get(Counter::BlackHoleNotProven), 1);
    assert_eq!(rt.stats().get(Counter::BlackHoleTripped), 0);
    assert!(rt.black_holes().is_empty());
}

#[test]
fn watchdog_forgets_connects_that_complete_or_close() {
    let rt = runtime();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = socket2_like::connect_nonblocking(server.local_addr().unwrap());
    rt.watch_connect(ok.fd.as_fd(), server.local_addr().unwrap());
    let (_full, _filler, closed) = stalled_connect();
    rt.watch_connect(closed.fd.as_fd(), server.local_addr().unwrap());
    drop(closed);
    wait_until(
        "the watchdog to forget the completed and the closed connect",
        Duration::from_secs(10),
        || rt.connects_watched_now() == 0,
    );
    assert_eq!(
        rt.stats().get(Counter::BlackHoleTripped),
        0,
        "a closed fd is never probed"
    );
    assert_eq!(rt.stats().get(Counter::ConnectsWatched), 2);
}

/// The entry point's half, as the preload library does it (minus the bookkeeping): move the
/// connect to TCP under the same fd and add it to the program's epoll instance again.
struct EpollRescuer {
    epfd: RawFd,
    rescued: Mutex<Vec<WatchedConnect>>,
    released: Mutex<Vec<WatchedConnect>>,
}

impl Rescuer for EpollRescuer {
    fn rescue(&self, c: &WatchedConnect) -> RescueOutcome {
        // SAFETY: the test keeps the watched socket open until it has seen the rescue.
        let fd = unsafe { BorrowedFd::borrow_raw(c.fd) };
        if reconnect_tcp(fd, c.dest, None, |_| {}).is_err() {
            return RescueOutcome::Failed;
        }
        epoll_add(self.epfd, c.fd);
        self.rescued.lock().unwrap().push(*c);
        RescueOutcome::Moved
    }

    fn release(&self, c: &WatchedConnect) {
        self.released.lock().unwrap().push(*c);
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLOUT | libc::EPOLLET) as u32,
        u64: fd as u64,
    };
    // SAFETY: valid epoll fd, socket fd and event.
    let rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(rc, 0);
}

/// fds that epoll reports writable within `timeout`.
fn writable_within(epfd: RawFd, timeout: Duration) -> Vec<RawFd> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: events has room for 8 entries.
    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 8, timeout.as_millis() as i32) };
    events[..n.max(0) as usize]
        .iter()
        .filter(|e| e.events & libc::EPOLLOUT as u32 != 0)
        .map(|e| e.u64 as RawFd)
        .collect()
}

fn so_error(fd: RawFd) -> i32 {
    let mut err: i32 = -1;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: err is a writable int and len says so.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut i32).cast(),
            &mut len,
        )
    };
    err
}

/// Two connects stuck behind the same (stand-in) black hole: one trip, both moved to TCP under
/// their fd numbers; the program's epoll sees each connect complete and data reaches the
/// destination. A connect that gets through is released, never rescued.
#[test]
fn stuck_connects_are_rescued_under_the_same_fd_full_queue_stands_in_for_the_middlebox() {
    let rt = runtime();
    // SAFETY: epoll_create1 with a constant flag; closed at the end of the test.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0);
    let rescuer = Arc::new(EpollRescuer {
        epfd,
        rescued: Mutex::new(Vec::new()),
        released: Mutex::new(Vec::new()),
    });
    rt.set_rescuer(rescuer.clone());
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let proven = working.local_addr().unwrap();
    let (_f1, _filler1, stuck1) = stalled_connect();
    let (_f2, _filler2, stuck2) = stalled_connect();
    let fine = socket2_like::connect_nonblocking(proven);
    let mut cookies = Vec::new();
    for p in [&stuck1, &stuck2, &fine] {
        epoll_add(epfd, p.fd.as_raw_fd());
        cookies.push(rt.watch_rescuable_connect(p.fd.as_fd(), proven, 7).unwrap());
    }
    // `fine` connects at once; the stuck ones must not be writable before the rescue.
    assert_eq!(
        writable_within(epfd, Duration::from_millis(500)),
        vec![fine.fd.as_raw_fd()]
    );
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        seen.extend(writable_within(epfd, Duration::from_millis(200)));
    }
    let took = t0.elapsed();
    seen.sort();
    let mut want = vec![stuck1.fd.as_raw_fd(), stuck2.fd.as_raw_fd()];
    want.sort();
    assert_eq!(seen, want, "both stuck connects complete after {took:?}");
    assert!(took < Duration::from_secs(3), "rescued after {took:?}");
    for (p, cookie) in [(&stuck1, cookies[0]), (&stuck2, cookies[1])] {
        let fd = p.fd.as_raw_fd();
        assert_eq!(so_error(fd), 0);
        assert_ne!(
            socket_cookie(fd),
            Some(cookie),
            "a new socket under fd {fd}"
        );
        let mut s = std::net::TcpStream::from(p.fd.try_clone().unwrap());
        s.write_all(b"ping").unwrap();
    }
    // The listener got the working connect, the watchdog's probe and the two rescued ones; the
    // data arrived on the rescued ones.
    let mut got = 0;
    for _ in 0..4 {
        let (mut a, _) = working.accept().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4];
        if a.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"ping");
            got += 1;
        }
    }
    assert_eq!(got, 2);
    assert_eq!(rt.stats().get(Counter::BlackHoleTripped), 1, "one episode");
    assert_eq!(rt.stats().get(Counter::BlackHoleRescued), 2);
    assert_eq!(rt.stats().get(Counter::BlackHoleRescueFailed), 0);
    assert_eq!(rescuer.rescued.lock().unwrap().len(), 2);
    let released = rescuer.released.lock().unwrap().clone();
    assert_eq!(
        released.iter().map(|c| c.cookie).collect::<Vec<_>>(),
        vec![cookies[2]],
        "the connect that got through is released"
    );
    // SAFETY: epfd is ours.
    unsafe { libc::close(epfd) };
}

/// Every rescuable connect gets exactly one call: a runtime that goes away (a new configuration,
/// shutdown) lets the connects it still watches go.
#[test]
fn dropping_the_runtime_releases_the_connects_it_watches() {
    let rt = runtime();
    let rescuer = Arc::new(EpollRescuer {
        epfd: -1,
        rescued: Mutex::new(Vec::new()),
        released: Mutex::new(Vec::new()),
    });
    rt.set_rescuer(rescuer.clone());
    let (full, _filler, stuck) = stalled_connect();
    let cookie = rt
        .watch_rescuable_connect(stuck.fd.as_fd(), full.local_addr().unwrap(), 99)
        .unwrap();
    drop(rt);
    let released = rescuer.released.lock().unwrap().clone();
    assert_eq!(released.len(), 1);
    assert_eq!((released[0].cookie, released[0].token), (cookie, 99));
    assert!(rescuer.rescued.lock().unwrap().is_empty());
}

/// A stuck connect watched without a rescuer (the native extension's connects) is counted as
/// not rescued; it ends at the program's connect timeout.
#[test]
fn a_stuck_connect_nobody_can_rescue_is_counted() {
    let rt = runtime();
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_full, _filler, stuck) = stalled_connect();
    rt.watch_connect(stuck.fd.as_fd(), working.local_addr().unwrap());
    wait_until(
        "the failed rescue to be counted",
        Duration::from_secs(5),
        || rt.stats().get(Counter::BlackHoleRescueFailed) > 0,
    );
    assert_eq!(rt.stats().get(Counter::BlackHoleTripped), 1);
    assert_eq!(rt.stats().get(Counter::BlackHoleRescueFailed), 1);
    assert_eq!(rt.stats().get(Counter::BlackHoleRescued), 0);
}

mod socket2_like {
    use std::net::SocketAddr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub struct Pending {
        pub fd: OwnedFd,
    }

    /// A non-blocking TCP connect left in flight.
    pub fn connect_nonblocking(to: SocketAddr) -> Pending {
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                0,
            ))
        };
        let sin = socket2::SockAddr::from(to);
        // SAFETY: valid fd and socket address.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), sin.as_ptr().cast(), sin.len()) };
        assert!(
            rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS)
        );
        Pending { fd }
    }
}

/// A probe connection that connects and closes between two looks of the watchdog (100 ms) still
/// counts as "the destination answers again" (found by the VM end-to-end test with HTTP/1.0
/// backends, whose connections last ~50 ms).
#[test]
fn short_connections_to_a_held_destination_recover_it() {
    let env = Environment::assuming(KernelSupport::BOTH);
    let text = "opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\nadaptive_fallback: {hold_down_ms: 1, max_hold_down_ms: 1000}";
    let rt = Runtime::new(&config::from_yaml(text).unwrap(), &env);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let d = server.local_addr().unwrap();
    rt.hold_destination(d);
    wait_until("the 1 ms hold-down to end", Duration::from_secs(2), || {
        rt.black_holes()
            .iter()
            .any(|e| e.destination == d && e.until <= std::time::SystemTime::now())
    });
    for _ in 0..2 {
        let c = socket2_like::connect_nonblocking(d);
        rt.watch_connect(c.fd.as_fd(), d);
        let (accepted, _) = server.accept().unwrap();
        drop((accepted, c));
    }
    wait_until(
        "the held destination to recover",
        Duration::from_secs(3),
        || rt.stats().get(Counter::BlackHoleRecovered) > 0,
    );
    assert_eq!(
        rt.stats().get(Counter::BlackHoleRecovered),
        1,
        "recovered once, not per connection"
    );
    assert_eq!(rt.black_holes()[0].phase, Phase::Closed);
}

/// Ten stalled connects to a destination that is simply down (a full accept queue: plain TCP
/// fails too) are watched first, then one to a destination whose plain TCP works (the stand-in
/// black hole, as above): the trip still comes within 2 s of the watch, because the dead
/// destination costs one probe (its "not proven" remembered for the ten), run concurrently
/// with the black hole's. (Probed one at a time, this took 11 s.)
#[test]
fn a_black_hole_trips_within_2_s_while_connects_to_a_dead_destination_stall_too() {
    let rt = runtime();
    let (dead, _dead_filler, _) = stalled_connect();
    let dead_dest = dead.local_addr().unwrap();
    let stalled_dead: Vec<_> = (0..10)
        .map(|_| socket2_like::connect_nonblocking(dead_dest))
        .collect();
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let proven = working.local_addr().unwrap();
    let (_full, _filler, black_holed) = stalled_connect();
    let t0 = Instant::now();
    for p in &stalled_dead {
        rt.watch_connect(p.fd.as_fd(), dead_dest);
    }
    rt.watch_connect(black_holed.fd.as_fd(), proven);
    wait_until("the black hole to trip", Duration::from_secs(15), || {
        rt.stats().get(Counter::BlackHoleTripped) > 0
    });
    let took = t0.elapsed();
    assert_eq!(rt.stats().get(Counter::BlackHoleTripped), 1);
    assert!(took < Duration::from_secs(2), "tripped after {took:?}");
    assert_eq!(rt.black_holes()[0].destination, proven);
    // The ten share one verdict.
    wait_until(
        "not-proven verdicts for the ten dead connects",
        Duration::from_secs(6),
        || rt.stats().get(Counter::BlackHoleNotProven) >= 10,
    );
    assert_eq!(rt.stats().get(Counter::BlackHoleNotProven), 10);
    assert_eq!(
        rt.stats().get(Counter::TcpProbes),
        2,
        "one probe per destination"
    );
}

/// Runs `role` of this test binary in a child process (with `env`), its stdin piped.
fn spawn_role(role: &str, env: &[(&str, &std::ffi::OsStr)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "role_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env("ENVOY_SMC_TEST_ROLE", role)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Roles run in a child process of this test binary (see `spawn_role`).
#[test]
fn role_entry() {
    match std::env::var("ENVOY_SMC_TEST_ROLE").as_deref() {
        // Waits for a line on stdin, then publishes a table as the watchdog does.
        Ok("publish") => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            let b = Breaker::new(settings(1000, 8000, 64));
            b.trip(dest(1), b.now_ms());
            let r = publish::write_table(&b, &publish::state_dir());
            println!("RESULT published={}", r.is_ok());
        }
        Ok("fork") => fork_role(),
        _ => {}
    }
}

fn root_with_setpriv() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (the proxy) and another uid (the attacker)");
        return false;
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no setpriv");
        return false;
    }
    true
}

/// Runs `script` with sh as uid/gid 65534 (nobody): the local attacker.
fn as_nobody(script: &str) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A local user creates the state directory first and plants symlinks under the names a root
/// proxy would write (its temporary `.<pid>.json.tmp`, its `<pid>.json`), pointing at a root
/// 0600 file: the proxy must not write through them (it refuses a directory it does not own).
#[test]
fn a_planted_state_dir_cannot_make_root_overwrite_its_files() {
    if !root_with_setpriv() {
        return;
    }
    let tmp = std::env::temp_dir();
    let n = std::process::id();
    let target = tmp.join(format!("envoy-smc-root-secret-{n}"));
    std::fs::write(&target, b"root's secret\n").unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let planted = tmp.join(format!("envoy-smc-planted-{n}"));
    let _ = std::fs::remove_dir_all(&planted);
    let mut child = spawn_role("publish", &[("ENVOY_SMC_STATE_DIR", planted.as_os_str())]);
    let pid = child.id();
    as_nobody(&format!(
        "mkdir -m 0777 {d} && ln -s {t} {d}/.{pid}.json.tmp && ln -s {t} {d}/{pid}.json",
        d = planted.display(),
        t = target.display()
    ));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secret = std::fs::read(&target).unwrap();
    let _ = std::fs::remove_dir_all(&planted);
    let _ = std::fs::remove_file(&target);
    assert_eq!(
        secret, b"root's secret\n",
        "the root-owned file was overwritten"
    );
    assert!(stdout.contains("RESULT published=false"), "{stdout}");
    // And the reader does not trust that directory either.
    assert!(publish::read_tables_checked(&planted, Path::new("/proc"))
        .tables
        .is_empty());
}

/// A world-writable directory planted by someone else is refused by the reader with a reason;
/// a table file owned by another uid in a good directory is skipped; a FIFO named like a table
/// does not hang it.
#[test]
fn status_reads_only_trusted_regular_files() {
    let dir = std::env::temp_dir().join(format!("envoy-smc-reader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let b = Breaker::new(settings(1000, 8000, 64));
    b.trip(dest(1), b.now_ms());
    publish::write_table(&b, &dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(format!("{}.json", std::process::id())))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let fifo = std::ffi::CString::new(dir.join("1.json").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let t0 = Instant::now();
    let found = publish::read_tables_checked(&dir, Path::new("/proc"));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(found.tables.len(), 1);
    assert!(
        found
            .skipped
            .iter()
            .any(|s| s.contains("1.json: not a regular file")),
        "{:?}",
        found.skipped
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let found = publish::read_tables_checked(&dir, Path::new("/proc"));
    assert!(found.tables.is_empty());
    assert!(
        found.skipped[0].contains("lets others write in it"),
        "{:?}",
        found.skipped
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// In a fork child the watchdog starts again (a stalled connect there trips), and dropping the
/// runtime there neither joins the parent's thread nor panics. Exit codes: 0 fine, 2 no trip,
/// 3 a panic on drop.
fn fork_role() {
    let rt = runtime();
    // The parent's watchdog thread runs.
    let (_f0, _filler0, warm) = stalled_connect();
    rt.watch_connect(warm.fd.as_fd(), "127.0.0.1:9".parse().unwrap());
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let proven = working.local_addr().unwrap();
    let (_full, _filler, stuck) = stalled_connect();
    // SAFETY: fork in a process whose other threads (the watchdog) hold no lock the child
    // needs: that is what this role checks.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        rt.watch_connect(stuck.fd.as_fd(), proven);
        let t0 = Instant::now();
        while rt.stats().get(Counter::BlackHoleTripped) == 0
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let tripped = rt.stats().get(Counter::BlackHoleTripped) == 1;
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(rt))).is_ok();
        let code = match (tripped, dropped) {
            (true, true) => 0,
            (false, _) => 2,
            (true, false) => 3,
        };
        // SAFETY: leaving the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("RESULT child_exit={}", libc::WEXITSTATUS(status));
}

#[test]
fn the_watchdog_works_in_a_fork_child_and_drops_cleanly() {
    let child = spawn_role("fork", &[]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("RESULT child_exit=0"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
