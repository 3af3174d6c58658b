//! What one network namespace's kernel says about SMC, gathered in one go: its SMC sockets
//! (smc_diag, with `IPPROTO_SMC` addresses filled from inet_diag) and its SMC counters
//! (`SMC_GEN_NETLINK` `GET_STATS`, `GET_FBACK_STATS`). Call [`dump_here`] in the namespace to
//! read, for instance inside [`super::netns::enter`]; every answer is per namespace.

use serde::Serialize;

use super::genl::{FallbackStats, SmcStats};
use super::{inet_diag, smc_diag, SmcGenl, SmcSocket};

/// One namespace's SMC sockets and counters; each part carries its own error.
#[derive(Debug, Clone, Serialize)]
pub struct NsDump {
    /// `Err` when smc_diag gave no answer (module not loaded, no SMC, not permitted).
    pub sockets: Result<Vec<SmcSocket>, String>,
    pub kernel_fallbacks: Option<FallbackStats>,
    pub kernel_stats: Option<SmcStats>,
    pub kernel_counters_error: Option<String>,
}

/// Dumps the calling thread's network namespace. `rows`: every attribute, and the zero
/// addresses of `IPPROTO_SMC` sockets filled from a TCP dump (counts by state, mode and
/// fallback reason need neither).
pub fn dump_here(rows: bool) -> NsDump {
    let sockets = if rows {
        smc_diag::dump().map(|mut s| {
            inet_diag::fill_addresses(&mut s);
            s
        })
    } else {
        smc_diag::dump_brief()
    }
    .map_err(|e| e.to_string());
    let counters = SmcGenl::open().and_then(|mut g| {
        let f = g.fallback_stats()?;
        Ok((f, g.stats().ok().flatten()))
    });
    let (kernel_fallbacks, kernel_stats, kernel_counters_error) = match counters {
        Ok((f, s)) => (Some(f), s, None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    NsDump {
        sockets,
        kernel_fallbacks,
        kernel_stats,
        kernel_counters_error,
    }
}
