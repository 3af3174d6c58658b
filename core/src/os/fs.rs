//! File and directory calls relative to an open directory (`openat` and friends), for
//! [`crate::owned_dir`].

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use crate::syscall;

/// Takes ownership of an fd a call has just returned.
fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by open/openat/fcntl: a new fd nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `mkdir(2)`.
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // `path` is NUL-terminated.
    syscall!(mkdir(path.as_ptr(), mode)).map(drop)
}

/// `open(2)` without a mode (no `O_CREAT`).
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // `path` is NUL-terminated.
    syscall!(open(path.as_ptr(), flags)).map(owned)
}

/// `openat(2)`: `name` relative to the open directory `dir`; `mode` matters with `O_CREAT`.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // `dir` is open for the call; `name` is NUL-terminated.
    syscall!(openat(
        dir.as_raw_fd(),
        name.as_ptr(),
        flags,
        libc::c_uint::from(mode)
    ))
    .map(owned)
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain old data (integers only): all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // `st` is a valid out-pointer for the call.
    syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    Ok(st)
}

/// `fchmod(2)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    syscall!(fchmod(fd.as_raw_fd(), mode)).map(drop)
}

/// `renameat(2)` within one open directory.
pub fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // Both names are NUL-terminated; `dir` is open for the call.
    syscall!(renameat(
        dir.as_raw_fd(),
        from.as_ptr(),
        dir.as_raw_fd(),
        to.as_ptr()
    ))
    .map(drop)
}

/// `unlinkat(2)` of a file (not a directory).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // `name` is NUL-terminated; `dir` is open for the call.
    syscall!(unlinkat(dir.as_raw_fd(), name.as_ptr(), 0)).map(drop)
}

/// Every entry name of an open directory, `.` and `..` included, from its start
/// (`fdopendir(3)` on a duplicate of `dir`, `rewinddir`, `readdir` until the end).
pub fn dir_entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // fdopendir takes the fd it is given: hand it a duplicate, which `closedir` closes.
    let dup = dir.try_clone_to_owned()?.into_raw_fd();
    // SAFETY: `dup` is an open directory fd we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours: closed once, here.
        drop(unsafe { OwnedFd::from_raw_fd(dup) });
        return Err(e);
    }
    // SAFETY: rewinding a stream we own (the duplicate shares the original's offset).
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is a valid stream; the entry stays valid until the next readdir.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            break;
        }
        // SAFETY: `ent` is non-null and points at an entry whose `d_name` is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        names.push(OsString::from_vec(name.to_bytes().to_vec()));
    }
    // SAFETY: closing the stream we own (this closes the duplicate fd too).
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// `getrandom(2)` without blocking; the number of bytes filled.
pub fn getrandom(buf: &mut [u8]) -> io::Result<usize> {
    // `buf` is writable for `buf.len()` bytes.
    syscall!(getrandom(
        buf.as_mut_ptr().cast(),
        buf.len(),
        libc::GRND_NONBLOCK
    ))
    .map(|n| n as usize)
}
