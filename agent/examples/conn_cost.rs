//! What a socket the agent converts costs when SMC cannot be used: the proxy's connections to its
//! app (loopback) are IPPROTO_SMC sockets that fall back to TCP at connect (PEERNOSMC). Measures,
//! in interleaved rounds in one run, connect + accept + close of a loopback connection from a
//! socket(AF_INET, SOCK_STREAM, 0) (plain TCP) and from socket(..., IPPROTO_SMC) (what the BPF
//! program returns), wall time and this process's CPU time per connection, and prints their
//! ratios. Needs a kernel with IPPROTO_SMC (run it in the SMC-R VM: bench/agent.sh).
//!
//!   conn_cost [ROUNDS [CONNECTIONS_PER_ROUND]]
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

const IPPROTO_SMC: libc::c_int = 256;

/// This process's user + system CPU time in microseconds.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// One loopback connection from a socket of `protocol` to `listener`, accepted and closed.
fn one(listener: &TcpListener, addr: &libc::sockaddr_in, protocol: libc::c_int) {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    assert!(
        fd >= 0,
        "socket(protocol {protocol}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    let (peer, _) = listener.accept().expect("accept");
    drop(s);
    drop(peer);
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let rounds = args.next().unwrap_or(6);
    let per_round = args.next().unwrap_or(2000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    // SAFETY: sockaddr_in is plain data.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();

    let kinds = [("tcp", 0), ("smc-fallback", IPPROTO_SMC)];
    for (_, p) in kinds {
        for _ in 0..200 {
            one(&listener, &addr, p); // warm-up
        }
    }
    // per kind: (wall us, cpu us) per connection, one sample per round
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); kinds.len()];
    for _ in 0..rounds {
        for (i, (_, p)) in kinds.iter().enumerate() {
            let (t, c) = (Instant::now(), cpu_us());
            for _ in 0..per_round {
                one(&listener, &addr, *p);
            }
            let wall = t.elapsed().as_secs_f64() * 1e6 / per_round as f64;
            let cpu = (cpu_us() - c) as f64 / per_round as f64;
            samples[i].push((wall, cpu));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut med = Vec::new();
    for (i, (name, _)) in kinds.iter().enumerate() {
        let wall = median(&mut samples[i].iter().map(|s| s.0).collect());
        let cpu = median(&mut samples[i].iter().map(|s| s.1).collect());
        println!("{name:<13} {wall:8.1} us/connection wall  {cpu:8.1} us/connection CPU  (median of {rounds} rounds x {per_round})");
        med.push((wall, cpu));
    }
    println!(
        "smc-fallback / tcp: wall x{:.2}, CPU x{:.2} (+{:.1} us wall, +{:.1} us CPU per connection)",
        med[1].0 / med[0].0,
        med[1].1 / med[0].1,
        med[1].0 - med[0].0,
        med[1].1 - med[0].1
    );
}
