//! The proto3 JSON mapping for smc.proto, with errors that name the field path.
//!
//! prost-reflect converts between the prost types and dynamic messages; the walk from a JSON value
//! to a dynamic message is ours so that every error says which field was wrong and why.

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    SerializeOptions, Value,
};
use serde_json::Value as Json;

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

pub(super) fn to_config(value: &Json) -> Result<SmcConfig, ConfigError> {
    let msg = to_message(&config_descriptor(), value, "")?;
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

fn describe(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

fn to_message(
    desc: &MessageDescriptor,
    value: &Json,
    path: &str,
) -> Result<DynamicMessage, ConfigError> {
    let mut msg = DynamicMessage::new(desc.clone());
    let obj = match value {
        Json::Null => return Ok(msg),
        Json::Object(obj) => obj,
        other => {
            let what = if path.is_empty() {
                "the configuration"
            } else {
                "this field"
            };
            return Err(ConfigError::new(
                path,
                format!("{what} must be a mapping, not {}", describe(other)),
            ));
        }
    };
    for (key, v) in obj {
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
            .ok_or_else(|| {
                let known: Vec<_> = desc.fields().map(|f| f.name().to_owned()).collect();
                ConfigError::new(
                    join(path, key),
                    format!("unknown field (known fields: {})", known.join(", ")),
                )
            })?;
        let fpath = join(path, field.name());
        if v.is_null() {
            continue;
        }
        let converted = to_field_value(&field, v, &fpath)?;
        msg.set_field(&field, converted);
    }
    Ok(msg)
}

fn to_field_value(field: &FieldDescriptor, v: &Json, path: &str) -> Result<Value, ConfigError> {
    if field.is_map() {
        let Json::Object(obj) = v else {
            return Err(ConfigError::new(
                path,
                format!("must be a mapping of names to values, not {}", describe(v)),
            ));
        };
        let Kind::Message(entry) = field.kind() else {
            return Err(ConfigError::new(path, "internal: map without entry type"));
        };
        let value_field = entry.map_entry_value_field();
        let mut map = std::collections::HashMap::new();
        for (k, item) in obj {
            let item_path = format!("{path}[\"{k}\"]");
            map.insert(
                MapKey::String(k.clone()),
                to_single(&value_field.kind(), item, &item_path)?,
            );
        }
        return Ok(Value::Map(map));
    }
    if field.is_list() {
        let Json::Array(items) = v else {
            return Err(ConfigError::new(
                path,
                format!("must be a list, not {}", describe(v)),
            ));
        };
        let list = items
            .iter()
            .enumerate()
            .map(|(i, item)| to_single(&field.kind(), item, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Value::List(list));
    }
    to_single(&field.kind(), v, path)
}

fn to_single(kind: &Kind, v: &Json, path: &str) -> Result<Value, ConfigError> {
    let bad = |what: &str| ConfigError::new(path, format!("{} is not {what}", describe(v)));
    Ok(match kind {
        Kind::Bool => Value::Bool(v.as_bool().ok_or_else(|| bad("true or false"))?),
        Kind::String => Value::String(v.as_str().ok_or_else(|| bad("a string"))?.to_owned()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let n = integer(v).ok_or_else(|| bad("an integer"))?;
            Value::I32(i32::try_from(n).map_err(|_| bad("a 32-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            let n = integer(v).ok_or_else(|| bad("an integer"))?;
            Value::U32(u32::try_from(n).map_err(|_| bad("an unsigned 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let n = integer(v).ok_or_else(|| bad("an integer"))?;
            Value::I64(i64::try_from(n).map_err(|_| bad("a 64-bit integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let n = integer(v).ok_or_else(|| bad("an integer"))?;
            Value::U64(u64::try_from(n).map_err(|_| bad("an unsigned 64-bit integer"))?)
        }
        Kind::Enum(e) => {
            let found = match v {
                // Enum values carry their type's prefix (MODE_AF_SMC); the short name is accepted too.
                Json::String(name) => e.get_value_by_name(name).or_else(|| {
                    let prefix = screaming_snake(e.name());
                    e.get_value_by_name(&format!("{prefix}_{name}"))
                }),
                Json::Number(_) => integer(v)
                    .and_then(|n| i32::try_from(n).ok())
                    .and_then(|n| e.get_value(n)),
                _ => None,
            };
            let value = found.ok_or_else(|| {
                let names: Vec<_> = e.values().map(|x| x.name().to_owned()).collect();
                ConfigError::new(
                    path,
                    format!("{} is not one of {}", describe(v), names.join(", ")),
                )
            })?;
            Value::EnumNumber(value.number())
        }
        Kind::Message(m) => Value::Message(to_message(m, v, path)?),
        Kind::Float | Kind::Double | Kind::Bytes => return Err(bad("supported here")),
    })
}

/// An integer from a JSON number or a decimal string (proto3 JSON writes 64-bit values as strings).
fn integer(v: &Json) -> Option<i128> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Json::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    }
}

/// `SocketKind` -> `SOCKET_KIND`.
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
