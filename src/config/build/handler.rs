//! Stage two for `handler:`: the top node of the handler tree (its kind
//! and policies, checked by `handler::node`), `qos` and `batch`.

use std::path::Path;

use crate::config::{HandlerSpec, PolicySpec};
use crate::handler::node::{self, Nodes};
use crate::handler::{HandlerAt, HandlerKeys};
use crate::policy::{BatchKeys, Qos, RetryPolicy};
use crate::session::BatchConfig;
use crate::spec::{Check, Result, MAX_DURATION};

/// Under `qos: exactly_once`, where composites record which of their
/// parts answered, in `state_dir`.
pub const PROGRESS_FILE: &str = "progress.db";

/// Most items one batch call may carry: a bound on what a worker holds.
const MAX_BATCH_ITEMS: u64 = 100_000;

impl Check<'_> {
    pub(super) fn handler(
        &mut self,
        raw: Option<HandlerKeys>,
        state_dir: &Path,
    ) -> Result<(HandlerSpec, PolicySpec, Qos, Option<BatchConfig>)> {
        let Some(raw) = raw else {
            return Err(self.doc.whole("`handler:` is missing").with_key("handler"));
        };
        let p = raw.policy();
        if p.optional.is_some() {
            return self.err(
                "handler.optional",
                "only a branch of `kind: parallel` can be optional; expected no `optional` here",
            );
        }
        let qos = p.qos.unwrap_or_default();
        let progress = state_dir.join(PROGRESS_FILE);
        let at = HandlerAt {
            state_dir,
            timeout: None,
            path: "handler",
            progress: (qos == Qos::ExactlyOnce).then_some(progress.as_path()),
        };
        let mut policy = node::policy(self, p, &at, true)?;
        if qos == Qos::AtMostOnce && p.retry.as_ref().is_some_and(|r| r.attempts.is_some_and(|a| a > 1)) {
            self.warnings.push(
                "handler.retry: `qos: at_most_once` never retries, so `retry.attempts` has no effect".to_string(),
            );
        }
        if qos == Qos::AtMostOnce {
            // The node retries itself when it has a fallback: not at most once.
            policy.retry = RetryPolicy::none();
        }
        if policy.fallback.is_some() && p.breaker.as_ref().is_some_and(|b| b.when_open.is_some()) {
            self.warnings.push(
                "handler.breaker.when_open: with a fallback the fallback answers while the breaker is open, \
                 so `when_open` has no effect"
                    .to_string(),
            );
        }
        let batch = self.batch(p.batch.as_ref())?;
        if batch.is_some() && policy.wraps() {
            return self.err(
                "handler.batch",
                "is set with a bulkhead, fallback, cache or walk-away timeout, which wrap one item's call; \
                 expected one or the other",
            );
        }
        let at = HandlerAt {
            timeout: policy.timeout,
            ..at
        };
        let spec = HandlerSpec::build(raw, &at, self)?;
        // What `lote run` builds, built here too (it changes nothing): the
        // program resolved in PATH, the URL parsed, the method and headers
        // known to the client, every node of a tree.
        let started = node::start_top(&spec, &policy, &mut Nodes::new())
            .map_err(|why| node::start_error(self, "handler", &why))?;
        self.warnings.extend(spec.warnings());
        if batch.is_some() && started.as_batch().is_none() {
            return self.err(
                "handler.batch",
                format!(
                    "`kind: {}` takes one item per call; remove `batch` (http, exec and noop take batches)",
                    spec.kind()
                ),
            );
        }
        Ok((spec, policy, qos, batch))
    }

    /// `handler.batch`: omitted = one item per call; `{}` = the defaults.
    fn batch(&self, keys: Option<&BatchKeys>) -> Result<Option<BatchConfig>> {
        let Some(keys) = keys else { return Ok(None) };
        let d = BatchConfig::default();
        let max_items = keys.max_items.unwrap_or(d.max_items as u64);
        self.count("handler.batch.max_items", max_items, 1..=MAX_BATCH_ITEMS)?;
        let max_bytes = match keys.max_bytes {
            None => d.max_bytes,
            Some(b) => self.usize_bytes("handler.batch.max_bytes", b.0)?,
        };
        if max_bytes == 0 {
            return self.err("handler.batch.max_bytes", "is 0; expected a limit like 1MiB");
        }
        let max_wait = self.at_most(
            "handler.batch.max_wait",
            keys.max_wait.map_or(d.max_wait, |w| w.0),
            MAX_DURATION,
        )?;
        Ok(Some(BatchConfig {
            max_items: max_items as usize,
            max_bytes,
            max_wait,
        }))
    }
}
