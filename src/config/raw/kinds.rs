//! The `kind:` of each tagged section: pass one reads it from a
//! [`serde_yaml::Value`]; pass two deserializes the whole file with
//! [`RawConfigSeed`], whose seeds turn each section straight into its kind's
//! struct, so every error inside it keeps its line and column.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{RawConfig, RawDeadLetter, RawNone, TOP_KEYS};
use crate::handler::HandlerKeys;
use crate::sink::SinkKeys;
use crate::source::SourceKeys;

/// The source kinds this build has.
/// A source kind: its name in the source registry ([`crate::source::KINDS`]).
pub type SourceKind = &'static str;

/// A handler kind: its name in the handler registry ([`crate::handler::KINDS`]).
pub type HandlerKind = &'static str;

/// A sink kind: its name in the sink registry ([`crate::sink::KINDS`]).
pub type SinkKind = &'static str;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterKind {
    Sink(SinkKind),
    None,
}

/// The `kind:` of each tagged section, read by the first pass.
#[derive(Clone, Copy, Debug)]
pub struct Kinds {
    pub source: Option<SourceKind>,
    pub handler: Option<HandlerKind>,
    pub sink: Option<SinkKind>,
    pub dead_letter: Option<DeadLetterKind>,
}

/// A tagged section: its key, the kinds this build has, and the kinds SPEC
/// names that are not built yet (so the error can say so).
pub struct Section {
    pub key: &'static str,
    pub kinds: Vec<&'static str>,
    pub later: &'static [&'static str],
}

pub fn source_section() -> Section {
    Section {
        key: "source",
        kinds: crate::source::KINDS.to_vec(),
        later: &[],
    }
}
pub fn handler_section() -> Section {
    Section {
        key: "handler",
        kinds: crate::handler::KINDS.to_vec(),
        later: &[],
    }
}
pub fn sink_section() -> Section {
    Section {
        key: "sink",
        kinds: crate::sink::KINDS.to_vec(),
        later: &[],
    }
}
pub fn dead_letter_section() -> Section {
    Section {
        key: "dead_letter",
        kinds: crate::sink::KINDS.iter().copied().chain(["none"]).collect(),
        later: &[],
    }
}

pub fn source_kind(name: &str) -> Option<SourceKind> {
    crate::source::KINDS.iter().copied().find(|&kind| kind == name)
}

pub fn handler_kind(name: &str) -> Option<HandlerKind> {
    crate::handler::KINDS.iter().copied().find(|&kind| kind == name)
}

pub fn sink_kind(name: &str) -> Option<SinkKind> {
    crate::sink::KINDS.iter().copied().find(|&kind| kind == name)
}

pub fn dead_letter_kind(name: &str) -> Option<DeadLetterKind> {
    match name {
        "none" => Some(DeadLetterKind::None),
        other => sink_kind(other).map(DeadLetterKind::Sink),
    }
}

/// Deserializes the whole file, each tagged section into the struct of the
/// kind the first pass found.
pub struct RawConfigSeed(pub Kinds);

/// A top-level key. Deserialized by itself (not matched as a string after the
/// fact) so that an unknown key is reported at its own line and column.
enum TopKey {
    StateDir,
    Log,
    Session,
    Queue,
    Source,
    Handler,
    Sink,
    DeadLetter,
    Metrics,
    Http,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a top-level key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "state_dir" => TopKey::StateDir,
                    "log" => TopKey::Log,
                    "session" => TopKey::Session,
                    "queue" => TopKey::Queue,
                    "source" => TopKey::Source,
                    "handler" => TopKey::Handler,
                    "sink" => TopKey::Sink,
                    "dead_letter" => TopKey::DeadLetter,
                    "metrics" => TopKey::Metrics,
                    "http" => TopKey::Http,
                    other => return Err(E::unknown_field(other, TOP_KEYS)),
                })
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for RawConfigSeed {
    type Value = RawConfig;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawConfig, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RawConfigSeed {
    type Value = RawConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of sections (session, queue, source, handler, sink, …)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawConfig, A::Error> {
        let kinds = self.0;
        let mut raw = RawConfig::default();
        // Duplicate keys never get here: the first pass refuses them.
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::StateDir => raw.state_dir = map.next_value()?,
                TopKey::Log => raw.log = map.next_value()?,
                TopKey::Session => raw.session = map.next_value()?,
                TopKey::Queue => raw.queue = map.next_value()?,
                TopKey::Metrics => raw.metrics = map.next_value()?,
                TopKey::Http => raw.http = map.next_value()?,
                TopKey::Source => raw.source = Some(map.next_value_seed(SourceSeed(kinds.source))?),
                TopKey::Handler => raw.handler = Some(map.next_value_seed(HandlerSeed(kinds.handler))?),
                TopKey::Sink => raw.sink = Some(map.next_value_seed(SinkSeed(kinds.sink))?),
                TopKey::DeadLetter => raw.dead_letter = Some(map.next_value_seed(DeadLetterSeed(kinds.dead_letter))?),
            }
        }
        Ok(raw)
    }
}

/// The first pass found no usable kind, yet the section is there: cannot
/// happen (the first pass fails first), but must not panic either.
fn no_kind<E: de::Error>(section: &str) -> E {
    E::custom(format!("`{section}` has no usable `kind:`"))
}

struct SourceSeed(Option<SourceKind>);

impl<'de> DeserializeSeed<'de> for SourceSeed {
    type Value = SourceKeys;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SourceKeys, D::Error> {
        match self.0 {
            Some(kind) => SourceKeys::deserialize_kind(kind, d),
            None => Err(no_kind("source")),
        }
    }
}

struct HandlerSeed(Option<HandlerKind>);

impl<'de> DeserializeSeed<'de> for HandlerSeed {
    type Value = HandlerKeys;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<HandlerKeys, D::Error> {
        match self.0 {
            Some(kind) => HandlerKeys::deserialize_kind(kind, d),
            None => Err(no_kind("handler")),
        }
    }
}

struct SinkSeed(Option<SinkKind>);

impl<'de> DeserializeSeed<'de> for SinkSeed {
    type Value = SinkKeys;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SinkKeys, D::Error> {
        match self.0 {
            Some(kind) => SinkKeys::deserialize_kind(kind, d),
            None => Err(no_kind("sink")),
        }
    }
}

struct DeadLetterSeed(Option<DeadLetterKind>);

impl<'de> DeserializeSeed<'de> for DeadLetterSeed {
    type Value = RawDeadLetter;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawDeadLetter, D::Error> {
        match self.0 {
            Some(DeadLetterKind::Sink(kind)) => SinkSeed(Some(kind)).deserialize(d).map(RawDeadLetter::Sink),
            Some(DeadLetterKind::None) => RawNone::deserialize(d).map(|_| RawDeadLetter::None),
            None => Err(no_kind("dead_letter")),
        }
    }
}
