#![no_main]
//! Fuzz target: inet diag msg parsing never panics, whatever the bytes.

use envoy_smc_cli::diag::{inet_diag, netlink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inet_diag::parse_inet_diag_msg(data);
    for m in netlink::messages(data).take(256).flatten() {
        let _ = inet_diag::parse_inet_diag_msg(m.payload);
    }
});
