//! Counters for every decision and outcome. Exact under concurrency (atomic adds), readable at
//! any time as a snapshot, named for Envoy stats, Prometheus and JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::TcpReason;
use crate::smc::SocketKind;

/// A counter that is not a TCP reason's. Its name (in Envoy `smc.<name>`) and its help text
/// are given here, once; its number is its place in [`SLOTS`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumMessage, strum::EnumCount,
)]
pub enum Counter {
    #[strum(
        serialize = "sockets_seen",
        message = "Sockets envoy-smc was asked about (IP stream sockets opened through it)."
    )]
    SocketsSeen,
    #[strum(
        serialize = "smc_connect_af_smc",
        message = "SMC client sockets opened (connect) as AF_SMC sockets."
    )]
    SmcConnectAfSmc,
    #[strum(
        serialize = "smc_connect_ipproto_smc",
        message = "SMC client sockets opened (connect) as IPPROTO_SMC sockets."
    )]
    SmcConnectIpprotoSmc,
    #[strum(
        serialize = "smc_listen_af_smc",
        message = "SMC listeners opened as AF_SMC sockets."
    )]
    SmcListenAfSmc,
    #[strum(
        serialize = "smc_listen_ipproto_smc",
        message = "SMC listeners opened as IPPROTO_SMC sockets."
    )]
    SmcListenIpprotoSmc,
    #[strum(
        serialize = "socket_replaced",
        message = "Sockets replaced under the same fd number (TCP to SMC or back)."
    )]
    SocketReplaced,
    #[strum(
        serialize = "fallback_switch_applied",
        message = "SMC sockets given the kernel's fallback switch."
    )]
    FallbackSwitchApplied,
    #[strum(
        serialize = "limit_handshake_set",
        message = "Listeners given SMC_LIMIT_HS."
    )]
    LimitHandshakeSet,
    #[strum(
        serialize = "errors",
        message = "Errors of envoy-smc's own calls that left a working TCP socket."
    )]
    Errors,
    #[strum(
        serialize = "adaptive.connects_watched",
        message = "SMC connects watched for a black hole (adaptive fallback)."
    )]
    ConnectsWatched,
    #[strum(
        serialize = "adaptive.black_hole_tripped",
        message = "Destinations proven black-holed (SMC's SYNs dropped, plain TCP works) and held on TCP."
    )]
    BlackHoleTripped,
    #[strum(
        serialize = "adaptive.black_hole_not_proven",
        message = "Stalled SMC connects whose destination did not answer plain TCP either (down, not a black hole)."
    )]
    BlackHoleNotProven,
    #[strum(
        serialize = "adaptive.probes",
        message = "SMC connects let through to a held destination to see whether it recovered."
    )]
    BlackHoleProbes,
    #[strum(
        serialize = "adaptive.recovered",
        message = "Held destinations whose probe connect succeeded over SMC again."
    )]
    BlackHoleRecovered,
    #[strum(
        serialize = "adaptive.rescued",
        message = "Connects stuck behind a black hole that the entry point moved to TCP in flight."
    )]
    BlackHoleRescued,
    #[strum(
        serialize = "adaptive.rescue_failed",
        message = "Connects stuck behind a black hole that could not be moved to TCP; they end at the program's connect timeout."
    )]
    BlackHoleRescueFailed,
    #[strum(
        serialize = "adaptive.tcp_probes",
        message = "Plain TCP probes the watchdog ran to tell a black hole from a destination that is down."
    )]
    TcpProbes,
    #[strum(
        serialize = "listen_shared",
        message = "Listen fds that took over an AF_SMC listener shared with other fds of the same address."
    )]
    ListenShared,
}

/// One counter slot: a plain counter or the TCP decisions for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Counter(Counter),
    Tcp(TcpReason),
}

/// Every counter, in the order of the C ABI's stats snapshot: the one list of counters. Only
/// append; a slot's place is its number and is never reused.
pub const SLOTS: [Slot; 36] = {
    use Counter::*;
    use Slot::{Counter as C, Tcp as T};
    use TcpReason as R;
    [
        C(SocketsSeen),
        C(SmcConnectAfSmc),
        C(SmcConnectIpprotoSmc),
        C(SmcListenAfSmc),
        C(SmcListenIpprotoSmc),
        C(SocketReplaced),
        C(FallbackSwitchApplied),
        C(LimitHandshakeSet),
        C(Errors),
        T(R::Disabled),
        T(R::NotOptedIn),
        T(R::KernelLacksSmc),
        T(R::MeshSwitchAbsent),
        T(R::KeptOnTcp),
        T(R::Loopback),
        T(R::LocalAddress),
        T(R::DeniedAddress),
        T(R::AddressNotAllowed),
        T(R::DeniedPort),
        T(R::PortNotAllowed),
        T(R::ListenerNotSelected),
        T(R::ReusePortUnsupported),
        T(R::FastOpen),
        T(R::NotIpStream),
        T(R::ReplaceFailed),
        T(R::BlackHoleHoldDown),
        C(ConnectsWatched),
        C(BlackHoleTripped),
        C(BlackHoleNotProven),
        C(BlackHoleProbes),
        C(BlackHoleRecovered),
        C(BlackHoleRescued),
        C(BlackHoleRescueFailed),
        T(R::OptionsNotCarried),
        C(TcpProbes),
        C(ListenShared),
    ]
};

/// Number of counters.
pub const COUNTERS: usize = SLOTS.len();

/// Slot number of each `Counter` (by its discriminant) and of each reason (by its number),
/// computed from `SLOTS` at compile time; a counter or reason missing from `SLOTS` (or listed
/// twice) fails the build.
const COUNTER_SLOT: [usize; <Counter as strum::EnumCount>::COUNT] = slot_table(false);
const REASON_SLOT: [usize; TcpReason::ALL.len() + 1] = slot_table(true);

const fn slot_table<const N: usize>(reasons: bool) -> [usize; N] {
    let mut table = [usize::MAX; N];
    let mut i = 0;
    while i < SLOTS.len() {
        let key = match (SLOTS[i], reasons) {
            (Slot::Counter(c), false) => Some(c as usize),
            (Slot::Tcp(r), true) => Some(r as usize),
            _ => None,
        };
        if let Some(k) = key {
            assert!(table[k] == usize::MAX, "listed twice in SLOTS");
            table[k] = i;
        }
        i += 1;
    }
    // Reason numbers start at 1: slot 0 of the reason table is unused.
    let mut k = if reasons { 1 } else { 0 };
    while k < N {
        assert!(table[k] != usize::MAX, "missing from SLOTS");
        k += 1;
    }
    table
}

const _: () = assert!(
    COUNTER_SLOT.len() + REASON_SLOT.len() - 1 == COUNTERS,
    "SLOTS lists every counter and every reason once"
);

impl Counter {
    /// The name as exported: `smc.<name>` in Envoy.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What it counts, for people (Prometheus HELP, docs).
    pub fn help(self) -> &'static str {
        strum::EnumMessage::get_message(&self).unwrap_or_else(|| self.name())
    }
}

impl Slot {
    /// The counter's name: `tcp.<reason>` for a reason's.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Slot::Counter(c) => c.name().into(),
            Slot::Tcp(r) => format!("tcp.{}", r.name()).into(),
        }
    }

    /// What it counts, for people.
    pub fn help(self) -> std::borrow::Cow<'static, str> {
        match self {
            Slot::Counter(c) => c.help().into(),
            Slot::Tcp(r) => {
                format!("Sockets kept on (or made) plain TCP: {}.", r.describe()).into()
            }
        }
    }
}

/// The counter index of a TCP reason.
fn reason_index(reason: TcpReason) -> usize {
    REASON_SLOT[reason as usize]
}

/// The name of counter `i`, as exported (`smc.<name>` in Envoy), as a static string.
pub fn counter_name(i: usize) -> Option<&'static str> {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            SLOTS
                .iter()
                .map(|s| match s.name() {
                    std::borrow::Cow::Borrowed(n) => n,
                    std::borrow::Cow::Owned(n) => &*Box::leak(n.into_boxed_str()),
                })
                .collect()
        })
        .get(i)
        .copied()
}

/// The Prometheus name of a counter, as Envoy's `/stats/prometheus` renders the Envoy stat
/// `smc.<name>` when no stats tag is configured: `envoy_` in front, every character outside
/// `[a-zA-Z0-9_]` replaced by `_`, nothing appended (Envoy adds no `_total`). The preload
/// library's stats file uses the same names, so one dashboard serves both entry points.
pub fn prometheus_name(envoy_stat: &str) -> String {
    let sanitized: String = envoy_stat
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("envoy_{sanitized}")
}

/// Prefix of every envoy-smc stat in Envoy.
pub const ENVOY_STAT_PREFIX: &str = "smc.";

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
        self.counters[COUNTER_SLOT[c as usize]].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: Counter, n: u64) {
        self.counters[COUNTER_SLOT[c as usize]].fetch_add(n, Ordering::Relaxed);
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
        self.counters[COUNTER_SLOT[c as usize]].load(Ordering::Relaxed)
    }

    pub fn tcp(&self, reason: TcpReason) -> u64 {
        self.counters[reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Every counter, in index order.
    pub fn snapshot(&self) -> [u64; COUNTERS] {
        std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed))
    }

    /// Every counter as Prometheus text, named as Envoy's `/stats/prometheus` renders the same
    /// counters of the native extension (see `prometheus_name`).
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (slot, value) in SLOTS.iter().zip(self.snapshot()) {
            let name = prometheus_name(&format!("{ENVOY_STAT_PREFIX}{}", slot.name()));
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} counter\n{name} {value}",
                slot.help()
            );
        }
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
    fn every_counter_has_a_unique_name_matching_its_slot() {
        let names: Vec<_> = (0..COUNTERS)
            .map(|i| counter_name(i).expect("named"))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), COUNTERS);
        assert_eq!(counter_name(COUNTERS), None);
        // The numbers the C ABI has published stay where they were.
        assert_eq!(names[0], "sockets_seen");
        assert_eq!(names[9], "tcp.disabled");
        assert_eq!(names[26], "adaptive.connects_watched");
        assert_eq!(names[33], "tcp.options_not_carried");
        assert_eq!(names[35], "listen_shared");
        for r in TcpReason::ALL {
            assert_eq!(names[reason_index(*r)], format!("tcp.{}", r.name()));
        }
    }

    #[test]
    fn counts_land_in_their_own_slot() {
        let stats = Stats::default();
        stats.inc(Counter::ListenShared);
        stats.inc_tcp(TcpReason::OptionsNotCarried);
        stats.add(Counter::TcpProbes, 2);
        let named = stats.named();
        let value = |n: &str| named.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(value("listen_shared"), Some(1));
        assert_eq!(value("tcp.options_not_carried"), Some(1));
        assert_eq!(value("adaptive.tcp_probes"), Some(2));
        assert_eq!(named.iter().map(|(_, v)| v).sum::<u64>(), 4);
    }

    #[test]
    fn prometheus_text_names_every_counter_once() {
        let stats = Stats::default();
        stats.inc_tcp(TcpReason::Loopback);
        let mut text = String::new();
        stats.write_prometheus(&mut text);
        assert_eq!(text.matches("# TYPE ").count(), COUNTERS);
        assert!(
            text.contains("\n# TYPE envoy_smc_tcp_loopback counter\nenvoy_smc_tcp_loopback 1\n")
        );
        assert!(text.contains("\nenvoy_smc_sockets_seen 0\n"));
    }

    #[test]
    fn prometheus_names_are_envoys_rendering() {
        assert_eq!(
            prometheus_name("smc.tcp.loopback"),
            "envoy_smc_tcp_loopback"
        );
        assert_eq!(
            prometheus_name("smc.adaptive.black_hole_tripped"),
            "envoy_smc_adaptive_black_hole_tripped"
        );
    }
}
