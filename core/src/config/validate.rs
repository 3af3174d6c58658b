//! Compiling a decoded configuration: every field parsed and checked once, defaults filled in.

use std::net::IpAddr;

use super::proto::{smc_config::Mode, SocketOptionMatch};
use super::{AdaptiveSettings, Config, ConfigError, OptIn, OptionMatch, SmcConfig};

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

fn compile_option(
    path: &str,
    opt: Option<&SocketOptionMatch>,
    default: SocketOptionMatch,
) -> Result<OptionMatch, ConfigError> {
    let opt = opt.unwrap_or(&default);
    let mut level_name = [0i32; 2];
    for (slot, (name, v)) in level_name
        .iter_mut()
        .zip([("level", opt.level), ("name", opt.name)])
    {
        *slot = i32::try_from(v).ok().filter(|v| *v >= 0).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.{name}"),
                format!("{v} is not a socket option {name}"),
            )
        })?;
    }
    let value = i32::try_from(opt.int_value).map_err(|_| {
        ConfigError::new(
            format!("{path}.int_value"),
            format!("{} does not fit a 32-bit int", opt.int_value),
        )
    })?;
    Ok(OptionMatch {
        level: level_name[0],
        name: level_name[1],
        value,
    })
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

/// Parses every entry of a list of strings, or names the first that is wrong.
fn parse_list<T>(
    path: &str,
    list: &[String],
    max: usize,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    check_len(path, list.len(), max)?;
    list.iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|m| ConfigError::new(format!("{path}[{i}]"), m)))
        .collect()
}

/// `v`, or `default` when `v` is 0 (unset).
fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

pub(super) fn compile(config: SmcConfig) -> Result<Config, ConfigError> {
    let mode = Mode::try_from(config.mode).map_err(|_| {
        ConfigError::new(
            "mode",
            format!(
                "{} is not one of MODE_AUTO, MODE_AF_SMC, MODE_IPPROTO_SMC, MODE_OFF",
                config.mode
            ),
        )
    })?;

    let switch = config.mesh_switch.unwrap_or_default();
    let enable_option = compile_option(
        "mesh_switch.enable_option",
        switch.enable_option.as_ref(),
        super::DEFAULT_ENABLE_OPTION,
    )?;
    let keep_tcp_option = compile_option(
        "mesh_switch.keep_tcp_option",
        switch.keep_tcp_option.as_ref(),
        super::DEFAULT_KEEP_TCP_OPTION,
    )?;
    if enable_option == keep_tcp_option {
        return Err(ConfigError::new(
            "mesh_switch.keep_tcp_option",
            "is the same socket option as mesh_switch.enable_option: one cannot both turn SMC on and keep TCP",
        ));
    }

    let o = config.opt_in.clone().unwrap_or_default();
    if o.annotation.chars().any(char::is_whitespace) || o.annotation.len() > 317 {
        return Err(ConfigError::new(
            "opt_in.annotation",
            format!("\"{}\" is not an annotation key", o.annotation),
        ));
    }
    check_len("opt_in.annotations", o.annotations.len(), MAX_ANNOTATIONS)?;
    if o.annotations.keys().any(|k| k.is_empty()) {
        return Err(ConfigError::new(
            "opt_in.annotations",
            "an annotation has an empty name",
        ));
    }
    let opt_in = OptIn {
        all_workloads: o.all_workloads,
        annotation: if o.annotation.is_empty() {
            super::DEFAULT_OPT_IN_ANNOTATION.to_owned()
        } else {
            o.annotation
        },
        annotations: o.annotations,
        annotations_file: (!o.annotations_file.is_empty())
            .then(|| std::path::PathBuf::from(o.annotations_file)),
    };

    let l = config.listeners.clone().unwrap_or_default();
    check_len("listeners.ports", l.ports.len(), MAX_LISTENER_PORTS)?;
    let mut listener_ports: Vec<u16> = Vec::with_capacity(l.ports.len());
    for (i, &p) in l.ports.iter().enumerate() {
        let port = u16::try_from(p).ok().filter(|&p| p != 0).ok_or_else(|| {
            ConfigError::new(
                format!("listeners.ports[{i}]"),
                format!("{p} is not a port (1-65535)"),
            )
        })?;
        if listener_ports.contains(&port) {
            return Err(ConfigError::new(
                format!("listeners.ports[{i}]"),
                format!("{p} is listed twice"),
            ));
        }
        listener_ports.push(port);
    }

    let a = config.adaptive_fallback.unwrap_or_default();
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
    let adaptive = AdaptiveSettings {
        enabled: !a.disabled,
        detect_after_ms: or_default(a.detect_after_ms, 1000),
        probe_timeout_ms: or_default(a.probe_timeout_ms, 1000),
        hold_down_ms: or_default(a.hold_down_ms, 30_000),
        max_hold_down_ms: or_default(a.max_hold_down_ms, 600_000),
        max_destinations: or_default(a.max_destinations, 4096),
    };
    if adaptive.max_hold_down_ms < adaptive.hold_down_ms {
        return Err(ConfigError::new(
            "adaptive_fallback.max_hold_down_ms",
            format!(
                "{} is shorter than hold_down_ms ({})",
                adaptive.max_hold_down_ms, adaptive.hold_down_ms
            ),
        ));
    }

    let u = config.upstream.clone().unwrap_or_default();
    Ok(Config {
        mode,
        always_on: switch.always_on,
        enable_option,
        keep_tcp_option,
        opt_in,
        listener_ports,
        limit_handshake: l.limit_handshake,
        allow: parse_list("upstream.allow", &u.allow, MAX_CIDRS, parse_cidr)?,
        deny: parse_list("upstream.deny", &u.deny, MAX_CIDRS, parse_cidr)?,
        allow_ports: parse_list(
            "upstream.allow_ports",
            &u.allow_ports,
            MAX_PORT_RANGES,
            parse_port_range,
        )?,
        deny_ports: parse_list(
            "upstream.deny_ports",
            &u.deny_ports,
            MAX_PORT_RANGES,
            parse_port_range,
        )?,
        allow_local: u.allow_local,
        adaptive,
        proto: config,
    })
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
