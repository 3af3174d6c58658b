//! Reading memory the program hands to a hooked call, without crashing on a bad pointer.
//!
//! `connect(fd, addr, len)` with an invalid `addr` is the program's mistake, and the kernel
//! answers it with `EFAULT`; if the library dereferenced `addr` first, the program would die of
//! SIGSEGV instead. So the address is copied with `process_vm_readv` on this very process, which
//! reports unmapped memory as `EFAULT` instead of faulting. Where that call is not available
//! (a seccomp filter refusing it), the copy falls back to a plain read, as before.

use std::net::SocketAddr;

/// The program's pointer does not point at readable memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault;

/// Copies `dst.len()` bytes from the program's `src`.
fn copy_from_user(src: *const u8, dst: &mut [u8]) -> Result<(), Fault> {
    if dst.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: src as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // The process that owns this memory, kept by envoy_smc_core::process (no getpid per call): in a
    // vfork child that is the parent, whose memory the child runs in.
    let pid = match envoy_smc_core::process::memory_owner_pid() {
        0 => {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::getpid() }
        }
        pid => pid,
    };
    // SAFETY: `local` describes our own writable buffer; the kernel checks `remote` and returns
    // EFAULT rather than faulting.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n == dst.len() as isize {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EFAULT) => Err(Fault),
        _ if n >= 0 => Err(Fault), // a short copy: the end of the buffer is not mapped
        _ => {
            // Not permitted here: read it directly, trusting the pointer as connect(2) callers
            // are required to pass a valid one.
            // SAFETY: the caller of the hooked function promises `dst.len()` readable bytes.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
            Ok(())
        }
    }
}

/// The IPv4/IPv6 address the program passed to `connect()`: `Ok(None)` for NULL, other
/// families or short lengths (the real call answers those), `Err(Fault)` for a pointer the
/// kernel will refuse with `EFAULT`.
pub fn read_sockaddr(
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Result<Option<SocketAddr>, Fault> {
    if addr.is_null() || len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
        return Ok(None);
    }
    // SAFETY: socket2 hands over a zeroed storage that holds any address (len is at most its
    // size, checked above), and `storage_len` to say how much of it was filled.
    let read = unsafe {
        socket2::SockAddr::try_init(|storage, storage_len| {
            let dst = std::slice::from_raw_parts_mut(storage.cast::<u8>(), len as usize);
            *storage_len = len;
            copy_from_user(addr.cast(), dst).map_err(|Fault| std::io::ErrorKind::Other.into())
        })
    };
    match read {
        Ok(((), sa)) => Ok(envoy_smc_core::smc::sockaddr::ip_of(&sa)),
        Err(_) => Err(Fault),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pointer_is_a_fault_not_a_crash() {
        assert_eq!(read_sockaddr(8 as *const libc::sockaddr, 16), Err(Fault));
        assert_eq!(read_sockaddr(std::ptr::null(), 16), Ok(None));
        let sa = socket2::SockAddr::from("10.1.2.3:80".parse::<SocketAddr>().unwrap());
        assert_eq!(
            read_sockaddr(sa.as_ptr().cast(), sa.len()),
            Ok(Some("10.1.2.3:80".parse().unwrap()))
        );
    }
}
