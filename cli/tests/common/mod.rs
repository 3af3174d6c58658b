//! Helpers shared by the CLI's integration tests. Each test binary uses its own part of them.
#![allow(dead_code)]

pub mod vm;
#[path = "../../../core/tests/common/wait.rs"]
mod wait;

#[allow(unused_imports)] // not every test binary waits
pub use wait::{wait_for, wait_until};
