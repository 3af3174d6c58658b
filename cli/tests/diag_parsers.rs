//! The diag parsers against byte fixtures built from the kernel's struct layouts
//! (`include/uapi/linux/smc_diag.h`, `include/uapi/linux/smc.h`, `inet_diag.h`), and against
//! every truncation and a few thousand corruptions of them: each must give a value or an `Err`,
//! never a panic. (The cargo-fuzz targets under fuzz/ do the same with coverage guidance.)
//!
//! Fixtures captured from the real 6.12 kernel in the VM are in tests/fixtures/ and parsed too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use envoy_smc_cli::diag::genl::{self, aggregate_fback};
use envoy_smc_cli::diag::netlink::{self, build_msg, put_attr};
use envoy_smc_cli::diag::{inet_diag, smc_diag, DeclineCode, Mode, SmcState};

const NESTED: u16 = libc::NLA_F_NESTED as u16;

// ---------------------------------------------------------------------------------------------
// builders, field by field as the kernel lays the structs out

fn sockid(sport: u16, dport: u16, src: &[u8], dst: &[u8], ifindex: u32, cookie: u64) -> Vec<u8> {
    let mut id = Vec::new();
    id.extend(sport.to_be_bytes());
    id.extend(dport.to_be_bytes());
    let mut s = [0u8; 16];
    s[..src.len()].copy_from_slice(src);
    let mut d = [0u8; 16];
    d[..dst.len()].copy_from_slice(dst);
    id.extend(s);
    id.extend(d);
    id.extend(ifindex.to_ne_bytes());
    id.extend((cookie as u32).to_ne_bytes());
    id.extend(((cookie >> 32) as u32).to_ne_bytes());
    assert_eq!(id.len(), 48);
    id
}

/// `struct smc_diag_msg` (64 bytes).
fn smc_diag_msg(family: u8, state: u8, mode: u8, id: &[u8], uid: u32, inode: u64) -> Vec<u8> {
    let mut m = vec![family, state, mode, 0];
    m.extend(id);
    m.extend(uid.to_ne_bytes()); // ends at 56: diag_inode is 8-aligned without padding
    m.extend(inode.to_ne_bytes());
    assert_eq!(m.len(), 64);
    m
}

fn fallback_attr(out: &mut Vec<u8>, reason: u32, peer: u32) {
    let mut d = reason.to_ne_bytes().to_vec();
    d.extend(peer.to_ne_bytes());
    put_attr(out, smc_diag::SMC_DIAG_FALLBACK, &d);
}

/// `struct smc_diag_lgrinfo`: linkinfo {link_id, ibname[64], ibport, gid[40], peer_gid[40]}, role.
fn lgrinfo(link_id: u8, ib: &str, port: u8, gid: &str, peer_gid: &str, role: u8) -> Vec<u8> {
    let mut d = vec![link_id];
    let mut name = [0u8; 64];
    name[..ib.len()].copy_from_slice(ib.as_bytes());
    d.extend(name);
    d.push(port);
    let mut g = [0u8; 40];
    g[..gid.len()].copy_from_slice(gid.as_bytes());
    d.extend(g);
    let mut pg = [0u8; 40];
    pg[..peer_gid.len()].copy_from_slice(peer_gid.as_bytes());
    d.extend(pg);
    d.push(role);
    assert_eq!(d.len(), 147);
    d
}

/// `struct smc_diag_conninfo` (76 bytes) with recognisable values.
fn conninfo() -> Vec<u8> {
    let mut d = Vec::new();
    for v in [0x1234u32, 65536, 65536, 32768] {
        d.extend(v.to_ne_bytes());
    }
    let cursor = |wrap: u16, count: u32| {
        let mut c = 0u16.to_ne_bytes().to_vec();
        c.extend(wrap.to_ne_bytes());
        c.extend(count.to_ne_bytes());
        c
    };
    d.extend(cursor(1, 100)); // rx_prod
    d.extend(cursor(1, 90)); // rx_cons
    d.extend(cursor(2, 200)); // tx_prod
    d.extend(cursor(2, 190)); // tx_cons
    d.extend([0u8; 4]); // flags
    d.extend(cursor(3, 300)); // tx_prep
    d.extend(cursor(3, 299)); // tx_sent
    d.extend(cursor(3, 298)); // tx_fin
    assert_eq!(d.len(), 76);
    d
}

/// An SMC-R socket: AF_SMC, ACTIVE, mode SMCR, 10.9.0.1:40000 -> 10.9.0.2:8080, with
/// SHUTDOWN, FALLBACK (0/0), CONNINFO and LGRINFO, as a 6.12 kernel sends it.
fn smcr_fixture() -> Vec<u8> {
    let id = sockid(
        40000,
        8080,
        &[10, 9, 0, 1],
        &[10, 9, 0, 2],
        0,
        0xdead_beef_0000_0001,
    );
    let mut p = smc_diag_msg(43, 1, 0, &id, 0, 123_456);
    put_attr(&mut p, smc_diag::SMC_DIAG_SHUTDOWN, &[0]);
    fallback_attr(&mut p, 0, 0);
    put_attr(&mut p, smc_diag::SMC_DIAG_CONNINFO, &conninfo());
    put_attr(
        &mut p,
        smc_diag::SMC_DIAG_LGRINFO,
        &lgrinfo(
            1,
            "rxea",
            1,
            "0000:0000:0000:0000:0000:ffff:0a09:0001",
            "0000:0000:0000:0000:0000:ffff:0a09:0002",
            0,
        ),
    );
    p
}

/// An IPPROTO_SMC fallback socket (family AF_INET, zero addresses, real ports), OPTUNSUPP.
fn fallback_fixture() -> Vec<u8> {
    let id = sockid(40001, 8080, &[], &[], 0, 7);
    let mut p = smc_diag_msg(libc::AF_INET as u8, 1, 1, &id, 1000, 654_321);
    put_attr(&mut p, smc_diag::SMC_DIAG_SHUTDOWN, &[0]);
    fallback_attr(&mut p, 0x0306_0000, 0);
    p
}

fn genl_msg(cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let mut p = vec![cmd, 1, 0, 0];
    p.extend(attrs);
    p
}

fn nest(ty: u16, inner: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    put_attr(&mut o, ty | NESTED, inner);
    o
}

fn a_u8(o: &mut Vec<u8>, ty: u16, v: u8) {
    put_attr(o, ty, &[v]);
}
fn a_u16(o: &mut Vec<u8>, ty: u16, v: u16) {
    put_attr(o, ty, &v.to_ne_bytes());
}
fn a_u32(o: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(o, ty, &v.to_ne_bytes());
}
/// `nla_put_u64_64bit`: a pad attribute (type `pad`) first when the u64 would be misaligned.
fn a_u64(o: &mut Vec<u8>, ty: u16, v: u64, pad: u16) {
    if (o.len() + 4) % 8 != 0 {
        put_attr(o, pad, &[]);
    }
    put_attr(o, ty, &v.to_ne_bytes());
}
fn a_str(o: &mut Vec<u8>, ty: u16, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    put_attr(o, ty, &b);
}

/// `GET_DEV_SMCR` for rxea: port 1 active, on ifindex 3, no PNET ID.
fn dev_smcr_fixture() -> Vec<u8> {
    let mut port = Vec::new();
    a_u8(&mut port, 1, 0); // PNET_USR
    a_str(&mut port, 2, ""); // PNETID
    a_u32(&mut port, 3, 3); // NETDEV
    a_u8(&mut port, 5, 1); // VALID
    a_u8(&mut port, 4, 1); // STATE
    a_u32(&mut port, 6, 1); // LNK_CNT
    let mut dev = Vec::new();
    a_u8(&mut dev, 2, 0); // IS_CRIT
    a_u32(&mut dev, 3, 0); // PCI_FID
    a_u16(&mut dev, 4, 0); // PCI_CHID
    a_u16(&mut dev, 5, 0); // PCI_VENDOR
    a_u16(&mut dev, 6, 0); // PCI_DEVICE
    a_str(&mut dev, 7, ""); // PCI_ID
    a_str(&mut dev, 10, "rxea"); // IB_NAME
    dev.extend(nest(8, &port)); // PORT (port 1)
    genl_msg(6, &nest(6, &dev))
}

fn sys_info_fixture() -> Vec<u8> {
    let mut s = Vec::new();
    a_u8(&mut s, 1, 2); // VER
    a_u8(&mut s, 2, 1); // REL
    a_u8(&mut s, 3, 0); // IS_ISM_V2
    a_u8(&mut s, 6, 1); // IS_SMCR_V2
    a_str(&mut s, 4, "envoy-sm"); // LOCAL_HOST (8 chars, as the kernel keeps it)
    genl_msg(1, &nest(1, &s))
}

fn stats_fixture() -> Vec<u8> {
    let tech = |v2: u64, rx: u64| {
        let mut t = Vec::new();
        // a nested bucket the parser must skip
        let mut bucket = Vec::new();
        a_u64(&mut bucket, 1, 5, 0);
        t.extend(nest(3, &bucket));
        a_u64(&mut t, 7, 0, 0);
        a_u64(&mut t, 8, v2, 0);
        a_u64(&mut t, 9, 0, 0);
        a_u64(&mut t, 10, v2, 0);
        a_u64(&mut t, 16, rx, 0);
        a_u64(&mut t, 17, rx + 1, 0);
        t
    };
    let mut s = Vec::new();
    s.extend(nest(1, &tech(0, 0)));
    s.extend(nest(2, &tech(3, 4096)));
    a_u64(&mut s, 3, 1, 0);
    a_u64(&mut s, 4, 2, 0);
    genl_msg(7, &nest(7, &s))
}

fn fback_fixture(server: bool, totals: Option<(u64, u64)>, code: u32, count: u16) -> Vec<u8> {
    let mut f = Vec::new();
    a_u8(&mut f, 1, server as u8);
    if let Some((srv, clnt)) = totals {
        a_u64(&mut f, 2, srv, 0);
        a_u64(&mut f, 3, clnt, 0);
    }
    a_u32(&mut f, 4, code);
    a_u16(&mut f, 5, count);
    genl_msg(8, &nest(8, &f))
}

fn ueid_fixture(u: &str) -> Vec<u8> {
    let mut e = [b' '; 32].to_vec();
    e[..u.len()].copy_from_slice(u.as_bytes());
    e.push(0);
    let mut a = Vec::new();
    put_attr(&mut a, 1, &e);
    genl_msg(9, &a)
}

fn family_fixture() -> Vec<u8> {
    let mut a = Vec::new();
    a_str(&mut a, 2, "SMC_GEN_NETLINK");
    a_u16(&mut a, 1, 0x1f);
    a_u32(&mut a, 3, 1);
    let mut ops = Vec::new();
    for (i, id) in [1u32, 9, 10, 16].iter().enumerate() {
        let mut op = Vec::new();
        a_u32(&mut op, 1, *id);
        a_u32(&mut op, 2, 0);
        ops.extend(nest(i as u16 + 1, &op));
    }
    a.extend(nest(6, &ops));
    genl_msg(1, &a)
}

fn inet_diag_fixture() -> Vec<u8> {
    let id = sockid(40001, 8080, &[10, 9, 0, 1], &[10, 9, 0, 2], 0, 9);
    // state, timer, retrans (idiag_retrans: 2)
    let mut m = vec![libc::AF_INET as u8, 1, 0, 2];
    m.extend(id);
    for v in [0u32, 0, 0, 1000, 777] {
        m.extend(v.to_ne_bytes());
    }
    assert_eq!(m.len(), 72);
    m
}

// ---------------------------------------------------------------------------------------------
// values

#[test]
fn smcr_socket_with_link_and_conninfo() {
    let s = smc_diag::parse_smc_diag_msg(&smcr_fixture()).unwrap();
    assert_eq!(s.family, 43);
    assert_eq!(s.flavour(), "AF_SMC");
    assert_eq!(s.state, SmcState::ACTIVE);
    assert_eq!(s.mode, Mode::SmcR);
    assert_eq!(s.local, "10.9.0.1:40000".parse::<SocketAddr>().unwrap());
    assert_eq!(s.peer, "10.9.0.2:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(s.inode, 123_456);
    assert_eq!(s.cookie, 0xdead_beef_0000_0001);
    assert_eq!(s.fallback_reason(), None);
    let l = s.link.as_ref().unwrap();
    assert_eq!(l.ib_device, "rxea");
    assert_eq!(l.ib_port, 1);
    assert_eq!(l.role, "client");
    assert!(l.peer_gid.ends_with("0a09:0002"));
    let c = s.conn.unwrap();
    assert_eq!(c.token, 0x1234);
    assert_eq!(c.tx_sent.count, 299);
    assert_eq!(c.tx_fin.wrap, 3);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["mode"], "SMCR");
    assert_eq!(v["state"], "ACTIVE");
}

#[test]
fn ipproto_smc_fallback_with_zero_addresses() {
    let s = smc_diag::parse_smc_diag_msg(&fallback_fixture()).unwrap();
    assert_eq!(s.flavour(), "IPPROTO_SMC");
    assert_eq!(s.mode, Mode::Fallback);
    assert!(s.addresses_unknown());
    assert_eq!(s.local.port(), 40001);
    assert_eq!(s.fallback_reason(), Some(DeclineCode::OPTUNSUPP));
    assert_eq!(s.fallback_reason().unwrap().to_string(), "OPTUNSUPP");
    assert_eq!(s.uid, 1000);
}

#[test]
fn unknown_codes_modes_and_states_are_named_as_unknown() {
    let id = sockid(1, 2, &[], &[], 0, 0);
    let mut p = smc_diag_msg(43, 99, 7, &id, 0, 1);
    fallback_attr(&mut p, 0x0777_0000, 0x0303_0008);
    put_attr(&mut p, 200, &[1, 2, 3]); // an attribute from a future kernel
    let s = smc_diag::parse_smc_diag_msg(&p).unwrap();
    assert_eq!(s.mode, Mode::Unknown(7));
    assert_eq!(s.state.name(), "unknown(99)");
    let f = s.fallback.unwrap();
    assert_eq!(f.reason.to_string(), "unknown(0x07770000)");
    assert_eq!(f.peer_diagnosis.to_string(), "NOUEID");
}

#[test]
fn ipv6_af_smc_addresses() {
    let src: Ipv6 = "fd00::1".parse().unwrap();
    let dst: Ipv6 = "fd00::2".parse().unwrap();
    let id = sockid(5, 6, &src.octets(), &dst.octets(), 0, 0);
    let s = smc_diag::parse_smc_diag_msg(&smc_diag_msg(43, 1, 0, &id, 0, 1)).unwrap();
    assert_eq!(s.local.ip(), IpAddr::V6(src));
    assert_eq!(s.peer.ip(), IpAddr::V6(dst));
}
type Ipv6 = std::net::Ipv6Addr;

#[test]
fn dump_datagram_of_several_messages() {
    let mut buf = build_msg(20, libc::NLM_F_MULTI as u16, 3, &smcr_fixture());
    buf.extend(build_msg(
        20,
        libc::NLM_F_MULTI as u16,
        3,
        &fallback_fixture(),
    ));
    buf.extend(build_msg(
        netlink::NLMSG_DONE,
        libc::NLM_F_MULTI as u16,
        3,
        &0i32.to_ne_bytes(),
    ));
    let owned: Vec<_> = netlink::messages(&buf)
        .map(|m| {
            let m = m.unwrap();
            netlink::OwnedMsg {
                ty: m.ty,
                flags: m.flags,
                payload: m.payload.to_vec(),
            }
        })
        .collect();
    let socks = smc_diag::parse_dump(&owned).unwrap();
    assert_eq!(socks.len(), 2);
    assert_eq!(socks[1].mode, Mode::Fallback);
}

#[test]
fn genl_family_sys_info_devices_stats() {
    let f = genl::parse_family(&family_fixture()).unwrap();
    assert_eq!(f.id, 0x1f);
    assert_eq!(f.version, 1);
    assert_eq!(f.ops, vec![1, 9, 10, 16]);

    let s = genl::parse_sys_info(&sys_info_fixture()).unwrap();
    assert_eq!(s.smc_version, Some(2));
    assert_eq!(s.smcr_v2_capable, Some(true));
    assert_eq!(s.local_host.as_deref(), Some("envoy-sm"));
    assert_eq!(s.seid, None);

    let d = genl::parse_device(&dev_smcr_fixture(), false)
        .unwrap()
        .unwrap();
    assert_eq!(d.name, "rxea");
    assert_eq!(d.ports.len(), 1);
    assert!(d.ports[0].active);
    assert_eq!(d.ports[0].port, 1);
    assert_eq!(d.ports[0].netdev_ifindex, 3);
    assert_eq!(d.ports[0].link_count, 1);
    // the same message is not an SMC-D device
    assert_eq!(genl::parse_device(&dev_smcr_fixture(), true).unwrap(), None);

    let st = genl::parse_stats(&stats_fixture()).unwrap().unwrap();
    assert_eq!(st.smcr.client_v2_success, 3);
    assert_eq!(st.smcr.server_v2_success, 3);
    assert_eq!(st.smcr.rx_bytes, 4096);
    assert_eq!(st.smcr.tx_bytes, 4097);
    assert_eq!(st.client_handshake_errors, 1);
    assert_eq!(st.server_handshake_errors, 2);
}

#[test]
fn fallback_counters_aggregate_per_side() {
    let entries: Vec<_> = [
        fback_fixture(true, Some((5, 7)), 0x0301_0000, 5),
        fback_fixture(false, None, 0x0306_0000, 4),
        fback_fixture(false, None, 0x0303_0000, 3),
    ]
    .iter()
    .map(|p| genl::parse_fback_entry(p).unwrap().unwrap())
    .collect();
    let agg = aggregate_fback(&entries);
    assert_eq!(agg.server_total, 5);
    assert_eq!(agg.client_total, 7);
    assert_eq!(agg.server[0].reason, DeclineCode::PEERNOSMC);
    assert_eq!(agg.client.len(), 2);
    assert_eq!(agg.client[0].reason, DeclineCode::OPTUNSUPP);
    assert_eq!(agg.client[0].count, 4);
}

#[test]
fn ueids_seid_and_handshake_limitation() {
    assert_eq!(
        genl::parse_ueid(&ueid_fixture("ENVOY-SMC-TEST"))
            .unwrap()
            .as_deref(),
        Some("ENVOY-SMC-TEST")
    );
    let mut a = Vec::new();
    a_u8(&mut a, 1, 1);
    assert_eq!(
        genl::parse_hs_limitation(&genl_msg(16, &a)).unwrap(),
        Some(true)
    );
    assert_eq!(genl::parse_hs_limitation(&genl_msg(16, &[])).unwrap(), None);
    let mut s = Vec::new();
    a_str(&mut s, 1, "IBM-SYSZ-ISMSEID00000000");
    a_u8(&mut s, 2, 1);
    let seid = genl::parse_seid(&genl_msg(13, &s)).unwrap();
    assert_eq!(seid.seid.as_deref(), Some("IBM-SYSZ-ISMSEID00000000"));
    assert_eq!(seid.enabled, Some(true));
}

#[test]
fn ueid_entries_are_checked_like_the_kernel_checks_them() {
    let e = genl::ueid_entry("envoy-smc-test").unwrap();
    assert_eq!(&e[..14], b"ENVOY-SMC-TEST");
    assert!(e[14..32].iter().all(|&c| c == b' '));
    assert_eq!(e[32], 0);
    assert!(genl::ueid_entry("").is_err());
    assert!(genl::ueid_entry("-LEADING").is_err());
    assert!(genl::ueid_entry("A_B").is_err());
    assert!(genl::ueid_entry("A B").is_err());
    assert!(genl::ueid_entry(&"A".repeat(33)).is_err());
    assert!(genl::ueid_entry(&"A".repeat(32)).is_ok());
}

#[test]
fn inet_diag_and_address_filling() {
    let t = inet_diag::parse_inet_diag_msg(&inet_diag_fixture()).unwrap();
    assert_eq!(
        t.local,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 40001)
    );
    assert_eq!(t.inode, 777);
    assert_eq!(t.retransmits, 2);
    let mut socks = vec![smc_diag::parse_smc_diag_msg(&fallback_fixture()).unwrap()];
    assert_eq!(inet_diag::fill_addresses_from(&mut socks, &[t]), 1);
    assert_eq!(
        socks[0].peer,
        "10.9.0.2:8080".parse::<SocketAddr>().unwrap()
    );
    // two candidates: ambiguous, left alone
    let mut socks = vec![smc_diag::parse_smc_diag_msg(&fallback_fixture()).unwrap()];
    let mut t2 = t;
    t2.peer = "10.9.0.3:8080".parse().unwrap();
    assert_eq!(inet_diag::fill_addresses_from(&mut socks, &[t, t2]), 0);
    assert!(socks[0].addresses_unknown());
}

#[test]
fn accepted_by_an_ipproto_smc_listener_is_ipproto_smc_and_gets_its_addresses() {
    // What the kernel sends for a socket accepted by an IPPROTO_SMC listener (measured in the
    // VM): family AF_SMC, zero addresses, the ports right.
    let id = sockid(15006, 55006, &[], &[], 0, 9);
    let p = smc_diag_msg(43, 1, 0, &id, 0, 4242);
    let s = smc_diag::parse_smc_diag_msg(&p).unwrap();
    assert!(s.accepted_by_ipproto_listener());
    assert_eq!(s.flavour(), "IPPROTO_SMC");
    assert!(s.addresses_unknown());
    // its clcsock is IPv6 here: an AF_SMC row matches a TCP socket of either family
    let t = inet_diag::TcpEndpoint {
        state: 1,
        local: "[fd00::2]:15006".parse().unwrap(),
        peer: "[fd00::1]:55006".parse().unwrap(),
        inode: 1,
        retransmits: 0,
    };
    let reverse = inet_diag::TcpEndpoint {
        local: t.peer,
        peer: t.local,
        ..t
    };
    let mut socks = vec![s];
    assert_eq!(inet_diag::fill_addresses_from(&mut socks, &[reverse, t]), 1);
    assert_eq!(socks[0].peer, t.peer);
    assert_eq!(socks[0].local, t.local);
    assert_eq!(socks[0].family, libc::AF_INET6 as u8);
    assert_eq!(socks[0].flavour(), "IPPROTO_SMC");
    assert!(!socks[0].addresses_unknown());

    // An AF_SMC listener on the wildcard address: zero addresses, no peer port, really AF_SMC.
    let id = sockid(15006, 0, &[], &[], 0, 10);
    let l = smc_diag::parse_smc_diag_msg(&smc_diag_msg(43, 10, 0, &id, 0, 4243)).unwrap();
    assert!(!l.accepted_by_ipproto_listener());
    assert_eq!(l.flavour(), "AF_SMC");
    assert!(!l.addresses_unknown());
}

// ---------------------------------------------------------------------------------------------
// malformed input

#[test]
fn truncated_known_attributes_are_errors() {
    let id = sockid(1, 2, &[], &[], 0, 0);
    for (ty, len) in [
        (smc_diag::SMC_DIAG_FALLBACK, 7),
        (smc_diag::SMC_DIAG_CONNINFO, 75),
        (smc_diag::SMC_DIAG_LGRINFO, 146),
        (smc_diag::SMC_DIAG_DMBINFO, 39),
        (smc_diag::SMC_DIAG_SHUTDOWN, 0),
    ] {
        let mut p = smc_diag_msg(43, 1, 0, &id, 0, 1);
        put_attr(&mut p, ty, &vec![0u8; len]);
        let e = smc_diag::parse_smc_diag_msg(&p).unwrap_err();
        assert!(e.to_string().contains("needs"), "{ty}: {e}");
    }
    assert!(smc_diag::parse_smc_diag_msg(&[0u8; 63]).is_err());
    assert!(inet_diag::parse_inet_diag_msg(&[0u8; 71]).is_err());
    assert!(
        genl::parse_family(&genl_msg(1, &[])).is_err(),
        "no family id"
    );
    assert!(genl::genl_body(&[1, 2, 3]).is_err());
}

/// Every parser on `data`; only a panic can fail this.
fn parse_everything(data: &[u8]) {
    let _ = smc_diag::parse_smc_diag_msg(data);
    let _ = inet_diag::parse_inet_diag_msg(data);
    genl::parse_any_genl(data);
    for m in netlink::messages(data).take(64).flatten() {
        let _ = smc_diag::parse_smc_diag_msg(m.payload);
        genl::parse_any_genl(m.payload);
    }
    for a in netlink::attrs(data, "fuzz").take(256) {
        let _ = a.map(|a| (a.uint("x"), a.string()));
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let mut v = vec![
        smcr_fixture(),
        fallback_fixture(),
        dev_smcr_fixture(),
        sys_info_fixture(),
        stats_fixture(),
        fback_fixture(true, Some((1, 2)), 0x0301_0000, 1),
        ueid_fixture("ENVOY-SMC-TEST"),
        family_fixture(),
        inet_diag_fixture(),
    ];
    let framed: Vec<Vec<u8>> = v.iter().map(|p| build_msg(20, 2, 1, p)).collect();
    v.extend(framed);
    v.extend(captured_fixtures().into_iter().map(|(_, b)| b));
    v
}

/// Raw datagrams captured from the 6.12 kernel in the VM (`tests/fixtures/*.bin`).
fn captured_fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|e| e.to_str()) == Some("bin") {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_truncation_of_every_fixture() {
    for f in fixtures() {
        for n in 0..=f.len() {
            parse_everything(&f[..n]);
        }
    }
}

#[test]
fn random_corruptions_of_every_fixture() {
    // xorshift: deterministic, no dependency
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for f in fixtures() {
        for _ in 0..2000 {
            let mut b = f.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let i = (next() as usize) % b.len();
                b[i] = match next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => next() as u8,
                };
            }
            if next() % 4 == 0 {
                let cut = (next() as usize) % (b.len() + 1);
                b.truncate(cut);
            }
            parse_everything(&b);
        }
    }
}

#[test]
fn captured_kernel_replies_parse() {
    for (name, bytes) in captured_fixtures() {
        let mut n = 0;
        for m in netlink::messages(&bytes) {
            let m = m.unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.contains("smc_diag") && m.ty == smc_diag::SOCK_DIAG_BY_FAMILY {
                smc_diag::parse_smc_diag_msg(m.payload).unwrap_or_else(|e| panic!("{name}: {e}"));
                n += 1;
            } else if name.contains("dev_smcr") && m.ty >= 0x10 {
                assert!(
                    genl::parse_device(m.payload, false).unwrap().is_some(),
                    "{name}"
                );
                n += 1;
            } else if m.ty >= 0x10 {
                genl::parse_any_genl(m.payload);
                n += 1;
            }
        }
        assert!(n > 0, "{name}: no message parsed");
    }
}

fn captured(name: &str) -> Vec<Vec<u8>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    netlink::messages(&bytes)
        .map(|m| m.unwrap())
        .filter(|m| m.ty >= 0x10)
        .map(|m| m.payload.to_vec())
        .collect()
}

#[test]
fn captured_replies_say_what_the_vm_had() {
    // tests/vm_smc.rs capture_kernel_replies_as_fixtures: an AF_SMC SMC-R connection and one with
    // the fallback switch, between 10.9.0.1 (rxea) and 10.9.0.2 (rxeb), UEID ENVOY-SMC-TEST.
    let socks: Vec<_> = captured("smc_diag_dump.bin")
        .iter()
        .map(|p| smc_diag::parse_smc_diag_msg(p).unwrap())
        .collect();
    let smcr = socks
        .iter()
        .find(|s| s.mode == Mode::SmcR && s.state == SmcState::ACTIVE && s.link.is_some())
        .expect("an active SMC-R socket");
    assert!(smcr.link.as_ref().unwrap().ib_device.starts_with("rxe"));
    assert_eq!(smcr.family, 43);
    assert!(matches!(smcr.local.ip(), IpAddr::V4(a) if a.octets()[..3] == [10, 9, 0]));
    assert!(socks
        .iter()
        .any(|s| s.fallback_reason() == Some(DeclineCode::OPTUNSUPP)));
    assert!(socks.iter().any(|s| s.state == SmcState::LISTEN));

    let sys = genl::parse_sys_info(&captured("genl_sys_info.bin")[0]).unwrap();
    assert_eq!(sys.smcr_v2_capable, Some(true));
    let devs: Vec<_> = captured("genl_dev_smcr.bin")
        .iter()
        .filter_map(|p| genl::parse_device(p, false).unwrap())
        .collect();
    assert_eq!(devs.len(), 2, "{devs:?}");
    assert!(devs.iter().all(|d| d.ports.iter().any(|p| p.active)));
    let u = genl::parse_ueid(&captured("genl_ueid.bin")[0]).unwrap();
    assert_eq!(u.as_deref(), Some("ENVOY-SMC-TEST"));
    let st = genl::parse_stats(&captured("genl_stats.bin")[0])
        .unwrap()
        .unwrap();
    assert!(st.smcr.client_v2_success >= 1, "{st:?}");
    let fb: Vec<_> = captured("genl_fback_stats.bin")
        .iter()
        .filter_map(|p| genl::parse_fback_entry(p).unwrap())
        .collect();
    assert!(aggregate_fback(&fb)
        .client
        .iter()
        .any(|r| r.reason == DeclineCode::OPTUNSUPP));
    assert_eq!(
        genl::parse_hs_limitation(&captured("genl_hs_limitation.bin")[0]).unwrap(),
        Some(false)
    );
}
