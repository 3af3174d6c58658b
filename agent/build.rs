//! Compiles the BPF programs (clang -target bpf, through libbpf-cargo) and generates their Rust
//! skeletons. Nothing prebuilt is committed: a missing clang is a build error naming it.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// (source, skeleton file): the socket() converter, and the smc_hs_ctrl struct_ops (Linux 6.19+).
const PROGRAMS: [(&str, &str); 2] = [
    ("src/bpf/select_smc.bpf.c", "select_smc.skel.rs"),
    ("src/bpf/hs_ctrl.bpf.c", "hs_ctrl.skel.rs"),
];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    for (src, skel) in PROGRAMS {
        if let Err(e) = SkeletonBuilder::new()
            .source(src)
            .clang_args(["-I", multiarch.as_str()])
            .build_and_generate(out.join(skel))
        {
            panic!("building {src} failed (needs clang and the kernel headers: scripts/install-deps.sh): {e:#}");
        }
        println!("cargo:rerun-if-changed={src}");
    }
}
