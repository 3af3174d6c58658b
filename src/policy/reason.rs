//! Why a socket stays TCP. The numbers are part of the C ABI and are never reused.

/// Why envoy-smc left (or made) a socket plain TCP. In C: `envoy_smc_tcp_reason`.
///
/// cbindgen:rename-all=ScreamingSnakeCase
/// cbindgen:prefix-with-name
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TcpReason {
    /// `mode: MODE_OFF`.
    Disabled = 1,
    /// The workload's opt-in annotation is not "true".
    NotOptedIn = 2,
    /// The kernel cannot open an SMC socket of the configured flavour.
    KernelLacksSmc = 3,
    /// The cluster or listener does not carry the mesh switch (no EnvoyFilter patch).
    MeshSwitchAbsent = 4,
    /// The cluster carries the per-cluster fallback option.
    KeptOnTcp = 5,
    /// Loopback or unspecified address.
    Loopback = 6,
    /// The destination is one of this host's own addresses.
    LocalAddress = 7,
    /// The destination is in `upstream.deny`.
    DeniedAddress = 8,
    /// `upstream.allow` is set and the destination is not in it.
    AddressNotAllowed = 9,
    /// The destination port is in `upstream.deny_ports`.
    DeniedPort = 10,
    /// `upstream.allow_ports` is set and the destination port is not in it.
    PortNotAllowed = 11,
    /// The listener's port is not in `listeners.ports`.
    ListenerNotSelected = 12,
    /// No longer given (listeners with `SO_REUSEPORT` share one `AF_SMC` listener); the number
    /// and the counter stay reserved.
    ReusePortUnsupported = 13,
    /// The socket uses TCP fast open, which SMC cannot carry.
    FastOpen = 14,
    /// Not an IP stream socket (envoy-smc never touches those).
    NotIpStream = 15,
    /// Replacing the socket with an SMC socket failed; the TCP socket was kept.
    ReplaceFailed = 16,
    /// The destination dropped SMC's SYNs (TCP option 254) while plain TCP worked: it is held on
    /// TCP for a while (adaptive fallback).
    BlackHoleHoldDown = 17,
    /// The socket carries options a replacement socket cannot be given (one holding a pointer
    /// or an fd, like `SO_ATTACH_FILTER`/`SO_ATTACH_BPF`/`SO_ATTACH_REUSEPORT_*`; or, in the
    /// preload library, more or longer options than it records): it stays as it is.
    OptionsNotCarried = 18,
}

impl TcpReason {
    /// Every reason, in number order.
    pub const ALL: [TcpReason; 18] = [
        TcpReason::Disabled,
        TcpReason::NotOptedIn,
        TcpReason::KernelLacksSmc,
        TcpReason::MeshSwitchAbsent,
        TcpReason::KeptOnTcp,
        TcpReason::Loopback,
        TcpReason::LocalAddress,
        TcpReason::DeniedAddress,
        TcpReason::AddressNotAllowed,
        TcpReason::DeniedPort,
        TcpReason::PortNotAllowed,
        TcpReason::ListenerNotSelected,
        TcpReason::ReusePortUnsupported,
        TcpReason::FastOpen,
        TcpReason::NotIpStream,
        TcpReason::ReplaceFailed,
        TcpReason::BlackHoleHoldDown,
        TcpReason::OptionsNotCarried,
    ];

    /// A short snake_case name, used in counters, logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            TcpReason::Disabled => "disabled",
            TcpReason::NotOptedIn => "not_opted_in",
            TcpReason::KernelLacksSmc => "kernel_lacks_smc",
            TcpReason::MeshSwitchAbsent => "mesh_switch_absent",
            TcpReason::KeptOnTcp => "kept_on_tcp",
            TcpReason::Loopback => "loopback",
            TcpReason::LocalAddress => "local_address",
            TcpReason::DeniedAddress => "denied_address",
            TcpReason::AddressNotAllowed => "address_not_allowed",
            TcpReason::DeniedPort => "denied_port",
            TcpReason::PortNotAllowed => "port_not_allowed",
            TcpReason::ListenerNotSelected => "listener_not_selected",
            TcpReason::ReusePortUnsupported => "reuse_port_unsupported",
            TcpReason::FastOpen => "fast_open",
            TcpReason::NotIpStream => "not_ip_stream",
            TcpReason::ReplaceFailed => "replace_failed",
            TcpReason::BlackHoleHoldDown => "black_hole_hold_down",
            TcpReason::OptionsNotCarried => "options_not_carried",
        }
    }

    /// A sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            TcpReason::Disabled => "SMC is disabled (mode: MODE_OFF)",
            TcpReason::NotOptedIn => "the workload has not opted in (its opt-in annotation is not \"true\")",
            TcpReason::KernelLacksSmc => "the kernel cannot open SMC sockets of the configured mode",
            TcpReason::MeshSwitchAbsent => "the cluster does not carry the mesh switch (no EnvoyFilter patch)",
            TcpReason::KeptOnTcp => "the cluster is kept on TCP (per-cluster fallback)",
            TcpReason::Loopback => "loopback address",
            TcpReason::LocalAddress => "the destination is this host's own address",
            TcpReason::DeniedAddress => "the destination is in upstream.deny",
            TcpReason::AddressNotAllowed => "the destination is not in upstream.allow",
            TcpReason::DeniedPort => "the destination port is in upstream.deny_ports",
            TcpReason::PortNotAllowed => "the destination port is not in upstream.allow_ports",
            TcpReason::ListenerNotSelected => "the listener's port is not in listeners.ports",
            TcpReason::ReusePortUnsupported => {
                "AF_SMC listeners cannot use SO_REUSEPORT (no longer given: such listeners are shared)"
            }
            TcpReason::FastOpen => "the socket uses TCP fast open, which SMC cannot carry",
            TcpReason::NotIpStream => "not an IP stream socket",
            TcpReason::ReplaceFailed => "replacing the socket with an SMC socket failed",
            TcpReason::BlackHoleHoldDown => {
                "the destination drops SYNs carrying SMC's TCP option while plain TCP works; held on TCP for a while"
            }
            TcpReason::OptionsNotCarried => {
                "the socket carries options a replacement socket cannot be given (a filter or BPF program, or too many or too long options); it stays as it is"
            }
        }
    }

    pub fn from_u32(n: u32) -> Option<TcpReason> {
        TcpReason::ALL.iter().copied().find(|r| *r as u32 == n)
    }
}

#[cfg(test)]
mod tests {
    use super::TcpReason;

    #[test]
    fn numbers_are_dense_unique_and_round_trip() {
        for (i, r) in TcpReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32 + 1);
            assert_eq!(TcpReason::from_u32(*r as u32), Some(*r));
        }
        assert_eq!(TcpReason::from_u32(0), None);
        assert_eq!(TcpReason::from_u32(19), None);
        let mut names: Vec<_> = TcpReason::ALL.iter().map(|r| r.name()).collect();
        names.dedup();
        assert_eq!(names.len(), TcpReason::ALL.len());
    }
}
