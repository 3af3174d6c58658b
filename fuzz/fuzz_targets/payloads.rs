//! Shared by the genl_* targets (a module of each, not a target of its own).

use envoy_smc_cli::diag::netlink;

/// The parser on the raw bytes and on every message payload in them (seeds are whole datagrams).
pub fn each(data: &[u8], mut f: impl FnMut(&[u8])) {
    f(data);
    for m in netlink::messages(data).take(256).flatten() {
        f(m.payload);
    }
}
