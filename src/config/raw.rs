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
//! seed that knows the kind ([`kinds`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

use crate::policy::WhenOpen;
use crate::queue::WhenFull;
use crate::session::Qos;
use crate::sink::SinkKeys;
use crate::source::SourceKeys;
use crate::spec::{Argv, ByteSize, Dur};

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
    pub handler: Option<RawHandler>,
    /// Default `{kind: sqlite, path: outcomes.db}`.
    pub sink: Option<SinkKeys>,
    /// Default `{kind: jsonl, path: dead-letter.jsonl}`; `{kind: none}` for none.
    pub dead_letter: Option<RawDeadLetter>,
    pub metrics: Option<RawMetrics>,
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

// ---------------------------------------------------------------- handler

#[derive(Debug)]
pub enum RawHandler {
    Exec(RawExec),
    Http(RawHttp),
    Noop(RawNoop),
}

impl RawHandler {
    /// The keys every handler kind has.
    pub fn policy(&self) -> &RawPolicy {
        match self {
            RawHandler::Exec(h) => &h.policy,
            RawHandler::Http(h) => &h.policy,
            RawHandler::Noop(h) => &h.policy,
        }
    }
}

/// The keys every handler kind shares. Not `#[serde(flatten)]`: flattening
/// buffers the section and cannot deny unknown keys, so each kind lists them
/// again and hands them over with `policy()`.
#[derive(Debug, Default)]
pub struct RawPolicy {
    pub qos: Option<Qos>,
    pub timeout: Option<Dur>,
    pub retry: Option<RawRetry>,
    pub breaker: Option<RawBreaker>,
}

/// Declares a handler kind's struct with the section's shared keys added,
/// and moves those into [`RawPolicy`] after deserializing. Each section's shared keys are
/// listed once, in its arm.
macro_rules! kind_keys {
    (handler $($kind:tt)*) => {
        kind_keys! { @shared policy: RawPolicy {
            /// `at_most_once`, `at_least_once` (default), `exactly_once`.
            qos: Option<Qos>,
            /// Per-call (per-attempt) deadline. Default none (http: 30s).
            timeout: Option<Dur>,
            /// Retries of retryable failures. Default 3 attempts, 1s
            /// back-off doubling to at most 1m, ±20 % jitter.
            retry: Option<RawRetry>,
            /// Circuit breaker. Default none.
            breaker: Option<RawBreaker>,
        } $($kind)* }
    };
    (@shared $shared:ident: $Shared:ident { $($(#[$smeta:meta])* $sfield:ident: $sty:ty,)* }
     $(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub $shared: $Shared,
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Keys {
                    #[serde(default)]
                    #[allow(dead_code)]
                    kind: IgnoredAny,
                    $($(#[$fmeta])* $field: $ty,)*
                    $($(#[$smeta])* $sfield: $sty,)*
                }
                let k = Keys::deserialize(deserializer)?;
                Ok($name {
                    $($field: k.$field,)*
                    $shared: $Shared { $($sfield: k.$sfield,)* },
                })
            }
        }
    };
}

kind_keys! {
    handler
    /// `handler: {kind: exec}` — runs a command per item, payload on stdin.
    RawExec {
        /// The program and its arguments, as a list. Required.
        command: Option<Argv>,
        /// Exit codes that fail an item for good (no retry). Default none.
        fatal_exit_codes: Option<Vec<i32>>,
        /// Most bytes of stdout kept as the output. Default 64KiB.
        output_limit: Option<ByteSize>,
        /// Between SIGTERM to the child's process group and SIGKILL. Default 5s.
        kill_grace: Option<Dur>,
        /// Extra environment variables. Default none.
        env: Option<BTreeMap<String, String>>,
        /// The child's working directory. Default: lote's.
        workdir: Option<PathBuf>,
    }
}

kind_keys! {
    handler
    /// `handler: {kind: http}` — sends each payload to a URL.
    RawHttp {
        /// `http://…` or `https://…`. Required.
        url: Option<String>,
        /// Default `POST`.
        method: Option<String>,
        /// Extra request headers. Default none.
        headers: Option<BTreeMap<String, String>>,
        /// Default 5s.
        connect_timeout: Option<Dur>,
        /// Most bytes of the response body kept as the output. Default 64KiB.
        output_limit: Option<ByteSize>,
    }
}

kind_keys! {
    handler
    /// `handler: {kind: noop}` — done at once; for dry runs.
    RawNoop {}
}

/// `handler.retry:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries, the first included (≥ 1; 1 = no retry). Default 3.
    pub attempts: Option<u32>,
    /// Delay before the first retry; doubles each retry. Default 1s.
    pub backoff: Option<Dur>,
    /// Cap on one delay (a Retry-After hint may exceed it). Default 1m.
    pub max_backoff: Option<Dur>,
    /// Each delay is drawn from ±this fraction of the nominal one (0 to 1). Default 0.2.
    pub jitter: Option<f64>,
    /// Cap on a downstream's Retry-After hint; a longer one is capped, with
    /// a warning. Default 10m.
    pub max_retry_after: Option<Dur>,
}

/// `handler.breaker:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive retryable failures that open it (≥ 1). Default 5.
    pub failures: Option<u32>,
    /// How long it stays open before probing. Default 30s.
    pub open_for: Option<Dur>,
    /// Probe calls let through when half-open (≥ 1). Default 1.
    pub half_open_probes: Option<u32>,
    /// `wait` (default; pause workers) or `skip` (return items to the source).
    pub when_open: Option<WhenOpen>,
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
