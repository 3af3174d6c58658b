//! The ABI version: a hash of the C header's declarations, so it changes whenever the header
//! does and is never bumped by hand. build.rs hashes the committed include/envoy_smc.h;
//! tests/header_drift.rs writes the same number into the header it generates.
//! (Included by build.rs as a plain file: no crate imports here.)

/// The `#define` line that carries the version in the header; not part of what is hashed.
pub const ABI_VERSION_DEFINE: &str = "#define ENVOY_SMC_ABI_VERSION ";

/// FNV-1a (32 bit) over the header's lines, leaving out the version line itself and the line
/// ends (so a checkout with CRLF line ends gets the same number). Never 0.
pub fn abi_hash(header: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for line in header.lines() {
        if line.starts_with(ABI_VERSION_DEFINE) {
            continue;
        }
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h.max(1)
}
