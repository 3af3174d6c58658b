//! Why a socket stays TCP. The numbers are part of the C ABI and are never reused.

/// Why envoy-smc left (or made) a socket plain TCP. In C: `envoy_smc_tcp_reason`.
///
/// cbindgen:rename-all=ScreamingSnakeCase
/// cbindgen:prefix-with-name
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumMessage,
    strum::FromRepr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
#[repr(u32)]
pub enum TcpReason {
    /// `mode: MODE_OFF`.
    #[strum(message = "SMC is disabled (mode: MODE_OFF)")]
    Disabled = 1,
    /// The workload's opt-in annotation is not "true".
    #[strum(message = "the workload has not opted in (its opt-in annotation is not \"true\")")]
    NotOptedIn = 2,
    /// The kernel cannot open an SMC socket of the configured flavour.
    #[strum(message = "the kernel cannot open SMC sockets of the configured mode")]
    KernelLacksSmc = 3,
    /// The cluster or listener does not carry the mesh switch (no EnvoyFilter patch).
    #[strum(message = "the cluster does not carry the mesh switch (no EnvoyFilter patch)")]
    MeshSwitchAbsent = 4,
    /// The cluster carries the per-cluster fallback option.
    #[strum(message = "the cluster is kept on TCP (per-cluster fallback)")]
    KeptOnTcp = 5,
    /// Loopback or unspecified address.
    #[strum(message = "loopback address")]
    Loopback = 6,
    /// The destination is one of this host's own addresses.
    #[strum(message = "the destination is this host's own address")]
    LocalAddress = 7,
    /// The destination is in `upstream.deny`.
    #[strum(message = "the destination is in upstream.deny")]
    DeniedAddress = 8,
    /// `upstream.allow` is set and the destination is not in it.
    #[strum(message = "the destination is not in upstream.allow")]
    AddressNotAllowed = 9,
    /// The destination port is in `upstream.deny_ports`.
    #[strum(message = "the destination port is in upstream.deny_ports")]
    DeniedPort = 10,
    /// `upstream.allow_ports` is set and the destination port is not in it.
    #[strum(message = "the destination port is not in upstream.allow_ports")]
    PortNotAllowed = 11,
    /// The listener's port is not in `listeners.ports`.
    #[strum(message = "the listener's port is not in listeners.ports")]
    ListenerNotSelected = 12,
    /// No longer given (listeners with `SO_REUSEPORT` share one `AF_SMC` listener); the number
    /// and the counter stay reserved.
    #[strum(
        message = "AF_SMC listeners cannot use SO_REUSEPORT (no longer given: such listeners are shared)"
    )]
    ReusePortUnsupported = 13,
    /// The socket uses TCP fast open, which SMC cannot carry.
    #[strum(message = "the socket uses TCP fast open, which SMC cannot carry")]
    FastOpen = 14,
    /// Not an IP stream socket (envoy-smc never touches those).
    #[strum(message = "not an IP stream socket")]
    NotIpStream = 15,
    /// Replacing the socket with an SMC socket failed; the TCP socket was kept.
    #[strum(message = "replacing the socket with an SMC socket failed")]
    ReplaceFailed = 16,
    /// The destination dropped SMC's SYNs (TCP option 254) while plain TCP worked: it is held on
    /// TCP for a while (adaptive fallback).
    #[strum(
        message = "the destination drops SYNs carrying SMC's TCP option while plain TCP works; held on TCP for a while"
    )]
    BlackHoleHoldDown = 17,
    /// The socket carries options a replacement socket cannot be given (one holding a pointer
    /// or an fd, like `SO_ATTACH_FILTER`/`SO_ATTACH_BPF`/`SO_ATTACH_REUSEPORT_*`; or, in the
    /// preload library, more or longer options than it records): it stays as it is.
    #[strum(
        message = "the socket carries options a replacement socket cannot be given (a filter or BPF program, or too many or too long options); it stays as it is"
    )]
    OptionsNotCarried = 18,
}

impl TcpReason {
    /// Every reason, in number order.
    pub const ALL: &'static [TcpReason] = <TcpReason as strum::VariantArray>::VARIANTS;

    /// A short snake_case name (the variant's), used in counters, logs and JSON.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// A sentence for people.
    pub fn describe(self) -> &'static str {
        strum::EnumMessage::get_message(&self).unwrap_or_else(|| self.name())
    }

    pub fn from_u32(n: u32) -> Option<TcpReason> {
        TcpReason::from_repr(n)
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
            assert!(r.describe() != r.name(), "{r:?} has no sentence");
        }
        assert_eq!(TcpReason::from_u32(0), None);
        assert_eq!(TcpReason::from_u32(TcpReason::ALL.len() as u32 + 1), None);
        assert_eq!(TcpReason::KernelLacksSmc.name(), "kernel_lacks_smc");
        let mut names: Vec<_> = TcpReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TcpReason::ALL.len());
    }
}
