//! The config's own scalar types: durations (`250ms`, `30s`, `5m`), byte
//! sizes (`64KiB`, `1MiB`, `500`) and argv lists.
//!
//! Each one parses inside its serde visitor, so a bad value is reported by
//! serde_yaml at the value's own line and column (an error raised after
//! deserializing would be pinned to the enclosing mapping instead).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// A duration written the human way: `250ms`, `30s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;

        impl Visitor<'_> for DurVisitor {
            type Value = Dur;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like 250ms, 30s, 5m or 1h 30m")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Dur, E> {
                parse_duration(text).map(Dur).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                // A bare 0 is unambiguous; any other bare number is not.
                if n == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration `{n}`: a duration needs a unit; expected e.g. `{n}s` or `{n}ms`"
                    )))
                }
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "invalid duration `{n}`: durations cannot be negative; expected e.g. 250ms, 30s, 5m"
                    ))),
                }
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration `{n}`: a duration needs a unit and a whole number; expected e.g. 1500ms \
                     instead of 1.5"
                )))
            }
        }

        deserializer.deserialize_any(DurVisitor)
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h 30m` (humantime's syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|why| {
        format!("invalid duration `{text}` ({why}); expected a number with a unit, like 250ms, 30s, 5m or 1h 30m")
    })
}

/// Prints a duration so that [`parse_duration`] reads it back: `4m`, `1m 30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A byte size: a plain integer (bytes) or a number with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size like 500, 64KiB or 16MiB")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_bytes(text).map(ByteSize).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n).map(ByteSize).map_err(|_| {
                    E::custom(format!(
                        "invalid byte size `{n}`: sizes cannot be negative; {SIZE_EXPECTED}"
                    ))
                })
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!("invalid byte size `{n}`: {SIZE_EXPECTED}")))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

const SIZE_EXPECTED: &str =
    "expected a whole number of bytes, optionally with a unit: B, KB, MB, GB (×1000) or KiB, MiB, GiB (×1024), \
     e.g. 64KiB";

/// Units from the largest down, so [`format_bytes`] picks the largest exact one.
const UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `500`, `500B`, `64KiB`, `16 MiB`, `1GB`. Whole numbers only.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid byte size `{text}`{why}; {SIZE_EXPECTED}");
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(bad(""));
    }
    let number: u64 = number.parse().map_err(|_| bad(" (too large)"))?;
    let unit = unit.trim_start();
    let factor = if unit.is_empty() {
        1
    } else {
        match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, factor)) => *factor,
            None => return Err(bad(&format!(" (unknown unit `{unit}`)"))),
        }
    };
    number.checked_mul(factor).ok_or_else(|| bad(" (too large)"))
}

/// Prints a byte size in the largest unit that divides it exactly: `64MiB`, `1KB`, `1000003`.
pub fn format_bytes(n: u64) -> String {
    if n == 0 {
        return "0".to_string();
    }
    match UNITS
        .iter()
        .find(|(_, factor)| *factor > 1 && n.is_multiple_of(*factor))
    {
        Some((name, factor)) => format!("{}{name}", n / factor),
        None => n.to_string(),
    }
}

/// An argv list. A single string is refused: lote never runs a shell, and
/// splitting a string on spaces would get quoting wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

pub const ARGV_EXPECTED: &str =
    "command must be a list (argv), e.g. [\"/usr/bin/foo\", \"--flag\"]; lote never runs a shell";

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;

        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = Argv;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings (argv)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Argv, E> {
                Err(E::custom(format!(
                    "{ARGV_EXPECTED} (found the string `{text}`; expected a list: for shell syntax, make sh the \
                     program: [\"/bin/sh\", \"-c\", \"{text}\"])"
                )))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(Argv(argv))
            }
        }

        deserializer.deserialize_any(ArgvVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_units() {
        assert_eq!(parse_bytes("500"), Ok(500));
        assert_eq!(parse_bytes("500B"), Ok(500));
        assert_eq!(parse_bytes("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_bytes("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2KB"), Ok(2000));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn bad_byte_sizes_say_what_is_expected() {
        for bad in [
            "12 potatoes",
            "",
            "KiB",
            "1.5MiB",
            "-3",
            "64kib",
            "99999999999999999999",
            "18446744073709551615GiB",
        ] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(err.contains("expected a whole number of bytes"), "{bad}: {err}");
        }
        assert!(parse_bytes("12 potatoes")
            .unwrap_err()
            .contains("unknown unit `potatoes`"));
    }

    #[test]
    fn byte_sizes_print_in_the_largest_exact_unit_and_read_back() {
        for (n, text) in [
            (0, "0"),
            (64 << 20, "64MiB"),
            (65536, "64KiB"),
            (1000, "1KB"),
            (1001, "1001"),
            (1 << 30, "1GiB"),
        ] {
            assert_eq!(format_bytes(n), text);
            assert_eq!(parse_bytes(text), Ok(n));
        }
    }

    #[test]
    fn durations_parse_and_print_back() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(text), Ok(d));
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        let err = parse_duration("5 minutes please").unwrap_err();
        assert!(err.contains("expected a number with a unit"), "{err}");
    }

    #[test]
    fn argv_must_be_a_list() {
        let ok: Argv = serde_yaml::from_str("[\"/bin/echo\", \"hi\"]").unwrap();
        assert_eq!(ok.0, ["/bin/echo", "hi"]);
        let err = serde_yaml::from_str::<Argv>("\"/bin/echo hi\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("command must be a list (argv)"), "{err}");
    }
}
