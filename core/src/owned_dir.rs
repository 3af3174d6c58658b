//! Files a privileged proxy writes and the CLI reads, without letting anyone else steer them.
//!
//! Proxies run as root or as a fixed uid; a directory another user can write is a place where
//! that user can plant a symlink or a FIFO under the name the proxy is about to use. So:
//!
//! - The writer works in a directory it has checked ([`OwnedDir`]): for private state, one it
//!   created 0700 or one that already exists, is owned by this uid and is writable by nobody
//!   else ([`OwnedDir::private`]); for an operator-chosen output file (the stats file), one
//!   owned by this uid or root that others cannot write, or that has the sticky bit (like
//!   `/tmp`), where others cannot replace this uid's files ([`OwnedDir::for_output`]).
//! - Every write goes to a fresh temporary file created with `openat(dirfd, random name,
//!   O_CREAT|O_EXCL|O_NOFOLLOW)` and is then renamed over the final name with `renameat`: no
//!   name is predictable, no symlink is followed, and a reader sees the old or the new file.
//! - A reader ([`TrustedDir`]) accepts a directory nobody but its owner can write, and in it only
//!   regular files of that owner, opened with `O_NOFOLLOW|O_NONBLOCK` and read up to a cap.
//!
//! The system calls themselves are in the kernel layer ([`crate::os::fs`]); every check is here.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::os::fs::{self as sys, fstat};
use crate::os::process::geteuid as euid;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", path.display()),
    )
}

/// Opens `path` as a directory, not following a symlink in its last component.
fn open_dir(path: &Path, nofollow: bool) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let flags = libc::O_RDONLY
        | libc::O_DIRECTORY
        | libc::O_CLOEXEC
        | if nofollow { libc::O_NOFOLLOW } else { 0 };
    sys::open(&c, flags)
}

/// 16 random hex digits for temporary names (getrandom; a clock-and-counter mix if it fails).
fn random_suffix() -> String {
    let mut v = [0u8; 8];
    let x = if matches!(sys::getrandom(&mut v), Ok(8)) {
        u64::from_ne_bytes(v)
    } else {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ SEQ
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    format!("{x:016x}")
}

/// A file name that stays inside the directory.
fn plain_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    cstr(OsStr::new(name))
}

/// A directory this process has checked and writes its files in.
#[derive(Debug)]
pub struct OwnedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OwnedDir {
    /// The directory for this process's private state: created 0700 if missing (its parent must
    /// exist), else accepted only if it is a real directory (not a symlink) owned by this uid
    /// and not writable by group or others.
    pub fn private(path: &Path) -> io::Result<OwnedDir> {
        Self::private_with(path, true)
    }

    /// Like [`OwnedDir::private`], without creating the directory.
    pub fn private_existing(path: &Path) -> io::Result<OwnedDir> {
        Self::private_with(path, false)
    }

    fn private_with(path: &Path, create: bool) -> io::Result<OwnedDir> {
        let c = cstr(path.as_os_str())?;
        let created = if create {
            sys::mkdir(&c, 0o700)
        } else {
            Ok(())
        };
        if let Err(e) = created {
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", path.display()),
                ));
            }
        }
        let fd = open_dir(path, true).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                refused(path, "is a symbolic link or not a directory".into())
            }
            _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })?;
        let st = fstat(fd.as_fd())?;
        if st.st_uid != euid() {
            return Err(refused(
                path,
                format!(
                    "owned by uid {}, not by this process's uid {}: not used (someone else may have created it first)",
                    st.st_uid,
                    euid()
                ),
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(refused(
                path,
                format!(
                    "mode {:o} lets others write in it: not used (chmod go-w, or remove it)",
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(OwnedDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory of an output file the operator named: owned by this uid or root, and
    /// either writable by nobody else or sticky (others cannot replace this uid's files there).
    pub fn for_output(path: &Path) -> io::Result<OwnedDir> {
        let fd = open_dir(path, false)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let st = fstat(fd.as_fd())?;
        if st.st_uid != euid() && st.st_uid != 0 {
            return Err(refused(
                path,
                format!(
                    "owned by uid {}, neither this process's uid {} nor root: not used",
                    st.st_uid,
                    euid()
                ),
            ));
        }
        if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
            return Err(refused(
                path,
                format!(
                    "mode {:o} lets others replace files in it (not sticky): not used",
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(OwnedDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` as `name` (mode `mode`): a new temporary file created exclusively under a
    /// random name, then renamed over `name`. Never follows a symlink; a reader sees the old
    /// file or the new one.
    pub fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let final_name = plain_name(name)?;
        let tmp = format!(".{name}.{}.{}.tmp", std::process::id(), random_suffix());
        let tmp_c = plain_name(&tmp)?;
        let fd = sys::openat(
            self.fd.as_fd(),
            &tmp_c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::mode_t,
        )?;
        let mut file = std::fs::File::from(fd);
        let written = (|| {
            // The umask may have taken bits off: the mode is what the caller asked for.
            sys::fchmod(file.as_fd(), mode as libc::mode_t)?;
            file.write_all(bytes)?;
            sys::renameat(self.fd.as_fd(), &tmp_c, &final_name)
        })();
        if written.is_err() {
            let _ = sys::unlinkat(self.fd.as_fd(), &tmp_c);
        }
        written
    }

    /// Removes `name` (a file) if it is there.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = plain_name(name)?;
        match sys::unlinkat(self.fd.as_fd(), &c) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The names in the directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        list(self.fd.as_fd())
    }
}

/// The entries of an open directory (without `.` and `..`; names that are not UTF-8 skipped).
fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    Ok(sys::dir_entries(dir)?
        .into_iter()
        .filter_map(|name| name.into_string().ok())
        .filter(|s| s != "." && s != "..")
        .collect())
}

/// A directory whose files a reader may believe: nobody but its owner can write in it, and the
/// owner is the reader, root, or (for a root reader) anyone.
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
    owner: u32,
}

impl TrustedDir {
    pub fn open(path: &Path) -> io::Result<TrustedDir> {
        let fd = open_dir(path, true)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let st = fstat(fd.as_fd())?;
        if st.st_mode & 0o022 != 0 {
            return Err(refused(
                path,
                format!(
                    "mode {:o} lets others write in it: its files are not trusted",
                    st.st_mode & 0o7777
                ),
            ));
        }
        let me = euid();
        if me != 0 && st.st_uid != me && st.st_uid != 0 {
            return Err(refused(
                path,
                format!("owned by uid {}: its files are not trusted", st.st_uid),
            ));
        }
        Ok(TrustedDir {
            fd,
            path: path.to_path_buf(),
            owner: st.st_uid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The uid whose files this directory holds.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    pub fn names(&self) -> io::Result<Vec<String>> {
        list(self.fd.as_fd())
    }

    /// Reads `name`: only a regular file (not a symlink, FIFO or device) owned by the
    /// directory's owner, of at most `cap` bytes.
    pub fn read(&self, name: &str, cap: usize) -> io::Result<Vec<u8>> {
        let c = plain_name(name)?;
        let fd = sys::openat(
            self.fd.as_fd(),
            &c,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            0,
        )?;
        let file = std::fs::File::from(fd);
        let st = fstat(file.as_fd())?;
        let bad =
            |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}"));
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(bad("not a regular file".into()));
        }
        if st.st_uid != self.owner {
            return Err(bad(format!(
                "owned by uid {}, not by the directory's owner {}",
                st.st_uid, self.owner
            )));
        }
        if st.st_size as u64 > cap as u64 {
            return Err(bad(format!("{} bytes, more than {cap}", st.st_size)));
        }
        let mut bytes = Vec::new();
        file.take(cap as u64 + 1).read_to_end(&mut bytes)?;
        if bytes.len() > cap {
            return Err(bad(format!("more than {cap} bytes")));
        }
        Ok(bytes)
    }

    /// Removes `name` (best effort: the reader may not be allowed to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = plain_name(name)?;
        sys::unlinkat(self.fd.as_fd(), &c)
    }
}

/// Makes `s` safe to print on a terminal: control characters (ESC, newlines, DEL, C1) become
/// `\xNN` escapes.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("envoy"), "envoy");
        assert_eq!(printable("a\x1b[31mb\n"), "a\\x1b[31mb\\x0a");
        assert_eq!(printable("\u{9b}x"), "\\xc2\\x9bx");
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(plain_name(bad).is_err(), "{bad:?}");
        }
    }
}
