//! Per-destination decisions on kernels with the `smc_hs_ctrl` struct_ops (Linux 6.19+,
//! `CONFIG_SMC_HS_CTRL_BPF`): `src/bpf/hs_ctrl.bpf.c` tells the kernel, for every SYN of an SMC
//! connect, whether to offer SMC (TCP option 254). The agent registers it under a name of its
//! own, fills its maps from the compiled configuration (allow/deny CIDRs and ports) and the
//! destinations held after a proven black hole, and selects it in the selected pods' network
//! namespaces by writing that name to `net.smc.hs_ctrl` there.
//!
//! The kernel registers this struct_ops only without a BPF link (`reg` refuses one), so the
//! registration outlives the agent's process if it dies without cleaning up: the name carries the
//! agent's pid so that a restarted agent can register its own. On a clean exit (drop) the agent
//! gives each namespace back the value it found, then unregisters.
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use envoy_smc_core::config;

mod skel {
    // The skeleton libbpf-cargo generated from src/bpf/hs_ctrl.bpf.c (build.rs).
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::undocumented_unsafe_blocks,
        dead_code,
        missing_docs,
        unsafe_op_in_unsafe_fn,
        unused_qualifications
    )]
    include!(concat!(env!("OUT_DIR"), "/hs_ctrl.skel.rs"));
}
use skel::{HsCtrlSkel, HsCtrlSkelBuilder};

/// The per-netns selector the kernel reads.
const SYSCTL: &str = "/proc/sys/net/smc/hs_ctrl";
const PORT_DENY: u8 = 1;
const PORT_ALLOW: u8 = 2;
const RULE_ALLOW_ADDRS: u32 = 1;
const RULE_ALLOW_PORTS: u32 = 2;
/// The decision counters of the BPF program, by index.
pub const DECISIONS: [&str; 7] = [
    "offered",
    "loopback",
    "denied_address",
    "address_not_allowed",
    "denied_port",
    "port_not_allowed",
    "held",
];

/// Whether this kernel has the smc_hs_ctrl struct_ops (vmlinux, or the smc module's BTF).
pub fn kernel_has_hs_ctrl() -> bool {
    let has = |name: &str| {
        std::fs::read(Path::new("/sys/kernel/btf").join(name))
            .map(|b| b.windows(12).any(|w| w == b"smc_hs_ctrl\0"))
            .unwrap_or(false)
    };
    has("vmlinux") || has("smc")
}

/// The upstream rules of the configuration, as the BPF program applies them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rules {
    pub allow: Vec<config::Cidr>,
    pub deny: Vec<config::Cidr>,
    pub allow_ports: Vec<config::PortRange>,
    pub deny_ports: Vec<config::PortRange>,
}

impl Rules {
    /// From the compiled configuration, the one the policy of every entry point consumes.
    pub fn from_config(c: &config::Config) -> Rules {
        Rules {
            allow: c.allow.clone(),
            deny: c.deny.clone(),
            allow_ports: c.allow_ports.clone(),
            deny_ports: c.deny_ports.clone(),
        }
    }
}

pub struct HsCtrl {
    // Field order matters: the registration is dropped (unregistered) before the skeleton.
    link: Option<Link>,
    skel: HsCtrlSkel<'static>,
    name: String,
    /// Namespaces whose sysctl this agent set: inode -> (a pid in it, the value found there).
    selected_in: BTreeMap<u64, (i32, String)>,
    proc: PathBuf,
}

impl HsCtrl {
    /// Loads the program and registers the struct_ops as `name` (at most 15 characters:
    /// letters, digits, `_`). Selects it in no namespace yet.
    pub fn register(name: &str, proc: PathBuf) -> Result<HsCtrl, String> {
        if name.is_empty() || name.len() > 15 {
            return Err(format!("smc_hs_ctrl name {name:?}: 1 to 15 characters"));
        }
        // Leaked once per registration, like the converter's: the skeleton borrows it.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = HsCtrlSkelBuilder::default()
            .open(storage)
            .map_err(|e| format!("opening the smc_hs_ctrl BPF object: {e}"))?;
        let ops = open.struct_ops.envoy_smc_hs_mut();
        ops.name = [0; 16];
        for (d, s) in ops.name.iter_mut().zip(name.bytes()) {
            *d = s as i8;
        }
        let mut skel = open.load().map_err(|e| {
            format!("loading the smc_hs_ctrl program (Linux 6.19+, CONFIG_SMC_HS_CTRL_BPF): {e}")
        })?;
        let link = skel
            .maps
            .envoy_smc_hs
            .attach_struct_ops()
            .map_err(|e| format!("registering smc_hs_ctrl {name:?}: {e}"))?;
        Ok(HsCtrl {
            link: Some(link),
            skel,
            name: name.to_string(),
            selected_in: BTreeMap::new(),
            proc,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the configuration's rules into the program's maps.
    pub fn set_rules(&self, rules: &Rules) -> Result<(), String> {
        let m = &self.skel.maps;
        let err = |what: &str, e: libbpf_rs::Error| format!("smc_hs_ctrl map {what}: {e}");
        for (cidrs, v4, v6) in [
            (&rules.deny, &m.deny_v4, &m.deny_v6),
            (&rules.allow, &m.allow_v4, &m.allow_v6),
        ] {
            for c in cidrs {
                // The prefix's first address (host bits cleared), in network byte order.
                let (_, first, _) = c.range();
                let (key, map) = match *c {
                    config::Cidr::V4 { prefix, .. } => {
                        let mut k = u32::from(prefix).to_ne_bytes().to_vec();
                        k.extend((first as u32).to_be_bytes());
                        (k, v4)
                    }
                    config::Cidr::V6 { prefix, .. } => {
                        let mut k = u32::from(prefix).to_ne_bytes().to_vec();
                        k.extend(first.to_be_bytes());
                        (k, v6)
                    }
                };
                map.update(&key, &[1], MapFlags::ANY)
                    .map_err(|e| err("cidrs", e))?;
            }
        }
        let mut bits = vec![0u8; 65536];
        for (ranges, bit) in [
            (&rules.deny_ports, PORT_DENY),
            (&rules.allow_ports, PORT_ALLOW),
        ] {
            for r in ranges {
                for p in r.first..=r.last {
                    bits[usize::from(p)] |= bit;
                }
            }
        }
        for (p, b) in bits.iter().enumerate().filter(|(_, b)| **b != 0) {
            m.ports
                .update(&(p as u32).to_ne_bytes(), &[*b], MapFlags::ANY)
                .map_err(|e| err("ports", e))?;
        }
        let mut rule_bits = 0u32;
        if !rules.allow.is_empty() {
            rule_bits |= RULE_ALLOW_ADDRS;
        }
        if !rules.allow_ports.is_empty() {
            rule_bits |= RULE_ALLOW_PORTS;
        }
        m.rules
            .update(&0u32.to_ne_bytes(), &rule_bits.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| err("rules", e))
    }

    /// Stops offering SMC to `dest` until `until` (CLOCK_MONOTONIC).
    pub fn hold(&self, dest: SocketAddr, until: std::time::Duration) -> Result<(), String> {
        let until_ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.skel
            .maps
            .held
            .update(&dest_key(dest), &until_ns.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| format!("holding {dest}: {e}"))
    }

    /// Offers SMC to `dest` again.
    pub fn release(&self, dest: SocketAddr) -> Result<(), String> {
        match self.skel.maps.held.delete(&dest_key(dest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("releasing {dest}: {e}")),
        }
    }

    /// The decision counters, by name.
    pub fn decisions(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (i, name) in DECISIONS.iter().enumerate() {
            let v = self
                .skel
                .maps
                .decided
                .lookup(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(0);
            out.insert((*name).to_string(), v);
        }
        out
    }

    /// Makes `net.smc.hs_ctrl` name this struct_ops in exactly the namespaces of `pods` (a pid
    /// per namespace, by namespace inode); namespaces no longer wanted get their value back.
    /// Returns the namespaces it could not set, with the reason.
    pub fn select_in(&mut self, pods: &BTreeMap<u64, i32>) -> BTreeMap<u64, String> {
        let mut failed = BTreeMap::new();
        let gone: Vec<u64> = self
            .selected_in
            .keys()
            .filter(|ns| !pods.contains_key(ns))
            .copied()
            .collect();
        for ns in gone {
            if let Some((pid, prev)) = self.selected_in.remove(&ns) {
                // The namespace may be gone with its pod: nothing to give back then.
                let _ = self.restore(ns, pid, &prev);
            }
        }
        for (&ns, &pid) in pods {
            if self.selected_in.contains_key(&ns) {
                continue;
            }
            match in_netns(&self.proc, ns, pid, || swap_sysctl(&self.name)) {
                Ok(prev) => {
                    self.selected_in.insert(ns, (pid, prev));
                }
                Err(e) => {
                    failed.insert(ns, e);
                }
            }
        }
        failed
    }

    /// The namespaces (inodes) where this struct_ops is selected.
    pub fn namespaces(&self) -> Vec<u64> {
        self.selected_in.keys().copied().collect()
    }

    fn restore(&self, ns: u64, pid: i32, prev: &str) -> Result<(), String> {
        let name = self.name.clone();
        let prev = prev.to_string();
        in_netns(&self.proc, ns, pid, move || {
            // Only if it still names us: someone else may have chosen another since.
            if read_sysctl()?.trim() == name {
                write_sysctl(&prev)
                    .or_else(|_| write_sysctl(""))
                    .map(|_| String::new())
            } else {
                Ok(String::new())
            }
        })
        .map(|_| ())
    }

    /// Gives every namespace back its value, then unregisters the struct_ops.
    pub fn withdraw(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for (ns, (pid, prev)) in std::mem::take(&mut self.selected_in) {
            if let Err(e) = self.restore(ns, pid, &prev) {
                errors.push(format!("net:[{ns}]: {e}"));
            }
        }
        // Dropping the registration deletes the struct_ops map's element: the kernel
        // unregisters it (a namespace still naming it keeps it alive until its sysctl changes).
        self.link.take();
        errors
    }
}

impl Drop for HsCtrl {
    fn drop(&mut self) {
        for e in self.withdraw() {
            eprintln!("envoy-smc-agent: smc_hs_ctrl: {e}");
        }
    }
}

/// The BPF map key of a destination: the address as IPv6 (IPv4-mapped for IPv4), the port in
/// network byte order, two bytes of padding.
fn dest_key(dest: SocketAddr) -> [u8; 20] {
    let v6 = match config::canonical(dest.ip()) {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&v6.octets());
    k[16..18].copy_from_slice(&dest.port().to_be_bytes());
    k
}

fn read_sysctl() -> Result<String, String> {
    std::fs::read_to_string(SYSCTL).map_err(|e| format!("{SYSCTL}: {e}"))
}

fn write_sysctl(v: &str) -> Result<(), String> {
    std::fs::write(SYSCTL, format!("{v}\n")).map_err(|e| format!("writing {v:?} to {SYSCTL}: {e}"))
}

/// Sets this namespace's hs_ctrl to `name`; returns the value it had.
fn swap_sysctl(name: &str) -> Result<String, String> {
    let prev = read_sysctl()?.trim().to_string();
    write_sysctl(name)?;
    Ok(prev)
}

/// The network namespace inode of `pid` (under `proc`).
pub fn netns_of(proc: &Path, pid: i32) -> Option<u64> {
    std::fs::metadata(proc.join(pid.to_string()).join("ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Runs `f` in network namespace `ns` (entered through `pid`): directly when it is the agent's
/// own, else on a helper thread that setns-es into it (needs CAP_SYS_ADMIN).
pub fn in_netns<T: Send>(
    proc: &Path,
    ns: u64,
    pid: i32,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    if netns_of(proc, std::process::id() as i32) == Some(ns) {
        return f();
    }
    let target = envoy_smc_cli::diag::netns::Netns {
        inode: ns,
        pids: vec![pid as u32],
    };
    match envoy_smc_cli::diag::netns::enter(proc, &target, f) {
        Ok((r, _)) => r,
        // `e` names the namespace and, for EPERM, the capability it needs (CAP_SYS_ADMIN).
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_keys_match_the_bpf_layout() {
        // struct dest_key: addr[4] (IPv4 as IPv4-mapped IPv6), port in network byte order, pad.
        let k = dest_key("10.9.0.2:8080".parse().unwrap());
        let mut want = [0u8; 20];
        want[10] = 0xff;
        want[11] = 0xff;
        want[12..16].copy_from_slice(&[10, 9, 0, 2]);
        want[16..18].copy_from_slice(&[0x1f, 0x90]);
        assert_eq!(k, want);
        // an IPv4-mapped IPv6 destination is the same destination
        assert_eq!(dest_key("[::ffff:10.9.0.2]:8080".parse().unwrap()), k);
        let k6 = dest_key("[fd00::1]:443".parse().unwrap());
        assert_eq!(k6[0], 0xfd);
        assert_eq!(k6[15], 1);
        assert_eq!(&k6[16..18], &443u16.to_be_bytes());
    }

    #[test]
    fn rules_come_from_the_configuration_and_bad_ones_are_refused() {
        let c = envoy_smc_core::config::from_yaml(
            "upstream:\n  allow: [\"10.9.0.0/24\"]\n  deny: [\"10.9.0.3/32\"]\n  deny_ports: [\"9999\", \"7000-7010\"]\n",
        )
        .unwrap();
        let r = Rules::from_config(&c);
        assert_eq!(r.allow.len(), 1);
        assert_eq!(r.deny, vec![config::parse_cidr("10.9.0.3/32").unwrap()]);
        assert_eq!(r.deny_ports.len(), 2);
        assert!(r.allow_ports.is_empty());
        let bad = envoy_smc_core::config::from_yaml("upstream:\n  deny: [\"10.9.0.300/32\"]\n");
        assert!(
            bad.is_err(),
            "an invalid CIDR is refused when the file is read"
        );
    }
}
