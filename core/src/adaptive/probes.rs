//! "Does plain TCP work to this destination?": the watchdog's probes, run concurrently, with
//! each answer remembered for a while.
//!
//! A stalled SMC connect is only a black hole if a plain TCP connect to the same destination
//! succeeds. Many connects may stall at once (a destination that is simply down stalls every
//! connect to it), so the question is asked per destination, not per connect: one probe per
//! destination at a time, at most [`MAX_RUNNING`] destinations at once (the rest wait in line),
//! and the verdict is remembered — "not proven" for [`NOT_PROVEN_TTL`], "TCP works" for
//! [`PROVEN_TTL`] — so the connects that stall next are judged without another probe.
//! Nothing here blocks: the watchdog waits on the running probes' sockets between its ticks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::detect::{ProbeOutcome, TcpProbe};

/// Probes in flight at once.
pub const MAX_RUNNING: usize = 32;
/// How long "plain TCP fails too" is remembered for a destination.
pub const NOT_PROVEN_TTL: Duration = Duration::from_secs(10);
/// How long "plain TCP works" is remembered (the connects of the same episode that stall a
/// little later are judged by it).
pub const PROVEN_TTL: Duration = Duration::from_secs(5);
/// Most verdicts remembered (older ones are dropped first when full).
const MAX_CACHED: usize = 4096;

struct Running {
    dest: SocketAddr,
    probe: TcpProbe,
    deadline: Instant,
}

/// The probes of one watchdog and their remembered verdicts.
pub struct Probes {
    timeout: Duration,
    running: Vec<Running>,
    waiting: VecDeque<SocketAddr>,
    /// dest -> (plain TCP works, remembered until).
    verdicts: HashMap<SocketAddr, (bool, Instant)>,
    started: u64,
}

impl Probes {
    /// Probes that give up after `timeout`.
    pub fn new(timeout: Duration) -> Probes {
        Probes {
            timeout,
            running: Vec::new(),
            waiting: VecDeque::new(),
            verdicts: HashMap::new(),
            started: 0,
        }
    }

    /// The remembered verdict for `dest` (true: plain TCP works), if still fresh.
    pub fn verdict(&self, dest: SocketAddr, now: Instant) -> Option<bool> {
        self.verdicts
            .get(&dest)
            .filter(|(_, until)| now < *until)
            .map(|(works, _)| *works)
    }

    /// Asks about `dest` unless it is being asked about already. Returns whether a new probe
    /// was started or queued.
    pub fn request(&mut self, dest: SocketAddr, now: Instant) -> bool {
        if self.running.iter().any(|r| r.dest == dest) || self.waiting.contains(&dest) {
            return false;
        }
        self.waiting.push_back(dest);
        self.start_waiting(now);
        true
    }

    /// Probes started so far.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Whether any probe is running or waiting.
    pub fn busy(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// The earliest moment a running probe gives up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.running.iter().map(|r| r.deadline).min()
    }

    fn remember(&mut self, dest: SocketAddr, works: bool, now: Instant) {
        if self.verdicts.len() >= MAX_CACHED {
            self.verdicts.retain(|_, (_, until)| *until > now);
            if self.verdicts.len() >= MAX_CACHED {
                self.verdicts.clear();
            }
        }
        let ttl = if works { PROVEN_TTL } else { NOT_PROVEN_TTL };
        self.verdicts.insert(dest, (works, now + ttl));
    }

    fn start_waiting(&mut self, now: Instant) -> Vec<(SocketAddr, bool)> {
        let mut known = Vec::new();
        while self.running.len() < MAX_RUNNING {
            let Some(dest) = self.waiting.pop_front() else {
                break;
            };
            self.started += 1;
            match TcpProbe::start(dest) {
                Ok(probe) => self.running.push(Running {
                    dest,
                    probe,
                    deadline: now + self.timeout,
                }),
                Err(outcome) => {
                    let works = outcome == ProbeOutcome::Connected;
                    self.remember(dest, works, now);
                    known.push((dest, works));
                }
            }
        }
        known
    }

    /// Waits up to `timeout` for running probes to finish (returns at once when none runs) and
    /// returns every verdict reached (finished, timed out, or known at start), remembered too.
    pub fn wait(&mut self, timeout: Duration) -> Vec<(SocketAddr, bool)> {
        let mut done = Vec::new();
        if !self.running.is_empty() {
            let refs: Vec<&TcpProbe> = self.running.iter().map(|r| &r.probe).collect();
            let finished = TcpProbe::poll_many(&refs, timeout);
            let mut finished_at: Vec<(usize, bool)> = finished
                .into_iter()
                .map(|(i, o)| (i, o == ProbeOutcome::Connected))
                .collect();
            let now = Instant::now();
            for (i, r) in self.running.iter().enumerate() {
                if now >= r.deadline && !finished_at.iter().any(|(j, _)| *j == i) {
                    finished_at.push((i, false));
                }
            }
            // Remove from the back so indexes stay valid.
            finished_at.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, works) in finished_at {
                let r = self.running.swap_remove(i);
                self.remember(r.dest, works, now);
                done.push((r.dest, works));
            }
        }
        done.extend(self.start_waiting(Instant::now()));
        done
    }
}
