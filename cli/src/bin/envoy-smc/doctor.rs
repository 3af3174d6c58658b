//! `envoy-smc doctor`: is this node ready to carry sidecar traffic over SMC (SMC-R between
//! nodes, SMC-D loopback between pods on this node), and if not, why and what to fix. Exit 0
//! ready (for at least one of the two), 1 not ready.

use std::fs;
use std::path::Path;

use envoy_smc_cli::diag::dibs::{self, SmcdDevice};
use envoy_smc_cli::diag::genl::{SeidInfo, SmcDevice, SysInfo};
use envoy_smc_cli::diag::{smc_diag, DiagError, SmcGenl};
use envoy_smc_core::smc::KernelSupport;
use serde::Serialize;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Read RDMA devices from this directory instead of /sys/class/infiniband (for tests).
    #[arg(long, hide = true, default_value = "/sys/class/infiniband")]
    rdma_sysfs: String,
    /// Read SMC-D devices from this directory instead of /sys/class/dibs (for tests).
    #[arg(long, hide = true, default_value = dibs::DIBS_CLASS)]
    dibs_sysfs: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Status {
    fn tag(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
struct Item {
    name: &'static str,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// One RDMA device as sysfs shows it.
#[derive(Debug, Serialize)]
struct RdmaDevice {
    name: String,
    ports: Vec<RdmaPort>,
}

#[derive(Debug, Serialize)]
struct RdmaPort {
    port: u32,
    state: String,
    link_layer: String,
    /// Whether any GID of the port is RoCE v1 (SMC-Rv1 can use it without a UEID).
    roce_v1: bool,
    roce_v2: bool,
    netdevs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    ready: bool,
    verdict: String,
    kernel: String,
    af_smc: bool,
    ipproto_smc: bool,
    checks: Vec<Item>,
    rdma_devices: Vec<RdmaDevice>,
    smc_sys_info: Option<SysInfo>,
    smcr_devices: Vec<SmcDevice>,
    smcd_devices: Vec<SmcDevice>,
    /// SMC-D devices in sysfs, the loopback one included (`GET_DEV_SMCD` leaves it out).
    smcd_sysfs_devices: Vec<SmcdDevice>,
    /// Pods on this node can reach each other over SMC-D loopback.
    smcd_loopback: bool,
    /// Other nodes can be reached over SMC-R (an active RDMA port).
    smcr_usable: bool,
    ueids: Vec<String>,
    seid: Option<SeidInfo>,
    handshake_limitation: Option<bool>,
    sysctls: Vec<(String, String)>,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn kernel_release() -> String {
    read_trim(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_else(|| "unknown".into())
}

/// (major, minor) of a release string like `6.12.57+deb13-amd64`.
fn kernel_version(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
        || fs::read_to_string("/proc/modules")
            .map(|m| m.lines().any(|l| l.split(' ').next() == Some(name)))
            .unwrap_or(false)
}

/// Whether a module file for `name` exists for the running kernel (so `modprobe` can work).
fn module_available(release: &str, name: &str) -> Option<bool> {
    let dep = fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).ok()?;
    let want = format!("/{name}.ko");
    Some(dep.lines().any(|l| {
        l.split(':')
            .next()
            .map(|f| f.contains(&want))
            .unwrap_or(false)
    }))
}

fn rdma_devices(root: &Path) -> Vec<RdmaDevice> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(root) else {
        return out;
    };
    for d in dir.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let mut ports = Vec::new();
        if let Ok(pdir) = fs::read_dir(d.path().join("ports")) {
            for p in pdir.flatten() {
                let Ok(port) = p.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let pp = p.path();
                // "4: ACTIVE"
                let state = read_trim(&pp.join("state"))
                    .map(|s| s.split(':').nth(1).unwrap_or(&s).trim().to_string())
                    .unwrap_or_else(|| "unknown".into());
                let link_layer = read_trim(&pp.join("link_layer")).unwrap_or_default();
                let (mut v1, mut v2) = (false, false);
                let mut netdevs = Vec::new();
                if let Ok(types) = fs::read_dir(pp.join("gid_attrs/types")) {
                    for t in types.flatten() {
                        match read_trim(&t.path()).as_deref() {
                            Some("RoCE v2") => v2 = true,
                            Some("IB/RoCE v1") if link_layer == "Ethernet" => v1 = true,
                            _ => {}
                        }
                    }
                }
                if let Ok(nd) = fs::read_dir(pp.join("gid_attrs/ndevs")) {
                    for n in nd.flatten() {
                        if let Some(s) = read_trim(&n.path()) {
                            if !s.is_empty() && !netdevs.contains(&s) {
                                netdevs.push(s);
                            }
                        }
                    }
                }
                ports.push(RdmaPort {
                    port,
                    state,
                    link_layer,
                    roce_v1: v1,
                    roce_v2: v2,
                    netdevs,
                });
            }
        }
        ports.sort_by_key(|p| p.port);
        out.push(RdmaDevice { name, ports });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn sysctls() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc/sys/net/smc") {
        for e in dir.flatten() {
            let v = read_trim(&e.path()).unwrap_or_else(|| "?".into());
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                v.replace('\t', " "),
            ));
        }
    }
    out.sort();
    out
}

pub fn run(args: Args) -> u8 {
    let release = kernel_release();
    let support = KernelSupport::probe_now();
    let mut checks = Vec::new();
    let mut push = |name, status, detail: String, fix: Option<String>| {
        checks.push(Item {
            name,
            status,
            detail,
            fix,
        })
    };

    // kernel
    let ver = kernel_version(&release);
    match ver {
        Some(v) if v < (4, 11) => push(
            "kernel",
            Status::Fail,
            format!("Linux {release}: SMC needs 4.11 or later"),
            Some("run a newer kernel (Alibaba Cloud Linux 3 5.10.134-17.3+, or 6.x)".into()),
        ),
        Some(v) if v < (5, 11) => push(
            "kernel",
            Status::Warn,
            format!("Linux {release}: no SMC_GEN_NETLINK before 5.11 (no UEIDs, no statistics)"),
            None,
        ),
        _ => push("kernel", Status::Ok, format!("Linux {release}"), None),
    }

    // socket flavours
    let smc_loaded = module_loaded("smc");
    if support.none() {
        let (why, fix) = if smc_loaded {
            (
                "the smc module is loaded but SMC sockets cannot be opened".to_string(),
                "check the kernel log (dmesg | grep -i smc)".to_string(),
            )
        } else {
            match module_available(&release, "smc") {
                Some(true) => (
                    "the smc module is not loaded".into(),
                    "modprobe smc smc_diag (and add them to /etc/modules-load.d/)".into(),
                ),
                Some(false) => (
                    "this kernel has no smc module (CONFIG_SMC is off)".into(),
                    "run a kernel built with CONFIG_SMC=m and CONFIG_SMC_DIAG=m".into(),
                ),
                None => (
                    "the smc module is not loaded, and /lib/modules has nothing for this kernel \
                     (a container, or a kernel without CONFIG_SMC)"
                        .into(),
                    "on the node: modprobe smc smc_diag, or run a kernel with CONFIG_SMC".into(),
                ),
            }
        };
        push(
            "smc sockets",
            Status::Fail,
            format!("the kernel cannot open AF_SMC or IPPROTO_SMC sockets: {why}"),
            Some(fix),
        );
    } else {
        let mut kinds = Vec::new();
        if support.af_smc {
            kinds.push("AF_SMC");
        }
        if support.ipproto_smc {
            kinds.push("IPPROTO_SMC");
        }
        push(
            "smc sockets",
            Status::Ok,
            format!("can open {}", kinds.join(" and ")),
            None,
        );
        if !support.ipproto_smc {
            push(
                "IPPROTO_SMC",
                Status::Info,
                "IPPROTO_SMC needs Linux 6.11; AF_SMC is used (Envoy listeners then need \
                 enable_reuse_port: false)"
                    .into(),
                None,
            );
        }
    }

    // modules (built-in code shows up in /sys/module only when it has parameters; the functional
    // checks around this one are what decide)
    let diag = smc_diag::dump();
    let diag_loaded = module_loaded("smc_diag");
    let state = |loaded: bool, works: bool| {
        if loaded {
            "loaded"
        } else if works {
            "built in"
        } else {
            "not loaded"
        }
    };
    let (smc_works, diag_works) = (!support.none(), diag.is_ok());
    push(
        "modules",
        if (smc_loaded || smc_works) && (diag_loaded || diag_works) {
            Status::Ok
        } else {
            Status::Info
        },
        format!(
            "smc {}, smc_diag {}",
            state(smc_loaded, smc_works),
            state(diag_loaded, diag_works)
        ),
        None,
    );

    // smc_diag
    match diag {
        Ok(socks) => push(
            "smc_diag",
            Status::Ok,
            format!("answers ({} SMC sockets in this netns)", socks.len()),
            None,
        ),
        Err(e) => {
            let fix = if e.is_unavailable() {
                Some("modprobe smc_diag".to_string())
            } else {
                None
            };
            push(
                "smc_diag",
                Status::Fail,
                format!("{e}; without it envoy-smc cannot tell SMC-R from fallback"),
                fix,
            )
        }
    }

    // SMC-D devices in sysfs: the loopback device carries SMC-D between pods on this node
    let smcd_sysfs = if support.none() {
        Vec::new()
    } else {
        dibs::devices_at(Path::new(&args.dibs_sysfs), Path::new(dibs::SMC_LO_DEVICE))
    };
    let loopback: Vec<&SmcdDevice> = smcd_sysfs.iter().filter(|d| d.loopback).collect();
    let smcd_loopback = !loopback.is_empty();
    if smcd_loopback {
        push(
            "smc-d loopback",
            Status::Ok,
            format!(
                "{}: pods on this node reach each other over SMC-D (shared memory, no RDMA)",
                loopback
                    .iter()
                    .map(|d| match &d.gid {
                        Some(g) => format!("{} gid {g}", d.describe()),
                        None => d.describe(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        );
    } else if !support.none() {
        push(
            "smc-d loopback",
            Status::Info,
            "no SMC-D loopback device (Linux 6.11+ CONFIG_SMC_LO, 7.0+ CONFIG_DIBS_LO): pods on \
             this node reach each other over SMC-R or TCP"
                .into(),
            None,
        );
    }
    // Without RDMA a node with the loopback device still serves SMC-D between its pods.
    let no_rdma = if smcd_loopback {
        Status::Warn
    } else {
        Status::Fail
    };

    // RDMA devices in sysfs
    let rdma = rdma_devices(Path::new(&args.rdma_sysfs));
    let active: Vec<String> = rdma
        .iter()
        .flat_map(|d| {
            d.ports
                .iter()
                .filter(|p| p.state == "ACTIVE")
                .map(move |p| format!("{}/{}", d.name, p.port))
        })
        .collect();
    if rdma.is_empty() {
        push(
            "rdma devices",
            no_rdma,
            "no RDMA devices (nothing in /sys/class/infiniband)".into(),
            Some(
                "load the NIC's RDMA driver (eRDMA: modprobe erdma; Mellanox: mlx5_ib) or, for a \
                 test bed, Soft-RoCE: rdma link add rxe0 type rxe netdev eth0"
                    .into(),
            ),
        );
    } else if active.is_empty() {
        push(
            "rdma devices",
            no_rdma,
            format!(
                "RDMA devices {} have no ACTIVE port",
                rdma.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("bring the devices' network interfaces up".into()),
        );
    } else {
        push(
            "rdma devices",
            Status::Ok,
            format!("active ports: {}", active.join(", ")),
            None,
        );
    }

    // SMC_GEN_NETLINK
    let mut sys_info = None;
    let mut smcr = Vec::new();
    let mut smcd = Vec::new();
    let mut ueids = Vec::new();
    let mut seid = None;
    let mut hs = None;
    match SmcGenl::open() {
        Err(e) => push(
            "SMC_GEN_NETLINK",
            Status::Fail,
            e.to_string(),
            if e.is_unavailable() {
                Some("modprobe smc".into())
            } else {
                None
            },
        ),
        Ok(mut g) => {
            let note = |r: Result<(), DiagError>,
                        push: &mut dyn FnMut(&'static str, Status, String, Option<String>),
                        what| {
                if let Err(e) = r {
                    push(what, Status::Warn, e.to_string(), None);
                }
            };
            match g.sys_info() {
                Ok(s) => {
                    push(
                        "smc version",
                        Status::Info,
                        format!(
                            "SMC v{} release {}, SMC-Rv2 {}",
                            s.smc_version.map(|v| v.to_string()).unwrap_or("?".into()),
                            s.release.map(|v| v.to_string()).unwrap_or("?".into()),
                            match s.smcr_v2_capable {
                                Some(true) => "capable",
                                Some(false) => "not capable",
                                None => "unknown (kernel too old to say)",
                            }
                        ),
                        None,
                    );
                    sys_info = Some(s);
                }
                Err(e) => note(Err(e), &mut push, "smc version"),
            }
            match g.devices(false) {
                Ok(d) => smcr = d,
                Err(e) => note(Err(e), &mut push, "smc-r devices"),
            }
            match g.devices(true) {
                Ok(d) => smcd = d,
                Err(e) => note(Err(e), &mut push, "smc-d devices"),
            }
            let usable: Vec<String> = smcr
                .iter()
                .flat_map(|d| {
                    d.ports.iter().filter(|p| p.active).map(move |p| {
                        let mut s = format!("{}/{}", d.name, p.port);
                        if let Some(n) = &p.netdev {
                            s.push_str(&format!(" ({n})"));
                        }
                        if !p.pnet_id.is_empty() {
                            s.push_str(&format!(" pnetid {}", p.pnet_id));
                        }
                        s
                    })
                })
                .collect();
            if usable.is_empty() && smcd.is_empty() && !smcd_loopback {
                push(
                    "smc devices",
                    Status::Fail,
                    if smcr.is_empty() {
                        "SMC sees no SMC-R or SMC-D device".into()
                    } else {
                        "SMC sees SMC-R devices but none with an active port".into()
                    },
                    Some(
                        "an RDMA device must be up before SMC can use it (see rdma devices above)"
                            .into(),
                    ),
                );
            } else {
                let mut detail = Vec::new();
                if !usable.is_empty() {
                    detail.push(format!("SMC-R: {}", usable.join(", ")));
                }
                if !smcd.is_empty() || smcd_loopback {
                    let mut names: Vec<String> = loopback.iter().map(|d| d.describe()).collect();
                    if !smcd.is_empty() {
                        names.push(format!("{} ISM device(s)", smcd.len()));
                    }
                    detail.push(format!("SMC-D: {}", names.join(", ")));
                }
                if usable.is_empty() {
                    detail.push("no SMC-R device: other nodes are reached over TCP".into());
                }
                push("smc devices", Status::Ok, detail.join("; "), None);
            }
            match g.ueids() {
                Ok(u) => ueids = u,
                Err(e) => note(Err(e), &mut push, "ueid"),
            }
            match g.seid() {
                Ok(s) => seid = Some(s),
                Err(e) => note(Err(e), &mut push, "seid"),
            }
            let seid_on = seid
                .as_ref()
                .map(|s| s.seid.is_some() && s.enabled.unwrap_or(false))
                .unwrap_or(false);
            let any_v1 = rdma.iter().any(|d| d.ports.iter().any(|p| p.roce_v1));
            if !ueids.is_empty() || seid_on {
                let mut d = Vec::new();
                if !ueids.is_empty() {
                    d.push(format!("UEID {}", ueids.join(", ")));
                }
                if seid_on {
                    d.push("SEID enabled".into());
                }
                push(
                    "smc-rv2 eid",
                    Status::Ok,
                    format!("{}: SMC-Rv2 and SMC-Dv2 can be proposed", d.join("; ")),
                    None,
                );
            } else {
                let fix = Some(
                    "envoy-smc ueid add <ID> on every node of the mesh (the same ID everywhere)"
                        .into(),
                );
                if any_v1 {
                    push(
                        "smc-rv2 eid",
                        Status::Warn,
                        "no UEID or SEID: only SMC-Rv1 (RoCE v1 GIDs, same subnet) can be \
                         negotiated"
                            .into(),
                        fix,
                    );
                } else {
                    push(
                        "smc-rv2 eid",
                        Status::Fail,
                        "no UEID or SEID: the kernel will not propose SMC-Rv2, the only version \
                         RoCE v2 devices (eRDMA, Soft-RoCE) carry, nor SMC-D over the loopback \
                         device; connections fall back (NOSMCDEV, PEERDECL)"
                            .into(),
                        fix,
                    );
                }
            }
            match g.hs_limitation() {
                Ok(h) => {
                    hs = h;
                    push(
                        "handshake limitation",
                        Status::Info,
                        match h {
                            Some(true) => {
                                "on (under handshake congestion new connections stay TCP)".into()
                            }
                            Some(false) => "off (per listener: SMC_LIMIT_HS)".into(),
                            None => "not supported by this kernel (5.18+)".into(),
                        },
                        None,
                    );
                }
                Err(e) => note(Err(e), &mut push, "handshake limitation"),
            }
        }
    }

    let (_, agent) = crate::agent_support::summary(ver);
    push("node agent", Status::Info, agent, None);
    let sysctls = sysctls();
    let ready = !checks.iter().any(|c| c.status == Status::Fail);
    let smcr_usable = !active.is_empty() && smcr.iter().any(|d| d.ports.iter().any(|p| p.active));
    let verdict = if ready && smcr_usable && smcd_loopback {
        "ready: this node can carry sidecar traffic over SMC-R to other nodes and over SMC-D \
         between its own pods"
            .to_string()
    } else if ready && smcr_usable {
        "ready: this node can carry sidecar traffic over SMC-R".to_string()
    } else if ready {
        "ready for SMC-D between pods on this node only: no usable RDMA device, so connections \
         to other nodes stay TCP"
            .to_string()
    } else {
        let why: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        format!("NOT READY: {} (connections stay TCP)", why.join(", "))
    };
    let report = Report {
        ready,
        verdict,
        kernel: release,
        af_smc: support.af_smc,
        ipproto_smc: support.ipproto_smc,
        checks,
        rdma_devices: rdma,
        smc_sys_info: sys_info,
        smcr_devices: smcr,
        smcd_devices: smcd,
        smcd_sysfs_devices: smcd_sysfs,
        smcd_loopback,
        smcr_usable,
        ueids,
        seid,
        handshake_limitation: hs,
        sysctls,
    };

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for c in &report.checks {
            println!("[{:>4}] {:<20} {}", c.status.tag(), c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("       {:<20} fix: {f}", "");
            }
        }
        if !report.sysctls.is_empty() {
            let s: Vec<String> = report
                .sysctls
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("[info] {:<20} net.smc: {}", "sysctls", s.join(" "));
        }
        println!("{}", report.verdict);
    }
    if report.ready {
        exit::OK
    } else {
        exit::NEGATIVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.12.57+deb13-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("5.10.134-17.3.al8.x86_64"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
