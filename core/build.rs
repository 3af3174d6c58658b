// Compiles api/envoy_smc/v1/smc.proto with protox (no system protoc) into prost types, and keeps
// the file descriptor set so the runtime can read the same message from YAML/JSON.
fn main() {
    // The proto lives at the repository root (api/), shared with the Envoy extension (bazel/).
    let proto = "../api/envoy_smc/v1/smc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds =
        protox::compile([proto], ["../api"]).expect("api/envoy_smc/v1/smc.proto must compile");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("smc_descriptor.bin"), bytes).expect("write descriptor set");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate Rust types for smc.proto");
}
