//! The exporter's per-socket cost in user space: parse a netlink dump of 10,000 smc_diag
//! messages (the brief form the exporter asks for: base message + FALLBACK attribute) and count
//! them by mode, state, flavour and fallback reason, as `envoy-smc exporter` does per namespace.
//! `cargo bench --bench diag_count`; bench/README.md quotes the median. The kernel's side of the
//! dump is not in it (this host has no SMC): bench/exporter.sh measures whole scrapes in the VM.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_smc_cli::diag::netlink::{build_msg, messages, put_attr};
use envoy_smc_cli::diag::smc_diag::{parse_smc_diag_msg, SMC_DIAG_FALLBACK, SOCK_DIAG_BY_FAMILY};
use envoy_smc_cli::diag::{DeclineCode, Mode, SmcState};

/// One smc_diag message: an IPPROTO_SMC socket (AF_INET, zero addresses), ACTIVE or LISTEN,
/// SMC-R or fallback with a reason.
fn message(i: u32) -> Vec<u8> {
    let state = if i % 10 == 0 { 10 } else { 1 };
    let mode = if i % 3 == 0 { 1 } else { 0 };
    let mut m = vec![libc::AF_INET as u8, state, mode, 0];
    m.extend((20000 + (i % 40000) as u16).to_be_bytes());
    m.extend(((i % 30000) as u16 + 30000).to_be_bytes());
    m.extend([0u8; 32]); // addresses (zero, as the kernel sends them for IPPROTO_SMC)
    m.extend([0u8; 12]); // ifindex, cookie
    m.extend(0u32.to_ne_bytes()); // uid
    m.extend(u64::from(i + 1000).to_ne_bytes()); // inode
    let reason: u32 = if mode == 1 { 0x0301_0000 } else { 0 };
    let mut fb = reason.to_ne_bytes().to_vec();
    fb.extend(0u32.to_ne_bytes());
    put_attr(&mut m, SMC_DIAG_FALLBACK, &fb);
    build_msg(SOCK_DIAG_BY_FAMILY, 2, 1, &m)
}

/// What `count_here` in cli/src/bin/envoy-smc/exporter/metrics.rs does with one namespace's dump.
fn count(buf: &[u8]) -> usize {
    let mut by_mode_state: HashMap<(Mode, u8), u64> = HashMap::new();
    let mut by_flavour: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_reason: HashMap<(DeclineCode, DeclineCode), u64> = HashMap::new();
    for m in messages(buf) {
        let m = m.unwrap();
        let s = parse_smc_diag_msg(m.payload).unwrap();
        *by_mode_state.entry((s.mode, s.state.0)).or_default() += 1;
        *by_flavour.entry(s.flavour()).or_default() += 1;
        if let Some(r) = s.fallback_reason() {
            let peer = s.fallback.map(|f| f.peer_diagnosis).unwrap_or_default();
            *by_reason.entry((r, peer)).or_default() += 1;
        }
    }
    let named: BTreeMap<(String, String), u64> = by_mode_state
        .into_iter()
        .map(|((m, st), n)| ((m.name(), SmcState(st).name()), n))
        .collect();
    named.len() + by_flavour.len() + by_reason.len()
}

fn bench(c: &mut Criterion) {
    let buf: Vec<u8> = (0..10_000).flat_map(message).collect();
    assert_eq!(messages(&buf).count(), 10_000);
    c.bench_function("parse and count 10,000 smc_diag messages", |b| {
        b.iter(|| count(black_box(&buf)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
