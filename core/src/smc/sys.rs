//! Constants the `libc` crate does not have, and the one helper every libc call goes through.

/// Address family of SMC sockets (Linux >= 4.11).
pub const AF_SMC: libc::c_int = 43;
/// `socket(AF_SMC, SOCK_STREAM, SMCPROTO_SMC)`: IPv4 addresses.
pub const SMCPROTO_SMC: libc::c_int = 0;
/// `socket(AF_SMC, SOCK_STREAM, SMCPROTO_SMC6)`: IPv6 addresses.
pub const SMCPROTO_SMC6: libc::c_int = 1;
/// `socket(AF_INET|AF_INET6, SOCK_STREAM, IPPROTO_SMC)` (Linux >= 6.11).
pub const IPPROTO_SMC: libc::c_int = 256;
/// Socket option level of SMC's own options.
pub const SOL_SMC: libc::c_int = 286;
/// `setsockopt(SOL_SMC, SMC_LIMIT_HS)`: handshake limitation on a listener (Linux >= 5.18).
pub const SMC_LIMIT_HS: libc::c_int = 1;
pub const TCP_FASTOPEN: libc::c_int = 23;
pub const TCP_FASTOPEN_CONNECT: libc::c_int = 30;

/// Whether a socket option's value refers to something outside the option bytes (a pointer to
/// a filter program, an fd of a BPF program): setting the same bytes on another socket later
/// would read a stale pointer or name another fd, so such an option cannot be carried over to a
/// replacement socket.
pub fn option_holds_reference(level: libc::c_int, name: libc::c_int) -> bool {
    level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_ATTACH_FILTER
                | libc::SO_ATTACH_BPF
                | libc::SO_ATTACH_REUSEPORT_CBPF
                | libc::SO_ATTACH_REUSEPORT_EBPF
        )
}

/// Runs a libc call and maps its `-1` to the thread's `errno` as an `io::Error`. Exported for
/// the diagnostics of the `envoy-smc` command (the caller's crate needs `libc`).
#[macro_export]
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: each caller passes arguments that satisfy the named libc function's contract
        // (valid pointers with correct lengths); the macro only checks the return value.
        // The arguments belong inside the block: the caller's promise is exactly that they
        // satisfy the libc function's contract.
        #[allow(unused_unsafe, clippy::macro_metavars_in_unsafe)]
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub use crate::syscall;

/// Reads an `int` socket option.
pub fn getsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
) -> std::io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        level,
        name,
        (&mut val as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(val)
}

/// Sets an `int` socket option.
pub fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> std::io::Result<()> {
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&val as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}
