//! Reading a caller's C socket address, through socket2's `SockAddr` (the one sockaddr type the
//! crate uses; build one from a `SocketAddr` with `SockAddr::from`).

use std::net::SocketAddr;

use socket2::SockAddr;

/// Reads a caller's `sockaddr` pointer. `None` for NULL, other families or short lengths.
///
/// # Safety
/// `addr` must be NULL or point at `len` readable bytes.
pub unsafe fn from_raw(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes at `addr`; the storage socket2 hands
    // the closure holds any address (len is at most its size, checked above).
    let read = unsafe {
        SockAddr::try_init(|storage, storage_len| {
            std::ptr::copy_nonoverlapping(addr.cast::<u8>(), storage.cast::<u8>(), len as usize);
            *storage_len = len;
            Ok(())
        })
    };
    let (_, sa) = read.ok()?;
    ip_of(&sa)
}

/// The IPv4 or IPv6 address in `sa`, if it is one and is long enough for its family.
pub fn ip_of(sa: &SockAddr) -> Option<SocketAddr> {
    let needed = if sa.is_ipv4() {
        std::mem::size_of::<libc::sockaddr_in>()
    } else if sa.is_ipv6() {
        std::mem::size_of::<libc::sockaddr_in6>()
    } else {
        return None;
    };
    (sa.len() as usize >= needed)
        .then(|| sa.as_socket())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_socket2_wrote_and_refuses_short_or_foreign_addresses() {
        for addr in ["10.1.2.3:80", "[fe80::1%2]:15006"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let sa = SockAddr::from(addr);
            // SAFETY: sa holds sa.len() readable bytes.
            let back = unsafe { from_raw(sa.as_ptr().cast(), sa.len()) };
            assert_eq!(back, Some(addr));
            // SAFETY: as above, fewer bytes.
            assert_eq!(unsafe { from_raw(sa.as_ptr().cast(), sa.len() - 1) }, None);
        }
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { from_raw(std::ptr::null(), 16) }, None);
        let unix = SockAddr::unix("/tmp/x").unwrap();
        // SAFETY: unix holds unix.len() readable bytes.
        assert_eq!(unsafe { from_raw(unix.as_ptr().cast(), unix.len()) }, None);
    }
}
