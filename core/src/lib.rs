//! envoy-smc: put Envoy/Istio sidecar traffic on SMC-R (`AF_SMC` / `IPPROTO_SMC`) with
//! per-destination fallback to TCP.
//!
//! Layers, bottom up:
//! - [`smc`]: the kernel calls (SMC sockets, the fallback switch, socket replacement, probing);
//! - [`config`]: the one configuration message (`api/envoy_smc/v1/smc.proto`), loading and validation;
//! - [`policy`]: the decisions of DESIGN.md as plain functions over a compiled config;
//! - [`stats`]: counters for every decision and outcome;
//! - [`runtime`]: config + kernel capabilities + counters, shared by every entry point;
//! - [`diag`]: what the kernel did (smc_diag, SMC generic netlink);
//! - [`ffi`]: the C ABI used by the Envoy extension and C callers.

pub mod adaptive;
pub mod config;
pub mod diag;
pub mod ffi;
pub mod owned_dir;
pub mod policy;
pub mod process;
pub mod render;
pub mod runtime;
pub mod smc;
pub mod stats;

pub use config::{ConfigError, SmcConfig};
pub use policy::{Policy, SmcKind, TcpReason, Verdict};
pub use runtime::Runtime;
