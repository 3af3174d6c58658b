#![no_main]
//! Fuzz target: smc diag msg parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::{netlink, smc_diag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smc_diag::parse_smc_diag_msg(data);
    for m in netlink::messages(data).take(256).flatten() {
        if let Ok(s) = smc_diag::parse_smc_diag_msg(m.payload) {
            // what the CLI does with a parsed socket must not panic either
            let _ = (
                s.flavour(),
                s.addresses_unknown(),
                s.fallback_reason().map(|r| r.to_string()),
            );
            let _ = serde_json::to_string(&s);
        }
    }
});
