//! Lookup structures built once per configuration and read on every decision: address ranges
//! (merged, sorted, binary-searched) and port bitmaps. No allocation and no lock when read.

use std::net::IpAddr;

use crate::config::{Cidr, PortRange};

/// A set of IPv4 and IPv6 address ranges.
#[derive(Debug, Default, Clone)]
pub struct AddrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        if let Some(prev) = out.last_mut() {
            // Overlapping or adjacent ranges become one.
            if next(prev.1).is_none_or(|n| first <= n) {
                if last > prev.1 {
                    prev.1 = last;
                }
                continue;
            }
        }
        out.push((first, last));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // Index of the first range starting after x; the one before it is the only candidate.
    let i = ranges.partition_point(|&(first, _)| first <= x);
    i > 0 && x <= ranges[i - 1].1
}

impl AddrSet {
    pub fn new(cidrs: &[Cidr]) -> AddrSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for c in cidrs {
            match c.range() {
                (false, first, last) => v4.push((first as u32, last as u32)),
                (true, first, last) => v6.push((first, last)),
            }
        }
        AddrSet {
            v4: merge(v4, |x: u32| x.checked_add(1)),
            v6: merge(v6, |x: u128| x.checked_add(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// `ip` must already be canonical (IPv4-mapped IPv6 as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }
}

/// A set of TCP ports as a 65536-bit bitmap.
#[derive(Clone)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
    any: bool,
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        write!(f, "PortSet({n} ports)")
    }
}

impl PortSet {
    pub fn new(ranges: &[PortRange]) -> PortSet {
        let mut bits = Box::new([0u64; 1024]);
        for r in ranges {
            for p in r.first..=r.last {
                bits[p as usize / 64] |= 1 << (p % 64);
            }
        }
        PortSet {
            bits,
            any: !ranges.is_empty(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.any
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[port as usize / 64] & (1 << (port % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cidr;

    fn set(cidrs: &[&str]) -> AddrSet {
        AddrSet::new(
            &cidrs
                .iter()
                .map(|c| parse_cidr(c).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge_and_match_exactly() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.0.128/25",
            "192.168.0.0/16",
            "fd00::/8",
        ]);
        assert_eq!(
            s.v4,
            vec![(0x0a00_0000, 0x0a00_01ff), (0xc0a8_0000, 0xc0a8_ffff)]
        );
        for (ip, want) in [
            ("10.0.0.0", true),
            ("10.0.1.255", true),
            ("10.0.2.0", false),
            ("9.255.255.255", false),
            ("192.168.255.255", true),
            ("192.169.0.0", false),
            ("fd12::1", true),
            ("fe80::1", false),
        ] {
            assert_eq!(s.contains(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn whole_address_space_and_empty_set() {
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert!(all.contains("::".parse().unwrap()));
        let none = set(&[]);
        assert!(none.is_empty());
        assert!(!none.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn port_bitmap() {
        let p = PortSet::new(&[
            PortRange {
                first: 80,
                last: 80,
            },
            PortRange {
                first: 8000,
                last: 8100,
            },
        ]);
        assert!(p.contains(80) && p.contains(8000) && p.contains(8100));
        assert!(!p.contains(81) && !p.contains(7999) && !p.contains(8101) && !p.contains(0));
        assert!(PortSet::new(&[]).is_empty());
        let top = PortSet::new(&[PortRange {
            first: 65535,
            last: 65535,
        }]);
        assert!(top.contains(65535));
    }
}
