//! The adaptive-fallback part of `envoy-smc status`: destinations each proxy process holds on TCP
//! (or is probing, or let back on SMC), read from the tables the processes publish in the state
//! directory (see `envoy_smc_core::adaptive::publish`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_smc_core::adaptive::publish::{read_tables_checked, state_dir, ProcessTable};
use envoy_smc_core::owned_dir::printable;

/// The tables of running processes in `dir` (default: the state directory), filtered like the
/// connections (`--pid`, `--comm`). Files that were not trusted or not readable are named on
/// stderr (escaped).
pub fn load(dir: Option<&Path>, pid: Option<u32>, comm: Option<&str>) -> Vec<ProcessTable> {
    let dir = dir.map_or_else(state_dir, PathBuf::from);
    let found = read_tables_checked(&dir, Path::new("/proc"));
    for why in &found.skipped {
        eprintln!("envoy-smc status: adaptive-fallback table skipped: {why}");
    }
    found
        .tables
        .into_iter()
        .filter(|t| pid.is_none_or(|p| p == t.pid))
        .filter(|t| comm.is_none_or(|c| c == t.comm))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "12 s ago" / "in 18 s" / "due" for a time relative to `now`.
fn ago(t: u64, now: u64) -> String {
    format!("{} s ago", now.saturating_sub(t) / 1000)
}

fn until(t: u64, now: u64) -> String {
    if t <= now {
        "due (next connection probes)".to_string()
    } else {
        format!("in {} s", (t - now).div_ceil(1000))
    }
}

/// The human-readable section (empty when no process remembers a destination).
pub fn table(tables: &[ProcessTable]) -> String {
    table_at(tables, now_ms())
}

pub fn table_at(tables: &[ProcessTable], now: u64) -> String {
    let rows: Vec<_> = tables
        .iter()
        .flat_map(|t| t.destinations.iter().map(move |d| (t, d)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nadaptive fallback: destinations that dropped SMC's SYNs while plain TCP worked\n{:<20} {:<47} {:<10} {:>7} {:<12} NEXT SMC RETRY",
        "PROCESS", "DESTINATION", "STATE", "STRIKES", "SINCE"
    );
    for (t, d) in rows {
        let next = match d.next_retry_unix_ms {
            Some(at) => until(at, now),
            None if d.state == "probing" => "now (one connection)".to_string(),
            None => "-".to_string(),
        };
        let _ = writeln!(
            o,
            "{:<20} {:<47} {:<10} {:>7} {:<12} {}",
            format!("{}/{}", printable(&t.comm), t.pid),
            d.destination.to_string(),
            d.state,
            d.strikes,
            ago(d.since_unix_ms, now),
            next
        );
    }
    for t in tables.iter().filter(|t| t.omitted > 0) {
        let _ = writeln!(
            o,
            "{:<20} ({} more destinations not published)",
            format!("{}/{}", printable(&t.comm), t.pid),
            t.omitted
        );
    }
    o
}

/// A Prometheus label value: quotes, backslashes and newlines escaped as the format wants,
/// other control characters as `\xNN`.
fn lv(s: &str) -> String {
    printable(
        &s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Prometheus gauges: one series per remembered destination.
pub fn prometheus(tables: &[ProcessTable]) -> String {
    let mut o = String::new();
    o.push_str("# HELP envoy_smc_black_hole_strikes Destinations a proxy remembers as dropping SMC's SYNs (state: held, probing, recovered), valued by strikes.\n");
    o.push_str("# TYPE envoy_smc_black_hole_strikes gauge\n");
    for t in tables {
        for d in &t.destinations {
            let _ = writeln!(
                o,
                "envoy_smc_black_hole_strikes{{pid=\"{}\",comm=\"{}\",destination=\"{}\",state=\"{}\"}} {}",
                t.pid,
                lv(&t.comm),
                d.destination,
                lv(&d.state),
                d.strikes
            );
        }
    }
    o.push_str("# HELP envoy_smc_black_hole_next_retry_timestamp_seconds When a held destination may try SMC again (Unix time).\n");
    o.push_str("# TYPE envoy_smc_black_hole_next_retry_timestamp_seconds gauge\n");
    for t in tables {
        for d in &t.destinations {
            if let Some(at) = d.next_retry_unix_ms {
                let _ = writeln!(
                    o,
                    "envoy_smc_black_hole_next_retry_timestamp_seconds{{pid=\"{}\",comm=\"{}\",destination=\"{}\"}} {:.3}",
                    t.pid,
                    lv(&t.comm),
                    d.destination,
                    at as f64 / 1000.0
                );
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_smc_core::adaptive::publish::DestinationState;

    fn sample() -> Vec<ProcessTable> {
        vec![ProcessTable {
            pid: 42,
            comm: "envoy".into(),
            start_time: 1,
            written_unix_ms: 100_000,
            destinations: vec![
                DestinationState {
                    destination: "10.9.0.2:9001".parse().unwrap(),
                    state: "held".into(),
                    strikes: 2,
                    since_unix_ms: 88_000,
                    next_retry_unix_ms: Some(117_500),
                },
                DestinationState {
                    destination: "[fd00::1]:443".parse().unwrap(),
                    state: "recovered".into(),
                    strikes: 1,
                    since_unix_ms: 99_000,
                    next_retry_unix_ms: None,
                },
            ],
            omitted: 0,
        }]
    }

    #[test]
    fn the_table_says_state_since_and_next_retry() {
        let text = table_at(&sample(), 100_000);
        assert!(text.contains("envoy/42"), "{text}");
        let held = text.lines().find(|l| l.contains("10.9.0.2:9001")).unwrap();
        assert!(held.contains("held"), "{held}");
        assert!(held.contains("12 s ago"), "{held}");
        assert!(held.contains("in 18 s"), "{held}");
        let rec = text.lines().find(|l| l.contains("[fd00::1]:443")).unwrap();
        assert!(
            rec.contains("recovered") && rec.trim_end().ends_with('-'),
            "{rec}"
        );
        assert!(table_at(&sample(), 200_000).contains("due"));
        assert_eq!(table_at(&[], 0), "");
    }

    #[test]
    fn prometheus_has_one_series_per_destination() {
        let text = prometheus(&sample());
        assert!(text.contains(
            "envoy_smc_black_hole_strikes{pid=\"42\",comm=\"envoy\",destination=\"10.9.0.2:9001\",state=\"held\"} 2"
        ));
        assert!(text.contains(
            "envoy_smc_black_hole_next_retry_timestamp_seconds{pid=\"42\",comm=\"envoy\",destination=\"10.9.0.2:9001\"} 117.500"
        ));
        assert_eq!(text.matches("envoy_smc_black_hole_strikes{").count(), 2);
    }
}
