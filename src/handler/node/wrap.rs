//! The wrappers a node's policies add around its call that the library
//! decorators (`Bulkhead`, `Cache`, `Fallback`, `WalkAway`) do not: the
//! per-node counters, the attempt timeout, the breaker and the retries of a
//! node below the top (the top node's are the session's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{BatchHandler, CallContext, Failure, Handler};
use crate::item::Item;
use crate::metrics::Histogram;
use crate::policy::{Breaker, RetryPolicy, Transition};

/// An `Arc<dyn Handler>` as a `Handler` (for the generic decorators).
pub struct Shared(pub Arc<dyn Handler>);

impl Handler for Shared {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        self.0.handle(ctx, item)
    }

    fn kill_running(&self) {
        self.0.kill_running();
    }
}

/// A node's own counters. Relaxed throughout: statistics.
#[derive(Default)]
pub struct Counts {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub latency: Histogram,
}

/// Counts every call of the node's kind, its failures and its latency.
pub struct Counted {
    inner: Arc<dyn Handler>,
    counts: Arc<Counts>,
}

impl Counted {
    pub fn new(inner: Arc<dyn Handler>) -> Self {
        Counted {
            inner,
            counts: Arc::new(Counts::default()),
        }
    }

    pub fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }
}

impl Handler for Counted {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let started = Instant::now();
        let result = self.inner.handle(ctx, item);
        self.counts.latency.record(started.elapsed());
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn kill_running(&self) {
        self.inner.kill_running();
    }

    /// The kind's batches, uncounted here (the session counts batch calls).
    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        self.inner.as_batch()
    }
}

/// The attempt timeout of a node: its call sees the nearer of its own
/// deadline and the caller's.
pub struct Deadline {
    inner: Arc<dyn Handler>,
    timeout: Duration,
}

impl Deadline {
    pub fn new(inner: Arc<dyn Handler>, timeout: Duration) -> Self {
        Deadline { inner, timeout }
    }
}

impl Handler for Deadline {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let ctx = ctx.narrowed(ctx.attempt(), Instant::now().checked_add(self.timeout));
        let started = Instant::now();
        let result = self.inner.handle(&ctx, item);
        match result {
            Err(failure) if started.elapsed() >= self.timeout => Err(Failure {
                message: format!("{} (timed out after {:?})", failure.message, self.timeout),
                ..failure
            }),
            other => other,
        }
    }

    fn kill_running(&self) {
        self.inner.kill_running();
    }
}

/// A node's breaker: while open its calls fail at once, retryably (a
/// fallback around the node answers them). Only retryable failures count.
pub struct Gate {
    inner: Arc<dyn Handler>,
    breaker: Breaker,
    path: String,
}

impl Gate {
    pub fn new(inner: Arc<dyn Handler>, breaker: Breaker, path: &str) -> Self {
        Gate {
            inner,
            breaker,
            path: path.to_string(),
        }
    }

    fn note(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened) => log::warn!(
                "{}: breaker opened after {} failures in a row; calls fail at once for {:?}",
                self.path,
                self.breaker.config().failures,
                self.breaker.config().open_for
            ),
            Some(Transition::Reopened) => log::warn!("{}: breaker probe failed; open again", self.path),
            Some(Transition::Closed) => log::info!("{}: breaker closed; the downstream answers again", self.path),
            None => {}
        }
    }
}

impl Handler for Gate {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let permit = self.breaker.try_acquire().map_err(|rejected| {
            let mut failure = Failure::retryable(format!("{}: breaker open", self.path));
            failure.retry_after = Some(rejected.retry_in);
            failure
        })?;
        match self.inner.handle(ctx, item) {
            Ok(output) => {
                self.note(permit.success());
                Ok(output)
            }
            Err(failure) if failure.is_retryable() => {
                self.note(permit.failure());
                Err(failure)
            }
            // The item is bad, not the downstream: no verdict.
            Err(failure) => Err(failure),
        }
    }

    fn kill_running(&self) {
        self.inner.kill_running();
    }
}

/// A node's retries: retryable failures again after the back-off, within
/// the caller's deadline; a stop ends the wait at once with the last
/// failure (the session then hands the item back).
pub struct Retrying {
    inner: Arc<dyn Handler>,
    retry: RetryPolicy,
    path: String,
}

impl Retrying {
    pub fn new(inner: Arc<dyn Handler>, retry: RetryPolicy, path: &str) -> Self {
        Retrying {
            inner,
            retry,
            path: path.to_string(),
        }
    }
}

impl Handler for Retrying {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.inner.handle(&ctx.narrowed(attempt, None), item) {
                Ok(output) => return Ok(output),
                Err(failure) if !failure.is_retryable() => return Err(failure),
                Err(failure) => failure,
            };
            let give_up = |failure: Failure| {
                let message = if attempt > 1 {
                    format!("{} (gave up after {attempt} attempts)", failure.message)
                } else {
                    failure.message
                };
                Err(Failure { message, ..failure })
            };
            if !self.retry.allows_retry_after(attempt) {
                return give_up(failure);
            }
            let delay = self.retry.delay(attempt, failure.retry_after);
            if ctx.deadline().is_some_and(|d| Instant::now() + delay >= d) {
                return give_up(failure);
            }
            log::debug!(
                "item {}: {} failed ({failure}); retry {attempt} in {delay:?}",
                item.id,
                self.path
            );
            if ctx.stop_handle().sleep(delay) {
                return Err(failure);
            }
        }
    }

    fn kill_running(&self) {
        self.inner.kill_running();
    }
}
