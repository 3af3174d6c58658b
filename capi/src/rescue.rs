//! The C ABI of rescuing connects stuck behind a black hole (adaptive fallback), for an entry
//! point whose event loop lives on its own threads (the Envoy extension): the library's watchdog
//! thread only tells it, and the thread that owns the fd moves the connect.

use std::ffi::{c_int, c_void};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::panic::guard;
use super::{envoy_smc_result, envoy_smc_runtime, runtime, sockaddr};
use envoy_smc_core::adaptive::{RescueOutcome, Rescuer, WatchedConnect};
use envoy_smc_result::*;

/// Called on the library's watchdog thread, exactly once for each connect watched with
/// `envoy_smc_watch_connect_rescuable`, with the caller's `token`. `rescue` true: the
/// destination drops SMC's SYNs and this connect is still stuck — call
/// `envoy_smc_rescue_connect` for it on the thread that owns the fd. false: the watchdog is done
/// with it (it connected, was closed, or the destination is down); only forget the token. Must
/// not block and must not call back into the library on this thread.
pub type envoy_smc_rescue_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, token: u64, rescue: bool)>;

struct CRescuer {
    callback: unsafe extern "C" fn(*mut c_void, u64, bool),
    /// The caller's context pointer, passed back untouched.
    ctx: usize,
}

impl CRescuer {
    fn call(&self, token: u64, rescue: bool) {
        // SAFETY: the caller registered a function that takes these arguments and may be called
        // from any thread (the contract of envoy_smc_runtime_set_rescuer).
        unsafe { (self.callback)(self.ctx as *mut c_void, token, rescue) }
    }
}

impl Rescuer for CRescuer {
    fn rescue(&self, c: &WatchedConnect) -> RescueOutcome {
        self.call(c.token, true);
        RescueOutcome::Handed
    }

    fn release(&self, c: &WatchedConnect) {
        self.call(c.token, false);
    }
}

/// Installs the function the watchdog calls for connects watched with
/// `envoy_smc_watch_connect_rescuable` (replacing any earlier one). `callback` must stay callable,
/// and `ctx` valid, for as long as the runtime lives.
///
/// # Safety
/// `callback` must be safe to call from any thread with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn envoy_smc_runtime_set_rescuer(
    rt: *const envoy_smc_runtime,
    callback: envoy_smc_rescue_fn,
    ctx: *mut c_void,
) -> envoy_smc_result {
    guard(ENVOY_SMC_INTERNAL_ERROR, || {
        let (Some(rt), Some(callback)) = (runtime(rt), callback) else {
            return ENVOY_SMC_NULL_ARGUMENT;
        };
        rt.set_rescuer(Arc::new(CRescuer {
            callback,
            ctx: ctx as usize,
        }));
        ENVOY_SMC_OK
    })
}

/// Like `envoy_smc_watch_connect`, for a caller that installed a rescuer: true when the connect
/// is watched — the rescuer is then called exactly once with `token` — and `*cookie` (if not
/// NULL) holds the socket's cookie for `envoy_smc_rescue_connect`. false (not watched: adaptive
/// fallback disabled, NULL arguments, a non-IP address, a panic): the rescuer is never called
/// for it.
///
/// # Safety
/// `addr` must be NULL or point at `addrlen` readable bytes; `cookie` NULL or writable; `fd` open.
#[no_mangle]
pub unsafe extern "C" fn envoy_smc_watch_connect_rescuable(
    rt: *const envoy_smc_runtime,
    fd: c_int,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
    token: u64,
    cookie: *mut u64,
) -> bool {
    guard(false, || {
        let Some(rt) = runtime(rt) else { return false };
        // SAFETY: the caller guarantees addr/addrlen.
        let Some(remote) = (unsafe { sockaddr::from_raw(addr, addrlen) }) else {
            return false;
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: the caller guarantees fd is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let Some(c) = rt.watch_rescuable_connect(fd, remote, token) else {
            return false;
        };
        if !cookie.is_null() {
            // SAFETY: the caller guarantees a writable u64.
            unsafe { *cookie = c };
        }
        true
    })
}

/// Moves a connect the rescuer was called for (`rescue` true) to TCP: on the thread that owns
/// `fd`, after dropping the fd's epoll registration. `fd` must still be the socket with `cookie`
/// and still connecting to `addr`; `source` (NULL: none) is the address the caller bound before
/// connecting. `ENVOY_SMC_OK`: a TCP socket connecting to `addr` is under `fd` now — register it
/// with the event loop again, as for a replaced socket; otherwise nothing changed (not that
/// socket any more, no longer connecting, or the TCP socket could not be set up:
/// `ENVOY_SMC_INVALID_ARGUMENT`). Counted as `adaptive.rescued` / `adaptive.rescue_failed`.
///
/// # Safety
/// `addr` must point at `addrlen` readable bytes, `source` be NULL or point at `source_len`
/// readable bytes; `fd` must be open.
#[no_mangle]
pub unsafe extern "C" fn envoy_smc_rescue_connect(
    rt: *const envoy_smc_runtime,
    fd: c_int,
    cookie: u64,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
    source: *const libc::sockaddr,
    source_len: libc::socklen_t,
) -> envoy_smc_result {
    guard(ENVOY_SMC_INTERNAL_ERROR, || {
        let Some(rt) = runtime(rt) else {
            return ENVOY_SMC_NULL_ARGUMENT;
        };
        if addr.is_null() {
            return ENVOY_SMC_NULL_ARGUMENT;
        }
        // SAFETY: the caller guarantees addr/addrlen and source/source_len.
        let (dest, source) = unsafe {
            (
                sockaddr::from_raw(addr, addrlen),
                sockaddr::from_raw(source, source_len),
            )
        };
        let Some(dest) = dest else {
            return ENVOY_SMC_INVALID_ARGUMENT;
        };
        if fd < 0 {
            return ENVOY_SMC_INVALID_ARGUMENT;
        }
        // SAFETY: the caller guarantees fd is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match rt.rescue_connect(fd, cookie, dest, source) {
            Ok(()) => ENVOY_SMC_OK,
            Err(_) => ENVOY_SMC_INVALID_ARGUMENT,
        }
    })
}
