//! Many threads deciding at once: counters exact, no fd left open.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_smc::{
    envoy_smc_on_connect, envoy_smc_runtime, envoy_smc_socket, envoy_smc_socket_state,
    envoy_smc_verdict,
};
use envoy_smc_core::config;
use envoy_smc_core::policy::{Environment, TcpReason};
use envoy_smc_core::smc::KernelSupport;
use envoy_smc_core::stats::Counter;
use envoy_smc_core::Runtime;

const THREADS: usize = 8;
const PER_THREAD: usize = 10_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Through the C ABI, as Envoy's worker threads would call it: real sockets, one call per connect.
#[test]
fn threads_through_the_c_abi_count_exactly_and_leak_nothing() {
    // The kernel is claimed to have SMC so that every rule is exercised; where it really lacks SMC,
    // the SMC verdicts end as replace_failed (still counted exactly, still a working TCP socket).
    let env = Environment::assuming(KernelSupport::BOTH);
    let cfg = config::from_yaml("opt_in: {all_workloads: true}\nupstream: {allow: [\"10.0.0.0/8\"], deny: [\"10.96.0.0/12\"]}").unwrap();
    let rt = Arc::new(Runtime::new(&cfg, &env));
    let before = open_fds();
    let dests: [SocketAddr; 4] = [
        "10.1.1.1:80".parse().unwrap(),  // SMC (or replace_failed without SMC)
        "10.96.0.1:80".parse().unwrap(), // denied
        "192.0.2.1:80".parse().unwrap(), // not allowed
        "10.2.2.2:80".parse().unwrap(),  // no mesh switch on these sockets
    ];
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                let rtp = Arc::as_ptr(&rt) as *const envoy_smc_runtime;
                for i in 0..PER_THREAD {
                    let which = (i + t) % 4;
                    let sin = socket2::SockAddr::from(dests[which]);
                    let mut state = envoy_smc_socket_state::default();
                    // SAFETY: valid runtime pointer (kept alive by `rt`), valid sockaddr and state.
                    let fd = unsafe {
                        envoy_smc_socket(
                            rtp,
                            libc::AF_INET,
                            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                            0,
                            sin.as_ptr().cast(),
                            sin.len(),
                            &mut state,
                        )
                    };
                    assert!(fd >= 0);
                    if which != 3 {
                        let one: i32 = 1;
                        // SAFETY: as above; the option bytes are a valid int.
                        unsafe {
                            envoy_smc::envoy_smc_note_sockopt(
                                rtp,
                                &mut state,
                                1,
                                18,
                                (&one as *const i32).cast(),
                                4,
                            )
                        };
                    }
                    let mut v = envoy_smc_verdict {
                        kind: 0,
                        reason: 0,
                        limit_handshake: 0,
                        replaced: 0,
                    };
                    // SAFETY: as above.
                    let r = unsafe {
                        envoy_smc_on_connect(
                            rtp,
                            fd,
                            &state,
                            std::ptr::null(),
                            sin.as_ptr().cast(),
                            sin.len(),
                            None,
                            std::ptr::null_mut(),
                            0,
                            std::ptr::null_mut(),
                            &mut v,
                        )
                    };
                    assert_eq!(r as u32, 0);
                    // SAFETY: fd was opened above and is closed once.
                    unsafe { libc::close(fd) };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = (THREADS * PER_THREAD) as u64;
    let s = rt.stats();
    assert_eq!(s.get(Counter::SocketsSeen), total);
    let smc_or_failed = s.get(Counter::SmcConnectIpprotoSmc) + s.tcp(TcpReason::ReplaceFailed);
    assert_eq!(smc_or_failed, total / 4);
    assert_eq!(s.tcp(TcpReason::DeniedAddress), total / 4);
    assert_eq!(s.tcp(TcpReason::AddressNotAllowed), total / 4);
    assert_eq!(s.tcp(TcpReason::MeshSwitchAbsent), total / 4);
    assert_eq!(open_fds(), before, "no fd left open");
}

/// Through the Rust API while the configuration is swapped underneath.
#[test]
fn decisions_stay_consistent_while_the_config_is_swapped() {
    let env = Environment::assuming(KernelSupport::BOTH);
    let on =
        config::from_yaml("opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}").unwrap();
    let off = config::from_yaml("mode: MODE_OFF").unwrap();
    let rt = Arc::new(Runtime::new(&on, &env));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (rt, stop, env) = (Arc::clone(&rt), Arc::clone(&stop), env.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rt.swap_config(if n % 2 == 0 { &off } else { &on }, &env);
                n += 1;
            }
            n
        })
    };
    let dest: SocketAddr = "10.1.1.1:80".parse().unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || {
                let mut smc = 0u64;
                for _ in 0..PER_THREAD {
                    let v = rt.decide_connect(dest, Default::default());
                    // Every decision comes whole from one configuration or the other.
                    match v {
                        envoy_smc_core::Verdict::Smc { .. } => smc += 1,
                        envoy_smc_core::Verdict::Tcp(r) => assert_eq!(r, TcpReason::Disabled),
                    }
                }
                smc
            })
        })
        .collect();
    let _: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 0);
}
