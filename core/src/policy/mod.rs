//! The decisions of DESIGN.md, as plain functions over a compiled configuration.
//!
//! A [`Policy`] is built once per configuration (parsing, sorting, reading the annotations) and
//! then read on every connection: no allocation, no lock, no syscall. Entry points keep one
//! [`SocketFacts`] per socket and feed it the socket options Envoy sets.

mod reason;
mod sets;

use std::net::{IpAddr, SocketAddr};

pub use reason::TcpReason;
pub use sets::{AddrSet, PortSet};

pub use crate::config::OptionMatch;

use crate::config::proto::smc_config::Mode;
use crate::config::{self, Config, OptIn};
use crate::smc::{is_ip_stream, KernelSupport, SocketKind, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT};

/// The kind of SMC socket a decision asks for.
pub type SmcKind = SocketKind;

/// What to do with one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An SMC socket of this kind; for listeners, with handshake limitation if `limit_hs`.
    Smc { kind: SmcKind, limit_hs: bool },
    /// A plain TCP socket, for this reason.
    Tcp(TcpReason),
}

impl Verdict {
    pub fn is_smc(&self) -> bool {
        matches!(self, Verdict::Smc { .. })
    }
}

/// What an entry point learnt about one socket from the calls Envoy made on it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct SocketFacts(pub u32);

impl SocketFacts {
    /// The mesh switch (`enable_option`) was set.
    pub const SWITCH_ON: u32 = 1 << 0;
    /// The per-cluster fallback (`keep_tcp_option`) was set.
    pub const KEEP_TCP: u32 = 1 << 1;
    /// `SO_REUSEPORT` was set to a non-zero value.
    pub const REUSE_PORT: u32 = 1 << 2;
    /// A TCP fast-open option was set to a non-zero value (SMC cannot carry it).
    pub const FAST_OPEN: u32 = 1 << 3;
    /// An option was set that a replacement socket cannot be given (it holds a pointer or an
    /// fd, or the entry point could not record it): the socket must stay as it is.
    pub const OPTIONS_NOT_CARRIED: u32 = 1 << 4;

    pub fn has(&self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// What a policy needs from the environment it runs in.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// What the kernel can open.
    pub kernel: Option<KernelSupport>,
    /// This host's own addresses (destinations that always stay TCP unless `allow_local`).
    pub local_addrs: Vec<IpAddr>,
    /// Annotations from outside the configuration (the native extension: node.metadata.ANNOTATIONS).
    pub annotations: Vec<(String, String)>,
}

impl Environment {
    /// A host whose kernel is `kernel`, with no local addresses and no annotations (tests, and
    /// asking the policy what it would decide on another kernel).
    pub fn assuming(kernel: KernelSupport) -> Environment {
        Environment {
            kernel: Some(kernel),
            local_addrs: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// The running host: kernel probed once, local addresses read now.
    pub fn of_this_host() -> Environment {
        Environment {
            kernel: Some(KernelSupport::probe()),
            local_addrs: crate::smc::local_addresses().unwrap_or_default(),
            annotations: Vec::new(),
        }
    }
}

/// A configuration compiled for decisions.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The SMC flavour this process uses, or why SMC is off for every socket.
    smc: Result<SmcKind, TcpReason>,
    always_on: bool,
    enable: OptionMatch,
    keep_tcp: OptionMatch,
    listener_ports: PortSet,
    limit_hs: bool,
    allow: AddrSet,
    deny: AddrSet,
    allow_ports: PortSet,
    deny_ports: PortSet,
    allow_local: bool,
    local_addrs: Vec<IpAddr>,
}

impl Policy {
    /// Builds the decision tables of a compiled configuration for the given environment.
    pub fn new(config: &Config, env: &Environment) -> Policy {
        let kernel = env.kernel.unwrap_or_else(KernelSupport::probe);
        let smc = if config.mode == Mode::Off {
            Err(TcpReason::Disabled)
        } else if !opted_in(&config.opt_in, env) {
            Err(TcpReason::NotOptedIn)
        } else {
            match config.mode {
                Mode::Auto if kernel.ipproto_smc => Ok(SocketKind::IpprotoSmc),
                Mode::Auto if kernel.af_smc => Ok(SocketKind::AfSmc),
                Mode::AfSmc if kernel.af_smc => Ok(SocketKind::AfSmc),
                Mode::IpprotoSmc if kernel.ipproto_smc => Ok(SocketKind::IpprotoSmc),
                _ => Err(TcpReason::KernelLacksSmc),
            }
        };
        let listener_ranges: Vec<_> = config
            .listener_ports
            .iter()
            .map(|&p| config::PortRange { first: p, last: p })
            .collect();
        let mut local_addrs: Vec<IpAddr> = env
            .local_addrs
            .iter()
            .map(|&a| config::canonical(a))
            .collect();
        local_addrs.sort_unstable();
        local_addrs.dedup();
        Policy {
            smc,
            always_on: config.always_on,
            enable: config.enable_option,
            keep_tcp: config.keep_tcp_option,
            listener_ports: PortSet::new(&listener_ranges),
            limit_hs: config.limit_handshake,
            allow: AddrSet::new(&config.allow),
            deny: AddrSet::new(&config.deny),
            allow_ports: PortSet::new(&config.allow_ports),
            deny_ports: PortSet::new(&config.deny_ports),
            allow_local: config.allow_local,
            local_addrs,
        }
    }

    /// The SMC flavour in use, or the reason every socket stays TCP.
    pub fn smc_kind(&self) -> Result<SmcKind, TcpReason> {
        self.smc
    }

    /// Records a socket option Envoy set on a socket. Returns the updated facts.
    pub fn note_sockopt(
        &self,
        facts: SocketFacts,
        level: i32,
        name: i32,
        value: i32,
    ) -> SocketFacts {
        let mut bits = facts.0;
        if self.enable.matches(level, name, value) {
            bits |= SocketFacts::SWITCH_ON;
        }
        if self.keep_tcp.matches(level, name, value) {
            bits |= SocketFacts::KEEP_TCP;
        }
        if level == libc::SOL_SOCKET && name == libc::SO_REUSEPORT {
            bits = if value != 0 {
                bits | SocketFacts::REUSE_PORT
            } else {
                bits & !SocketFacts::REUSE_PORT
            };
        }
        if level == libc::IPPROTO_TCP
            && (name == TCP_FASTOPEN || name == TCP_FASTOPEN_CONNECT)
            && value != 0
        {
            bits |= SocketFacts::FAST_OPEN;
        }
        SocketFacts(bits)
    }

    /// At `socket()`: whether envoy-smc may ever make this socket SMC (`Ok`: keep watching it), or
    /// why it stays a plain socket for good. `addr` is known in native mode only (the remote
    /// address of a client, the local one of a listener).
    pub fn at_socket(
        &self,
        domain: i32,
        ty: i32,
        protocol: i32,
        addr: Option<IpAddr>,
    ) -> Result<(), TcpReason> {
        if !is_ip_stream(domain, ty, protocol) {
            return Err(TcpReason::NotIpStream);
        }
        self.smc?;
        // Not unspecified: a wildcard address here is a listener's (0.0.0.0:15006).
        if let Some(ip) = addr {
            if config::canonical(ip).is_loopback() {
                return Err(TcpReason::Loopback);
            }
        }
        Ok(())
    }

    /// Before `listen()`: an SMC listener for the selected ports of an opted-in workload, a plain
    /// TCP socket for every other (never an SMC socket with the fallback switch: its accepted
    /// sockets lose epoll wakeups).
    ///
    /// Decided by the port alone, never by socket options: a listener's options reach Envoy by
    /// LDS, and Envoy 1.40 rejects a listener update that changes them when `enable_reuse_port`
    /// is false (the only setting under which it used to take an `AF_SMC` listener) and opens
    /// new sockets for it otherwise, so a switch on a listener cannot be turned live. An SMC
    /// listener serves TCP clients too (per-connection fallback): the mesh switch on the clients'
    /// clusters decides which connections use SMC. With `SO_REUSEPORT` (Envoy's default) an
    /// `AF_SMC` listener is shared by the workers' fds (`smc::SharedListeners`).
    pub fn before_listen(&self, local: SocketAddr, facts: SocketFacts) -> Verdict {
        let kind = match self.smc {
            Ok(kind) => kind,
            Err(reason) => return Verdict::Tcp(reason),
        };
        let reason = if !self.listener_ports.contains(local.port()) {
            TcpReason::ListenerNotSelected
        } else if config::canonical(local.ip()).is_loopback() {
            // A wildcard (0.0.0.0, ::) listener is not loopback: it serves every address.
            TcpReason::Loopback
        } else if let Some(reason) = facts_against_replacement(facts) {
            reason
        } else {
            return Verdict::Smc {
                kind,
                limit_hs: self.limit_hs,
            };
        };
        Verdict::Tcp(reason)
    }

    /// Before `connect()`: SMC for an allowed in-mesh destination of a switched-on cluster.
    pub fn before_connect(&self, remote: SocketAddr, facts: SocketFacts) -> Verdict {
        let kind = match self.smc {
            Ok(kind) => kind,
            Err(reason) => return Verdict::Tcp(reason),
        };
        let ip = config::canonical(remote.ip());
        let port = remote.port();
        let reason = if facts.has(SocketFacts::KEEP_TCP) {
            TcpReason::KeptOnTcp
        } else if !self.always_on && !facts.has(SocketFacts::SWITCH_ON) {
            TcpReason::MeshSwitchAbsent
        } else if is_loopback(ip) {
            TcpReason::Loopback
        } else if !self.allow_local && self.local_addrs.binary_search(&ip).is_ok() {
            TcpReason::LocalAddress
        } else if self.deny.contains(ip) {
            TcpReason::DeniedAddress
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            TcpReason::AddressNotAllowed
        } else if self.deny_ports.contains(port) {
            TcpReason::DeniedPort
        } else if !self.allow_ports.is_empty() && !self.allow_ports.contains(port) {
            TcpReason::PortNotAllowed
        } else if let Some(reason) = facts_against_replacement(facts) {
            reason
        } else {
            return Verdict::Smc {
                kind,
                limit_hs: false,
            };
        };
        Verdict::Tcp(reason)
    }
}

/// What the socket's own facts say against replacing it, checked last for every SMC verdict:
/// a fast-open socket, or one with an option a new socket could not be given.
fn facts_against_replacement(facts: SocketFacts) -> Option<TcpReason> {
    if facts.has(SocketFacts::FAST_OPEN) {
        Some(TcpReason::FastOpen)
    } else if facts.has(SocketFacts::OPTIONS_NOT_CARRIED) {
        Some(TcpReason::OptionsNotCarried)
    } else {
        None
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// Whether the workload opted in: `all_workloads`, or the annotation is "true" in the
/// configuration's annotations, the annotations file, or the environment's annotations.
fn opted_in(opt_in: &OptIn, env: &Environment) -> bool {
    if opt_in.all_workloads {
        return true;
    }
    let key = opt_in.annotation.as_str();
    if let Some(v) = opt_in.annotations.get(key) {
        return is_true(v);
    }
    if let Some(path) = &opt_in.annotations_file {
        let cap = crate::config::limits::MAX_ANNOTATIONS_FILE_BYTES;
        match crate::config::limits::read_regular_file(path, cap, "annotations file") {
            Ok(bytes) => {
                if let Some(v) = downward_api_value(&String::from_utf8_lossy(&bytes), key) {
                    return is_true(&v);
                }
            }
            // Missing is "no annotations"; anything else is worth a line.
            Err(e) if path.exists() => tracing::warn!("envoy-smc: opt_in.annotations_file: {e}"),
            Err(_) => {}
        }
    }
    annotation_true(key, env)
}

fn annotation_true(key: &str, env: &Environment) -> bool {
    env.annotations.iter().any(|(k, v)| k == key && is_true(v))
}

fn is_true(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("true")
}

/// The value of `key` in a Kubernetes downward-API file (`key="value"` per line, Go-quoted).
pub fn downward_api_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').replace("\\\"", "\""))
    })
}
