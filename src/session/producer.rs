//! The producer thread: reads the source into the queue.
//!
//! Started by [`super::Session::run`]; ends by itself when the source is
//! drained, `max_items` is reached or the source fails (then it pushes one
//! `EndOfData` per worker), or when the session stops (then the stop listener
//! has already pushed the `Stop`s and closed the queue, which also wakes it
//! from a blocked push).

use std::time::{Duration, Instant};

use super::{Job, SessionCounts, StopHandle};
use crate::commit::Committer;
use crate::item::{Item, Outcome};
use crate::metrics::Metrics;
use crate::queue::{PushError, WorkQueue};
use crate::source::{Pull, ReturnReason, Source};

/// Why the producer stopped reading.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProducerEnd {
    Drained,
    MaxItems,
    Stopped,
    SourceFailed(String),
}

pub(crate) struct Producer<'a> {
    pub source: &'a dyn Source,
    /// Receives the outcomes of skipped items.
    pub committer: &'a dyn Committer,
    /// Ask the committer which pulled ids are already done, and skip them
    /// (exactly-once, or a source that needs resuming).
    pub skip_done: bool,
    pub queue: &'a WorkQueue<Job>,
    pub stop: &'a StopHandle,
    pub metrics: &'a Metrics,
    pub counts: &'a SessionCounts,
    /// 0 = no limit.
    pub max_items: usize,
    pub workers: usize,
    /// Items asked of the source per pull (and pushed per queue lock).
    pub batch: usize,
    /// How long to wait before polling an idle stream source again.
    pub poll_interval: Duration,
}

impl Producer<'_> {
    pub fn run(self) -> ProducerEnd {
        let end = self.read_all();
        if end != ProducerEnd::Stopped {
            // Nothing more will come: one EndOfData per worker, after all work.
            self.queue.push_end_of_data(self.workers);
        }
        end
    }

    fn read_all(&self) -> ProducerEnd {
        let mut taken = 0usize;
        // Grows to what a pull brings and is reused; `batch` is a bound,
        // not a size to allocate up front.
        let mut batch: Vec<(i32, Job)> = Vec::new();
        loop {
            if self.stop.is_stopping() {
                return ProducerEnd::Stopped;
            }
            let want = match self.max_items {
                0 => self.batch,
                max if taken >= max => return ProducerEnd::MaxItems,
                max => self.batch.min(max - taken),
            };
            let items = match self.source.pull(want) {
                Ok(Pull::Items(items)) => items,
                Ok(Pull::Idle) => {
                    if self.stop.sleep(self.poll_interval) {
                        return ProducerEnd::Stopped;
                    }
                    continue;
                }
                Ok(Pull::Exhausted) => return ProducerEnd::Drained,
                Err(error) => {
                    self.metrics.source_failed("pulling items", &error);
                    return ProducerEnd::SourceFailed(error.to_string());
                }
            };
            taken += items.len();
            self.counts.pulled.add(items.len() as u64);
            self.metrics.pulled.add(items.len() as u64);
            let items = if self.skip_done {
                match self.skip_done_items(items) {
                    Ok(items) => items,
                    Err(why) => return ProducerEnd::SourceFailed(why),
                }
            } else {
                items
            };
            let now = Instant::now();
            batch.extend(items.into_iter().map(|item| (item.priority, Job::new(item, now))));
            let result = self.queue.push_batch(&mut batch);
            self.metrics.queued.add(result.queued as u64);
            if !result.evicted.is_empty() {
                let evicted = result.evicted.into_iter().map(|job| job.item).collect();
                self.give_back(evicted, ReturnReason::QueueFull);
            }
            let mut closed = Vec::new();
            let mut full = Vec::new();
            for refused in result.refused {
                match refused {
                    PushError::Closed(job) => closed.push(job.item),
                    other => full.push(other.into_inner().item),
                }
            }
            self.give_back(full, ReturnReason::QueueFull);
            if !closed.is_empty() {
                self.give_back(closed, ReturnReason::Stopped);
                return ProducerEnd::Stopped;
            }
        }
    }

    /// Commits a `Skipped` outcome for every item the sink already has as
    /// done, and returns the others. One lookup per pulled batch. If the
    /// lookup fails, no item of the batch may run (it could be a re-run):
    /// they all go back and the session ends.
    fn skip_done_items(&self, items: Vec<Item>) -> Result<Vec<Item>, String> {
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let done = match self.committer.done_ids(&ids) {
            Ok(done) => done,
            Err(error) => {
                let why = format!("looking up done items failed: {error}");
                self.metrics.source_failed("the exactly-once check", &why);
                self.give_back(items, ReturnReason::Stopped);
                return Err(why);
            }
        };
        if done.is_empty() {
            return Ok(items);
        }
        let (skipped, rest): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| done.contains(&i.id));
        let n = skipped.len();
        let outcomes = skipped.into_iter().map(Outcome::skipped).collect();
        self.counts.skipped.add(n as u64);
        self.metrics.items_skipped(n);
        if let Err(error) = self.committer.commit(outcomes) {
            self.metrics.commit_failed(n, &error);
        }
        Ok(rest)
    }

    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) {
        if items.is_empty() {
            return;
        }
        let n = items.len();
        self.counts.returned.add(n as u64);
        self.metrics.items_returned(n, reason);
        if let Err(error) = self.source.give_back(items, reason) {
            self.metrics.source_failed("giving items back", &error);
        }
    }
}
