//! What the kernel did with SMC sockets: smc_diag and the SMC generic netlink family.
//!
//! - [`smc_diag`]: every SMC socket of this network namespace with state, mode, fallback reason
//!   and peer diagnosis, link (RDMA device) info;
//! - [`genl`]: `SMC_GEN_NETLINK` — system info, devices and ports with PNET IDs, statistics,
//!   per-reason fallback counters, UEIDs (list/add/remove), SEID, handshake limitation;
//! - [`dibs`]: SMC-D devices in sysfs (the loopback device pods on one node share);
//! - [`procs`]: socket inode -> processes;
//! - [`netns`], [`nsdump`]: every network namespace of the node, entered one at a time;
//! - [`inet_diag`]: TCP sockets, to give `IPPROTO_SMC` sockets their addresses;
//! - [`check`]: one SMC connect, classified (SMC-R / SMC-D / fallback / black hole);
//! - [`decline`]: `SMC_CLC_DECL_*` codes and their names.
//!
//! All netlink is spoken over raw `AF_NETLINK` sockets; every parser takes `&[u8]` and returns a
//! `Result`, whatever the bytes (fuzzed under `fuzz/`).

pub mod check;
pub mod decline;
pub mod dibs;
pub mod genl;
pub mod inet_diag;
pub mod netlink;
pub mod netns;
pub mod nsdump;
pub mod procs;
pub mod smc_diag;

pub use check::{check, CheckOptions, CheckReport, Verdict};
pub use decline::DeclineCode;
pub use genl::SmcGenl;
pub use smc_diag::{Mode, SmcSocket, SmcState};

use std::fmt;
use std::io;

/// A message that does not have the shape the kernel's headers say it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The structure being read (`smc_diag_msg`, `SMC_GEN_DEV_SMCR`, …).
    pub what: &'static str,
    /// Byte offset within that structure.
    pub offset: usize,
    pub problem: String,
}

impl ParseError {
    pub fn new(what: &'static str, offset: usize, problem: impl Into<String>) -> ParseError {
        ParseError {
            what,
            offset,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed {} at byte {}: {}",
            self.what, self.offset, self.problem
        )
    }
}

impl std::error::Error for ParseError {}

/// Why a diagnostic query gave no answer.
#[derive(Debug)]
pub enum DiagError {
    /// The kernel has no such facility here (module not loaded, kernel too old, no SMC).
    Unavailable { what: &'static str, why: String },
    /// The kernel refused a request (`errno`).
    Kernel { what: &'static str, err: io::Error },
    /// A socket call failed.
    Io { what: &'static str, err: io::Error },
    /// A reply did not parse.
    Parse(ParseError),
    /// The caller's input is invalid (e.g. a UEID with forbidden characters).
    Invalid(String),
}

impl DiagError {
    pub fn kernel(what: &'static str, errno: i32) -> DiagError {
        DiagError::Kernel {
            what,
            err: io::Error::from_raw_os_error(errno),
        }
    }

    pub fn io(what: &'static str, err: io::Error) -> DiagError {
        DiagError::Io { what, err }
    }

    /// The errno behind a kernel or socket error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DiagError::Kernel { err, .. } | DiagError::Io { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }

    /// The facility is missing (as opposed to a failure while using it).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DiagError::Unavailable { .. })
    }

    /// The kernel said "not permitted" (CAP_NET_ADMIN needed).
    pub fn is_permission(&self) -> bool {
        matches!(self.errno(), Some(libc::EPERM | libc::EACCES))
    }
}

impl fmt::Display for DiagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiagError::Unavailable { what, why } => write!(f, "{what} is not available: {why}"),
            DiagError::Kernel { what, err } => {
                write!(f, "{what}: the kernel refused: {err}")?;
                if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    write!(f, " (needs root or CAP_NET_ADMIN)")?;
                }
                Ok(())
            }
            DiagError::Io { what, err } => write!(f, "{what}: {err}"),
            DiagError::Parse(p) => write!(f, "{p}"),
            DiagError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for DiagError {}

impl From<ParseError> for DiagError {
    fn from(p: ParseError) -> Self {
        DiagError::Parse(p)
    }
}
