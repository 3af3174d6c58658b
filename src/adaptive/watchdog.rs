//! The thread that watches SMC connects in flight and trips the breaker for black holes.
//!
//! Entry points register each SMC connect (fd, destination); every 100 ms the watchdog reads the
//! socket's `TCP_INFO`. Past the handshake, or closed before a stall could show (a short
//! connection between two looks): a held destination has recovered. Still in SYN_SENT with
//! retried SYNs after `detect_after_ms`: a plain TCP connect to the same destination decides —
//! it works, so SMC's SYNs are being dropped: trip; it fails too: the destination is down, and
//! nothing trips. The fd is identified with its socket cookie, so a closed and reused fd number is
//! never mistaken for the watched socket.
//!
//! On a trip, every watched connect to that destination still sending SYNs is handed to the
//! entry point's [`Rescuer`] (when it watched the connect as rescuable), which replaces it with a
//! TCP connection under the same fd.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::breaker::Breaker;
use super::detect::{
    connect_state, socket_cookie, syn_stalled, tcp_probe, ConnectState, ProbeOutcome, TCP_SYN_SENT,
};
use super::publish::Publisher;
use super::rescue::{RescueOutcome, Rescuer, WatchedConnect};
use crate::stats::{Counter, Stats};

const TICK: Duration = Duration::from_millis(100);
/// A connect still undecided after this long is no longer watched.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Entry points register a socket just before `connect()`: a closed socket this young has not
/// started connecting yet.
const NOT_STARTED_GRACE: Duration = Duration::from_secs(2);
/// Bound on connects watched at once; beyond it new ones are not watched (counted nowhere else).
const MAX_WATCHED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Watched {
    fd: RawFd,
    cookie: u64,
    dest: SocketAddr,
    started: Instant,
    /// The entry point keeps what a rescue needs and waits for `rescue` or `release`.
    rescuable: bool,
    token: u64,
}

impl Watched {
    fn connect(&self) -> WatchedConnect {
        WatchedConnect {
            fd: self.fd,
            cookie: self.cookie,
            dest: self.dest,
            token: self.token,
        }
    }
}

struct Shared {
    list: Mutex<Vec<Watched>>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    rescuer: Mutex<Option<Arc<dyn Rescuer>>>,
    publisher: Publisher,
}

/// Watches SMC connects of one runtime. Dropping it stops the thread.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Next {
    Keep,
    Done,
    Probe,
}

impl Watchdog {
    pub fn new(breaker: Arc<Breaker>, stats: Arc<Stats>) -> Watchdog {
        Watchdog {
            shared: Arc::new(Shared {
                list: Mutex::new(Vec::new()),
                wake: Condvar::new(),
                stop: std::sync::atomic::AtomicBool::new(false),
                breaker,
                stats,
                rescuer: Mutex::new(None),
                publisher: Publisher::default(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Starts watching an SMC socket that is about to connect to `dest`. `rescuable`: the entry
    /// point has installed a [`Rescuer`] and keeps what rescuing this connect needs (`token` is
    /// its tag, handed back with it). Returns the socket's cookie when the connect is watched
    /// (`None`: not watched, keep nothing).
    pub fn watch(&self, fd: RawFd, dest: SocketAddr, rescuable: Option<u64>) -> Option<u64> {
        let cookie = socket_cookie(fd)?;
        let mut list = self.shared.list.lock().ok()?;
        if list.len() >= MAX_WATCHED {
            return None;
        }
        list.push(Watched {
            fd,
            cookie,
            dest,
            started: Instant::now(),
            rescuable: rescuable.is_some(),
            token: rescuable.unwrap_or(0),
        });
        drop(list);
        self.shared.stats.inc(Counter::ConnectsWatched);
        self.ensure_thread();
        self.shared.wake.notify_one();
        Some(cookie)
    }

    /// Installs the entry point's rescuer (replacing any earlier one).
    pub fn set_rescuer(&self, rescuer: Arc<dyn Rescuer>) {
        if let Ok(mut r) = self.shared.rescuer.lock() {
            *r = Some(rescuer);
        }
    }

    fn ensure_thread(&self) {
        let Ok(mut thread) = self.thread.lock() else {
            return;
        };
        if thread.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        *thread = std::thread::Builder::new()
            .name("envoy-smc-watch".into())
            .spawn(move || run(&shared))
            .map_err(|e| tracing::warn!("envoy-smc: cannot start the black-hole watchdog: {e}"))
            .ok();
    }

    /// Connects being watched now.
    pub fn watching(&self) -> usize {
        self.shared.list.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        // Every rescuable connect gets its one call: the ones still watched are let go.
        let rescuer = self.shared.rescuer.lock().ok().and_then(|r| r.clone());
        let left = self
            .shared
            .list
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        for w in &left {
            release(rescuer.as_ref(), w);
        }
    }
}

/// A watched connect to `dest` got through: if `dest` was held, it answers SMC again.
fn recovered(shared: &Shared, dest: SocketAddr) {
    if shared.breaker.recovered(dest, shared.breaker.now_ms()) {
        shared.stats.inc(Counter::BlackHoleRecovered);
        tracing::info!("envoy-smc: {dest} answers SMC again; back on SMC");
    }
}

/// `w` is the watched socket still, and still in SYN_SENT.
fn still_sending_syns(w: &Watched) -> bool {
    socket_cookie(w.fd) == Some(w.cookie)
        && matches!(connect_state(w.fd), Ok(ConnectState::SynSent { .. }))
}

/// The watchdog is done with `w` without rescuing it.
fn release(rescuer: Option<&Arc<dyn Rescuer>>, w: &Watched) {
    if let (true, Some(r)) = (w.rescuable, rescuer) {
        r.release(&w.connect());
    }
}

/// `dest` was just proven black-holed: hands every watched connect to it that is still sending
/// SYNs to the rescuer. Returns the connects finished here.
fn rescue_all(
    shared: &Shared,
    rescuer: Option<&Arc<dyn Rescuer>>,
    batch: &[Watched],
    dest: SocketAddr,
) -> Vec<(RawFd, u64)> {
    let mut finished = Vec::new();
    for w in batch.iter().filter(|w| w.dest == dest) {
        if !still_sending_syns(w) {
            continue; // got through or closed: its own look decides
        }
        finished.push((w.fd, w.cookie));
        match (w.rescuable, rescuer) {
            (true, Some(r)) => match r.rescue(&w.connect()) {
                RescueOutcome::Moved => {
                    shared.stats.inc(Counter::BlackHoleRescued);
                    tracing::info!(
                        "envoy-smc: connect on fd {} to {dest} moved to TCP in flight",
                        w.fd
                    );
                }
                RescueOutcome::Failed => shared.stats.inc(Counter::BlackHoleRescueFailed),
                RescueOutcome::Handed => {}
            },
            // Nobody can rescue it: it fails at the program's connect timeout, like before.
            _ => shared.stats.inc(Counter::BlackHoleRescueFailed),
        }
    }
    finished
}

fn run(shared: &Shared) {
    let settings = *shared.breaker.settings();
    let detect_after = Duration::from_millis(u64::from(settings.detect_after_ms));
    let probe_timeout = Duration::from_millis(u64::from(settings.probe_timeout_ms));
    loop {
        let batch: Vec<Watched> = {
            let Ok(mut list) = shared.list.lock() else {
                return;
            };
            while list.is_empty() && !shared.stop.load(std::sync::atomic::Ordering::Acquire) {
                list = match shared.wake.wait(list) {
                    Ok(l) => l,
                    Err(_) => return,
                };
            }
            if shared.stop.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            list.clone()
        };
        let rescuer = shared.rescuer.lock().ok().and_then(|r| r.clone());
        let rescuer = rescuer.as_ref();
        let mut done: Vec<(RawFd, u64)> = Vec::new();
        for w in &batch {
            if done.contains(&(w.fd, w.cookie)) {
                continue; // rescued with another connect to the same destination
            }
            let alive = socket_cookie(w.fd) == Some(w.cookie);
            let next = match (alive, connect_state(w.fd)) {
                // Closed between two looks and before a stall could show: a short connection
                // that got through (a black-holed connect sits in SYN_SENT for seconds).
                (false, _) if w.started.elapsed() < detect_after => {
                    recovered(shared, w.dest);
                    Next::Done
                }
                (false, _) | (_, Err(_)) => Next::Done,
                (true, Ok(ConnectState::Established)) => {
                    recovered(shared, w.dest);
                    Next::Done
                }
                (true, Ok(ConnectState::SynSent { retransmits }))
                    if syn_stalled(
                        TCP_SYN_SENT,
                        retransmits,
                        w.started.elapsed(),
                        detect_after,
                    ) =>
                {
                    Next::Probe
                }
                (true, Ok(ConnectState::SynSent { .. })) if w.started.elapsed() < GIVE_UP => {
                    Next::Keep
                }
                (true, Ok(ConnectState::Closed)) if w.started.elapsed() < NOT_STARTED_GRACE => {
                    Next::Keep
                }
                _ => Next::Done,
            };
            match next {
                Next::Keep => {}
                Next::Done => {
                    release(rescuer, w);
                    done.push((w.fd, w.cookie));
                }
                Next::Probe => {
                    let tcp_works = tcp_probe(w.dest, probe_timeout) == ProbeOutcome::Connected;
                    // Looked at again after the probe: a connect that got through meanwhile was
                    // a slow path, not a black hole.
                    if tcp_works && still_sending_syns(w) {
                        let hold = shared.breaker.trip(w.dest, shared.breaker.now_ms());
                        shared.stats.inc(Counter::BlackHoleTripped);
                        tracing::warn!(
                            "envoy-smc: {} drops SYNs carrying SMC's TCP option while plain TCP works; TCP for {} s",
                            w.dest,
                            hold.as_secs()
                        );
                        let rescued = rescue_all(shared, rescuer, &batch, w.dest);
                        if !rescued.contains(&(w.fd, w.cookie)) {
                            release(rescuer, w);
                            done.push((w.fd, w.cookie));
                        }
                        done.extend(rescued);
                    } else {
                        shared.stats.inc(Counter::BlackHoleNotProven);
                        release(rescuer, w);
                        done.push((w.fd, w.cookie));
                    }
                }
            }
        }
        shared.publisher.publish_if_changed(&shared.breaker);
        let Ok(mut list) = shared.list.lock() else {
            return;
        };
        list.retain(|w| !done.contains(&(w.fd, w.cookie)));
        let _ = shared.wake.wait_timeout(list, TICK);
    }
}
