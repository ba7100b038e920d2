//! What a source kind provides, and the registry that turns the
//! one-line-per-kind list in `source/mod.rs` ([`source_kinds!`]) into
//! [`super::SourceSpec`], [`super::SourceKeys`] and their dispatch. Adding a
//! kind: its own file with its keys and an `impl SourceKind`, one line in
//! `source/mod.rs`, and its keys in the reference `config.yaml`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Value;

use super::{Doorbell, Intake, Source};
use crate::sink::{SinkSpec, TableAck};
use crate::spec::{self, Check};

/// One source kind: how its `source:` section is read, checked, printed and
/// opened. Implemented by the kind's config type.
pub trait SourceKind: Sized {
    /// The `kind:` that selects it.
    const NAME: &'static str;
    /// The section's keys as written: `#[serde(deny_unknown_fields)]`, with
    /// a `kind` field (`#[serde(rename = "kind", default)] _kind: IgnoredAny`).
    type Keys: serde::de::DeserializeOwned + Default + std::fmt::Debug;

    /// Defaults applied, every value checked (errors name `source.<key>`).
    fn build(keys: Self::Keys, at: &SourceAt, check: &Check) -> spec::Result<Self>;
    /// Its section of the effective config (`lote check`), `kind` first.
    fn effective(&self) -> Value;
    /// What opening it would refuse, found without opening it (`lote
    /// check`): an error, or a warning pushed to `check.warnings`.
    fn on_disk(&self, _check: &mut Check) -> spec::Result<()> {
        Ok(())
    }
    /// Whether `lote run` keeps it open and waits for more (a file of lines
    /// is read to its end).
    fn streams(&self) -> bool {
        true
    }
    /// Whether it resumes from the sink's `done` records (so the writer
    /// keeps a done lookup, and `--no-resume` means something).
    fn resumes_from_sink(&self) -> bool {
        false
    }
    /// Whether it shares the sink's file, so that the sink acknowledges its
    /// items in the same transaction as their outcomes.
    fn shares_sink_file(&self, _sink: &SinkSpec) -> bool {
        false
    }
    /// Opens it to take items back (`dead-letter requeue`, which may run
    /// while a daemon has it open: no recovery that would take a running
    /// daemon's claims), and, by default, for a run. Errors are whole
    /// sentences: "opening the spool source: …".
    fn open(&self, stream: bool) -> Result<Arc<dyn Source>, String>;
    /// For a kind other processes push items into (the inbox): its way in,
    /// opened. `bell`: the running source's, rung after each commit. `None`:
    /// this kind takes no pushes.
    fn intake(&self, _bell: Option<Arc<Doorbell>>) -> Option<Result<Intake, String>> {
        None
    }
    /// Opens it for a run.
    fn open_for_run(&self, run: &Run) -> Result<(Arc<dyn Source>, Option<TableAck>), String> {
        Ok((self.open(run.stream)?, None))
    }
}

/// What a source section's build sees besides its keys.
pub struct SourceAt<'a> {
    /// Relative paths resolve against it.
    pub state_dir: &'a Path,
    /// `session.every`, if sessions start on a period.
    pub every: Option<Duration>,
    /// The sink, already built (an inbox lives in its file by default).
    pub sink: &'a SinkSpec,
}

/// What opening a source for a run sees besides its config.
pub struct Run<'a> {
    pub stream: bool,
    /// `false` under `--no-resume`.
    pub resume: bool,
    /// `handler.qos: exactly_once`.
    pub exactly_once: bool,
    /// The sink's file (`None`: a sink that writes no file).
    pub sink_path: Option<&'a Path>,
    /// [`SourceKind::shares_sink_file`] was true when the config was loaded.
    pub in_sink_file: bool,
}

/// The registry: one `Variant(ConfigType)` per kind, in the order `lote
/// check` lists them. Generates [`super::SourceSpec`] (what the config
/// holds), [`super::SourceKeys`] (a section as written) and [`super::KINDS`].
macro_rules! source_kinds {
    ($($Variant:ident($Config:ty)),* $(,)?) => {
        /// A source as the config holds it: one kind's checked config.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum SourceSpec {
            $($Variant($Config),)*
        }

        /// A `source:` section as written, read as the kind its `kind:` names.
        #[derive(Debug)]
        pub enum SourceKeys {
            $($Variant(<$Config as SourceKind>::Keys),)*
        }

        /// Every source kind's `kind:` name.
        pub const KINDS: &[&str] = &[$(<$Config as SourceKind>::NAME,)*];

        impl SourceKeys {
            /// Reads a section as kind `name` (one of [`KINDS`]).
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
                $(if name == <$Config as SourceKind>::NAME {
                    return <<$Config as SourceKind>::Keys as serde::Deserialize>::deserialize(d)
                        .map(SourceKeys::$Variant);
                })*
                Err(serde::de::Error::custom(format!("unknown source kind `{name}`")))
            }
        }

        impl SourceSpec {
            /// Checks a section into its kind's config.
            pub fn build(keys: SourceKeys, at: &SourceAt, check: &$crate::spec::Check) -> $crate::spec::Result<Self> {
                match keys {
                    $(SourceKeys::$Variant(k) => <$Config as SourceKind>::build(k, at, check).map(SourceSpec::$Variant),)*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(SourceSpec::$Variant(_) => <$Config as SourceKind>::NAME,)*
                }
            }

            pub fn effective(&self) -> serde_yaml::Value {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::effective(c),)*
                }
            }

            pub fn on_disk(&self, check: &mut $crate::spec::Check) -> $crate::spec::Result<()> {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::on_disk(c, check),)*
                }
            }

            pub fn streams(&self) -> bool {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::streams(c),)*
                }
            }

            pub fn resumes_from_sink(&self) -> bool {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::resumes_from_sink(c),)*
                }
            }

            pub fn shares_sink_file(&self, sink: &$crate::sink::SinkSpec) -> bool {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::shares_sink_file(c, sink),)*
                }
            }

            pub fn open(&self, stream: bool) -> Result<std::sync::Arc<dyn Source>, String> {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::open(c, stream),)*
                }
            }

            pub fn intake(
                &self,
                bell: Option<std::sync::Arc<$crate::source::Doorbell>>,
            ) -> Option<Result<$crate::source::Intake, String>> {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::intake(c, bell),)*
                }
            }

            pub fn open_for_run(
                &self,
                run: &Run,
            ) -> Result<(std::sync::Arc<dyn Source>, Option<$crate::sink::TableAck>), String> {
                match self {
                    $(SourceSpec::$Variant(c) => SourceKind::open_for_run(c, run),)*
                }
            }
        }
    };
}
pub(crate) use source_kinds;
