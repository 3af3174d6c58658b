//! Compiles the BPF program (clang -target bpf, through libbpf-cargo) and generates its Rust
//! skeleton. Nothing prebuilt is committed: a missing clang is a build error naming it.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/select_smc.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-I", multiarch.as_str()])
        .build_and_generate(out.join("select_smc.skel.rs"))
    {
        panic!("building {SRC} failed (needs clang and the kernel headers: scripts/install-deps.sh): {e:#}");
    }
    println!("cargo:rerun-if-changed={SRC}");
}
