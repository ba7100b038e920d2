//! The producer thread: reads the source into the queue.
//!
//! Started by [`super::Session::run`]; ends by itself when the source is
//! drained, `max_items` is reached or the source fails (then it pushes one
//! `EndOfData` per worker), or when the session stops (then the stop listener
//! has already pushed the `Stop`s and closed the queue, which also wakes it
//! from a blocked push).

use std::time::{Duration, Instant};

use super::events::Events;
use super::{Job, StopHandle};
use crate::commit::Committer;
use crate::item::{Item, Outcome};
use crate::metrics::{queue_drained, queue_nearly_full};
use crate::queue::{PushError, WorkQueue};
use crate::sink::DoneLookup;
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
    /// If set, pulled ids already done are looked up here and skipped
    /// (exactly-once, or a source that needs resuming).
    pub done: Option<&'a dyn DoneLookup>,
    pub queue: &'a WorkQueue<Job>,
    pub stop: &'a StopHandle,
    pub events: &'a Events<'a>,
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
        // A source that hears arrivals rings its bell; a stop rings it too.
        let bell = self.source.doorbell();
        let _stop_rings = bell.clone().map(|bell| self.stop.on_change(move |_| bell.ring_now()));
        // Only the producer fills the queue, so it sees every rise past the
        // warning line; armed again once the queue is seen below 60 %.
        let mut below_warning = true;
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
                    let stopping = match &bell {
                        Some(bell) => {
                            bell.wait(self.poll_interval);
                            self.stop.is_stopping()
                        }
                        None => self.stop.sleep(self.poll_interval),
                    };
                    if stopping {
                        return ProducerEnd::Stopped;
                    }
                    continue;
                }
                Ok(Pull::Exhausted) => return ProducerEnd::Drained,
                Err(error) => {
                    self.events.metrics.source_failed("pulling items", &error);
                    return ProducerEnd::SourceFailed(error.to_string());
                }
            };
            // End-to-end latency starts here, before the exactly-once
            // lookup and any wait for queue room.
            let pulled_at = Instant::now();
            taken += items.len();
            self.events.items_pulled(items.len());
            let items = match self.done {
                Some(done) => match self.skip_done_items(done, items) {
                    Ok(items) => items,
                    Err(why) => return ProducerEnd::SourceFailed(why),
                },
                None => items,
            };
            if !below_warning {
                // The workers may have taken the queue below the line since.
                let stats = self.queue.stats();
                below_warning = queue_drained(stats.len as u64, stats.capacity as u64);
            }
            let queued_at = Instant::now();
            batch.extend(items.into_iter().map(|item| {
                let job = Job {
                    item,
                    pulled_at,
                    queued_at,
                };
                (job.item.priority, job)
            }));
            let result = self.queue.push_batch(&mut batch);
            self.events.items_queued(result.queued);
            let stats = self.queue.stats();
            if queue_nearly_full(stats.len as u64, stats.capacity as u64) {
                if below_warning {
                    self.events.queue_nearly_full(stats.len, stats.capacity);
                }
                below_warning = false;
            }
            if !result.evicted.is_empty() {
                let evicted = result.evicted.into_iter().map(|job| job.item).collect();
                self.events.give_back(evicted, ReturnReason::QueueFull);
            }
            let mut closed = Vec::new();
            let mut full = Vec::new();
            for refused in result.refused {
                match refused {
                    PushError::Closed(job) => closed.push(job.item),
                    other => full.push(other.into_inner().item),
                }
            }
            self.events.give_back(full, ReturnReason::QueueFull);
            if !closed.is_empty() {
                self.events.give_back(closed, ReturnReason::Stopped);
                return ProducerEnd::Stopped;
            }
        }
    }

    /// Commits a `Skipped` outcome for every item the sink already has as
    /// done, and returns the others. One lookup per pulled batch. If the
    /// lookup fails, no item of the batch may run (it could be a re-run):
    /// they all go back and the session ends.
    fn skip_done_items(&self, done: &dyn DoneLookup, items: Vec<Item>) -> Result<Vec<Item>, String> {
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let done = match done.done_ids(&ids) {
            Ok(done) => done,
            Err(error) => {
                let why = format!("looking up done items failed: {error}");
                self.events.metrics.source_failed("the exactly-once check", &why);
                self.events.give_back(items, ReturnReason::Stopped);
                return Err(why);
            }
        };
        if done.is_empty() {
            return Ok(items);
        }
        let (skipped, rest): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| done.contains(&i.id));
        self.events
            .items_skipped(self.committer, skipped.into_iter().map(Outcome::skipped).collect());
        Ok(rest)
    }
}
