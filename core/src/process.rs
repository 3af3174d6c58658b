//! Surviving what the host process does to itself: `fork()` and `vfork()`.
//!
//! - After `fork()` the child is a copy of the parent with only the forking thread: threads the
//!   library started (the watchdog) are gone, and their handles must be neither joined nor
//!   trusted. A `pthread_atfork` child handler bumps [`fork_generation`]; whatever owns a thread
//!   compares the generation it started it in with the current one and starts afresh.
//! - A `vfork()` child (and a `posix_spawn`/`clone(CLONE_VM)` child) runs in the parent's memory
//!   with its own pid and its own fd table until it execs: anything it writes to the library's
//!   state rewrites the parent's. No atfork handler runs for it, so the process that owns this
//!   memory is recorded ([`memory_owner_pid`], updated after each `fork()`), and
//!   [`shares_parent_memory`] tells a vfork child by its pid differing from that owner's.
//!
//! [`install`] registers the handlers once; every entry point calls it before it starts a
//! thread or keeps state that a child could misread (the preload library does so when it is
//! loaded, so the pid recorded is the loading process's).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

use crate::os::process::{at_fork_child, getpid, AtomicFn};

/// The pid of the process whose memory this is (0 until [`install`]).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
/// Bumped in every fork child.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// More child handlers (the preload library's fd table): plain functions, run in order.
static CHILD_HOOKS: [AtomicFn; 4] = [const { AtomicFn::new() }; 4];

extern "C" fn in_fork_child() {
    OWNER_PID.store(getpid(), Ordering::SeqCst);
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    for f in CHILD_HOOKS.iter().filter_map(AtomicFn::get) {
        f();
    }
}

/// Records this process as the owner of its memory and registers the fork handler (once).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        OWNER_PID.store(getpid(), Ordering::SeqCst);
        if let Err(e) = at_fork_child(in_fork_child) {
            tracing::warn!("envoy-smc: pthread_atfork failed ({e}); fork children may misbehave");
        }
    });
}

/// Adds `f` to what runs in every fork child (after the generation was bumped). At most four;
/// returns false when full. `f` must be async-signal-safe in spirit: no locks, no allocation.
pub fn on_fork_child(f: extern "C" fn()) -> bool {
    install();
    CHILD_HOOKS.iter().any(|slot| slot.set_once(f))
}

/// How many `fork()`s separate this process from the one that loaded the library.
pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// The pid that owns this memory: the loading process, or the latest fork child.
pub fn memory_owner_pid() -> i32 {
    OWNER_PID.load(Ordering::Acquire)
}

/// True in a `vfork()`/`clone(CLONE_VM)` child: this code runs in another process's memory and
/// must leave its state alone. Costs one `getpid` system call; false before [`install`].
pub fn shares_parent_memory() -> bool {
    let owner = memory_owner_pid();
    owner != 0 && owner != getpid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_this_process_and_no_fork_happened() {
        install();
        assert_eq!(memory_owner_pid(), getpid());
        assert!(!shares_parent_memory());
    }
}
