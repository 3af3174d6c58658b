#![no_main]
//! Fuzz target: genl fback stats parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::genl;
use libfuzzer_sys::fuzz_target;

mod payloads;
use payloads::each;

fuzz_target!(|data: &[u8]| {
    let mut entries = Vec::new();
    each(data, |p| {
        if let Ok(Some(e)) = genl::parse_fback_entry(p) {
            entries.push(e);
        }
    });
    let _ = genl::aggregate_fback(&entries);
});
