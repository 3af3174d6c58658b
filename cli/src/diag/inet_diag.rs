//! TCP sockets from `inet_diag` (`NETLINK_SOCK_DIAG`, `AF_INET`/`AF_INET6`, `IPPROTO_TCP`).
//!
//! smc_diag reports `IPPROTO_SMC` sockets with zero addresses (FACTS.md) but the right ports; the
//! SMC socket's internal TCP socket (clcsock) carries the addresses. [`fill_addresses`] finds it
//! by its (local port, peer port) pair and copies them, only when exactly one TCP socket matches.
//! That covers sockets accepted by an `IPPROTO_SMC` listener too, which smc_diag reports as
//! `AF_SMC` with zero addresses (see [`SmcSocket::accepted_by_ipproto_listener`]).

use std::net::SocketAddr;

use super::netlink::{u32_ne, NlSocket};
use super::smc_diag::{parse_sockid, SmcSocket, SOCK_DIAG_BY_FAMILY};
use super::{DiagError, ParseError};

/// `sizeof(struct inet_diag_msg)`.
pub const INET_DIAG_MSG_LEN: usize = 72;

/// One TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEndpoint {
    pub state: u8,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub inode: u32,
    /// `idiag_retrans`: for a socket in SYN_SENT, how many times its SYN was retried.
    pub retransmits: u8,
}

/// Parses one `inet_diag_msg` (attributes after it are ignored).
pub fn parse_inet_diag_msg(payload: &[u8]) -> Result<TcpEndpoint, ParseError> {
    let b = payload.get(..INET_DIAG_MSG_LEN).ok_or_else(|| {
        ParseError::new(
            "inet_diag_msg",
            0,
            format!("{} bytes, needs {INET_DIAG_MSG_LEN}", payload.len()),
        )
    })?;
    let family = b[0];
    if family as i32 != libc::AF_INET && family as i32 != libc::AF_INET6 {
        return Err(ParseError::new(
            "inet_diag_msg",
            0,
            format!("family {family} is not AF_INET or AF_INET6"),
        ));
    }
    let (local, peer, _, _) = parse_sockid(family, &b[4..52])?;
    Ok(TcpEndpoint {
        state: b[1],
        local,
        peer,
        inode: u32_ne(&b[68..72]),
        retransmits: b[3],
    })
}

/// `inet_diag_req_v2` for every TCP socket of `family`.
pub fn dump_request(family: u8) -> [u8; 56] {
    let mut r = [0u8; 56];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    r
}

/// Every TCP socket (IPv4 and IPv6) in this network namespace.
pub fn tcp_dump() -> Result<Vec<TcpEndpoint>, DiagError> {
    let mut sock = NlSocket::open(libc::NETLINK_SOCK_DIAG)
        .map_err(|e| DiagError::io("NETLINK_SOCK_DIAG socket", e))?;
    let mut out = Vec::new();
    for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let msgs = sock.request(
            "inet_diag TCP dump",
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_DUMP as u16,
            &dump_request(fam),
        )?;
        for m in msgs.iter().filter(|m| m.ty == SOCK_DIAG_BY_FAMILY) {
            out.push(parse_inet_diag_msg(&m.payload)?);
        }
    }
    Ok(out)
}

/// Gives `IPPROTO_SMC` sockets whose addresses smc_diag left zero the addresses of their
/// internal TCP socket, matched by (local port, peer port) where that match is unique.
pub fn fill_addresses_from(socks: &mut [SmcSocket], tcp: &[TcpEndpoint]) -> usize {
    let mut filled = 0;
    for s in socks.iter_mut().filter(|s| s.addresses_unknown()) {
        // Accepted sockets say AF_SMC whatever the listener's family: any TCP family matches.
        let any_family = s.accepted_by_ipproto_listener();
        let mut found = tcp.iter().filter(|t| {
            t.local.port() == s.local.port()
                && t.peer.port() == s.peer.port()
                && (any_family || t.local.is_ipv6() == s.local.is_ipv6())
        });
        if let (Some(t), None) = (found.next(), found.next()) {
            s.local = t.local;
            s.peer = t.peer;
            if any_family {
                // Now known: the inet family of this IPPROTO_SMC socket (keeps `flavour()` right).
                s.family = if t.local.is_ipv6() {
                    libc::AF_INET6 as u8
                } else {
                    libc::AF_INET as u8
                };
            }
            filled += 1;
        }
    }
    filled
}

/// [`fill_addresses_from`] with a fresh TCP dump; a failed dump leaves the sockets as they are.
pub fn fill_addresses(socks: &mut [SmcSocket]) -> usize {
    if !socks.iter().any(|s| s.addresses_unknown()) {
        return 0;
    }
    match tcp_dump() {
        Ok(tcp) => fill_addresses_from(socks, &tcp),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_tcp_dump_sees_a_listener_of_ours() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = tcp_dump().expect("inet_diag works on every Linux");
        let me = all
            .iter()
            .find(|t| t.local.port() == port && t.local.ip().is_loopback())
            .expect("our listener is listed");
        assert_eq!(me.state, 10, "TCP_LISTEN");
        assert_ne!(me.inode, 0);
    }
}
