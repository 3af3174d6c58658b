//! Waiting on a condition with a deadline, instead of sleeping for a fixed time. Shared by the
//! root crate's tests and the preload tests (preload/tests/common includes this file).

use std::time::{Duration, Instant};

/// Polls `ready` until it gives a value and returns it; after `timeout`, panics naming `what` it
/// waited for. The pause between looks grows from 1 ms to 50 ms, so a quick condition is seen
/// quickly and a slow one costs little CPU on a loaded machine.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// [`wait_for`] a condition.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    wait_for(what, timeout, || ready().then_some(()))
}
