//! Rescuing the connects that hit a black hole while they are still in flight.
//!
//! Only an entry point can do it: after the socket under the fd is replaced by a TCP socket
//! (see [`crate::smc::reconnect_tcp`]) the program's event loop must hear about the new socket,
//! and only the entry point knows where the old one was registered. An entry point that can do
//! this installs a [`Rescuer`] and watches its connects with
//! [`crate::runtime::Runtime::watch_rescuable_connect`].

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// A watched connect, as the watchdog hands it to a [`Rescuer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedConnect {
    pub fd: RawFd,
    /// The socket's cookie when it was watched: the fd is only the same socket while
    /// `SO_COOKIE` still says this.
    pub cookie: u64,
    pub dest: SocketAddr,
    /// The entry point's own tag for the connect, given when it was watched.
    pub token: u64,
}

/// What became of a connect handed to [`Rescuer::rescue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescueOutcome {
    /// Moved to TCP (counted `adaptive.rescued`).
    Moved,
    /// Could not be moved (counted `adaptive.rescue_failed`).
    Failed,
    /// Handed to the thread that owns the fd, which moves it later and counts the outcome
    /// itself (see [`crate::runtime::Runtime::rescue_connect`]).
    Handed,
}

/// The entry point's half of a rescue. Called on the watchdog thread; for every connect watched
/// as rescuable exactly one of the two methods is called, once.
pub trait Rescuer: Send + Sync {
    /// The connect is stuck behind a proven black hole: replace it with a TCP connection to the
    /// same destination under the same fd (the program's event loop must see the new socket).
    fn rescue(&self, connect: &WatchedConnect) -> RescueOutcome;

    /// The watchdog is done with the connect without a rescue (it got through, was closed,
    /// the destination is down, or it is no longer watched): forget what was kept for it.
    fn release(&self, connect: &WatchedConnect);
}
