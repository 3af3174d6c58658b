#![no_main]
//! Fuzz target: genl eid parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::{genl, netlink};
use libfuzzer_sys::fuzz_target;

/// The parser on the raw bytes and on every message payload in them (seeds are whole datagrams).
fn each(data: &[u8], mut f: impl FnMut(&[u8])) {
    f(data);
    for m in netlink::messages(data).take(256).flatten() {
        f(m.payload);
    }
}

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
