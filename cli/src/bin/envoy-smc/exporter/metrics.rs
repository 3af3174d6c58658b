//! One scrape: every network namespace entered in turn, its SMC sockets counted (never kept as
//! rows), its kernel counters read, the proxies' adaptive-fallback tables, rendered as Prometheus
//! text (exposition format 0.0.4).
//!
//! Naming: every metric starts with `envoy_smc_`; counters (the kernel's monotonic ones) end in
//! `_total`; units are base units named in the metric (`_seconds`, `_bytes_total`); current
//! quantities are plain gauges (`envoy_smc_sockets`); `_info` gauges are 1 and carry labels to
//! join on. Every per-namespace series has `netns` (the namespace inode) and `pod` (its hostname,
//! empty when unknown). The names `status --prometheus` already used keep their meaning.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write as _};
use std::path::Path;
use std::time::Instant;

use envoy_smc_cli::diag::genl::{FallbackStats, SmcStats};
use envoy_smc_cli::diag::netns::{self, PodLabels};
use envoy_smc_cli::diag::nsdump;
use envoy_smc_cli::diag::{DeclineCode, Mode, SmcState};
use envoy_smc_core::adaptive::publish::ProcessTable;

/// What one namespace contributes to the page: counts only.
#[derive(Debug, Default)]
pub struct NsMetrics {
    pub netns: u64,
    pub labels: PodLabels,
    /// `None`: entered; `Some(why)`: could not be entered.
    pub not_entered: Option<String>,
    pub diag_up: bool,
    /// (mode, state) -> sockets.
    pub sockets: BTreeMap<(String, String), u64>,
    /// (flavour) -> sockets.
    pub flavours: BTreeMap<&'static str, u64>,
    /// (reason, peer diagnosis) -> fallback sockets.
    pub fallback: BTreeMap<(String, String), u64>,
    pub kernel_fallbacks: Option<FallbackStats>,
    pub kernel_stats: Option<SmcStats>,
    pub tables: Vec<ProcessTable>,
}

impl NsMetrics {
    fn pod(&self) -> &str {
        self.labels.hostname.as_deref().unwrap_or("")
    }
}

/// Counts the calling thread's namespace (inside [`netns::enter_each`]): rows never leave it.
fn count_here() -> NsMetrics {
    let d = nsdump::dump_here(false);
    let mut m = NsMetrics {
        diag_up: d.sockets.is_ok(),
        kernel_fallbacks: d.kernel_fallbacks,
        kernel_stats: d.kernel_stats,
        ..NsMetrics::default()
    };
    // Counted on the raw codes (no allocation per socket), named once per distinct key.
    let mut by_mode_state: HashMap<(Mode, u8), u64> = HashMap::new();
    let mut by_reason: HashMap<(DeclineCode, DeclineCode), u64> = HashMap::new();
    for s in d.sockets.unwrap_or_default() {
        *by_mode_state.entry((s.mode, s.state.0)).or_default() += 1;
        *m.flavours.entry(s.flavour()).or_default() += 1;
        if let Some(r) = s.fallback_reason() {
            let peer = s.fallback.map(|f| f.peer_diagnosis).unwrap_or_default();
            *by_reason.entry((r, peer)).or_default() += 1;
        }
    }
    for ((mode, state), n) in by_mode_state {
        m.sockets.insert((mode.name(), SmcState(state).name()), n);
    }
    for ((r, peer), n) in by_reason {
        *m.fallback
            .entry((r.to_string(), peer.to_string()))
            .or_default() += n;
    }
    m
}

/// Enters every namespace under `proc_root` and counts what is there.
pub fn collect(proc_root: &Path, state_dir: &Path) -> Vec<NsMetrics> {
    let (nss, _) = netns::list(proc_root);
    let mut tables = netns::black_hole_tables(proc_root, &nss, state_dir);
    let counted = netns::enter_each(proc_root, &nss, |_| count_here());
    nss.iter()
        .zip(counted)
        .map(|(ns, counted)| {
            let (mut m, host) = match counted {
                Ok(c) => c,
                Err(e) => (
                    NsMetrics {
                        not_entered: Some(e),
                        ..NsMetrics::default()
                    },
                    None,
                ),
            };
            m.netns = ns.inode;
            m.labels = netns::pod_labels(proc_root, ns, host);
            m.tables = tables.remove(&ns.inode).unwrap_or_default();
            m
        })
        .collect()
}

/// A label value in the exposition format: control characters (a pod's process name, say) shown
/// as `\xNN` text first, then backslash and double quote escaped, the only escapes the format
/// has besides `\n`; so `\x07` reaches Prometheus as `\\x07`, never as an invalid escape.
pub(crate) fn lv(s: &str) -> String {
    envoy_smc_core::owned_dir::printable(s)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A page under construction.
#[derive(Default)]
pub struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", lv(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Self-metrics and the node-wide facts that are not per namespace.
pub struct Scrape {
    pub started: Instant,
    /// `envoy-smc doctor`'s verdict (refreshed in the background), `None` before the first run.
    pub doctor_ready: Option<bool>,
}

/// Renders the page.
pub fn render(all: &[NsMetrics], scrape: &Scrape) -> String {
    let mut p = Page::default();
    let entered = all.iter().filter(|m| m.not_entered.is_none()).count();

    p.family(
        "envoy_smc_netns_info",
        "gauge",
        "A network namespace: a process in it and, where readable, its pod (hostname, Kubernetes pod UID and cgroup).",
    );
    for m in all {
        let ns = m.netns.to_string();
        let pid = m.labels.pid.to_string();
        p.sample(
            "envoy_smc_netns_info",
            &[
                ("netns", &ns),
                ("pod", m.pod()),
                ("pod_uid", m.labels.pod_uid.as_deref().unwrap_or("")),
                ("cgroup", m.labels.kube_cgroup.as_deref().unwrap_or("")),
                ("pid", &pid),
                ("comm", &m.labels.comm),
            ],
            1,
        );
    }
    p.family(
        "envoy_smc_netns_up",
        "gauge",
        "Whether the exporter could enter the network namespace (1) or not (0; needs CAP_SYS_ADMIN).",
    );
    for m in all {
        let ns = m.netns.to_string();
        let up = u8::from(m.not_entered.is_none());
        p.sample(
            "envoy_smc_netns_up",
            &[("netns", &ns), ("pod", m.pod())],
            up,
        );
    }
    p.family(
        "envoy_smc_diag_up",
        "gauge",
        "Whether smc_diag answered in the namespace (1) or not (0: no SMC, smc_diag not loaded, or not entered).",
    );
    for m in all {
        let ns = m.netns.to_string();
        let up = u8::from(m.diag_up);
        p.sample("envoy_smc_diag_up", &[("netns", &ns), ("pod", m.pod())], up);
    }

    p.family(
        "envoy_smc_sockets",
        "gauge",
        "SMC sockets by mode (SMCR, SMCD, TCP = fallback) and state.",
    );
    for m in all {
        let ns = m.netns.to_string();
        for ((mode, state), n) in &m.sockets {
            p.sample(
                "envoy_smc_sockets",
                &[
                    ("netns", &ns),
                    ("pod", m.pod()),
                    ("mode", mode),
                    ("state", state),
                ],
                n,
            );
        }
    }
    p.family(
        "envoy_smc_sockets_by_flavour",
        "gauge",
        "SMC sockets by flavour (AF_SMC, IPPROTO_SMC).",
    );
    for m in all {
        let ns = m.netns.to_string();
        for (flavour, n) in &m.flavours {
            p.sample(
                "envoy_smc_sockets_by_flavour",
                &[("netns", &ns), ("pod", m.pod()), ("flavour", flavour)],
                n,
            );
        }
    }
    p.family(
        "envoy_smc_fallback_sockets",
        "gauge",
        "SMC sockets on TCP fallback, by local reason and peer diagnosis.",
    );
    for m in all {
        let ns = m.netns.to_string();
        for ((reason, peer), n) in &m.fallback {
            p.sample(
                "envoy_smc_fallback_sockets",
                &[
                    ("netns", &ns),
                    ("pod", m.pod()),
                    ("reason", reason),
                    ("peer_diagnosis", peer),
                ],
                n,
            );
        }
    }

    p.family(
        "envoy_smc_kernel_fallbacks_total",
        "counter",
        "Connections the kernel fell back to TCP in the namespace, by side.",
    );
    for m in all {
        let ns = m.netns.to_string();
        if let Some(f) = &m.kernel_fallbacks {
            for (side, v) in [("client", f.client_total), ("server", f.server_total)] {
                p.sample(
                    "envoy_smc_kernel_fallbacks_total",
                    &[("netns", &ns), ("pod", m.pod()), ("side", side)],
                    v,
                );
            }
        }
    }
    p.family(
        "envoy_smc_kernel_handshakes_total",
        "counter",
        "Successful SMC handshakes in the namespace, by technology, side and SMC version.",
    );
    for m in all {
        let ns = m.netns.to_string();
        if let Some(s) = &m.kernel_stats {
            for (tech, t) in [("smcr", &s.smcr), ("smcd", &s.smcd)] {
                for (side, ver, v) in [
                    ("client", "v1", t.client_v1_success),
                    ("client", "v2", t.client_v2_success),
                    ("server", "v1", t.server_v1_success),
                    ("server", "v2", t.server_v2_success),
                ] {
                    p.sample(
                        "envoy_smc_kernel_handshakes_total",
                        &[
                            ("netns", &ns),
                            ("pod", m.pod()),
                            ("tech", tech),
                            ("side", side),
                            ("version", ver),
                        ],
                        v,
                    );
                }
            }
        }
    }
    p.family(
        "envoy_smc_kernel_handshake_errors_total",
        "counter",
        "Failed SMC handshakes in the namespace, by side.",
    );
    for m in all {
        let ns = m.netns.to_string();
        if let Some(s) = &m.kernel_stats {
            for (side, v) in [
                ("client", s.client_handshake_errors),
                ("server", s.server_handshake_errors),
            ] {
                p.sample(
                    "envoy_smc_kernel_handshake_errors_total",
                    &[("netns", &ns), ("pod", m.pod()), ("side", side)],
                    v,
                );
            }
        }
    }
    p.family(
        "envoy_smc_kernel_bytes_total",
        "counter",
        "Bytes carried over SMC in the namespace, by technology and direction.",
    );
    for m in all {
        let ns = m.netns.to_string();
        if let Some(s) = &m.kernel_stats {
            for (tech, t) in [("smcr", &s.smcr), ("smcd", &s.smcd)] {
                for (dir, v) in [("rx", t.rx_bytes), ("tx", t.tx_bytes)] {
                    p.sample(
                        "envoy_smc_kernel_bytes_total",
                        &[
                            ("netns", &ns),
                            ("pod", m.pod()),
                            ("tech", tech),
                            ("direction", dir),
                        ],
                        v,
                    );
                }
            }
        }
    }

    p.family(
        "envoy_smc_black_hole_destinations",
        "gauge",
        "Destinations a proxy remembers as dropping SMC's SYNs, by state (held = on TCP now, probing, recovered).",
    );
    for m in all {
        let ns = m.netns.to_string();
        for t in &m.tables {
            let pid = t.pid.to_string();
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for d in &t.destinations {
                *by_state.entry(d.state.as_str()).or_default() += 1;
            }
            for (state, n) in by_state {
                p.sample(
                    "envoy_smc_black_hole_destinations",
                    &[
                        ("netns", &ns),
                        ("pod", m.pod()),
                        ("pid", &pid),
                        ("comm", &t.comm),
                        ("state", state),
                    ],
                    n,
                );
            }
        }
    }
    p.family(
        "envoy_smc_black_hole_strikes",
        "gauge",
        "Per remembered destination: how many times it dropped SMC's SYNs (trips).",
    );
    for m in all {
        let ns = m.netns.to_string();
        for t in &m.tables {
            let pid = t.pid.to_string();
            for d in &t.destinations {
                p.sample(
                    "envoy_smc_black_hole_strikes",
                    &[
                        ("netns", &ns),
                        ("pod", m.pod()),
                        ("pid", &pid),
                        ("comm", &t.comm),
                        ("destination", &d.destination.to_string()),
                        ("state", &d.state),
                    ],
                    d.strikes,
                );
            }
        }
    }

    p.family(
        "envoy_smc_doctor_ready",
        "gauge",
        "Whether `envoy-smc doctor` finds this node ready for SMC-R (1) or not (0).",
    );
    if let Some(r) = scrape.doctor_ready {
        p.sample("envoy_smc_doctor_ready", &[], u8::from(r));
    }
    p.family(
        "envoy_smc_up",
        "gauge",
        "Whether this scrape could enter at least one network namespace (1) or none (0).",
    );
    p.sample("envoy_smc_up", &[], u8::from(entered > 0));
    p.family(
        "envoy_smc_scrape_duration_seconds",
        "gauge",
        "How long this scrape took to collect.",
    );
    p.sample(
        "envoy_smc_scrape_duration_seconds",
        &[],
        format!("{:.6}", scrape.started.elapsed().as_secs_f64()),
    );
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_smc_core::adaptive::publish::DestinationState;

    /// Undoes the exposition format's escapes; `None` for one the format does not have.
    fn unescape(v: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn label_values_use_only_the_formats_escapes() {
        // A process name may hold any byte but NUL (prctl PR_SET_NAME).
        for raw in [
            "plain",
            "a\x07b",
            "q\"uote",
            "back\\slash\\x07",
            "new\nline",
            "\u{1b}[31m",
        ] {
            let v = lv(raw);
            let back = unescape(&v).unwrap_or_else(|| panic!("{raw:?} -> {v:?}: invalid escape"));
            assert_eq!(back, envoy_smc_core::owned_dir::printable(raw), "{raw:?}");
            assert!(!v.chars().any(char::is_control), "{raw:?} -> {v:?}");
        }
        assert_eq!(lv("a\x07\"b"), "a\\\\x07\\\"b");
    }

    #[test]
    fn renders_labelled_families_once_each() {
        let mut a = NsMetrics {
            netns: 4026531840,
            labels: PodLabels {
                pid: 1,
                comm: "init".into(),
                hostname: Some("node\"1".into()),
                ..PodLabels::default()
            },
            diag_up: true,
            ..NsMetrics::default()
        };
        a.sockets.insert(("SMCR".into(), "ACTIVE".into()), 3);
        a.fallback.insert(("PEERNOSMC".into(), "none".into()), 2);
        a.tables.push(ProcessTable {
            pid: 7,
            comm: "envoy".into(),
            start_time: 1,
            written_unix_ms: 1,
            destinations: vec![DestinationState {
                destination: "10.9.0.2:9001".parse().unwrap(),
                state: "held".into(),
                strikes: 2,
                since_unix_ms: 1,
                next_retry_unix_ms: None,
            }],
            omitted: 0,
        });
        let b = NsMetrics {
            netns: 4026532000,
            not_entered: Some("setns: EPERM".into()),
            ..NsMetrics::default()
        };
        let page = render(
            &[a, b],
            &Scrape {
                started: Instant::now(),
                doctor_ready: Some(false),
            },
        );
        assert!(page.contains(
            "envoy_smc_sockets{netns=\"4026531840\",pod=\"node\\\"1\",mode=\"SMCR\",state=\"ACTIVE\"} 3\n"
        ), "{page}");
        assert!(page.contains("envoy_smc_fallback_sockets{netns=\"4026531840\",pod=\"node\\\"1\",reason=\"PEERNOSMC\",peer_diagnosis=\"none\"} 2\n"));
        assert!(page.contains("envoy_smc_netns_up{netns=\"4026532000\",pod=\"\"} 0\n"));
        assert!(page.contains("envoy_smc_black_hole_destinations{netns=\"4026531840\",pod=\"node\\\"1\",pid=\"7\",comm=\"envoy\",state=\"held\"} 1\n"));
        assert!(page.contains("envoy_smc_doctor_ready 0\n"));
        assert!(page.contains("envoy_smc_up 1\n"));
        for fam in [
            "envoy_smc_sockets",
            "envoy_smc_up",
            "envoy_smc_kernel_bytes_total",
        ] {
            assert_eq!(page.matches(&format!("# TYPE {fam} ")).count(), 1, "{fam}");
        }
    }
}
