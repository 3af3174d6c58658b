//! Per-fd state, indexed by fd number.
//!
//! A two-level table: a static array of chunk pointers, each chunk 1024 slots, allocated the first
//! time an fd in its range needs state and never freed. An fd without state costs one atomic load
//! of the chunk pointer and, if the chunk exists, one of the slot's word: that is all an
//! untracked socket (an accepted connection, a socket envoy-smc decided about already, a file)
//! pays in `close`, `setsockopt`, `epoll_ctl`, `connect`, `listen`.
//!
//! A slot is three atomics:
//! - `word`: [`TRACKED`] (a socket envoy-smc may still make SMC), [`RESCUABLE`] (an SMC connect
//!   in flight that the adaptive-fallback watchdog may hand back for a rescue), [`EPOLL_SET`]
//!   (this fd is an epoll instance in which a tracked socket is registered), and [`BUSY`]: a
//!   thread owns the slot's record right now ([`Held`]);
//! - `epoll_gen`: bumped when the fd, as an epoll instance, goes away, so that a registration
//!   recorded against an epoll fd number is never replayed into a later epoll instance that
//!   happens to get the same number;
//! - `record`: the tracked socket's state, a [`Tracked`] that only the `BUSY` owner touches.
//!
//! `BUSY` is the slot's lock, and it is held for a whole operation: a decision before
//! `connect()`/`listen()` (the socket may be replaced under the fd), a rescue of a stuck connect
//! (from the watchdog thread), a `setsockopt`/`epoll_ctl` the program makes on the fd (so that
//! what it sets lands on the socket that ends up under the fd, and is recorded). `close`,
//! `dup2`/`dup3` onto the fd and `close_range` over it wait for `BUSY` to clear (a futex on the
//! word) before the fd goes away, so no replacement or rescue can land on an fd number the
//! program closed and reused.
//!
//! Signal safety: the close path (`forget`, `overwrite`) takes no lock a signal handler could
//! meet and allocates nothing. A handler that interrupts a thread outside the library and closes
//! a tracked fd at worst waits for another thread's `BUSY` section (which never waits on the
//! program); a thread inside the library holds the re-entrancy guard, so a handler on it skips
//! the table (see `lib.rs`). Records leave a slot by being pushed onto a lock-free list of
//! retired records and are freed later, on the `socket()` path ([`track`]).

use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, Ordering};

use envoy_smc_core::policy::SocketFacts;
use envoy_smc_core::runtime::Watched;

/// The fd is a socket envoy-smc is still deciding about.
pub const TRACKED: u32 = 1;
/// The fd is an epoll instance a tracked socket is registered with.
pub const EPOLL_SET: u32 = 2;
/// The fd is an SMC connect in flight, kept for a rescue until the watchdog lets it go.
pub const RESCUABLE: u32 = 4;
/// A thread owns the slot's record (the slot's lock).
const BUSY: u32 = 8;
/// Someone waits for `BUSY` to clear (the owner wakes them).
const WAITERS: u32 = 16;

const CHUNK: usize = 1024;
const CHUNKS: usize = 1 << 14;
/// fds at or above this number are never tracked (they stay plain TCP).
pub const MAX_FD: usize = CHUNK * CHUNKS;

/// An epoll registration of a tracked socket: where it was added and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub epfd: c_int,
    /// `epoll_gen` of the epoll fd's slot when the registration was made.
    pub gen: u32,
    pub events: u32,
    pub data: u64,
}

/// What envoy-smc knows about a socket it may still replace.
#[derive(Debug)]
pub struct Tracked {
    /// The socket's inode when it was opened: the fd number may have been closed and reused
    /// behind envoy-smc's back (raw syscalls, `closefrom`); a mismatch means "not ours".
    pub ino: u64,
    /// What the program did to the socket (facts, flags, options, bound address): all a
    /// replacement needs.
    pub watched: Watched,
    pub regs: Vec<Registration>,
    /// Set once the socket is an SMC connect in flight kept for a rescue.
    pub rescue: Option<Rescue>,
    /// Link in the list of retired records.
    retired_next: *mut Tracked,
}

/// What a rescue of an SMC connect in flight needs beyond the recorded options and epoll
/// registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescue {
    /// The watched socket's cookie (the fd is that socket only while its cookie says so).
    pub cookie: u64,
    /// The source address the program bound before connecting, if it chose an IP address.
    pub source: Option<std::net::SocketAddr>,
}

impl Tracked {
    pub fn new(ino: u64, watched: Watched) -> Tracked {
        Tracked {
            ino,
            watched,
            regs: Vec::new(),
            rescue: None,
            retired_next: ptr::null_mut(),
        }
    }

    /// Whether every option set so far can be given to a new socket.
    pub fn options_carried(&self) -> bool {
        self.watched.record.options_carried()
            && !self.watched.facts.has(SocketFacts::OPTIONS_NOT_CARRIED)
    }

    /// Records a successful `epoll_ctl` on this socket.
    pub fn record_epoll(&mut self, op: c_int, epfd: c_int, gen: u32, events: u32, data: u64) {
        let pos = self.regs.iter().position(|r| r.epfd == epfd);
        match (op, pos) {
            (libc::EPOLL_CTL_ADD, Some(i)) | (libc::EPOLL_CTL_MOD, Some(i)) => {
                self.regs[i] = Registration {
                    epfd,
                    gen,
                    events,
                    data,
                }
            }
            (libc::EPOLL_CTL_ADD, None) => self.regs.push(Registration {
                epfd,
                gen,
                events,
                data,
            }),
            (libc::EPOLL_CTL_DEL, Some(i)) => {
                self.regs.swap_remove(i);
            }
            _ => {}
        }
    }
}

pub struct Slot {
    word: AtomicU32,
    epoll_gen: AtomicU32,
    record: AtomicPtr<Tracked>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            word: AtomicU32::new(0),
            epoll_gen: AtomicU32::new(0),
            record: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

static TABLE: [AtomicPtr<Slot>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];
static TRACKED_NOW: AtomicI64 = AtomicI64::new(0);
static RESCUABLE_NOW: AtomicI64 = AtomicI64::new(0);
/// Records taken out of slots, freed on the next `track` (never on the close path).
static RETIRED: AtomicPtr<Tracked> = AtomicPtr::new(ptr::null_mut());

fn index(fd: c_int) -> Option<(usize, usize)> {
    let fd = usize::try_from(fd).ok()?;
    (fd < MAX_FD).then_some((fd / CHUNK, fd % CHUNK))
}

/// The slot of `fd` if its chunk exists.
fn slot(fd: c_int) -> Option<&'static Slot> {
    let (c, i) = index(fd)?;
    let chunk = TABLE[c].load(Ordering::Acquire);
    // SAFETY: a non-null chunk pointer points at CHUNK slots that are never freed.
    (!chunk.is_null()).then(|| unsafe { &*chunk.add(i) })
}

/// The slot of `fd`, allocating its chunk if needed. `None` for fds out of range.
fn slot_or_alloc(fd: c_int) -> Option<&'static Slot> {
    let (c, i) = index(fd)?;
    let mut chunk = TABLE[c].load(Ordering::Acquire);
    if chunk.is_null() {
        let fresh: Box<[Slot]> = (0..CHUNK).map(|_| Slot::new()).collect();
        let fresh = Box::into_raw(fresh).cast::<Slot>();
        match TABLE[c].compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => chunk = fresh,
            Err(other) => {
                // SAFETY: `fresh` came from Box::into_raw of a CHUNK-long slice just above and
                // was never shared.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(fresh, CHUNK)) });
                chunk = other;
            }
        }
    }
    // SAFETY: as in `slot`.
    Some(unsafe { &*chunk.add(i) })
}

fn futex(word: &AtomicU32, op: c_int, val: u32) {
    // SAFETY: `word` is a valid, aligned u32 for the call's duration; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            ptr::null::<libc::timespec>(),
        )
    };
}

/// Exclusive use of a slot's record (the slot's `BUSY` bit), released on drop.
pub struct Held {
    slot: &'static Slot,
}

impl Held {
    /// The record of the slot, if there is one.
    pub fn tracked(&mut self) -> Option<&mut Tracked> {
        let p = self.slot.record.load(Ordering::Acquire);
        // SAFETY: only the BUSY owner dereferences the record, and we are it.
        (!p.is_null()).then(|| unsafe { &mut *p })
    }

    /// Takes the record out of the slot, clearing `TRACKED` and `RESCUABLE`.
    fn take(&mut self) -> Option<Box<Tracked>> {
        let p = self.slot.record.swap(ptr::null_mut(), Ordering::AcqRel);
        let was = self
            .slot
            .word
            .fetch_and(!(TRACKED | RESCUABLE), Ordering::AcqRel);
        if p.is_null() {
            return None;
        }
        gauge(was).fetch_sub(1, Ordering::Relaxed);
        // SAFETY: records in slots come from Box::into_raw in `put`; the swap made it ours.
        Some(unsafe { Box::from_raw(p) })
    }

    /// Puts `t` in the slot with state `flag` (`TRACKED` or `RESCUABLE`); the slot must be empty.
    fn put(&mut self, t: Box<Tracked>, flag: u32) {
        gauge(flag).fetch_add(1, Ordering::Relaxed);
        self.slot.record.store(Box::into_raw(t), Ordering::Release);
        self.slot.word.fetch_or(flag, Ordering::AcqRel);
    }

    /// Drops the record (if any) without freeing memory here: it is retired.
    fn clear(&mut self) {
        if let Some(t) = self.take() {
            retire(t);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let was = self
            .slot
            .word
            .fetch_and(!(BUSY | WAITERS), Ordering::AcqRel);
        if was & WAITERS != 0 {
            futex(&self.slot.word, libc::FUTEX_WAKE, i32::MAX as u32);
        }
    }
}

/// The gauge that counts records in the state `word` says: kept for a rescue, or tracked.
fn gauge(word: u32) -> &'static AtomicI64 {
    if word & RESCUABLE != 0 {
        &RESCUABLE_NOW
    } else {
        &TRACKED_NOW
    }
}

/// Takes `slot`'s `BUSY` bit if `want(word)` holds (checked again after every wait), calling
/// `wait(word)` each time another thread holds it. `None` when `want` says there is nothing to
/// hold, or when `wait` gives up (returns false).
fn lock(
    slot: &'static Slot,
    want: impl Fn(u32) -> bool,
    mut wait: impl FnMut(u32) -> bool,
) -> Option<Held> {
    loop {
        let w = slot.word.load(Ordering::Acquire);
        if !want(w) {
            return None;
        }
        if w & BUSY == 0 {
            if slot
                .word
                .compare_exchange_weak(w, w | BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(Held { slot });
            }
            continue;
        }
        if !wait(w) {
            return None;
        }
    }
}

/// Takes `slot`'s `BUSY` bit, sleeping on the word while another thread holds it, if
/// `want(word)` holds. `None` when `want` says there is nothing to hold.
fn acquire(slot: &'static Slot, want: impl Fn(u32) -> bool) -> Option<Held> {
    lock(slot, want, |w| {
        // Announce the waiter first, so the owner knows to wake us; a lost race just retries.
        if w & WAITERS != 0
            || slot
                .word
                .compare_exchange_weak(w, w | WAITERS, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            futex(&slot.word, libc::FUTEX_WAIT, w | WAITERS);
        }
        true
    })
}

/// Takes `BUSY` on `slot` only if it is free within about `tries` short waits (for a second
/// slot taken while one is held: never waits long, so no two threads can wait on each other).
fn try_acquire(slot: &'static Slot, want: impl Fn(u32) -> bool, tries: u32) -> Option<Held> {
    let mut left = tries;
    lock(slot, want, |_| {
        if left == 0 {
            return false;
        }
        left -= 1;
        std::thread::yield_now();
        true
    })
}

fn has_state(w: u32) -> bool {
    w & (TRACKED | RESCUABLE | EPOLL_SET) != 0
}

/// Pushes a record onto the retired list (lock-free, no allocation: the close path).
fn retire(t: Box<Tracked>) {
    let p = Box::into_raw(t);
    let mut head = RETIRED.load(Ordering::Relaxed);
    loop {
        // SAFETY: `p` is ours until the compare-and-swap publishes it.
        unsafe { (*p).retired_next = head };
        match RETIRED.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

/// Frees the retired records (not on the close path).
fn reclaim() {
    let mut p = RETIRED.swap(ptr::null_mut(), Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: retired records come from Box::into_raw; the swap made the list ours.
        let t = unsafe { Box::from_raw(p) };
        p = t.retired_next;
    }
}

/// True when envoy-smc holds no state for `fd`: the hooks' fast path.
#[inline]
pub fn quiet(fd: c_int) -> bool {
    slot(fd).is_none_or(|s| s.word.load(Ordering::Acquire) == 0)
}

/// The epoll instance under this slot's fd number is gone (called with the slot held).
fn retire_epoll(slot: &Slot) {
    if slot.word.load(Ordering::Acquire) & EPOLL_SET != 0 {
        slot.epoll_gen.fetch_add(1, Ordering::AcqRel);
        slot.word.fetch_and(!EPOLL_SET, Ordering::AcqRel);
    }
}

/// Starts tracking a socket just opened under `fd` (replacing any stale state of that number).
pub fn track(fd: c_int, tracked: Tracked) {
    reclaim();
    let Some(slot) = slot_or_alloc(fd) else {
        return;
    };
    let Some(mut held) = acquire(slot, |_| true) else {
        return;
    };
    held.clear();
    retire_epoll(slot);
    held.put(Box::new(tracked), TRACKED);
}

/// Drops every state of `fd`: it is being closed or overwritten. Waits while a decision or a
/// rescue holds the slot. No allocation, no lock a signal handler could meet.
pub fn forget(fd: c_int) {
    let Some(slot) = slot(fd) else {
        return;
    };
    if let Some(mut held) = acquire(slot, has_state) {
        held.clear();
        retire_epoll(slot);
    }
}

/// Runs `replace` (the program's `dup2`/`dup3` onto `fd`) with the slot of `fd` held, and drops
/// the state of `fd` only if it succeeded: a failing call leaves the fd, and its state, as they
/// were. Returns what `replace` returned.
pub fn overwrite(fd: c_int, replace: impl FnOnce() -> c_int) -> c_int {
    let Some(mut held) = slot(fd).and_then(|s| acquire(s, has_state)) else {
        return replace();
    };
    let rc = replace();
    if rc >= 0 {
        held.clear();
        retire_epoll(held.slot);
    }
    rc
}

/// Forgets every fd in `first..=last` (close_range).
pub fn forget_range(first: u32, last: u32) {
    let last = (last as usize).min(MAX_FD - 1);
    let mut fd = first as usize;
    while fd <= last {
        let c = fd / CHUNK;
        if TABLE[c].load(Ordering::Acquire).is_null() {
            fd = (c + 1) * CHUNK;
            continue;
        }
        forget(fd as c_int);
        fd += 1;
    }
}

/// Marks `epfd` as an epoll instance holding a tracked socket; returns its generation.
pub fn mark_epoll(epfd: c_int) -> Option<u32> {
    let slot = slot_or_alloc(epfd)?;
    slot.word.fetch_or(EPOLL_SET, Ordering::AcqRel);
    Some(slot.epoll_gen.load(Ordering::Acquire))
}

/// Runs `f` on `reg`'s epoll fd if it is still the epoll instance the registration was made in,
/// holding that fd's slot so the program cannot close it meanwhile. `None` if it is gone, or
/// busy for longer than a moment (the caller holds another slot: it must not wait long).
pub fn with_live_epoll<R>(reg: &Registration, f: impl FnOnce() -> R) -> Option<R> {
    let slot = slot(reg.epfd)?;
    let _held = try_acquire(slot, |w| w & EPOLL_SET != 0, 1000)?;
    (slot.epoll_gen.load(Ordering::Acquire) == reg.gen).then(f)
}

/// Whether `reg` still names the epoll instance it was made in.
#[cfg(test)]
pub fn epoll_alive(reg: &Registration) -> bool {
    slot(reg.epfd).is_some_and(|s| {
        s.word.load(Ordering::Acquire) & EPOLL_SET != 0
            && s.epoll_gen.load(Ordering::Acquire) == reg.gen
    })
}

/// Holds the slot of `fd` while it is tracked or kept for a rescue (waiting for a decision or a
/// rescue in progress to finish): the caller makes the program's call on the fd and records it.
pub fn hold(fd: c_int) -> Option<Held> {
    acquire(slot(fd)?, |w| w & (TRACKED | RESCUABLE) != 0)
}

/// Runs `f` on the state of `fd` (tracked or kept for a rescue), if there is one.
#[cfg(test)]
pub fn with_tracked<R>(fd: c_int, f: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
    hold(fd)?.tracked().map(f)
}

/// Takes the tracked state of `fd` to decide about it: `f` runs with the slot held (a concurrent
/// `close` of the fd waits), and afterwards the fd is no longer tracked — unless `f` hands the
/// state back with its `rescue` set, to be kept for the watchdog.
pub fn settle(fd: c_int, f: impl FnOnce(Tracked) -> Option<Tracked>) {
    let Some(mut held) = slot(fd).and_then(|s| acquire(s, |w| w & TRACKED != 0)) else {
        return; // never tracked, closed meanwhile, or an SMC connect in flight already
    };
    let Some(tracked) = held.take() else {
        return;
    };
    let mut tracked = *tracked;
    tracked.retired_next = ptr::null_mut();
    if let Some(kept) = f(tracked).filter(|t| t.rescue.is_some()) {
        held.put(Box::new(kept), RESCUABLE);
    }
}

/// Runs `f` on the state kept for a rescue of the connect on `fd` whose socket cookie is
/// `cookie`, holding the slot for the whole rescue (the program's `close`/`dup2` of the fd, and
/// its `setsockopt`/`epoll_ctl` on it, wait until `f` is done); the state is dropped afterwards.
/// `None` if nothing is kept for that connect (closed, duplicated, or another socket by now).
pub fn rescue_with<R>(fd: c_int, cookie: u64, f: impl FnOnce(&Tracked) -> R) -> Option<R> {
    let mut held = acquire(slot(fd)?, |w| w & RESCUABLE != 0)?;
    if held
        .tracked()
        .and_then(|t| t.rescue)
        .is_none_or(|r| r.cookie != cookie)
    {
        return None;
    }
    let result = f(held.tracked()?);
    held.clear();
    Some(result)
}

/// Drops the state kept for a rescue of `fd`: for the connect with `cookie`, or (`None`) for
/// whichever connect it is.
pub fn release_rescuable(fd: c_int, cookie: Option<u64>) {
    let Some(mut held) = slot(fd).and_then(|s| acquire(s, |w| w & RESCUABLE != 0)) else {
        return;
    };
    let matches = held
        .tracked()
        .and_then(|t| t.rescue)
        .is_some_and(|r| cookie.is_none_or(|c| c == r.cookie));
    if matches {
        held.clear();
    }
}

/// In a fork child: the threads that held slots are gone, and the watchdog that was to rescue
/// kept connects is the parent's. Frees every held slot (dropping its half-changed record) and
/// drops the records kept for a rescue. Runs single-threaded; no allocation.
pub extern "C" fn after_fork_in_child() {
    for chunk in TABLE.iter() {
        let chunk = chunk.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        for i in 0..CHUNK {
            // SAFETY: a non-null chunk has CHUNK slots that are never freed.
            let slot = unsafe { &*chunk.add(i) };
            let w = slot.word.load(Ordering::Acquire);
            if w & (BUSY | RESCUABLE) == 0 {
                continue;
            }
            slot.word.fetch_and(!(BUSY | WAITERS), Ordering::AcqRel);
            let mut held = Held { slot };
            held.clear();
            std::mem::forget(held); // nothing to release or wake
        }
    }
}

/// Sockets tracked right now (opened, not yet decided or closed).
pub fn tracked_now() -> i64 {
    TRACKED_NOW.load(Ordering::Relaxed)
}

/// SMC connects in flight kept for a rescue right now.
pub fn rescuable_now() -> i64 {
    RESCUABLE_NOW.load(Ordering::Relaxed)
}

/// A watched plain IPv4 socket, for tests.
#[cfg(test)]
pub fn test_watched() -> Watched {
    Watched {
        facts: SocketFacts::default(),
        record: envoy_smc_core::smc::SocketRecord::opened(libc::AF_INET, libc::SOCK_STREAM),
    }
}

/// Tracks a socket (inode `ino`) under `fd` and settles it as an SMC connect in flight whose
/// cookie is `cookie`, kept for a rescue: for tests.
#[cfg(test)]
fn keep_for_rescue(fd: c_int, ino: u64, cookie: u64) {
    track(fd, Tracked::new(ino, test_watched()));
    settle(fd, |mut t| {
        t.rescue = Some(Rescue {
            cookie,
            source: None,
        });
        Some(t)
    });
}

/// Starts a thread that rescues the connect kept on `fd` (with `cookie`) and holds the slot
/// until the returned flag is set; returns once the rescue holds it. The thread returns when the
/// rescue ended (`None` if there was nothing to rescue). For tests.
#[cfg(test)]
fn rescue_in_thread(
    fd: c_int,
    cookie: u64,
) -> (
    std::thread::JoinHandle<Option<std::time::Instant>>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let inside = std::sync::Arc::new(std::sync::Barrier::new(2));
    let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (i, g) = (inside.clone(), go.clone());
    let rescuer = std::thread::spawn(move || {
        rescue_with(fd, cookie, |_| {
            i.wait();
            while !g.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            std::time::Instant::now()
        })
    });
    inside.wait();
    (rescuer, go)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_settle_forget() {
        let fd = 5000;
        assert!(quiet(fd));
        track(fd, Tracked::new(7, test_watched()));
        assert!(!quiet(fd));
        with_tracked(fd, |t| t.watched.facts = SocketFacts(3));
        let mut got = None;
        settle(fd, |t| {
            got = Some((t.ino, t.watched.facts));
            None
        });
        assert_eq!(got, Some((7, SocketFacts(3))));
        assert!(quiet(fd));
        track(fd, Tracked::new(8, test_watched()));
        forget(fd);
        assert!(quiet(fd));
        let mut ran = false;
        settle(fd, |_| {
            ran = true;
            None
        });
        assert!(!ran);
    }

    #[test]
    fn a_connect_kept_for_rescue_is_taken_once_by_its_cookie() {
        let fd = 5100;
        keep_for_rescue(fd, 7, 42);
        assert!(!quiet(fd), "kept for the watchdog");
        // Later epoll_ctl/setsockopt calls still land in the kept state.
        assert_eq!(with_tracked(fd, |t| t.ino), Some(7));
        let mut ran = false;
        settle(fd, |_| {
            ran = true;
            None
        });
        assert!(!ran, "a second connect() does not decide again");
        assert_eq!(rescue_with(fd, 41, |t| t.ino), None, "another socket");
        assert_eq!(rescue_with(fd, 42, |t| t.ino), Some(7));
        assert!(quiet(fd));
        assert_eq!(rescue_with(fd, 42, |t| t.ino), None, "only once");
    }

    #[test]
    fn release_and_close_drop_a_kept_connect() {
        let keep = |fd| keep_for_rescue(fd, 1, 9);
        keep(5200);
        release_rescuable(5200, Some(8));
        assert!(!quiet(5200), "another connect's release");
        release_rescuable(5200, Some(9));
        assert!(quiet(5200));
        keep(5201);
        forget(5201);
        assert!(quiet(5201));
        assert_eq!(rescue_with(5201, 9, |_| ()), None);
        // A state handed back without a rescue is not kept.
        track(5202, Tracked::new(1, test_watched()));
        settle(5202, Some);
        assert!(quiet(5202));
    }

    #[test]
    fn a_close_waits_for_the_rescue_holding_the_slot() {
        let fd = 5300;
        keep_for_rescue(fd, 1, 5);
        let (rescuer, go) = rescue_in_thread(fd, 5);
        let closer = std::thread::spawn(move || {
            forget(fd);
            std::time::Instant::now()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closer.is_finished(), "close went ahead during the rescue");
        go.store(true, Ordering::Release);
        let rescue_end = rescuer.join().unwrap().unwrap();
        let close_end = closer.join().unwrap();
        assert!(close_end >= rescue_end);
        assert!(quiet(fd));
    }

    #[test]
    fn a_failing_overwrite_keeps_the_state() {
        let fd = 5400;
        track(fd, Tracked::new(3, test_watched()));
        assert_eq!(overwrite(fd, || -1), -1);
        assert_eq!(
            with_tracked(fd, |t| t.ino),
            Some(3),
            "dup2 failed: still tracked"
        );
        assert_eq!(overwrite(fd, || fd), fd);
        assert!(quiet(fd));
    }

    #[test]
    fn epoll_generation_retires_registrations() {
        let (epfd, sock) = (6001, 6002);
        track(sock, Tracked::new(1, test_watched()));
        let gen = mark_epoll(epfd).unwrap();
        let reg = Registration {
            epfd,
            gen,
            events: 1,
            data: 2,
        };
        assert!(epoll_alive(&reg));
        assert_eq!(with_live_epoll(&reg, || 7), Some(7));
        forget(epfd);
        assert!(!epoll_alive(&reg));
        assert_eq!(with_live_epoll(&reg, || 7), None);
        let gen2 = mark_epoll(epfd).unwrap();
        assert_ne!(gen, gen2);
        assert!(!epoll_alive(&reg));
        forget(sock);
        forget(epfd);
    }

    #[test]
    fn registrations_follow_add_mod_del() {
        let mut t = Tracked::new(1, test_watched());
        t.record_epoll(libc::EPOLL_CTL_ADD, 3, 0, 1, 10);
        t.record_epoll(libc::EPOLL_CTL_ADD, 4, 0, 1, 11);
        t.record_epoll(libc::EPOLL_CTL_MOD, 3, 0, 5, 12);
        assert_eq!(t.regs[0].events, 5);
        assert_eq!(t.regs[0].data, 12);
        t.record_epoll(libc::EPOLL_CTL_DEL, 4, 0, 0, 0);
        assert_eq!(t.regs.len(), 1);
    }

    #[test]
    fn out_of_range_fds_are_quiet() {
        assert!(quiet(-1));
        assert!(quiet(MAX_FD as c_int));
        track(-1, Tracked::new(1, test_watched()));
        assert!(quiet(-1));
    }

    #[test]
    fn forget_range_clears_allocated_chunks_only() {
        track(7010, Tracked::new(1, test_watched()));
        track(7020, Tracked::new(1, test_watched()));
        forget_range(7015, u32::MAX);
        assert!(!quiet(7010));
        assert!(quiet(7020));
        forget_range(7000, 7010);
        assert!(quiet(7010));
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    /// A child forked while another thread holds a slot (a rescue in progress) can still close
    /// that fd: the fork handler freed the slot, whose holder does not exist in the child.
    #[test]
    fn a_fork_child_can_close_an_fd_whose_slot_another_thread_held() {
        let fd = 5600;
        keep_for_rescue(fd, 1, 1);
        let (holder, release) = rescue_in_thread(fd, 1);
        // SAFETY: the child only calls the table and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            forget(fd);
            let code = if quiet(fd) { 0 } else { 1 };
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(code) };
        }
        let t0 = std::time::Instant::now();
        let mut status = 0;
        let done = loop {
            // SAFETY: polling our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                break true;
            }
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                // SAFETY: killing and reaping our own stuck child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        release.store(true, Ordering::Release);
        holder.join().unwrap();
        assert!(
            done,
            "the fork child deadlocked on a slot its parent's thread held"
        );
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    /// `close_range(CLOSE_RANGE_UNSHARE)` closes the range in a private copy of the caller's fd
    /// table: the other threads still have those fds, so their state stays.
    #[test]
    fn close_range_unshare_keeps_the_state_of_the_shared_fds() {
        let fd = 5700;
        track(fd, Tracked::new(1, test_watched()));
        // A thread of its own: unsharing gives it a private fd table that ends with it.
        std::thread::spawn(move || {
            // SAFETY: closing a range in this thread's own (unshared) table.
            unsafe { crate::close_range(fd as u32, fd as u32, libc::CLOSE_RANGE_UNSHARE as i32) };
        })
        .join()
        .unwrap();
        assert!(!quiet(fd), "UNSHARE closed nothing the others see");
        // SAFETY: as above, without UNSHARE (fd 5700 is not open; close_range ignores that).
        unsafe { crate::close_range(fd as u32, fd as u32, 0) };
        assert!(quiet(fd));
    }
}
