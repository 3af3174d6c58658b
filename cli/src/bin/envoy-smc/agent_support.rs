//! The `node agent` line of `envoy-smc doctor`: whether this node can run envoy-smc-agent (the
//! BPF entry point, agent/) and what it can decide here. File checks only; `envoy-smc-agent
//! check` also loads and attaches the program.
use std::path::Path;

/// (can run the agent, what it can and cannot do here).
pub fn summary(kernel: Option<(u32, u32)>) -> (bool, String) {
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        })
        .unwrap_or(false);
    let mut missing = Vec::new();
    if kernel.is_none_or(|v| v < (6, 6)) {
        missing.push("Linux 6.6+ (fmod_ret on update_socket_protocol)");
    }
    if !btf {
        missing.push("kernel BTF (/sys/kernel/btf/vmlinux)");
    }
    if !cgroup2 {
        missing.push("cgroup v2");
    }
    if !missing.is_empty() {
        return (
            false,
            format!("cannot run here: needs {}", missing.join(", ")),
        );
    }
    let mentions = |f: &str| {
        std::fs::read(Path::new("/sys/kernel/btf").join(f))
            .map(|b| b.windows(12).any(|w| w == b"smc_hs_ctrl\0"))
            .unwrap_or(false)
    };
    let hs_ctrl = mentions("vmlinux") || mentions("smc");
    let what = if hs_ctrl {
        "smc_hs_ctrl present: per-destination choice (allow/deny CIDRs and ports: SMC not offered on \
         the SYN) and black-hole hold-down in agent mode"
    } else {
        "smc_hs_ctrl absent: no per-destination choice and no black-hole rescue in agent mode"
    };
    (
        true,
        format!(
            "can run here (per pod, per cluster via the keep-TCP option); {what} \
             (`envoy-smc-agent check` tries the attach)"
        ),
    )
}
