//! The kernel layer for what is not SMC: files, the process, and the plain TCP sockets the
//! library opens for itself. With [`crate::smc`] it is the only place in the core where `unsafe`
//! is allowed (`lib.rs` denies it everywhere else). Each function is one call into libc or the
//! kernel behind a safe signature: fds are borrowed or owned (`BorrowedFd`, `OwnedFd`), buffers
//! are slices, paths are C strings. Checks and decisions (owner, mode, file type, size caps,
//! what a probe's outcome means) live in the safe modules above: `owned_dir`, `process`,
//! `adaptive`.

pub mod fs;
pub mod process;
pub mod socket;
