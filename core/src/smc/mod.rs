//! The kernel side of SMC: opening SMC sockets, probing what the kernel supports, the per-socket
//! fallback switch, handshake limitation, and replacing a socket under the same fd number.
//!
//! Every function borrows the caller's fds and never closes one it did not open.

mod host;
mod probe;
mod record;
mod replace;
mod shared;
pub mod sockaddr;
mod socket;
pub mod sys;

pub use host::local_addresses;
pub use probe::KernelSupport;
pub use record::{NotCarried, RecordedOpt, SocketRecord, MAX_OPTS, MAX_OPT_LEN};
pub use replace::{reconnect_tcp, replace_socket, replace_socket_without, SockOpt};
pub use shared::{Shared, SharedListeners};
pub use socket::{
    apply_fallback_switch, is_ip_stream, open_socket, set_limit_handshake, socket_kind, SocketKind,
};
pub use sys::{
    option_holds_reference, AF_SMC, IPPROTO_SMC, SMCPROTO_SMC, SMCPROTO_SMC6, SMC_LIMIT_HS,
    SOL_SMC, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT,
};
