//! The thread that watches SMC connects in flight and trips the breaker for black holes.
//!
//! Entry points register each SMC connect (fd, destination) with [`Watchdog::watch`]: a cookie
//! lookup and a push onto a lock-free inbox ([`super::inbox`]), nothing else. The watchdog
//! thread looks at each connect once, when it is `detect_after_ms` old (its `TCP_INFO`): past the
//! handshake, it got through; still in SYN_SENT with a retried SYN, it stalled. Stalled connects
//! are grouped by destination and judged together by one plain TCP probe of that destination
//! ([`super::probes`], concurrent across destinations, verdicts remembered): TCP works, so SMC's
//! SYNs are being dropped: trip, and hand every connect of the group still sending SYNs to the
//! entry point's [`Rescuer`]; TCP fails too, the destination is down: nothing trips. Connects
//! that are neither (a connect not started yet, one whose first SYN was not retried yet) are
//! looked at again every tick (100 ms). While a destination is held, connects to it (the one
//! probe connection) are looked at every tick so a recovery is seen at once.
//!
//! The cost is therefore per connect, not per connect per tick: nothing rescans the list when a
//! connect is added, finished connects leave in O(1) (queue) or O(n) passes (`retain`), and no
//! lock is shared with the connect path. The fd is identified by its socket cookie, so a closed
//! and reused fd number is never mistaken for the watched socket.
//!
//! Fork: the thread exists only in the process that started it; after a `fork()` the child's
//! first `watch()` starts a new thread (and drops what the parent's was watching), and dropping
//! the watchdog in a child neither joins nor detaches the parent's thread
//! ([`crate::process`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::breaker::Breaker;
use super::detect::{connect_state, socket_cookie, syn_stalled, ConnectState, TCP_SYN_SENT};
use super::inbox::Inbox;
use super::probes::Probes;
use super::publish::Publisher;
use super::rescue::{RescueOutcome, Rescuer, WatchedConnect};
use crate::process;
use crate::stats::{Counter, Stats};

/// How often connects that need another look are looked at.
const TICK: Duration = Duration::from_millis(100);
/// A connect still undecided after this long is no longer watched.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Entry points register a socket just before `connect()`: a closed socket this young has not
/// started connecting yet.
const NOT_STARTED_GRACE: Duration = Duration::from_secs(2);
/// Bound on connects watched at once; beyond it new ones are not watched.
pub const MAX_WATCHED: usize = 65_536;

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

struct RescuerRef(Arc<dyn Rescuer>);

struct Shared {
    inbox: Inbox<Watched>,
    /// Connects watched and not finished yet (in the inbox or the thread's lists).
    pending: AtomicUsize,
    stop: AtomicBool,
    breaker: Arc<Breaker>,
    stats: Arc<Stats>,
    rescuer: ArcSwapOption<RescuerRef>,
    publisher: Publisher,
}

/// The running thread and the fork generation it was started in.
struct Worker {
    generation: u64,
    handle: JoinHandle<()>,
}

/// Watches SMC connects of one runtime. Dropping it stops the thread; every rescuable connect
/// still watched is released.
pub struct Watchdog {
    shared: Arc<Shared>,
    /// The current thread. Replaced only after a fork, and then the parent's is leaked, never
    /// dropped: dropping its `JoinHandle` would detach a thread that does not exist in the child.
    /// Lock-free like the rest of the connect path: reading it is an `ArcSwap` load (no lock a
    /// fork or a signal could leave held), replacing it one swap.
    worker: ArcSwapOption<Worker>,
    /// `generation + 1` of the thread being started (a claim, so only one caller starts it).
    starting: AtomicU64,
}

impl Watchdog {
    pub fn new(breaker: Arc<Breaker>, stats: Arc<Stats>) -> Watchdog {
        process::install();
        Watchdog {
            shared: Arc::new(Shared {
                inbox: Inbox::default(),
                pending: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                breaker,
                stats,
                rescuer: ArcSwapOption::empty(),
                publisher: Publisher::default(),
            }),
            worker: ArcSwapOption::empty(),
            starting: AtomicU64::new(0),
        }
    }

    /// Starts watching an SMC socket that is about to connect to `dest`. `rescuable`: the entry
    /// point has installed a [`Rescuer`] and keeps what rescuing this connect needs (`token` is
    /// its tag, handed back with it). Returns the socket's cookie when the connect is watched
    /// (`None`: not watched, keep nothing). Lock-free; wakes the thread only when it was idle.
    pub fn watch(&self, fd: RawFd, dest: SocketAddr, rescuable: Option<u64>) -> Option<u64> {
        let cookie = socket_cookie(fd)?;
        self.ensure_thread();
        let before = self.shared.pending.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_WATCHED {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let was_idle = before == 0;
        self.shared.inbox.push(Watched {
            fd,
            cookie,
            dest,
            started: Instant::now(),
            rescuable: rescuable.is_some(),
            token: rescuable.unwrap_or(0),
        });
        self.shared.stats.inc(Counter::ConnectsWatched);
        if was_idle {
            self.wake();
        }
        Some(cookie)
    }

    /// Installs the entry point's rescuer (replacing any earlier one).
    pub fn set_rescuer(&self, rescuer: Arc<dyn Rescuer>) {
        self.shared
            .rescuer
            .store(Some(Arc::new(RescuerRef(rescuer))));
    }

    fn wake(&self) {
        if let Some(w) = &*self.worker.load() {
            w.handle.thread().unpark();
        }
    }

    /// Starts the thread if this process has none (first watch, or the first one after a fork).
    fn ensure_thread(&self) {
        let generation = process::fork_generation();
        let had_worker = match &*self.worker.load() {
            Some(w) if w.generation == generation => return,
            other => other.is_some(),
        };
        let claim = self.starting.load(Ordering::Acquire);
        if claim == generation + 1
            || self
                .starting
                .compare_exchange(claim, generation + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return; // another thread is starting it
        }
        if had_worker {
            // A fork child: what the parent was watching is the parent's business.
            drop(self.shared.inbox.take_all());
            self.shared.pending.store(0, Ordering::Release);
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("envoy-smc-watch".into())
            .spawn(move || run(&shared))
        {
            Ok(handle) => {
                let parents = self
                    .worker
                    .swap(Some(Arc::new(Worker { generation, handle })));
                // A fork parent's worker is leaked on purpose: see `worker`.
                std::mem::forget(parents);
            }
            Err(e) => {
                self.starting.store(0, Ordering::Release);
                tracing::warn!("envoy-smc: cannot start the black-hole watchdog: {e}");
            }
        }
    }

    /// Connects being watched now.
    pub fn watching(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // `drop` has exclusive access: no guard of `worker` is held, so the `Arc` is the last.
        match self.worker.swap(None).map(Arc::try_unwrap) {
            Some(Ok(worker)) if worker.generation == process::fork_generation() => {
                worker.handle.thread().unpark();
                let _ = worker.handle.join();
            }
            // The parent's thread does not exist in this fork child: never join or detach it.
            Some(Ok(worker)) => std::mem::forget(worker.handle),
            Some(Err(shared)) => std::mem::forget(shared),
            None => {}
        }
        // Every rescuable connect gets its one call: the ones still in the inbox are let go
        // (the thread let go of its own before it ended).
        let rescuer = self.shared.rescuer.load_full();
        for w in self.shared.inbox.take_all() {
            release(rescuer.as_ref().map(|r| &r.0), &w);
        }
    }
}

/// The watchdog is done with `w` without rescuing it.
fn release(rescuer: Option<&Arc<dyn Rescuer>>, w: &Watched) {
    if let (true, Some(r)) = (w.rescuable, rescuer) {
        r.release(&w.connect());
    }
}

/// What one look at a watched connect shows.
enum Look {
    /// Past the handshake.
    Connected,
    /// Closed, another socket under the fd, or not worth watching any longer.
    Gone,
    /// Still sending SYNs with one retried after `detect_after`: a black hole or a dead
    /// destination.
    Stalled,
    /// Not decided yet: look again next tick.
    Wait,
}

fn look(w: &Watched, detect_after: Duration) -> Look {
    if socket_cookie(w.fd) != Some(w.cookie) {
        return Look::Gone;
    }
    let age = w.started.elapsed();
    match connect_state(w.fd) {
        Err(_) => Look::Gone,
        Ok(ConnectState::Established) => Look::Connected,
        Ok(ConnectState::SynSent { retransmits })
            if syn_stalled(TCP_SYN_SENT, retransmits, age, detect_after) =>
        {
            Look::Stalled
        }
        Ok(ConnectState::SynSent { .. }) if age < GIVE_UP => Look::Wait,
        Ok(ConnectState::Closed) if age < NOT_STARTED_GRACE => Look::Wait,
        _ => Look::Gone,
    }
}

/// `w` is the watched socket still, and still in SYN_SENT.
fn still_sending_syns(w: &Watched) -> bool {
    socket_cookie(w.fd) == Some(w.cookie)
        && matches!(connect_state(w.fd), Ok(ConnectState::SynSent { .. }))
}

/// The watchdog thread's own state: nobody else touches it.
struct Schedule<'a> {
    shared: &'a Shared,
    rescuer: Option<Arc<RescuerRef>>,
    detect_after: Duration,
    /// Connects younger than `detect_after`, oldest first.
    young: VecDeque<Watched>,
    /// Connects to look at again every tick.
    again: Vec<Watched>,
    /// Stalled connects waiting for their destination's verdict.
    stalled: HashMap<SocketAddr, Vec<Watched>>,
    probes: Probes,
    probes_counted: u64,
    /// Connects finished since the last tick (subtracted from `pending`).
    finished: usize,
}

impl Schedule<'_> {
    fn rescuer(&self) -> Option<&Arc<dyn Rescuer>> {
        self.rescuer.as_ref().map(|r| &r.0)
    }

    fn done(&mut self, w: &Watched) {
        release(self.rescuer(), w);
        self.finished += 1;
    }

    fn recovered(&self, dest: SocketAddr) {
        let b = &self.shared.breaker;
        if b.recovered(dest, b.now_ms()) {
            self.shared.stats.inc(Counter::BlackHoleRecovered);
            tracing::info!("envoy-smc: {dest} answers SMC again; back on SMC");
        }
    }

    /// Acts on a look at `w`; returns `w` when it must be looked at again.
    fn handle(&mut self, w: Watched, seen: Look, now: Instant) -> Option<Watched> {
        match seen {
            Look::Connected => {
                self.recovered(w.dest);
                self.done(&w);
                None
            }
            Look::Gone => {
                self.done(&w);
                None
            }
            Look::Wait => Some(w),
            Look::Stalled => {
                if self.probes.verdict(w.dest, now).is_none() {
                    self.probes.request(w.dest, now);
                }
                self.stalled.entry(w.dest).or_default().push(w);
                None
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        // 1. Connects that just reached `detect_after`.
        while self
            .young
            .front()
            .is_some_and(|w| w.started + self.detect_after <= now)
        {
            let Some(w) = self.young.pop_front() else {
                break;
            };
            let seen = look(&w, self.detect_after);
            if let Some(w) = self.handle(w, seen, now) {
                self.again.push(w);
            }
        }
        // 2. Younger connects to a held destination (its probe connection): a recovery shows
        //    at once, even for a connection that is over before `detect_after`.
        if self.shared.breaker.held() > 0 {
            let mut young = std::mem::take(&mut self.young);
            young.retain(|w| {
                if !self.shared.breaker.is_held(w.dest) {
                    return true;
                }
                match look(w, self.detect_after) {
                    Look::Connected | Look::Gone => {
                        self.recovered(w.dest);
                        self.done(w);
                        false
                    }
                    _ => true,
                }
            });
            self.young = young;
        }
        // 3. Connects that needed another look.
        for w in std::mem::take(&mut self.again) {
            let seen = look(&w, self.detect_after);
            if let Some(w) = self.handle(w, seen, now) {
                self.again.push(w);
            }
        }
        // 4. Stalled groups whose destination has a verdict.
        let decided: Vec<(SocketAddr, bool)> = self
            .stalled
            .keys()
            .filter_map(|&d| self.probes.verdict(d, now).map(|works| (d, works)))
            .collect();
        for (dest, works) in decided {
            if let Some(group) = self.stalled.remove(&dest) {
                self.judge(dest, works, group);
            }
        }
        let started = self.probes.started();
        if started > self.probes_counted {
            self.shared
                .stats
                .add(Counter::TcpProbes, started - self.probes_counted);
            self.probes_counted = started;
        }
    }

    /// The verdict for `dest` came: trip and rescue when plain TCP works and a connect of the
    /// group is still sending SYNs (looked at again after the probe: one that got through
    /// meanwhile was a slow path, not a black hole); else let the group go.
    fn judge(&mut self, dest: SocketAddr, tcp_works: bool, group: Vec<Watched>) {
        let (stuck, through): (Vec<Watched>, Vec<Watched>) =
            group.into_iter().partition(still_sending_syns);
        let now = Instant::now();
        for w in through {
            let seen = look(&w, self.detect_after);
            if let Some(w) = self.handle(w, seen, now) {
                self.again.push(w);
            }
        }
        if !tcp_works {
            for w in &stuck {
                self.shared.stats.inc(Counter::BlackHoleNotProven);
                self.done(w);
            }
            return;
        }
        if stuck.is_empty() {
            return;
        }
        let b = &self.shared.breaker;
        let was_held = b.is_held(dest);
        let hold = b.trip(dest, b.now_ms());
        if !was_held {
            self.shared.stats.inc(Counter::BlackHoleTripped);
            tracing::warn!(
                "envoy-smc: {dest} drops SYNs carrying SMC's TCP option while plain TCP works; TCP for {} s",
                hold.as_secs()
            );
        }
        for w in &stuck {
            self.rescue(w);
            self.finished += 1;
        }
    }

    fn rescue(&self, w: &Watched) {
        let stats = &self.shared.stats;
        match (w.rescuable, self.rescuer()) {
            (true, Some(r)) => match r.rescue(&w.connect()) {
                RescueOutcome::Moved => {
                    stats.inc(Counter::BlackHoleRescued);
                    tracing::info!(
                        "envoy-smc: connect on fd {} to {} moved to TCP in flight",
                        w.fd,
                        w.dest
                    );
                }
                RescueOutcome::Failed => stats.inc(Counter::BlackHoleRescueFailed),
                RescueOutcome::Handed => {}
            },
            // Nobody can rescue it: it fails at the program's connect timeout, like before.
            _ => stats.inc(Counter::BlackHoleRescueFailed),
        }
    }

    /// When the thread must look next (`None`: nothing to wait for but new connects).
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if !self.again.is_empty() || self.shared.breaker.held() > 0 || !self.stalled.is_empty() {
            at(now + TICK);
        }
        if let Some(w) = self.young.front() {
            at(w.started + self.detect_after);
        }
        if let Some(d) = self.probes.next_deadline() {
            at(d);
        }
        wake
    }

    fn release_all(&mut self) {
        let all: Vec<Watched> = self
            .young
            .drain(..)
            .chain(self.again.drain(..))
            .chain(self.stalled.drain().flat_map(|(_, g)| g))
            .chain(self.shared.inbox.take_all())
            .collect();
        for w in &all {
            release(self.rescuer(), w);
        }
    }
}

fn run(shared: &Shared) {
    let settings = *shared.breaker.settings();
    let mut s = Schedule {
        shared,
        rescuer: None,
        detect_after: Duration::from_millis(u64::from(settings.detect_after_ms)),
        young: VecDeque::new(),
        again: Vec::new(),
        stalled: HashMap::new(),
        probes: Probes::new(Duration::from_millis(u64::from(settings.probe_timeout_ms))),
        probes_counted: 0,
        finished: 0,
    };
    loop {
        s.rescuer = shared.rescuer.load_full();
        if shared.stop.load(Ordering::Acquire) {
            s.release_all();
            return;
        }
        s.young.extend(shared.inbox.take_all());
        let now = Instant::now();
        s.tick(now);
        shared
            .pending
            .fetch_sub(std::mem::take(&mut s.finished), Ordering::AcqRel);
        shared.publisher.publish_if_changed(&shared.breaker);
        match s.next_wake(now) {
            _ if s.probes.busy() => {
                // Wait on the probes' sockets (never longer than a tick, so a stop is seen).
                let wait = s
                    .next_wake(now)
                    .map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
                    .min(TICK);
                s.probes.wait(wait);
            }
            Some(t) => std::thread::park_timeout(t.saturating_duration_since(Instant::now())),
            // Only connects still in the inbox, or none: `watch` unparks when one arrives.
            None if shared.pending.load(Ordering::Acquire) > 0 => std::thread::park_timeout(TICK),
            None => std::thread::park(),
        }
    }
}
