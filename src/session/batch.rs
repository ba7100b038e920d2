//! The call loop of a batch (SPEC §3.12): one handler call for many items,
//! under the same policy as one item, with per-item bookkeeping.
//!
//! Invariants:
//! - **Every item settles exactly once**, through [`Settle::settled`]: done,
//!   failed for good, or returned to its source untouched (a stop, an open
//!   breaker with `when_open: skip`). An item settles as soon as its fate is
//!   known, so a worker can commit the done part of a batch before it waits
//!   to retry the rest.
//! - **Retries re-send only what failed retryably**, as a smaller batch
//!   (with its own key), after the policy's back-off (the longest
//!   Retry-After hint of the batch, capped as for one item). Every item in
//!   one call has made the same number of attempts: the call's number.
//! - **The breaker counts calls, not items.** A call that answered (a 2xx or
//!   exit 0, whatever each item's result) is a success for the breaker; a
//!   whole-batch retryable failure is a failure; a whole-batch fatal failure
//!   says the batch is bad, not the downstream, and leaves it as it was.
//! - A panicking batch handler fails every item of that call, fatally, as a
//!   panicking one-item handler fails its item.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::call::{admit, note, panic_message, wait, Verdict};
use crate::handler::{batch_key, BatchHandler, CallContext, Failure};
use crate::item::Item;
use crate::metrics::Metrics;
use crate::policy::CallPolicy;
use crate::stop::StopHandle;

/// Where a batch's items go as they settle.
pub(crate) trait Settle<T> {
    /// `item` (with the caller's `tag`) has its verdict.
    fn settled(&mut self, item: Item, tag: T, verdict: Verdict);
    /// Runs before every wait (a back-off, a breaker pause).
    fn before_wait(&mut self);
}

/// Runs `batch` (never empty) through `handler` under `policy` until every
/// item has settled.
pub(crate) fn call_batch<T>(
    policy: &CallPolicy,
    handler: &dyn BatchHandler,
    mut batch: Vec<(Item, T)>,
    stop: &StopHandle,
    metrics: &Metrics,
    settle: &mut dyn Settle<T>,
) {
    let mut calls = 0;
    while !batch.is_empty() {
        let permit = match admit(policy, stop, metrics, &mut || settle.before_wait()) {
            Ok(permit) => permit,
            Err(reason) => {
                for (item, tag) in batch {
                    settle.settled(
                        item,
                        tag,
                        Verdict::Returned {
                            reason,
                            attempts: calls,
                        },
                    );
                }
                return;
            }
        };
        calls += 1;
        let (items, tags): (Vec<Item>, Vec<T>) = batch.into_iter().unzip();
        let results = match attempt(policy, handler, &items, calls, stop, metrics) {
            Ok(results) => {
                if let Some(permit) = permit {
                    note(policy, permit.success(), metrics);
                }
                results
            }
            Err(whole) => {
                if let Some(permit) = permit {
                    if whole.is_retryable() {
                        note(policy, permit.failure(), metrics);
                    }
                }
                items.iter().map(|_| Err(whole.clone())).collect()
            }
        };
        let retry = policy.retry.allows_retry_after(calls);
        let mut again = Vec::new();
        let mut hint: Option<Duration> = None;
        for ((item, tag), result) in items.into_iter().zip(tags).zip(results) {
            let verdict = match result {
                Ok(output) => Verdict::Done {
                    output,
                    attempts: calls,
                },
                Err(failure) if failure.is_retryable() && retry => {
                    hint = hint.max(failure.retry_after);
                    log::debug!("item {}: attempt {calls} failed in its batch ({failure})", item.id);
                    again.push((item, tag));
                    continue;
                }
                Err(failure) if failure.is_retryable() && calls > 1 => Verdict::Failed {
                    error: format!("{} (gave up after {calls} attempts)", failure.message),
                    attempts: calls,
                },
                Err(failure) => Verdict::Failed {
                    error: failure.message,
                    attempts: calls,
                },
            };
            settle.settled(item, tag, verdict);
        }
        if again.is_empty() {
            return;
        }
        let cap = policy.retry.max_retry_after;
        if let Some(hint) = hint.filter(|hint| *hint > cap) {
            metrics.retry_after_capped(&format!("batch of {}", again.len()), hint, cap);
        }
        let delay = policy.retry.delay(calls, hint);
        metrics.batch_retry_scheduled(again.len(), calls, delay);
        if wait(stop, metrics, delay, &mut || settle.before_wait()) {
            for (item, tag) in again {
                settle.settled(
                    item,
                    tag,
                    Verdict::Returned {
                        reason: crate::source::ReturnReason::Stopped,
                        attempts: calls,
                    },
                );
            }
            return;
        }
        batch = again;
    }
}

/// One batch call under the timeout, with panics caught: each item's
/// result, in `items`' order, or the failure of the whole call.
fn attempt(
    policy: &CallPolicy,
    handler: &dyn BatchHandler,
    items: &[Item],
    call: u32,
    stop: &StopHandle,
    metrics: &Metrics,
) -> Result<Vec<Result<String, Failure>>, Failure> {
    let key = batch_key(items);
    let priority = items.iter().map(|item| item.priority).min().unwrap_or_default();
    let started = Instant::now();
    let deadline = policy.timeout.and_then(|t| started.checked_add(t));
    let ctx = CallContext::for_batch(&key, priority, call, deadline, stop);
    metrics.batch_called(items.len());
    metrics.busy_workers.inc();
    let result = catch_unwind(AssertUnwindSafe(|| handler.handle_batch(&ctx, items)));
    metrics.busy_workers.dec();
    let elapsed = started.elapsed();
    metrics.handler_time.record(elapsed);
    if let Some(timeout) = policy.timeout.filter(|t| elapsed > *t) {
        metrics.call_timed_out(&key, elapsed, timeout);
    }
    match result {
        Ok(reply) => reply.map(|reply| reply.results(items)),
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            metrics.handler_panicked(&key, &message);
            Err(Failure::fatal(format!("handler panicked: {message}")))
        }
    }
}
