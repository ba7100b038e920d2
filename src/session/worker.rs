//! A worker thread: pops messages, runs items through the call policy, and
//! commits its outcomes every `chunk`.
//!
//! Started by [`super::Session::run`]; stopped by the message it pops:
//! `EndOfData` (the producer is done) or `Stop` (the session is stopping).
//! Either way it commits its partial chunk and exits. One of each is pushed
//! per worker, so every worker gets exactly one.

use std::time::{Instant, SystemTime};

use super::{Job, SessionCounts, StopHandle};
use crate::commit::Committer;
use crate::handler::Handler;
use crate::item::{Outcome, Status};
use crate::metrics::Metrics;
use crate::policy::{CallPolicy, Verdict};
use crate::queue::{Message, WorkQueue};
use crate::source::{ReturnReason, Source};

pub(crate) struct Worker<'a> {
    pub index: usize,
    pub queue: &'a WorkQueue<Job>,
    pub source: &'a dyn Source,
    pub handler: &'a dyn Handler,
    pub committer: &'a dyn Committer,
    pub policy: &'a CallPolicy,
    pub stop: &'a StopHandle,
    pub metrics: &'a Metrics,
    pub counts: &'a SessionCounts,
    pub chunk: usize,
}

impl Worker<'_> {
    pub fn run(self) {
        let mut chunk: Vec<Outcome> = Vec::with_capacity(self.chunk);
        loop {
            let job = match self.queue.pop() {
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
            self.metrics.queue_wait.record(job.queued_at.elapsed());
            if let Some(outcome) = self.process(job) {
                chunk.push(outcome);
                if chunk.len() >= self.chunk {
                    self.commit(&mut chunk);
                }
            }
        }
        self.commit(&mut chunk);
    }

    /// Runs one item. `None` if it went back to the source.
    fn process(&self, job: Job) -> Option<Outcome> {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let verdict = match &job.item.defect {
            // Never handed to the handler: it fails as it is, for the
            // dead-letter sink, and the worker carries on.
            Some(defect) => Verdict::Failed {
                error: format!("not processable: {defect}"),
                attempts: 0,
            },
            None => self.policy.call(self.handler, &job.item, self.stop, self.metrics),
        };
        let end_to_end = job.pulled_at.elapsed();
        let (status, attempts, output, error) = match verdict {
            Verdict::Done { output, attempts } => {
                self.metrics.item_done(end_to_end);
                self.counts.done.inc();
                (Status::Done, attempts, Some(output), None)
            }
            Verdict::Failed { error, attempts } => {
                self.metrics.item_failed(&job.item.id, attempts, &error, end_to_end);
                self.counts.failed.inc();
                (Status::Failed, attempts, None, Some(error))
            }
            Verdict::Returned { reason, .. } => {
                self.give_back(job, reason);
                return None;
            }
        };
        Some(Outcome {
            item: job.item,
            status,
            attempts,
            output,
            error,
            started_at,
            finished_at: SystemTime::now(),
            duration: started.elapsed(),
        })
    }

    fn give_back(&self, job: Job, reason: ReturnReason) {
        self.counts.returned.inc();
        self.metrics.items_returned(1, reason);
        if let Err(error) = self.source.give_back(vec![job.item], reason) {
            self.metrics.source_failed("giving an item back", &error);
        }
    }

    fn commit(&self, chunk: &mut Vec<Outcome>) {
        if chunk.is_empty() {
            return;
        }
        let full = std::mem::replace(chunk, Vec::with_capacity(self.chunk));
        let n = full.len();
        self.counts.commits.inc();
        if let Err(error) = self.committer.commit(full) {
            self.counts.commit_errors.inc();
            self.metrics.commit_failed(n, &error);
        }
    }
}
