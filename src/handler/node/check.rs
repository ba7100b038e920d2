//! Stage two for a handler node: its policy keys checked into a
//! [`NodePolicy`], and a child node read from its YAML by its `kind:`.
//! Every error names the key by the node's dotted path
//! (`handler.branches.sales.retry.attempts`) at its place in the file.

use std::time::Duration;

use serde_yaml::Value;

use super::{BulkheadSpec, FallbackSpec, NodePolicy, NodeSpec, Nodes};
use crate::handler::cache::{CacheConfig, CacheKey};
use crate::handler::{HandlerAt, HandlerKeys, HandlerSpec, KINDS};
use crate::policy::{BreakerConfig, PolicyKeys, RetryPolicy, TimeoutMode};
use crate::spec::{did_you_mean, Check, ConfigError, Result, MAX_CAPACITY, MAX_DURATION, MAX_THREADS, MAX_TRIES};

/// Defaults of `bulkhead:` (SPEC §3.13's example).
const BULKHEAD_PARALLEL: u64 = 4;
const BULKHEAD_QUEUED: u64 = 8;
/// Default of `max_abandoned` (walk-away).
const MAX_ABANDONED: u64 = 8;
/// Defaults of `cache:`.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_ENTRIES: u64 = 1000;

/// A child node from its YAML: `path` is where it is (`handler.steps.1`);
/// `may_be_optional` for a parallel branch.
pub fn build_node(
    check: &mut Check,
    value: &Value,
    path: &str,
    parent: &HandlerAt,
    may_be_optional: bool,
) -> Result<NodeSpec> {
    let names = KINDS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    let expected = format!("expected a handler: a mapping with a `kind:` (one of {names}) and that kind's keys");
    let Value::Mapping(m) = value else {
        return check.err(path, format!("is not a mapping; {expected}"));
    };
    let kind_key = format!("{path}.kind");
    let name = match m.get("kind") {
        None => return check.err(path, format!("has no `kind:`; {expected}")),
        Some(Value::String(name)) => name.as_str(),
        Some(_) => return check.err(&kind_key, format!("must be a name; {expected}")),
    };
    if !KINDS.contains(&name) {
        return check.err(
            &kind_key,
            format!(
                "unknown kind `{name}`; expected one of {names}{}",
                did_you_mean(name, &format!("expected {names}"))
            ),
        );
    }
    // Read through text, so that serde_yaml names the path of a bad key.
    let text = serde_yaml::to_string(value).map_err(|e| check.doc.node_error(path, &e))?;
    let keys = HandlerKeys::deserialize_kind(name, serde_yaml::Deserializer::from_str(&text))
        .map_err(|e| check.doc.node_error(path, &e))?;
    let p = keys.policy();
    if p.optional.is_some() && !may_be_optional {
        return check.err(
            &format!("{path}.optional"),
            "only a branch of `kind: parallel` can be optional; expected no `optional` here",
        );
    }
    for (key, set) in [("qos", p.qos.is_some()), ("batch", p.batch.is_some())] {
        if set {
            return check.err(
                &format!("{path}.{key}"),
                format!("is a key of the top handler (`handler.{key}`), not of a node inside it; move it there"),
            );
        }
    }
    let optional = p.optional.unwrap_or(false);
    let site = HandlerAt {
        path,
        timeout: None,
        ..*parent
    };
    let policy = policy(check, p, &site, false)?;
    let at = HandlerAt {
        timeout: policy.timeout,
        ..site
    };
    let kind = HandlerSpec::build(keys, &at, check)?;
    let node = NodeSpec {
        path: path.to_string(),
        kind,
        policy,
        optional,
    };
    // What `lote run` would refuse to start is an error here, at the node.
    node.start(&mut Nodes::new())
        .map_err(|why| start_error(check, path, &why))?;
    check.warnings.extend(node.kind.warnings());
    Ok(node)
}

/// A node's policy keys, checked (`qos` and `batch` are the top's, read by
/// the config). `top`: the `handler:` section itself.
pub fn policy(check: &mut Check, p: &PolicyKeys, at: &HandlerAt, top: bool) -> Result<NodePolicy> {
    let key = |k: &str| at.key(k);
    let timeout = check.opt_at_most(&key("timeout"), p.timeout.map(|t| t.0), MAX_DURATION)?;
    if timeout == Some(Duration::ZERO) {
        return check.err(
            &key("timeout"),
            "is 0; expected a per-call limit like 30s, or omit it for none",
        );
    }
    // A node inside the tree retries only when it says so: the top node's
    // retries already run the whole tree again.
    let d = RetryPolicy::default();
    let retry = match &p.retry {
        None if top => d,
        None => RetryPolicy::none(),
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
        .map_err(|why| engine_error(check, &key("retry"), &why))?;
    check.count(&key("retry.attempts"), u64::from(retry.attempts), 1..=MAX_TRIES)?;
    check.at_most(&key("retry.backoff"), retry.backoff, MAX_DURATION)?;
    check.at_most(&key("retry.max_backoff"), retry.max_backoff, MAX_DURATION)?;
    check.at_most(&key("retry.max_retry_after"), retry.max_retry_after, MAX_DURATION)?;
    let (breaker, when_open) = match &p.breaker {
        None => (None, Default::default()),
        Some(b) => {
            let d = BreakerConfig::default();
            let config = BreakerConfig {
                failures: b.failures.unwrap_or(d.failures),
                open_for: b.open_for.map_or(d.open_for, |t| t.0),
                half_open_probes: b.half_open_probes.unwrap_or(d.half_open_probes),
            };
            config
                .validate()
                .map_err(|why| engine_error(check, &key("breaker"), &why))?;
            check.at_most(&key("breaker.open_for"), config.open_for, MAX_DURATION)?;
            if b.when_open.is_some() && !top {
                return check.err(
                    &key("breaker.when_open"),
                    "is for the top handler only: a breaker inside the tree fails its calls at once while \
                     open (its fallback or its parent answers); remove it",
                );
            }
            (Some(config), b.when_open.unwrap_or_default())
        }
    };
    let walk_away = match p.timeout_mode.unwrap_or_default() {
        TimeoutMode::Cooperative => {
            if p.max_abandoned.is_some() {
                return check.err(
                    &key("max_abandoned"),
                    "is set without `timeout_mode: walk_away`; remove it",
                );
            }
            None
        }
        TimeoutMode::WalkAway => {
            if timeout.is_none() {
                return check.err(
                    &key("timeout_mode"),
                    "is walk_away without a `timeout`; expected a timeout (like 2s) to walk away at",
                );
            }
            let max = p.max_abandoned.unwrap_or(MAX_ABANDONED);
            check.count(&key("max_abandoned"), max, 1..=MAX_THREADS as u64)?;
            Some(max as usize)
        }
    };
    let bulkhead = match &p.bulkhead {
        None => None,
        Some(b) => {
            let max_parallel = b.max_parallel.unwrap_or(BULKHEAD_PARALLEL);
            check.count(&key("bulkhead.max_parallel"), max_parallel, 1..=MAX_THREADS as u64)?;
            let max_queued = b.max_queued.unwrap_or(BULKHEAD_QUEUED);
            check.count(&key("bulkhead.max_queued"), max_queued, 0..=MAX_CAPACITY as u64)?;
            Some(BulkheadSpec {
                max_parallel: max_parallel as usize,
                max_queued: max_queued as usize,
            })
        }
    };
    let fallback = match &p.fallback {
        None => None,
        Some(f) => match (&f.value, &f.handler) {
            (Some(Value::String(text)), None) => Some(FallbackSpec::Value(text.clone())),
            (Some(Value::Null) | None, None) | (Some(_), Some(_)) => {
                return check.err(
                    &key("fallback"),
                    "expected exactly one of `value: <output>` or `handler: {kind: …}`",
                )
            }
            (Some(value), None) => Some(FallbackSpec::Value(serde_json::to_string(value).map_err(|e| {
                check.doc.error(
                    &key("fallback.value"),
                    format!("cannot be written as JSON ({e}); expected a string"),
                )
            })?)),
            (None, Some(handler)) => Some(FallbackSpec::Node(Box::new(build_node(
                check,
                handler,
                &key("fallback.handler"),
                at,
                false,
            )?))),
        },
    };
    let cache = match &p.cache {
        None => None,
        Some(c) => {
            let ttl = check.at_most(&key("cache.ttl"), c.ttl.map_or(CACHE_TTL, |t| t.0), MAX_DURATION)?;
            if ttl.is_zero() {
                return check.err(
                    &key("cache.ttl"),
                    "is 0; expected how long an output is served, like 60s",
                );
            }
            let max_entries = c.max_entries.unwrap_or(CACHE_ENTRIES);
            check.count(&key("cache.max_entries"), max_entries, 1..=MAX_CAPACITY as u64)?;
            if let Some(f) = c.refresh_ahead.filter(|f| !(*f > 0.0 && *f < 1.0)) {
                return check.err(
                    &key("cache.refresh_ahead"),
                    format!("is {f}; expected a fraction of the TTL between 0 and 1, like 0.8"),
                );
            }
            let cache_key = match &c.key {
                None => CacheKey::PayloadHash,
                Some(template) => {
                    template_ok(template).map_err(|why| check.doc.error(&key("cache.key"), why))?;
                    CacheKey::template(template.clone())
                }
            };
            Some(CacheConfig {
                ttl,
                max_entries: max_entries as usize,
                key: cache_key,
                refresh_ahead: c.refresh_ahead,
            })
        }
    };
    Ok(NodePolicy {
        retry,
        breaker,
        when_open,
        timeout,
        walk_away,
        bulkhead,
        fallback,
        cache,
    })
}

/// A cache key template: text with `{payload}`, `{id}` or `{/json/pointer}`.
fn template_ok(template: &str) -> std::result::Result<(), String> {
    let expected = "expected text with {payload}, {id} or a JSON pointer like {/customer/id}";
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            return Err(format!("`{template}` has a `{{` without its `}}`; {expected}"));
        };
        let name = &rest[open + 1..close];
        if !(name == "payload" || name == "id" || name.starts_with('/')) {
            return Err(format!("`{{{name}}}` is not a placeholder lote knows; {expected}"));
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

/// An engine validation message ("retry attempts is 0; expected …") as an
/// error on `section.<field>`, the field being its second word.
fn engine_error(check: &Check, section: &str, why: &str) -> ConfigError {
    let field = why.split_whitespace().nth(1).unwrap_or_default();
    let key = format!("{section}.{field}");
    check.doc.error_at(&key, &[&key, section], why)
}

/// A handler's own refusal to start ("exec handler: program x is not in
/// PATH …") as an error on the key of node `path` its first word names.
pub fn start_error(check: &Check, path: &str, why: &str) -> ConfigError {
    let why = why.split_once("handler: ").map_or(why, |(_, rest)| rest);
    let word = why
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    let field = match word {
        "program" | "command" => Some("command"),
        "env" => Some("env"),
        "workdir" => Some("workdir"),
        "url" => Some("url"),
        "method" => Some("method"),
        "header" => Some("headers"),
        _ => None,
    };
    let key = field.map_or(path.to_string(), |f| format!("{path}.{f}"));
    check.doc.error_at(
        &key,
        &[&key, path],
        format!("{why}; expected a handler `lote run` can start"),
    )
}
