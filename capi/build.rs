#[path = "src/abi_hash.rs"]
mod abi_hash;

// Derives the C ABI version from the committed header (see src/abi_hash.rs): no hand-kept number.
fn main() {
    // The header lives at the repository root (include/), shared with the Envoy extension (bazel/).
    let header = "../include/envoy_smc.h";
    println!("cargo:rerun-if-changed={header}");
    let text = std::fs::read_to_string(header).expect("include/envoy_smc.h is committed");
    let version = abi_hash::abi_hash(&text);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("abi_version.rs"),
        format!("pub const ENVOY_SMC_ABI_VERSION: u32 = {version};\n"),
    )
    .expect("write abi_version.rs");
}
