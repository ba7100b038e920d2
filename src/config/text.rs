//! The config file before and around the YAML parser: what is read, and
//! what the parser is never handed (SPEC §3.9: every error points somewhere,
//! nothing is read without bounds).
//!
//! - [`read`]: a regular file only (a FIFO would block, `/dev/zero` would
//!   never end), at most [`MAX_FILE_BYTES`], valid UTF-8 (the error names
//!   the line and column of the first bad byte).
//! - [`check`]: characters YAML forbids (control characters) are refused at
//!   their line and column, and so is a file with more than
//!   [`MAX_FLOW_OPENERS`] `[`/`{`: libyaml's scanner rechecks every open
//!   flow level at each token, so deep flow nesting costs quadratic time
//!   (100 000 unclosed `[` took minutes) before serde_yaml's recursion limit
//!   is ever consulted — that limit applies only after the whole document
//!   has been scanned.
//! - [`BudgetedValue`]: the first pass's value tree with aliases expanded,
//!   refused past [`MAX_VALUES`] values. serde_yaml 0.9 expands aliases; its
//!   repetition limit bounds the number of jumps, not their size, so one
//!   alias list to a large anchor ("billion laughs") would fill memory.
//!   Anchors and aliases are allowed within that budget.
//! - [`second_document`]: where a second YAML document starts, for the
//!   error serde_yaml gives without a place.

use std::cell::Cell;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use crate::spec::{format_bytes, ConfigError, Doc};

/// The largest config file read: real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most `[` and `{` (outside comment lines) a config may hold.
pub const MAX_FLOW_OPENERS: usize = 256;
/// The most values (mapping entries, list elements, scalars) in the
/// document once aliases are expanded.
pub const MAX_VALUES: usize = 100_000;

/// Reads the config file at `path`: a regular file (checked before opening,
/// and again on the opened file, which is opened non-blocking so a FIFO put
/// in its place cannot block), at most [`MAX_FILE_BYTES`], UTF-8.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read the config file: {message}"),
    };
    let usable = |meta: &Metadata| {
        if !meta.is_file() {
            return Err(fail(format!(
                "it is {}, not a regular file; expected a YAML file",
                file_kind(meta)
            )));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(fail(format!(
                "it holds {} bytes, more than the {} a config may have; expected a YAML file of a few KiB",
                meta.len(),
                format_bytes(MAX_FILE_BYTES)
            )));
        }
        Ok(())
    };
    usable(&std::fs::metadata(path).map_err(|e| fail(e.to_string()))?)?;
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    usable(&file.metadata().map_err(|e| fail(e.to_string()))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "it grew past the {} a config may have while being read; expected a YAML file of a few KiB",
            format_bytes(MAX_FILE_BYTES)
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Valid UTF-8 up to the bad byte, by definition.
        let before = String::from_utf8_lossy(good);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            line: Some(line),
            column: Some(column),
            message: format!(
                "cannot read the config file: byte 0x{:02x} is not UTF-8; expected UTF-8 text",
                e.as_bytes()[good.len()]
            ),
            ..fail(String::new())
        }
    })
}

fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Refuses what the YAML parser would refuse without a place, or parse too
/// slowly: characters YAML does not allow, and too many flow collections.
pub(super) fn check(doc: &Doc) -> Result<(), ConfigError> {
    let mut openers = 0;
    for (number, line) in doc.text.split('\n').enumerate() {
        if let Some((column, c)) = line.chars().enumerate().find(|(_, c)| !yaml_printable(*c)) {
            return Err(doc.at(
                (number + 1, column + 1),
                format!(
                    "the control character U+{:04X} is not allowed in YAML; expected printable text (inside \
                     double quotes it can be written as an escape, e.g. \"\\x{:02x}\")",
                    c as u32,
                    c as u32 & 0xff
                ),
            ));
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        for (column, c) in line.chars().enumerate() {
            if c == '[' || c == '{' {
                openers += 1;
                if openers > MAX_FLOW_OPENERS {
                    return Err(doc.at(
                        (number + 1, column + 1),
                        format!(
                            "more than {MAX_FLOW_OPENERS} `[` or `{{` in one file; expected a config nested a few \
                             levels deep (deep flow nesting is refused before parsing: it takes quadratic time)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// YAML 1.2's printable characters (what libyaml accepts), and CR.
fn yaml_printable(c: char) -> bool {
    matches!(c as u32,
        0x09 | 0x0A | 0x0D | 0x20..=0x7E | 0x85 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// The first pass's [`Value`], every value counted against [`MAX_VALUES`]
/// (aliases expanded), duplicate keys refused as serde_yaml's [`Mapping`] does.
pub(super) struct BudgetedValue<'b> {
    pub spent: &'b Cell<usize>,
}

impl BudgetedValue<'_> {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        let spent = self.spent.get() + 1;
        self.spent.set(spent);
        if spent > MAX_VALUES {
            return Err(E::custom(format!(
                "the document holds more than {MAX_VALUES} values once its aliases (`*name`) are expanded; \
                 expected a config of a few hundred values (aliases that repeat large anchors are refused)"
            )));
        }
        Ok(())
    }

    fn again(&self) -> Self {
        BudgetedValue { spent: self.spent }
    }
}

impl<'de> DeserializeSeed<'de> for BudgetedValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BudgetedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut values = Vec::new();
        while let Some(value) = seq.next_element_seed(self.again())? {
            values.push(value);
        }
        Ok(Value::Sequence(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self.again())? {
            if mapping.contains_key(&key) {
                // serde_yaml's words, which the error mapping recognises.
                return Err(de::Error::custom(match &key {
                    Value::String(s) => format!("duplicate entry with key {s:?}"),
                    _ => "duplicate entry in YAML map".to_string(),
                }));
            }
            let value = map.next_value_seed(self.again())?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        self.spend()?;
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self.again())?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::second_document;

    #[test]
    fn second_documents_are_found() {
        assert_eq!(second_document("a: 1\n---\nb: 2\n"), Some((2, 1)));
        assert_eq!(second_document("---\na: 1\n---\nb: 2\n"), Some((3, 1)));
        assert_eq!(second_document("---\na: 1\n...\nb: 2\n"), Some((4, 1)));
        assert_eq!(second_document("# c\n---\na: 1\n"), None);
        assert_eq!(second_document("a: '---'\nb: ---x\n"), None);
    }

    #[test]
    fn printable_is_yamls_set() {
        for c in ['\t', '\n', 'a', '~', 'é', '\u{85}', '\u{feff}', '😀'] {
            assert!(yaml_printable(c), "{c:?}");
        }
        for c in ['\0', '\u{1}', '\u{7f}', '\u{80}', '\u{9f}', '\u{fffe}'] {
            assert!(!yaml_printable(c), "{c:?}");
        }
    }
}
