//! The `SMC_GEN_NETLINK` generic netlink family (Linux >= 5.11): system info, SMC-R/SMC-D
//! devices, statistics, per-reason fallback counters, UEIDs, SEID, handshake limitation.
//! Attribute numbers from `include/uapi/linux/smc.h`; reply layouts from net/smc/*.c (every GET
//! is a dump; ADD/REMOVE/FLUSH are doit commands that need CAP_NET_ADMIN).

use serde::Serialize;

use super::decline::DeclineCode;
use super::netlink::{self, attrs, put_attr, Attr, NlSocket, OwnedMsg};
use super::{DiagError, ParseError};

pub const SMC_GENL_FAMILY_NAME: &str = "SMC_GEN_NETLINK";
pub const SMC_GENL_FAMILY_VERSION: u8 = 1;

// nlctrl
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
const CTRL_ATTR_OPS: u16 = 6;
const CTRL_ATTR_OP_ID: u16 = 1;
/// `sizeof(struct genlmsghdr)`.
pub const GENL_HDRLEN: usize = 4;

/// `SMC_NETLINK_*` commands.
pub mod cmd {
    pub const GET_SYS_INFO: u8 = 1;
    pub const GET_LGR_SMCR: u8 = 2;
    pub const GET_LINK_SMCR: u8 = 3;
    pub const GET_LGR_SMCD: u8 = 4;
    pub const GET_DEV_SMCD: u8 = 5;
    pub const GET_DEV_SMCR: u8 = 6;
    pub const GET_STATS: u8 = 7;
    pub const GET_FBACK_STATS: u8 = 8;
    pub const DUMP_UEID: u8 = 9;
    pub const ADD_UEID: u8 = 10;
    pub const REMOVE_UEID: u8 = 11;
    pub const FLUSH_UEID: u8 = 12;
    pub const DUMP_SEID: u8 = 13;
    pub const ENABLE_SEID: u8 = 14;
    pub const DISABLE_SEID: u8 = 15;
    pub const DUMP_HS_LIMITATION: u8 = 16;
    pub const ENABLE_HS_LIMITATION: u8 = 17;
    pub const DISABLE_HS_LIMITATION: u8 = 18;
}

// SMC_GEN_* top-level attributes
const SMC_GEN_SYS_INFO: u16 = 1;
const SMC_GEN_DEV_SMCD: u16 = 5;
const SMC_GEN_DEV_SMCR: u16 = 6;
const SMC_GEN_STATS: u16 = 7;
const SMC_GEN_FBACK_STATS: u16 = 8;

// SMC_NLA_SYS_*
const SYS_VER: u16 = 1;
const SYS_REL: u16 = 2;
const SYS_IS_ISM_V2: u16 = 3;
const SYS_LOCAL_HOST: u16 = 4;
const SYS_SEID: u16 = 5;
const SYS_IS_SMCR_V2: u16 = 6;

// SMC_NLA_DEV_*
const DEV_USE_CNT: u16 = 1;
const DEV_IS_CRIT: u16 = 2;
const DEV_PCI_FID: u16 = 3;
const DEV_PCI_CHID: u16 = 4;
const DEV_PCI_VENDOR: u16 = 5;
const DEV_PCI_DEVICE: u16 = 6;
const DEV_PCI_ID: u16 = 7;
const DEV_PORT: u16 = 8;
const DEV_PORT2: u16 = 9;
const DEV_IB_NAME: u16 = 10;

// SMC_NLA_DEV_PORT_*
const PORT_PNET_USR: u16 = 1;
const PORT_PNETID: u16 = 2;
const PORT_NETDEV: u16 = 3;
const PORT_STATE: u16 = 4;
const PORT_VALID: u16 = 5;
const PORT_LNK_CNT: u16 = 6;

// SMC_NLA_STATS_*
const STATS_SMCD_TECH: u16 = 1;
const STATS_SMCR_TECH: u16 = 2;
const STATS_CLNT_HS_ERR_CNT: u16 = 3;
const STATS_SRV_HS_ERR_CNT: u16 = 4;

// SMC_NLA_STATS_T_*
const T_CLNT_V1_SUCC: u16 = 7;
const T_CLNT_V2_SUCC: u16 = 8;
const T_SRV_V1_SUCC: u16 = 9;
const T_SRV_V2_SUCC: u16 = 10;
const T_SENDPAGE_CNT: u16 = 11;
const T_SPLICE_CNT: u16 = 12;
const T_CORK_CNT: u16 = 13;
const T_NDLY_CNT: u16 = 14;
const T_URG_DATA_CNT: u16 = 15;
const T_RX_BYTES: u16 = 16;
const T_TX_BYTES: u16 = 17;
const T_RX_CNT: u16 = 18;
const T_TX_CNT: u16 = 19;

// SMC_NLA_FBACK_STATS_*
const FBACK_TYPE: u16 = 1;
const FBACK_SRV_CNT: u16 = 2;
const FBACK_CLNT_CNT: u16 = 3;
const FBACK_RSN_CODE: u16 = 4;
const FBACK_RSN_CNT: u16 = 5;

/// `SMC_NLA_EID_TABLE_ENTRY`.
const EID_TABLE_ENTRY: u16 = 1;
const SEID_ENTRY: u16 = 1;
const SEID_ENABLED: u16 = 2;
const HS_LIMITATION_ENABLED: u16 = 1;

/// `SMC_MAX_EID_LEN`.
pub const SMC_MAX_EID_LEN: usize = 32;
/// `SMC_MAX_UEID`: the kernel keeps at most this many UEIDs.
pub const SMC_MAX_UEID: usize = 4;

/// What nlctrl says about a generic netlink family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    pub id: u16,
    pub version: u32,
    /// The command numbers the kernel implements (empty if it did not list them).
    pub ops: Vec<u32>,
}

/// Parses the reply to `CTRL_CMD_GETFAMILY` (payload after the netlink header).
pub fn parse_family(payload: &[u8]) -> Result<FamilyInfo, ParseError> {
    let body = genl_body(payload)?;
    let mut id = None;
    let mut version = 0;
    let mut ops = Vec::new();
    for a in attrs(body, "nlctrl family") {
        let a = a?;
        match a.ty {
            CTRL_ATTR_FAMILY_ID => id = Some(a.u16("CTRL_ATTR_FAMILY_ID")?),
            CTRL_ATTR_VERSION => version = a.u32("CTRL_ATTR_VERSION")?,
            CTRL_ATTR_OPS => {
                for op in a.nested_attrs("CTRL_ATTR_OPS") {
                    for f in op?.nested_attrs("CTRL_ATTR_OP") {
                        let f = f?;
                        if f.ty == CTRL_ATTR_OP_ID {
                            ops.push(f.u32("CTRL_ATTR_OP_ID")?);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| ParseError::new("nlctrl family", 0, "no CTRL_ATTR_FAMILY_ID"))?;
    Ok(FamilyInfo { id, version, ops })
}

/// The attributes after the generic netlink header.
pub fn genl_body(payload: &[u8]) -> Result<&[u8], ParseError> {
    payload.get(GENL_HDRLEN..).ok_or_else(|| {
        ParseError::new(
            "generic netlink message",
            0,
            format!("{} bytes, the header needs 4", payload.len()),
        )
    })
}

/// The attribute nested under the top-level `top` attribute of a reply, if present.
fn top_nest<'a>(
    payload: &'a [u8],
    top: u16,
    what: &'static str,
) -> Result<Option<Attr<'a>>, ParseError> {
    for a in attrs(genl_body(payload)?, what) {
        let a = a?;
        if a.ty == top {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// `GET_SYS_INFO`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SysInfo {
    /// Highest SMC version this kernel speaks (2 on current kernels).
    pub smc_version: Option<u8>,
    pub release: Option<u8>,
    pub ism_v2_capable: Option<bool>,
    pub smcr_v2_capable: Option<bool>,
    pub local_host: Option<String>,
    /// System EID (only where SMC-Dv2 / ISM is possible, i.e. s390).
    pub seid: Option<String>,
}

pub fn parse_sys_info(payload: &[u8]) -> Result<SysInfo, ParseError> {
    let mut s = SysInfo::default();
    let Some(nest) = top_nest(payload, SMC_GEN_SYS_INFO, "SMC_GEN_SYS_INFO")? else {
        return Ok(s);
    };
    for a in nest.nested_attrs("SMC_GEN_SYS_INFO") {
        let a = a?;
        match a.ty {
            SYS_VER => s.smc_version = Some(a.u8("SMC_NLA_SYS_VER")?),
            SYS_REL => s.release = Some(a.u8("SMC_NLA_SYS_REL")?),
            SYS_IS_ISM_V2 => s.ism_v2_capable = Some(a.u8("SMC_NLA_SYS_IS_ISM_V2")? != 0),
            SYS_IS_SMCR_V2 => s.smcr_v2_capable = Some(a.u8("SMC_NLA_SYS_IS_SMCR_V2")? != 0),
            SYS_LOCAL_HOST => s.local_host = Some(a.string().trim_end().to_string()),
            SYS_SEID => s.seid = Some(a.string().trim_end().to_string()),
            _ => {}
        }
    }
    Ok(s)
}

/// One port of an SMC device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DevPort {
    /// 1-based port number.
    pub port: u8,
    /// The PNET ID (empty when none is set; SMC-Rv2 on Linux >= 6.x does not need one).
    pub pnet_id: String,
    /// The PNET ID was set by the user (not by firmware).
    pub pnet_by_user: bool,
    /// ifindex of the netdev this port is bound to (0: none).
    pub netdev_ifindex: u32,
    /// The netdev's name, filled in by the caller from the ifindex (not from the kernel message).
    pub netdev: Option<String>,
    /// The RDMA port is ACTIVE.
    pub active: bool,
    pub valid: bool,
    pub link_count: u32,
}

/// `GET_DEV_SMCR` / `GET_DEV_SMCD`: one device SMC can use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmcDevice {
    /// The RDMA device name (SMC-R) or empty (SMC-D).
    pub name: String,
    pub smcd: bool,
    pub use_count: Option<u32>,
    pub is_critical: Option<bool>,
    pub pci_id: Option<String>,
    pub pci_vendor: Option<u16>,
    pub pci_device: Option<u16>,
    pub pci_fid: Option<u32>,
    pub pci_chid: Option<u16>,
    pub ports: Vec<DevPort>,
}

fn parse_port(a: &Attr<'_>, port: u8) -> Result<DevPort, ParseError> {
    let mut p = DevPort {
        port,
        ..DevPort::default()
    };
    for f in a.nested_attrs("SMC_NLA_DEV_PORT") {
        let f = f?;
        match f.ty {
            PORT_PNET_USR => p.pnet_by_user = f.u8("SMC_NLA_DEV_PORT_PNET_USR")? != 0,
            PORT_PNETID => p.pnet_id = f.string().trim_end().to_string(),
            PORT_NETDEV => p.netdev_ifindex = f.u32("SMC_NLA_DEV_PORT_NETDEV")?,
            PORT_STATE => p.active = f.u8("SMC_NLA_DEV_PORT_STATE")? != 0,
            PORT_VALID => p.valid = f.u8("SMC_NLA_DEV_PORT_VALID")? != 0,
            PORT_LNK_CNT => p.link_count = f.u32("SMC_NLA_DEV_PORT_LNK_CNT")?,
            _ => {}
        }
    }
    Ok(p)
}

/// Parses one `GET_DEV_SMCR` (`smcd == false`) or `GET_DEV_SMCD` reply message.
pub fn parse_device(payload: &[u8], smcd: bool) -> Result<Option<SmcDevice>, ParseError> {
    let top = if smcd {
        SMC_GEN_DEV_SMCD
    } else {
        SMC_GEN_DEV_SMCR
    };
    let Some(nest) = top_nest(payload, top, "SMC_GEN_DEV")? else {
        return Ok(None);
    };
    let mut d = SmcDevice {
        smcd,
        ..SmcDevice::default()
    };
    for a in nest.nested_attrs("SMC_GEN_DEV") {
        let a = a?;
        match a.ty {
            DEV_USE_CNT => d.use_count = Some(a.u32("SMC_NLA_DEV_USE_CNT")?),
            DEV_IS_CRIT => d.is_critical = Some(a.u8("SMC_NLA_DEV_IS_CRIT")? != 0),
            DEV_PCI_FID => d.pci_fid = Some(a.u32("SMC_NLA_DEV_PCI_FID")?),
            DEV_PCI_CHID => d.pci_chid = Some(a.u16("SMC_NLA_DEV_PCI_CHID")?),
            DEV_PCI_VENDOR => d.pci_vendor = Some(a.u16("SMC_NLA_DEV_PCI_VENDOR")?),
            DEV_PCI_DEVICE => d.pci_device = Some(a.u16("SMC_NLA_DEV_PCI_DEVICE")?),
            DEV_PCI_ID => d.pci_id = Some(a.string()),
            DEV_IB_NAME => d.name = a.string(),
            DEV_PORT => d.ports.push(parse_port(&a, 1)?),
            DEV_PORT2 => d.ports.push(parse_port(&a, 2)?),
            _ => {}
        }
    }
    Ok(Some(d))
}

/// Per-technology counters (`SMC_NLA_STATS_T_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TechStats {
    pub client_v1_success: u64,
    pub client_v2_success: u64,
    pub server_v1_success: u64,
    pub server_v2_success: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_count: u64,
    pub tx_count: u64,
    pub sendpage_count: u64,
    pub splice_count: u64,
    pub cork_count: u64,
    pub nodelay_count: u64,
    pub urgent_data_count: u64,
}

/// `GET_STATS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SmcStats {
    pub smcr: TechStats,
    pub smcd: TechStats,
    pub client_handshake_errors: u64,
    pub server_handshake_errors: u64,
}

fn parse_tech(a: &Attr<'_>) -> Result<TechStats, ParseError> {
    let mut t = TechStats::default();
    for f in a.nested_attrs("SMC_NLA_STATS_TECH") {
        let f = f?;
        let slot = match f.ty {
            T_CLNT_V1_SUCC => &mut t.client_v1_success,
            T_CLNT_V2_SUCC => &mut t.client_v2_success,
            T_SRV_V1_SUCC => &mut t.server_v1_success,
            T_SRV_V2_SUCC => &mut t.server_v2_success,
            T_RX_BYTES => &mut t.rx_bytes,
            T_TX_BYTES => &mut t.tx_bytes,
            T_RX_CNT => &mut t.rx_count,
            T_TX_CNT => &mut t.tx_count,
            T_SENDPAGE_CNT => &mut t.sendpage_count,
            T_SPLICE_CNT => &mut t.splice_count,
            T_CORK_CNT => &mut t.cork_count,
            T_NDLY_CNT => &mut t.nodelay_count,
            T_URG_DATA_CNT => &mut t.urgent_data_count,
            _ => continue, // nested buckets and newer counters
        };
        *slot = f.uint("SMC_NLA_STATS_T counter")?;
    }
    Ok(t)
}

pub fn parse_stats(payload: &[u8]) -> Result<Option<SmcStats>, ParseError> {
    let Some(nest) = top_nest(payload, SMC_GEN_STATS, "SMC_GEN_STATS")? else {
        return Ok(None);
    };
    let mut s = SmcStats::default();
    for a in nest.nested_attrs("SMC_GEN_STATS") {
        let a = a?;
        match a.ty {
            STATS_SMCD_TECH => s.smcd = parse_tech(&a)?,
            STATS_SMCR_TECH => s.smcr = parse_tech(&a)?,
            STATS_CLNT_HS_ERR_CNT => s.client_handshake_errors = a.uint("CLNT_HS_ERR_CNT")?,
            STATS_SRV_HS_ERR_CNT => s.server_handshake_errors = a.uint("SRV_HS_ERR_CNT")?,
            _ => {}
        }
    }
    Ok(Some(s))
}

/// One `GET_FBACK_STATS` message: a (side, reason) counter; the first also carries the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackEntry {
    pub server: bool,
    pub server_total: Option<u64>,
    pub client_total: Option<u64>,
    pub reason: Option<DeclineCode>,
    pub count: Option<u64>,
}

pub fn parse_fback_entry(payload: &[u8]) -> Result<Option<FallbackEntry>, ParseError> {
    let Some(nest) = top_nest(payload, SMC_GEN_FBACK_STATS, "SMC_GEN_FBACK_STATS")? else {
        return Ok(None);
    };
    let mut e = FallbackEntry::default();
    for a in nest.nested_attrs("SMC_GEN_FBACK_STATS") {
        let a = a?;
        match a.ty {
            FBACK_TYPE => e.server = a.u8("SMC_NLA_FBACK_STATS_TYPE")? != 0,
            FBACK_SRV_CNT => e.server_total = Some(a.uint("SMC_NLA_FBACK_STATS_SRV_CNT")?),
            FBACK_CLNT_CNT => e.client_total = Some(a.uint("SMC_NLA_FBACK_STATS_CLNT_CNT")?),
            FBACK_RSN_CODE => e.reason = Some(DeclineCode(a.u32("SMC_NLA_FBACK_STATS_RSN_CODE")?)),
            // u16 in the kernel (it wraps at 65536): read whatever width arrives
            FBACK_RSN_CNT => e.count = Some(a.uint("SMC_NLA_FBACK_STATS_RSN_CNT")?),
            _ => {}
        }
    }
    Ok(Some(e))
}

/// One reason's count on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub reason: DeclineCode,
    pub count: u64,
}

/// The kernel's fallback counters (per network namespace, since the smc module loaded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FallbackStats {
    pub client_total: u64,
    pub server_total: u64,
    /// Per reason; the kernel keeps the 30 most recent reasons per side, 16-bit counts.
    pub client: Vec<ReasonCount>,
    pub server: Vec<ReasonCount>,
}

pub fn aggregate_fback(entries: &[FallbackEntry]) -> FallbackStats {
    let mut s = FallbackStats::default();
    for e in entries {
        if let Some(t) = e.server_total {
            s.server_total = t;
        }
        if let Some(t) = e.client_total {
            s.client_total = t;
        }
        if let (Some(reason), Some(count)) = (e.reason, e.count) {
            let side = if e.server {
                &mut s.server
            } else {
                &mut s.client
            };
            match side.iter_mut().find(|r| r.reason == reason) {
                Some(r) => r.count += count,
                None => side.push(ReasonCount { reason, count }),
            }
        }
    }
    s.client
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    s.server
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    s
}

/// Parses one `DUMP_UEID` message: the UEID without its padding.
pub fn parse_ueid(payload: &[u8]) -> Result<Option<String>, ParseError> {
    for a in attrs(genl_body(payload)?, "DUMP_UEID") {
        let a = a?;
        if a.ty == EID_TABLE_ENTRY {
            return Ok(Some(a.string().trim_end().to_string()));
        }
    }
    Ok(None)
}

/// `DUMP_SEID`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeidInfo {
    pub seid: Option<String>,
    pub enabled: Option<bool>,
}

pub fn parse_seid(payload: &[u8]) -> Result<SeidInfo, ParseError> {
    let mut s = SeidInfo::default();
    for a in attrs(genl_body(payload)?, "DUMP_SEID") {
        let a = a?;
        match a.ty {
            SEID_ENTRY => s.seid = Some(a.string().trim_end().to_string()),
            SEID_ENABLED => s.enabled = Some(a.u8("SMC_NLA_SEID_ENABLED")? != 0),
            _ => {}
        }
    }
    Ok(s)
}

/// `DUMP_HS_LIMITATION`: whether handshake limitation is on in this netns.
pub fn parse_hs_limitation(payload: &[u8]) -> Result<Option<bool>, ParseError> {
    for a in attrs(genl_body(payload)?, "DUMP_HS_LIMITATION") {
        let a = a?;
        if a.ty == HS_LIMITATION_ENABLED {
            return Ok(Some(a.u8("SMC_NLA_HS_LIMITATION_ENABLED")? != 0));
        }
    }
    Ok(None)
}

/// The 33-byte `SMC_NLA_EID_TABLE_ENTRY` for `ueid`: upper-cased, checked the way the kernel
/// checks it (`smc_clc_ueid_valid`: 1..=32 characters of `A-Z 0-9 . -`, the first alphanumeric),
/// padded with spaces to 32, then NUL.
pub fn ueid_entry(ueid: &str) -> Result<[u8; SMC_MAX_EID_LEN + 1], String> {
    let u = ueid.trim().to_ascii_uppercase();
    if u.is_empty() {
        return Err("a UEID cannot be empty".into());
    }
    if u.len() > SMC_MAX_EID_LEN {
        return Err(format!(
            "a UEID has at most {SMC_MAX_EID_LEN} characters, {u:?} has {}",
            u.len()
        ));
    }
    let b = u.as_bytes();
    if !b[0].is_ascii_alphanumeric() {
        return Err(format!(
            "a UEID starts with a letter or digit, not {:?}",
            b[0] as char
        ));
    }
    if let Some(c) = b
        .iter()
        .find(|c| !(c.is_ascii_alphanumeric() || **c == b'.' || **c == b'-'))
    {
        return Err(format!(
            "a UEID has only letters, digits, '.' and '-', not {:?}",
            *c as char
        ));
    }
    let mut e = [b' '; SMC_MAX_EID_LEN + 1];
    e[..b.len()].copy_from_slice(b);
    e[SMC_MAX_EID_LEN] = 0;
    Ok(e)
}

/// A request payload: generic netlink header + attributes.
pub fn genl_payload(cmd: u8, version: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut p = vec![cmd, version, 0, 0];
    for (ty, data) in attrs {
        put_attr(&mut p, *ty, data);
    }
    p
}

/// A generic netlink socket with the `SMC_GEN_NETLINK` family resolved.
pub struct SmcGenl {
    sock: NlSocket,
    pub family: FamilyInfo,
}

impl SmcGenl {
    /// Opens a generic netlink socket and resolves `SMC_GEN_NETLINK`. `Unavailable` when the
    /// family does not exist (no smc module, or a kernel older than 5.11).
    pub fn open() -> Result<SmcGenl, DiagError> {
        let mut sock = NlSocket::open(libc::NETLINK_GENERIC)
            .map_err(|e| DiagError::io("NETLINK_GENERIC socket", e))?;
        let mut name = SMC_GENL_FAMILY_NAME.as_bytes().to_vec();
        name.push(0);
        let req = genl_payload(CTRL_CMD_GETFAMILY, 2, &[(CTRL_ATTR_FAMILY_NAME, &name)]);
        let msgs = sock
            .request("nlctrl GETFAMILY SMC_GEN_NETLINK", GENL_ID_CTRL, 0, &req)
            .map_err(|e| match e.errno() {
                Some(libc::ENOENT) => DiagError::Unavailable {
                    what: "SMC_GEN_NETLINK",
                    why: "the kernel has no SMC_GEN_NETLINK family: the smc module is not \
                          loaded (modprobe smc) or the kernel is older than 5.11"
                        .into(),
                },
                _ => e,
            })?;
        let first = msgs
            .first()
            .ok_or_else(|| DiagError::Parse(ParseError::new("nlctrl reply", 0, "no message")))?;
        let family = parse_family(&first.payload).map_err(DiagError::Parse)?;
        Ok(SmcGenl { sock, family })
    }

    /// Whether the kernel implements command `c` (true when it did not list its ops).
    pub fn supports(&self, c: u8) -> bool {
        self.family.ops.is_empty() || self.family.ops.contains(&(c as u32))
    }

    fn dump(&mut self, what: &'static str, c: u8) -> Result<Vec<OwnedMsg>, DiagError> {
        let req = genl_payload(c, SMC_GENL_FAMILY_VERSION, &[]);
        self.sock
            .request(what, self.family.id, libc::NLM_F_DUMP as u16, &req)
    }

    fn doit(&mut self, what: &'static str, c: u8, attrs: &[(u16, &[u8])]) -> Result<(), DiagError> {
        let req = genl_payload(c, SMC_GENL_FAMILY_VERSION, attrs);
        self.sock
            .request(what, self.family.id, libc::NLM_F_ACK as u16, &req)
            .map(|_| ())
    }

    fn parse_all<T>(
        msgs: &[OwnedMsg],
        f: impl Fn(&[u8]) -> Result<Option<T>, ParseError>,
    ) -> Result<Vec<T>, DiagError> {
        let mut out = Vec::new();
        for m in msgs {
            if let Some(v) = f(&m.payload).map_err(DiagError::Parse)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn sys_info(&mut self) -> Result<SysInfo, DiagError> {
        let msgs = self.dump("SMC_GEN_NETLINK GET_SYS_INFO", cmd::GET_SYS_INFO)?;
        match msgs.first() {
            Some(m) => parse_sys_info(&m.payload).map_err(DiagError::Parse),
            None => Ok(SysInfo::default()),
        }
    }

    /// SMC-R devices (`smcd == false`) or SMC-D devices, netdev names filled in.
    pub fn devices(&mut self, smcd: bool) -> Result<Vec<SmcDevice>, DiagError> {
        let (what, c) = if smcd {
            ("SMC_GEN_NETLINK GET_DEV_SMCD", cmd::GET_DEV_SMCD)
        } else {
            ("SMC_GEN_NETLINK GET_DEV_SMCR", cmd::GET_DEV_SMCR)
        };
        let msgs = self.dump(what, c)?;
        let mut devs = Self::parse_all(&msgs, |p| parse_device(p, smcd))?;
        for d in &mut devs {
            for p in &mut d.ports {
                p.netdev = ifname(p.netdev_ifindex);
            }
        }
        Ok(devs)
    }

    pub fn stats(&mut self) -> Result<Option<SmcStats>, DiagError> {
        let msgs = self.dump("SMC_GEN_NETLINK GET_STATS", cmd::GET_STATS)?;
        Ok(Self::parse_all(&msgs, parse_stats)?.into_iter().next())
    }

    pub fn fallback_stats(&mut self) -> Result<FallbackStats, DiagError> {
        let msgs = self.dump("SMC_GEN_NETLINK GET_FBACK_STATS", cmd::GET_FBACK_STATS)?;
        Ok(aggregate_fback(&Self::parse_all(&msgs, parse_fback_entry)?))
    }

    pub fn ueids(&mut self) -> Result<Vec<String>, DiagError> {
        let msgs = self.dump("SMC_GEN_NETLINK DUMP_UEID", cmd::DUMP_UEID)?;
        Self::parse_all(&msgs, parse_ueid)
    }

    pub fn seid(&mut self) -> Result<SeidInfo, DiagError> {
        let msgs = self.dump("SMC_GEN_NETLINK DUMP_SEID", cmd::DUMP_SEID)?;
        match msgs.first() {
            Some(m) => parse_seid(&m.payload).map_err(DiagError::Parse),
            None => Ok(SeidInfo::default()),
        }
    }

    /// `None` on kernels without handshake limitation (< 5.18).
    pub fn hs_limitation(&mut self) -> Result<Option<bool>, DiagError> {
        if !self.supports(cmd::DUMP_HS_LIMITATION) {
            return Ok(None);
        }
        let msgs = self.dump(
            "SMC_GEN_NETLINK DUMP_HS_LIMITATION",
            cmd::DUMP_HS_LIMITATION,
        )?;
        match msgs.first() {
            Some(m) => parse_hs_limitation(&m.payload).map_err(DiagError::Parse),
            None => Ok(None),
        }
    }

    /// Adds a UEID (CAP_NET_ADMIN). The kernel answers `EEXIST` if it is there already and
    /// `ERANGE` when it holds `SMC_MAX_UEID` of them.
    pub fn add_ueid(&mut self, ueid: &str) -> Result<(), DiagError> {
        let e = ueid_entry(ueid).map_err(DiagError::Invalid)?;
        self.doit(
            "SMC_GEN_NETLINK ADD_UEID",
            cmd::ADD_UEID,
            &[(EID_TABLE_ENTRY, &e)],
        )
    }

    /// Removes a UEID (CAP_NET_ADMIN); `ENOENT` if it is not there.
    pub fn remove_ueid(&mut self, ueid: &str) -> Result<(), DiagError> {
        let e = ueid_entry(ueid).map_err(DiagError::Invalid)?;
        self.doit(
            "SMC_GEN_NETLINK REMOVE_UEID",
            cmd::REMOVE_UEID,
            &[(EID_TABLE_ENTRY, &e)],
        )
    }

    /// Removes every UEID (CAP_NET_ADMIN).
    pub fn flush_ueids(&mut self) -> Result<(), DiagError> {
        self.doit("SMC_GEN_NETLINK FLUSH_UEID", cmd::FLUSH_UEID, &[])
    }

    /// Turns handshake limitation on or off for this netns (CAP_NET_ADMIN).
    pub fn set_hs_limitation(&mut self, on: bool) -> Result<(), DiagError> {
        let c = if on {
            cmd::ENABLE_HS_LIMITATION
        } else {
            cmd::DISABLE_HS_LIMITATION
        };
        self.doit("SMC_GEN_NETLINK HS_LIMITATION", c, &[])
    }
}

/// The name of interface `ifindex` in this netns.
pub fn ifname(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires; it NUL-terminates on success.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name within its bounds.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Every message type `netlink::messages` may hand a genl parser; used by the fuzz targets.
pub fn parse_any_genl(payload: &[u8]) {
    let _ = parse_family(payload);
    let _ = parse_sys_info(payload);
    let _ = parse_device(payload, false);
    let _ = parse_device(payload, true);
    let _ = parse_stats(payload);
    let _ = parse_fback_entry(payload);
    let _ = parse_ueid(payload);
    let _ = parse_seid(payload);
    let _ = parse_hs_limitation(payload);
    let _ = netlink::parse_error_payload(payload);
}
