//! The per-connection decision path: the socket-time and connect-time decisions of a runtime
//! whose configuration has 1,000 allow CIDRs and 1,000 deny CIDRs (plus port rules).
//! `cargo bench --bench decision`; the issue note quotes the median.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_smc_core::config;
use envoy_smc_core::policy::{Environment, SocketFacts};
use envoy_smc_core::smc::KernelSupport;
use envoy_smc_core::Runtime;

fn runtime(rules: usize) -> Runtime {
    // Disjoint /24s across 10.0.0.0/8 (allow) and 172.16.0.0/12 (deny), so nothing merges away.
    let allow: Vec<String> = (0..rules)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 250, (i % 250) + 1))
        .collect();
    let deny: Vec<String> = (0..rules)
        .map(|i| format!("\"172.{}.{}.0/24\"", 16 + i / 250, i % 250))
        .collect();
    let text = format!(
        "opt_in: {{all_workloads: true}}\nadaptive_fallback: {{max_destinations: 16384, hold_down_ms: 3600000, max_hold_down_ms: 3600000}}\nupstream: {{allow: [{}], deny: [{}], allow_ports: [\"1-60000\"], deny_ports: [\"15000-15021\"]}}",
        allow.join(","),
        deny.join(",")
    );
    let env = Environment {
        kernel: Some(KernelSupport::BOTH),
        local_addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 3, 3, 3))],
        annotations: vec![],
    };
    Runtime::new(&config::from_yaml(&text).unwrap(), &env)
}

/// What envoy-smc decides for one connection: the socket-time check, the mesh switch option
/// Envoy sets, and the connect-time decision.
fn one_connection(rt: &Runtime, d: SocketAddr) -> (bool, envoy_smc_core::Verdict) {
    let tracked = rt
        .policy()
        .at_socket(libc::AF_INET, libc::SOCK_STREAM, 0, Some(d.ip()))
        .is_ok();
    let facts = rt.note_sockopt(
        SocketFacts::default(),
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        &1i32.to_ne_bytes(),
    );
    black_box((tracked, rt.decide_connect(black_box(d), facts)))
}

fn bench(c: &mut Criterion) {
    let rt = runtime(1000);
    let on = rt.note_sockopt(
        SocketFacts::default(),
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        &1i32.to_ne_bytes(),
    );
    let dests: Vec<SocketAddr> = (0..64u32)
        .map(|i| SocketAddr::from(([10, (i % 4) as u8, (i * 3 % 250 + 1) as u8, 9], 8080)))
        .collect();
    assert!(
        rt.decide_connect(dests[0], on).is_smc(),
        "the bench destination must take the SMC path"
    );
    let mut i = 0usize;
    c.bench_function("socket+connect decision, 1000 CIDR rules", |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            one_connection(&rt, dests[i])
        })
    });
    // The same path with 10,000 destinations remembered as black-holed (none of them the one asked).
    for i in 0..10_000u32 {
        rt.hold_destination(SocketAddr::from(([10, 200, (i >> 8) as u8, i as u8], 9000)));
    }
    assert!(
        rt.black_holes().len() >= 9_990,
        "remembered: {}",
        rt.black_holes().len()
    );
    c.bench_function(
        "socket+connect decision, 1000 CIDR rules, 10000 black-holed destinations",
        |b| {
            b.iter(|| {
                i = (i + 1) & 63;
                one_connection(&rt, dests[i])
            })
        },
    );
    let held = SocketAddr::from(([10, 200, 0, 7], 9000));
    assert!(!rt.decide_connect(held, on).is_smc());
    c.bench_function(
        "connect decision, a black-holed destination among 10000",
        |b| b.iter(|| black_box(rt.decide_connect(black_box(held), on))),
    );
    let denied: SocketAddr = "172.17.100.7:8080".parse().unwrap();
    c.bench_function(
        "connect decision, denied destination, 1000 CIDR rules",
        |b| b.iter(|| black_box(rt.decide_connect(black_box(denied), on))),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
