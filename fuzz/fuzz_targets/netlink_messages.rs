#![no_main]
//! Fuzz target: netlink messages parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::netlink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // framing: messages, attributes (nested too), error payloads
    for m in netlink::messages(data).take(256).flatten() {
        let _ = netlink::parse_error_payload(m.payload);
        for a in netlink::attrs(m.payload, "fuzz").take(1024).flatten() {
            let _ = (a.uint("x"), a.u64("x"), a.string());
            for n in a.nested_attrs("fuzz").take(1024).flatten() {
                let _ = (n.uint("x"), n.string());
            }
        }
    }
});
