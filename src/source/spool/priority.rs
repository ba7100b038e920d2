//! Where a spool item's priority comes from: a file-name prefix or an
//! integer field of its JSON, read without building the document.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::item::{Priority, DEFAULT_PRIORITY};

/// Leading digits followed by `-` or `_` (`10-foo.json` → 10); a prefix too
/// large for a priority saturates (least urgent). Anything else: the default.
pub(super) fn prefix_priority(name: &str) -> Priority {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !matches!(name.as_bytes().get(digits), Some(b'-' | b'_')) {
        return DEFAULT_PRIORITY;
    }
    name.as_bytes()[..digits].iter().fold(0 as Priority, |p, d| {
        p.saturating_mul(10).saturating_add(Priority::from(d - b'0'))
    })
}

/// The integer `field` of a JSON object; anything else (not JSON, not an
/// object, no such field, not an integer) gives the default priority: the
/// handler, not the ordering, is the place to reject a bad payload.
pub(super) fn json_priority(bytes: &[u8], field: &str) -> Priority {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let found = FieldInteger(field).deserialize(&mut deserializer);
    match found.and_then(|p| deserializer.end().map(|()| p)) {
        Ok(Some(p)) => p.clamp(Priority::MIN as i64, Priority::MAX as i64) as Priority,
        _ => DEFAULT_PRIORITY,
    }
}

/// Reads one integer field of a JSON object and skips the rest without
/// building it: a 16 MiB payload is parsed in constant memory.
struct FieldInteger<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldInteger<'_> {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldInteger<'_> {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 && found.is_none() {
                found = map.next_value_seed(AnyInteger)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Any JSON value: `Some` for an integer, `None` for anything else.
struct AnyInteger;

impl<'de> DeserializeSeed<'de> for AnyInteger {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyInteger {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_filename_prefix_is_digits_then_a_dash_or_underscore() {
        assert_eq!(prefix_priority("10-foo.json"), 10);
        assert_eq!(prefix_priority("3_bar"), 3);
        assert_eq!(prefix_priority("007-x"), 7);
        assert_eq!(prefix_priority("foo.json"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("10foo"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("10"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("-5-x"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("99999999999999-x"), Priority::MAX);
    }

    #[test]
    fn a_json_priority_is_an_integer_field_or_the_default() {
        assert_eq!(
            json_priority(br#"{"priority": 2, "data": [1, {"a": 3}]}"#, "priority"),
            2
        );
        assert_eq!(
            json_priority(br#"{"data": {"priority": 1}, "priority": -4}"#, "priority"),
            -4
        );
        assert_eq!(json_priority(br#"{"priority": 1e99}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"{"priority": "1"}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"{"other": 1}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"[1, 2]"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(b"not json", "priority"), DEFAULT_PRIORITY);
        assert_eq!(
            json_priority(br#"{"priority": 1} trailing"#, "priority"),
            DEFAULT_PRIORITY
        );
        assert_eq!(
            json_priority(br#"{"priority": 99999999999}"#, "priority"),
            Priority::MAX
        );
    }
}
