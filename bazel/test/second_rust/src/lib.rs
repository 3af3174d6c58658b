//! The "other" Rust runtime in archive_test.sh's link: it uses std (formatting, threads,
//! unwinding) so that its copies of std's symbols, rust_eh_personality and the allocator shim
//! are all in the link next to envoy-smc's.

use std::panic;

/// Sums 1..=n on a thread of its own; returns the sum.
#[no_mangle]
pub extern "C" fn second_rust_sum_on_thread(n: u64) -> u64 {
    std::thread::spawn(move || (1..=n).sum::<u64>())
        .join()
        .unwrap_or(0)
}

/// Panics and catches it: 1 when the unwinder and this library's personality routine did their
/// job, 0 otherwise.
#[no_mangle]
pub extern "C" fn second_rust_catches_its_panic() -> i32 {
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let caught = panic::catch_unwind(|| {
        let words: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
        if words.len() == 3 {
            panic!("second_rust: deliberate panic");
        }
        words.len()
    })
    .is_err();
    panic::set_hook(hook);
    i32::from(caught)
}
