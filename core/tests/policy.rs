//! Every rule of the policy and their precedence, with the kernel's capabilities injected (this
//! host has no SMC; the decisions themselves need no kernel).

use std::net::SocketAddr;

use envoy_smc_core::config;
use envoy_smc_core::policy::{Environment, Policy, SocketFacts, TcpReason, Verdict};
use envoy_smc_core::smc::{KernelSupport, SocketKind};

const BOTH: KernelSupport = KernelSupport {
    af_smc: true,
    ipproto_smc: true,
};
const AF_ONLY: KernelSupport = KernelSupport {
    af_smc: true,
    ipproto_smc: false,
};
const NONE: KernelSupport = KernelSupport {
    af_smc: false,
    ipproto_smc: false,
};

const MESH: &str = r#"
opt_in: {all_workloads: true}
listeners: {ports: [15006], limit_handshake: true}
upstream:
  allow: ["10.0.0.0/8", "fd00::/8"]
  deny: ["10.96.0.0/12"]
  allow_ports: ["8000-9000"]
  deny_ports: ["8500"]
"#;

fn policy_with(text: &str, kernel: KernelSupport, local: &[&str]) -> Policy {
    let env = Environment {
        kernel: Some(kernel),
        local_addrs: local.iter().map(|a| a.parse().unwrap()).collect(),
        annotations: vec![],
    };
    Policy::new(&config::from_yaml(text).unwrap(), &env)
}

fn policy(text: &str) -> Policy {
    policy_with(text, BOTH, &["10.1.2.3"])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Facts of a socket on which Envoy set the given (level, name, value) options.
fn facts(p: &Policy, opts: &[(i32, i32, i32)]) -> SocketFacts {
    opts.iter().fold(SocketFacts::default(), |f, &(l, n, v)| {
        p.note_sockopt(f, l, n, v)
    })
}

const SWITCH: (i32, i32, i32) = (1, 18, 1);
const KEEP_TCP: (i32, i32, i32) = (6, 30, 0);
const REUSEPORT: (i32, i32, i32) = (1, 15, 1);
const SMC: Verdict = Verdict::Smc {
    kind: SocketKind::IpprotoSmc,
    limit_hs: false,
};

#[test]
fn allowed_destination_of_a_switched_on_cluster_gets_smc() {
    let p = policy(MESH);
    let on = facts(&p, &[SWITCH]);
    assert_eq!(p.before_connect(addr("10.4.5.6:8080"), on), SMC);
    assert_eq!(p.before_connect(addr("[fd00::5]:8080"), on), SMC);
    // IPv4-mapped IPv6 destinations are matched as IPv4.
    assert_eq!(p.before_connect(addr("[::ffff:10.4.5.6]:8080"), on), SMC);
}

#[test]
fn each_connect_rule_gives_its_reason() {
    let p = policy(MESH);
    let on = facts(&p, &[SWITCH]);
    let cases = [
        ("127.0.0.1:8080", on, TcpReason::Loopback),
        ("[::1]:8080", on, TcpReason::Loopback),
        ("0.0.0.0:8080", on, TcpReason::Loopback),
        ("10.1.2.3:8080", on, TcpReason::LocalAddress),
        ("10.96.0.10:8080", on, TcpReason::DeniedAddress),
        ("192.168.1.1:8080", on, TcpReason::AddressNotAllowed),
        ("[fe80::1]:8080", on, TcpReason::AddressNotAllowed),
        ("10.4.5.6:8500", on, TcpReason::DeniedPort),
        ("10.4.5.6:443", on, TcpReason::PortNotAllowed),
        (
            "10.4.5.6:8080",
            SocketFacts::default(),
            TcpReason::MeshSwitchAbsent,
        ),
        (
            "10.4.5.6:8080",
            facts(&p, &[SWITCH, KEEP_TCP]),
            TcpReason::KeptOnTcp,
        ),
        (
            "10.4.5.6:8080",
            facts(&p, &[SWITCH, (6, 30, 1)]),
            TcpReason::FastOpen,
        ),
        (
            "10.4.5.6:8080",
            facts(&p, &[SWITCH, (6, 23, 5)]),
            TcpReason::FastOpen,
        ),
    ];
    for (dest, f, reason) in cases {
        assert_eq!(
            p.before_connect(addr(dest), f),
            Verdict::Tcp(reason),
            "{dest} {f:?}"
        );
    }
}

#[test]
fn connect_precedence() {
    let p = policy(MESH);
    // Per-cluster fallback beats everything about the destination, and the switch.
    let keep = facts(&p, &[KEEP_TCP]);
    assert_eq!(
        p.before_connect(addr("127.0.0.1:1"), keep),
        Verdict::Tcp(TcpReason::KeptOnTcp)
    );
    // No switch beats address rules.
    assert_eq!(
        p.before_connect(addr("127.0.0.1:1"), SocketFacts::default()),
        Verdict::Tcp(TcpReason::MeshSwitchAbsent)
    );
    let on = facts(&p, &[SWITCH]);
    // Loopback beats local beats deny beats allow; address rules beat port rules.
    assert_eq!(
        p.before_connect(addr("10.96.0.1:8500"), on),
        Verdict::Tcp(TcpReason::DeniedAddress)
    );
    assert_eq!(
        p.before_connect(addr("192.168.0.1:8500"), on),
        Verdict::Tcp(TcpReason::AddressNotAllowed)
    );
    // Process-wide reasons beat per-socket ones.
    let off = policy_with(&format!("{MESH}\nmode: MODE_OFF"), BOTH, &[]);
    assert_eq!(
        off.before_connect(addr("10.4.5.6:8080"), keep),
        Verdict::Tcp(TcpReason::Disabled)
    );
    let nokernel = policy_with(MESH, NONE, &[]);
    assert_eq!(
        nokernel.before_connect(addr("10.4.5.6:8080"), on),
        Verdict::Tcp(TcpReason::KernelLacksSmc)
    );
}

#[test]
fn empty_allow_lists_allow_everything_not_denied() {
    let p = policy("opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}");
    let none = SocketFacts::default();
    assert_eq!(p.before_connect(addr("203.0.113.9:443"), none), SMC);
    assert_eq!(
        p.before_connect(addr("10.1.2.3:443"), none),
        Verdict::Tcp(TcpReason::LocalAddress)
    );
    let p = policy("opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}\nupstream: {allow_local: true}");
    assert_eq!(p.before_connect(addr("10.1.2.3:443"), none), SMC);
    assert_eq!(
        p.before_connect(addr("127.0.0.1:443"), none),
        Verdict::Tcp(TcpReason::Loopback)
    );
}

#[test]
fn listener_rules() {
    let p = policy(MESH);
    let on = facts(&p, &[SWITCH, REUSEPORT]);
    let smc_hs = Verdict::Smc {
        kind: SocketKind::IpprotoSmc,
        limit_hs: true,
    };
    assert_eq!(p.before_listen(addr("0.0.0.0:15006"), on), smc_hs);
    assert_eq!(p.before_listen(addr("10.1.2.3:15006"), on), smc_hs);
    assert_eq!(
        p.before_listen(addr("0.0.0.0:15001"), on),
        Verdict::Tcp(TcpReason::ListenerNotSelected)
    );
    assert_eq!(
        p.before_listen(addr("127.0.0.1:15006"), on),
        Verdict::Tcp(TcpReason::Loopback)
    );
    assert_eq!(
        p.before_listen(addr("0.0.0.0:15006"), facts(&p, &[SWITCH, (6, 23, 128)])),
        Verdict::Tcp(TcpReason::FastOpen)
    );
    // Not selected wins over everything per-socket.
    assert_eq!(
        p.before_listen(addr("127.0.0.1:9"), SocketFacts::default()),
        Verdict::Tcp(TcpReason::ListenerNotSelected)
    );
}

#[test]
fn listeners_are_decided_by_port_alone_never_by_a_switch_option() {
    // No listener option can reach Envoy live (a changed listener option is a rejected LDS
    // update with enable_reuse_port: false, new sockets otherwise), so none is read: the switch,
    // the keep-TCP option and SO_REUSEPORT all leave the verdict as it is.
    let p = policy(MESH);
    let bare = p.before_listen(addr("0.0.0.0:15006"), SocketFacts::default());
    assert!(bare.is_smc(), "{bare:?}");
    for opts in [
        &[SWITCH][..],
        &[KEEP_TCP],
        &[SWITCH, KEEP_TCP],
        &[REUSEPORT],
        &[REUSEPORT, (1, 15, 0)],
    ] {
        assert_eq!(
            p.before_listen(addr("0.0.0.0:15006"), facts(&p, opts)),
            bare,
            "{opts:?}"
        );
    }
    // AF_SMC too: a listener with SO_REUSEPORT (Envoy's default) is shared by its fds.
    let af = policy_with(&format!("{MESH}\nmode: MODE_AF_SMC"), BOTH, &[]);
    assert_eq!(
        af.before_listen(addr("0.0.0.0:15006"), facts(&af, &[REUSEPORT])),
        Verdict::Smc {
            kind: SocketKind::AfSmc,
            limit_hs: true
        }
    );
    // A workload that has not opted in keeps every listener on TCP.
    let out = policy_with(
        "listeners: {ports: [15006]}\nmesh_switch: {always_on: true}",
        BOTH,
        &[],
    );
    assert_eq!(
        out.before_listen(addr("0.0.0.0:15006"), SocketFacts::default()),
        Verdict::Tcp(TcpReason::NotOptedIn)
    );
}

#[test]
fn mode_resolution_against_the_kernel() {
    let cases = [
        ("AUTO", BOTH, Ok(SocketKind::IpprotoSmc)),
        ("AUTO", AF_ONLY, Ok(SocketKind::AfSmc)),
        ("AUTO", NONE, Err(TcpReason::KernelLacksSmc)),
        ("AF_SMC", BOTH, Ok(SocketKind::AfSmc)),
        ("AF_SMC", NONE, Err(TcpReason::KernelLacksSmc)),
        ("IPPROTO_SMC", BOTH, Ok(SocketKind::IpprotoSmc)),
        ("IPPROTO_SMC", AF_ONLY, Err(TcpReason::KernelLacksSmc)),
        ("OFF", BOTH, Err(TcpReason::Disabled)),
    ];
    for (mode, kernel, want) in cases {
        let p = policy_with(&format!("{MESH}\nmode: MODE_{mode}"), kernel, &[]);
        assert_eq!(p.smc_kind(), want, "{mode} {kernel:?}");
    }
}

#[test]
fn opt_in_sources_and_precedence() {
    let env = |ann: &[(&str, &str)]| Environment {
        kernel: Some(BOTH),
        local_addrs: vec![],
        annotations: ann
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let build =
        |text: &str, e: &Environment| Policy::new(&config::from_yaml(text).unwrap(), e).smc_kind();
    let key = config::DEFAULT_OPT_IN_ANNOTATION;
    // No opt-in section: the default annotation must be "true" somewhere.
    assert_eq!(build("", &env(&[])), Err(TcpReason::NotOptedIn));
    assert_eq!(
        build("", &env(&[(key, "true")])),
        Ok(SocketKind::IpprotoSmc)
    );
    assert_eq!(
        build("", &env(&[(key, "TRUE")])),
        Ok(SocketKind::IpprotoSmc)
    );
    assert_eq!(
        build("", &env(&[(key, "false")])),
        Err(TcpReason::NotOptedIn)
    );
    assert_eq!(
        build("", &env(&[("other", "true")])),
        Err(TcpReason::NotOptedIn)
    );
    // A custom annotation name.
    assert_eq!(
        build("opt_in: {annotation: a/b}", &env(&[("a/b", "true")])),
        Ok(SocketKind::IpprotoSmc)
    );
    assert_eq!(
        build("opt_in: {annotation: a/b}", &env(&[(key, "true")])),
        Err(TcpReason::NotOptedIn)
    );
    // Annotations in the config win over the environment's.
    let text = format!("opt_in: {{annotations: {{\"{key}\": \"false\"}}}}");
    assert_eq!(
        build(&text, &env(&[(key, "true")])),
        Err(TcpReason::NotOptedIn)
    );
    // The downward-API file.
    let dir = std::env::temp_dir().join(format!("envoy-smc-optin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("annotations");
    std::fs::write(
        &file,
        format!("kubectl.kubernetes.io/restartedAt=\"x\"\n{key}=\"true\"\n"),
    )
    .unwrap();
    let text = format!("opt_in: {{annotations_file: {}}}", file.display());
    assert_eq!(build(&text, &env(&[])), Ok(SocketKind::IpprotoSmc));
    std::fs::write(&file, format!("{key}=\"false\"\n")).unwrap();
    assert_eq!(
        build(&text, &env(&[(key, "true")])),
        Err(TcpReason::NotOptedIn)
    );
    // A missing file is "no annotations".
    let text = "opt_in: {annotations_file: /nonexistent/annotations}";
    assert_eq!(build(text, &env(&[])), Err(TcpReason::NotOptedIn));
    assert_eq!(
        build("opt_in: {all_workloads: true}", &env(&[])),
        Ok(SocketKind::IpprotoSmc)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn socket_time_rules() {
    let p = policy(MESH);
    let inet = libc::AF_INET;
    let stream = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    assert_eq!(p.at_socket(inet, stream, 0, None), Ok(()));
    assert_eq!(
        p.at_socket(
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
            Some("fd00::1".parse().unwrap())
        ),
        Ok(())
    );
    assert_eq!(
        p.at_socket(inet, stream, 0, Some("127.0.0.1".parse().unwrap())),
        Err(TcpReason::Loopback)
    );
    assert_eq!(
        p.at_socket(inet, libc::SOCK_DGRAM, 0, None),
        Err(TcpReason::NotIpStream)
    );
    assert_eq!(
        p.at_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0, None),
        Err(TcpReason::NotIpStream)
    );
    assert_eq!(
        p.at_socket(inet, libc::SOCK_STREAM, libc::IPPROTO_SCTP, None),
        Err(TcpReason::NotIpStream)
    );
    let off = policy_with("mode: MODE_OFF", BOTH, &[]);
    assert_eq!(
        off.at_socket(inet, stream, 0, None),
        Err(TcpReason::Disabled)
    );
}

#[test]
fn custom_switch_options() {
    let p = policy("opt_in: {all_workloads: true}\nmesh_switch: {enable_option: {level: 1, name: 36, int_value: 7}, keep_tcp_option: {level: 1, name: 36, int_value: 8}}");
    assert_eq!(
        p.before_connect(addr("10.4.5.6:1"), facts(&p, &[(1, 36, 7)])),
        SMC
    );
    assert_eq!(
        p.before_connect(addr("10.4.5.6:1"), facts(&p, &[(1, 36, 6)])),
        Verdict::Tcp(TcpReason::MeshSwitchAbsent)
    );
    assert_eq!(
        p.before_connect(addr("10.4.5.6:1"), facts(&p, &[(1, 36, 7), (1, 36, 8)])),
        Verdict::Tcp(TcpReason::KeptOnTcp)
    );
    // The defaults no longer count.
    assert_eq!(
        p.before_connect(addr("10.4.5.6:1"), facts(&p, &[SWITCH])),
        Verdict::Tcp(TcpReason::MeshSwitchAbsent)
    );
}

/// An option whose value holds a pointer or an fd (a socket filter, a BPF program) cannot be
/// given to a replacement socket: a socket carrying one stays as it is (`options_not_carried`).
#[test]
fn a_socket_with_a_filter_attached_stays_as_it_is() {
    let rt = envoy_smc_core::Runtime::new(
        &envoy_smc_core::config::from_yaml(
            "opt_in: {all_workloads: true}\nmesh_switch: {always_on: true}",
        )
        .unwrap(),
        &envoy_smc_core::policy::Environment::assuming(envoy_smc_core::smc::KernelSupport::BOTH),
    );
    let remote = "10.1.2.3:8080".parse().unwrap();
    let plain = envoy_smc_core::policy::SocketFacts::default();
    assert!(rt.decide_connect(remote, plain).is_smc());
    for name in [
        libc::SO_ATTACH_FILTER,
        libc::SO_ATTACH_BPF,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        libc::SO_ATTACH_REUSEPORT_EBPF,
    ] {
        let facts = rt.note_sockopt(plain, libc::SOL_SOCKET, name, &[0; 16]);
        assert_eq!(
            rt.decide_connect(remote, facts),
            envoy_smc_core::Verdict::Tcp(envoy_smc_core::TcpReason::OptionsNotCarried),
            "option {name}"
        );
    }
}
