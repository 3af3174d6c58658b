#[path = "src/ffi/abi_hash.rs"]
mod abi_hash;

// Compiles api/envoy_smc/v1/smc.proto with protox (no system protoc) into prost types, and keeps
// the file descriptor set so the runtime can read the same message from YAML/JSON.
fn main() {
    let proto = "api/envoy_smc/v1/smc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["api"]).expect("api/envoy_smc/v1/smc.proto must compile");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("smc_descriptor.bin"), bytes).expect("write descriptor set");
    abi_version(&out);
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate Rust types for smc.proto");
}

/// Derives the C ABI version from the committed header (see src/ffi/abi_hash.rs).
fn abi_version(out: &std::path::Path) {
    let header = "include/envoy_smc.h";
    println!("cargo:rerun-if-changed={header}");
    let text = std::fs::read_to_string(header).expect("include/envoy_smc.h is committed");
    let version = abi_hash::abi_hash(&text);
    std::fs::write(
        out.join("abi_version.rs"),
        format!("pub const ENVOY_SMC_ABI_VERSION: u32 = {version};\n"),
    )
    .expect("write abi_version.rs");
}
