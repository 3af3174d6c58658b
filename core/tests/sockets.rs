//! Real sockets through the library on this host. Its kernel has no AF_SMC (checked against
//! /proc/net/protocols), so every socket is TCP with the reason "kernel lacks SMC" and data flows;
//! the socket replacement is exercised TCP -> TCP, which needs no SMC.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use envoy_smc_core::policy::{Environment, SocketFacts, TcpReason, Verdict};
use envoy_smc_core::runtime::{Watch, Watched};
use envoy_smc_core::smc::{self, KernelSupport, SockOpt, SocketKind, SocketRecord};
use envoy_smc_core::stats::Counter;
use envoy_smc_core::Runtime;

fn kernel_has_smc() -> bool {
    std::fs::read_to_string("/proc/net/protocols")
        .is_ok_and(|p| p.lines().any(|l| l.starts_with("SMC")))
}

fn getint(fd: &OwnedFd, level: i32, name: i32) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: fd is open; v and len describe a 4-byte buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt({level},{name}): {}",
        std::io::Error::last_os_error()
    );
    v
}

fn setint(fd: &OwnedFd, level: i32, name: i32, v: i32) {
    setopt(fd, level, name, &v.to_ne_bytes());
}

fn setopt(fd: &OwnedFd, level: i32, name: i32, value: &[u8]) {
    // SAFETY: fd is open; value is valid for its length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level},{name}): {}",
        std::io::Error::last_os_error()
    );
}

/// A real TCP socket opened with `flags` (`SOCK_NONBLOCK`, `SOCK_CLOEXEC`), and what `rt`
/// watches of it from its `socket()` call on.
fn watched_tcp_socket(rt: &Runtime, flags: i32) -> (OwnedFd, Watched) {
    let fd = smc::open_socket(SocketKind::Tcp, false, flags).unwrap();
    let w = rt
        .on_socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0, None)
        .unwrap();
    (fd, w)
}

/// Binds `fd` to 127.0.0.1 with a port the kernel chooses; returns the address asked for (port 0).
fn bind_loopback(fd: &OwnedFd) -> SocketAddr {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    socket2::SockRef::from(fd)
        .bind(&local.into())
        .expect("bind 127.0.0.1:0");
    local
}

/// The open file description under `raw` is non-blocking and the fd close-on-exec.
fn assert_nonblock_cloexec(raw: i32) {
    // SAFETY: fcntl on an open fd.
    let status = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    assert_ne!(status & libc::O_NONBLOCK, 0, "O_NONBLOCK kept");
    // SAFETY: as above.
    let fdflags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    assert_ne!(fdflags & libc::FD_CLOEXEC, 0, "FD_CLOEXEC kept");
}

#[test]
fn probe_matches_the_kernel() {
    let k = KernelSupport::probe_now();
    assert_eq!(k.af_smc, kernel_has_smc());
    assert_eq!(KernelSupport::probe(), k);
    if !kernel_has_smc() {
        assert!(k.none());
    }
}

#[test]
fn without_smc_sockets_are_tcp_with_the_kernel_reason_and_carry_data() {
    if kernel_has_smc() {
        eprintln!("skipped: this kernel has SMC (the VM suite covers it)");
        return;
    }
    let rt = Runtime::from_yaml(
        "opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\nlisteners: {ports: [0]}",
    )
    .unwrap_err();
    // Port 0 cannot be a listener port: the configuration is refused with the field named.
    assert!(rt.to_string().starts_with("listeners.ports[0]"), "{rt}");

    let rt = Runtime::from_yaml("opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}")
        .unwrap();
    assert_eq!(rt.policy().smc_kind(), Err(TcpReason::KernelLacksSmc));
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    for _ in 0..3 {
        assert!(rt
            .on_socket(libc::AF_INET, libc::SOCK_STREAM, 0, None)
            .is_err());
    }
    assert_eq!(rt.stats().get(Counter::SocketsSeen), 3);
    assert_eq!(rt.stats().tcp(TcpReason::KernelLacksSmc), 3);
    // Untracked sockets are plain TCP: a real round trip.
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut accepted, _) = server.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Non-IP sockets are not counted at all.
    assert!(rt
        .on_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0, None)
        .is_err());
    assert_eq!(rt.stats().get(Counter::SocketsSeen), 3);
}

#[test]
fn an_smc_verdict_that_cannot_be_carried_out_keeps_a_working_tcp_socket() {
    if kernel_has_smc() {
        eprintln!("skipped: this kernel has SMC");
        return;
    }
    // Decides SMC (the kernel is claimed to have it), then fails to open the SMC socket.
    let rt = smc_runtime();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (fd, mut w) = watched_tcp_socket(&rt, libc::SOCK_CLOEXEC);
    let raw = fd.as_raw_fd();
    let applied = rt
        .on_connect(
            fd.as_fd(),
            &mut w,
            SMC_DEST.parse().unwrap(),
            Watch::Plain,
            || true,
        )
        .unwrap()
        .applied;
    assert_eq!(applied.verdict, Verdict::Tcp(TcpReason::ReplaceFailed));
    assert!(!applied.replaced);
    assert_eq!(rt.stats().tcp(TcpReason::ReplaceFailed), 1);
    assert_eq!(rt.stats().get(Counter::Errors), 1);
    assert_eq!(fd.as_raw_fd(), raw);
    // The socket still connects and carries data.
    let mut stream = TcpStream::from(fd);
    let addr = server.local_addr().unwrap();
    let sin = socket2::SockAddr::from(SocketAddr::from(([127, 0, 0, 1], addr.port())));
    // SAFETY: the fd is open and sin is a valid socket address.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), sin.as_ptr().cast(), sin.len()) };
    assert_eq!(rc, 0);
    stream.write_all(b"x").unwrap();
    let (mut acc, _) = server.accept().unwrap();
    let mut b = [0u8; 1];
    acc.read_exact(&mut b).unwrap();
}

/// A runtime that decides SMC for [`SMC_DEST`] whatever this kernel has (it is claimed to have
/// both flavours), and TCP for [`TCP_DEST`] (`upstream.deny`).
fn smc_runtime() -> Runtime {
    let cfg = envoy_smc_core::config::from_yaml(
        "mode: MODE_IPPROTO_SMC\nopt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\n\
         upstream: {deny: [\"10.9.9.0/24\"]}\nadaptive_fallback: {disabled: true}",
    )
    .unwrap();
    Runtime::new(&cfg, &Environment::assuming(KernelSupport::BOTH))
}
const SMC_DEST: &str = "10.1.1.1:80";
const TCP_DEST: &str = "10.9.9.9:80";

#[test]
fn tcp_verdicts_on_tcp_sockets_change_nothing_and_are_counted() {
    let rt = smc_runtime();
    let (fd, mut w) = watched_tcp_socket(&rt, libc::SOCK_NONBLOCK);
    let c = rt
        .on_connect(
            fd.as_fd(),
            &mut w,
            TCP_DEST.parse().unwrap(),
            Watch::Plain,
            || panic!("a TCP verdict never needs the fd"),
        )
        .unwrap();
    assert_eq!(c.applied.verdict, Verdict::Tcp(TcpReason::DeniedAddress));
    assert!(!c.applied.replaced && c.cookie.is_none());
    // Not bound: never a selected listener.
    let a = rt.on_listen(fd.as_fd(), &mut w);
    assert!(!a.replaced);
    assert_eq!(rt.stats().tcp(TcpReason::DeniedAddress), 1);
    assert_eq!(rt.stats().tcp(TcpReason::ListenerNotSelected), 1);
    assert_eq!(rt.stats().get(Counter::FallbackSwitchApplied), 0);
    assert_eq!(rt.stats().get(Counter::SocketReplaced), 0);
    // Duplicated before bind: stays TCP, undecided, uncounted.
    assert_eq!(rt.on_dup(fd.as_fd(), &mut w), None);
    assert_eq!(rt.stats().tcp(TcpReason::ListenerNotSelected), 1);
}

/// The one rule for a socket duplicated before `listen()`, the same for every entry point: a
/// bound socket gets its listener decision at the dup (the duplicate must share the final
/// socket), exactly as listen() would have given it.
#[test]
fn a_bound_socket_duplicated_before_listen_gets_its_listener_decision() {
    let rt = Runtime::new(
        &envoy_smc_core::config::from_yaml(
            "mode: MODE_IPPROTO_SMC\nopt_in: {all_workloads: true}\nlisteners: {ports: [1]}",
        )
        .unwrap(),
        &Environment::assuming(KernelSupport::BOTH),
    );
    let (fd, mut w) = watched_tcp_socket(&rt, libc::SOCK_CLOEXEC);
    w.record.bound = Some(bind_loopback(&fd));
    let a = rt
        .on_dup(fd.as_fd(), &mut w)
        .expect("a bound socket is decided at the dup");
    // Its real port (the kernel chose it) is not a selected one.
    assert_eq!(a.verdict, Verdict::Tcp(TcpReason::ListenerNotSelected));
    assert_eq!(rt.stats().tcp(TcpReason::ListenerNotSelected), 1);
}

#[test]
fn fallback_switch_is_a_no_op_on_tcp_sockets() {
    let fd = smc::open_socket(SocketKind::Tcp, false, 0).unwrap();
    smc::apply_fallback_switch(fd.as_fd()).unwrap();
    assert_eq!(getint(&fd, libc::IPPROTO_TCP, smc::TCP_FASTOPEN_CONNECT), 0);
    assert_eq!(
        smc::socket_kind(fd.as_fd()).unwrap(),
        Some((SocketKind::Tcp, false))
    );
}

#[test]
fn socket_kind_tells_non_stream_sockets_apart() {
    // SAFETY: plain socket(2) calls; each fd is owned right away.
    let udp = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
    assert_eq!(smc::socket_kind(udp.as_fd()).unwrap(), None);
    // SAFETY: as above.
    let unix = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
    assert_eq!(smc::socket_kind(unix.as_fd()).unwrap(), None);
    let v6 = smc::open_socket(SocketKind::Tcp, true, 0).unwrap();
    assert_eq!(
        smc::socket_kind(v6.as_fd()).unwrap(),
        Some((SocketKind::Tcp, true))
    );
}

#[test]
fn replacement_keeps_fd_number_flags_options_and_bound_address() {
    let fd = smc::open_socket(
        SocketKind::Tcp,
        false,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
    )
    .unwrap();
    setint(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    setint(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
    setint(&fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setint(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    setint(&fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
    setint(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 65536);
    let bound = bind_loopback(&fd);
    let before = envoy_smc_core::runtime::local_address(fd.as_fd()).unwrap();
    assert_eq!(before.ip(), bound.ip());
    let rcvbuf = getint(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF);
    let raw = fd.as_raw_fd();

    // TCP -> TCP with an extra option forces a real replacement (no SMC needed).
    let extra = [SockOpt {
        level: libc::SOL_SOCKET,
        name: libc::SO_RCVLOWAT,
        value: 1,
    }];
    smc::replace_socket(fd.as_fd(), SocketKind::Tcp, &extra).unwrap();

    assert_eq!(fd.as_raw_fd(), raw);
    assert_nonblock_cloexec(raw);
    assert_eq!(getint(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), 1);
    assert_eq!(getint(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT), 1);
    assert_eq!(getint(&fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(getint(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
    assert_eq!(getint(&fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 77);
    assert_eq!(getint(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF), rcvbuf);
    assert_eq!(
        envoy_smc_core::runtime::local_address(fd.as_fd()).unwrap(),
        before,
        "bound to the same address and port"
    );

    // And it works as a listener.
    // SAFETY: listen on an open, bound socket.
    assert_eq!(unsafe { libc::listen(raw, 4) }, 0);
    let mut c = TcpStream::connect(before).unwrap();
    c.write_all(b"ok").unwrap();
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(false).unwrap();
    let (mut a, _) = listener.accept().unwrap();
    let mut b = [0u8; 2];
    a.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}

#[test]
fn replacement_refuses_what_is_not_an_ip_stream_socket() {
    // SAFETY: plain socket(2); owned right away.
    let udp = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
    let err = smc::replace_socket(udp.as_fd(), SocketKind::Tcp, &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        smc::socket_kind(udp.as_fd()).unwrap(),
        None,
        "left as it was"
    );
}

#[test]
fn facts_ignore_options_that_are_not_ints() {
    let rt = Runtime::from_yaml("mode: MODE_OFF").unwrap();
    let f = rt.note_sockopt(
        SocketFacts::default(),
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        &1i32.to_ne_bytes(),
    );
    assert!(f.has(SocketFacts::SWITCH_ON));
    let f = rt.note_sockopt(
        SocketFacts::default(),
        libc::SOL_SOCKET,
        libc::SO_RCVLOWAT,
        &[1, 0],
    );
    assert_eq!(f, SocketFacts::default());
}

fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: plain old data filled in by fstat on an open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_ino
}

fn set(fd: &OwnedFd, rec: &mut SocketRecord, level: i32, name: i32, value: &[u8]) {
    setopt(fd, level, name, value);
    rec.record_opt(level, name, value);
}

/// A replacement is built from what the entry point recorded: flags, every option (ints and
/// structs alike), the bound address and the port the kernel chose for it.
#[test]
fn a_replacement_carries_the_record() {
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    let fd = smc::open_socket(SocketKind::Tcp, false, ty).unwrap();
    let mut rec = SocketRecord::opened(libc::AF_INET, ty);
    set(
        &fd,
        &mut rec,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &1i32.to_ne_bytes(),
    );
    set(
        &fd,
        &mut rec,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &1i32.to_ne_bytes(),
    );
    set(
        &fd,
        &mut rec,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        &77i32.to_ne_bytes(),
    );
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 5,
    };
    // SAFETY: linger is plain old data; viewed as its bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&linger as *const libc::linger).cast::<u8>(),
            std::mem::size_of::<libc::linger>(),
        )
    };
    set(&fd, &mut rec, libc::SOL_SOCKET, libc::SO_LINGER, bytes);
    rec.bound = Some(bind_loopback(&fd));
    let before = envoy_smc_core::runtime::local_address(fd.as_fd()).unwrap();
    let (raw, old) = (fd.as_raw_fd(), inode(&fd));
    // The record claims another kind: replacing it with TCP is a real replacement on any kernel.
    rec.kind = SocketKind::IpprotoSmc;
    rec.replace(fd.as_fd(), SocketKind::Tcp, &[]).unwrap();
    assert_eq!(rec.kind, SocketKind::Tcp);
    assert_eq!(fd.as_raw_fd(), raw);
    assert_ne!(inode(&fd), old, "a new socket under the same fd number");
    assert_nonblock_cloexec(raw);
    assert_eq!(getint(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), 1);
    assert_eq!(getint(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY), 1);
    assert_eq!(getint(&fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 77);
    let mut got = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: got/len are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut got as *mut libc::linger).cast(),
            &mut len,
        )
    };
    assert_eq!((rc, got.l_onoff, got.l_linger), (0, 1, 5));
    assert_eq!(
        envoy_smc_core::runtime::local_address(fd.as_fd()).unwrap(),
        before,
        "bound to the same address and the port the kernel chose"
    );
}

/// An option the new socket refuses fails the replacement before the switch-over: the fd keeps
/// its socket, and the runtime counts it as `tcp.options_not_carried`.
#[test]
fn an_option_the_new_socket_refuses_keeps_the_old_socket() {
    let fd = smc::open_socket(SocketKind::Tcp, false, 0).unwrap();
    let mut rec = SocketRecord::opened(libc::AF_INET, libc::SOCK_STREAM);
    // Recorded as if the old socket had taken it; no socket takes this one.
    rec.record_opt(libc::SOL_SOCKET, 0x7fff, &1i32.to_ne_bytes());
    let old = inode(&fd);
    rec.kind = SocketKind::IpprotoSmc;
    let err = rec.replace(fd.as_fd(), SocketKind::Tcp, &[]).unwrap_err();
    assert!(smc::NotCarried::is(&err), "{err}");
    assert_eq!(inode(&fd), old, "the old socket stays");
    assert_eq!(rec.kind, SocketKind::IpprotoSmc);
}
