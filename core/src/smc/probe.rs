//! What the running kernel can open, probed once per process.

use std::sync::OnceLock;

use super::sys::{syscall, AF_SMC, IPPROTO_SMC, SMCPROTO_SMC};

/// The SMC socket flavours the running kernel can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSupport {
    /// `socket(AF_SMC, SOCK_STREAM, 0)` works.
    pub af_smc: bool,
    /// `socket(AF_INET, SOCK_STREAM, IPPROTO_SMC)` works.
    pub ipproto_smc: bool,
}

impl KernelSupport {
    /// A kernel with both flavours (Linux >= 6.11 with SMC), for tests and what-if policies.
    pub const BOTH: KernelSupport = KernelSupport {
        af_smc: true,
        ipproto_smc: true,
    };

    /// Probes the kernel once per process and remembers the answer.
    pub fn probe() -> KernelSupport {
        static PROBED: OnceLock<KernelSupport> = OnceLock::new();
        *PROBED.get_or_init(Self::probe_now)
    }

    /// Probes the kernel now, without the cache (opens and closes two sockets).
    pub fn probe_now() -> KernelSupport {
        KernelSupport {
            af_smc: can_open(AF_SMC, SMCPROTO_SMC),
            ipproto_smc: can_open(libc::AF_INET, IPPROTO_SMC),
        }
    }

    /// No SMC socket of any flavour can be opened.
    pub fn none(&self) -> bool {
        !self.af_smc && !self.ipproto_smc
    }
}

fn can_open(domain: libc::c_int, protocol: libc::c_int) -> bool {
    match syscall!(socket(
        domain,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        protocol
    )) {
        Ok(fd) => {
            // SAFETY: fd was just opened here and is closed exactly once.
            unsafe { libc::close(fd) };
            true
        }
        Err(_) => false,
    }
}
