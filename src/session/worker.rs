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

use std::time::{Duration, Instant, SystemTime};

use super::call::{self, Verdict};
use super::events::Events;
use super::{Job, StopHandle};
use crate::commit::Committer;
use crate::handler::Handler;
use crate::item::Outcome;
use crate::policy::CallPolicy;
use crate::queue::{Message, WorkQueue};

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
        let end_to_end = job.pulled_at.elapsed();
        let outcome = match verdict {
            Verdict::Done { output, attempts } => {
                self.events.item_done(end_to_end);
                Outcome::done(job.item, attempts, output, started_at, started.elapsed())
            }
            Verdict::Failed { error, attempts } => {
                self.events.item_failed(&job.item.id, attempts, &error, end_to_end);
                Outcome::failed(job.item, attempts, error, started_at, started.elapsed())
            }
            Verdict::Returned { reason, .. } => {
                self.events.give_back(vec![job.item], reason);
                return None;
            }
        };
        Some(outcome)
    }

    fn commit(&self, chunk: &mut Chunk) {
        self.events.commit(self.committer, chunk.take());
    }
}
