//! Process calls: ids, the fork-child handler, and a function pointer kept in an atomic word for
//! that handler, for [`crate::process`] and the state directory.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `getpid(2)`.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// `geteuid(2)`.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `pthread_atfork(NULL, NULL, child)`: `child` runs in every fork child, in the forking
/// thread, before `fork()` returns there.
pub fn at_fork_child(child: extern "C" fn()) -> io::Result<()> {
    // SAFETY: registers a plain `extern "C"` function with no prepare or parent handler.
    match unsafe { libc::pthread_atfork(None, None, Some(child)) } {
        0 => Ok(()),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// An `extern "C" fn()` in one atomic word: set once by compare-and-swap, read with one load.
/// A fork-child handler may read it: no lock, no allocation.
#[derive(Debug, Default)]
pub struct AtomicFn(AtomicUsize);

impl AtomicFn {
    pub const fn new() -> AtomicFn {
        AtomicFn(AtomicUsize::new(0))
    }

    /// Stores `f` if the word is empty. True if it holds `f` now (stored now or before).
    pub fn set_once(&self, f: extern "C" fn()) -> bool {
        let f = f as usize;
        match self
            .0
            .compare_exchange(0, f, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(held) => held == f,
        }
    }

    pub fn get(&self) -> Option<extern "C" fn()> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            // SAFETY: only `set_once` stores a non-zero word, and only an `extern "C" fn()`
            // converted to usize: converting it back yields that same function pointer.
            f => Some(unsafe { std::mem::transmute::<usize, extern "C" fn()>(f) }),
        }
    }
}
