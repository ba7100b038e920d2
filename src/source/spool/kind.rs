//! `source: {kind: spool}` in the config: its keys, checks and effective print.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml::Value;

use super::{OnDone, SpoolConfig, SpoolPriority, SpoolSource};
use crate::source::{Source, SourceAt, SourceKind};
use crate::spec::effective::{bytes, dur, map, path, spelled};
use crate::spec::{self, absolute, ByteSize, Check, Dur, MAX_BYTES, MAX_DURATION};

/// `source: {kind: spool}` — a directory; one file = one item.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolKeys {
    /// `spool`; read by the first pass, which picked this struct.
    #[serde(rename = "kind", default)]
    _kind: IgnoredAny,
    /// The directory to take files from. Required.
    pub path: Option<PathBuf>,
    /// What happens to a done file: `move` (to `<path>/done/`, default) or `delete`.
    pub on_done: Option<OnDone>,
    /// Where an item's priority comes from: `filename_prefix` (default;
    /// `1-x.json` → 1), `fixed` (all the same), or `{json_field: NAME}` (an
    /// integer field of the file's JSON object).
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub priority: Option<SpoolPriority>,
    /// A file must be unchanged this long before it is taken. Default 1s.
    pub stable_for: Option<Dur>,
    /// Larger files are dead-lettered unread. Default 16MiB.
    pub max_bytes: Option<ByteSize>,
}

impl SourceKind for SpoolConfig {
    const NAME: &'static str = "spool";
    type Keys = SpoolKeys;

    fn build(s: SpoolKeys, at: &SourceAt, check: &Check) -> spec::Result<Self> {
        let Some(path) = s.path else {
            return check.err(
                "source.path",
                "is missing; expected the spool directory, e.g. path: ./spool",
            );
        };
        check.path("source.path", &path)?;
        let d = SpoolConfig::new(absolute(at.state_dir, &path));
        let max_bytes = match s.max_bytes {
            None => d.max_bytes,
            Some(b) => check.bytes_at_most("source.max_bytes", b.0, MAX_BYTES)?,
        };
        if max_bytes == 0 {
            return check.err(
                "source.max_bytes",
                "is 0, so no file could be processed; expected a size like 16MiB",
            );
        }
        let priority = match s.priority {
            None => d.priority,
            Some(SpoolPriority::JsonField(name)) if name.trim().is_empty() => {
                return check.err(
                    "source.priority.json_field",
                    "is empty; expected a JSON field name, e.g. {json_field: priority}",
                )
            }
            Some(priority) => priority,
        };
        Ok(SpoolConfig {
            on_done: s.on_done.unwrap_or(d.on_done),
            priority,
            stable_for: check.at_most(
                "source.stable_for",
                s.stable_for.map_or(d.stable_for, |t| t.0),
                MAX_DURATION,
            )?,
            max_bytes,
            stream: false,
            dir: d.dir,
        })
    }

    fn effective(&self) -> Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", path(&self.dir)),
            ("on_done", spelled(&self.on_done)),
            ("priority", spelled(&self.priority)),
            ("stable_for", dur(self.stable_for)),
            ("max_bytes", bytes(self.max_bytes)),
        ])
    }

    fn on_disk(&self, check: &mut Check) -> spec::Result<()> {
        check.creatable_dir("source.path", &["source.path", "source"], &self.dir, None)
    }

    fn open(&self, stream: bool) -> Result<Arc<dyn Source>, String> {
        let mut spool = self.clone();
        spool.stream = stream;
        let source = SpoolSource::open(spool).map_err(|e| format!("opening the spool source: {e}"))?;
        Ok(Arc::new(source))
    }
}
