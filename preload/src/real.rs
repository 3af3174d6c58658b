//! The functions the library interposes, as the next object in the lookup order (libc) has them.
//!
//! Each one is resolved lazily with `dlsym(RTLD_NEXT)` the first time it is needed and cached in
//! an atomic: resolving is idempotent, so two threads racing on the first call both store the
//! same pointer, and no lock is held (a lock here could deadlock if `dlsym` ever called back into
//! a hook). If `dlsym` finds nothing (a libc without the symbol, or a static build), the call
//! goes to the raw system call, which is what libc's wrapper does as well.

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{epoll_event, sockaddr, socklen_t};

/// Declares `pub fn $name() -> $ty`: the real function, resolved on first use.
macro_rules! real {
    ($name:ident, $sym:literal, $ty:ty, $fallback:expr) => {
        pub fn $name() -> $ty {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let mut p = SLOT.load(Ordering::Relaxed);
            if p == 0 {
                p = resolve(concat!($sym, "\0").as_bytes()).unwrap_or($fallback as $ty as usize);
                SLOT.store(p, Ordering::Relaxed);
            }
            // SAFETY: `p` is either libc's own symbol of this name, whose C signature is `$ty`, or
            // the fallback of exactly that type.
            unsafe { std::mem::transmute::<usize, $ty>(p) }
        }
    };
}

fn resolve(sym: &[u8]) -> Option<usize> {
    // SAFETY: `sym` is NUL-terminated; RTLD_NEXT asks for the next definition after this library.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, sym.as_ptr().cast()) };
    (!p.is_null()).then_some(p as usize)
}

pub type SocketFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
pub type SetsockoptFn =
    unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
pub type BindFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
pub type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
pub type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
pub type EpollCtlFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut epoll_event) -> c_int;
pub type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
pub type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
pub type DupFn = unsafe extern "C" fn(c_int) -> c_int;
pub type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
pub type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
/// `fcntl` is variadic in C; every caller passes at most one more integer- or pointer-sized
/// argument, which the System V x86-64 and AAPCS64 (Linux) ABIs place in the same register as a
/// fixed third argument.
pub type FcntlFn = unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int;
/// `ioctl` is variadic in C too; its one optional argument is passed like `fcntl`'s.
pub type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int;

real!(socket, "socket", SocketFn, sys_socket);
real!(setsockopt, "setsockopt", SetsockoptFn, sys_setsockopt);
real!(bind, "bind", BindFn, sys_bind);
real!(listen, "listen", ListenFn, sys_listen);
real!(connect, "connect", ConnectFn, sys_connect);
real!(epoll_ctl, "epoll_ctl", EpollCtlFn, sys_epoll_ctl);
real!(close, "close", CloseFn, sys_close);
real!(ioctl, "ioctl", IoctlFn, sys_ioctl);
real!(close_range, "close_range", CloseRangeFn, sys_close_range);
real!(dup, "dup", DupFn, sys_dup);
real!(dup2, "dup2", Dup2Fn, sys_dup2);
real!(dup3, "dup3", Dup3Fn, sys_dup3);
real!(fcntl, "fcntl", FcntlFn, sys_fcntl);
real!(fcntl64, "fcntl64", FcntlFn, sys_fcntl);

/// Maps a raw system call's return value to libc's convention (-1 and errno).
fn ret(rc: libc::c_long) -> c_int {
    // The kernel's results of these calls fit an int; errors already set errno via syscall().
    rc as c_int
}

unsafe extern "C" fn sys_socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_socket, domain, ty, protocol) })
}
unsafe extern "C" fn sys_setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, value, len) })
}
unsafe extern "C" fn sys_bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_bind, fd, addr, len) })
}
unsafe extern "C" fn sys_listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_listen, fd, backlog) })
}
unsafe extern "C" fn sys_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_connect, fd, addr, len) })
}
unsafe extern "C" fn sys_epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut epoll_event,
) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_epoll_ctl, epfd, op, fd, ev) })
}
unsafe extern "C" fn sys_close(fd: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_close, fd) })
}
unsafe extern "C" fn sys_close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) })
}
unsafe extern "C" fn sys_dup(fd: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_dup, fd) })
}
unsafe extern "C" fn sys_dup2(old: c_int, new: c_int) -> c_int {
    if old == new {
        // dup2(fd, fd) checks fd and returns it.
        // SAFETY: F_GETFD on an int fd takes no pointer.
        return if unsafe { libc::syscall(libc::SYS_fcntl, old, libc::F_GETFD) } == -1 {
            -1
        } else {
            new
        };
    }
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_dup3, old, new, 0) })
}
unsafe extern "C" fn sys_dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_dup3, old, new, flags) })
}
unsafe extern "C" fn sys_ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) })
}
unsafe extern "C" fn sys_fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: the system call with this function's own arguments, under its C contract.
    ret(unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) })
}
