//! `smc_diag`: every SMC socket of this network namespace, from `NETLINK_SOCK_DIAG` with family
//! `AF_SMC` (the `smc_diag` module), layouts from `include/uapi/linux/smc_diag.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use super::decline::DeclineCode;
use super::netlink::{self, attrs, c_string, u16_ne, u32_ne, u64_ne, NlSocket};
use super::{DiagError, ParseError};
use envoy_smc_core::smc::AF_SMC;

/// `SOCK_DIAG_BY_FAMILY`.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `sizeof(struct smc_diag_msg)`.
pub const SMC_DIAG_MSG_LEN: usize = 64;
/// `sizeof(struct smc_diag_req)`.
pub const SMC_DIAG_REQ_LEN: usize = 52;

pub const SMC_DIAG_CONNINFO: u16 = 1;
pub const SMC_DIAG_LGRINFO: u16 = 2;
pub const SMC_DIAG_SHUTDOWN: u16 = 3;
pub const SMC_DIAG_DMBINFO: u16 = 4;
pub const SMC_DIAG_FALLBACK: u16 = 5;

/// `sizeof(struct smc_diag_conninfo)`.
pub const CONNINFO_LEN: usize = 76;
/// `sizeof(struct smc_diag_lgrinfo)`: one linkinfo (1 + 64 + 1 + 40 + 40) + role.
pub const LGRINFO_LEN: usize = 147;
/// `sizeof(struct smcd_diag_dmbinfo)` before the GID extensions (Linux < 6.9).
pub const DMBINFO_MIN_LEN: usize = 40;
/// `sizeof(struct smcd_diag_dmbinfo)` with `peer_gid_ext` and `my_gid_ext`.
pub const DMBINFO_EXT_LEN: usize = 56;
const IB_DEVICE_NAME_MAX: usize = 64;

/// The socket's SMC mode (`SMC_DIAG_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    SmcR,
    Fallback,
    SmcD,
    Unknown(u8),
}

impl Mode {
    pub fn from_raw(v: u8) -> Mode {
        match v {
            0 => Mode::SmcR,
            1 => Mode::Fallback,
            2 => Mode::SmcD,
            v => Mode::Unknown(v),
        }
    }

    /// `SMCR`, `SMCD`, `TCP` (fallback), `unknown(n)`.
    pub fn name(self) -> String {
        match self {
            Mode::SmcR => "SMCR".into(),
            Mode::SmcD => "SMCD".into(),
            Mode::Fallback => "TCP".into(),
            Mode::Unknown(v) => format!("unknown({v})"),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The SMC socket state (`enum smc_state` in net/smc/smc.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmcState(pub u8);

impl SmcState {
    pub const ACTIVE: SmcState = SmcState(1);
    pub const INIT: SmcState = SmcState(2);
    pub const CLOSED: SmcState = SmcState(7);
    pub const LISTEN: SmcState = SmcState(10);

    pub fn name(self) -> String {
        match self.0 {
            1 => "ACTIVE".into(),
            2 => "INIT".into(),
            7 => "CLOSED".into(),
            10 => "LISTEN".into(),
            20 => "PEERCLOSEWAIT1".into(),
            21 => "PEERCLOSEWAIT2".into(),
            22 => "APPCLOSEWAIT1".into(),
            23 => "APPCLOSEWAIT2".into(),
            24 => "APPFINCLOSEWAIT".into(),
            25 => "PEERFINCLOSEWAIT".into(),
            26 => "PEERABORTWAIT".into(),
            27 => "PROCESSABORT".into(),
            v => format!("unknown({v})"),
        }
    }
}

impl Serialize for SmcState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The FALLBACK attribute: why this side fell back, and what the peer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fallback {
    pub reason: DeclineCode,
    pub peer_diagnosis: DeclineCode,
}

/// One cursor of `struct smc_diag_cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Cursor {
    pub wrap: u16,
    pub count: u32,
}

/// The CONNINFO attribute (SMC connection internals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ConnInfo {
    pub token: u32,
    pub sndbuf_size: u32,
    pub rmbe_size: u32,
    pub peer_rmbe_size: u32,
    pub rx_prod: Cursor,
    pub rx_cons: Cursor,
    pub tx_prod: Cursor,
    pub tx_cons: Cursor,
    pub tx_sent: Cursor,
    pub tx_fin: Cursor,
}

/// The LGRINFO attribute: the SMC-R link this connection uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub link_id: u8,
    /// The RDMA device (e.g. `rxea`, `erdma_0`, `mlx5_0`).
    pub ib_device: String,
    pub ib_port: u8,
    pub gid: String,
    pub peer_gid: String,
    /// Link group role: `client` / `server`.
    pub role: &'static str,
}

/// The DMBINFO attribute (SMC-D): the link group, both ends' device GIDs and the tokens of
/// this side's DMB (the shared buffer the peer writes into) and of the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DmbInfo {
    pub link_id: u32,
    pub peer_gid: u64,
    pub my_gid: u64,
    pub token: u64,
    pub peer_token: u64,
    /// The second half of 128-bit GIDs (Linux >= 6.9: emulated ISM devices such as the
    /// loopback); `None` from older kernels.
    pub peer_gid_ext: Option<u64>,
    pub my_gid_ext: Option<u64>,
}

impl DmbInfo {
    /// Both ends use the same SMC-D device: a loopback connection inside one kernel.
    pub fn same_device(&self) -> bool {
        self.peer_gid == self.my_gid && self.peer_gid_ext == self.my_gid_ext
    }
}

/// One SMC socket as smc_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmcSocket {
    /// `AF_SMC` (43) for `socket(AF_SMC, …)`, `AF_INET`/`AF_INET6` for `IPPROTO_SMC` sockets.
    pub family: u8,
    pub state: SmcState,
    pub mode: Mode,
    /// Local address; `IPPROTO_SMC` sockets are reported with zero addresses (FACTS.md).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub ifindex: u32,
    pub cookie: u64,
    pub uid: u32,
    pub inode: u64,
    pub shutdown: u8,
    /// Present on every current kernel; `reason` is 0 unless the socket fell back.
    pub fallback: Option<Fallback>,
    pub conn: Option<ConnInfo>,
    pub link: Option<LinkInfo>,
    pub dmb: Option<DmbInfo>,
}

impl SmcSocket {
    /// The flavour as envoy-smc names it: `AF_SMC` or `IPPROTO_SMC`.
    pub fn flavour(&self) -> &'static str {
        if self.family as i32 == AF_SMC && !self.accepted_by_ipproto_listener() {
            "AF_SMC"
        } else {
            "IPPROTO_SMC"
        }
    }

    /// A socket accepted by an `IPPROTO_SMC` listener. The kernel allocates accepted sockets as
    /// `PF_SMC` with the listener's protocol (af_smc.c `smc_clcsock_accept`), and smc_diag copies
    /// addresses only for protocols `SMCPROTO_SMC`/`SMCPROTO_SMC6` (smc_diag.c
    /// `smc_diag_msg_common_fill`): so such a socket says family `AF_SMC` with zero addresses
    /// while its ports are set. A real `AF_SMC` socket with a peer port always has addresses.
    pub fn accepted_by_ipproto_listener(&self) -> bool {
        self.family as i32 == AF_SMC
            && self.peer.port() != 0
            && self.local.ip().is_unspecified()
            && self.peer.ip().is_unspecified()
    }

    /// Whether the addresses are the kernel's zeros of an `IPPROTO_SMC` socket, not real ones.
    pub fn addresses_unknown(&self) -> bool {
        (self.family as i32 != AF_SMC || self.accepted_by_ipproto_listener())
            && self.local.ip().is_unspecified()
            && self.peer.ip().is_unspecified()
    }

    /// The fallback reason, when the socket is on TCP.
    pub fn fallback_reason(&self) -> Option<DeclineCode> {
        if self.mode == Mode::Fallback {
            Some(self.fallback.map(|f| f.reason).unwrap_or(DeclineCode::NONE))
        } else {
            None
        }
    }
}

/// The request that dumps every SMC socket with every extension.
pub fn dump_request() -> [u8; SMC_DIAG_REQ_LEN] {
    let mut req = [0u8; SMC_DIAG_REQ_LEN];
    req[0] = AF_SMC as u8;
    // diag_ext: bit (ATTR - 1) for CONNINFO, LGRINFO, SHUTDOWN, DMBINFO (FALLBACK is always sent).
    req[3] = (1 << (SMC_DIAG_CONNINFO - 1))
        | (1 << (SMC_DIAG_LGRINFO - 1))
        | (1 << (SMC_DIAG_SHUTDOWN - 1))
        | (1 << (SMC_DIAG_DMBINFO - 1))
        | (1 << (SMC_DIAG_FALLBACK - 1));
    req
}

fn need<'a>(b: &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
    b.get(..n)
        .ok_or_else(|| ParseError::new(what, 0, format!("{} bytes, needs {n}", b.len())))
}

/// Addresses from `inet_diag_sockid`: ports big-endian, then 16-byte source and destination.
/// `AF_SMC` sockets don't say whether they are IPv4 or IPv6 (the protocol is not in the message):
/// an address with nothing past its first 4 bytes on both sides is taken as IPv4.
pub fn parse_sockid(
    family: u8,
    id: &[u8],
) -> Result<(SocketAddr, SocketAddr, u32, u64), ParseError> {
    let id = need(id, 48, "inet_diag_sockid")?;
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let src = &id[4..20];
    let dst = &id[20..36];
    let ifindex = u32_ne(&id[36..40]);
    let cookie = u32_ne(&id[40..44]) as u64 | (u32_ne(&id[44..48]) as u64) << 32;
    let v4 = match family as i32 {
        libc::AF_INET => true,
        libc::AF_INET6 => false,
        _ => src[4..].iter().chain(&dst[4..]).all(|&b| b == 0),
    };
    let ip = |b: &[u8]| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    Ok((
        SocketAddr::new(ip(src), sport),
        SocketAddr::new(ip(dst), dport),
        ifindex,
        cookie,
    ))
}

fn cursor(b: &[u8]) -> Cursor {
    // struct smc_diag_cursor { u16 reserved; u16 wrap; u32 count; }
    Cursor {
        wrap: u16_ne(&b[2..4]),
        count: u32_ne(&b[4..8]),
    }
}

/// Formats a GID as the kernel's diag code puts it (`smc_gid_be16_convert`: already text).
fn gid_text(b: &[u8]) -> String {
    c_string(b)
}

/// Parses one `smc_diag_msg` payload (after the netlink header) with its attributes.
pub fn parse_smc_diag_msg(payload: &[u8]) -> Result<SmcSocket, ParseError> {
    let base = need(payload, SMC_DIAG_MSG_LEN, "smc_diag_msg")?;
    let family = base[0];
    let (local, peer, ifindex, cookie) = parse_sockid(family, &base[4..52])?;
    let mut s = SmcSocket {
        family,
        state: SmcState(base[1]),
        mode: Mode::from_raw(base[2]),
        local,
        peer,
        ifindex,
        cookie,
        uid: u32_ne(&base[52..56]),
        inode: u64_ne(&base[56..64]),
        shutdown: base[3],
        fallback: None,
        conn: None,
        link: None,
        dmb: None,
    };
    for a in attrs(&payload[SMC_DIAG_MSG_LEN..], "smc_diag attributes") {
        let a = a?;
        match a.ty {
            SMC_DIAG_FALLBACK => {
                let d = need(a.data, 8, "smc_diag FALLBACK")?;
                s.fallback = Some(Fallback {
                    reason: DeclineCode(u32_ne(&d[0..4])),
                    peer_diagnosis: DeclineCode(u32_ne(&d[4..8])),
                });
            }
            SMC_DIAG_SHUTDOWN => {
                s.shutdown = a.u8("smc_diag SHUTDOWN")?;
            }
            SMC_DIAG_CONNINFO => {
                let d = need(a.data, CONNINFO_LEN, "smc_diag CONNINFO")?;
                s.conn = Some(ConnInfo {
                    token: u32_ne(&d[0..4]),
                    sndbuf_size: u32_ne(&d[4..8]),
                    rmbe_size: u32_ne(&d[8..12]),
                    peer_rmbe_size: u32_ne(&d[12..16]),
                    rx_prod: cursor(&d[16..24]),
                    rx_cons: cursor(&d[24..32]),
                    tx_prod: cursor(&d[32..40]),
                    tx_cons: cursor(&d[40..48]),
                    // 48..52: four flag bytes; 52..60 tx_prep
                    tx_sent: cursor(&d[60..68]),
                    tx_fin: cursor(&d[68..76]),
                });
            }
            SMC_DIAG_LGRINFO => {
                let d = need(a.data, LGRINFO_LEN, "smc_diag LGRINFO")?;
                let name_end = 1 + IB_DEVICE_NAME_MAX;
                s.link = Some(LinkInfo {
                    link_id: d[0],
                    ib_device: c_string(&d[1..name_end]),
                    ib_port: d[name_end],
                    gid: gid_text(&d[name_end + 1..name_end + 41]),
                    peer_gid: gid_text(&d[name_end + 41..name_end + 81]),
                    role: match d[LGRINFO_LEN - 1] {
                        0 => "client",
                        1 => "server",
                        _ => "unknown",
                    },
                });
            }
            SMC_DIAG_DMBINFO => {
                // u32 linkid; 4 bytes padding; u64 peer_gid, my_gid, token, peer_token
                // [, u64 peer_gid_ext, my_gid_ext]
                let d = need(a.data, DMBINFO_MIN_LEN, "smc_diag DMBINFO")?;
                let ext = a.data.get(DMBINFO_MIN_LEN..DMBINFO_EXT_LEN);
                s.dmb = Some(DmbInfo {
                    link_id: u32_ne(&d[0..4]),
                    peer_gid: u64_ne(&d[8..16]),
                    my_gid: u64_ne(&d[16..24]),
                    token: u64_ne(&d[24..32]),
                    peer_token: u64_ne(&d[32..40]),
                    peer_gid_ext: ext.map(|e| u64_ne(&e[0..8])),
                    my_gid_ext: ext.map(|e| u64_ne(&e[8..16])),
                });
            }
            _ => {} // newer kernels may add attributes
        }
    }
    Ok(s)
}

/// Parses every message of a dump reply: `SOCK_DIAG_BY_FAMILY` messages become sockets, anything
/// else is skipped.
pub fn parse_dump(msgs: &[netlink::OwnedMsg]) -> Result<Vec<SmcSocket>, ParseError> {
    msgs.iter()
        .filter(|m| m.ty == SOCK_DIAG_BY_FAMILY)
        .map(|m| parse_smc_diag_msg(&m.payload))
        .collect()
}

/// Every SMC socket in this network namespace. `Unavailable` when the kernel has no smc_diag
/// (module not loaded, or no SMC at all).
pub fn dump() -> Result<Vec<SmcSocket>, DiagError> {
    dump_with(&dump_request())
}

/// [`dump`] without the optional attributes (connection, link, DMB info): state, mode,
/// ports and the fallback reasons only, less for the kernel to write and for us to parse.
pub fn dump_brief() -> Result<Vec<SmcSocket>, DiagError> {
    let mut req = dump_request();
    req[3] = 0;
    dump_with(&req)
}

fn dump_with(req: &[u8]) -> Result<Vec<SmcSocket>, DiagError> {
    let mut sock = NlSocket::open(libc::NETLINK_SOCK_DIAG)
        .map_err(|e| DiagError::io("NETLINK_SOCK_DIAG socket", e))?;
    let msgs = sock
        .request(
            "smc_diag dump",
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_DUMP as u16,
            req,
        )
        .map_err(|e| match e.errno() {
            Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) | Some(libc::EAFNOSUPPORT) => {
                DiagError::Unavailable {
                    what: "smc_diag",
                    why: "the kernel answers no smc_diag requests: the smc_diag module is not \
                          loaded (modprobe smc_diag) or the kernel has no SMC (CONFIG_SMC_DIAG)"
                        .into(),
                }
            }
            _ => e,
        })?;
    parse_dump(&msgs).map_err(DiagError::Parse)
}

/// The smc_diag entry of one socket, by inode (the only key that is right for both flavours).
pub fn find_by_inode(inode: u64) -> Result<Option<SmcSocket>, DiagError> {
    Ok(dump()?.into_iter().find(|s| s.inode == inode))
}
