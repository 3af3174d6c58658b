//! The one configuration model: `api/envoy_smc/v1/smc.proto`.
//!
//! Loaded from Envoy's serialized bytes ([`from_proto_bytes`]) or from YAML/JSON with the proto3
//! JSON mapping as Envoy reads it ([`from_yaml`]), then parsed and checked once ([`compile`]) into
//! a [`Config`] that the policy consumes. Every error names the field and the value that was
//! wrong; nothing invalid is dropped silently.

mod json;
pub mod limits;
mod validate;
pub mod yaml;

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

/// A socket option compared by (level, name, int value), as Envoy sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionMatch {
    pub level: i32,
    pub name: i32,
    pub value: i32,
}

impl OptionMatch {
    pub fn matches(&self, level: i32, name: i32, value: i32) -> bool {
        self.level == level && self.name == name && self.value == value
    }
}

/// Which workloads opted in, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptIn {
    pub all_workloads: bool,
    /// The annotation that must be "true".
    pub annotation: String,
    pub annotations: std::collections::HashMap<String, String>,
    /// The downward-API annotations file, read when a policy is built.
    pub annotations_file: Option<std::path::PathBuf>,
}

/// A configuration parsed and checked once: typed addresses, ports and options with the
/// defaults filled in. The policy, the runtime and adaptive fallback read only this.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: proto::smc_config::Mode,
    pub always_on: bool,
    pub enable_option: OptionMatch,
    pub keep_tcp_option: OptionMatch,
    pub opt_in: OptIn,
    pub listener_ports: Vec<u16>,
    pub limit_handshake: bool,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub allow_ports: Vec<PortRange>,
    pub deny_ports: Vec<PortRange>,
    pub allow_local: bool,
    pub adaptive: AdaptiveSettings,
    /// The message it was compiled from, for showing and rendering.
    proto: SmcConfig,
}

impl Config {
    /// The message this configuration was compiled from.
    pub fn proto(&self) -> &SmcConfig {
        &self.proto
    }

    /// The message this configuration was compiled from.
    pub fn into_proto(self) -> SmcConfig {
        self.proto
    }
}

impl Default for Config {
    fn default() -> Config {
        compile(SmcConfig::default()).expect("the default configuration is valid")
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

/// Reads the configuration from Envoy's serialized `envoy_smc.v1.SmcConfig` bytes and compiles it.
pub fn from_proto_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
    limits::check_size(bytes.len())?;
    let config = <SmcConfig as prost::Message>::decode(bytes).map_err(|e| {
        ConfigError::new(
            "",
            format!("not a valid envoy_smc.v1.SmcConfig message: {e}"),
        )
    })?;
    compile(config)
}

/// Reads the configuration from YAML or JSON text (proto3 JSON mapping, as Envoy reads it) and
/// compiles it. An empty document is the default configuration. Size, nesting and list lengths
/// are bounded before the text is parsed or converted ([`limits`]).
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    compile(parse_yaml(text)?)
}

/// Reads YAML or JSON text into the message, unchecked.
fn parse_yaml(text: &str) -> Result<SmcConfig, ConfigError> {
    limits::check_text(text)?;
    let value: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        yaml::to_json(text)
            .map_err(|e| ConfigError::new("", format!("not valid YAML/JSON: {e}")))?
    };
    limits::check_value(&value)?;
    json::to_config(value)
}

/// Reads the configuration from a YAML/JSON file: a regular file of at most
/// [`limits::MAX_CONFIG_BYTES`] (a FIFO or a device is refused without reading it).
pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    from_yaml(&limits::read_config_file(path)?)
}

/// Checks a configuration message (built in code or decoded elsewhere) and compiles it: the one
/// place where every field is parsed and checked.
pub fn compile(config: SmcConfig) -> Result<Config, ConfigError> {
    validate::compile(config)
}

/// The configuration as JSON (proto3 JSON mapping, defaults included), for `envoy-smc` to show.
pub fn to_json(config: &SmcConfig) -> serde_json::Value {
    json::from_config(config)
}
