//! The preload library on this host's kernel (no `AF_SMC`): real programs under `LD_PRELOAD`
//! making real sockets on loopback and on the host's own address.
//!
//! Without SMC in the kernel every socket stays TCP (`kernel_lacks_smc`); with
//! `ENVOY_SMC_ASSUME_KERNEL` the policy believes the kernel has SMC, so decisions are made,
//! options and epoll registrations are tracked, and the replacement itself fails (the kernel
//! refuses the SMC socket) — which must leave every connection working on TCP.
//!
//! Needs: the cdylib built (`cargo build -p envoy-smc-preload`, done by `cargo test` of this
//! package), an address on a non-loopback interface for the "SMC-selected" paths (the first
//! IPv4 address of a non-loopback interface; those tests skip with a message if there is none),
//! root for the secure-execution test (skips otherwise), python3 for the python test (skips).

mod common;

use std::ffi::c_int;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn role_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    if !run_common_role(&role) {
        match role.as_str() {
            "hammer" => hammer_role(),
            "secure_probe" => secure_probe_role(),
            "microbench" => microbench_role(),
            "vfork_close_range" => vfork_close_range_role(),
            "efault" => efault_role(),
            "stats_go" => stats_go_role(),
            "stats_fork" => stats_fork_role(),
            other => panic!("unknown role {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

/// The host's first non-loopback IPv4 address (a "remote" destination that is really local).
fn host_addr() -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut cur = head;
    let mut found = None;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null()
            // SAFETY: non-null sockaddr.
            && unsafe { (*ifa.ifa_addr).sa_family } as c_int == libc::AF_INET
        {
            // SAFETY: the family says sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && found.is_none() {
                found = Some(ip);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: freeing what getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    found
}

fn need_host_addr() -> Option<Ipv4Addr> {
    let a = host_addr();
    if a.is_none() {
        eprintln!("skipped: this host has no non-loopback IPv4 address");
    }
    a
}

/// A plain server (the library without a configuration) on a free port of this host's
/// non-loopback address, and that address; `None` (skipped, said on stderr) where there is none.
fn server_on_host_addr() -> Option<(Running, SocketAddr)> {
    let ip = need_host_addr()?;
    let target = SocketAddr::new(ip.into(), free_port(ip.into()));
    Some((server(None, target, &[]), target))
}

// ---------------------------------------------------------------------------------------------
// tests

/// The plain kernel: the library is active, sees every socket, keeps each on TCP with the reason
/// `kernel_lacks_smc`, tracks nothing, and traffic flows with every epoll edge.
#[test]
fn plain_kernel_everything_stays_tcp_and_flows() {
    if envoy_smc_core::smc::KernelSupport::probe_now().af_smc {
        eprintln!("skipped: this kernel has AF_SMC (the test is for kernels without it)");
        return;
    }
    let cfg = smc_config(1, true);
    let srv = server(Some(&cfg), "127.0.0.1:0".parse().unwrap(), &[]);
    let port = ready_port(&srv);
    let out = client(
        Some(&cfg),
        SocketAddr::from(([127, 0, 0, 1], port)),
        20,
        &[],
    );
    assert_all_connections_ok(&out, 20);
    let s = out.stats();
    assert_eq!(s.state(), "active");
    assert_eq!(s.get("sockets_seen"), 20);
    assert_eq!(s.tcp("kernel_lacks_smc"), 20);
    assert_eq!(s.get("socket_replaced"), 0);
    assert_eq!(s.tracked(), 0);
    let srv = srv.finish(T);
    srv.assert_ok();
    assert_eq!(srv.result("listener_kind"), "TCP");
    assert_eq!(srv.num("accepted"), 20);
    assert_eq!(srv.num("closed"), 20);
    let ss = srv.stats();
    assert_eq!(ss.get("sockets_seen"), 1);
    assert_eq!(ss.tcp("kernel_lacks_smc"), 1);
}

/// SMC assumed but impossible: every selected socket is decided SMC, the replacement fails
/// (the kernel has no SMC socket to give), and the connection carries on over the original TCP
/// socket — same fd, same flags, every edge.
#[test]
fn failed_replacement_keeps_the_tcp_socket_working() {
    let Some(ip) = need_host_addr() else { return };
    for mode in ["ipproto_smc", "af_smc"] {
        let port = free_port(ip.into());
        let cfg = smc_config(port, true);
        let env = [("ENVOY_SMC_ASSUME_KERNEL", mode)];
        // AF_SMC listeners cannot carry SO_REUSEPORT: the test's listener sets it only for IPPROTO_SMC
        let srv_env = [
            ("ENVOY_SMC_ASSUME_KERNEL", mode),
            (
                "ENVOY_SMC_TEST_REUSE_PORT",
                if mode == "af_smc" { "0" } else { "1" },
            ),
        ];
        let srv = server(Some(&cfg), SocketAddr::new(ip.into(), port), &srv_env);
        let out = client(Some(&cfg), SocketAddr::new(ip.into(), port), 5, &env);
        assert_all_connections_ok(&out, 5);
        for line in out.stdout.lines().filter(|l| l.starts_with("RESULT conn=")) {
            assert!(line.contains("kind_after=TCP"), "{line}");
        }
        let s = out.stats();
        assert_eq!(s.get("sockets_seen"), 5, "{mode}");
        assert_eq!(s.tcp("replace_failed"), 5, "{mode}");
        assert_eq!(s.get("errors"), 5, "{mode}");
        assert_eq!(s.get("socket_replaced"), 0, "{mode}");
        assert_eq!(s.tracked(), 0, "{mode}");
        // the one warning, once per process
        assert_eq!(
            out.stderr.matches("could not open an SMC socket").count(),
            1,
            "{}",
            out.describe()
        );
        let srv = srv.finish(T);
        srv.assert_ok();
        assert_eq!(srv.result("listener_kind"), "TCP");
        assert_eq!(
            srv.stats().tcp("replace_failed"),
            1,
            "{mode}: {}",
            srv.describe()
        );
    }
}

/// The listener decisions: a selected AF_SMC listener with SO_REUSEPORT is decided SMC (shared
/// by its fds), which this kernel cannot open (replace_failed: it stays the TCP socket it was),
/// an unselected one is plain TCP (listener_not_selected), a loopback one stays TCP (loopback) —
/// and all of them serve.
#[test]
fn listener_decisions_are_counted_and_listeners_serve() {
    let Some(ip) = need_host_addr() else { return };
    let cases: [(IpAddr, bool, &str, &str); 3] = [
        (ip.into(), true, "af_smc", "replace_failed"),
        (ip.into(), false, "ipproto_smc", "listener_not_selected"),
        (Ipv4Addr::LOCALHOST.into(), true, "ipproto_smc", "loopback"),
    ];
    for (addr, selected, mode, reason) in cases {
        let port = free_port(addr);
        let cfg = smc_config(if selected { port } else { 1 }, true);
        let srv = server(
            Some(&cfg),
            SocketAddr::new(addr, port),
            &[
                ("ENVOY_SMC_ASSUME_KERNEL", mode),
                ("ENVOY_SMC_TEST_REUSE_PORT", "1"),
            ],
        );
        let out = client(None, SocketAddr::new(addr, port), 2, &[]);
        assert_all_connections_ok(&out, 2);
        let srv = srv.finish(T);
        srv.assert_ok();
        assert_eq!(srv.result("listener_kind"), "TCP");
        assert_eq!(srv.stats().tcp(reason), 1, "{reason}: {}", srv.describe());
        assert_eq!(srv.stats().get("socket_replaced"), 0);
    }
}

/// The mesh switch and the per-cluster fallback are read from the options the program sets
/// before connect(): SO_RCVLOWAT=1 switches SMC on, TCP_FASTOPEN_CONNECT=0 keeps the cluster on
/// TCP, nothing means no switch.
#[test]
fn mesh_switch_and_per_cluster_fallback_options_are_read() {
    let Some((srv, target)) = server_on_host_addr() else {
        return;
    };
    let cfg = smc_config(1, false);
    let env = |opts: &'static str| {
        [
            ("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc"),
            ("ENVOY_SMC_TEST_OPTS", opts),
        ]
    };
    let cases = [
        ("", "mesh_switch_absent"),
        ("1:18:1", "replace_failed"), // switched on: decided SMC, kernel refuses
        ("1:18:1,6:30:0", "kept_on_tcp"), // switched on, per-cluster fallback wins
        ("6:30:0", "kept_on_tcp"),
    ];
    for (opts, reason) in cases {
        let out = client(Some(&cfg), target, 2, &env(opts));
        assert_all_connections_ok(&out, 2);
        assert_eq!(
            out.stats().tcp(reason),
            2,
            "opts {opts:?}: {}",
            out.describe()
        );
    }
    // loopback destinations stay TCP even when switched on
    let lo = server(None, "127.0.0.1:0".parse().unwrap(), &[]);
    let out = client(
        Some(&cfg),
        SocketAddr::from(([127, 0, 0, 1], ready_port(&lo))),
        2,
        &env("1:18:1"),
    );
    assert_all_connections_ok(&out, 2);
    assert_eq!(out.stats().tcp("loopback"), 2, "{}", out.describe());
    lo.finish(T).assert_ok();
    srv.finish(T).assert_ok();
}

/// An invalid or unreadable configuration: one error line, and the process is exactly what it
/// would be without the library.
#[test]
fn bad_configuration_leaves_the_process_on_plain_tcp() {
    let bad = config("mode: SOMETIMES\nupstream: {allow: [\"10.0.0.0/33\"]}\n");
    let missing = temp_path("does-not-exist.yaml");
    // A FIFO used to block the first socket() (and every thread after it) forever, /dev/zero
    // to eat memory, deep nesting to cost seconds: each is now one clear line.
    let fifo = temp_path("config.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _fifo_cleanup = DirCleanup(fifo.clone());
    let deep = config(&format!("upstream: {}", "[".repeat(200_000)));
    for (path, what) in [
        (bad.path().to_path_buf(), "invalid"),
        (missing, "cannot read"),
        (fifo.clone(), "is a FIFO, not a regular file"),
        (
            "/dev/zero".into(),
            "is a character device, not a regular file",
        ),
        (deep.path().to_path_buf(), "nested more than 32 levels deep"),
    ] {
        let lo = server(None, "127.0.0.1:0".parse().unwrap(), &[]);
        let out = RoleCmd::new(ENTRY, "client")
            .preload()
            .env(
                "ENVOY_SMC_TEST_TARGET",
                format!("127.0.0.1:{}", ready_port(&lo)),
            )
            .env("ENVOY_SMC_TEST_CONNECTIONS", "3")
            .env("ENVOY_SMC_CONFIG", &path)
            .run(Duration::from_secs(20));
        assert_all_connections_ok(&out, 3);
        let lines: Vec<_> = out
            .stderr
            .lines()
            .filter(|l| l.contains("envoy-smc"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", out.describe());
        assert!(
            lines[0].contains(what) && lines[0].contains("plain TCP"),
            "{}",
            lines[0]
        );
        let s = out.stats();
        assert_eq!(s.state(), "off_invalid_config");
        assert_eq!(s.get("sockets_seen"), 0);
        lo.finish(T).assert_ok();
    }
}

/// `ENVOY_SMC_LOG=debug` logs each decision; without it the library is silent on success.
#[test]
fn decisions_are_logged_when_asked() {
    let Some((srv, target)) = server_on_host_addr() else {
        return;
    };
    let cfg = smc_config(1, true);
    let out = client(
        Some(&cfg),
        target,
        1,
        &[
            ("ENVOY_SMC_LOG", "debug"),
            ("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc"),
        ],
    );
    assert_all_connections_ok(&out, 1);
    assert!(
        out.stderr
            .contains(&format!("connect {target}: TCP (replace_failed)")),
        "{}",
        out.describe()
    );
    let quiet = client(Some(&cfg), target, 1, &[]);
    assert_all_connections_ok(&quiet, 1);
    assert_eq!(
        quiet.stderr.matches("envoy-smc").count(),
        0,
        "{}",
        quiet.describe()
    );
    srv.finish(T).assert_ok();
}

/// `ENVOY_SMC_STATS_FILE`: Prometheus text written periodically and at exit, `{pid}` expanded.
#[test]
fn stats_file_is_written_at_exit() {
    let lo = server(None, "127.0.0.1:0".parse().unwrap(), &[]);
    let cfg = smc_config(1, true);
    let pattern = temp_path("stats-{pid}.prom");
    let out = client(
        Some(&cfg),
        SocketAddr::from(([127, 0, 0, 1], ready_port(&lo))),
        4,
        &[
            ("ENVOY_SMC_STATS_FILE", pattern.to_str().unwrap()),
            ("ENVOY_SMC_STATS_INTERVAL", "0.1"),
        ],
    );
    assert_all_connections_ok(&out, 4);
    lo.finish(T).assert_ok();
    let pid = out
        .stats()
        .0
        .keys()
        .find_map(|k| {
            k.split("pid=\"")
                .nth(1)
                .map(|r| r.split('"').next().unwrap().to_string())
        })
        .unwrap();
    let path = std::path::PathBuf::from(pattern.to_str().unwrap().replace("{pid}", &pid));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let _ = std::fs::remove_file(&path);
    let file = Stats::parse(&text);
    assert_eq!(file.get("sockets_seen"), 4, "{text}");
    assert_eq!(file.0, out.stats().0, "file and in-process counters differ");
    assert!(text.contains("# TYPE envoy_smc_tcp_loopback counter"));
    assert!(text.contains("# TYPE envoy_smc_preload_stale_fd counter"));
}

// ---------------------------------------------------------------------------------------------
// many threads at once

fn hammer_role() {
    let threads: usize = std::env::var("HAMMER_THREADS").unwrap().parse().unwrap();
    let per: usize = std::env::var("HAMMER_CONNECTIONS")
        .unwrap()
        .parse()
        .unwrap();
    let target: SocketAddr = std::env::var("ENVOY_SMC_TEST_TARGET")
        .unwrap()
        .parse()
        .unwrap();
    let fds_before = open_fds();
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let failures = &failures;
            s.spawn(move || {
                for i in 0..per {
                    // switched on every other connection; every third one kept on TCP
                    let mut opts = vec![];
                    if i % 2 == 0 {
                        opts.push((libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1));
                    }
                    if i % 3 == 0 {
                        opts.push((libc::IPPROTO_TCP, 30, 0));
                    }
                    if et_client(target, None, &opts, 1, 64, false).is_err() {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // churn: sockets opened and closed or duplicated without connecting, and
                    // epoll instances coming and going
                    // SAFETY: plain syscalls on fds owned here.
                    unsafe {
                        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                        let ep = libc::epoll_create1(0);
                        let mut ev = libc::epoll_event {
                            events: libc::EPOLLIN as u32,
                            u64: 1,
                        };
                        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut ev);
                        if (i + t) % 2 == 0 {
                            let d = libc::dup(s);
                            libc::close(d);
                        }
                        libc::close(ep);
                        libc::close(s);
                    }
                }
            });
        }
    });
    println!(
        "RESULT failures={} fds_before={fds_before} fds_after={}",
        failures.load(std::sync::atomic::Ordering::Relaxed),
        open_fds()
    );
    print_own_stats();
}

/// 8 threads, each 150 connections plus socket/epoll/dup churn, all tracked (SMC assumed): no
/// failure, counters exact, no fd leaked, nothing left tracked.
#[test]
fn many_threads_at_once() {
    let Some((srv, target)) = server_on_host_addr() else {
        return;
    };
    let cfg = smc_config(1, false);
    let (threads, per) = (8usize, 150usize);
    let started = Instant::now();
    let out = RoleCmd::new(ENTRY, "hammer")
        .preload()
        .env("ENVOY_SMC_CONFIG", cfg.path())
        .env("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc")
        .env("ENVOY_SMC_TEST_TARGET", target.to_string())
        .env("HAMMER_THREADS", threads.to_string())
        .env("HAMMER_CONNECTIONS", per.to_string())
        .run(Duration::from_secs(300));
    out.assert_ok();
    eprintln!(
        "hammer: {} connections in {:?}",
        threads * per,
        started.elapsed()
    );
    assert_eq!(out.num("failures"), 0, "{}", out.describe());
    assert_eq!(out.result("fds_before"), out.result("fds_after"));
    let s = out.stats();
    let total = (threads * per) as u64;
    let kept = (threads * per.div_ceil(3)) as u64;
    let switched = (0..per).filter(|i| i % 2 == 0 && i % 3 != 0).count() as u64 * threads as u64;
    // every socket: the connections and the churn sockets
    assert_eq!(s.get("sockets_seen"), 2 * total, "{}", out.describe());
    assert_eq!(s.tcp("kept_on_tcp"), kept);
    assert_eq!(s.tcp("replace_failed"), switched);
    assert_eq!(s.tcp("mesh_switch_absent"), total - kept - switched);
    assert_eq!(s.tracked(), 0);
    assert_eq!(s.preload("internal_errors"), 0);
    assert_eq!(s.preload("stale_fd"), 0);
    // the churn sockets that were duplicated: unbound, so settled as TCP at dup time
    assert_eq!(s.preload("dup_settled"), (threads * per / 2) as u64);
    srv.finish(T).assert_ok();
}

// ---------------------------------------------------------------------------------------------
// per-call cost (preload/bench/hooks.sh runs this role with and without the library)

/// Nanoseconds per call of the interposed functions, best of 5 batches of `MICRO_N` calls.
fn microbench_role() {
    let n: usize = std::env::var("MICRO_N").map_or(100_000, |v| v.parse().unwrap());
    let best = |f: &mut dyn FnMut()| -> f64 {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::MAX, f64::min)
    };
    // Plain syscalls on fds owned here, in every closure below.
    // SAFETY: no pointer arguments; the fd is this closure's own.
    let sock_close = best(&mut || unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        libc::close(fd);
    });
    // SAFETY: no pointer arguments; the fd is this closure's own.
    let udp_close = best(&mut || unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        libc::close(fd);
    });
    // SAFETY: no pointer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    // a socket the library decided about already (connected), like Envoy's established ones
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ss = socket2::SockAddr::from(l.local_addr().unwrap());
    // SAFETY: ss holds a socket address of ss.len() bytes.
    unsafe { libc::connect(fd, ss.as_ptr().cast(), ss.len()) };
    let setsockopt = best(&mut || {
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    });
    let ep = Epoll::new();
    // SAFETY: ev lives across both calls; ep and fd are open.
    let epoll = best(&mut || unsafe {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        libc::epoll_ctl(ep.0, libc::EPOLL_CTL_ADD, fd, &mut ev);
        libc::epoll_ctl(ep.0, libc::EPOLL_CTL_DEL, fd, &mut ev);
    }) / 2.0;
    // SAFETY: F_GETFL takes no argument.
    let fcntl = best(&mut || unsafe {
        libc::fcntl(fd, libc::F_GETFL);
    });
    // SAFETY: the duplicate is closed right away; fd stays open.
    let dup_close = best(&mut || unsafe {
        libc::close(libc::dup(fd));
    });
    println!(
        "RESULT socket_close_ns={sock_close:.0} udp_socket_close_ns={udp_close:.0} setsockopt_ns={setsockopt:.0} \
         epoll_ctl_ns={epoll:.0} fcntl_ns={fcntl:.0} dup_close_ns={dup_close:.0}"
    );
    // SAFETY: fd is this test's own and is not used again.
    unsafe { libc::close(fd) };
}

// ---------------------------------------------------------------------------------------------
// secure execution

/// Loads the library with dlopen (the dynamic loader ignores LD_PRELOAD paths in secure
/// execution, so this is how a set-uid process would meet it: /etc/ld.so.preload or a linked
/// dependency), opens an IP stream socket through the library's own `socket`, and reports the
/// library's state.
fn secure_probe_role() {
    let lib = std::env::var("PROBE_LIB").unwrap();
    let c = std::ffi::CString::new(lib).unwrap();
    // SAFETY: dlopen/dlsym with valid C strings; the symbols have the declared signatures.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null(), "dlopen failed");
        let sock: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int =
            std::mem::transmute(libc::dlsym(h, c"socket".as_ptr()));
        let state: extern "C" fn() -> c_int =
            std::mem::transmute(libc::dlsym(h, c"envoy_smc_preload_state".as_ptr()));
        let fd = sock(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        println!(
            "RESULT at_secure={} state={}",
            libc::getauxval(libc::AT_SECURE),
            state()
        );
        libc::close(fd);
    }
}

/// In a set-uid process (AT_SECURE) the library does nothing — it does not even read its
/// environment; the same binary without set-uid is active.
#[test]
fn secure_execution_does_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to make a set-uid copy owned by another user)");
        return;
    }
    let dir = temp_path("secure");
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = DirCleanup(dir.clone());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("probe");
    let lib = dir.join("libenvoy_smc_preload.so");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::copy(preload_lib(), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = smc_config(1, true);
    std::fs::set_permissions(cfg.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |setuid: bool| {
        let mode = if setuid { 0o4755 } else { 0o755 };
        let c = std::ffi::CString::new(exe.to_str().unwrap()).unwrap();
        // SAFETY: chown of a file this test created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut cmd = RoleCmd::new(ENTRY, "secure_probe");
        cmd.cmd = std::process::Command::new(&exe);
        cmd.cmd
            .args([
                ENTRY,
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(ROLE_VAR, "secure_probe")
            .env("PROBE_LIB", &lib)
            .env("ENVOY_SMC_CONFIG", cfg.path())
            .current_dir(&dir);
        cmd.run(T)
    };
    let plain = run(false);
    plain.assert_ok();
    assert_eq!(plain.result("at_secure"), "0");
    assert_eq!(plain.result("state"), "1", "{}", plain.describe());
    let suid = run(true);
    suid.assert_ok();
    if suid.result("at_secure") == "0" {
        eprintln!("skipped: set-uid does not take effect here (nosuid mount?)");
        return;
    }
    assert_eq!(suid.result("state"), "2", "{}", suid.describe());
    assert_eq!(suid.stderr.matches("envoy-smc").count(), 0);
}

struct DirCleanup(std::path::PathBuf);
impl Drop for DirCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// a foreign runtime

/// Runs the Python `script` under the library with the configuration `cfg` and the environment
/// `env`, asserts that it exited 0 and returns its stdout; `None` (said on stderr) where this
/// host has no python3.
fn python_under_preload(script: &str, cfg: &Cfg, env: &[(&str, &str)]) -> Option<String> {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("1")
        .output()
        .is_err()
    {
        eprintln!("skipped: no python3");
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("LD_PRELOAD", preload_lib())
        .env("ENVOY_SMC_CONFIG", cfg.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

/// CPython's socket module, http.server and urllib under the library: 20 requests through a
/// threaded HTTP server in the same process.
#[test]
fn python_http_round_trips() {
    let cfg = smc_config(1, true);
    let script = r#"
import http.server, threading, urllib.request, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.path.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
fds = len(os.listdir("/proc/self/fd"))
ok = 0
for i in range(20):
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_port}/r{i}") as r:
        ok += r.read() == f"/r{i}".encode()
srv.shutdown(); srv.server_close()
print(f"RESULT ok={ok} fds_before={fds} fds_after={len(os.listdir('/proc/self/fd'))}")
"#;
    let Some(stdout) = python_under_preload(script, &cfg, &[]) else {
        return;
    };
    assert!(stdout.contains("RESULT ok=20 "), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// hardening: vfork children, bad pointers, option overflow, the stats file

/// The library's gauge of tracked sockets, read in this process.
fn tracked_here() -> u64 {
    Stats::parse(&own_stats().unwrap()).tracked()
}

/// `posix_spawn`-style child: runs on its own stack in the parent's memory (CLONE_VM|
/// CLONE_VFORK), overwrites one fd with dup2, closes everything from 3 up, and exits.
extern "C" fn vfork_child(arg: *mut libc::c_void) -> c_int {
    let fds = arg as *const c_int;
    // SAFETY: the parent passes two fds and is suspended until this child exits.
    unsafe {
        libc::dup2(*fds, *fds.add(1));
        libc::close_range(3, u32::MAX, 0);
        libc::_exit(0)
    }
}

/// Three tracked sockets; a vfork child closes every fd before "exec"; then the parent's sockets
/// must still be tracked and decided when they connect.
fn vfork_close_range_role() {
    let target: SocketAddr = std::env::var("ENVOY_SMC_TEST_TARGET")
        .unwrap()
        .parse()
        .unwrap();
    let socks: Vec<c_int> = (0..3)
        // SAFETY: no pointer arguments.
        .map(|_| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) })
        .collect();
    let before = tracked_here();
    let mut stack = vec![0u8; 256 << 10];
    let mut fds = [socks[0], socks[1]];
    // SAFETY: the child runs on `stack`, which outlives it (CLONE_VFORK: this thread waits until
    // the child exits or execs), and gets `fds`, which outlives it too.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            vfork_child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            fds.as_mut_ptr().cast(),
        )
    };
    assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: status is a valid int to write.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let after = tracked_here();
    let ss = socket2::SockAddr::from(target);
    for &s in &socks {
        // SAFETY: ss holds a socket address of ss.len() bytes; s is this test's own socket.
        unsafe { libc::connect(s, ss.as_ptr().cast(), ss.len()) };
    }
    println!("RESULT before={before} after={after} child_status={status}");
    print_own_stats();
}

/// A vfork child (CLONE_VM|CLONE_VFORK, as posix_spawn makes it) that calls dup2 and close_range
/// before exiting leaves the parent's table alone: its three sockets stay tracked and are
/// decided when they connect. (Before, they dropped from 3 to 0 and lost their decision.)
#[test]
fn a_vfork_child_leaves_the_parents_table_alone() {
    let Some((srv, target)) = server_on_host_addr() else {
        return;
    };
    let cfg = smc_config(1, true);
    let out = RoleCmd::new(ENTRY, "vfork_close_range")
        .preload()
        .env("ENVOY_SMC_CONFIG", cfg.path())
        .env("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc")
        .env("ENVOY_SMC_TEST_TARGET", target.to_string())
        .run(T);
    out.assert_ok();
    assert_eq!(out.result("child_status"), "0", "{}", out.describe());
    assert_eq!(out.num("before"), 3, "{}", out.describe());
    assert_eq!(out.num("after"), 3, "the child rewrote the parent's table");
    assert_eq!(out.stats().tcp("replace_failed"), 3, "{}", out.describe());
    srv.finish(T).assert_ok();
}

/// The same with CPython's subprocess (vfork + close_range in the child before exec).
#[test]
fn python_subprocess_leaves_the_parents_table_alone() {
    let cfg = smc_config(1, true);
    let script = r#"
import ctypes, socket, subprocess
socks = [socket.socket() for _ in range(3)]
lib = ctypes.CDLL(None)
def tracked():
    n = lib.envoy_smc_preload_stats(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.envoy_smc_preload_stats(buf, n + 1)
    for line in buf.value.decode().splitlines():
        if line.startswith("envoy_smc_preload_tracked_sockets "):
            return int(line.split()[1])
before = tracked()
subprocess.run(["true"], check=True, close_fds=True)
print(f"RESULT before={before} after={tracked()}")
"#;
    let Some(stdout) =
        python_under_preload(script, &cfg, &[("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc")])
    else {
        return;
    };
    assert!(stdout.contains("RESULT before=3 after=3"), "{stdout}");
}

fn efault_role() {
    // SAFETY: plain syscalls; the address pointer is deliberately invalid.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        let rc = libc::connect(fd, 8 as *const libc::sockaddr, 16);
        println!(
            "RESULT rc={rc} errno={} tracked={}",
            errno(),
            tracked_here()
        );
    }
}

/// `connect()` with a bad address pointer on a tracked socket returns EFAULT, as without the
/// library (it used to die of SIGSEGV reading the address).
#[test]
fn connect_with_a_bad_address_pointer_is_efault_not_a_crash() {
    let cfg = smc_config(1, true);
    let out = RoleCmd::new(ENTRY, "efault")
        .preload()
        .env("ENVOY_SMC_CONFIG", cfg.path())
        .env("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc")
        .run(T);
    out.assert_ok();
    assert_eq!(out.result("rc"), "-1");
    assert_eq!(out.num("errno"), libc::EFAULT as i64);
    assert_eq!(
        out.result("tracked"),
        "1",
        "still undecided: a later connect decides"
    );
}

/// More options than the library records (17), or one longer than a slot: the socket must stay
/// as it is, counted as `options_not_carried` (before, the options past the 16th were silently
/// dropped from the SMC replacement).
#[test]
fn a_socket_whose_options_cannot_all_be_carried_stays_as_it_is() {
    let Some((srv, target)) = server_on_host_addr() else {
        return;
    };
    let cfg = smc_config(1, true);
    let seventeen = "1:18:1,1:9:1,1:2:1,1:5:0,1:6:0,1:10:0,1:12:1,1:29:0,6:2:1400,6:1:1,6:4:60,\
                     6:5:10,6:6:5,6:12:1,6:18:10000,6:25:131072,1:7:65536";
    let sixteen = &seventeen[..seventeen.rfind(',').unwrap()];
    for (opts, reason) in [
        (sixteen, "replace_failed"),
        (seventeen, "options_not_carried"),
    ] {
        let out = client(
            Some(&cfg),
            target,
            2,
            &[
                ("ENVOY_SMC_ASSUME_KERNEL", "ipproto_smc"),
                ("ENVOY_SMC_TEST_OPTS", opts),
            ],
        );
        assert_all_connections_ok(&out, 2);
        assert_eq!(out.stats().tcp(reason), 2, "{opts}: {}", out.describe());
    }
    srv.finish(T).assert_ok();
}

fn stats_go_role() {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    // SAFETY: plain syscalls on an fd owned here.
    unsafe { libc::close(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
}

/// A local user prepares the stats file's directory and plants symlinks under the names a root
/// proxy writes (the old predictable temporary `<name>.tmp.<pid>`, and the file itself) pointing
/// at a root 0600 file; then the root process writes its stats: the file must be untouched.
#[test]
fn a_planted_stats_dir_cannot_make_root_overwrite_its_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv (the attacker runs as nobody)");
        return;
    }
    let target = temp_path("root-secret");
    std::fs::write(&target, b"root's secret\n").unwrap();
    let _t = DirCleanup(target.clone());
    let dir = temp_path("planted-stats");
    let _d = DirCleanup(dir.clone());
    let mut r = RoleCmd::new(ENTRY, "stats_go")
        .preload()
        .env("ENVOY_SMC_STATS_FILE", dir.join("stats.prom"))
        .env("ENVOY_SMC_STATS_INTERVAL", "0");
    r.cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = spawn_retrying(&mut r.cmd);
    let pid = child.id();
    let script = format!(
        "mkdir -m 0777 {d} && ln -s {t} {d}/stats.tmp.{pid} && ln -s {t} {d}/stats.prom",
        d = dir.display(),
        t = target.display()
    );
    let planted = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        planted.status.success(),
        "{}",
        String::from_utf8_lossy(&planted.stderr)
    );
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"root's secret\n",
        "the root-owned file was overwritten"
    );
}

fn stats_fork_role() {
    // SAFETY: plain syscalls; the child leaves with exit() so that its at-exit write runs.
    unsafe {
        libc::close(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
        let pid = libc::fork();
        if pid == 0 {
            libc::close(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0));
            libc::exit(0);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    let path = std::env::var("ENVOY_SMC_STATS_FILE").unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let file_pid = text
        .split("pid=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("none")
        .to_string();
    println!("RESULT file_pid={file_pid} me={}", std::process::id());
}

/// With a stats path without `{pid}`, a forked child that exits does not overwrite its
/// parent's file.
#[test]
fn a_fork_child_never_overwrites_its_parents_stats_file() {
    let path = temp_path("stats-shared.prom");
    let _p = DirCleanup(path.clone());
    let out = RoleCmd::new(ENTRY, "stats_fork")
        .preload()
        .env("ENVOY_SMC_STATS_FILE", &path)
        .env("ENVOY_SMC_STATS_INTERVAL", "0")
        .run(T);
    out.assert_ok();
    assert_eq!(
        out.result("file_pid"),
        out.result("me"),
        "{}",
        out.describe()
    );
}
