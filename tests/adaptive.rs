//! Adaptive fallback: the breaker's state machine, its behaviour under many threads, and the
//! watchdog on real sockets.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_smc::adaptive::{Admission, Breaker, Phase};
use envoy_smc::config::{self, AdaptiveSettings};
use envoy_smc::policy::{Environment, TcpReason, Verdict};
use envoy_smc::smc::KernelSupport;
use envoy_smc::stats::Counter;
use envoy_smc::Runtime;

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
    assert!(entries.len() <= 128, "{} entries", entries.len());
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
    // 8,000 destinations, 16,384 to remember: every trip is remembered and counted once.
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
    Runtime::new(&config::from_yaml(text).unwrap(), &env).unwrap()
}

#[test]
fn the_runtime_consults_the_breaker_only_for_smc_verdicts() {
    let rt = runtime();
    let d = dest(5);
    assert!(rt.decide_connect(d, Default::default()).is_smc());
    let disabled =
        config::from_yaml("opt_in: {all_workloads: true}\nadaptive_fallback: {disabled: true}")
            .unwrap();
    assert!(!AdaptiveSettings::from_config(&disabled).enabled);
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
    while rt.stats().get(Counter::BlackHoleTripped) == 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
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
}

#[test]
fn watchdog_trips_nothing_when_plain_tcp_fails_too() {
    let rt = runtime();
    let (full, _filler, pending) = stalled_connect();
    rt.watch_connect(pending.fd.as_fd(), full.local_addr().unwrap());
    let t0 = Instant::now();
    while rt.stats().get(Counter::BlackHoleNotProven) == 0 && t0.elapsed() < Duration::from_secs(6)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
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
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rt.stats().get(Counter::BlackHoleTripped),
        0,
        "a closed fd is never probed"
    );
    assert_eq!(rt.stats().get(Counter::ConnectsWatched), 2);
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
        let sin = super::common::sockaddr_in(to);
        // SAFETY: valid fd and sockaddr_in.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                16,
            )
        };
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
    let rt = Runtime::new(&config::from_yaml(text).unwrap(), &env).unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let d = server.local_addr().unwrap();
    rt.hold_destination(d);
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..2 {
        let c = socket2_like::connect_nonblocking(d);
        rt.watch_connect(c.fd.as_fd(), d);
        let (accepted, _) = server.accept().unwrap();
        drop((accepted, c));
    }
    let t0 = Instant::now();
    while rt.stats().get(Counter::BlackHoleRecovered) == 0 && t0.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        rt.stats().get(Counter::BlackHoleRecovered),
        1,
        "recovered once, not per connection"
    );
    assert_eq!(rt.black_holes()[0].phase, Phase::Closed);
}
