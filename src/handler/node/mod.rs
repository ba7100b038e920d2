//! A handler tree (SPEC §3.13): every handler section is a node — a kind
//! (exec, http, noop, or a composite whose children are nodes) with the
//! policies it carries. This module checks a node's policy keys, builds
//! child nodes from their YAML, prints a node, and starts it wrapped in
//! its policies.
//!
//! # The order of the wrappers, outermost first
//!
//! `fallback → cache → retry → bulkhead → breaker → timeout → the call`
//!
//! - **fallback outside everything**: it answers only a failure for good,
//!   after the node's retries, and its value is never cached.
//! - **cache outside retry and bulkhead**: a hit takes no permit and no
//!   retry; concurrent misses of one key make one call (single flight).
//! - **retry outside the bulkhead**: a sleeping retry holds no permit.
//! - **bulkhead outside the breaker**: a rejection (the node is busy, not
//!   broken) never trips the breaker. Microsoft's standard pipeline puts the
//!   bulkhead outermost, so a waiting retry keeps its slot; resilience4j
//!   puts it innermost, so a rejection counts against the breaker. lote
//!   wants neither.
//! - **breaker outside the attempt timeout**: a timed-out attempt is a
//!   failure the breaker counts, as in both anchors.
//!
//! The top node (`handler:` itself) keeps its retry, breaker and timeout in
//! the session's call loop, where an open breaker pauses intake
//! (`when_open`) and a waiting retry commits what it holds first. With a
//! `fallback` on the top node, the fallback must answer after the retries,
//! so the whole pipeline runs in the node and the session calls it once.

mod check;
mod stats;
mod wrap;

use std::sync::Arc;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::bulkhead::Bulkhead;
use super::cache::{Cache, CacheConfig, CacheKey};
use super::fallback::{Fallback, FallbackTo};
use super::walk_away::WalkAway;
use super::{Handler, HandlerSpec};
use crate::policy::{Breaker, BreakerConfig, CallPolicy, RetryPolicy, WhenOpen};
use crate::spec::effective::{dur, map, opt_dur, spelled};

pub use check::{build_node, policy, start_error};
pub use stats::{NodeSnapshot, NodeStats, Nodes};
use wrap::{Counted, Deadline, Gate, Retrying, Shared};

/// A node's policies, checked. For the top node, `config::PolicySpec`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodePolicy {
    pub retry: RetryPolicy,
    /// `None`: no breaker.
    pub breaker: Option<BreakerConfig>,
    /// What the session does while the top node's breaker is open.
    pub when_open: WhenOpen,
    /// Per-call (per-attempt) deadline.
    pub timeout: Option<Duration>,
    /// `timeout_mode: walk_away`: at most this many abandoned calls at once.
    pub walk_away: Option<usize>,
    pub bulkhead: Option<BulkheadSpec>,
    pub fallback: Option<FallbackSpec>,
    pub cache: Option<CacheConfig>,
}

/// `bulkhead:`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadSpec {
    pub max_parallel: usize,
    pub max_queued: usize,
}

/// `fallback:`, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum FallbackSpec {
    Value(String),
    Node(Box<NodeSpec>),
}

/// A child node: a composite's branch, step, `each`, or a fallback handler.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Dotted, from the top: `handler.branches.sales`, `handler.steps.0`.
    pub path: String,
    pub kind: HandlerSpec,
    pub policy: NodePolicy,
    /// A parallel branch whose failure gives null.
    pub optional: bool,
}

impl NodeSpec {
    /// The node's handler inside every policy it carries.
    pub fn start(&self, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        start(&self.path, &self.kind, &self.policy, true, nodes)
    }

    /// Its section of the effective config: the kind's keys, then its policies.
    pub fn effective(&self) -> Value {
        let mut out = self.kind.effective();
        if let Value::Mapping(m) = &mut out {
            self.policy.effective_into(m, false);
            if self.optional {
                m.insert("optional".into(), true.into());
            }
        }
        out
    }

    /// Every node of the subtree, this one first, as `lote check` lists them.
    pub fn tree(&self, depth: usize, out: &mut Vec<String>) {
        out.push(format!(
            "{}{} ({}{})",
            "  ".repeat(depth),
            self.path,
            self.kind.kind(),
            self.policy.brief(self.optional)
        ));
        self.kind.tree(depth + 1, out);
        if let Some(FallbackSpec::Node(node)) = &self.policy.fallback {
            node.tree(depth + 1, out);
        }
    }
}

/// Starts the top node (`handler:`): its retry, breaker and timeout stay
/// with the session ([`NodePolicy::call_policy`]) unless it has a fallback.
pub fn start_top(kind: &HandlerSpec, policy: &NodePolicy, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
    start("handler", kind, policy, policy.fallback.is_some(), nodes)
}

impl NodePolicy {
    /// What the session's call loop runs the top node under, with a new
    /// (closed) breaker. With a fallback the node runs its own retries and
    /// breaker (see the module docs), so the session calls it once.
    pub fn call_policy(&self) -> CallPolicy {
        if self.fallback.is_some() {
            return CallPolicy::plain();
        }
        CallPolicy {
            retry: self.retry.clone(),
            breaker: self.breaker.clone().map(|b| Arc::new(Breaker::new(b))),
            when_open: self.when_open,
            timeout: self.timeout,
        }
    }

    /// Whether it carries a policy beyond the session's own (retry,
    /// breaker, timeout): a fallback, a cache, a bulkhead or walk-away.
    pub fn wraps(&self) -> bool {
        self.fallback.is_some() || self.cache.is_some() || self.bulkhead.is_some() || self.walk_away.is_some()
    }

    /// The policies a node carries, for `lote check`'s tree: `; timeout 2s,
    /// retry ×3, …` (empty when none).
    pub fn brief(&self, optional: bool) -> String {
        let mut parts = Vec::new();
        if optional {
            parts.push("optional".to_string());
        }
        if let Some(t) = self.timeout {
            let mode = if self.walk_away.is_some() { " walk-away" } else { "" };
            parts.push(format!("timeout {}{mode}", crate::spec::format_duration(t)));
        }
        if self.retry.attempts > 1 {
            parts.push(format!("{} attempts", self.retry.attempts));
        }
        if let Some(b) = &self.breaker {
            parts.push(format!("breaker after {} failures", b.failures));
        }
        if let Some(b) = &self.bulkhead {
            parts.push(format!("bulkhead {}+{}", b.max_parallel, b.max_queued));
        }
        if let Some(c) = &self.cache {
            parts.push(format!("cache {}", crate::spec::format_duration(c.ttl)));
        }
        match &self.fallback {
            Some(FallbackSpec::Value(_)) => parts.push("fallback value".to_string()),
            Some(FallbackSpec::Node(node)) => parts.push(format!("fallback {}", node.path)),
            None => {}
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("; {}", parts.join(", "))
        }
    }

    /// Writes the policy keys into a node's printed section.
    pub fn effective_into(&self, m: &mut Mapping, top: bool) {
        let breaker = self.breaker.as_ref().map_or(Value::Null, |b| {
            let mut keys = vec![
                ("failures", b.failures.into()),
                ("open_for", dur(b.open_for)),
                ("half_open_probes", b.half_open_probes.into()),
            ];
            if top && self.fallback.is_none() {
                keys.push(("when_open", spelled(&self.when_open)));
            }
            Value::Mapping(keys.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
        });
        let r = &self.retry;
        let entries = [
            ("timeout", opt_dur(self.timeout)),
            (
                "timeout_mode",
                Value::from(if self.walk_away.is_some() {
                    "walk_away"
                } else {
                    "cooperative"
                }),
            ),
            ("max_abandoned", self.walk_away.map_or(Value::Null, |n| n.into())),
            (
                "retry",
                map([
                    ("attempts", r.attempts.into()),
                    ("backoff", dur(r.backoff)),
                    ("max_backoff", dur(r.max_backoff)),
                    ("jitter", r.jitter.into()),
                    ("max_retry_after", dur(r.max_retry_after)),
                ]),
            ),
            ("breaker", breaker),
            (
                "bulkhead",
                self.bulkhead.map_or(Value::Null, |b| {
                    map([
                        ("max_parallel", b.max_parallel.into()),
                        ("max_queued", b.max_queued.into()),
                    ])
                }),
            ),
            (
                "fallback",
                match &self.fallback {
                    None => Value::Null,
                    Some(FallbackSpec::Value(v)) => map([("value", v.as_str().into())]),
                    Some(FallbackSpec::Node(node)) => map([("handler", node.effective())]),
                },
            ),
            (
                "cache",
                self.cache.as_ref().map_or(Value::Null, |c| {
                    map([
                        ("ttl", dur(c.ttl)),
                        (
                            "key",
                            match &c.key {
                                CacheKey::PayloadHash => Value::Null,
                                CacheKey::Template(t) => t.as_str().into(),
                            },
                        ),
                        ("max_entries", c.max_entries.into()),
                        ("refresh_ahead", c.refresh_ahead.map_or(Value::Null, Value::from)),
                    ])
                }),
            ),
        ];
        for (k, v) in entries {
            m.insert(k.into(), v);
        }
    }
}

/// Starts one node: its kind (children first), then the wrappers from the
/// inside out (see the module docs for the order). `whole`: with retry,
/// breaker and timeout (every node but a top node without a fallback).
fn start(
    path: &str,
    kind: &HandlerSpec,
    policy: &NodePolicy,
    whole: bool,
    nodes: &mut Nodes,
) -> Result<Arc<dyn Handler>, String> {
    let slot = nodes.len();
    let handler = kind.start(nodes)?;
    wrap_at(slot, path, kind.kind(), handler, policy, whole, nodes)
}

/// `handler` (a closure, a composite of the library, any `Handler`) inside
/// every policy of `policy`, in the order above, as a node named `path`
/// whose counters join `nodes`. What the config does for its nodes, for
/// the library.
pub fn wrap(
    path: &str,
    handler: Arc<dyn Handler>,
    policy: &NodePolicy,
    nodes: &mut Nodes,
) -> Result<Arc<dyn Handler>, String> {
    wrap_at(nodes.len(), path, "closure", handler, policy, true, nodes)
}

fn wrap_at(
    slot: usize,
    path: &str,
    kind: &'static str,
    mut handler: Arc<dyn Handler>,
    policy: &NodePolicy,
    whole: bool,
    nodes: &mut Nodes,
) -> Result<Arc<dyn Handler>, String> {
    let mut stats = NodeStats::new(path, kind);
    if let (Some(max), Some(timeout)) = (policy.walk_away, policy.timeout) {
        let walk_away = Arc::new(WalkAway::new(handler, timeout, max).map_err(|e| format!("{path}: {e}"))?);
        stats.walk_away = Some(Arc::clone(&walk_away));
        handler = walk_away;
    }
    let counted = Arc::new(Counted::new(handler));
    stats.counts = Some(counted.counts());
    handler = counted;
    if whole {
        if let Some(timeout) = policy.timeout.filter(|_| policy.walk_away.is_none()) {
            handler = Arc::new(Deadline::new(handler, timeout));
        }
        if let Some(config) = &policy.breaker {
            handler = Arc::new(Gate::new(handler, Breaker::new(config.clone()), path));
        }
    }
    if let Some(b) = policy.bulkhead {
        let bulkhead =
            Arc::new(Bulkhead::new(Shared(handler), b.max_parallel, b.max_queued).map_err(|e| format!("{path}: {e}"))?);
        stats.bulkhead = Some(Arc::clone(&bulkhead));
        handler = bulkhead;
    }
    if whole && policy.retry.attempts > 1 {
        handler = Arc::new(Retrying::new(handler, policy.retry.clone(), path));
    }
    if let Some(config) = &policy.cache {
        let cache = Arc::new(Cache::new(handler, config.clone()).map_err(|e| format!("{path}: {e}"))?);
        stats.cache = Some(Arc::clone(&cache));
        handler = cache;
    }
    if let Some(fallback) = &policy.fallback {
        let to = match fallback {
            FallbackSpec::Value(value) => FallbackTo::Value(value.clone()),
            FallbackSpec::Node(node) => FallbackTo::Handler(node.start(nodes)?),
        };
        let fallback = Arc::new(Fallback::new(Shared(handler), to));
        stats.fallback = Some(Arc::clone(&fallback));
        handler = fallback;
    }
    nodes.insert(slot, stats);
    Ok(handler)
}

#[cfg(all(test, not(loom)))]
mod tests;
