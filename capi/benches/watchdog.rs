//! The adaptive-fallback watchdog under load: what it costs to watch many SMC connects.
//!
//! Each scenario runs on loopback with real sockets: `INFLIGHT` connects stuck in SYN_SENT (a
//! listener whose accept queue is full drops their SYNs, as a black hole or a dead destination
//! would) are watched, then `RATE` new connects per second to a working listener are watched for
//! `SECS` seconds (each connects at once and is closed 2 s later, like a short request). Printed
//! per scenario: the watchdog thread's CPU time over the window as % of one core (from
//! `/proc/self/task/<tid>/schedstat`), the latency of `watch()` on the connect path (P50, P99,
//! max), and how many plain TCP probes the watchdog ran.
//!
//! - `steady`: `detect_after_ms` 60 s, so the stuck connects stay in flight for the whole window
//!   (the cost of watching 5,000 connects while 1,000/s come and go);
//! - `judging`: `detect_after_ms` 1 s (the default): the stuck connects reach their deadline
//!   inside the window, are looked at, grouped by destination, judged by one probe, and let go.
//!
//! `cargo bench --bench watchdog` (about 30 s). Environment: `WATCHDOG_BENCH_INFLIGHT` (5000),
//! `WATCHDOG_BENCH_RATE` (1000), `WATCHDOG_BENCH_SECS` (10). Needs about 20,000 fds (it raises
//! its soft limit to the hard one).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use envoy_smc_core::config;
use envoy_smc_core::policy::Environment;
use envoy_smc_core::smc::KernelSupport;
use envoy_smc_core::stats::Counter;
use envoy_smc_core::Runtime;

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then the same struct back.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// A non-blocking TCP connect left in flight; closed with RST (no TIME_WAIT) when dropped.
struct Conn(libc::c_int);

impl Conn {
    fn start(to: SocketAddr) -> Conn {
        let sa = socket2::SockAddr::from(to);
        // SAFETY: plain socket/connect calls on an fd owned here.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            libc::connect(fd, sa.as_ptr().cast(), sa.len());
            Conn(fd)
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setting SO_LINGER on our own fd, then closing it once.
        unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::close(self.0);
        }
    }
}

/// The watchdog thread's CPU time so far (ns), found by its name.
fn watchdog_cpu_ns() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "envoy-smc-watch" {
            let s = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return s.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn watch(rt: &Runtime, fd: libc::c_int, dest: SocketAddr, lat: &mut Vec<Duration>) {
    let t = Instant::now();
    // SAFETY: the fd is open for the call.
    rt.watch_connect(unsafe { BorrowedFd::borrow_raw(fd) }, dest);
    lat.push(t.elapsed());
}

fn scenario(name: &str, detect_after_ms: u64, inflight: u64, rate: u64, secs: u64) {
    let yaml = format!(
        "opt_in: {{all_workloads: true}}\nmesh_switch: {{always_on: true}}\n\
         adaptive_fallback: {{detect_after_ms: {detect_after_ms}}}"
    );
    let rt = Runtime::new(
        &config::from_yaml(&yaml).unwrap(),
        &Environment::assuming(KernelSupport::BOTH),
    );
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on an open socket: backlog 0 queues one connection, then drops SYNs.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
    let _filler = TcpStream::connect(full.local_addr().unwrap()).unwrap();
    let stuck_dest = full.local_addr().unwrap();
    let working = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = working.local_addr().unwrap();
    std::thread::spawn(move || {
        // Accept and close at once: the server side closes first, so no client TIME_WAIT.
        for s in working.incoming() {
            drop(s);
        }
    });
    let mut lat = Vec::new();
    let stuck: Vec<Conn> = (0..inflight).map(|_| Conn::start(stuck_dest)).collect();
    for c in &stuck {
        watch(&rt, c.0, stuck_dest, &mut lat);
    }
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = watchdog_cpu_ns().expect("the watchdog thread runs");
    let t0 = Instant::now();
    let mut live: VecDeque<(Instant, Conn)> = VecDeque::new();
    let mut started = 0u64;
    let total = rate * secs;
    while started < total {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while started < due.min(total) {
            let c = Conn::start(dest);
            watch(&rt, c.0, dest, &mut lat);
            live.push_back((Instant::now(), c));
            started += 1;
        }
        while live
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(2))
        {
            live.pop_front();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = t0.elapsed();
    let cpu = watchdog_cpu_ns().unwrap() - cpu0;
    lat.sort();
    println!(
        "{name:<8} detect_after {detect_after_ms:>5} ms  in flight {inflight}  new {rate}/s for {secs} s  \
         watchdog CPU {:5.2}% of one core  watch() P50 {:>5.1} us  P99 {:>5.1} us  max {:>7.1} us  \
         ({} watches; not proven {}, tripped {})",
        cpu as f64 / wall.as_nanos() as f64 * 100.0,
        percentile(&lat, 0.50).as_nanos() as f64 / 1000.0,
        percentile(&lat, 0.99).as_nanos() as f64 / 1000.0,
        lat.last().copied().unwrap_or_default().as_nanos() as f64 / 1000.0,
        lat.len(),
        rt.stats().get(Counter::BlackHoleNotProven),
        rt.stats().get(Counter::BlackHoleTripped),
    );
    drop(stuck);
    drop(live);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    raise_fd_limit();
    let inflight = env_or("WATCHDOG_BENCH_INFLIGHT", 5000);
    let rate = env_or("WATCHDOG_BENCH_RATE", 1000);
    let secs = env_or("WATCHDOG_BENCH_SECS", 10);
    scenario("steady", 60_000, inflight, rate, secs);
    scenario("judging", 1_000, inflight, rate, secs);
}
