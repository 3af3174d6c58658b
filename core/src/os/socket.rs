//! Plain socket calls outside SMC: reading an option of any socket, and the TCP sockets the
//! black-hole probe opens for itself.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// `getsockopt(2)` into `buf`; the number of bytes the kernel wrote. `fd` may be an fd the
/// caller does not own (the application's socket, possibly closed since): a stale fd is an
/// error (`EBADF`, `ENOTSOCK`) or another socket, never memory unsafety.
pub fn getsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // `buf` is writable for `len` bytes; `len` is a valid in/out length.
    crate::syscall!(getsockopt(
        fd,
        level,
        name,
        buf.as_mut_ptr().cast(),
        &mut len
    ))?;
    Ok(len as usize)
}

/// `syscall(2)`'s result: -1 and errno on failure.
fn raw(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A non-blocking TCP socket made and used with raw system calls (`syscall(2)`), never the libc
/// wrappers: under the preload library those wrappers are interposed, and this socket must be
/// one envoy-smc itself never touches. Closed (by `SYS_close`) when dropped.
#[derive(Debug)]
pub struct RawTcpSocket {
    fd: libc::c_int,
}

impl RawTcpSocket {
    /// `socket(AF_INET or AF_INET6, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, IPPROTO_TCP)`, the
    /// family of `dest`.
    pub fn for_destination(dest: SocketAddr) -> io::Result<RawTcpSocket> {
        let domain = if dest.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket(2) with integer arguments only.
        let fd = raw(unsafe {
            libc::syscall(
                libc::SYS_socket,
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
            )
        })?;
        Ok(RawTcpSocket {
            fd: fd as libc::c_int,
        })
    }

    /// `connect(2)`; a non-blocking connect under way is `Err` with `EINPROGRESS`.
    pub fn connect(&self, dest: SocketAddr) -> io::Result<()> {
        let addr = socket2::SockAddr::from(dest);
        // SAFETY: `addr` holds a valid address of `addr.len()` bytes.
        raw(unsafe {
            libc::syscall(
                libc::SYS_connect,
                self.fd,
                addr.as_ptr().cast::<libc::sockaddr>(),
                addr.len(),
            )
        })
        .map(drop)
    }

    /// `getsockopt(SOL_SOCKET, SO_ERROR)`: the connect's result, 0 for success.
    pub fn take_error(&self) -> io::Result<libc::c_int> {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` is a writable int and `len` says so.
        raw(unsafe {
            libc::syscall(
                libc::SYS_getsockopt,
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int,
                &mut len as *mut libc::socklen_t,
            )
        })?;
        Ok(err)
    }

    /// `ppoll(2)` for `POLLOUT` on all of `sockets`, up to `timeout`: the indexes of those that
    /// reported anything (writable, error, hang-up). Empty on timeout, error or interruption.
    pub fn poll_writable(sockets: &[&RawTcpSocket], timeout: Duration) -> Vec<usize> {
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd,
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` has fds.len() valid entries; a valid timespec; no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0,
            )
        };
        if n <= 0 {
            return Vec::new();
        }
        fds.iter()
            .enumerate()
            .filter(|(_, f)| f.revents != 0)
            .map(|(i, _)| i)
            .collect()
    }
}

impl Drop for RawTcpSocket {
    fn drop(&mut self) {
        // SAFETY: `fd` was opened by `for_destination` and is closed once, here.
        unsafe { libc::syscall(libc::SYS_close, self.fd) };
    }
}
