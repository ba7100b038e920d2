//! Counters on atomics, latency histograms, and the events that move them.
//!
//! Every event that matters to an operator is one method on [`Metrics`]: it
//! changes the counter and writes the log line together, so the two never
//! drift apart (the Vector habit). All counters are statistics only: nothing
//! else is synchronised through them, so every access is `Relaxed`.

mod histogram;

pub use histogram::{Histogram, HistogramSnapshot};

use std::sync::Arc;
use std::time::Duration;

use crate::item::Failure;
use crate::policy::Transition;
use crate::queue::QueueStats;
use crate::source::ReturnReason;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::Mutex;

/// A retry wait this long or longer is logged at info, not debug: the
/// operator should see why a worker sits idle.
pub const LONG_RETRY_WAIT: Duration = Duration::from_secs(5);

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(
    /// Relaxed everywhere: a statistic, read only for reporting.
    AtomicU64,
);

impl Counter {
    pub fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (workers busy, writer depth).
#[derive(Debug, Default)]
pub struct Gauge(
    /// Relaxed everywhere: a statistic, read only for reporting.
    AtomicU64,
);

impl Gauge {
    pub fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The engine's counters and histograms. One per daemon (shared by its
/// sessions through an `Arc`), so counts are cumulative like Prometheus
/// counters; a [`crate::SessionSummary`] carries the per-session counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Items taken from the source.
    pub pulled: Counter,
    /// Items queued for the workers.
    pub queued: Counter,
    /// Outcomes by status.
    pub done: Counter,
    pub failed: Counter,
    pub skipped: Counter,
    pub returned: Counter,
    /// Retries scheduled (attempts after the first).
    pub retries: Counter,
    /// Retry-After hints longer than `retry.max_retry_after`, capped to it.
    pub retry_after_capped: Counter,
    /// Handler calls that panicked (each fails its item only).
    pub panics: Counter,
    /// Handler calls that ran past their timeout.
    pub timeouts: Counter,
    /// Times a breaker opened (or reopened after a failed probe).
    pub breaker_opens: Counter,
    /// Chunks the committer refused.
    pub commit_errors: Counter,
    /// Failed pulls, give-backs or acknowledgements.
    pub source_errors: Counter,
    /// Workers inside a handler call now.
    pub busy_workers: Gauge,
    /// Workers sleeping now in a retry back-off or a breaker pause.
    pub waiting_workers: Gauge,
    /// From queued to popped by a worker.
    pub queue_wait: Histogram,
    /// One handler call (one attempt).
    pub handler_time: Histogram,
    /// From pulled to outcome, retries included.
    pub end_to_end: Histogram,
    /// The running session's queue, sampled by status and metrics writers.
    pub queue: QueueProbe,
}

type Probe = Arc<dyn Fn() -> QueueStats + Send + Sync>;

/// A way to read the running session's queue from another thread. Set by
/// `Session::run` for its duration; empty between sessions.
#[derive(Default)]
pub struct QueueProbe(
    /// Protects the probe; taken only by a status reader and at session
    /// start and end, never on the work path.
    Mutex<Option<Probe>>,
);

impl QueueProbe {
    /// The queue's stats now, if a session is running.
    pub fn stats(&self) -> Option<QueueStats> {
        let probe = self.0.lock().clone();
        probe.map(|read| read())
    }

    pub(crate) fn set(&self, probe: Option<Probe>) {
        *self.0.lock() = probe;
    }
}

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueueProbe").field(&self.stats()).finish()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// A retry of `id` is scheduled after `delay`. A wait of
    /// [`LONG_RETRY_WAIT`] or more is logged at info: a worker is parked.
    pub fn retry_scheduled(&self, id: &str, attempt: u32, delay: Duration, failure: &Failure) {
        self.retries.inc();
        let hint = match failure.retry_after {
            Some(hint) => format!(", Retry-After {}", human(hint)),
            None => String::new(),
        };
        if delay >= LONG_RETRY_WAIT {
            log::info!(
                "item {id}: attempt {attempt} failed ({failure}{hint}); this worker waits {} before retrying",
                human(delay)
            );
        } else {
            log::debug!(
                "item {id}: attempt {attempt} failed ({failure}{hint}); retrying in {}ms",
                delay.as_millis()
            );
        }
    }

    /// A downstream asked for a wait (`Retry-After: hint`) longer than
    /// `retry.max_retry_after`; lote waits `cap` instead.
    pub fn retry_after_capped(&self, id: &str, hint: Duration, cap: Duration) {
        self.retry_after_capped.inc();
        log::warn!(
            "item {id}: the downstream asked to retry after {}, more than retry.max_retry_after ({}); \
             waiting {} instead (raise retry.max_retry_after to honour longer hints)",
            human(hint),
            human(cap),
            human(cap)
        );
    }

    /// The handler panicked while running `id`.
    pub fn handler_panicked(&self, id: &str, message: &str) {
        self.panics.inc();
        log::error!("item {id}: handler panicked: {message}; the item fails, the worker carries on");
    }

    /// A call ran past its timeout.
    pub fn call_timed_out(&self, id: &str, elapsed: Duration, timeout: Duration) {
        self.timeouts.inc();
        log::warn!(
            "item {id}: handler took {}ms, past its timeout of {}ms",
            elapsed.as_millis(),
            timeout.as_millis()
        );
    }

    /// The breaker changed state.
    pub fn breaker_moved(&self, transition: Transition, failures: u32, open_for: Duration) {
        match transition {
            Transition::Opened => {
                self.breaker_opens.inc();
                log::warn!(
                    "circuit breaker opened after {failures} consecutive failures; pausing calls for {}ms",
                    open_for.as_millis()
                );
            }
            Transition::Reopened => {
                self.breaker_opens.inc();
                log::warn!(
                    "circuit breaker probe failed; open again for {}ms",
                    open_for.as_millis()
                );
            }
            Transition::Closed => log::info!("circuit breaker closed: probe succeeded"),
        }
    }

    /// An item is done.
    pub fn item_done(&self, end_to_end: Duration) {
        self.done.inc();
        self.end_to_end.record(end_to_end);
    }

    /// An item failed for good.
    pub fn item_failed(&self, id: &str, attempts: u32, error: &str, end_to_end: Duration) {
        self.failed.inc();
        self.end_to_end.record(end_to_end);
        log::warn!("item {id}: failed after {attempts} attempt(s): {error}");
    }

    /// `n` items were already done (exactly-once / resume) and were skipped.
    pub fn items_skipped(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.skipped.add(n as u64);
        log::info!("{n} item(s) already done: skipped");
    }

    /// `n` items went back to their source untouched.
    pub fn items_returned(&self, n: usize, reason: ReturnReason) {
        if n == 0 {
            return;
        }
        self.returned.add(n as u64);
        log::info!("{n} item(s) returned to the source ({reason})");
    }

    /// The committer refused a chunk of `n` outcomes.
    pub fn commit_failed(&self, n: usize, error: &dyn std::fmt::Display) {
        self.commit_errors.inc();
        log::error!("committing {n} outcome(s) failed: {error}; they stay unacknowledged and will run again");
    }

    /// A source call failed.
    pub fn source_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.source_errors.inc();
        log::error!("source: {what} failed: {error}");
    }

    /// A copy of every counter and histogram now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            counters: Counters {
                pulled: self.pulled.get(),
                queued: self.queued.get(),
                done: self.done.get(),
                failed: self.failed.get(),
                skipped: self.skipped.get(),
                returned: self.returned.get(),
                retries: self.retries.get(),
                retry_after_capped: self.retry_after_capped.get(),
                panics: self.panics.get(),
                timeouts: self.timeouts.get(),
                breaker_opens: self.breaker_opens.get(),
                commit_errors: self.commit_errors.get(),
                source_errors: self.source_errors.get(),
            },
            busy_workers: self.busy_workers.get(),
            waiting_workers: self.waiting_workers.get(),
            queue_wait: self.queue_wait.snapshot(),
            handler_time: self.handler_time.snapshot(),
            end_to_end: self.end_to_end.snapshot(),
        }
    }
}

/// The engine's counters at one moment, cumulative since the `Metrics` was
/// made. Also the `counters` object of `status.json` (its field names are
/// that file's contract: add fields, never rename).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub pulled: u64,
    pub queued: u64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    pub returned: u64,
    pub retries: u64,
    /// Retry-After hints capped to `retry.max_retry_after`.
    #[serde(default)]
    pub retry_after_capped: u64,
    pub panics: u64,
    pub timeouts: u64,
    pub breaker_opens: u64,
    pub commit_errors: u64,
    pub source_errors: u64,
}

/// `d` for a log line, to the millisecond: `1day 3h 46m 39s`, `7s 235ms`.
fn human(d: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}

/// Every counter and histogram at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub counters: Counters,
    pub busy_workers: u64,
    pub waiting_workers: u64,
    pub queue_wait: HistogramSnapshot,
    pub handler_time: HistogramSnapshot,
    pub end_to_end: HistogramSnapshot,
}
