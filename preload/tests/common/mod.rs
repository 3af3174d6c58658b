//! Shared by the preload tests: the programs run under `LD_PRELOAD` ("roles" of the test binary
//! itself, re-executed with `ENVOY_SMC_TEST_ROLE`), spawning them, reading the library's counters,
//! and the project's `smc_diag` reader for the VM tests.
//!
//! A role is a small epoll program written against libc directly, the way Envoy drives its
//! sockets: non-blocking sockets, edge-triggered epoll registered right after `socket()`, options
//! before `connect()`/`listen()`. It prints `RESULT key=value` lines that the test reads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::c_int;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../core/tests/common/wait.rs"]
mod wait;
#[allow(unused_imports)] // not every test binary waits
pub use wait::{wait_for, wait_until};

pub const ROLE_VAR: &str = "ENVOY_SMC_TEST_ROLE";

// ---------------------------------------------------------------------------------------------
// locating and running

/// The cdylib cargo built for this test run: `target/<profile>/deps/libenvoy_smc_preload.so`,
/// next to this test binary (the package's `rlib` crate type makes `cargo test` build it), or
/// `ENVOY_SMC_PRELOAD_LIB`.
pub fn preload_lib() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_SMC_PRELOAD_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    for dir in [Some(deps), deps.parent()].into_iter().flatten() {
        let lib = dir.join("libenvoy_smc_preload.so");
        if lib.exists() {
            return lib;
        }
    }
    panic!(
        "libenvoy_smc_preload.so not found next to {}: build it with `cargo build -p envoy-smc-preload` \
         (or set ENVOY_SMC_PRELOAD_LIB)",
        exe.display()
    );
}

/// A role process: this test binary re-executed to run `role` only.
pub struct RoleCmd {
    pub cmd: Command,
}

impl RoleCmd {
    /// `entry` is the name of the `#[test]` function that dispatches roles in this binary.
    pub fn new(entry: &str, role: &str) -> RoleCmd {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            entry,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(ROLE_VAR, role)
        .env_remove("LD_PRELOAD")
        .env_remove("ENVOY_SMC_CONFIG")
        .env_remove("ENVOY_SMC_LOG")
        .env_remove("ENVOY_SMC_STATS_FILE")
        .env_remove("ENVOY_SMC_ASSUME_KERNEL")
        .env("RUST_BACKTRACE", "1");
        RoleCmd { cmd }
    }

    pub fn preload(mut self) -> Self {
        self.cmd.env("LD_PRELOAD", preload_lib());
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// The library, with `ENVOY_SMC_CONFIG` naming `cfg` (if any) and the environment `extra`.
    pub fn config(mut self, cfg: Option<&Cfg>, extra: &[(&str, &str)]) -> Self {
        if let Some(c) = cfg {
            self.cmd.env("ENVOY_SMC_CONFIG", c.path());
        }
        self.cmd.envs(extra.iter().copied());
        self.preload()
    }

    /// Runs to completion (killed after `timeout`).
    pub fn run(mut self, timeout: Duration) -> RoleOutput {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn_retrying(&mut self.cmd);
        wait_output(child, timeout)
    }

    /// Starts a long-running role; returns once it printed `READY`.
    pub fn start(mut self, timeout: Duration) -> Running {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying(&mut self.cmd);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        let deadline = Instant::now() + timeout;
        let mut ready = None;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("READY") => {
                    ready = Some(line);
                    break;
                }
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let Some(ready) = ready else {
            let _ = child.kill();
            let out = wait_output_with_reader(child, reader, Duration::from_secs(5));
            panic!("role did not get ready:\n{}", out.describe());
        };
        Running {
            child: Some(child),
            reader: Some(reader),
            ready,
        }
    }
}

pub struct Running {
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<String>>,
    pub ready: String,
}

impl Running {
    /// Closes its stdin (the signal to finish) and waits for it.
    pub fn finish(mut self, timeout: Duration) -> RoleOutput {
        let mut child = self.child.take().unwrap();
        drop(child.stdin.take());
        wait_output_with_reader(child, self.reader.take().unwrap(), timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
pub struct RoleOutput {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl RoleOutput {
    pub fn describe(&self) -> String {
        format!(
            "status {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }

    pub fn assert_ok(&self) -> &Self {
        assert!(
            !self.timed_out && self.status.is_some_and(|s| s.success()),
            "role failed: {}",
            self.describe()
        );
        self
    }

    /// `key=value` pairs of every `RESULT` line (later lines win).
    pub fn results(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        for line in self.stdout.lines() {
            if let Some(rest) = line.strip_prefix("RESULT ") {
                for kv in rest.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        m.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        m
    }

    pub fn result(&self, key: &str) -> String {
        self.results()
            .remove(key)
            .unwrap_or_else(|| panic!("no RESULT {key}=…: {}", self.describe()))
    }

    pub fn num(&self, key: &str) -> i64 {
        self.result(key).parse().unwrap()
    }

    /// The counters the role printed between `STATS-BEGIN` and `STATS-END`.
    pub fn stats(&self) -> Stats {
        let text: String = self
            .stdout
            .lines()
            .skip_while(|l| *l != "STATS-BEGIN")
            .skip(1)
            .take_while(|l| *l != "STATS-END")
            .map(|l| format!("{l}\n"))
            .collect();
        Stats::parse(&text)
    }
}

fn wait_output(mut child: Child, timeout: Duration) -> RoleOutput {
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut s);
        s
    });
    wait_output_with_reader(child, reader, timeout)
}

fn wait_output_with_reader(
    mut child: Child,
    reader: std::thread::JoinHandle<String>,
    timeout: Duration,
) -> RoleOutput {
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().unwrap() {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    RoleOutput {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out,
    }
}

// ---------------------------------------------------------------------------------------------
// test-side helpers: configurations, the server and client roles

pub const T: Duration = Duration::from_secs(60);
/// The `#[test]` function every test binary dispatches roles from.
pub const ENTRY: &str = "role_entry";

/// A port that was free a moment ago on `ip`.
pub fn free_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

pub struct Cfg(tempfile_path::TempPath);

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn temp_path(name: &str) -> std::path::PathBuf {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "envoy-smc-preload-test-{}-{n}-{name}",
        std::process::id()
    ))
}

pub fn config(yaml: &str) -> Cfg {
    let p = temp_path("config.yaml");
    std::fs::write(&p, yaml).unwrap();
    Cfg(tempfile_path::TempPath(p))
}

impl Cfg {
    pub fn path(&self) -> &std::path::Path {
        &self.0 .0
    }
}

pub fn smc_config(listener_port: u16, always_on: bool) -> Cfg {
    config(&format!(
        "mode: MODE_AUTO\nopt_in: {{all_workloads: true}}\nmesh_switch: {{always_on: {always_on}}}\n\
         listeners: {{ports: [{listener_port}]}}\nupstream: {{allow_local: true}}\n"
    ))
}

pub fn server(cfg: Option<&Cfg>, listen: SocketAddr, extra: &[(&str, &str)]) -> Running {
    RoleCmd::new(ENTRY, "server")
        .env("ENVOY_SMC_TEST_LISTEN", listen.to_string())
        .config(cfg, extra)
        .start(T)
}

pub fn ready_port(r: &Running) -> u16 {
    r.ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .parse()
        .unwrap()
}

pub fn client(
    cfg: Option<&Cfg>,
    target: SocketAddr,
    n: usize,
    extra: &[(&str, &str)],
) -> RoleOutput {
    RoleCmd::new(ENTRY, "client")
        .env("ENVOY_SMC_TEST_TARGET", target.to_string())
        .env("ENVOY_SMC_TEST_CONNECTIONS", n.to_string())
        .config(cfg, extra)
        .run(T)
}

/// Every connection of a client run went through with every epoll edge.
pub fn assert_all_connections_ok(out: &RoleOutput, n: usize) {
    out.assert_ok();
    assert_eq!(out.num("ok"), n as i64, "{}", out.describe());
    for line in out.stdout.lines().filter(|l| l.starts_with("RESULT conn=")) {
        assert!(!line.contains("error="), "{line}\n{}", out.describe());
        for want in [
            "connect_edge=true",
            "fin_edge=true",
            "fd_flags_kept=true",
            "rounds_ok=3",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
    }
    assert_eq!(
        out.result("fds_before"),
        out.result("fds_after"),
        "fd leaked: {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// counters

/// Prometheus text from the library, as `name` or `name{labels}` → value.
#[derive(Debug, Default, Clone)]
pub struct Stats(pub HashMap<String, u64>);

impl Stats {
    pub fn parse(text: &str) -> Stats {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        Stats(m)
    }

    /// The counter Envoy would call `smc.<name>`, under the name its `/stats/prometheus` gives
    /// it (`envoy_smc_tcp_loopback`); 0 if absent.
    pub fn get(&self, name: &str) -> u64 {
        let name = envoy_smc_core::stats::prometheus_name(&format!("smc.{name}"));
        self.0.get(&name).copied().unwrap_or(0)
    }

    /// `tcp.<reason>`.
    pub fn tcp(&self, reason: &str) -> u64 {
        self.get(&format!("tcp.{reason}"))
    }

    /// `preload.<name>`: the preload layer's own counters.
    pub fn preload(&self, name: &str) -> u64 {
        self.get(&format!("preload.{name}"))
    }

    pub fn tracked(&self) -> u64 {
        self.0
            .get("envoy_smc_preload_tracked_sockets")
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// SMC connects still kept for a rescue when the stats were written.
    pub fn rescuable(&self) -> u64 {
        self.0
            .get("envoy_smc_preload_rescuable_connects")
            .copied()
            .unwrap_or(u64::MAX)
    }

    pub fn state(&self) -> String {
        self.0
            .keys()
            .find_map(|k| {
                let rest = k.strip_prefix("envoy_smc_preload_info{state=\"")?;
                Some(rest.split('"').next()?.to_string())
            })
            .unwrap_or_default()
    }
}

/// The library's counters, read in this process through the exported C function (None when the
/// library is not loaded).
pub fn own_stats() -> Option<String> {
    type StatsFn = unsafe extern "C" fn(*mut libc::c_char, usize) -> usize;
    // SAFETY: looking up a symbol by a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"envoy_smc_preload_stats".as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: the library exports this function with this signature.
    let f: StatsFn = unsafe { std::mem::transmute(p) };
    // SAFETY: NULL with length 0 asks for the length only.
    let n = unsafe { f(std::ptr::null_mut(), 0) };
    let mut buf = vec![0u8; n + 1];
    // SAFETY: buf has n + 1 writable bytes.
    let n = unsafe { f(buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(n);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

pub fn print_own_stats() {
    if let Some(text) = own_stats() {
        println!("STATS-BEGIN\n{}STATS-END", text);
    }
}

// ---------------------------------------------------------------------------------------------
// libc helpers for the roles

pub fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn check(rc: c_int, what: &str) -> c_int {
    if rc < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    rc
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn local_port(fd: c_int) -> u16 {
    // SAFETY: the caller's fd is open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .local_addr()
        .expect("getsockname")
        .as_socket()
        .expect("an IP socket")
        .port()
}

pub fn getsockopt_int(fd: c_int, level: c_int, name: c_int) -> c_int {
    let mut v: c_int = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe { libc::getsockopt(fd, level, name, &mut v as *mut c_int as *mut _, &mut len) };
    if rc < 0 {
        -1
    } else {
        v
    }
}

pub fn setsockopt_int(fd: c_int, level: c_int, name: c_int, v: c_int) -> c_int {
    // SAFETY: a valid int buffer.
    unsafe { libc::setsockopt(fd, level, name, &v as *const c_int as *const _, 4) }
}

/// "TCP", "AF_SMC", "IPPROTO_SMC" or "other".
pub fn kind(fd: c_int) -> &'static str {
    let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let proto = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL);
    match (domain, proto) {
        (43, _) => "AF_SMC",
        (libc::AF_INET | libc::AF_INET6, 256) => "IPPROTO_SMC",
        (libc::AF_INET | libc::AF_INET6, libc::IPPROTO_TCP) => "TCP",
        _ => "other",
    }
}

pub fn inode(fd: c_int) -> u64 {
    // SAFETY: plain old data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    check(unsafe { libc::fstat(fd, &mut st) }, "fstat");
    st.st_ino
}

/// Options a role sets on its sockets before `connect()`/`listen()`: `level:name:value,…`.
pub fn parse_opts(s: &str) -> Vec<(c_int, c_int, c_int)> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let v: Vec<c_int> = p.split(':').map(|x| x.trim().parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

// ---------------------------------------------------------------------------------------------
// epoll

pub struct Epoll(pub c_int);

impl Epoll {
    pub fn new() -> Epoll {
        // SAFETY: plain syscall.
        Epoll(check(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "epoll_create1",
        ))
    }

    pub fn add(&self, fd: c_int, events: u32, data: u64) {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: valid event pointer.
        check(
            unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            "epoll_ctl ADD",
        );
    }

    pub fn del(&self, fd: c_int) {
        // SAFETY: DEL ignores the event.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Waits up to `ms` for events.
    pub fn wait(&self, ms: c_int) -> Vec<(u32, u64)> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: evs has 64 entries.
            let n = unsafe { libc::epoll_wait(self.0, evs.as_mut_ptr(), 64, ms) };
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            check(n, "epoll_wait");
            return evs[..n as usize]
                .iter()
                .map(|e| {
                    let e = *e;
                    (e.events, e.u64)
                })
                .collect();
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing our own fd once.
        unsafe { libc::close(self.0) };
    }
}

const ET_RW: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

// ---------------------------------------------------------------------------------------------
// the echo server

#[derive(Debug, Default)]
pub struct ServerReport {
    pub listener_kind: &'static str,
    pub listener_fd_same: bool,
    pub accepted: usize,
    pub bytes: usize,
    pub closed: usize,
}

/// A listening socket the way Envoy makes one: non-blocking, SO_REUSEADDR (+ SO_REUSEPORT unless
/// `reuse_port` is false), `opts`, bind, listen.
pub fn listener(addr: SocketAddr, reuse_port: bool, opts: &[(c_int, c_int, c_int)]) -> c_int {
    listener_dup(addr, reuse_port, opts, false).0
}

/// As [`listener`]; with `dup`, the bound socket is duplicated before `listen()` and both fds
/// are listened on (what Envoy does for its workers when `enable_reuse_port` is false).
pub fn listener_dup(
    addr: SocketAddr,
    reuse_port: bool,
    opts: &[(c_int, c_int, c_int)],
    dup: bool,
) -> (c_int, Option<c_int>) {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = check(
        unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    );
    check(
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1),
        "SO_REUSEADDR",
    );
    if reuse_port {
        check(
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1),
            "SO_REUSEPORT",
        );
    }
    for &(l, n, v) in opts {
        check(setsockopt_int(fd, l, n, v), "listener option");
    }
    let ss = socket2::SockAddr::from(addr);
    // SAFETY: valid address.
    check(
        unsafe { libc::bind(fd, ss.as_ptr().cast(), ss.len()) },
        "bind",
    );
    // SAFETY: plain syscalls.
    let dupfd = dup.then(|| check(unsafe { libc::dup(fd) }, "dup"));
    // SAFETY: plain syscall.
    check(unsafe { libc::listen(fd, 128) }, "listen");
    if let Some(d) = dupfd {
        // SAFETY: plain syscall.
        check(unsafe { libc::listen(d, 128) }, "listen on the duplicate");
    }
    (fd, dupfd)
}

/// Serves echo on `lfd` with edge-triggered epoll until `stop()` says so (checked every 50 ms).
pub fn serve_echo(lfd: c_int, stop: &dyn Fn() -> bool) -> ServerReport {
    let ep = Epoll::new();
    ep.add(lfd, (libc::EPOLLIN | libc::EPOLLET) as u32, u64::MAX);
    let mut rep = ServerReport::default();
    let mut buf = vec![0u8; 65536];
    let mut pending: HashMap<c_int, Vec<u8>> = HashMap::new();
    loop {
        if stop() && pending.is_empty() {
            break;
        }
        for (events, data) in ep.wait(50) {
            if data == u64::MAX {
                loop {
                    // SAFETY: accept4 with NULL address pointers.
                    let c = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        break;
                    }
                    rep.accepted += 1;
                    pending.insert(c, Vec::new());
                    ep.add(c, ET_RW, c as u64);
                }
                continue;
            }
            let c = data as c_int;
            let Some(out) = pending.get_mut(&c) else {
                continue;
            };
            let mut eof = false;
            if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                != 0
            {
                loop {
                    // SAFETY: buf is writable for its length.
                    let n = unsafe { libc::read(c, buf.as_mut_ptr().cast(), buf.len()) };
                    if n > 0 {
                        rep.bytes += n as usize;
                        out.extend_from_slice(&buf[..n as usize]);
                    } else if n == 0 {
                        eof = true;
                        break;
                    } else {
                        let e = errno();
                        if e != libc::EAGAIN && e != libc::EINTR {
                            eof = true;
                        }
                        if e != libc::EINTR {
                            break;
                        }
                    }
                }
            }
            while !out.is_empty() {
                // SAFETY: out is readable for its length.
                let n =
                    unsafe { libc::send(c, out.as_ptr().cast(), out.len(), libc::MSG_NOSIGNAL) };
                if n <= 0 {
                    break;
                }
                out.drain(..n as usize);
            }
            if eof && out.is_empty() {
                ep.del(c);
                // SAFETY: closing an accepted socket once.
                unsafe { libc::close(c) };
                pending.remove(&c);
                rep.closed += 1;
            }
        }
    }
    rep.listener_kind = kind(lfd);
    rep
}

// ---------------------------------------------------------------------------------------------
// the edge-triggered client

#[derive(Debug, Default)]
pub struct ClientReport {
    pub kind_before: &'static str,
    pub kind_after: &'static str,
    /// The socket's kind once the connect edge came (differs from `kind_after` when envoy-smc
    /// moved a connect stuck behind a black hole to TCP).
    pub kind_connected: &'static str,
    /// Milliseconds from connect() to the connect edge.
    pub connect_ms: u128,
    pub fd_flags_kept: bool,
    pub connect_edge: bool,
    pub data_edges: usize,
    pub rounds_ok: usize,
    pub fin_edge: bool,
    pub inode: u64,
    /// smc_diag of this connection while it was up (VM only).
    pub diag: Option<SmcSocket>,
}

/// One connection the way Envoy's upstream connections go: socket (non-blocking) → epoll ADD
/// (read|write|rdhup, edge-triggered) → options → optional bind to `src` → connect → wait for the
/// write edge → `rounds` request/response exchanges of `size` bytes, each completed by read edges
/// → half-close → wait for the peer's FIN edge. Every wait has a deadline; a lost edge fails.
pub fn et_client(
    target: SocketAddr,
    src: Option<IpAddr>,
    opts: &[(c_int, c_int, c_int)],
    rounds: usize,
    size: usize,
    with_diag: bool,
) -> Result<ClientReport, String> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let r = et_client_on(fd, target, src, opts, rounds, size, with_diag);
    // SAFETY: closing our own fd once.
    unsafe { libc::close(fd) };
    r
}

fn et_client_on(
    fd: c_int,
    target: SocketAddr,
    src: Option<IpAddr>,
    opts: &[(c_int, c_int, c_int)],
    rounds: usize,
    size: usize,
    with_diag: bool,
) -> Result<ClientReport, String> {
    let mut rep = ClientReport::default();
    let ep = Epoll::new();
    let tag = 0xfeed_0000_0000 | fd as u64;
    ep.add(fd, ET_RW, tag);
    for &(l, n, v) in opts {
        if setsockopt_int(fd, l, n, v) != 0 {
            return Err(format!(
                "setsockopt({l},{n},{v}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(ip) = src {
        let ss = socket2::SockAddr::from(SocketAddr::new(ip, 0));
        // SAFETY: valid address.
        if unsafe { libc::bind(fd, ss.as_ptr().cast(), ss.len()) } != 0 {
            return Err(format!("bind {ip}: {}", std::io::Error::last_os_error()));
        }
    }
    rep.kind_before = kind(fd);
    let ss = socket2::SockAddr::from(target);
    // SAFETY: valid address.
    let rc = unsafe { libc::connect(fd, ss.as_ptr().cast(), ss.len()) };
    if rc != 0 && errno() != libc::EINPROGRESS {
        return Err(format!(
            "connect {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    rep.kind_after = kind(fd);
    // SAFETY: plain fcntl queries.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    rep.fd_flags_kept = fl & libc::O_NONBLOCK != 0 && fdfl & libc::FD_CLOEXEC != 0;
    rep.inode = inode(fd);

    let wait_for_within = |want: u32, what: &str, limit: Duration| -> Result<u32, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {what} edge within {limit:?}"));
            }
            for (ev, data) in ep.wait(left.as_millis().min(1000) as c_int) {
                if data != tag {
                    return Err(format!("event with foreign data {data:#x}"));
                }
                if ev & want != 0 {
                    return Ok(ev);
                }
            }
        }
    };

    let wait_for = |want: u32, what: &str| wait_for_within(want, what, Duration::from_secs(20));
    let connect_limit = Duration::from_millis(
        env_or("ENVOY_SMC_TEST_CONNECT_TIMEOUT_MS", "20000")
            .parse()
            .unwrap(),
    );
    let connect_start = Instant::now();
    let ev = wait_for_within(libc::EPOLLOUT as u32, "connect (EPOLLOUT)", connect_limit)?;
    rep.connect_ms = connect_start.elapsed().as_millis();
    rep.kind_connected = kind(fd);
    let err = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR);
    if err != 0 || ev & libc::EPOLLERR as u32 != 0 {
        return Err(format!("connect failed: SO_ERROR {err}, events {ev:#x}"));
    }
    rep.connect_edge = true;

    let mut buf = vec![0u8; size.max(4096)];
    for round in 0..rounds {
        let msg: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
        let mut sent = 0;
        while sent < msg.len() {
            // SAFETY: readable slice.
            let n = unsafe {
                libc::send(
                    fd,
                    msg[sent..].as_ptr().cast(),
                    msg.len() - sent,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                sent += n as usize;
            } else if errno() == libc::EAGAIN {
                wait_for(libc::EPOLLOUT as u32, "write")?;
            } else {
                return Err(format!("send: {}", std::io::Error::last_os_error()));
            }
        }
        let mut got = Vec::with_capacity(size);
        while got.len() < size {
            // edge-triggered: drain until EAGAIN, then wait for the next edge
            // SAFETY: writable buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got.extend_from_slice(&buf[..n as usize]);
            } else if n == 0 {
                return Err("peer closed early".into());
            } else if errno() == libc::EAGAIN {
                wait_for(libc::EPOLLIN as u32, "data (EPOLLIN)")?;
                rep.data_edges += 1;
            } else {
                return Err(format!("read: {}", std::io::Error::last_os_error()));
            }
        }
        if got != msg {
            return Err(format!("round {round}: echo differs"));
        }
        rep.rounds_ok += 1;
    }
    if with_diag {
        rep.diag = smc_diag_dump()
            .ok()
            .and_then(|v| v.into_iter().find(|e| e.inode == rep.inode));
    }
    // SAFETY: plain syscall.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    loop {
        // SAFETY: writable buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        } else if n > 0 {
            continue;
        } else if errno() == libc::EAGAIN {
            wait_for(
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                "FIN (EPOLLRDHUP)",
            )?;
        } else {
            return Err(format!("read at FIN: {}", std::io::Error::last_os_error()));
        }
    }
    rep.fin_edge = true;
    Ok(rep)
}

// ---------------------------------------------------------------------------------------------
// smc_diag (VM): the project's own reader (src/diag/smc_diag.rs)

use envoy_smc_cli::diag::smc_diag::SmcSocket;

/// Every SMC socket of this network namespace (needs the smc_diag module).
pub fn smc_diag_dump() -> Result<Vec<SmcSocket>, String> {
    envoy_smc_cli::diag::smc_diag::dump().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// role dispatch

/// Roles shared by the test binaries. Returns false if `role` is not one of them.
pub fn run_common_role(role: &str) -> bool {
    match role {
        // A server process: listen on ENVOY_SMC_TEST_LISTEN, print READY, serve echo until stdin
        // closes, report.
        "server" => {
            let addr: SocketAddr = env_or("ENVOY_SMC_TEST_LISTEN", "127.0.0.1:0")
                .parse()
                .unwrap();
            let reuse_port = env_or("ENVOY_SMC_TEST_REUSE_PORT", "1") == "1";
            let opts = parse_opts(&env_or("ENVOY_SMC_TEST_OPTS", ""));
            let dup = env_or("ENVOY_SMC_TEST_DUP", "0") == "1";
            let (lfd, dupfd) = listener_dup(addr, reuse_port, &opts, dup);
            println!(
                "READY port={} kind={} dup_kind={} same_socket={}",
                local_port(lfd),
                kind(lfd),
                dupfd.map_or("none", kind),
                dupfd.is_none_or(|d| inode(d) == inode(lfd))
            );
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = stop.clone();
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                s2.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let rep = serve_echo(lfd, &|| stop.load(std::sync::atomic::Ordering::SeqCst));
            println!(
                "RESULT listener_kind={} accepted={} closed={} bytes={}",
                rep.listener_kind, rep.accepted, rep.closed, rep.bytes
            );
            // SAFETY: closing our own fds.
            unsafe {
                libc::close(lfd);
                if let Some(d) = dupfd {
                    libc::close(d);
                }
            }
            print_own_stats();
            true
        }
        // A client process: ENVOY_SMC_TEST_CONNECTIONS edge-triggered connections to
        // ENVOY_SMC_TEST_TARGET (from ENVOY_SMC_TEST_SRC), each ENVOY_SMC_TEST_ROUNDS exchanges.
        "client" => {
            let target: SocketAddr = env_or("ENVOY_SMC_TEST_TARGET", "").parse().unwrap();
            let src: Option<IpAddr> = std::env::var("ENVOY_SMC_TEST_SRC")
                .ok()
                .map(|s| s.parse().unwrap());
            let opts = parse_opts(&env_or("ENVOY_SMC_TEST_OPTS", ""));
            let n: usize = env_or("ENVOY_SMC_TEST_CONNECTIONS", "1").parse().unwrap();
            let rounds: usize = env_or("ENVOY_SMC_TEST_ROUNDS", "3").parse().unwrap();
            let size: usize = env_or("ENVOY_SMC_TEST_SIZE", "128").parse().unwrap();
            let diag = env_or("ENVOY_SMC_TEST_DIAG", "0") == "1";
            let fds_before = open_fds();
            let mut ok = 0;
            for i in 0..n {
                match et_client(target, src, &opts, rounds, size, diag) {
                    Ok(r) => {
                        ok += 1;
                        let d = r.diag.as_ref();
                        println!(
                            "RESULT conn={i} kind_before={} kind_after={} kind_connected={} connect_ms={} fd_flags_kept={} connect_edge={} data_edges={} rounds_ok={} fin_edge={} diag_mode={} diag_state={} diag_reason={} diag_dev={}",
                            r.kind_before, r.kind_after, r.kind_connected, r.connect_ms, r.fd_flags_kept, r.connect_edge, r.data_edges, r.rounds_ok, r.fin_edge,
                            d.map_or("none".into(), |d| d.mode.name()),
                            d.map_or(0, |d| d.state.0),
                            d.and_then(|d| d.fallback_reason()).map_or("none".to_string(), |r| format!("{:#010x}", r.0)),
                            d.and_then(|d| d.link.as_ref()).map_or("none", |l| l.ib_device.as_str()),
                        );
                    }
                    Err(e) => println!("RESULT conn={i} error={}", e.replace(' ', "_")),
                }
            }
            let fds_after = open_fds();
            println!("RESULT ok={ok} fds_before={fds_before} fds_after={fds_after}");
            print_own_stats();
            let _ = std::io::stdout().flush();
            true
        }
        _ => false,
    }
}

/// Spawns `cmd`, retrying on ETXTBSY: a binary this test process just copied can still be open for
/// writing in a child another test thread forked before that child's exec closed it.
pub fn spawn_retrying(cmd: &mut Command) -> std::process::Child {
    for _ in 0..100 {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("spawn role"),
        }
    }
    cmd.spawn().expect("spawn role")
}
