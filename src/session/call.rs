//! The loop that runs one item through its handler under the call policy:
//! breaker admission, the per-call timeout, retries with back-off.
//!
//! Invariants:
//! - A breaker-rejected item is never attempted and never counted as failed:
//!   with `when_open: skip` it is returned to its source, with `wait` the
//!   worker pauses until a probe is allowed or a stop comes.
//! - Every wait here (back-off, breaker pause) is a sleep on the stop handle:
//!   a stop wakes it at once and the item goes back to its source. While it
//!   lasts the worker counts in `waiting_workers`, and before it starts the
//!   caller's `before_wait` runs (a worker commits its outcomes there).
//! - A downstream's Retry-After hint is honoured up to `max_retry_after`;
//!   a longer one is capped, and the cap is an event (counter + warning).
//! - A panicking handler fails that item only; the panic is caught here and
//!   the worker carries on.
//! - Only retryable failures count against the breaker; a fatal failure says
//!   the item is bad, not the downstream, and leaves the breaker as it was.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::handler::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::metrics::Metrics;
use crate::policy::{CallPolicy, Permit, Transition, WhenOpen};
use crate::source::ReturnReason;
use crate::stop::StopHandle;

/// How an item's calls ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Done {
        output: String,
        attempts: u32,
    },
    Failed {
        error: String,
        attempts: u32,
    },
    /// Not finished, to be handed back to the source untouched.
    Returned {
        reason: ReturnReason,
        attempts: u32,
    },
}

/// Runs `item` through `handler` under `policy` until done, failed for good,
/// or returned, running `before_wait` before every wait (a retry back-off, a
/// breaker pause), so a caller never sleeps on work it could hand on first.
pub(crate) fn call(
    policy: &CallPolicy,
    handler: &dyn Handler,
    item: &Item,
    stop: &StopHandle,
    metrics: &Metrics,
    before_wait: &mut dyn FnMut(),
) -> Verdict {
    let mut attempts = 0;
    loop {
        let permit = match admit(policy, stop, metrics, before_wait) {
            Ok(permit) => permit,
            Err(reason) => return Verdict::Returned { reason, attempts },
        };
        attempts += 1;
        let failure = match attempt(policy, handler, item, attempts, stop, metrics) {
            Ok(output) => {
                if let Some(permit) = permit {
                    note(policy, permit.success(), metrics);
                }
                return Verdict::Done { output, attempts };
            }
            Err(failure) => failure,
        };
        if !failure.is_retryable() {
            // The item is bad, not the downstream: let the permit go
            // without a verdict on the downstream's health.
            drop(permit);
            return Verdict::Failed {
                error: failure.message,
                attempts,
            };
        }
        if let Some(permit) = permit {
            note(policy, permit.failure(), metrics);
        }
        if !policy.retry.allows_retry_after(attempts) {
            let error = if attempts > 1 {
                format!("{} (gave up after {attempts} attempts)", failure.message)
            } else {
                failure.message
            };
            return Verdict::Failed { error, attempts };
        }
        let cap = policy.retry.max_retry_after;
        if let Some(hint) = failure.retry_after.filter(|hint| *hint > cap) {
            metrics.retry_after_capped(&item.id, hint, cap);
        }
        let delay = policy.retry.delay(attempts, failure.retry_after);
        metrics.retry_scheduled(&item.id, attempts, delay, &failure);
        if wait(stop, metrics, delay, before_wait) {
            return Verdict::Returned {
                reason: ReturnReason::Stopped,
                attempts,
            };
        }
    }
}

/// One handler call under the timeout, with panics caught.
fn attempt(
    policy: &CallPolicy,
    handler: &dyn Handler,
    item: &Item,
    attempt: u32,
    stop: &StopHandle,
    metrics: &Metrics,
) -> Result<String, Failure> {
    let started = Instant::now();
    let deadline = policy.timeout.and_then(|t| started.checked_add(t));
    let ctx = CallContext::new(item, attempt, deadline, stop);
    metrics.busy_workers.inc();
    let result = catch_unwind(AssertUnwindSafe(|| handler.handle(&ctx, item)));
    metrics.busy_workers.dec();
    let elapsed = started.elapsed();
    metrics.handler_time.record(elapsed);
    if let Some(timeout) = policy.timeout.filter(|t| elapsed > *t) {
        metrics.call_timed_out(&item.id, elapsed, timeout);
    }
    result.unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        metrics.handler_panicked(&item.id, &message);
        Err(Failure::fatal(format!("handler panicked: {message}")))
    })
}

/// Waits for the breaker to let a call through. `Ok(None)`: no breaker.
pub(super) fn admit<'p>(
    policy: &'p CallPolicy,
    stop: &StopHandle,
    metrics: &Metrics,
    before_wait: &mut dyn FnMut(),
) -> Result<Option<Permit<'p>>, ReturnReason> {
    let Some(breaker) = policy.breaker.as_deref() else {
        return Ok(None);
    };
    loop {
        if stop.is_stopping() {
            return Err(ReturnReason::Stopped);
        }
        match breaker.try_acquire() {
            Ok(permit) => return Ok(Some(permit)),
            Err(rejected) => match policy.when_open {
                WhenOpen::Skip => return Err(ReturnReason::BreakerOpen),
                WhenOpen::Wait => {
                    if wait(stop, metrics, rejected.retry_in, before_wait) {
                        return Err(ReturnReason::Stopped);
                    }
                }
            },
        }
    }
}

pub(super) fn note(policy: &CallPolicy, transition: Option<Transition>, metrics: &Metrics) {
    if let (Some(transition), Some(breaker)) = (transition, policy.breaker.as_deref()) {
        metrics.breaker_moved(transition, breaker.config().failures, breaker.config().open_for);
    }
}

/// One wait of the call loop: `before_wait` first, then a sleep on the stop
/// handle, counted in `waiting_workers` while it lasts. True if a stop cut
/// it short.
pub(super) fn wait(stop: &StopHandle, metrics: &Metrics, delay: Duration, before_wait: &mut dyn FnMut()) -> bool {
    before_wait();
    metrics.waiting_workers.inc();
    let stopped = stop.sleep(delay);
    metrics.waiting_workers.dec();
    stopped
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or `String`).
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_string()
    }
}
