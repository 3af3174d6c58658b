//! The `envoy-smc` command's library: what only the command needs, on top of `envoy_smc_core`.
//!
//! - [`diag`]: what the kernel did with SMC sockets (smc_diag, the SMC generic netlink family);
//! - [`render`]: the Istio manifests and Envoy bootstrap fragments written from a description.
//!
//! The commands themselves live in `src/bin/envoy-smc/`.

pub mod diag;
pub mod render;
