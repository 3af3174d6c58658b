//! Counters for every decision and outcome. Exact under concurrency (atomic adds), readable at
//! any time as a snapshot, named for Envoy stats, Prometheus and JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::TcpReason;
use crate::smc::SocketKind;

/// One counter. The numbers index the C ABI's stats snapshot and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Sockets envoy-smc was asked about (IP stream sockets opened through it).
    SocketsSeen = 0,
    /// SMC client sockets opened (connect), by flavour.
    SmcConnectAfSmc = 1,
    SmcConnectIpprotoSmc = 2,
    /// SMC listeners opened, by flavour.
    SmcListenAfSmc = 3,
    SmcListenIpprotoSmc = 4,
    /// Sockets replaced under the same fd number (TCP -> SMC or back).
    SocketReplaced = 5,
    /// The kernel's fallback switch applied to an SMC socket.
    FallbackSwitchApplied = 6,
    /// Listeners given SMC_LIMIT_HS.
    LimitHandshakeSet = 7,
    /// Errors of envoy-smc's own calls that left a working TCP socket.
    Errors = 8,
    // 9..=25: TCP decisions by reason (TcpReason n -> 8 + n).
    /// SMC connects watched for a black hole (adaptive fallback).
    ConnectsWatched = 26,
    /// Destinations proven black-holed (SMC's SYNs dropped, plain TCP works) and held on TCP.
    BlackHoleTripped = 27,
    /// Stalled SMC connects whose destination did not answer plain TCP either (down, not a
    /// black hole): nothing tripped.
    BlackHoleNotProven = 28,
    /// SMC connects let through to a held destination to see whether it recovered.
    BlackHoleProbes = 29,
    /// Held destinations whose probe connect succeeded over SMC again.
    BlackHoleRecovered = 30,
    /// Connects stuck behind a black hole that the entry point moved to TCP in flight.
    BlackHoleRescued = 31,
    /// Connects stuck behind a black hole that could not be moved (not rescuable where they
    /// were made, closed meanwhile, or the TCP socket could not be set up): they end at the
    /// program's connect timeout.
    BlackHoleRescueFailed = 32,
    // 33: `tcp.options_not_carried` (TcpReason 18, added after the adaptive counters).
    /// Plain TCP probes the watchdog ran to tell a black hole from a destination that is down
    /// (one per destination at a time; verdicts are remembered for a while).
    TcpProbes = 34,
    /// Listen fds that took over an `AF_SMC` listener shared with other fds of the same address
    /// (a listener's per-worker sockets, or a listener update's new sockets).
    ListenShared = 35,
}

/// Index of the first per-reason counter, minus one (reason numbers start at 1).
const REASON_BASE: usize = 8;
/// Reasons numbered up to this one are counted at `REASON_BASE + n`; later ones at
/// `LATER_REASON_BASE + (n - FIRST_LATER_REASON)` (counter numbers are never reused).
const FIRST_LATER_REASON: usize = 18;
const LATER_REASON_BASE: usize = 33;
/// Number of counters.
pub const COUNTERS: usize = 36;

/// The counter index of a TCP reason.
fn reason_index(reason: TcpReason) -> usize {
    let n = reason as usize;
    if n < FIRST_LATER_REASON {
        REASON_BASE + n
    } else {
        LATER_REASON_BASE + n - FIRST_LATER_REASON
    }
}

const FIXED: [&str; 9] = [
    "sockets_seen",
    "smc_connect_af_smc",
    "smc_connect_ipproto_smc",
    "smc_listen_af_smc",
    "smc_listen_ipproto_smc",
    "socket_replaced",
    "fallback_switch_applied",
    "limit_handshake_set",
    "errors",
];
const REASONS: [&str; 17] = [
    "tcp.disabled",
    "tcp.not_opted_in",
    "tcp.kernel_lacks_smc",
    "tcp.mesh_switch_absent",
    "tcp.kept_on_tcp",
    "tcp.loopback",
    "tcp.local_address",
    "tcp.denied_address",
    "tcp.address_not_allowed",
    "tcp.denied_port",
    "tcp.port_not_allowed",
    "tcp.listener_not_selected",
    "tcp.reuse_port_unsupported",
    "tcp.fast_open",
    "tcp.not_ip_stream",
    "tcp.replace_failed",
    "tcp.black_hole_hold_down",
];
const ADAPTIVE: [&str; 7] = [
    "adaptive.connects_watched",
    "adaptive.black_hole_tripped",
    "adaptive.black_hole_not_proven",
    "adaptive.probes",
    "adaptive.recovered",
    "adaptive.rescued",
    "adaptive.rescue_failed",
];
/// Counters added later, in index order from 33.
const LATER: [&str; 3] = [
    "tcp.options_not_carried",
    "adaptive.tcp_probes",
    "listen_shared",
];

/// The name of counter `i`, as exported (`smc.<name>` in Envoy).
pub fn counter_name(i: usize) -> Option<&'static str> {
    FIXED
        .iter()
        .chain(REASONS.iter())
        .chain(ADAPTIVE.iter())
        .chain(LATER.iter())
        .nth(i)
        .copied()
}

/// The counters of one runtime.
#[derive(Debug)]
pub struct Stats {
    counters: [AtomicU64; COUNTERS],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    pub fn inc(&self, c: Counter) {
        self.counters[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc_tcp(&self, reason: TcpReason) {
        self.counters[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn inc_smc_connect(&self, kind: SocketKind) {
        match kind {
            SocketKind::AfSmc => self.inc(Counter::SmcConnectAfSmc),
            SocketKind::IpprotoSmc => self.inc(Counter::SmcConnectIpprotoSmc),
            SocketKind::Tcp => {}
        }
    }

    pub fn inc_smc_listen(&self, kind: SocketKind) {
        match kind {
            SocketKind::AfSmc => self.inc(Counter::SmcListenAfSmc),
            SocketKind::IpprotoSmc => self.inc(Counter::SmcListenIpprotoSmc),
            SocketKind::Tcp => {}
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    pub fn tcp(&self, reason: TcpReason) -> u64 {
        self.counters[reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Every counter, in index order.
    pub fn snapshot(&self) -> [u64; COUNTERS] {
        std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed))
    }

    /// (name, value) for every counter.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        self.snapshot()
            .iter()
            .enumerate()
            .filter_map(|(i, v)| counter_name(i).map(|n| (n, *v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_unique_name_matching_its_reason() {
        let names: Vec<_> = (0..COUNTERS)
            .map(|i| counter_name(i).expect("named"))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), COUNTERS);
        assert_eq!(
            FIXED.len() + REASONS.len() + ADAPTIVE.len() + LATER.len(),
            COUNTERS
        );
        assert_eq!(REASONS.len(), FIRST_LATER_REASON - 1);
        assert_eq!(names[Counter::TcpProbes as usize], "adaptive.tcp_probes");
        assert_eq!(names[Counter::ListenShared as usize], "listen_shared");
        assert_eq!(
            names[Counter::ConnectsWatched as usize],
            "adaptive.connects_watched"
        );
        assert_eq!(
            names[Counter::BlackHoleRecovered as usize],
            "adaptive.recovered"
        );
        assert_eq!(
            names[Counter::BlackHoleRescueFailed as usize],
            "adaptive.rescue_failed"
        );
        assert_eq!(names.len(), COUNTERS);
        assert_eq!(counter_name(COUNTERS), None);
        for r in TcpReason::ALL {
            assert_eq!(names[reason_index(r)], format!("tcp.{}", r.name()));
        }
    }
}
