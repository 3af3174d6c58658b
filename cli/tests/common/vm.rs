//! What the VM tests (tests/vm_smc.rs, tests/vm_netns.rs) and the exporter tests share: SMC
//! sockets through the library's kernel layer, the `envoy-smc` CLI, the exporter process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use envoy_smc_core::smc::{self, SocketKind};
use serde_json::Value;

/// `true` inside the SMC-R test VM (`ENVOY_SMC_VM=1`); outside, says how to run the test.
pub fn in_vm(run_with: &str) -> bool {
    if std::env::var("ENVOY_SMC_VM").as_deref() != Ok("1") {
        eprintln!("skipped: needs the SMC-R test VM (ENVOY_SMC_VM=1); run {run_with}");
        return false;
    }
    true
}

fn bind(fd: &OwnedFd, a: SocketAddrV4) {
    socket2::SockRef::from(fd)
        .bind(&a.into())
        .unwrap_or_else(|e| panic!("bind {a}: {e}"));
}

/// An SMC listener of `kind` on `addr` (port 0: any), with SO_REUSEADDR.
pub fn smc_listener(kind: SocketKind, addr: SocketAddrV4) -> TcpListener {
    let fd = smc::open_socket(kind, false, libc::SOCK_CLOEXEC).expect("open SMC listener");
    let sock = socket2::SockRef::from(&fd);
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    bind(&fd, addr);
    sock.listen(64).expect("listen");
    TcpListener::from(fd)
}

/// An SMC client of `kind` from `src` to `dst`, optionally with the fallback switch.
pub fn smc_client(kind: SocketKind, src: Ipv4Addr, dst: SocketAddr, switch: bool) -> TcpStream {
    let fd = smc::open_socket(kind, false, libc::SOCK_CLOEXEC).expect("open SMC client");
    bind(&fd, SocketAddrV4::new(src, 0));
    if switch {
        smc::apply_fallback_switch(fd.as_fd()).expect("fallback switch");
    }
    socket2::SockRef::from(&fd)
        .connect(&dst.into())
        .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    TcpStream::from(fd)
}

/// The socket inode behind an fd (what `status` and smc_diag name sockets by).
pub fn inode(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

/// Runs the `envoy-smc` CLI; it must not panic.
pub fn cli(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_envoy-smc"))
        .args(args)
        .output()
        .expect("run envoy-smc");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "envoy-smc {args:?} panicked"
    );
    out
}

/// The CLI's stdout as JSON.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs the CLI: its exit code and its JSON output.
pub fn cli_json(args: &[&str]) -> (i32, Value) {
    let out = cli(args);
    (out.status.code().unwrap_or(-1), json(&out))
}

/// The row of `status --json` output `v` for the socket with `inode`.
pub fn row(v: &Value, inode: u64) -> Value {
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["inode"] == inode)
        .cloned()
        .unwrap_or_else(|| panic!("inode {inode} not in status: {v:#}"))
}

/// Connects to `addr`, sends `req`, returns the whole answer (`None`: nobody listens yet).
pub fn try_http(addr: SocketAddr, req: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

/// [`try_http`] to a server that must be listening.
pub fn http(addr: SocketAddr, req: &str) -> String {
    try_http(addr, req).unwrap_or_else(|| panic!("nothing listens on {addr}"))
}

/// `envoy-smc exporter` on a free loopback port: the child, the rest of its stderr, and the
/// address it said it serves on.
pub fn start_exporter(doctor_interval: &str) -> (Child, BufReader<ChildStderr>, SocketAddr) {
    let mut exp = Command::new(env!("CARGO_BIN_EXE_envoy-smc"))
        .args([
            "exporter",
            "--listen",
            "127.0.0.1:0",
            "--doctor-interval",
            doctor_interval,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the exporter");
    let mut err = BufReader::new(exp.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|s| s.strip_suffix("/metrics"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("exporter said: {line}"));
    (exp, err, addr)
}

/// SIGTERM to `child`, then its exit status; panics if it has not exited within 30 s.
pub fn terminate(child: &mut Child, what: &str) -> ExitStatus {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    super::wait_for(
        &format!("{what} to exit after SIGTERM"),
        Duration::from_secs(30),
        || child.try_wait().unwrap(),
    )
}
