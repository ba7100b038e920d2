//! Helpers that print a value of the effective config (`lote check`) the
//! way the config file spells it, so loading it again gives the same value.

use std::path::Path;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::value::{format_bytes, format_duration};

/// A mapping with its keys in the given order.
pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<Mapping>(),
    )
}

pub fn dur(d: Duration) -> Value {
    Value::from(format_duration(d))
}

pub fn opt_dur(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, dur)
}

/// An engine enum as the config spells it (its serde derive).
pub fn spelled<T: serde::Serialize>(value: &T) -> Value {
    // Unit and string variants cannot fail to serialize.
    // A newtype variant (`{json_field: NAME}`) as a one-key mapping, as
    // `raw` reads it, not a YAML tag.
    serde_yaml::with::singleton_map::serialize(value, serde_yaml::value::Serializer).unwrap_or(Value::Null)
}

pub fn path(p: &Path) -> Value {
    Value::from(p.to_string_lossy().into_owned())
}

pub fn bytes(n: u64) -> Value {
    Value::from(format_bytes(n))
}

pub fn pairs(entries: &[(String, String)]) -> Value {
    Value::Mapping(
        entries
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    )
}
