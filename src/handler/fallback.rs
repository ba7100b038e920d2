//! [`Fallback`]: when a handler fails, a fixed value or a second handler
//! answers instead (SPEC §3.5, seed 004's graceful degradation). A library
//! decorator: put it outside whatever retries the handler, so that it
//! answers only a failure for good. Each time it answers is logged and
//! counted; a fallback's answer is never cached by a [`super::cache::Cache`]
//! around the handler it replaces (put the cache inside the fallback).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{CallContext, Failure, Handler};
use crate::item::Item;

/// What answers when the handler fails.
#[derive(Clone)]
pub enum FallbackTo {
    /// This output.
    Value(String),
    /// This handler's answer (its failure is the item's).
    Handler(Arc<dyn Handler>),
}

/// `handler`, or `to` when it fails.
pub struct Fallback<H> {
    handler: H,
    to: FallbackTo,
    answered: AtomicU64,
}

impl<H: Handler> Fallback<H> {
    pub fn new(handler: H, to: FallbackTo) -> Self {
        Fallback {
            handler,
            to,
            answered: AtomicU64::new(0),
        }
    }

    /// How many calls the fallback answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl<H: Handler> Handler for Fallback<H> {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let failure = match self.handler.handle(ctx, item) {
            Ok(output) => return Ok(output),
            Err(failure) => failure,
        };
        // Relaxed: a statistic.
        self.answered.fetch_add(1, Ordering::Relaxed);
        log::warn!("item {}: a fallback answered (the call failed: {failure})", item.id);
        match &self.to {
            FallbackTo::Value(value) => Ok(value.clone()),
            FallbackTo::Handler(second) => second.handle(ctx, item).map_err(|second_failure| Failure {
                message: format!(
                    "{}; its fallback failed too: {}",
                    failure.message, second_failure.message
                ),
                ..second_failure
            }),
        }
    }

    fn kill_running(&self) {
        self.handler.kill_running();
        if let FallbackTo::Handler(second) = &self.to {
            second.kill_running();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::StopHandle;

    fn call(handler: &dyn Handler) -> Result<String, Failure> {
        let stop = StopHandle::new();
        let item = Item::new("a", "p");
        handler.handle(&CallContext::new(&item, 1, None, &stop), &item)
    }

    #[test]
    fn a_value_or_a_second_handler_answers_a_failure_and_is_counted() {
        let down = |_: &CallContext<'_>, _: &Item| -> Result<String, Failure> { Err(Failure::retryable("down")) };
        let up = |_: &CallContext<'_>, _: &Item| -> Result<String, Failure> { Ok("live".to_string()) };

        let fixed = Fallback::new(down, FallbackTo::Value("{\"stock\": null}".to_string()));
        assert_eq!(call(&fixed).unwrap(), "{\"stock\": null}");
        assert_eq!(fixed.answered(), 1);

        let unused = Fallback::new(up, FallbackTo::Value("stale".to_string()));
        assert_eq!(call(&unused).unwrap(), "live");
        assert_eq!(unused.answered(), 0);

        let second = Fallback::new(down, FallbackTo::Handler(Arc::new(up)));
        assert_eq!(call(&second).unwrap(), "live");

        let both = Fallback::new(down, FallbackTo::Handler(Arc::new(down)));
        let failure = call(&both).unwrap_err();
        assert!(failure.is_retryable());
        assert_eq!(failure.message, "down; its fallback failed too: down");
    }
}
