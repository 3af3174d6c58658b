//! Checks on a decoded configuration, and the parsers of its string fields.

use std::net::IpAddr;

use super::proto::{smc_config::Mode, SocketOptionMatch};
use super::{ConfigError, SmcConfig};

/// A destination prefix. IPv4-mapped IPv6 destinations are matched as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { addr: u32, prefix: u8 },
    V6 { addr: u128, prefix: u8 },
}

impl Cidr {
    /// The first and last address of the prefix, as (is_v6, first, last).
    pub fn range(&self) -> (bool, u128, u128) {
        match *self {
            Cidr::V4 { addr, prefix } => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                let first = addr & mask;
                (false, first as u128, (first | !mask) as u128)
            }
            Cidr::V6 { addr, prefix } => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                let first = addr & mask;
                (true, first, first | !mask)
            }
        }
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or a single address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let not = || format!("\"{s}\" is not a CIDR (like 10.0.0.0/8 or fd00::/8)");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| not())?;
    let prefix = match prefix {
        Some(p) => Some(p.trim().parse::<u8>().map_err(|_| not())?),
        None => None,
    };
    match ip {
        IpAddr::V4(v4) => {
            let prefix = prefix.unwrap_or(32);
            if prefix > 32 {
                return Err(not());
            }
            Ok(Cidr::V4 {
                addr: u32::from(v4),
                prefix,
            })
        }
        IpAddr::V6(v6) => {
            let prefix = prefix.unwrap_or(128);
            if prefix > 128 {
                return Err(not());
            }
            Ok(Cidr::V6 {
                addr: u128::from(v6),
                prefix,
            })
        }
    }
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Parses `8080` or `8000-8100`.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let not = || format!("\"{s}\" is not a port (1-65535) or a port range like 8000-8100");
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a).ok_or_else(not)?, port(b).ok_or_else(not)?),
        None => {
            let p = port(s).ok_or_else(not)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!(
            "\"{s}\" is an empty port range (first port above the last)"
        ));
    }
    Ok(PortRange { first, last })
}

fn check_option(path: &str, opt: &SocketOptionMatch) -> Result<(), ConfigError> {
    for (name, v) in [("level", opt.level), ("name", opt.name)] {
        if !(0..=i32::MAX as i64).contains(&v) {
            return Err(ConfigError::new(
                format!("{path}.{name}"),
                format!("{v} is not a socket option {name}"),
            ));
        }
    }
    if i32::try_from(opt.int_value).is_err() {
        return Err(ConfigError::new(
            format!("{path}.int_value"),
            format!("{} does not fit a 32-bit int", opt.int_value),
        ));
    }
    Ok(())
}

/// Most entries in `listeners.ports`.
pub const MAX_LISTENER_PORTS: usize = 1024;
/// Most entries in each of `upstream.allow` and `upstream.deny`.
pub const MAX_CIDRS: usize = 4096;
/// Most entries in each of `upstream.allow_ports` and `upstream.deny_ports`.
pub const MAX_PORT_RANGES: usize = 1024;
/// Most entries in `opt_in.annotations`.
pub const MAX_ANNOTATIONS: usize = 1024;
/// Range of `adaptive_fallback.detect_after_ms` and `probe_timeout_ms` (0: the default).
pub const DETECT_MS: (u32, u32) = (100, 60_000);
/// Range of `adaptive_fallback.hold_down_ms` (0: the default): up to a day.
pub const HOLD_DOWN_MS: (u32, u32) = (1, 86_400_000);
/// Largest `adaptive_fallback.max_hold_down_ms`: a week.
pub const MAX_HOLD_DOWN_MS: u32 = 604_800_000;
/// Largest `adaptive_fallback.max_destinations` (the table is allocated as it fills).
pub const MAX_DESTINATIONS: u32 = 1 << 20;

fn check_len(path: &str, len: usize, max: usize) -> Result<(), ConfigError> {
    if len > max {
        return Err(ConfigError::new(
            path,
            format!("{len} entries, more than the limit of {max}"),
        ));
    }
    Ok(())
}

/// `v` is 0 (the default) or within `lo..=hi`.
fn check_range(path: &str, v: u32, (lo, hi): (u32, u32)) -> Result<(), ConfigError> {
    if v != 0 && !(lo..=hi).contains(&v) {
        return Err(ConfigError::new(
            path,
            format!("{v} is outside {lo}..={hi} (0 or unset: the default)"),
        ));
    }
    Ok(())
}

pub(super) fn validate(config: &SmcConfig) -> Result<(), ConfigError> {
    if Mode::try_from(config.mode).is_err() {
        return Err(ConfigError::new(
            "mode",
            format!(
                "{} is not one of MODE_AUTO, MODE_AF_SMC, MODE_IPPROTO_SMC, MODE_OFF",
                config.mode
            ),
        ));
    }
    if let Some(sw) = &config.mesh_switch {
        if let Some(o) = &sw.enable_option {
            check_option("mesh_switch.enable_option", o)?;
        }
        if let Some(o) = &sw.keep_tcp_option {
            check_option("mesh_switch.keep_tcp_option", o)?;
        }
        let enable = sw.enable_option.unwrap_or(super::DEFAULT_ENABLE_OPTION);
        let keep = sw.keep_tcp_option.unwrap_or(super::DEFAULT_KEEP_TCP_OPTION);
        if enable == keep {
            return Err(ConfigError::new(
                "mesh_switch.keep_tcp_option",
                "is the same socket option as mesh_switch.enable_option: one cannot both turn SMC on and keep TCP",
            ));
        }
    }
    if let Some(opt_in) = &config.opt_in {
        let a = &opt_in.annotation;
        if a.chars().any(char::is_whitespace) || a.len() > 317 {
            return Err(ConfigError::new(
                "opt_in.annotation",
                format!("\"{a}\" is not an annotation key"),
            ));
        }
        check_len(
            "opt_in.annotations",
            opt_in.annotations.len(),
            MAX_ANNOTATIONS,
        )?;
        if opt_in.annotations.keys().any(|k| k.is_empty()) {
            return Err(ConfigError::new(
                "opt_in.annotations",
                "an annotation has an empty name",
            ));
        }
    }
    if let Some(l) = &config.listeners {
        check_len("listeners.ports", l.ports.len(), MAX_LISTENER_PORTS)?;
        for (i, &p) in l.ports.iter().enumerate() {
            if p == 0 || p > 65535 {
                return Err(ConfigError::new(
                    format!("listeners.ports[{i}]"),
                    format!("{p} is not a port (1-65535)"),
                ));
            }
            if l.ports[..i].contains(&p) {
                return Err(ConfigError::new(
                    format!("listeners.ports[{i}]"),
                    format!("{p} is listed twice"),
                ));
            }
        }
    }
    if let Some(a) = &config.adaptive_fallback {
        let eff = super::AdaptiveSettings::from_config(config);
        check_range(
            "adaptive_fallback.detect_after_ms",
            a.detect_after_ms,
            DETECT_MS,
        )?;
        check_range(
            "adaptive_fallback.probe_timeout_ms",
            a.probe_timeout_ms,
            DETECT_MS,
        )?;
        check_range(
            "adaptive_fallback.hold_down_ms",
            a.hold_down_ms,
            HOLD_DOWN_MS,
        )?;
        check_range(
            "adaptive_fallback.max_hold_down_ms",
            a.max_hold_down_ms,
            (1, MAX_HOLD_DOWN_MS),
        )?;
        check_range(
            "adaptive_fallback.max_destinations",
            a.max_destinations,
            (1, MAX_DESTINATIONS),
        )?;
        if eff.max_hold_down_ms < eff.hold_down_ms {
            return Err(ConfigError::new(
                "adaptive_fallback.max_hold_down_ms",
                format!(
                    "{} is shorter than hold_down_ms ({})",
                    eff.max_hold_down_ms, eff.hold_down_ms
                ),
            ));
        }
    }
    if let Some(u) = &config.upstream {
        for (name, list) in [("allow", &u.allow), ("deny", &u.deny)] {
            check_len(&format!("upstream.{name}"), list.len(), MAX_CIDRS)?;
            for (i, s) in list.iter().enumerate() {
                parse_cidr(s).map_err(|m| ConfigError::new(format!("upstream.{name}[{i}]"), m))?;
            }
        }
        for (name, list) in [
            ("allow_ports", &u.allow_ports),
            ("deny_ports", &u.deny_ports),
        ] {
            check_len(&format!("upstream.{name}"), list.len(), MAX_PORT_RANGES)?;
            for (i, s) in list.iter().enumerate() {
                parse_port_range(s)
                    .map_err(|m| ConfigError::new(format!("upstream.{name}[{i}]"), m))?;
            }
        }
    }
    Ok(())
}

/// Normalises an IPv4-mapped IPv6 address to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}
