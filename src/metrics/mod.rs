//! Counters on atomics, latency histograms, and the events that move them.
//!
//! Every event that matters to an operator is one function: it changes the
//! counters and writes the log line together, so the two never drift apart
//! (the Vector habit). Events of the handler call and the source (retries,
//! panics, timeouts, the breaker, source errors) are methods on [`Metrics`];
//! events of an item in a session (pulled, done, failed, skipped, returned,
//! committed, the queue nearly full) are methods on the session's `Events`,
//! which bump the session's count and the daemon's metric together. A
//! counter is declared once, in a [`counter_set!`] list that makes both the
//! live atomics and the snapshot that status.json embeds. All counters are
//! statistics only: nothing else is synchronised through them, so every
//! access is `Relaxed`.

mod counter;
mod histogram;
mod sizes;

pub(crate) use counter::counter_set;
pub use counter::{Counter, Gauge};
pub use histogram::{Histogram, HistogramSnapshot};
pub use sizes::{Sizes, SizesSnapshot, SIZE_BOUNDS};

use std::sync::Arc;
use std::time::Duration;

use crate::item::Failure;
use crate::policy::Transition;
use crate::queue::QueueStats;
use crate::sync::Mutex;

/// A retry wait this long or longer is logged at info, not debug: the
/// operator should see why a worker sits idle.
pub const LONG_RETRY_WAIT: Duration = Duration::from_secs(5);

counter_set! {
    /// The engine's counters, gauges and histograms. One per daemon (shared
    /// by its sessions through an `Arc`), so counts are cumulative like
    /// Prometheus counters; a session's own counts are its
    /// `SessionCounts`, bumped by the same event functions.
    pub struct Metrics;
    /// The engine's counters at one moment, cumulative since the `Metrics`
    /// was made. Also the `counters` object of `status.json` (its field names
    /// are that file's contract: add fields, never rename).
    pub struct Counters;
    counters {
        /// Items taken from the source.
        pulled,
        /// Items queued for the workers.
        queued,
        /// Items done.
        done,
        /// Items failed for good.
        failed,
        /// Items already done in an earlier run, not run again.
        skipped,
        /// Items handed back to the source untouched.
        returned,
        /// Retries scheduled (attempts after the first).
        retries,
        /// Retry-After hints longer than `retry.max_retry_after`, capped to it.
        retry_after_capped,
        /// Handler calls that panicked (each fails its item only).
        panics,
        /// Handler calls that ran past their timeout.
        timeouts,
        /// Batch calls made (`handler.batch`), retries of a smaller batch included.
        batch_calls,
        /// Items sent in batch calls (an item retried is counted again).
        batch_items,
        /// Times a breaker opened (or reopened after a failed probe).
        breaker_opens,
        /// Chunks the committer refused.
        commit_errors,
        /// Failed pulls, give-backs or acknowledgements.
        source_errors,
    }
    others {
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
        /// Items per batch call.
        pub batch_size: Sizes,
        /// The running session's queue, sampled by status and metrics writers.
        pub queue: QueueProbe,
    }
}

/// A queue at or above this share of its capacity is worth a warning (SPEC
/// §3.7): `lote status` shows one, and each crossing is logged and counted.
pub const QUEUE_WARN_PERCENT: u64 = 80;

/// True if `len` items fill `capacity` to [`QUEUE_WARN_PERCENT`] or more.
pub fn queue_nearly_full(len: u64, capacity: u64) -> bool {
    capacity > 0 && len.saturating_mul(100) >= capacity.saturating_mul(QUEUE_WARN_PERCENT)
}

/// Below this share of its capacity a queue that was nearly full counts as
/// drained again, so that its next rise past [`QUEUE_WARN_PERCENT`] is a new
/// event: a queue hovering at 80 % is logged once, not at every pull.
pub const QUEUE_REARM_PERCENT: u64 = 60;

/// True if `len` items are below [`QUEUE_REARM_PERCENT`] of `capacity`.
pub fn queue_drained(len: u64, capacity: u64) -> bool {
    len.saturating_mul(100) < capacity.saturating_mul(QUEUE_REARM_PERCENT)
}

/// The running session's queue as a status reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReading {
    pub stats: QueueStats,
    /// Times this session's queue crossed [`QUEUE_WARN_PERCENT`] of its
    /// capacity (counted once per crossing, not per look).
    pub high_water_warnings: u64,
}

type Probe = Arc<dyn Fn() -> QueueReading + Send + Sync>;

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
    pub fn stats(&self) -> Option<QueueReading> {
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

    /// A batch call of `items` items is about to be made.
    pub fn batch_called(&self, items: usize) {
        self.batch_calls.inc();
        self.batch_items.add(items as u64);
        self.batch_size.record(items as u64);
    }

    /// `items` items of a batch failed retryably in call `call`; they go
    /// again, as a smaller batch, after `delay`. One retry per item.
    pub fn batch_retry_scheduled(&self, items: usize, call: u32, delay: Duration) {
        self.retries.add(items as u64);
        if delay >= LONG_RETRY_WAIT {
            log::info!(
                "batch call {call}: {items} item(s) failed retryably; this worker waits {} before sending them again",
                human(delay)
            );
        } else {
            log::debug!(
                "batch call {call}: {items} item(s) failed retryably; sending them again in {}ms",
                delay.as_millis()
            );
        }
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

    /// A source call failed.
    pub fn source_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.source_errors.inc();
        log::error!("source: {what} failed: {error}");
    }
}

/// `d` for a log line, to the millisecond: `1day 3h 46m 39s`, `7s 235ms`.
fn human(d: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}
