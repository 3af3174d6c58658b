//! The one configuration model: `api/envoy_smc/v1/smc.proto`.
//!
//! Loaded from Envoy's serialized bytes ([`from_proto_bytes`]) or from YAML/JSON with the proto3
//! JSON mapping ([`from_yaml`]); then checked ([`validate`]). Every error names the field and the
//! value that was wrong.

mod json;
pub mod limits;
mod validate;

use std::fmt;

pub use validate::{canonical, parse_cidr, parse_port_range, Cidr, PortRange};

/// Types generated from `api/envoy_smc/v1/smc.proto` by prost.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/envoy_smc.v1.rs"));
}

pub use proto::SmcConfig;

/// The mesh switch when the config names none: SOL_SOCKET / SO_RCVLOWAT = 1, the kernel's
/// default value, so a proxy without envoy-smc that receives the patch keeps working unchanged.
pub const DEFAULT_ENABLE_OPTION: proto::SocketOptionMatch = proto::SocketOptionMatch {
    level: 1,
    name: 18,
    int_value: 1,
};

/// The per-cluster fallback when the config names none: IPPROTO_TCP / TCP_FASTOPEN_CONNECT = 0, a
/// no-op on a TCP socket and the kernel's own fallback switch on an SMC socket.
pub const DEFAULT_KEEP_TCP_OPTION: proto::SocketOptionMatch = proto::SocketOptionMatch {
    level: 6,
    name: 30,
    int_value: 0,
};

/// The annotation a workload sets to opt in when the config names none.
pub const DEFAULT_OPT_IN_ANNOTATION: &str = "smc.asm.alibabacloud.com/enabled";

/// The adaptive-fallback settings with their defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveSettings {
    pub enabled: bool,
    pub detect_after_ms: u32,
    pub probe_timeout_ms: u32,
    pub hold_down_ms: u32,
    pub max_hold_down_ms: u32,
    pub max_destinations: u32,
}

impl AdaptiveSettings {
    pub fn from_config(config: &SmcConfig) -> AdaptiveSettings {
        let a = config.adaptive_fallback.unwrap_or_default();
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        AdaptiveSettings {
            enabled: !a.disabled,
            detect_after_ms: or(a.detect_after_ms, 1000),
            probe_timeout_ms: or(a.probe_timeout_ms, 1000),
            hold_down_ms: or(a.hold_down_ms, 30_000),
            max_hold_down_ms: or(a.max_hold_down_ms, 600_000),
            max_destinations: or(a.max_destinations, 4096),
        }
    }
}

/// The compiled descriptor set of smc.proto (for the proto3 JSON mapping).
pub(crate) const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/smc_descriptor.bin"));

/// A configuration error: which field, and what was wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `upstream.allow[2]`; empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads the configuration from Envoy's serialized `envoy_smc.v1.SmcConfig` bytes and validates it.
pub fn from_proto_bytes(bytes: &[u8]) -> Result<SmcConfig, ConfigError> {
    limits::check_size(bytes.len())?;
    let config = <SmcConfig as prost::Message>::decode(bytes).map_err(|e| {
        ConfigError::new(
            "",
            format!("not a valid envoy_smc.v1.SmcConfig message: {e}"),
        )
    })?;
    validate::validate(&config)?;
    Ok(config)
}

/// Reads the configuration from YAML or JSON text (proto3 JSON mapping) and validates it.
/// An empty document is the default configuration. Size, nesting and list lengths are bounded
/// before the text is parsed or converted ([`limits`]).
pub fn from_yaml(text: &str) -> Result<SmcConfig, ConfigError> {
    limits::check_text(text)?;
    let value: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not valid YAML/JSON: {e}")))?
    };
    limits::check_value(&value)?;
    let config = json::to_config(&value)?;
    validate::validate(&config)?;
    Ok(config)
}

/// Reads the configuration from a YAML/JSON file: a regular file of at most
/// [`limits::MAX_CONFIG_BYTES`] (a FIFO or a device is refused without reading it).
pub fn from_file(path: &std::path::Path) -> Result<SmcConfig, ConfigError> {
    from_yaml(&limits::read_config_file(path)?)
}

/// Checks a configuration built in code or decoded elsewhere.
pub fn validate(config: &SmcConfig) -> Result<(), ConfigError> {
    validate::validate(config)
}

/// The configuration as JSON (proto3 JSON mapping, defaults included), for `envoy-smc` to show.
pub fn to_json(config: &SmcConfig) -> serde_json::Value {
    json::from_config(config)
}
