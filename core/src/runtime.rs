//! The runtime every entry point shares: the compiled policy (swappable atomically), the
//! counters, and the mechanics that carry a verdict out on a real fd.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use crate::adaptive::{Admission, Breaker, Entry, Rescuer, Watchdog};
use crate::config::{self, AdaptiveSettings, Config, ConfigError};
use crate::policy::{Environment, Policy, SocketFacts, TcpReason, Verdict};
use crate::smc::{self, SocketKind, SocketRecord};
use crate::stats::{Counter, Stats};

/// What carrying out a verdict did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The verdict that holds now (a failed replacement turns SMC into `Tcp(ReplaceFailed)`).
    pub verdict: Verdict,
    /// The socket under the fd was replaced: the caller must register the fd with epoll again
    /// where it had registered it.
    pub replaced: bool,
    /// The fd now holds a listener shared with other fds (already configured and listening): the
    /// caller sets nothing more on it.
    pub shared: bool,
}

/// A socket an entry point watches: the facts its options carry and the record a replacement is
/// built from. Owned by the entry point, used by one thread at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub facts: SocketFacts,
    pub record: SocketRecord,
}

impl Watched {
    /// The facts to decide with: an option the record could not carry keeps the socket as is.
    fn decision_facts(&self) -> SocketFacts {
        if self.record.options_carried() {
            self.facts
        } else {
            SocketFacts(self.facts.0 | SocketFacts::OPTIONS_NOT_CARRIED)
        }
    }
}

/// How an SMC connect is watched for a path that drops SMC's SYNs (adaptive fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Noticed, so that later connects to the destination use TCP.
    Plain,
    /// Also handed to the entry point's rescuer with this token if it gets stuck (see
    /// [`Runtime::watch_rescuable_connect`]).
    Rescuable(u64),
}

/// What a connect event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub applied: Applied,
    /// The socket's cookie when the connect is watched for a rescue.
    pub cookie: Option<u64>,
}

/// The black-hole breaker and its watchdog, present unless adaptive fallback is disabled.
struct Adaptive {
    breaker: Arc<Breaker>,
    watchdog: Watchdog,
}

impl Adaptive {
    fn new(
        settings: AdaptiveSettings,
        stats: &Arc<Stats>,
        rescuer: Option<Arc<dyn Rescuer>>,
    ) -> Option<Arc<Adaptive>> {
        settings.enabled.then(|| {
            let breaker = Arc::new(Breaker::new(settings));
            let watchdog = Watchdog::new(Arc::clone(&breaker), Arc::clone(stats));
            if let Some(r) = rescuer {
                watchdog.set_rescuer(r);
            }
            Arc::new(Adaptive { watchdog, breaker })
        })
    }
}

/// Policy + counters + once-only logging, shared by all threads of a process.
pub struct Runtime {
    policy: ArcSwap<Policy>,
    adaptive: ArcSwapOption<Adaptive>,
    /// The entry point's rescuer, kept for the watchdog of a later configuration.
    rescuer: Mutex<Option<Arc<dyn Rescuer>>>,
    stats: Arc<Stats>,
    /// `AF_SMC` listeners shared by the workers' fds (Envoy's default `enable_reuse_port`).
    shared: smc::SharedListeners,
    warned_replace: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("policy", &**self.policy.load())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime for `config` in `env`.
    pub fn new(config: &Config, env: &Environment) -> Runtime {
        let policy = Policy::new(config, env);
        log_availability(&policy);
        let stats = Arc::new(Stats::default());
        Runtime {
            policy: ArcSwap::from_pointee(policy),
            adaptive: ArcSwapOption::new(Adaptive::new(config.adaptive, &stats, None)),
            rescuer: Mutex::new(None),
            stats,
            shared: smc::SharedListeners::default(),
            warned_replace: AtomicBool::new(false),
        }
    }

    /// A runtime from YAML/JSON text, on this host.
    pub fn from_yaml(text: &str) -> Result<Runtime, ConfigError> {
        Ok(Runtime::new(
            &config::from_yaml(text)?,
            &Environment::of_this_host(),
        ))
    }

    /// Replaces the configuration for every later decision; sockets already decided keep theirs.
    pub fn swap_config(&self, config: &Config, env: &Environment) {
        let policy = Policy::new(config, env);
        log_availability(&policy);
        let settings = config.adaptive;
        let current = self.adaptive.load().as_ref().map(|a| *a.breaker.settings());
        // Remembered destinations survive a swap unless the adaptive settings changed.
        if current != Some(settings).filter(|s| s.enabled) {
            let rescuer = self.rescuer.lock().ok().and_then(|r| r.clone());
            self.adaptive
                .store(Adaptive::new(settings, &self.stats, rescuer));
        }
        self.policy.store(Arc::new(policy));
    }

    /// The policy in force (lock-free read).
    pub fn policy(&self) -> Guard<Arc<Policy>> {
        self.policy.load()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// At `socket(domain, ty, protocol)` (`addr`: what is known of the socket's address, if
    /// anything): the socket to watch (it may become SMC later), or why it stays a plain socket
    /// for good (counted; non-IP-stream sockets are not counted).
    pub fn on_socket(
        &self,
        domain: i32,
        ty: i32,
        protocol: i32,
        addr: Option<IpAddr>,
    ) -> Result<Watched, TcpReason> {
        self.socket_decision(domain, ty, protocol, addr)?;
        Ok(Watched {
            facts: SocketFacts::default(),
            record: SocketRecord::opened(domain, ty),
        })
    }

    /// The decision at `socket()` alone ([`Runtime::on_socket`] without the record).
    pub fn socket_decision(
        &self,
        domain: i32,
        ty: i32,
        protocol: i32,
        addr: Option<IpAddr>,
    ) -> Result<(), TcpReason> {
        let decision = self.policy.load().at_socket(domain, ty, protocol, addr);
        match decision {
            Ok(()) => self.stats.inc(Counter::SocketsSeen),
            Err(TcpReason::NotIpStream) => {}
            Err(reason) => {
                self.stats.inc(Counter::SocketsSeen);
                self.stats.inc_tcp(reason);
            }
        }
        decision
    }

    /// Records a socket option set on a watched socket. `value` is the option's bytes as passed to
    /// setsockopt; only `int`-sized values can be a switch. An option that holds a pointer or an
    /// fd ([`smc::option_holds_reference`]) cannot be given to a replacement socket: the socket
    /// then stays as it is (`options_not_carried`).
    pub fn note_sockopt(
        &self,
        facts: SocketFacts,
        level: i32,
        name: i32,
        value: &[u8],
    ) -> SocketFacts {
        if smc::option_holds_reference(level, name) {
            return SocketFacts(facts.0 | SocketFacts::OPTIONS_NOT_CARRIED);
        }
        let Ok(bytes) = <[u8; 4]>::try_from(value) else {
            return facts;
        };
        self.policy
            .load()
            .note_sockopt(facts, level, name, i32::from_ne_bytes(bytes))
    }

    /// At a successful `setsockopt` on a watched socket: notes the facts the option carries and
    /// records it for a replacement. `value` is `None` when the entry point could not read it
    /// (the socket then stays as it is).
    pub fn on_sockopt(&self, w: &mut Watched, level: i32, name: i32, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                w.facts = self.note_sockopt(w.facts, level, name, v);
                w.record.record_opt(level, name, v);
            }
            None => w.record.mark_not_carried(),
        }
    }

    /// Before `listen()` on a watched socket: decides whether it is an SMC listener and carries
    /// the verdict out (see [`Applied`]). Counts the outcome.
    pub fn on_listen(&self, fd: BorrowedFd<'_>, w: &mut Watched) -> Applied {
        let local = match w.record.bound {
            // A port the kernel chose: the listener's real port decides.
            Some(a) if a.port() == 0 => local_address(fd).unwrap_or(a),
            Some(a) => a,
            // listen() on an unbound socket binds an ephemeral port: never a selected one.
            None => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
        };
        let verdict = self.policy.load().before_listen(local, w.decision_facts());
        self.apply_listen(fd, w, local, verdict)
    }

    /// Before a watched socket is duplicated (`dup`, `dup2`, `dup3`, `F_DUPFD`, Envoy's
    /// `IoHandle::duplicate`): the last moment it can be replaced, since a duplicate would keep the
    /// old socket. The one rule for every entry point: a bound socket gets its listener decision
    /// now (Envoy duplicates a bound listener socket for its workers when `enable_reuse_port` is
    /// false, before `listen()`); an unbound one stays the TCP socket it is, undecided (`None`):
    /// it is no listener yet, and a client cannot be decided before its destination is known.
    pub fn on_dup(&self, fd: BorrowedFd<'_>, w: &mut Watched) -> Option<Applied> {
        w.record.bound?;
        Some(self.on_listen(fd, w))
    }

    /// Before `connect(remote)` on a watched socket: decides, carries out and, for SMC, watches
    /// the connect (adaptive fallback; see [`Watch`]). A TCP verdict costs no system call (the
    /// socket is the plain TCP socket it was opened as); an SMC one replaces the socket from the
    /// record, reading nothing back. `still_ours` runs only before a replacement: an entry point
    /// that cannot be sure the fd still holds the recorded socket checks it there; `false` changes
    /// and counts nothing (`None`).
    pub fn on_connect(
        &self,
        fd: BorrowedFd<'_>,
        w: &mut Watched,
        remote: SocketAddr,
        watch: Watch,
        still_ours: impl FnOnce() -> bool,
    ) -> Option<Connected> {
        let verdict = self.decide_connect(remote, w.decision_facts());
        if verdict.is_smc() && !still_ours() {
            return None;
        }
        let applied = self.apply_connect(fd, w, verdict);
        let mut cookie = None;
        if applied.verdict.is_smc() {
            match watch {
                Watch::Plain => self.watch_connect(fd, remote),
                Watch::Rescuable(token) => {
                    cookie = self.watch_rescuable_connect(fd, remote, token);
                }
            }
        }
        Some(Connected { applied, cookie })
    }

    /// The client decision for a connect to `remote`: the policy's, then the black-hole breaker's
    /// for destinations the policy sends to SMC.
    pub fn decide_connect(&self, remote: SocketAddr, facts: SocketFacts) -> Verdict {
        let verdict = self.policy.load().before_connect(remote, facts);
        if !verdict.is_smc() {
            return verdict;
        }
        let adaptive = self.adaptive.load();
        let Some(adaptive) = adaptive.as_ref() else {
            return verdict;
        };
        match adaptive.breaker.admit(remote, adaptive.breaker.now_ms()) {
            Admission::Smc => verdict,
            Admission::Probe => {
                self.stats.inc(Counter::BlackHoleProbes);
                verdict
            }
            Admission::Hold => Verdict::Tcp(TcpReason::BlackHoleHoldDown),
        }
    }

    /// Watches an SMC socket that is about to connect to `remote`, so that a path dropping SMC's
    /// SYNs is noticed (adaptive fallback). Call it after an SMC verdict was carried out.
    pub fn watch_connect(&self, fd: BorrowedFd<'_>, remote: SocketAddr) {
        if let Some(adaptive) = self.adaptive.load().as_ref() {
            adaptive.watchdog.watch(fd.as_raw_fd(), remote, None);
        }
    }

    /// Watches an SMC socket about to connect to `remote`, like [`Runtime::watch_connect`], for
    /// an entry point that can rescue it in flight (it installed a rescuer with
    /// [`Runtime::set_rescuer`]). Returns the socket's cookie when the connect is watched: the
    /// entry point then keeps what a rescue needs until the rescuer's `rescue` or `release`.
    /// `token` is the entry point's tag for the connect, handed back to its rescuer.
    pub fn watch_rescuable_connect(
        &self,
        fd: BorrowedFd<'_>,
        remote: SocketAddr,
        token: u64,
    ) -> Option<u64> {
        let adaptive = self.adaptive.load();
        adaptive
            .as_ref()?
            .watchdog
            .watch(fd.as_raw_fd(), remote, Some(token))
    }

    /// Moves a connect stuck behind a proven black hole to TCP, on the thread that owns the fd
    /// (for a rescuer that answered [`RescueOutcome::Handed`]): `fd` must still be the socket
    /// with `cookie` and still sending SYNs; `source` is the address the program bound before
    /// connecting, if any. Counts the outcome. On error nothing changed; on success the caller
    /// registers the fd with its event loop again.
    ///
    /// [`RescueOutcome::Handed`]: crate::adaptive::RescueOutcome::Handed
    pub fn rescue_connect(
        &self,
        fd: BorrowedFd<'_>,
        cookie: u64,
        dest: SocketAddr,
        source: Option<SocketAddr>,
    ) -> io::Result<()> {
        use crate::adaptive::detect::{connect_state, socket_cookie, ConnectState};
        let raw = fd.as_raw_fd();
        let result = if socket_cookie(raw) != Some(cookie) {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the fd holds another socket by now",
            ))
        } else if !matches!(connect_state(raw), Ok(ConnectState::SynSent { .. })) {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connect is no longer in progress",
            ))
        } else {
            smc::reconnect_tcp(fd, dest, source, |_| {})
        };
        match &result {
            Ok(()) => {
                self.stats.inc(Counter::BlackHoleRescued);
                tracing::info!("envoy-smc: connect on fd {raw} to {dest} moved to TCP in flight");
            }
            Err(e) => {
                self.stats.inc(Counter::BlackHoleRescueFailed);
                tracing::warn!(
                    "envoy-smc: fd {raw}: the connect to {dest} stays stuck ({e}); it ends at the connect timeout"
                );
            }
        }
        result
    }

    /// Installs the entry point's rescuer: connects watched with
    /// [`Runtime::watch_rescuable_connect`] that hit a proven black hole are handed to it.
    pub fn set_rescuer(&self, rescuer: Arc<dyn Rescuer>) {
        if let Ok(mut r) = self.rescuer.lock() {
            *r = Some(Arc::clone(&rescuer));
        }
        if let Some(a) = self.adaptive.load().as_ref() {
            a.watchdog.set_rescuer(rescuer);
        }
    }

    /// Holds `dest` on TCP as if it had been proven black-holed (operators and tests). Returns the
    /// hold-down, or `None` when adaptive fallback is disabled.
    pub fn hold_destination(&self, dest: SocketAddr) -> Option<std::time::Duration> {
        let adaptive = self.adaptive.load();
        let a = adaptive.as_ref()?;
        Some(a.breaker.trip(dest, a.breaker.now_ms()))
    }

    /// Connects the black-hole watchdog is watching now (0 when adaptive fallback is disabled).
    pub fn connects_watched_now(&self) -> usize {
        self.adaptive
            .load()
            .as_ref()
            .map_or(0, |a| a.watchdog.watching())
    }

    /// Destinations the breaker remembers (held, probing, or recovered with strikes).
    pub fn black_holes(&self) -> Vec<Entry> {
        self.adaptive
            .load()
            .as_ref()
            .map(|a| a.breaker.entries())
            .unwrap_or_default()
    }

    /// Carries out a listener verdict before `listen()`: an SMC socket (with `SMC_LIMIT_HS` if
    /// asked) for SMC, a plain TCP socket otherwise. An `AF_SMC` verdict for a socket with
    /// `SO_REUSEPORT` (one of a listener's per-worker sockets) joins or becomes the address's
    /// shared `AF_SMC` listener. Counts the outcome. Never leaves the fd without a working socket.
    fn apply_listen(
        &self,
        fd: BorrowedFd<'_>,
        w: &mut Watched,
        local: SocketAddr,
        verdict: Verdict,
    ) -> Applied {
        let current = w.record.kind;
        match verdict {
            Verdict::Smc {
                kind: SocketKind::AfSmc,
                limit_hs,
            } if current == SocketKind::Tcp && w.facts.has(SocketFacts::REUSE_PORT) => {
                self.apply_shared_listen(fd, w, local, verdict, limit_hs)
            }
            Verdict::Smc { kind, limit_hs } => {
                let replaced = current != kind;
                if replaced {
                    if let Err(e) = w.record.replace(fd, kind, &[]) {
                        return self.replace_failed(e);
                    }
                    self.stats.inc(Counter::SocketReplaced);
                }
                self.limit_handshake(fd, limit_hs);
                self.stats.inc_smc_listen(kind);
                applied(verdict, replaced)
            }
            Verdict::Tcp(reason) => {
                self.stats.inc_tcp(reason);
                // Never an SMC listener with the fallback switch: make it a real TCP socket.
                if !current.is_smc() {
                    return applied(verdict, false);
                }
                if let Err(e) = w.record.replace(fd, SocketKind::Tcp, &[]) {
                    self.stats.inc(Counter::Errors);
                    tracing::warn!(
                        "envoy-smc: cannot turn listener fd {} into a TCP socket: {e}",
                        fd.as_raw_fd()
                    );
                    return applied(verdict, false);
                }
                self.stats.inc(Counter::SocketReplaced);
                applied(verdict, true)
            }
        }
    }

    /// An `AF_SMC` listener for one of the per-worker `SO_REUSEPORT` sockets of an address: the
    /// first becomes it, the others share it (`smc::SharedListeners`).
    fn apply_shared_listen(
        &self,
        fd: BorrowedFd<'_>,
        w: &mut Watched,
        local: SocketAddr,
        verdict: Verdict,
        limit_hs: bool,
    ) -> Applied {
        match self.shared.listen(fd, local) {
            Ok(smc::Shared::Created) => {
                w.record.kind = SocketKind::AfSmc;
                self.stats.inc(Counter::SocketReplaced);
                self.limit_handshake(fd, limit_hs);
                self.stats.inc_smc_listen(SocketKind::AfSmc);
                applied(verdict, true)
            }
            Ok(smc::Shared::Joined) => {
                w.record.kind = SocketKind::AfSmc;
                self.stats.inc(Counter::ListenShared);
                Applied {
                    verdict,
                    replaced: true,
                    shared: true,
                }
            }
            Err(e) => self.replace_failed(e),
        }
    }

    /// After `bind(fd, local)` failed with `EADDRINUSE`: if `fd` would be one of this process's
    /// shared `AF_SMC` listeners (a selected port, `SO_REUSEPORT` set, `AF_SMC` mode) and one
    /// listens at `local` already, puts it under `fd` and returns true; the caller then reports
    /// the bind as done. This is how a listener update that opens new sockets on the address
    /// while the old listener drains takes over the listener (the listening `AF_SMC` socket is
    /// in no reuse-port group, so the new sockets cannot bind beside it). Otherwise nothing
    /// changes and it returns false. Counted as `listen_shared`.
    pub fn join_shared_listener(
        &self,
        fd: BorrowedFd<'_>,
        local: SocketAddr,
        w: &mut Watched,
    ) -> bool {
        if w.record.kind != SocketKind::Tcp || !w.facts.has(SocketFacts::REUSE_PORT) {
            return false;
        }
        if !matches!(
            self.policy.load().before_listen(local, w.facts),
            Verdict::Smc {
                kind: SocketKind::AfSmc,
                ..
            }
        ) {
            return false;
        }
        match self.shared.join(fd, local) {
            Ok(true) => {
                w.record.kind = SocketKind::AfSmc;
                self.stats.inc(Counter::ListenShared);
                tracing::debug!(
                    "envoy-smc: fd {} bound to {local} by sharing its AF_SMC listener",
                    fd.as_raw_fd()
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.stats.inc(Counter::Errors);
                tracing::warn!("envoy-smc: cannot share the AF_SMC listener at {local}: {e}");
                false
            }
        }
    }

    fn limit_handshake(&self, fd: BorrowedFd<'_>, limit_hs: bool) {
        if !limit_hs {
            return;
        }
        match smc::set_limit_handshake(fd) {
            Ok(()) => self.stats.inc(Counter::LimitHandshakeSet),
            Err(e) => {
                self.stats.inc(Counter::Errors);
                tracing::debug!("SMC_LIMIT_HS on fd {}: {e}", fd.as_raw_fd());
            }
        }
    }

    /// Carries out a client verdict before `connect()`: replaces a TCP socket with an SMC socket
    /// for SMC; applies the kernel's fallback switch to an SMC socket for TCP (a plain TCP socket,
    /// the usual case, is left alone: no system call). Counts the outcome.
    fn apply_connect(&self, fd: BorrowedFd<'_>, w: &mut Watched, verdict: Verdict) -> Applied {
        let current = w.record.kind;
        match verdict {
            Verdict::Smc { kind, .. } => {
                let replaced = current != kind;
                if replaced {
                    if let Err(e) = w.record.replace(fd, kind, &[]) {
                        return self.replace_failed(e);
                    }
                    self.stats.inc(Counter::SocketReplaced);
                }
                self.stats.inc_smc_connect(kind);
                applied(verdict, replaced)
            }
            Verdict::Tcp(reason) => {
                self.stats.inc_tcp(reason);
                if current.is_smc() {
                    match smc::apply_fallback_switch(fd) {
                        Ok(()) => self.stats.inc(Counter::FallbackSwitchApplied),
                        Err(e) => {
                            self.stats.inc(Counter::Errors);
                            tracing::warn!(
                                "envoy-smc: fallback switch on fd {} failed: {e}",
                                fd.as_raw_fd()
                            );
                        }
                    }
                }
                applied(verdict, false)
            }
        }
    }

    fn replace_failed(&self, e: io::Error) -> Applied {
        if smc::NotCarried::is(&e) {
            // An option the application set that the SMC socket refuses: it stays as it was.
            tracing::debug!("envoy-smc: keeping TCP: {e}");
            self.stats.inc_tcp(TcpReason::OptionsNotCarried);
            return applied(Verdict::Tcp(TcpReason::OptionsNotCarried), false);
        }
        self.stats.inc(Counter::Errors);
        self.stats.inc_tcp(TcpReason::ReplaceFailed);
        if !self.warned_replace.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "envoy-smc: could not open an SMC socket, keeping TCP ({e}); logged once"
            );
        }
        applied(Verdict::Tcp(TcpReason::ReplaceFailed), false)
    }
}

fn applied(verdict: Verdict, replaced: bool) -> Applied {
    Applied {
        verdict,
        replaced,
        shared: false,
    }
}

/// One clear line when SMC is off for every socket, and why (not one per connection).
fn log_availability(policy: &Policy) {
    match policy.smc_kind() {
        Ok(kind) => tracing::info!("envoy-smc: SMC available, using {}", kind.name()),
        Err(reason) => tracing::info!("envoy-smc: every socket stays TCP: {}", reason.describe()),
    }
}

/// The address `fd` is bound to.
pub fn local_address(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    socket2::SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP address"))
}
