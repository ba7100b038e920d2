//! Stage two for `handler:`: the handler's engine config and the call
//! policy around it (`qos`, `timeout`, `retry`, `breaker`), and `batch`.

use std::path::Path;
use std::time::Duration;

use crate::config::{ConfigError, HandlerSpec, PolicySpec};
use crate::handler::{HandlerAt, HandlerKeys};
use crate::policy::{BatchKeys, BreakerConfig, PolicyKeys, Qos, RetryPolicy, WhenOpen};
use crate::session::BatchConfig;
use crate::spec::{Check, Result, MAX_DURATION, MAX_TRIES};

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
        let (policy, qos) = self.policy(raw.policy())?;
        let batch = self.batch(raw.policy().batch.as_ref())?;
        let at = HandlerAt {
            state_dir,
            timeout: policy.timeout,
        };
        let spec = HandlerSpec::build(raw, &at, self)?;
        // What `lote run` builds, built here too (it changes nothing): the
        // program resolved in PATH, the URL parsed, the method and headers
        // known to the client.
        let started = spec.start().map_err(|why| self.start_error(&why))?;
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

    fn policy(&mut self, p: &PolicyKeys) -> Result<(PolicySpec, Qos)> {
        let qos = p.qos.unwrap_or_default();
        let timeout = self.opt_at_most("handler.timeout", p.timeout.map(|t| t.0), MAX_DURATION)?;
        if timeout == Some(Duration::ZERO) {
            return self.err(
                "handler.timeout",
                "is 0; expected a per-call limit like 30s, or omit it for none",
            );
        }
        let d = RetryPolicy::default();
        let retry = match &p.retry {
            None => d,
            Some(r) => RetryPolicy {
                attempts: r.attempts.unwrap_or(d.attempts),
                backoff: r.backoff.map_or(d.backoff, |b| b.0),
                max_backoff: r.max_backoff.map_or(d.max_backoff, |b| b.0),
                jitter: r.jitter.unwrap_or(d.jitter),
                max_retry_after: r.max_retry_after.map_or(d.max_retry_after, |m| m.0),
            },
        };
        // The engine's checks and words; the key is the field its message names.
        retry
            .validate()
            .map_err(|why| self.engine_error("handler.retry", &why))?;
        self.count("handler.retry.attempts", u64::from(retry.attempts), 1..=MAX_TRIES)?;
        self.at_most("handler.retry.backoff", retry.backoff, MAX_DURATION)?;
        self.at_most("handler.retry.max_backoff", retry.max_backoff, MAX_DURATION)?;
        self.at_most("handler.retry.max_retry_after", retry.max_retry_after, MAX_DURATION)?;
        if qos == Qos::AtMostOnce && p.retry.as_ref().is_some_and(|r| r.attempts.is_some_and(|a| a > 1)) {
            self.warnings.push(
                "handler.retry: `qos: at_most_once` never retries, so `retry.attempts` has no effect".to_string(),
            );
        }
        let (breaker, when_open) = match &p.breaker {
            None => (None, WhenOpen::default()),
            Some(b) => {
                let d = BreakerConfig::default();
                let config = BreakerConfig {
                    failures: b.failures.unwrap_or(d.failures),
                    open_for: b.open_for.map_or(d.open_for, |t| t.0),
                    half_open_probes: b.half_open_probes.unwrap_or(d.half_open_probes),
                };
                config
                    .validate()
                    .map_err(|why| self.engine_error("handler.breaker", &why))?;
                self.at_most("handler.breaker.open_for", config.open_for, MAX_DURATION)?;
                let when_open = b.when_open.unwrap_or_default();
                (Some(config), when_open)
            }
        };
        Ok((
            PolicySpec {
                retry,
                breaker,
                when_open,
                timeout,
            },
            qos,
        ))
    }

    /// An engine validation message ("retry attempts is 0; expected …") as
    /// an error on `section.<field>`, the field being its second word.
    fn engine_error(&self, section: &str, why: &str) -> ConfigError {
        let field = why.split_whitespace().nth(1).unwrap_or_default();
        let key = format!("{section}.{field}");
        self.doc.error_at(&key, &[&key, section], why)
    }

    /// A handler's own refusal ("exec handler: program x is not in PATH …")
    /// as an error on the key its first word names.
    fn start_error(&self, why: &str) -> ConfigError {
        let why = why.split_once("handler: ").map_or(why, |(_, rest)| rest);
        let word = why
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .find(|w| !w.is_empty())
            .unwrap_or_default();
        let key = match word {
            "program" | "command" => "handler.command",
            "env" => "handler.env",
            "workdir" => "handler.workdir",
            "url" => "handler.url",
            "method" => "handler.method",
            "header" => "handler.headers",
            _ => "handler",
        };
        self.doc.error_at(
            key,
            &[key, "handler"],
            format!("{why}; expected a handler `lote run` can start"),
        )
    }
}
