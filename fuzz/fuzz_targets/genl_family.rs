#![no_main]
//! Fuzz target: genl family parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::genl;
use libfuzzer_sys::fuzz_target;

mod payloads;
use payloads::each;

fuzz_target!(|data: &[u8]| {
    each(data, |p| {
        let _ = genl::parse_family(p);
    });
});
