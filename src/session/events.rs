//! The events of an item in a session. Each is one function that bumps the
//! session's count and the daemon's metric and writes the log line, so a new
//! counter is added here (one line in a [`counter_set!`] list and one
//! function) plus its exposition.

use std::sync::Arc;
use std::time::Duration;

use super::summary::{EndReason, SessionSummary};
use crate::commit::Committer;
use crate::item::{Item, Outcome};
use crate::metrics::{counter_set, Counter, Metrics};
use crate::source::{ReturnReason, Source};

counter_set! {
    /// This session's own counts (the daemon's [`Metrics`] are cumulative).
    pub(crate) struct SessionCounters;
    /// The counts of one session: part of its [`SessionSummary`] and of
    /// status.json's `last_session` (field names are that file's contract).
    pub struct SessionCounts;
    counters {
        /// Items taken from the source.
        pulled,
        /// Items done.
        done,
        /// Items failed for good.
        failed,
        /// Items already done in an earlier run, not run again.
        skipped,
        /// Items handed back to the source untouched (stop, breaker, full queue).
        returned,
        /// Chunks handed to the committer.
        commits,
        /// Chunks the committer refused (their items stay unacknowledged).
        commit_errors,
    }
    others {}
}

/// Where a session's producer and workers report what happens.
pub(crate) struct Events<'a> {
    /// The daemon's metrics (cumulative, shared).
    pub metrics: &'a Metrics,
    /// Where given-back items go.
    source: &'a dyn Source,
    counts: SessionCounters,
    /// Times this session's queue crossed [`crate::metrics::QUEUE_WARN_PERCENT`];
    /// shared with the status probe, which outlives a borrow.
    queue_warnings: Arc<Counter>,
}

impl<'a> Events<'a> {
    pub fn new(metrics: &'a Metrics, source: &'a dyn Source) -> Self {
        Events {
            metrics,
            source,
            counts: SessionCounters::default(),
            queue_warnings: Arc::new(Counter::new()),
        }
    }

    /// The queue-crossing counter, for the status probe.
    pub fn queue_warnings(&self) -> Arc<Counter> {
        Arc::clone(&self.queue_warnings)
    }

    /// `n` items were taken from the source.
    pub fn items_pulled(&self, n: usize) {
        self.counts.pulled.add(n as u64);
        self.metrics.pulled.add(n as u64);
    }

    /// `n` items entered the queue.
    pub fn items_queued(&self, n: usize) {
        self.metrics.queued.add(n as u64);
    }

    /// The queue went from below [`crate::metrics::QUEUE_WARN_PERCENT`] of
    /// its capacity to at or above it: the workers fall behind the source.
    pub fn queue_nearly_full(&self, len: usize, capacity: usize) {
        self.queue_warnings.inc();
        log::warn!(
            "queue at {len}/{capacity}, {}% or more of its capacity: the workers fall behind the source",
            crate::metrics::QUEUE_WARN_PERCENT
        );
    }

    /// An item is done, `end_to_end` after it was pulled.
    pub fn item_done(&self, end_to_end: Duration) {
        self.counts.done.inc();
        self.metrics.done.inc();
        self.metrics.end_to_end.record(end_to_end);
    }

    /// An item failed for good, `end_to_end` after it was pulled.
    pub fn item_failed(&self, id: &str, attempts: u32, error: &str, end_to_end: Duration) {
        self.counts.failed.inc();
        self.metrics.failed.inc();
        self.metrics.end_to_end.record(end_to_end);
        log::warn!("item {id}: failed after {attempts} attempt(s): {error}");
    }

    /// `outcomes` are of items already done (exactly-once / resume): they
    /// are skipped, and their outcomes committed.
    pub fn items_skipped(&self, committer: &dyn Committer, outcomes: Vec<Outcome>) {
        let n = outcomes.len();
        if n == 0 {
            return;
        }
        self.counts.skipped.add(n as u64);
        self.metrics.skipped.add(n as u64);
        log::info!("{n} item(s) already done: skipped");
        self.commit(committer, outcomes);
    }

    /// `items` go back to their source untouched, to be pulled again: the
    /// one give-back of a session (stop, breaker, full queue).
    pub fn give_back(&self, items: Vec<Item>, reason: ReturnReason) {
        let n = items.len();
        if n == 0 {
            return;
        }
        self.counts.returned.add(n as u64);
        self.metrics.returned.add(n as u64);
        log::info!("{n} item(s) returned to the source ({reason})");
        if let Err(error) = self.source.give_back(items, reason) {
            self.metrics.source_failed("giving items back", &error);
        }
    }

    /// Hands a chunk of outcomes to `committer`.
    pub fn commit(&self, committer: &dyn Committer, chunk: Vec<Outcome>) {
        if chunk.is_empty() {
            return;
        }
        let n = chunk.len();
        self.counts.commits.inc();
        if let Err(error) = committer.commit(chunk) {
            self.commit_failed(n, &error);
        }
    }

    /// The committer refused `n` outcomes (0: what it held at the end).
    pub fn commit_failed(&self, n: usize, error: &dyn std::fmt::Display) {
        self.counts.commit_errors.inc();
        self.metrics.commit_errors.inc();
        log::error!("committing {n} outcome(s) failed: {error}; they stay unacknowledged and will run again");
    }

    /// The session ended: its summary, logged.
    pub fn ended(&self, end: EndReason, source_drained: bool, elapsed: Duration) -> SessionSummary {
        let summary = SessionSummary {
            end,
            counts: self.counts.snapshot(),
            source_drained,
            elapsed,
        };
        log::info!("{summary}");
        summary
    }
}
