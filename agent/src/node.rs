//! `envoy-smc-agent check`: what this node lets the agent do.
use std::path::Path;

use crate::bpf::Converter;

/// The kernel's BTF of `name` (vmlinux or a module) mentions `needle`: a cheap presence test for
/// a type, without parsing BTF.
fn btf_mentions(name: &str, needle: &[u8]) -> bool {
    std::fs::read(Path::new("/sys/kernel/btf").join(name))
        .map(|b| b.windows(needle.len()).any(|w| w == needle))
        .unwrap_or(false)
}

pub fn check() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel                 {}", release.trim());
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    println!(
        "kernel BTF             {}",
        if btf {
            "yes (/sys/kernel/btf/vmlinux)"
        } else {
            "NO: the agent needs CONFIG_DEBUG_INFO_BTF"
        }
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = crate::select::cgroup2_mount(&mountinfo);
    match &cgroup2 {
        Some(p) => println!("cgroup v2              yes ({})", p.display()),
        None => {
            println!("cgroup v2              NO: not mounted; pods are keyed by their cgroup v2 id")
        }
    }
    // Attached and detached again at once (the converter is dropped): no socket is touched.
    let attached = match Converter::attach() {
        Ok(_) => {
            println!(
                "fmod_ret on update_socket_protocol   yes (loaded, attached and detached again)"
            );
            true
        }
        Err(e) => {
            println!("fmod_ret on update_socket_protocol   NO: {e}");
            false
        }
    };
    // smc_hs_ctrl (Linux 6.19+) lives in the smc module's BTF when SMC is a module.
    let hs_ctrl =
        btf_mentions("vmlinux", b"smc_hs_ctrl\0") || btf_mentions("smc", b"smc_hs_ctrl\0");
    println!(
        "smc_hs_ctrl            {}",
        if hs_ctrl {
            "present (this agent does not use it yet)"
        } else {
            "absent"
        }
    );
    println!(
        "per-destination choice NO: the decision is per pod at socket(), before the destination is known; \
         loopback and non-SMC peers fall back by themselves, clusters with the keep-TCP option fall back (OPTUNSUPP)"
    );
    println!(
        "black-hole rescue      NO: nothing runs in the proxy, and without smc_hs_ctrl the agent cannot stop offering \
         SMC to one destination; a connect stuck behind a path that drops SMC's SYN option waits for the proxy's \
         connect timeout (use the preload library or the native extension where that matters)"
    );
    if !btf {
        return Err("this node cannot run the agent".into());
    }
    if cgroup2.is_none() {
        return Err("this node cannot run the agent: no cgroup2 file system mounted".into());
    }
    if !attached {
        return Err("this node cannot run the agent (see above)".into());
    }
    Ok(())
}
