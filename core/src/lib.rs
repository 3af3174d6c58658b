//! envoy-smc's core: put Envoy/Istio sidecar traffic on SMC-R (`AF_SMC` / `IPPROTO_SMC`) with
//! per-destination fallback to TCP. Every entry point (the C ABI in `capi/`, the preload in
//! `preload/`, the `envoy-smc` command in `cli/`) sits on top of this crate; it imports none of
//! them.
//!
//! `unsafe` lives only in the kernel layer: [`smc`] (SMC sockets) and [`os`] (files, the process,
//! the probe's plain TCP sockets), each block with its reason. The crate denies `unsafe_code`
//! and allows it on those two modules alone, so an `unsafe` block anywhere else fails the build.
//! The lock-free structures of [`adaptive`] (the breaker's table, the watchdog's inbox) are safe
//! code on atomics, [`arc_swap`] and [`once_cell::race`]; each says why it is lock-free.
//!
//! Modules, bottom up:

#![deny(unsafe_code)]

/// Adaptive fallback: black-hole detection, the breaker, rescues, the watchdog, the shared table.
pub mod adaptive;
/// The one configuration message (`api/envoy_smc/v1/smc.proto`), loading and validation.
pub mod config;
/// The kernel layer for what is not SMC: file, process and plain-socket calls behind safe
/// signatures.
#[allow(unsafe_code)]
pub mod os;
/// A directory this process owns, and files written into it without following links.
pub mod owned_dir;
/// The decisions of DESIGN.md as plain functions over a compiled config.
pub mod policy;
/// Process-wide hooks: fork handlers, the vfork test.
pub mod process;
/// Config + kernel capabilities + counters, shared by every entry point.
pub mod runtime;
/// The kernel calls: SMC sockets, the fallback switch, socket replacement, probing, sockaddrs.
#[allow(unsafe_code)]
pub mod smc;
/// Counters for every decision and outcome.
pub mod stats;
pub use config::{ConfigError, SmcConfig};
pub use policy::{Policy, SmcKind, TcpReason, Verdict};
pub use runtime::Runtime;
