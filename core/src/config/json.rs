//! The proto3 JSON mapping for smc.proto, read the way Envoy reads it.
//!
//! prost-reflect's serde support does the mapping (field names in snake_case or lowerCamelCase,
//! 64-bit integers as numbers or strings, unknown fields refused) and serde_path_to_error names the
//! field a message is about. Enum values are spelled as Envoy's loader takes them
//! (`MessageUtil::loadFromJsonNoThrow` in source/common/protobuf/utility.cc sets protobuf's
//! `case_insensitive_enum_parsing`, and protobuf's parser also takes a number written as a
//! string): the full value name in any case, or the number. [`spell_enums`] brings those spellings
//! to the one prost-reflect takes, and refuses the short names (`AF_SMC`) older envoy-smc versions
//! accepted, naming the full one.

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, EnumDescriptor, Kind, MessageDescriptor,
    SerializeOptions,
};
use serde_json::Value as Json;
use serde_path_to_error::{Path, Segment};

use super::{ConfigError, SmcConfig, DESCRIPTOR_SET};

fn config_descriptor() -> MessageDescriptor {
    static DESC: OnceLock<MessageDescriptor> = OnceLock::new();
    DESC.get_or_init(|| {
        let pool = DescriptorPool::decode(DESCRIPTOR_SET)
            .expect("descriptor set built by build.rs decodes");
        pool.get_message_by_name("envoy_smc.v1.SmcConfig")
            .expect("smc.proto defines SmcConfig")
    })
    .clone()
}

pub(super) fn to_config(mut value: Json) -> Result<SmcConfig, ConfigError> {
    let desc = config_descriptor();
    if value.is_null() {
        return Ok(SmcConfig::default()); // an empty document
    }
    if !value.is_object() {
        return Err(ConfigError::new(
            "",
            format!(
                "the configuration must be a mapping, not {}",
                describe(&value)
            ),
        ));
    }
    spell_enums(&desc, &mut value, "")?;
    let mut track = serde_path_to_error::Track::new();
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let msg = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&value, &mut track),
        &options,
    )
    .map_err(|e| deserialize_error(&desc, &value, &track.path(), &e.to_string()))?;
    msg.transcode_to::<SmcConfig>().map_err(|e| {
        ConfigError::new(
            "",
            format!("internal: cannot convert the configuration: {e}"),
        )
    })
}

pub(super) fn from_config(config: &SmcConfig) -> Json {
    let mut msg = DynamicMessage::new(config_descriptor());
    if msg.transcode_from(config).is_err() {
        return Json::Null;
    }
    let options = SerializeOptions::new()
        .skip_default_fields(false)
        .use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Json::Null)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// `upstream.allow[2]` from serde_path_to_error's segments.
fn path_string(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join(&out, key),
            Segment::Enum { variant } => out = join(&out, variant),
            Segment::Unknown => out = join(&out, "?"),
        }
    }
    out
}

/// The message a path of field names leads to (list indices and map keys skipped).
fn message_at(desc: &MessageDescriptor, path: &Path) -> Option<MessageDescriptor> {
    let mut desc = desc.clone();
    let mut in_map = false;
    for segment in path.iter() {
        let Segment::Map { key } = segment else {
            continue;
        };
        if std::mem::take(&mut in_map) {
            continue; // a key of a map field: the value has the map's value type
        }
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))?;
        in_map = field.is_map();
        let kind = if in_map {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        match kind {
            Kind::Message(m) => desc = m,
            _ => return None,
        }
    }
    Some(desc)
}

/// prost-reflect's message, with the path; an unknown field is named with the fields there are.
fn deserialize_error(
    desc: &MessageDescriptor,
    value: &Json,
    path: &Path,
    message: &str,
) -> ConfigError {
    let at = path_string(path);
    if let Some(name) = message
        .strip_prefix("unrecognized field name '")
        .and_then(|rest| rest.strip_suffix('\''))
    {
        let known = message_at(desc, path)
            .map(|m| m.fields().map(|f| f.name().to_owned()).collect::<Vec<_>>())
            .unwrap_or_default();
        return ConfigError::new(
            join(&at, name),
            format!("unknown field (known fields: {})", known.join(", ")),
        );
    }
    if message.contains("out of range") {
        if let Some(v) = value_at(value, path) {
            return ConfigError::new(
                at,
                format!("{} is out of range for this field", describe(v)),
            );
        }
    }
    ConfigError::new(at, message)
}

/// The value a path leads to.
fn value_at<'a>(mut value: &'a Json, path: &Path) -> Option<&'a Json> {
    for segment in path.iter() {
        value = match segment {
            Segment::Seq { index } => value.get(index)?,
            Segment::Map { key } => value.get(key)?,
            _ => return None,
        };
    }
    Some(value)
}

fn describe(v: &Json) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Rewrites every enum value in `value` (a message of type `desc`) to the spelling prost-reflect
/// reads, accepting what Envoy accepts and nothing more. Fields it does not know are left for the
/// deserializer to refuse.
fn spell_enums(desc: &MessageDescriptor, value: &mut Json, path: &str) -> Result<(), ConfigError> {
    let Json::Object(obj) = value else {
        return Ok(());
    };
    for (key, v) in obj.iter_mut() {
        let Some(field) = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
        else {
            continue;
        };
        let fpath = join(path, key);
        let kind = match field.kind() {
            Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
            kind => kind,
        };
        let items: Vec<(String, &mut Json)> = match v {
            Json::Array(items) if field.is_list() => items
                .iter_mut()
                .enumerate()
                .map(|(i, item)| (format!("{fpath}[{i}]"), item))
                .collect(),
            Json::Object(map) if field.is_map() => map
                .iter_mut()
                .map(|(k, item)| (join(&fpath, k), item))
                .collect(),
            v => vec![(fpath, v)],
        };
        for (item_path, item) in items {
            match &kind {
                Kind::Enum(e) => spell_enum(e, item, &item_path)?,
                Kind::Message(m) => spell_enums(m, item, &item_path)?,
                _ => {}
            }
        }
    }
    Ok(())
}

fn spell_enum(e: &EnumDescriptor, v: &mut Json, path: &str) -> Result<(), ConfigError> {
    let Json::String(s) = v else {
        return Ok(()); // numbers are read as they are; other types are refused by the deserializer
    };
    if e.get_value_by_name(s).is_some() {
        return Ok(());
    }
    if let Some(value) = e.values().find(|x| x.name().eq_ignore_ascii_case(s)) {
        *v = Json::String(value.name().to_owned());
        return Ok(());
    }
    if let Ok(n) = s.trim().parse::<i32>() {
        *v = Json::from(n);
        return Ok(());
    }
    let names: Vec<_> = e.values().map(|x| x.name().to_owned()).collect();
    let full = format!("{}_{}", screaming_snake(e.name()), s.to_ascii_uppercase());
    let message = match e.values().find(|x| x.name() == full) {
        Some(value) => format!(
            "\"{s}\" is not a value of {}: write {} (Envoy accepts only the full enum value names: {})",
            e.full_name(),
            value.name(),
            names.join(", ")
        ),
        None => format!("\"{s}\" is not one of {}", names.join(", ")),
    };
    Err(ConfigError::new(path, message))
}

/// `SocketKind` -> `SOCKET_KIND`: the prefix protobuf's style guide gives an enum's values.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
