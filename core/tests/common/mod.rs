//! Helpers shared by the integration tests. Each test binary uses its own part of them.
#![allow(dead_code)]

mod wait;

#[allow(unused_imports)] // not every test binary waits
pub use wait::{wait_for, wait_until};
