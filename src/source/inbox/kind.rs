//! `source: {kind: inbox}` in the config: its keys, checks and effective print.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml::Value;

use super::{InboxConfig, InboxSource, Intake};
use crate::fsutil::same_file;
use crate::sink::{SinkSpec, Synchronous, TableAck};
use crate::source::{Doorbell, Run, Source, SourceAt, SourceKind};
use crate::spec::effective::{bytes, dur, map, path};
use crate::spec::{self, absolute, ByteSize, Check, Dur, MAX_BUSY_TIMEOUT, MAX_BYTES};

/// The inbox's file when the sink is not a SQLite file it could share.
pub const DEFAULT_FILE: &str = "inbox.db";

/// The longest `dedupe_window`: ten years.
const MAX_WINDOW: Duration = Duration::from_secs(3650 * 24 * 3600);

/// `source: {kind: inbox}` — lote's own durable queue, fed by the HTTP
/// listener and `lote push`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxKeys {
    #[serde(rename = "kind", default)]
    _kind: IgnoredAny,
    /// The SQLite file. Default: the SQLite sink's own file (outcome and
    /// acknowledgement in one transaction), else `inbox.db`.
    pub path: Option<PathBuf>,
    /// Most unfinished items; a push beyond is refused. Default 100000.
    pub capacity: Option<u64>,
    /// Largest payload of one item. Default 1MiB.
    pub max_bytes: Option<ByteSize>,
    /// `full` (default: an accepted item survives a power cut) or `normal`.
    pub synchronous: Option<Synchronous>,
    /// How long a finished item's id is remembered to refuse it as a
    /// duplicate. Default 7d.
    pub dedupe_window: Option<Dur>,
    /// Wait this long for another connection's lock. Default 5s.
    pub busy_timeout: Option<Dur>,
}

impl SourceKind for InboxConfig {
    const NAME: &'static str = "inbox";
    type Keys = InboxKeys;

    fn build(k: InboxKeys, at: &SourceAt, check: &Check) -> spec::Result<Self> {
        let file = match k.path {
            Some(path) => {
                check.path("source.path", &path)?;
                absolute(at.state_dir, &path)
            }
            None => match at.sink.path().filter(|_| at.sink.acks_in_transaction()) {
                Some(sink_file) => sink_file.to_path_buf(),
                None => at.state_dir.join(DEFAULT_FILE),
            },
        };
        let d = InboxConfig::new(file);
        let capacity = k.capacity.unwrap_or(d.capacity);
        check.count("source.capacity", capacity, 1..=1_000_000_000)?;
        let max_bytes = match k.max_bytes {
            None => d.max_bytes,
            Some(b) => check.bytes_at_most("source.max_bytes", b.0, MAX_BYTES)?,
        };
        if max_bytes == 0 {
            return check.err(
                "source.max_bytes",
                "is 0, so no item could be pushed; expected a size like 1MiB",
            );
        }
        Ok(InboxConfig {
            capacity,
            max_bytes,
            synchronous: k.synchronous.unwrap_or(d.synchronous),
            dedupe_window: check.at_most(
                "source.dedupe_window",
                k.dedupe_window.map_or(d.dedupe_window, |t| t.0),
                MAX_WINDOW,
            )?,
            busy_timeout: check.at_most(
                "source.busy_timeout",
                k.busy_timeout.map_or(d.busy_timeout, |t| t.0),
                MAX_BUSY_TIMEOUT,
            )?,
            stream: false,
            path: d.path,
        })
    }

    fn effective(&self) -> Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", path(&self.path)),
            ("capacity", self.capacity.into()),
            ("max_bytes", bytes(self.max_bytes)),
            ("synchronous", self.synchronous.as_str().into()),
            ("dedupe_window", dur(self.dedupe_window)),
            ("busy_timeout", dur(self.busy_timeout)),
        ])
    }

    fn on_disk(&self, check: &mut Check) -> spec::Result<()> {
        if self.path.is_dir() {
            return check.err(
                "source.path",
                format!(
                    "{} is a directory; expected the inbox's SQLite file (it is created if missing)",
                    self.path.display()
                ),
            );
        }
        check.writable_file("source.path", &self.path)
    }

    fn shares_sink_file(&self, sink: &SinkSpec) -> bool {
        sink.acks_in_transaction() && sink.path().is_some_and(|file| same_file(&self.path, file))
    }

    fn open(&self, stream: bool) -> Result<Arc<dyn Source>, String> {
        let mut inbox = self.clone();
        inbox.stream = stream;
        let source = InboxSource::open_for_requeue(inbox).map_err(|e| format!("opening the inbox: {e}"))?;
        Ok(Arc::new(source))
    }

    fn open_for_run(&self, run: &Run) -> Result<(Arc<dyn Source>, Option<TableAck>), String> {
        let source = self.open_source(run.stream)?;
        if !run.in_sink_file {
            return Ok((Arc::new(source), None));
        }
        Ok((
            Arc::new(source.acked_in_sink_transaction()),
            Some(InboxSource::table_ack()),
        ))
    }

    fn intake(&self, bell: Option<Arc<Doorbell>>) -> Option<Result<Intake, String>> {
        Some(Intake::open(self.clone(), bell))
    }
}

impl InboxConfig {
    fn open_source(&self, stream: bool) -> Result<InboxSource, String> {
        let mut inbox = self.clone();
        inbox.stream = stream;
        InboxSource::open(inbox).map_err(|e| format!("opening the inbox source: {e}"))
    }
}
