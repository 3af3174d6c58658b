//! `libenvoy_smc_preload.so`: envoy-smc for a stock Envoy (or any program), by `LD_PRELOAD`.
//!
//! "TCP first": every IP stream socket the program opens is a plain TCP socket. envoy-smc
//! replaces it under the same fd number with an SMC socket only when a decision says SMC:
//! - listeners right before `listen()` (Envoy registers a listener with epoll only after
//!   `listen()`); a listener that is not selected stays the plain TCP socket it is;
//! - clients right before `connect()`. By then Envoy has registered the fd with epoll and set the
//!   cluster's socket options. Replacing the socket (`dup3`) drops the old open file's epoll
//!   registration, so the library records `epoll_ctl` calls on tracked sockets and adds the new
//!   socket to the same epoll instances with the same events and data before the real
//!   `connect()`; options the program set are carried over too.
//!
//! Interposed: `socket`, `setsockopt` (the mesh switch and per-cluster fallback options, and
//! every option for a replacement), `bind` (the address for a replacement; a new socket taking
//! over a shared `AF_SMC` listener), `fcntl(F_SETFL/F_SETFD)` and `ioctl(FIONBIO/FIOCLEX)` (the
//! flags for a replacement), `listen`, `connect`, `epoll_ctl`, and the calls that end or
//! overwrite an fd (`close`, `close_range`, `dup`, `dup2`, `dup3`, `fcntl(F_DUPFD*)`). Accepted
//! sockets are never touched. A replacement is built from what these hooks recorded: nothing is
//! read back from the old socket.
//! A tracked socket that is duplicated before `listen()`/`connect()` (Envoy duplicates a
//! listener's socket for its workers when `enable_reuse_port` is false) gets its listener
//! decision at that moment if it is bound, and otherwise stays TCP.
//!
//! Safety rules: every hook ends in the real function; before the library is set up, while the
//! library itself is calling libc (a thread-local re-entrancy guard), after a caught panic, in a
//! secure-execution process, or when the configuration is invalid, a hook is a plain call of the
//! real function. Untracked fds cost one or two atomic loads. Configuration and environment
//! variables: see [`state`]. Counters: see [`stats`] and `envoy_smc_preload_stats()`.
//!
//! What the host process does to itself:
//! - `fork()`: a `pthread_atfork` child handler (registered when the library is loaded) frees
//!   the fd slots the vanished threads held and drops the connects kept for the parent's
//!   watchdog; the core restarts its watchdog in the child ([`envoy_smc_core::process`]).
//! - `vfork()`/`posix_spawn` (Python's `subprocess` uses them): the child runs in the parent's
//!   memory with its own fd table until it execs, so every hook whose fd has state checks the
//!   pid first and, in such a child, only calls the real function: the child's `close_range`,
//!   `dup2` and `close` before `exec` leave the parent's table alone.
//! - signals: the close path (`close`, `dup2`, `dup3`, `close_range`) allocates nothing and
//!   takes no lock a signal handler could meet (see [`table`]).
//! - fd reuse: a decision or a rescue holds the fd's slot for its whole duration, and `close`/
//!   `dup2` wait for it; `close_range(CLOSE_RANGE_UNSHARE)` (which closes nothing for the other
//!   threads) and a failing `dup2`/`dup3` leave the table as it is.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

use libc::{epoll_event, sockaddr, socklen_t};

/// The hooks' work on tracked sockets (decide, replace, carry options and epoll over).
mod hooks;
/// The real libc functions, found with `dlsym(RTLD_NEXT)`, raw syscalls before that.
mod real;
/// Rescuing an SMC connect stuck behind a black hole, under the same fd.
mod rescue;
/// The process-wide state: config, runtime, the library's own counters.
pub mod state;
/// The counters as Prometheus text (`ENVOY_SMC_STATS_FILE`, `envoy_smc_preload_stats()`).
pub mod stats;
/// Per-fd state, indexed by fd number.
mod table;
/// Reading memory the program hands to a hooked call, without crashing on a bad pointer.
mod user_mem;

/// Runs when the library is loaded (before `main` under `LD_PRELOAD`): records this process as
/// the owner of its memory (to tell a vfork child later) and registers the fork handler.
extern "C" fn at_load() {
    envoy_smc_core::process::install();
    envoy_smc_core::process::on_fork_child(table::after_fork_in_child);
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

/// False in a vfork/`posix_spawn` child, which runs in its parent's memory: it must not touch
/// the library's state (one `getpid`; only asked on the slow paths).
fn own_memory() -> bool {
    !envoy_smc_core::process::shares_parent_memory()
}

thread_local! {
    static IN_LIBRARY: Cell<bool> = const { Cell::new(false) };
}

/// The re-entrancy guard: held while the library runs its own code on this thread, so that the
/// libc calls it makes (`socket`, `setsockopt`, `dup3`, `close` inside a socket replacement, the
/// kernel probe, the stats writer) go straight to the real functions.
pub(crate) struct Reentry(());

impl Reentry {
    /// `None` if this thread is inside the library already (or its thread-locals are gone).
    pub(crate) fn enter() -> Option<Reentry> {
        IN_LIBRARY
            // `then`, not `then_some`: a Reentry built and dropped would clear the flag.
            .try_with(|g| (!g.replace(true)).then(|| Reentry(())))
            .ok()
            .flatten()
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        let _ = IN_LIBRARY.try_with(|g| g.set(false));
    }
}

/// Runs a hook body: inside the re-entrancy guard (the caller holds it), with `errno` as it was
/// before, and with panics caught (a panic switches the library off for the process).
fn body(f: impl FnOnce()) {
    if state::poisoned() {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        state::poison();
        state::inc(&state::COUNTERS.internal_errors);
        tracing::error!(
            "envoy-smc: internal error caught; the library does nothing more in this process"
        );
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs once, when the library first turns out active (see [`state::active`]): the rescuer the
/// core's watchdog calls, and the stats file writer.
fn start(active: &'static state::Active) {
    active
        .runtime
        .set_rescuer(std::sync::Arc::new(rescue::PreloadRescuer));
    stats::start_writer();
}

fn is_ip_stream_request(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    envoy_smc_core::smc::is_ip_stream(domain, ty, protocol)
}

/// # Safety
/// The C `socket(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // Setting up (which starts threads) never happens in a vfork child; once set up, a child's
    // socket is at worst tracked in the parent's table under a number the parent may use too,
    // and the inode check before any replacement tells them apart.
    if !is_ip_stream_request(domain, ty, protocol)
        || (state::active_if_set_up().is_none() && !own_memory())
    {
        // SAFETY: the real socket with the caller's arguments, under this function's C contract.
        return unsafe { real::socket()(domain, ty, protocol) };
    }
    let Some(_guard) = Reentry::enter() else {
        // SAFETY: the real socket with the caller's arguments, under this function's C contract.
        return unsafe { real::socket()(domain, ty, protocol) };
    };
    let mut active = None;
    body(|| active = state::active(start));
    // SAFETY: the real socket with the caller's arguments, under this function's C contract.
    let fd = unsafe { real::socket()(domain, ty, protocol) };
    if fd >= 0 {
        if let Some(active) = active {
            body(|| hooks::opened(active, fd, domain, ty, protocol));
        } else if !table::quiet(fd) {
            table::forget(fd);
        }
    }
    fd
}

/// # Safety
/// The C `setsockopt(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    // No vfork check here or in epoll_ctl: a vfork child's fd table is a copy of its parent's,
    // so an option it sets on a tracked fd lands on the socket the parent's record describes.
    if table::quiet(fd) {
        // SAFETY: the real setsockopt with the caller's arguments, under this function's C contract.
        let rc = unsafe { real::setsockopt()(fd, level, name, value, len) };
        if rc != 0 && level == libc::SOL_SOCKET && name == libc::SO_REUSEPORT {
            if let Some(_guard) = Reentry::enter() {
                if reuse_port_shared(fd) {
                    return 0;
                }
            }
        }
        return rc;
    }
    let Some(_guard) = Reentry::enter() else {
        // SAFETY: the real setsockopt with the caller's arguments, under this function's C contract.
        return unsafe { real::setsockopt()(fd, level, name, value, len) };
    };
    // Held across the call: a rescue in progress finishes first, so the option lands on the
    // socket that stays under the fd, and is recorded for a later replacement.
    let mut held = None;
    body(|| held = table::hold(fd));
    // SAFETY: the real setsockopt with the caller's arguments, under this function's C contract.
    let rc = unsafe { real::setsockopt()(fd, level, name, value, len) };
    if let (0, Some(h)) = (rc, held.as_mut()) {
        body(|| hooks::sockopt_set(h, level, name, value, len));
    }
    drop(held);
    if rc != 0 && level == libc::SOL_SOCKET && name == libc::SO_REUSEPORT && reuse_port_shared(fd) {
        return 0;
    }
    rc
}

/// After `setsockopt(SO_REUSEPORT)` failed (the caller holds the re-entrancy guard): true when
/// the fd is an `AF_SMC` listener shared by its fds, which is what the option asked for. Envoy sets
/// it again on the listen sockets a hot-restart parent passes over (they never went through
/// `socket()` here); failing it would stop the new Envoy.
fn reuse_port_shared(fd: c_int) -> bool {
    let mut done = false;
    body(|| done = hooks::reuse_port_on_shared_listener(fd));
    done
}

/// # Safety
/// The C `bind(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the real bind with the caller's arguments, under this function's C contract.
    let rc = unsafe { real::bind()(fd, addr, len) };
    if rc == 0 && !table::quiet(fd) {
        // The address, for a replacement.
        if let Some(_guard) = Reentry::enter() {
            body(|| hooks::bound(fd, addr, len));
        }
        return rc;
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    if rc == 0
        // SAFETY: __errno_location returns this thread's errno slot.
        || unsafe { *libc::__errno_location() } != libc::EADDRINUSE
        || table::quiet(fd)
        || !own_memory()
    {
        return rc;
    }
    // A listener update's new socket on the address of a shared AF_SMC listener: take it over.
    let mut joined = false;
    if let Some(_guard) = Reentry::enter() {
        body(|| joined = hooks::bind_in_use(fd, addr, len));
    }
    if joined {
        0
    } else {
        rc
    }
}

/// # Safety
/// The C `listen(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if !table::quiet(fd) && own_memory() {
        if let Some(_guard) = Reentry::enter() {
            body(|| hooks::before_listen(fd));
        }
    }
    // SAFETY: the real listen with the caller's arguments, under this function's C contract.
    unsafe { real::listen()(fd, backlog) }
}

/// # Safety
/// The C `connect(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // The vfork check is made only before a replacement (see hooks::before_connect).
    if !table::quiet(fd) {
        if let Some(_guard) = Reentry::enter() {
            body(|| hooks::before_connect(fd, addr, len));
        }
    }
    // SAFETY: the real connect with the caller's arguments, under this function's C contract.
    unsafe { real::connect()(fd, addr, len) }
}

/// # Safety
/// The C `epoll_ctl(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if table::quiet(fd) {
        // SAFETY: the real epoll_ctl with the caller's arguments, under this function's C contract.
        return unsafe { real::epoll_ctl()(epfd, op, fd, event) };
    }
    let Some(_guard) = Reentry::enter() else {
        // SAFETY: the real epoll_ctl with the caller's arguments, under this function's C contract.
        return unsafe { real::epoll_ctl()(epfd, op, fd, event) };
    };
    // Held across the call, like setsockopt: a registration made while a rescue is under way
    // goes to the new socket, and is recorded.
    let mut held = None;
    body(|| held = table::hold(fd));
    // SAFETY: the real epoll_ctl with the caller's arguments, under this function's C contract.
    let rc = unsafe { real::epoll_ctl()(epfd, op, fd, event) };
    if let (0, Some(h)) = (rc, held.as_mut()) {
        body(|| hooks::epoll_registered(h, epfd, op, event));
    }
    rc
}

/// Forgets what envoy-smc knew about `fd` (closed), unless the library itself is the caller;
/// waits while a decision or rescue holds it. Signal-safe (see `table::forget`).
fn fd_gone(fd: c_int) {
    if !table::quiet(fd) && own_memory() {
        if let Some(_guard) = Reentry::enter() {
            body(|| table::forget(fd));
        }
    }
}

/// `dup2`/`dup3` onto `new`: the call runs with `new`'s slot held, and its state is dropped
/// only if the call succeeded.
fn overwriting(new: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if table::quiet(new) {
        return call();
    }
    // The library's own dup3 (a replacement, inside the guard) goes straight through, before the
    // vfork check's getpid.
    match Reentry::enter() {
        // Atomics and a futex only: nothing here can panic, so no panic boundary (which would
        // also restore errno over the call's own).
        Some(_guard) if !state::poisoned() && own_memory() => table::overwrite(new, call),
        _ => call(),
    }
}

/// A tracked socket is about to be duplicated.
fn duplicating(fd: c_int) {
    if !table::quiet(fd) && own_memory() {
        if let Some(_guard) = Reentry::enter() {
            body(|| hooks::before_dup(fd));
        }
    }
}

/// # Safety
/// The C `close(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    fd_gone(fd);
    // SAFETY: the real close with the caller's arguments, under this function's C contract.
    unsafe { real::close()(fd) }
}

/// # Safety
/// The C `close_range(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // CLOEXEC closes nothing now; UNSHARE closes the range in a private copy of the fd table,
    // leaving the other threads' fds (and their state) as they are; first > last is refused.
    let closes_shared =
        flags & (libc::CLOSE_RANGE_CLOEXEC as c_int | libc::CLOSE_RANGE_UNSHARE as c_int) == 0
            && first <= last;
    if closes_shared && own_memory() {
        if let Some(_guard) = Reentry::enter() {
            body(|| table::forget_range(first, last));
        }
    }
    // SAFETY: the real close_range with the caller's arguments, under this function's C contract.
    unsafe { real::close_range()(first, last, flags) }
}

/// # Safety
/// The C `dup(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    duplicating(fd);
    // SAFETY: the real dup with the caller's arguments, under this function's C contract.
    let new = unsafe { real::dup()(fd) };
    fd_gone(new);
    new
}

/// # Safety
/// The C `dup2(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old == new {
        // SAFETY: the real dup2 with the caller's arguments, under this function's C contract.
        return unsafe { real::dup2()(old, new) };
    }
    duplicating(old);
    // SAFETY: the real dup2 with the caller's arguments, under this function's C contract.
    overwriting(new, || unsafe { real::dup2()(old, new) })
}

/// # Safety
/// The C `dup3(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old == new {
        // SAFETY: the real dup3 with the caller's arguments, under this function's C contract.
        return unsafe { real::dup3()(old, new, flags) };
    }
    duplicating(old);
    // SAFETY: the real dup3 with the caller's arguments, under this function's C contract.
    overwriting(new, || unsafe { real::dup3()(old, new, flags) })
}

/// # Safety
/// The C `fcntl(2)` contract; `f` is the real `fcntl` or `fcntl64`.
unsafe fn fcntl_with(f: real::FcntlFn, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if cmd == libc::F_SETFL || cmd == libc::F_SETFD {
        // SAFETY: the real fcntl with the caller's arguments, under this function's C contract.
        let rc = unsafe { f(fd, cmd, arg) };
        if rc == 0 {
            let on = |flag: c_int| Some(arg & flag as c_ulong != 0);
            if cmd == libc::F_SETFL {
                flags_changed(fd, on(libc::O_NONBLOCK), None);
            } else {
                flags_changed(fd, None, on(libc::FD_CLOEXEC));
            }
        }
        return rc;
    }
    if cmd != libc::F_DUPFD && cmd != libc::F_DUPFD_CLOEXEC {
        // SAFETY: the real fcntl with the caller's arguments, under this function's C contract.
        return unsafe { f(fd, cmd, arg) };
    }
    duplicating(fd);
    // SAFETY: F_DUPFD* takes an integer argument.
    let new = unsafe { f(fd, cmd, arg) };
    fd_gone(new);
    new
}

/// The program changed `O_NONBLOCK` or `FD_CLOEXEC` on `fd`: recorded if it is tracked.
fn flags_changed(fd: c_int, nonblock: Option<bool>, cloexec: Option<bool>) {
    if !table::quiet(fd) {
        if let Some(_guard) = Reentry::enter() {
            body(|| hooks::flags_set(fd, nonblock, cloexec));
        }
    }
}

/// # Safety
/// The C `ioctl(2)` contract (one optional integer or pointer argument). Only `FIONBIO`,
/// `FIOCLEX` and `FIONCLEX` on a tracked fd are looked at (Python's `setblocking` uses `FIONBIO`).
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    // SAFETY: the real ioctl with the caller's arguments, under this function's C contract.
    let rc = unsafe { real::ioctl()(fd, request, arg) };
    if rc != 0 || table::quiet(fd) {
        return rc;
    }
    match request {
        libc::FIONBIO if !arg.is_null() => {
            // SAFETY: FIONBIO takes a pointer to an int, which the kernel just read.
            let on = unsafe { *arg.cast::<c_int>() } != 0;
            flags_changed(fd, Some(on), None);
        }
        libc::FIOCLEX => flags_changed(fd, None, Some(true)),
        libc::FIONCLEX => flags_changed(fd, None, Some(false)),
        _ => {}
    }
    rc
}

/// # Safety
/// The C `fcntl(2)` contract (one optional integer or pointer argument).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: this function's C contract is fcntl_with's.
    unsafe { fcntl_with(real::fcntl(), fd, cmd, arg) }
}

/// # Safety
/// The C `fcntl64` contract (glibc's name for `fcntl` with 64-bit offsets).
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: this function's C contract is fcntl_with's.
    unsafe { fcntl_with(real::fcntl64(), fd, cmd, arg) }
}

/// The library's counters as Prometheus text, like `snprintf`: writes at most `len` bytes
/// (NUL-terminated when `len > 0`) into `buf` and returns the length of the whole text (without
/// the NUL). `buf` may be NULL when `len` is 0. Safe to call from any thread at any time.
///
/// # Safety
/// `buf` must be NULL or point at `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn envoy_smc_preload_stats(buf: *mut c_char, len: usize) -> usize {
    let _guard = Reentry::enter();
    let text = std::panic::catch_unwind(stats::render).unwrap_or_default();
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `buf`; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// The library's state in this process: 0 not set up yet (no IP stream socket opened so far),
/// 1 active, 2 off (secure execution), 3 off (invalid configuration), 4 off (internal error).
#[no_mangle]
pub extern "C" fn envoy_smc_preload_state() -> c_int {
    if state::poisoned() {
        return state::Off::InitFailed as c_int;
    }
    state::state_code()
}

#[cfg(test)]
mod guard_tests {
    use super::Reentry;

    #[test]
    fn the_guard_holds_until_dropped_and_nests_as_none() {
        let outer = Reentry::enter().expect("first entry");
        assert!(Reentry::enter().is_none());
        assert!(
            Reentry::enter().is_none(),
            "a refused entry must not clear the guard"
        );
        drop(outer);
        assert!(Reentry::enter().is_some());
    }
}
