//! A worker thread: pops messages, runs items through the call policy, and
//! commits its outcomes every `chunk`.
//!
//! Started by [`super::Session::run`]; stopped by the message it pops:
//! `EndOfData` (the producer is done) or `Stop` (the session is stopping).
//! Either way it commits its partial chunk and exits. One of each is pushed
//! per worker, so every worker gets exactly one.
//!
//! # A trickle is never held back (SPEC §3.2, `chunk_wait`)
//!
//! A worker never parks or sleeps holding outcomes: before it would park on
//! an empty queue, and before a retry back-off or a breaker pause, it commits
//! its partial chunk. While items keep coming it commits every `chunk`
//! outcomes, or sooner once its oldest uncommitted outcome is `chunk_wait`
//! old. A running call cannot be interrupted to commit, so the worker also
//! commits *before* a call that, if it lasts as long as the previous one,
//! would leave its oldest outcome waiting past `chunk_wait`: with slow
//! handlers (a call of `chunk_wait` or more) that is before every call, with
//! fast ones only when the chunk is nearly due anyway. An outcome therefore
//! waits about `chunk_wait` at most, never for items that have not arrived;
//! only a call much slower than the one before it can stretch that.
//!
//! # Batches (`handler.batch`)
//!
//! With a batch config, a worker that pops an item goes on taking queued
//! items (most urgent first) until the batch holds `max_items`, the next
//! would pass `max_bytes`, or `max_wait` has passed, and calls the handler
//! once for all of them. A `Stop` or `EndOfData` ends the wait: the batch in
//! hand is the worker's last. A worker commits each batch's outcomes once
//! the batch has settled (and, before a retry back-off, the part that has),
//! so it never fills a batch holding outcomes.

use std::time::{Duration, Instant, SystemTime};

use super::batch::{call_batch, Settle};
use super::call::{self, Verdict};
use super::events::Events;
use super::{BatchConfig, Job, StopHandle};
use crate::commit::Committer;
use crate::handler::{BatchHandler, Handler};
use crate::item::{Item, Outcome};
use crate::policy::CallPolicy;
use crate::queue::{Message, WorkQueue};
use crate::source::ReturnReason;

pub(crate) struct Worker<'a> {
    pub index: usize,
    pub queue: &'a WorkQueue<Job>,
    pub handler: &'a dyn Handler,
    pub committer: &'a dyn Committer,
    pub policy: &'a CallPolicy,
    pub stop: &'a StopHandle,
    /// Where its items' events go (and the given-back items).
    pub events: &'a Events<'a>,
    pub chunk: usize,
    /// A partial chunk is committed once its oldest outcome is this old.
    pub chunk_wait: Duration,
    /// Batch calls: how to fill a batch, and the handler that takes it.
    pub batch: Option<(&'a BatchConfig, &'a dyn BatchHandler)>,
}

/// The outcomes a worker holds, not yet committed. Grows on demand: `chunk`
/// is a bound, not a size to allocate (it may be huge).
#[derive(Default)]
struct Chunk {
    outcomes: Vec<Outcome>,
    /// When the oldest outcome in `outcomes` joined; `None` while empty.
    since: Option<Instant>,
}

impl Chunk {
    fn push(&mut self, outcome: Outcome) {
        self.since.get_or_insert_with(Instant::now);
        self.outcomes.push(outcome);
    }

    fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// True once it holds `max` outcomes or its oldest is `wait` old.
    fn is_due(&self, max: usize, wait: Duration) -> bool {
        self.outcomes.len() >= max || self.since.is_some_and(|t| t.elapsed() >= wait)
    }

    /// True if its oldest outcome would be `wait` old by the end of a call
    /// that takes `next_call`.
    fn due_within(&self, next_call: Duration, wait: Duration) -> bool {
        self.since
            .is_some_and(|t| t.elapsed().saturating_add(next_call) >= wait)
    }

    fn take(&mut self) -> Vec<Outcome> {
        self.since = None;
        std::mem::take(&mut self.outcomes)
    }
}

impl Worker<'_> {
    pub fn run(self) {
        let mut chunk = Chunk::default();
        // How long the last item took: the guess for the next one's call.
        let mut last_call = Duration::ZERO;
        loop {
            let message = if chunk.is_empty() {
                self.queue.pop()
            } else {
                // Nothing more to do for now: commit before parking, so the
                // outcomes in hand do not wait for items that may not come.
                self.queue.pop_before_parking().unwrap_or_else(|| {
                    self.commit(&mut chunk);
                    self.queue.pop()
                })
            };
            let job = match message {
                Message::Work(job) => job,
                Message::Stop => {
                    log::debug!("worker {} got Stop", self.index);
                    break;
                }
                Message::EndOfData => {
                    log::debug!("worker {} got EndOfData", self.index);
                    break;
                }
            };
            if let Some((config, handler)) = self.batch {
                if self.run_batch(job, config, handler, &mut chunk) {
                    break;
                }
                continue;
            }
            self.events.metrics.queue_wait.record(job.queued_at.elapsed());
            if chunk.due_within(last_call, self.chunk_wait) {
                self.commit(&mut chunk);
            }
            if let Some(outcome) = self.process(job, &mut chunk) {
                last_call = outcome.duration;
                chunk.push(outcome);
                if chunk.is_due(self.chunk, self.chunk_wait) {
                    self.commit(&mut chunk);
                }
            }
        }
        self.commit(&mut chunk);
    }

    /// Runs one item. `None` if it went back to the source. `chunk` is
    /// committed before any wait of the call (back-off, breaker pause).
    fn process(&self, job: Job, chunk: &mut Chunk) -> Option<Outcome> {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let verdict = match &job.item.defect {
            // Never handed to the handler: it fails as it is, for the
            // dead-letter sink, and the worker carries on.
            Some(defect) => Verdict::Failed {
                error: format!("not processable: {defect}"),
                attempts: 0,
            },
            None => call::call(
                self.policy,
                self.handler,
                &job.item,
                self.stop,
                self.events.metrics,
                &mut || self.commit(chunk),
            ),
        };
        let began = Began {
            pulled_at: job.pulled_at,
            started_at,
            started,
        };
        match self.outcome(job.item, &began, verdict) {
            Ok(outcome) => Some(outcome),
            Err((item, reason)) => {
                self.events.give_back(vec![item], reason);
                None
            }
        }
    }

    /// An item's verdict as its outcome (counted), or the item to give back.
    fn outcome(&self, item: Item, began: &Began, verdict: Verdict) -> Result<Outcome, (Item, ReturnReason)> {
        let end_to_end = began.pulled_at.elapsed();
        Ok(match verdict {
            Verdict::Done { output, attempts } => {
                self.events.item_done(end_to_end);
                Outcome::done(item, attempts, output, began.started_at, began.started.elapsed())
            }
            Verdict::Failed { error, attempts } => {
                self.events.item_failed(&item.id, attempts, &error, end_to_end);
                Outcome::failed(item, attempts, error, began.started_at, began.started.elapsed())
            }
            Verdict::Returned { reason, .. } => return Err((item, reason)),
        })
    }

    /// Fills a batch that starts with `first`, runs it, commits its
    /// outcomes. True if the wait for more ended on a `Stop` or `EndOfData`
    /// (taken: the worker's last).
    fn run_batch(&self, first: Job, config: &BatchConfig, handler: &dyn BatchHandler, chunk: &mut Chunk) -> bool {
        let mut bytes = first.item.payload.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + config.max_wait;
        let ended = self.queue.pop_more_until(deadline, config.max_items, &mut jobs, |job| {
            let fits = bytes.saturating_add(job.item.payload.len()) <= config.max_bytes;
            if fits {
                bytes += job.item.payload.len();
            }
            fits
        });
        let mut settle = Settler {
            worker: self,
            chunk,
            began: Began {
                pulled_at: Instant::now(),
                started_at: SystemTime::now(),
                started: Instant::now(),
            },
            returned: Vec::new(),
        };
        let mut ready = Vec::with_capacity(jobs.len());
        for job in jobs {
            self.events.metrics.queue_wait.record(job.queued_at.elapsed());
            match &job.item.defect {
                // Never sent: it fails as it is, for the dead-letter sink.
                Some(defect) => {
                    let verdict = Verdict::Failed {
                        error: format!("not processable: {defect}"),
                        attempts: 0,
                    };
                    settle.settled(job.item, job.pulled_at, verdict);
                }
                None => ready.push((job.item, job.pulled_at)),
            }
        }
        if !ready.is_empty() {
            call_batch(self.policy, handler, ready, self.stop, self.events.metrics, &mut settle);
        }
        let returned = std::mem::take(&mut settle.returned);
        for (reason, items) in returned {
            self.events.give_back(items, reason);
        }
        self.commit(chunk);
        ended.is_some()
    }

    fn commit(&self, chunk: &mut Chunk) {
        self.events.commit(self.committer, chunk.take());
    }
}

/// When an item's run began: its pull, and the start of its (first) call.
#[derive(Clone, Copy)]
struct Began {
    pulled_at: Instant,
    started_at: SystemTime,
    started: Instant,
}

/// Turns a batch's verdicts into outcomes in the worker's chunk, and
/// collects what goes back to the source (by reason).
struct Settler<'w, 'a> {
    worker: &'w Worker<'a>,
    chunk: &'w mut Chunk,
    /// The batch's start; `pulled_at` is each item's own.
    began: Began,
    returned: Vec<(ReturnReason, Vec<Item>)>,
}

impl Settle<Instant> for Settler<'_, '_> {
    fn settled(&mut self, item: Item, pulled_at: Instant, verdict: Verdict) {
        let began = Began {
            pulled_at,
            ..self.began
        };
        match self.worker.outcome(item, &began, verdict) {
            Ok(outcome) => self.chunk.push(outcome),
            Err((item, reason)) => match self.returned.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, items)) => items.push(item),
                None => self.returned.push((reason, vec![item])),
            },
        }
    }

    fn before_wait(&mut self) {
        self.worker.commit(self.chunk);
    }
}
