//! Helpers shared by the integration tests. Each test binary uses its own part of them.
#![allow(dead_code)]

pub mod vm;
mod wait;

#[allow(unused_imports)] // not every test binary waits
pub use wait::{wait_for, wait_until};

use std::net::SocketAddr;

/// The C `sockaddr_in` of an IPv4 socket address.
pub fn sockaddr_in(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 addresses only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}
