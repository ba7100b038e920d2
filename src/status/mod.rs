//! [`Status`]: one snapshot of everything an operator asks about a running
//! lote — what `lote status` prints, what `<state_dir>/status.json` holds,
//! and what the Prometheus textfile is rendered from (SPEC §3.7, §3.8).
//!
//! The daemon captures a status every `metrics.every` and at each session's
//! end, writes it with [`Status::write`], logs [`Status::summary_line`] every
//! `metrics.log_every` and logs [`Status::warnings`] when they change.
//!
//! # Invariants
//!
//! - **The JSON field names are a contract.** `lote status --json`, scripts
//!   and dashboards read them: fields may be added (with `#[serde(default)]`
//!   so older files still read), never renamed. Unknown fields are ignored,
//!   so an older `lote status` reads a newer daemon's file.
//! - **Readers never see half a file.** [`replace_file`] writes a
//!   temporary file beside the target and renames it over the target; a
//!   reader opens either the old file or the new one. It does not fsync:
//!   the file is rewritten every `metrics.every`, for readers only, and its
//!   fsyncs were most of an idle daemon's wake-ups.
//! - **Durations are milliseconds as `f64`** (microsecond resolution), so a
//!   sub-millisecond queue wait does not read as 0.

mod nodes;
pub mod prometheus;

pub use nodes::NodeStatus;

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use crate::fsutil::{replace_file, write_atomically};
use crate::metrics::{queue_nearly_full, HistogramSnapshot, Metrics, QueueReading};
// Parts of the status file, embedded as they are; defined beside the
// counters they are snapshots of.
pub use crate::metrics::Counters;
use crate::policy::{Breaker, BreakerState};
pub use crate::session::SessionCounts;
use crate::session::SessionSummary;
use crate::sink::timestamp;
use crate::source::{Intake, RedisSnapshot};
pub use crate::writer::WriterCounters;
use crate::writer::WriterMetrics;

/// What `lote status` shows and what the status file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// The lote version that wrote this status.
    pub version: String,
    /// The daemon's state, one of [`DaemonState`]'s names: `starting`,
    /// `running`, `idle`, `stopping`, `draining` or `stopped`.
    pub state: String,
    /// The config file the daemon runs with.
    pub config: String,
    /// When the daemon started, RFC 3339.
    pub started_at: String,
    /// When this status was captured, RFC 3339.
    pub updated_at: String,
    /// Sessions run so far, the running one included.
    pub sessions: u64,
    /// The running session's queue; `None` between sessions.
    pub queue: Option<QueueStatus>,
    pub workers: WorkersStatus,
    /// `None` if the handler runs without a breaker.
    pub breaker: Option<BreakerStatus>,
    /// `None` if outcomes are not persisted through the write-behind thread.
    pub writer: Option<WriterStatus>,
    /// The inbox, when the source is one (SPEC §3.11, seed 000's queue
    /// status); `None` otherwise.
    #[serde(default)]
    pub inbox: Option<InboxStatus>,
    /// A redis_stream source's counters (SPEC §3.14); `None` for other
    /// kinds. Not read by [`Status::capture`]: the daemon fills it in from
    /// its source.
    #[serde(default)]
    pub redis: Option<RedisSnapshot>,
    /// Each node of the handler tree (SPEC §3.13), the top one first. Not
    /// read by [`Status::capture`]: the daemon fills it in from its handler.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// Cumulative since the daemon started.
    pub counters: Counters,
    /// Cumulative since the daemon started.
    pub latency: Latencies,
    /// The last session that ended; `None` until one has.
    pub last_session: Option<LastSession>,
}

/// What the daemon is doing, as the status file, `lote status`, `STATUS=`
/// and `lote_state` name it. A stop goes `stopping` → `draining` →
/// `stopped`; none of those ever goes back to `running`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonState {
    /// The parts are being built (stores opened, writer started); no
    /// session has begun.
    Starting,
    /// A session runs: items are taken from the source and handled.
    Running,
    /// Between two sessions (`session.every`), or reloading the config.
    Idle,
    /// A stop was asked for (SIGTERM/SIGINT): no new item is taken, the
    /// workers finish the items in hand and queued ones go back to the
    /// source. Can last up to a `handler.timeout` (plus `kill_grace`).
    Stopping,
    /// The sessions are over; the write-behind thread writes the last
    /// outcomes (at most `sink.drain_timeout`).
    Draining,
    /// Everything is written and closed; the process is about to exit.
    Stopped,
}

impl DaemonState {
    /// Every state, in the order a daemon meets them.
    pub const ALL: [DaemonState; 6] = [
        DaemonState::Starting,
        DaemonState::Running,
        DaemonState::Idle,
        DaemonState::Stopping,
        DaemonState::Draining,
        DaemonState::Stopped,
    ];

    /// The name in the status file and in `STATUS=`.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Idle => "idle",
            DaemonState::Stopping => "stopping",
            DaemonState::Draining => "draining",
            DaemonState::Stopped => "stopped",
        }
    }

    /// What is reported once a stop has been asked for: `stopping` instead
    /// of any state before the drain, so that neither `STATUS=` nor the
    /// status file says `running` while lote winds down.
    pub fn once_stop_asked(self) -> DaemonState {
        match self {
            DaemonState::Starting | DaemonState::Running | DaemonState::Idle => DaemonState::Stopping,
            later => later,
        }
    }
}

impl fmt::Display for DaemonState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The running session's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Work items queued now.
    pub len: u64,
    pub capacity: u64,
    /// Most work items queued at once in this session.
    #[serde(default)]
    pub high_water: u64,
    /// Items dropped by a `drop_*` full mode in this session.
    #[serde(default)]
    pub dropped: u64,
    /// Items refused by `reject` in this session.
    #[serde(default)]
    pub rejected: u64,
    /// Items refused because a blocking push timed out, in this session.
    #[serde(default)]
    pub timed_out: u64,
    /// Times the queue rose to 80 % of its capacity or more in this session
    /// (once per crossing).
    #[serde(default)]
    pub high_water_warnings: u64,
    /// True once the session has stopped taking work.
    #[serde(default)]
    pub closed: bool,
    /// Whether the queue takes work now: not closed and below capacity
    /// (seed 000's queue status).
    #[serde(default)]
    pub accepting: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersStatus {
    /// Worker threads per session.
    pub threads: u64,
    /// Workers inside a handler call now.
    pub busy: u64,
    /// Workers sleeping now in a retry back-off (a Retry-After wait
    /// included) or a breaker pause: neither busy nor free.
    #[serde(default)]
    pub waiting: u64,
}

/// `2/4 busy`, and `, 1 waiting` while any worker waits.
impl fmt::Display for WorkersStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} busy", self.busy, self.threads)?;
        if self.waiting > 0 {
            write!(f, ", {} waiting", self.waiting)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Times this breaker has opened (first opens and reopens).
    pub opens: u64,
    /// Failures in a row in the current closed period.
    pub consecutive_failures: u32,
}

/// The write-behind thread (SPEC §3.4): its counters, documented on
/// [`WriterCounters`], and its gauges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    /// Outcomes handed over and not yet durable.
    pub depth: u64,
    #[serde(flatten)]
    pub counters: WriterCounters,
    /// How long the last successful flush took.
    pub last_flush_ms: f64,
    /// How long the oldest outcome not yet durable has waited; `None` when
    /// everything handed over is durable.
    pub oldest_unflushed_ms: Option<f64>,
}

impl From<&WriterMetrics> for WriterStatus {
    fn from(w: &WriterMetrics) -> Self {
        WriterStatus {
            depth: w.depth.get(),
            counters: w.snapshot(),
            last_flush_ms: millis(w.last_flush()),
            oldest_unflushed_ms: w.oldest_unflushed_age().map(millis),
        }
    }
}

impl From<QueueReading> for QueueStatus {
    fn from(q: QueueReading) -> Self {
        QueueStatus {
            len: q.stats.len as u64,
            capacity: q.stats.capacity as u64,
            high_water: q.stats.high_water as u64,
            dropped: q.stats.dropped,
            rejected: q.stats.rejected,
            timed_out: q.stats.timed_out,
            high_water_warnings: q.high_water_warnings,
            closed: q.stats.closed,
            accepting: !q.stats.closed && q.stats.len < q.stats.capacity,
        }
    }
}

/// The inbox: how full it is, whether it takes pushes, and what its intake
/// did since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxStatus {
    /// Unfinished items (pending + running); `None` if reading it failed.
    pub depth: Option<u64>,
    pub capacity: u64,
    /// Whether a push would be taken now: below capacity, not stopping.
    pub accepting: bool,
    /// Items made durable by pushes, duplicates acknowledged, pushes refused
    /// because the inbox was full.
    pub accepted: u64,
    pub duplicates: u64,
    pub refused_full: u64,
    /// Group commits, and the requests they carried.
    pub commits: u64,
    pub requests: u64,
}

impl InboxStatus {
    /// A reading of `intake` now; `stopping`: it takes no more pushes.
    pub fn of(intake: &Intake, stopping: bool) -> InboxStatus {
        let stats = intake.stats();
        let depth = intake.depth().map_err(|e| log::warn!("{e}")).ok();
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        InboxStatus {
            depth,
            capacity: intake.capacity(),
            accepting: !stopping && depth.is_some_and(|d| d < intake.capacity()),
            accepted: read(&stats.accepted),
            duplicates: read(&stats.duplicates),
            refused_full: read(&stats.refused_full),
            commits: read(&stats.commits),
            requests: read(&stats.requests),
        }
    }
}

/// The three latency histograms, summarised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// From queued to popped by a worker.
    pub queue_wait: Latency,
    /// One handler call (one attempt).
    pub handler: Latency,
    /// From pulled to outcome, retries included.
    pub end_to_end: Latency,
}

/// One histogram's summary. Quantiles err high by less than 6.25 % (see
/// [`HistogramSnapshot`]); all zero when nothing was recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(default)]
    pub mean_ms: f64,
}

/// The last session that ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSession {
    /// When it ended, RFC 3339.
    pub ended_at: String,
    /// Why it ended, as a short name ([`crate::EndReason::as_str`]).
    pub end: String,
    /// Why it ended, in words (`source failed: …`).
    pub detail: String,
    #[serde(flatten)]
    pub counts: SessionCounts,
    pub elapsed_ms: u64,
}

impl LastSession {
    /// The record of `summary`, a session that ended at `ended_at`.
    pub fn new(summary: &SessionSummary, ended_at: SystemTime) -> Self {
        LastSession {
            ended_at: timestamp(ended_at),
            end: summary.end.as_str().to_string(),
            detail: summary.end.to_string(),
            counts: summary.counts.clone(),
            elapsed_ms: u64::try_from(summary.elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The live objects a [`Status`] is read from.
pub struct StatusSources<'a> {
    /// The daemon's metrics; its queue probe gives the running session's queue.
    pub metrics: &'a Metrics,
    /// The write-behind thread's counters, if outcomes go through one.
    pub writer: Option<&'a WriterMetrics>,
    /// The handler's breaker, if it has one.
    pub breaker: Option<&'a Breaker>,
    /// Worker threads per session.
    pub threads: usize,
    /// The inbox's intake, if the source is an inbox.
    pub inbox: Option<&'a Intake>,
    /// Whether a stop was asked for (the inbox then takes no pushes).
    pub stopping: bool,
}

impl Status {
    /// A snapshot of everything now. `state` is the daemon's state (see
    /// [`Status::state`]), `config` the config file's path, `sessions` the
    /// sessions run so far, and `last_session` the last one that ended and
    /// when.
    pub fn capture(
        sources: StatusSources<'_>,
        state: &str,
        config: &str,
        started_at: SystemTime,
        sessions: u64,
        last_session: Option<(&SessionSummary, SystemTime)>,
    ) -> Status {
        let metrics = sources.metrics;
        Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: state.to_string(),
            config: config.to_string(),
            started_at: timestamp(started_at),
            updated_at: timestamp(SystemTime::now()),
            sessions,
            queue: metrics.queue.stats().map(QueueStatus::from),
            workers: WorkersStatus {
                threads: sources.threads as u64,
                busy: metrics.busy_workers.get(),
                waiting: metrics.waiting_workers.get(),
            },
            breaker: sources.breaker.map(|b| BreakerStatus {
                state: b.state().as_str().to_string(),
                opens: b.opens(),
                consecutive_failures: b.consecutive_failures(),
            }),
            writer: sources.writer.map(WriterStatus::from),
            inbox: sources.inbox.map(|intake| InboxStatus::of(intake, sources.stopping)),
            // Set by the daemon, which holds the source (`Status::redis`).
            redis: None,
            nodes: Vec::new(),
            counters: metrics.snapshot(),
            latency: Latencies {
                queue_wait: Latency::from(&metrics.queue_wait.snapshot()),
                handler: Latency::from(&metrics.handler_time.snapshot()),
                end_to_end: Latency::from(&metrics.end_to_end.snapshot()),
            },
            last_session: last_session.map(|(summary, at)| LastSession::new(summary, at)),
        }
    }

    /// Writes the status as pretty JSON, atomically (see [`replace_file`]).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        json.push(b'\n');
        replace_file(path, &json)
    }

    /// Reads a status file. The error names the file and says what was wrong.
    pub fn read(path: &Path) -> Result<Status, String> {
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!(
                "no status file at {}: is lote running, and is state_dir right?",
                path.display()
            ),
            _ => format!("reading the status file {}: {e}", path.display()),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("the status file {} is not a lote status: {e}", path.display()))
    }

    /// One line for the periodic log (`metrics.log_every`).
    pub fn summary_line(&self) -> String {
        let mut parts = Vec::with_capacity(8);
        parts.push(match &self.queue {
            Some(q) => format!("queue {}/{}", q.len, q.capacity),
            None => format!("{} (between sessions)", self.state),
        });
        parts.push(format!("workers {}", self.workers));
        let c = &self.counters;
        parts.push(format!("done {} failed {} returned {}", c.done, c.failed, c.returned));
        parts.push(format!("retries {}", c.retries));
        if let Some(b) = &self.breaker {
            parts.push(format!("breaker {}", b.state));
        }
        if let Some(w) = &self.writer {
            parts.push(format!("writer depth {} persisted {}", w.depth, w.counters.persisted));
        }
        if let Some(i) = &self.inbox {
            parts.push(format!("inbox {}/{}", shown(i.depth), i.capacity));
        }
        parts.push(format!("p99 handler {}", ms(self.latency.handler.p99_ms)));
        parts.join(" | ")
    }

    /// What an operator should know about now (SPEC §3.7): a queue at 80 %
    /// or more of its capacity, an open breaker. Empty when all is well.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(q) = &self.queue {
            if queue_nearly_full(q.len, q.capacity) {
                warnings.push(format!(
                    "queue at {}% ({}/{})",
                    percent(q.len, q.capacity),
                    q.len,
                    q.capacity
                ));
            }
        }
        if let Some(i) = &self.inbox {
            if let Some(depth) = i.depth.filter(|&d| queue_nearly_full(d, i.capacity)) {
                warnings.push(format!(
                    "inbox at {}% ({depth}/{})",
                    percent(depth, i.capacity),
                    i.capacity
                ));
            }
        }
        if self
            .breaker
            .as_ref()
            .is_some_and(|b| b.state == BreakerState::Open.as_str())
        {
            warnings.push("circuit breaker open".to_string());
        }
        warnings
    }
}

/// The human view for `lote status`: one aligned line per concern.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, label: &str, text: fmt::Arguments<'_>| writeln!(f, "{label:<10}{text}");
        line(
            f,
            "lote",
            format_args!(
                "{} {} (pid {}, since {})",
                self.version, self.state, self.pid, self.started_at
            ),
        )?;
        line(f, "config", format_args!("{}", self.config))?;
        line(f, "updated", format_args!("{}", self.updated_at))?;
        match &self.queue {
            Some(q) => line(
                f,
                "queue",
                format_args!(
                    "{}/{} ({}%), high water {}, dropped {}, refused {}",
                    q.len,
                    q.capacity,
                    percent(q.len, q.capacity),
                    q.high_water,
                    q.dropped,
                    q.rejected + q.timed_out
                ),
            )?,
            None => line(f, "queue", format_args!("none (no session running)"))?,
        }
        line(f, "workers", format_args!("{}", self.workers))?;
        if let Some(b) = &self.breaker {
            line(
                f,
                "breaker",
                format_args!(
                    "{}, opened {} time(s), {} failure(s) in a row",
                    b.state, b.opens, b.consecutive_failures
                ),
            )?;
        }
        if let Some(w) = &self.writer {
            let oldest = w.oldest_unflushed_ms.map(|v| format!(", oldest unflushed {}", ms(v)));
            line(
                f,
                "writer",
                format_args!(
                    "depth {}, persisted {}, failed {} ({} failed flushes, {} unsaved, {} given back), retries {}, last flush {}{}",
                    w.depth,
                    w.counters.persisted,
                    w.counters.failed,
                    w.counters.failed_flushes,
                    w.counters.unsaved,
                    w.counters.given_back,
                    w.counters.retries,
                    ms(w.last_flush_ms),
                    oldest.unwrap_or_default()
                ),
            )?;
        }
        if let Some(i) = &self.inbox {
            line(
                f,
                "inbox",
                format_args!(
                    "{}/{}{}, accepted {}, duplicates {}, refused (full) {}, {} commits for {} requests",
                    shown(i.depth),
                    i.capacity,
                    if i.accepting { "" } else { " (not accepting)" },
                    i.accepted,
                    i.duplicates,
                    i.refused_full,
                    i.commits,
                    i.requests
                ),
            )?;
        }
        let c = &self.counters;
        line(
            f,
            "items",
            format_args!(
                "pulled {}, done {}, failed {}, skipped {}, returned {}",
                c.pulled, c.done, c.failed, c.skipped, c.returned
            ),
        )?;
        line(
            f,
            "events",
            format_args!(
                "retries {}, panics {}, timeouts {}, breaker opens {}, commit errors {}, source errors {}",
                c.retries, c.panics, c.timeouts, c.breaker_opens, c.commit_errors, c.source_errors
            ),
        )?;
        if c.batch_calls > 0 {
            line(
                f,
                "batches",
                format_args!(
                    "{} calls, {} items ({:.1} per call)",
                    c.batch_calls,
                    c.batch_items,
                    c.batch_items as f64 / c.batch_calls as f64
                ),
            )?;
        }
        // One line per node when the handler is more than one plain call.
        let plain = |n: &NodeStatus| n.cache_hits.is_none() && n.bulkhead_rejected.is_none() && n.fallbacks.is_none();
        if self.nodes.len() > 1 || self.nodes.iter().any(|n| !plain(n)) {
            for node in &self.nodes {
                line(f, "node", format_args!("{}", node.summary()))?;
            }
        }
        let l = &self.latency;
        line(
            f,
            "latency",
            format_args!(
                "p50/p99: queue wait {}/{}, handler {}/{}, end to end {}/{}",
                ms(l.queue_wait.p50_ms),
                ms(l.queue_wait.p99_ms),
                ms(l.handler.p50_ms),
                ms(l.handler.p99_ms),
                ms(l.end_to_end.p50_ms),
                ms(l.end_to_end.p99_ms)
            ),
        )?;
        match &self.last_session {
            Some(s) => line(
                f,
                "sessions",
                format_args!(
                    "{}; the last ended {} ({}) after {}: pulled {}, done {}, failed {}, skipped {}, returned {}",
                    self.sessions,
                    s.ended_at,
                    s.detail,
                    ms(s.elapsed_ms as f64),
                    s.counts.pulled,
                    s.counts.done,
                    s.counts.failed,
                    s.counts.skipped,
                    s.counts.returned
                ),
            )?,
            None => line(f, "sessions", format_args!("{}; none ended yet", self.sessions))?,
        }
        for warning in self.warnings() {
            line(f, "warning", format_args!("{warning}"))?;
        }
        Ok(())
    }
}

impl From<&HistogramSnapshot> for Latency {
    fn from(h: &HistogramSnapshot) -> Self {
        Latency {
            count: h.count,
            p50_ms: millis(h.p50),
            p90_ms: millis(h.p90),
            p99_ms: millis(h.p99),
            max_ms: millis(h.max),
            mean_ms: millis(h.mean()),
        }
    }
}

/// A duration in milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    // Whole microseconds over 1000.0: exact enough, and the value survives a
    // JSON round trip unchanged (an integer below 2^53 over a power of ten).
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

/// A reading that may have failed: the number, or `?`.
fn shown(reading: Option<u64>) -> String {
    reading.map_or_else(|| "?".to_string(), |n| n.to_string())
}

/// `part` as a whole percentage of `whole`, rounded (0 if `whole` is 0).
fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    (part.saturating_mul(100) + whole / 2) / whole
}

/// Milliseconds for people: `0.25ms`, `3.5ms`, `35ms`, `1.2s`.
fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}ms")
    } else if v >= 1.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.2}ms")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::policy::BreakerConfig;
    use crate::session::EndReason;

    fn sample() -> Status {
        Status {
            pid: 4242,
            version: "0.1.0".into(),
            state: "running".into(),
            config: "/etc/lote/config.yaml".into(),
            started_at: "2026-01-02T03:04:05.000Z".into(),
            updated_at: "2026-01-02T03:09:05.000Z".into(),
            sessions: 3,
            queue: Some(QueueStatus {
                len: 12,
                capacity: 1024,
                high_water: 300,
                ..QueueStatus::default()
            }),
            workers: WorkersStatus {
                threads: 4,
                busy: 2,
                waiting: 0,
            },
            breaker: Some(BreakerStatus {
                state: "closed".into(),
                opens: 0,
                consecutive_failures: 1,
            }),
            writer: Some(WriterStatus {
                depth: 40,
                counters: WriterCounters {
                    persisted: 1150,
                    ..WriterCounters::default()
                },
                last_flush_ms: 3.25,
                ..WriterStatus::default()
            }),
            inbox: None,
            redis: None,
            nodes: Vec::new(),
            counters: Counters {
                done: 1200,
                failed: 3,
                retries: 5,
                ..Counters::default()
            },
            latency: Latencies {
                handler: Latency {
                    count: 1203,
                    p50_ms: 12.0,
                    p99_ms: 35.0,
                    ..Latency::default()
                },
                ..Latencies::default()
            },
            last_session: None,
        }
    }

    #[test]
    fn status_summary_line_names_the_key_numbers() {
        assert_eq!(
            sample().summary_line(),
            "queue 12/1024 | workers 2/4 busy | done 1200 failed 3 returned 0 | retries 5 | breaker closed \
             | writer depth 40 persisted 1150 | p99 handler 35ms"
        );
        let idle = Status {
            state: "idle".into(),
            queue: None,
            breaker: None,
            writer: None,
            ..sample()
        };
        assert_eq!(
            idle.summary_line(),
            "idle (between sessions) | workers 2/4 busy | done 1200 failed 3 returned 0 | retries 5 | p99 handler 35ms"
        );
    }

    #[test]
    fn status_warns_from_80_percent_of_the_queue() {
        let at = |len| Status {
            queue: Some(QueueStatus {
                len,
                capacity: 1024,
                ..QueueStatus::default()
            }),
            ..sample()
        };
        assert!(at(818).warnings().is_empty(), "79.9 % is below the line");
        assert_eq!(at(820).warnings(), ["queue at 80% (820/1024)"]);
        assert_eq!(at(870).warnings(), ["queue at 85% (870/1024)"]);
        assert_eq!(at(1024).warnings(), ["queue at 100% (1024/1024)"]);
        let empty = Status {
            queue: Some(QueueStatus::default()),
            ..sample()
        };
        assert!(empty.warnings().is_empty(), "a zero capacity divides nothing");
    }

    #[test]
    fn status_warns_while_the_breaker_is_open() {
        let with = |state: &str| Status {
            breaker: Some(BreakerStatus {
                state: state.into(),
                opens: 1,
                consecutive_failures: 0,
            }),
            ..sample()
        };
        assert_eq!(with("open").warnings(), ["circuit breaker open"]);
        assert!(with("half_open").warnings().is_empty());
        assert!(with("closed").warnings().is_empty());
    }

    #[test]
    fn status_display_is_short_and_aligned() {
        let mut status = sample();
        status.queue.as_mut().unwrap().len = 900;
        status.last_session = Some(LastSession::new(
            &SessionSummary {
                end: EndReason::SourceFailed("disk gone".into()),
                counts: SessionCounts {
                    pulled: 500,
                    done: 497,
                    failed: 3,
                    skipped: 0,
                    returned: 0,
                    commits: 10,
                    commit_errors: 0,
                },
                source_drained: false,
                elapsed: Duration::from_millis(12_300),
            },
            SystemTime::UNIX_EPOCH,
        ));
        let text = status.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() <= 15, "{text}");
        assert!(lines.iter().all(|l| l.len() > 10 && l.as_bytes()[9] == b' '), "{text}");
        for needle in [
            "0.1.0 running (pid 4242",
            "900/1024 (88%)",
            "2/4 busy",
            "closed, opened 0 time(s), 1 failure(s) in a row",
            "depth 40, persisted 1150",
            "last flush 3.2ms",
            "done 1200, failed 3",
            "handler 12ms/35ms",
            "the last ended 1970-01-01T00:00:00.000Z (source failed: disk gone) after 12.3s",
            "warning   queue at 88% (900/1024)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn status_capture_reads_every_source() {
        let metrics = Metrics::new();
        metrics.pulled.add(7);
        metrics.done.inc();
        metrics.end_to_end.record(Duration::from_millis(2));
        metrics.handler_time.record(Duration::from_micros(1500));
        metrics.busy_workers.inc();
        metrics.waiting_workers.inc();
        let breaker = Breaker::new(BreakerConfig {
            failures: 2,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        });
        breaker.try_acquire().unwrap().failure();
        let status = Status::capture(
            StatusSources {
                metrics: &metrics,
                writer: None,
                breaker: Some(&breaker),
                threads: 3,
                inbox: None,
                stopping: false,
            },
            "idle",
            "config.yaml",
            SystemTime::UNIX_EPOCH,
            1,
            None,
        );
        assert_eq!(status.pid, std::process::id());
        assert_eq!(status.started_at, "1970-01-01T00:00:00.000Z");
        assert_eq!(status.queue, None);
        assert_eq!(
            status.workers,
            WorkersStatus {
                threads: 3,
                busy: 1,
                waiting: 1
            }
        );
        assert_eq!((status.counters.pulled, status.counters.done), (7, 1));
        assert_eq!(status.latency.handler.count, 1);
        assert_eq!(status.latency.handler.p99_ms, 1.5);
        assert_eq!(status.latency.end_to_end.max_ms, 2.0);
        let b = status.breaker.unwrap();
        assert_eq!((b.state.as_str(), b.opens, b.consecutive_failures), ("closed", 0, 1));
    }

    #[test]
    fn status_read_says_which_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let missing = Status::read(&path).unwrap_err();
        assert!(
            missing.contains("no status file at") && missing.contains("state_dir"),
            "{missing}"
        );
        fs::write(&path, "{\"pid\": 1").unwrap();
        let broken = Status::read(&path).unwrap_err();
        assert!(broken.contains(&path.display().to_string()), "{broken}");
        sample().write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), sample());
    }

    #[test]
    fn status_write_atomically_creates_the_directory_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/lote.prom");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lote.prom"]);
        assert!(
            write_atomically(Path::new("/"), b"x").is_err(),
            "a path with no file name"
        );
    }

    #[test]
    fn status_durations_read_well() {
        assert_eq!(ms(0.0), "0.00ms");
        assert_eq!(ms(0.25), "0.25ms");
        assert_eq!(ms(3.5), "3.5ms");
        assert_eq!(ms(35.4), "35ms");
        assert_eq!(ms(1234.0), "1.2s");
        assert_eq!(millis(Duration::from_nanos(1_234_567)), 1.234);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(2, 3), 67);
        assert_eq!(percent(5, 0), 0);
    }
}
