//! Adaptive fallback: destinations that drop SMC's SYNs (TCP option 254) are proven black-holed
//! and kept on TCP for a growing hold-down, then tried again one connection at a time.
//!
//! - [`breaker`]: the per-destination memory (lock-free reads, bounded).
//! - [`detect`]: `TCP_INFO` of a connecting socket and the plain TCP probe.
//! - [`watchdog`]: the thread that watches SMC connects in flight and trips the breaker.
//! - [`probes`]: its plain TCP probes, concurrent, with per-destination verdicts remembered.
//! - [`inbox`]: the lock-free hand-over of new connects to the watchdog thread.
//! - [`rescue`]: what an entry point does to save a connect already stuck behind a black hole.
//! - [`publish`]: the table as a file per process, for `envoy-smc status`.

pub mod breaker;
pub mod detect;
pub mod inbox;
pub mod probes;
pub mod publish;
pub mod rescue;
pub mod watchdog;

pub use breaker::{Admission, Breaker, Entry, Phase};
pub use rescue::{RescueOutcome, Rescuer, WatchedConnect};
pub use watchdog::Watchdog;
