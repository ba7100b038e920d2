//! Stage one: the YAML exactly as written (SPEC §4).
//!
//! Every struct denies unknown keys, and every field is an `Option`: "not
//! given" stays visible until stage two ([`super::build`]) applies the
//! default, so an alias given together with its key can be refused. Each
//! field's `///` is its user documentation; `config.yaml` says the same.
//!
//! `source`, `handler`, `sink` and `dead_letter` pick their variant with
//! `kind:`. serde's internally tagged enums would reject unknown keys too,
//! but they buffer the section first and so lose every line and column
//! inside it (checked: errors come out at 1:1 with no key). So the kinds are
//! read in a first pass over a [`serde_yaml::Value`], and the second pass
//! deserializes each section straight into its variant's struct through a
//! seed that knows the kind ([`kinds`]). Those structs live with their kind
//! (`source/`, `handler/`, `sink/`: each folder's registry generates its
//! `*Keys` enum); this file keeps the sections that have no kind.

use std::path::PathBuf;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::handler::HandlerKeys;
use crate::queue::WhenFull;
use crate::sink::SinkKeys;
use crate::source::SourceKeys;
use crate::spec::Dur;

mod kinds;
pub use kinds::*;

/// The whole file.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// Where lote keeps its files. Relative paths elsewhere in the config
    /// resolve against it; it resolves against the current directory.
    /// Default `./state`.
    pub state_dir: Option<PathBuf>,
    /// Log level: `error`, `warn`, `info`, `debug`, `trace`. `RUST_LOG` wins.
    /// Default `info`.
    pub log: Option<LogLevel>,
    pub session: Option<RawSession>,
    pub queue: Option<RawQueue>,
    /// Required.
    pub source: Option<SourceKeys>,
    /// Required.
    pub handler: Option<HandlerKeys>,
    /// Default `{kind: sqlite, path: outcomes.db}`.
    pub sink: Option<SinkKeys>,
    /// Default `{kind: jsonl, path: dead-letter.jsonl}`; `{kind: none}` for none.
    pub dead_letter: Option<RawDeadLetter>,
    pub metrics: Option<RawMetrics>,
    /// The ingest listener; omit = none.
    pub http: Option<crate::ingest::HttpKeys>,
}

/// The top-level keys, in the order `config.yaml` documents them.
pub const TOP_KEYS: &[&str] = &[
    "state_dir",
    "log",
    "session",
    "queue",
    "source",
    "handler",
    "sink",
    "dead_letter",
    "metrics",
    "http",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `session:` — one run of seed 003's producer/consumer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    /// Worker threads (≥ 1). Seed 003 calls it `threads` too. Default 4.
    pub threads: Option<usize>,
    /// Each worker commits every `chunk` outcomes (≥ 1). Default 50.
    pub chunk: Option<usize>,
    /// ... or its partial chunk once the oldest outcome in it is this old,
    /// and always before it waits for work. Default 1s.
    pub chunk_wait: Option<Dur>,
    /// Most items taken from the source per session; 0 = no limit. Alias
    /// `lote` (seed 003). Default 0.
    pub max_items: Option<usize>,
    /// Seed 003's name for `max_items`.
    pub lote: Option<usize>,
    /// Stop the session this long after it starts. Alias `timer` (seed 003).
    /// Default none.
    pub deadline: Option<Dur>,
    /// Seed 003's name for `deadline`.
    pub timer: Option<Dur>,
    /// Start a session on this period; omitted = one session (or one
    /// continuous session for a stream source). Default none.
    pub every: Option<Dur>,
    /// How long the producer waits before asking an idle stream source
    /// again. Default 1s.
    pub poll_every: Option<Dur>,
}

/// `queue:` — the bounded priority queue between the producer and the workers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Most work items queued at once (≥ 1). Default 1024.
    pub capacity: Option<usize>,
    /// `block` (default), `drop_oldest`, `drop_newest`, `drop_write`, `reject`.
    pub when_full: Option<WhenFull>,
    /// With `block` only: how long a push waits for room. Default: forever.
    pub block_timeout: Option<Dur>,
}

// ---------------------------------------------------------------- sinks

#[derive(Debug)]
pub enum RawDeadLetter {
    Sink(SinkKeys),
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNone {
    #[serde(default)]
    #[allow(dead_code)]
    kind: IgnoredAny,
}

// ---------------------------------------------------------------- metrics

/// `metrics:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// How often the Prometheus textfile is written. Default 15s.
    pub every: Option<Dur>,
    /// A node_exporter textfile, written atomically. Default none.
    pub textfile: Option<PathBuf>,
    /// A summary log line this often. Default 30s.
    pub log_every: Option<Dur>,
}
