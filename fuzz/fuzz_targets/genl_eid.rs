#![no_main]
//! Fuzz target: genl eid parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::genl;
use libfuzzer_sys::fuzz_target;

mod payloads;
use payloads::each;

fuzz_target!(|data: &[u8]| {
    each(data, |p| {
        let _ = genl::parse_ueid(p);
        let _ = genl::parse_seid(p);
        let _ = genl::parse_hs_limitation(p);
    });
    // the UEID check on user input
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = genl::ueid_entry(s);
    }
});
