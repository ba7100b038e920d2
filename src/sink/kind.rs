//! What a sink kind provides, and the registry that turns the one-line-per-kind
//! list in `sink/mod.rs` ([`sink_kinds!`]) into [`super::SinkSpec`],
//! [`super::SinkKeys`] and their dispatch. Adding a kind: its own file with
//! its keys (declared with [`sink_keys!`]) and an `impl SinkKind`, one line
//! in `sink/mod.rs`, and its keys in the reference `config.yaml`.

use std::path::Path;
use std::time::Duration;

use serde_yaml::Value;

use super::{Record, Role, Sink, TableAck};
use crate::spec::{self, Check, Dur};

/// One sink kind: how its section of the config is read, checked, printed
/// and opened. Implemented by the kind's config type.
pub trait SinkKind: Sized {
    /// The `kind:` that selects it.
    const NAME: &'static str;
    /// The section's keys as written (declared with [`sink_keys!`], which
    /// adds `kind` and the writer's keys).
    type Keys: serde::de::DeserializeOwned + Default + std::fmt::Debug;

    /// Defaults applied, every value checked (errors name `at.key(..)`).
    fn build(keys: Self::Keys, at: &Place, check: &Check) -> spec::Result<(Self, WriterKeys)>;
    /// Its section of the effective config (`lote check`), `kind` first.
    fn effective(&self) -> Value;
    /// The file it writes; `None` for a sink that writes no file (a Redis
    /// stream): no directory to create, no file to share with a source.
    fn path(&self) -> Option<&Path>;
    /// What `lote run` would refuse at start that only the disk can tell,
    /// besides a writable `path` (which the config checks for every kind):
    /// a password file that cannot be read.
    fn on_disk(&self, _check: &Check) -> spec::Result<()> {
        Ok(())
    }
    /// Whether it can mark a work table of its own file in the transaction
    /// that writes the outcomes ([`TableAck`]): a source in that file is
    /// then acknowledged with its outcomes, at once.
    fn acks_in_transaction(&self) -> bool {
        false
    }
    /// Opens it; `table_ack` only when a SQLite source shares its file.
    fn open(&self, table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, String>;
    /// Every record it holds (`dead-letter list`, `requeue`).
    fn records(&self) -> Result<Vec<Record>, String>;
    /// How long one write may wait for a lock (the stop watchdog's margin).
    fn busy_timeout(&self) -> Duration {
        Duration::ZERO
    }
    /// Refuses a sink that may lose `done` records while something reads
    /// them (`why`: exactly-once, or a lines source's resume).
    fn done_records_survive(&self, _check: &Check, _why: &str) -> spec::Result<()> {
        Ok(())
    }
}

/// Where a sink section is: `sink:` or `dead_letter:`, and what relative
/// paths resolve against.
pub struct Place<'a> {
    pub role: Role,
    pub state_dir: &'a Path,
}

impl Place<'_> {
    /// The section's name in the file.
    pub fn section(&self) -> &'static str {
        match self.role {
            Role::Outcomes => "sink",
            Role::DeadLetter => "dead_letter",
        }
    }

    /// The dotted key of one of the section's keys: `sink.path`.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.section())
    }

    /// The default file: `outcomes` or `dead_letter` as given.
    pub fn default_path(&self, outcomes: &'static str, dead_letter: &'static str) -> &'static str {
        match self.role {
            Role::Outcomes => outcomes,
            Role::DeadLetter => dead_letter,
        }
    }
}

/// The write-behind thread's keys, allowed under `sink:` only (the config
/// refuses them under `dead_letter:`, which the same thread writes).
#[derive(Debug, Default)]
pub struct WriterKeys {
    /// A batch closes at this many outcomes (≥ 1). Default 500.
    pub batch: Option<usize>,
    /// … or this long after its oldest outcome arrived. Default 1s.
    pub flush_every: Option<Dur>,
    /// Retries of a failed flush; then its items go back to the
    /// source and run again. Default 5.
    pub max_retries: Option<u32>,
    /// At shutdown, how long to write what is queued. Default 30s.
    pub drain_timeout: Option<Dur>,
}

impl WriterKeys {
    /// The keys given, for the error under `dead_letter:`.
    pub fn given(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.batch.is_some() {
            keys.push("batch");
        }
        if self.flush_every.is_some() {
            keys.push("flush_every");
        }
        if self.max_retries.is_some() {
            keys.push("max_retries");
        }
        if self.drain_timeout.is_some() {
            keys.push("drain_timeout");
        }
        keys
    }
}

/// A sink kind's keys: the struct, with `kind:` accepted and the writer's
/// keys read into `writer`; unknown keys refused, every error at its line.
macro_rules! sink_keys {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub writer: $crate::sink::WriterKeys,
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Keys {
                    #[serde(default)]
                    #[allow(dead_code)]
                    kind: serde::de::IgnoredAny,
                    $($(#[$fmeta])* $field: $ty,)*
                    batch: Option<usize>,
                    flush_every: Option<$crate::spec::Dur>,
                    max_retries: Option<u32>,
                    drain_timeout: Option<$crate::spec::Dur>,
                }
                let k = <Keys as serde::Deserialize>::deserialize(deserializer)?;
                Ok($name {
                    $($field: k.$field,)*
                    writer: $crate::sink::WriterKeys {
                        batch: k.batch,
                        flush_every: k.flush_every,
                        max_retries: k.max_retries,
                        drain_timeout: k.drain_timeout,
                    },
                })
            }
        }
    };
}
pub(crate) use sink_keys;

/// The registry: one `Variant(ConfigType)` per kind, in the order `lote
/// check` lists them. Generates [`super::SinkSpec`] (what the config holds),
/// [`super::SinkKeys`] (a section as written) and [`super::KINDS`].
macro_rules! sink_kinds {
    ($($Variant:ident($Config:ty)),* $(,)?) => {
        /// A sink as the config holds it: one kind's checked config.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum SinkSpec {
            $($Variant($Config),)*
        }

        /// A sink section as written, read as the kind its `kind:` names.
        #[derive(Debug)]
        pub enum SinkKeys {
            $($Variant(<$Config as SinkKind>::Keys),)*
        }

        /// Every sink kind's `kind:` name.
        pub const KINDS: &[&str] = &[$(<$Config as SinkKind>::NAME,)*];

        impl SinkKeys {
            /// Reads a section as kind `name` (one of [`KINDS`]).
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
                $(if name == <$Config as SinkKind>::NAME {
                    return <<$Config as SinkKind>::Keys as serde::Deserialize>::deserialize(d).map(SinkKeys::$Variant);
                })*
                Err(serde::de::Error::custom(format!("unknown sink kind `{name}`")))
            }

            /// Kind `name` with no keys given: what an absent section means.
            pub fn empty(name: &str) -> Option<Self> {
                $(if name == <$Config as SinkKind>::NAME {
                    return Some(SinkKeys::$Variant(Default::default()));
                })*
                None
            }
        }

        impl SinkSpec {
            /// Checks a section into its kind's config (and the writer's keys).
            pub fn build(
                keys: SinkKeys,
                at: &Place,
                check: &$crate::spec::Check,
            ) -> $crate::spec::Result<(SinkSpec, WriterKeys)> {
                match keys {
                    $(SinkKeys::$Variant(k) => {
                        <$Config as SinkKind>::build(k, at, check).map(|(c, w)| (SinkSpec::$Variant(c), w))
                    })*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(SinkSpec::$Variant(_) => <$Config as SinkKind>::NAME,)*
                }
            }

            pub fn path(&self) -> Option<&std::path::Path> {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::path(c),)*
                }
            }

            pub fn on_disk(&self, check: &$crate::spec::Check) -> $crate::spec::Result<()> {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::on_disk(c, check),)*
                }
            }

            pub fn effective(&self) -> serde_yaml::Value {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::effective(c),)*
                }
            }

            pub fn open(&self, table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, String> {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::open(c, table_ack),)*
                }
            }

            pub fn records(&self) -> Result<Vec<Record>, String> {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::records(c),)*
                }
            }

            pub fn busy_timeout(&self) -> std::time::Duration {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::busy_timeout(c),)*
                }
            }

            pub fn acks_in_transaction(&self) -> bool {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::acks_in_transaction(c),)*
                }
            }

            pub fn done_records_survive(&self, check: &$crate::spec::Check, why: &str) -> $crate::spec::Result<()> {
                match self {
                    $(SinkSpec::$Variant(c) => SinkKind::done_records_survive(c, check, why),)*
                }
            }
        }
    };
}
pub(crate) use sink_kinds;
