//! `envoy-smc-agent check`: what this node lets the agent do.
use std::path::Path;

use crate::bpf::Converter;

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
    // smc_hs_ctrl (Linux 6.19+) lives in the smc module's BTF when SMC is a module. Registered
    // and unregistered again at once; no namespace's net.smc.hs_ctrl is touched.
    let hs_ctrl = if crate::hsctrl::kernel_has_hs_ctrl() {
        let name = format!("envoy_smcc{:x}", std::process::id());
        match crate::hsctrl::HsCtrl::register(&name, "/proc".into()) {
            Ok(_) => {
                println!(
                    "smc_hs_ctrl            yes (struct_ops registered and unregistered again)"
                );
                true
            }
            Err(e) => {
                println!("smc_hs_ctrl            present, but NOT usable: {e}");
                false
            }
        }
    } else {
        println!("smc_hs_ctrl            absent (Linux 6.19+, CONFIG_SMC_HS_CTRL_BPF)");
        false
    };
    if hs_ctrl {
        println!(
            "per-destination choice yes: smc_hs_ctrl decides on every SYN from --config's upstream allow/deny CIDRs and ports \
             and the held destinations; SMC is not offered (no TCP option 254) where they say TCP. Selected in each selected \
             pod's network namespace (net.smc.hs_ctrl; a namespace other than the agent's needs CAP_SYS_ADMIN)"
        );
        println!(
            "black-hole rescue      yes: a stalled SMC connect (smc_diag + inet_diag: SYN_SENT, SYN retried) whose destination \
             answers plain TCP holds it on TCP for the adaptive fallback's hold-down; its next SYN retry and new connects go \
             out without SMC's option"
        );
    } else {
        println!(
            "per-destination choice NO: the decision is per pod at socket(), before the destination is known; \
             loopback and non-SMC peers fall back by themselves, clusters with the keep-TCP option fall back (OPTUNSUPP)"
        );
        println!(
            "black-hole rescue      NO: nothing runs in the proxy, and without smc_hs_ctrl the agent cannot stop offering \
             SMC to one destination; a connect stuck behind a path that drops SMC's SYN option waits for the proxy's \
             connect timeout (use the preload library or the native extension where that matters)"
        );
    }
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
