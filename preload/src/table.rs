//! Per-fd state, indexed by fd number.
//!
//! A two-level table: a static array of chunk pointers, each chunk 1024 slots, allocated the first
//! time an fd in its range needs state and never freed. An fd without state costs one atomic load
//! of the chunk pointer and, if the chunk exists, one of the slot's flags: that is all an
//! untracked socket (an accepted connection, a socket envoy-smc decided about already, a file)
//! pays in `close`, `setsockopt`, `epoll_ctl`, `connect`, `listen`.
//!
//! A slot holds:
//! - `flags`: [`TRACKED`] (a socket envoy-smc may still make SMC), [`RESCUABLE`] (an SMC connect
//!   in flight that the adaptive-fallback watchdog may hand back for a rescue) and [`EPOLL_SET`]
//!   (this fd is an epoll instance in which a tracked socket is registered);
//! - `epoll_gen`: bumped when the fd, as an epoll instance, goes away, so that a registration
//!   recorded against an epoll fd number is never replayed into a later epoll instance that
//!   happens to get the same number;
//! - the tracked socket's state behind a per-slot mutex. Envoy uses a socket from one thread at a
//!   time, so the lock is uncontended; it also makes `close()` of an fd wait while envoy-smc is
//!   replacing the socket under it (or rescuing a connect, from the watchdog thread).

use std::ffi::c_int;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use envoy_smc::policy::SocketFacts;

/// The fd is a socket envoy-smc is still deciding about.
pub const TRACKED: u32 = 1;
/// The fd is an epoll instance a tracked socket is registered with.
pub const EPOLL_SET: u32 = 2;
/// The fd is an SMC connect in flight, kept for a rescue until the watchdog lets it go.
pub const RESCUABLE: u32 = 4;

const CHUNK: usize = 1024;
const CHUNKS: usize = 1 << 14;
/// fds at or above this number are never tracked (they stay plain TCP).
pub const MAX_FD: usize = CHUNK * CHUNKS;

/// Socket options recorded per socket, at most (later ones are not replayed; see `Tracked`).
const MAX_OPTS: usize = 16;
/// Option values longer than this are not recorded.
pub const MAX_OPT_LEN: usize = 64;

/// An epoll registration of a tracked socket: where it was added and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub epfd: c_int,
    /// `epoll_gen` of the epoll fd's slot when the registration was made.
    pub gen: u32,
    pub events: u32,
    pub data: u64,
}

/// A socket option the application set on a tracked socket, replayed on a replacement socket.
#[derive(Debug, Clone, Copy)]
pub struct RecordedOpt {
    pub level: c_int,
    pub name: c_int,
    pub len: usize,
    pub value: [u8; MAX_OPT_LEN],
}

impl RecordedOpt {
    pub fn bytes(&self) -> &[u8] {
        &self.value[..self.len]
    }
}

/// What envoy-smc knows about a socket it may still replace.
#[derive(Debug)]
pub struct Tracked {
    /// The socket's inode when it was opened: the fd number may have been closed and reused
    /// behind envoy-smc's back (raw syscalls, `closefrom`); a mismatch means "not ours".
    pub ino: u64,
    pub facts: SocketFacts,
    pub regs: Vec<Registration>,
    pub opts: Vec<RecordedOpt>,
    /// More options were set than `MAX_OPTS`, or one was too long to record.
    pub opts_overflow: bool,
    /// Set once the socket is an SMC connect in flight kept for a rescue.
    pub rescue: Option<Rescue>,
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
    pub fn new(ino: u64) -> Tracked {
        Tracked {
            ino,
            facts: SocketFacts::default(),
            regs: Vec::new(),
            opts: Vec::new(),
            opts_overflow: false,
            rescue: None,
        }
    }

    /// Records an option (the latest value of each level/name wins).
    pub fn record_opt(&mut self, level: c_int, name: c_int, value: &[u8]) {
        if value.len() > MAX_OPT_LEN {
            self.opts_overflow = true;
            return;
        }
        let mut rec = RecordedOpt {
            level,
            name,
            len: value.len(),
            value: [0; MAX_OPT_LEN],
        };
        rec.value[..value.len()].copy_from_slice(value);
        if let Some(old) = self
            .opts
            .iter_mut()
            .find(|o| o.level == level && o.name == name)
        {
            *old = rec;
        } else if self.opts.len() < MAX_OPTS {
            self.opts.push(rec);
        } else {
            self.opts_overflow = true;
        }
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
    flags: AtomicU32,
    epoll_gen: AtomicU32,
    inner: Mutex<Option<Box<Tracked>>>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            flags: AtomicU32::new(0),
            epoll_gen: AtomicU32::new(0),
            inner: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<Tracked>>> {
        // A panic while holding the lock poisons it; the state is still consistent (every
        // mutation is a single assignment), and the library stops acting after a panic anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static TABLE: [AtomicPtr<Slot>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];
static TRACKED_NOW: AtomicI64 = AtomicI64::new(0);
static RESCUABLE_NOW: AtomicI64 = AtomicI64::new(0);

/// Adjusts the gauges for a state leaving a slot.
fn gone(t: &Tracked) {
    let gauge = if t.rescue.is_some() {
        &RESCUABLE_NOW
    } else {
        &TRACKED_NOW
    };
    gauge.fetch_sub(1, Ordering::Relaxed);
}

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

/// True when envoy-smc holds no state for `fd`: the hooks' fast path.
#[inline]
pub fn quiet(fd: c_int) -> bool {
    slot(fd).is_none_or(|s| s.flags.load(Ordering::Acquire) == 0)
}

/// Starts tracking a socket just opened under `fd` (replacing any stale state of that number).
pub fn track(fd: c_int, tracked: Tracked) {
    let Some(slot) = slot_or_alloc(fd) else {
        return;
    };
    let mut inner = slot.lock();
    retire_epoll(slot);
    if let Some(old) = inner.replace(Box::new(tracked)) {
        gone(&old);
    }
    TRACKED_NOW.fetch_add(1, Ordering::Relaxed);
    slot.flags.fetch_and(!RESCUABLE, Ordering::Release);
    slot.flags.fetch_or(TRACKED, Ordering::Release);
}

/// Drops every state of `fd`: it was closed or overwritten.
pub fn forget(fd: c_int) {
    let Some(slot) = slot(fd) else {
        return;
    };
    if slot.flags.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut inner = slot.lock();
    if let Some(old) = inner.take() {
        gone(&old);
    }
    slot.flags
        .fetch_and(!(TRACKED | RESCUABLE), Ordering::Release);
    retire_epoll(slot);
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

/// The epoll instance under this slot's fd number is gone.
fn retire_epoll(slot: &Slot) {
    if slot.flags.load(Ordering::Acquire) & EPOLL_SET != 0 {
        slot.epoll_gen.fetch_add(1, Ordering::AcqRel);
        slot.flags.fetch_and(!EPOLL_SET, Ordering::Release);
    }
}

/// Marks `epfd` as an epoll instance holding a tracked socket; returns its generation.
pub fn mark_epoll(epfd: c_int) -> Option<u32> {
    let slot = slot_or_alloc(epfd)?;
    slot.flags.fetch_or(EPOLL_SET, Ordering::AcqRel);
    Some(slot.epoll_gen.load(Ordering::Acquire))
}

/// Whether `reg` still names the epoll instance it was made in.
pub fn epoll_alive(reg: &Registration) -> bool {
    slot(reg.epfd).is_some_and(|s| {
        s.flags.load(Ordering::Acquire) & EPOLL_SET != 0
            && s.epoll_gen.load(Ordering::Acquire) == reg.gen
    })
}

/// Runs `f` on the state of `fd` (tracked or kept for a rescue), if there is one.
pub fn with_tracked<R>(fd: c_int, f: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
    let slot = slot(fd)?;
    if slot.flags.load(Ordering::Acquire) & (TRACKED | RESCUABLE) == 0 {
        return None;
    }
    let mut inner = slot.lock();
    inner.as_deref_mut().map(f)
}

/// Takes the tracked state of `fd` to decide about it: `f` runs with the slot locked (a
/// concurrent `close` of the fd waits), and afterwards the fd is no longer tracked — unless `f`
/// hands the state back with its `rescue` set, to be kept for the watchdog.
pub fn settle(fd: c_int, f: impl FnOnce(Tracked) -> Option<Tracked>) {
    let Some(slot) = slot(fd) else {
        return;
    };
    if slot.flags.load(Ordering::Acquire) & TRACKED == 0 {
        return;
    }
    let mut inner = slot.lock();
    if inner.as_ref().is_none_or(|t| t.rescue.is_some()) {
        return; // closed meanwhile, or an SMC connect in flight already
    }
    let tracked = inner.take().map(|t| {
        gone(&t);
        *t
    });
    slot.flags.fetch_and(!TRACKED, Ordering::Release);
    let kept = tracked.and_then(f).filter(|t| t.rescue.is_some());
    if let Some(kept) = kept {
        RESCUABLE_NOW.fetch_add(1, Ordering::Relaxed);
        *inner = Some(Box::new(kept));
        slot.flags.fetch_or(RESCUABLE, Ordering::Release);
    }
}

/// Takes the state kept for a rescue of the connect on `fd` whose socket cookie is `cookie`, and
/// runs `f` on it with the slot locked (a concurrent `close` of the fd waits). `None` if nothing
/// is kept for that connect (closed, duplicated, or another socket by now).
pub fn take_rescuable<R>(fd: c_int, cookie: u64, f: impl FnOnce(Tracked) -> R) -> Option<R> {
    let slot = slot(fd)?;
    let mut inner = slot.lock();
    if inner
        .as_ref()
        .and_then(|t| t.rescue)
        .is_none_or(|r| r.cookie != cookie)
    {
        return None;
    }
    let t = inner.take()?;
    gone(&t);
    slot.flags.fetch_and(!RESCUABLE, Ordering::Release);
    Some(f(*t))
}

/// Drops the state kept for a rescue of `fd`: for the connect with `cookie`, or (`None`) for
/// whichever connect it is.
pub fn release_rescuable(fd: c_int, cookie: Option<u64>) {
    let Some(slot) = slot(fd) else {
        return;
    };
    if slot.flags.load(Ordering::Acquire) & RESCUABLE == 0 {
        return;
    }
    let mut inner = slot.lock();
    let matches = inner
        .as_ref()
        .and_then(|t| t.rescue)
        .is_some_and(|r| cookie.is_none_or(|c| c == r.cookie));
    if matches {
        if let Some(t) = inner.take() {
            gone(&t);
        }
        slot.flags.fetch_and(!RESCUABLE, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_settle_forget() {
        let fd = 5000;
        assert!(quiet(fd));
        track(fd, Tracked::new(7));
        assert!(!quiet(fd));
        with_tracked(fd, |t| t.facts = SocketFacts(3));
        let mut got = None;
        settle(fd, |t| {
            got = Some((t.ino, t.facts));
            None
        });
        assert_eq!(got, Some((7, SocketFacts(3))));
        assert!(quiet(fd));
        track(fd, Tracked::new(8));
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
        track(fd, Tracked::new(7));
        settle(fd, |mut t| {
            t.rescue = Some(Rescue {
                cookie: 42,
                source: None,
            });
            Some(t)
        });
        assert!(!quiet(fd), "kept for the watchdog");
        // Later epoll_ctl/setsockopt calls still land in the kept state.
        assert_eq!(with_tracked(fd, |t| t.ino), Some(7));
        let mut ran = false;
        settle(fd, |_| {
            ran = true;
            None
        });
        assert!(!ran, "a second connect() does not decide again");
        assert_eq!(take_rescuable(fd, 41, |t| t.ino), None, "another socket");
        assert_eq!(take_rescuable(fd, 42, |t| t.ino), Some(7));
        assert!(quiet(fd));
        assert_eq!(take_rescuable(fd, 42, |t| t.ino), None, "only once");
    }

    #[test]
    fn release_and_close_drop_a_kept_connect() {
        let keep = |fd| {
            track(fd, Tracked::new(1));
            settle(fd, |mut t| {
                t.rescue = Some(Rescue {
                    cookie: 9,
                    source: None,
                });
                Some(t)
            });
        };
        keep(5200);
        release_rescuable(5200, Some(8));
        assert!(!quiet(5200), "another connect's release");
        release_rescuable(5200, Some(9));
        assert!(quiet(5200));
        keep(5201);
        forget(5201);
        assert!(quiet(5201));
        assert_eq!(take_rescuable(5201, 9, |_| ()), None);
        // A state handed back without a rescue is not kept.
        track(5202, Tracked::new(1));
        settle(5202, Some);
        assert!(quiet(5202));
    }

    #[test]
    fn epoll_generation_retires_registrations() {
        let (epfd, sock) = (6001, 6002);
        track(sock, Tracked::new(1));
        let gen = mark_epoll(epfd).unwrap();
        let reg = Registration {
            epfd,
            gen,
            events: 1,
            data: 2,
        };
        assert!(epoll_alive(&reg));
        forget(epfd);
        assert!(!epoll_alive(&reg));
        let gen2 = mark_epoll(epfd).unwrap();
        assert_ne!(gen, gen2);
        assert!(!epoll_alive(&reg));
        forget(sock);
        forget(epfd);
    }

    #[test]
    fn registrations_follow_add_mod_del() {
        let mut t = Tracked::new(1);
        t.record_epoll(libc::EPOLL_CTL_ADD, 3, 0, 1, 10);
        t.record_epoll(libc::EPOLL_CTL_ADD, 4, 0, 1, 11);
        t.record_epoll(libc::EPOLL_CTL_MOD, 3, 0, 5, 12);
        assert_eq!(t.regs[0].events, 5);
        assert_eq!(t.regs[0].data, 12);
        t.record_epoll(libc::EPOLL_CTL_DEL, 4, 0, 0, 0);
        assert_eq!(t.regs.len(), 1);
    }

    #[test]
    fn options_keep_the_latest_value_and_bound_their_number() {
        let mut t = Tracked::new(1);
        t.record_opt(1, 2, &1i32.to_ne_bytes());
        t.record_opt(1, 2, &0i32.to_ne_bytes());
        assert_eq!(t.opts.len(), 1);
        assert_eq!(t.opts[0].bytes(), &0i32.to_ne_bytes());
        for n in 0..40 {
            t.record_opt(9, n, &[1]);
        }
        assert_eq!(t.opts.len(), MAX_OPTS);
        assert!(t.opts_overflow);
        t.record_opt(1, 3, &[0; MAX_OPT_LEN + 1]);
        assert!(t.opts_overflow);
    }

    #[test]
    fn out_of_range_fds_are_quiet() {
        assert!(quiet(-1));
        assert!(quiet(MAX_FD as c_int));
        track(-1, Tracked::new(1));
        assert!(quiet(-1));
    }

    #[test]
    fn forget_range_clears_allocated_chunks_only() {
        track(7010, Tracked::new(1));
        track(7020, Tracked::new(1));
        forget_range(7015, u32::MAX);
        assert!(!quiet(7010));
        assert!(quiet(7020));
        forget_range(7000, 7010);
        assert!(quiet(7010));
    }
}
