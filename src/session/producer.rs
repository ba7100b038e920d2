//! The producer thread: reads the source into the queue.
//!
//! Started by [`super::Session::run`]; ends by itself when the source is
//! drained, `max_items` is reached or the source fails (then it pushes one
//! `EndOfData` per worker), or when the session stops (then the stop listener
//! has already pushed the `Stop`s and closed the queue, which also wakes it
//! from a blocked push).

use std::time::{Duration, Instant};

use super::{Job, SessionCounts, StopHandle};
use crate::item::Item;
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
        let mut batch: Vec<(i32, Job)> = Vec::with_capacity(self.batch);
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
