//! Per-destination memory of black-holed paths: a fixed-size, lock-free table.
//!
//! Each slot is two atomic words: the destination's 64-bit hash, and its state packed with 16
//! check bits of that hash, so a reader that races a slot being reused for another destination
//! sees a mismatch and treats the slot as empty. Reads (every SMC connect decision) are a hash and
//! a few atomic loads (a search stops at the first empty slot), at most `WINDOWS * WAYS`; with
//! nothing held anywhere they are a single load. Writes (trip, probe, recover) are rare and use
//! compare-and-swap. Memory is bounded by `max_destinations`; when both windows of a destination
//! are full the entry that expires first is forgotten.
//!
//! The hash is keyed per process ([`RandomState`]): nobody can compute in advance which
//! destinations share a window and evict a held entry. Slots live in chunks of [`CHUNK`],
//! allocated the first time a destination lands in one, so a large `max_destinations` costs
//! memory only as destinations are remembered. Nothing here takes a lock (a process that forks
//! while another thread is inside the table cannot leave a lock held in the child, and a signal
//! handler that lands in the middle of an update cannot wait on the thread it interrupted).
//!
//! Why it is lock-free: every slot word changes by a single atomic store, swap or
//! compare-and-swap, and a chunk is installed by one compare-and-swap of a null pointer
//! ([`OnceBox`]: every thread that finds it missing builds one, the first to install it wins, the
//! others drop theirs). No thread ever waits for another to finish anything.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use once_cell::race::OnceBox;

use crate::config::AdaptiveSettings;

/// Slots in one window of a destination.
const WAYS: usize = 8;
/// Windows per destination: the second, at an independent place, takes over when the first is
/// full. One window of 8 overflowed in a third of the runs that remembered 8,000 destinations in
/// 32,768 slots, forgetting a held destination long before `max_destinations`.
const WINDOWS: usize = 2;
/// Slots allocated together.
const CHUNK: usize = 64;

const UNTIL_BITS: u32 = 40;
const UNTIL_MASK: u64 = (1 << UNTIL_BITS) - 1;
const PHASE_SHIFT: u32 = 40;
const STRIKES_SHIFT: u32 = 43;
const CHECK_SHIFT: u32 = 48;

/// Where a remembered destination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not held (recovered); strikes are remembered so a repeat offence holds longer.
    Closed = 0,
    /// Held on TCP until `until`.
    Open = 1,
    /// One connection is trying SMC again; the others stay TCP until it reports or `until`.
    Probing = 2,
}

/// What the table says for one connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Use SMC.
    Smc,
    /// Use SMC: this connection is the one probe of a held destination.
    Probe,
    /// Stay on TCP: the destination is held.
    Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    strikes: u8,
    /// Milliseconds since the table's epoch.
    until: u64,
}

impl State {
    fn pack(self, check: u64) -> u64 {
        (check << CHECK_SHIFT)
            | (u64::from(self.strikes.min(31)) << STRIKES_SHIFT)
            | ((self.phase as u64) << PHASE_SHIFT)
            | (self.until & UNTIL_MASK)
    }

    fn unpack(word: u64) -> (u64, State) {
        let phase = match (word >> PHASE_SHIFT) & 7 {
            1 => Phase::Open,
            2 => Phase::Probing,
            _ => Phase::Closed,
        };
        let state = State {
            phase,
            strikes: ((word >> STRIKES_SHIFT) & 31) as u8,
            until: word & UNTIL_MASK,
        };
        (word >> CHECK_SHIFT, state)
    }
}

/// A slot's destination and the time its phase began (ms since the epoch).
type Label = (SocketAddr, u64);

#[derive(Default)]
struct Slot {
    key: AtomicU64,
    state: AtomicU64,
    /// The address and phase start, for status only (never read on the connect path).
    label: ArcSwapOption<Label>,
}

/// A remembered destination, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub destination: SocketAddr,
    pub phase: Phase,
    pub strikes: u8,
    /// When the current phase began (wall clock).
    pub since: SystemTime,
    /// When the hold-down ends or the probe expires (wall clock); `since` for Closed.
    pub until: SystemTime,
}

/// The black-hole breaker of one runtime.
pub struct Breaker {
    settings: AdaptiveSettings,
    /// `mask + 1` slots in chunks of [`CHUNK`]; a chunk not allocated yet holds only empty slots.
    chunks: Box<[OnceBox<[Slot; CHUNK]>]>,
    hasher: std::collections::hash_map::RandomState,
    mask: usize,
    /// Entries currently Open or Probing: zero makes every read a single load.
    held: AtomicUsize,
    /// State changes so far (see [`Breaker::changes`]).
    changes: AtomicU64,
    epoch: Instant,
    wall_epoch: SystemTime,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("slots", &(self.mask + 1))
            .field("held", &self.held)
            .finish()
    }
}

impl Breaker {
    pub fn new(settings: AdaptiveSettings) -> Breaker {
        // Four slots per destination to remember: at most a quarter full, two 8-slot windows
        // per destination practically never both fill up (see WINDOWS), so entries are forgotten
        // only beyond `max_destinations`.
        let n = (settings
            .max_destinations
            .clamp(CHUNK as u32, crate::config::limits::MAX_DESTINATIONS)
            as usize
            * 4)
        .next_power_of_two();
        Breaker {
            settings,
            chunks: (0..n / CHUNK).map(|_| OnceBox::new()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            mask: n - 1,
            held: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
            epoch: Instant::now(),
            wall_epoch: SystemTime::now(),
        }
    }

    pub fn settings(&self) -> &AdaptiveSettings {
        &self.settings
    }

    /// Milliseconds since the table's epoch (the clock every state uses).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The 64-bit key of a destination (never 0, which marks an empty slot).
    fn key_of(&self, dest: SocketAddr) -> u64 {
        let ip = match crate::config::canonical(dest.ip()) {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        self.hasher.hash_one((ip, dest.port())).max(1)
    }

    /// Slot `i` if its chunk exists.
    fn slot(&self, i: usize) -> Option<&Slot> {
        self.chunks[i / CHUNK].get().map(|chunk| &chunk[i % CHUNK])
    }

    /// Slot `i`, allocating its chunk if needed (one compare-and-swap; see the module doc).
    fn slot_or_alloc(&self, i: usize) -> &Slot {
        let chunk = self.chunks[i / CHUNK]
            .get_or_init(|| Box::new(std::array::from_fn(|_| Slot::default())));
        &chunk[i % CHUNK]
    }

    /// The slots `key` may occupy, in the order [`Breaker::claim`] takes them: its first
    /// window, then its second (from the other half of the hash).
    fn slots_of(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        [key, key.rotate_left(32)]
            .into_iter()
            .take(WINDOWS)
            .flat_map(move |start| {
                (0..WAYS).map(move |i| (start as usize).wrapping_add(i) & self.mask)
            })
    }

    fn find(&self, key: u64) -> Option<usize> {
        for i in self.slots_of(key) {
            match self.slot(i).map(|s| s.key.load(Ordering::Acquire)) {
                Some(k) if k == key => return Some(i),
                // A slot never becomes empty again once claimed (eviction replaces its key), and
                // `claim` takes the first empty slot in this order: `key` is not further on.
                None | Some(0) => return None,
                Some(_) => {}
            }
        }
        None
    }

    /// The state of `key` in slot `i`, if the slot still holds it.
    fn state_at(&self, i: usize, key: u64) -> Option<(u64, State)> {
        let slot = self.slot(i)?;
        let word = slot.state.load(Ordering::Acquire);
        let (check, state) = State::unpack(word);
        (check == key >> CHECK_SHIFT && slot.key.load(Ordering::Acquire) == key)
            .then_some((word, state))
    }

    /// Whether `dest` is held or probing now (read-only; for the watchdog).
    pub fn is_held(&self, dest: SocketAddr) -> bool {
        if self.held.load(Ordering::Acquire) == 0 {
            return false;
        }
        let key = self.key_of(dest);
        self.find(key)
            .and_then(|i| self.state_at(i, key))
            .is_some_and(|(_, s)| s.phase != Phase::Closed)
    }

    /// May a connect to `dest` use SMC now? Lock-free; no allocation.
    pub fn admit(&self, dest: SocketAddr, now_ms: u64) -> Admission {
        if self.held.load(Ordering::Acquire) == 0 {
            return Admission::Smc;
        }
        let key = self.key_of(dest);
        let Some(i) = self.find(key) else {
            return Admission::Smc;
        };
        let Some((word, state)) = self.state_at(i, key) else {
            return Admission::Smc;
        };
        match state.phase {
            Phase::Closed => Admission::Smc,
            Phase::Open | Phase::Probing if now_ms < state.until => Admission::Hold,
            // Hold-down over, or the last probe never reported: one connection may try SMC.
            Phase::Open | Phase::Probing => {
                let probe_window = (u64::from(self.settings.detect_after_ms)
                    + u64::from(self.settings.probe_timeout_ms))
                    * 4;
                let next = State {
                    phase: Phase::Probing,
                    until: now_ms + probe_window,
                    ..state
                };
                match self.slot_or_alloc(i).state.compare_exchange(
                    word,
                    next.pack(key >> CHECK_SHIFT),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // Counted without the label lock: this is the connect path.
                        self.changes.fetch_add(1, Ordering::AcqRel);
                        Admission::Probe
                    }
                    Err(_) => Admission::Hold,
                }
            }
        }
    }

    /// `dest` was proven black-holed: hold it on TCP, longer for each repeat offence. Returns the
    /// hold-down.
    pub fn trip(&self, dest: SocketAddr, now_ms: u64) -> Duration {
        let key = self.key_of(dest);
        let check = key >> CHECK_SHIFT;
        let i = match self.find(key) {
            Some(i) => i,
            None => self.claim(key, now_ms),
        };
        let slot = self.slot_or_alloc(i);
        loop {
            let word = slot.state.load(Ordering::Acquire);
            let (old_check, old) = State::unpack(word);
            let mine = old_check == check && word != 0;
            // Held already (other connects that stalled in the same episode): one offence, not
            // several — only a failed probe or a new episode adds a strike.
            if mine && old.phase == Phase::Open && now_ms < old.until {
                self.label(i, dest, None);
                return Duration::from_millis(old.until - now_ms);
            }
            // A destination clean for longer than the longest hold-down starts over.
            let strikes = if mine
                && now_ms.saturating_sub(old.until) < u64::from(self.settings.max_hold_down_ms)
            {
                old.strikes.saturating_add(1).min(31)
            } else {
                1
            };
            let hold = (u64::from(self.settings.hold_down_ms) << (strikes - 1).min(20))
                .min(u64::from(self.settings.max_hold_down_ms));
            let next = State {
                phase: Phase::Open,
                strikes,
                until: now_ms + hold,
            };
            if slot
                .state
                .compare_exchange(word, next.pack(check), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if !(mine && old.phase != Phase::Closed) {
                    self.held.fetch_add(1, Ordering::AcqRel);
                }
                self.label(i, dest, Some(now_ms));
                return Duration::from_millis(hold);
            }
        }
    }

    /// A connect to `dest` succeeded over SMC: a held destination has recovered. Returns whether
    /// it was held.
    pub fn recovered(&self, dest: SocketAddr, now_ms: u64) -> bool {
        if self.held.load(Ordering::Acquire) == 0 {
            return false;
        }
        let key = self.key_of(dest);
        let Some(i) = self.find(key) else {
            return false;
        };
        let Some((word, state)) = self.state_at(i, key) else {
            return false;
        };
        if state.phase == Phase::Closed {
            return false;
        }
        let next = State {
            phase: Phase::Closed,
            strikes: state.strikes,
            until: now_ms,
        };
        if self
            .slot_or_alloc(i)
            .state
            .compare_exchange(
                word,
                next.pack(key >> CHECK_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.held.fetch_sub(1, Ordering::AcqRel);
            self.label(i, dest, Some(now_ms));
            return true;
        }
        false
    }

    /// Names slot `i` for status output; `since` starts a new phase (`None` keeps the current
    /// start). Counts a change for [`Breaker::changes`].
    fn label(&self, i: usize, dest: SocketAddr, since: Option<u64>) {
        let slot = self.slot_or_alloc(i);
        let old = slot.label.load_full();
        let since = since.or(old.filter(|l| l.0 == dest).map(|l| l.1));
        slot.label.store(Some(Arc::new((
            dest,
            since.unwrap_or_else(|| self.now_ms()),
        ))));
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// A number that grows whenever a destination changes state (tells a publisher when to
    /// write the table again). A probe admitted on the connect path changes it too.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Takes a slot for `key`: the first empty one of its windows, else the one whose state ends
    /// first.
    fn claim(&self, key: u64, now_ms: u64) -> usize {
        for i in self.slots_of(key) {
            let slot = self.slot_or_alloc(i);
            if slot
                .key
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return i;
            }
            if slot.key.load(Ordering::Acquire) == key {
                return i;
            }
        }
        // Evict: prefer a closed entry, then the one that expires first.
        let victim = self
            .slots_of(key)
            .min_by_key(|&i| {
                let (_, s) = State::unpack(self.slot_or_alloc(i).state.load(Ordering::Acquire));
                (s.phase != Phase::Closed && s.until > now_ms, s.until)
            })
            .unwrap_or(key as usize & self.mask);
        let slot = self.slot_or_alloc(victim);
        let (_, old) = State::unpack(slot.state.swap(0, Ordering::AcqRel));
        if old.phase != Phase::Closed {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        slot.key.store(key, Ordering::Release);
        victim
    }

    /// Every remembered destination (for status output).
    pub fn entries(&self) -> Vec<Entry> {
        let wall = |ms: u64| self.wall_epoch + Duration::from_millis(ms);
        let mut out = Vec::new();
        let allocated = (0..self.chunks.len())
            .filter(|&c| self.chunks[c].get().is_some())
            .flat_map(|c| c * CHUNK..(c + 1) * CHUNK);
        for i in allocated {
            let Some(slot) = self.slot(i) else {
                continue;
            };
            let key = slot.key.load(Ordering::Acquire);
            if key == 0 {
                continue;
            }
            let Some((_, state)) = self.state_at(i, key) else {
                continue;
            };
            let Some(&(destination, since)) = slot.label.load().as_deref() else {
                continue;
            };
            if self.key_of(destination) != key {
                continue;
            }
            out.push(Entry {
                destination,
                phase: state.phase,
                strikes: state.strikes,
                since: wall(since),
                until: wall(state.until),
            });
        }
        out
    }

    /// Destinations currently held or probing.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_destinations: u32) -> AdaptiveSettings {
        AdaptiveSettings {
            enabled: true,
            detect_after_ms: 1000,
            probe_timeout_ms: 1000,
            hold_down_ms: 60_000,
            max_hold_down_ms: 600_000,
            max_destinations,
        }
    }

    /// More destinations than one window holds, all starting at the same slot (the hash is keyed
    /// per process, so they are searched for): every one stays held, none is forgotten while the
    /// table is far below `max_destinations`.
    #[test]
    fn a_full_window_forgets_nothing_below_max_destinations() {
        let b = Breaker::new(settings(64));
        let crowd = WAYS + 1;
        let mut by_start: std::collections::HashMap<usize, Vec<SocketAddr>> = Default::default();
        let same_start = (0..1_000_000u32)
            .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 443)))
            .find_map(|d| {
                let v = by_start.entry(b.key_of(d) as usize & b.mask).or_default();
                v.push(d);
                (v.len() == crowd).then(|| v.clone())
            })
            .expect("some window start is shared by 9 of a million destinations");
        for &d in &same_start {
            b.trip(d, 0);
        }
        assert_eq!(b.held(), crowd, "a held destination was forgotten");
        for &d in &same_start {
            assert_eq!(b.admit(d, 1), Admission::Hold, "{d} is no longer held");
        }
        assert_eq!(b.entries().len(), crowd);
    }
}
