//! The keys every handler node has, whatever its kind (`qos`, `timeout`,
//! `timeout_mode`, `retry`, `breaker`, `batch`, `bulkhead`, `fallback`,
//! `cache`, `optional`), as written; `handler::node` checks them.

use serde::Deserialize;

use super::{Qos, WhenOpen};
use crate::spec::{ByteSize, Dur};

/// The keys every handler kind shares. Not `#[serde(flatten)]`: flattening
/// buffers the section and cannot deny unknown keys, so each kind lists them
/// again and hands them over in its `policy` field (`handler_keys!`).
#[derive(Debug, Default)]
pub struct PolicyKeys {
    pub qos: Option<Qos>,
    pub timeout: Option<Dur>,
    pub retry: Option<RetryKeys>,
    pub breaker: Option<BreakerKeys>,
    pub batch: Option<BatchKeys>,
    pub timeout_mode: Option<TimeoutMode>,
    pub max_abandoned: Option<u64>,
    pub bulkhead: Option<BulkheadKeys>,
    pub fallback: Option<FallbackKeys>,
    pub cache: Option<CacheKeys>,
    pub optional: Option<bool>,
}

/// `timeout_mode:` how a node's `timeout` cuts a call (SPEC §3.13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutMode {
    /// The call sees its deadline and stops itself (exec and http always do).
    #[default]
    Cooperative,
    /// The call runs on a helper thread, abandoned at the deadline (for
    /// library closures that never look at their deadline).
    WalkAway,
}

/// `bulkhead:` (SPEC §3.5).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadKeys {
    /// Calls of the node at once. Default 4.
    pub max_parallel: Option<u64>,
    /// Calls waiting for a turn; beyond, rejected as retryable. Default 8.
    pub max_queued: Option<u64>,
}

/// `fallback:` — one of the two (SPEC §3.13).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackKeys {
    /// A fixed output (a string as is; anything else as its JSON).
    pub value: Option<serde_yaml::Value>,
    /// A handler node whose answer replaces the failure.
    pub handler: Option<serde_yaml::Value>,
}

/// `cache:` (SPEC §3.13).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKeys {
    /// How long an output is served. Default 60s.
    pub ttl: Option<Dur>,
    /// `{payload}`, `{id}`, `{/json/pointer}` and text. Default: a hash of the payload.
    pub key: Option<String>,
    /// Most outputs kept; the least recently used goes first. Default 1000.
    pub max_entries: Option<u64>,
    /// Refresh in the background once an entry is this fraction of its TTL old.
    pub refresh_ahead: Option<f64>,
}

/// `handler.batch:` (SPEC §3.12).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchKeys {
    /// Most items per call. Default 100.
    pub max_items: Option<u64>,
    /// Most payload bytes per call. Default 1MiB.
    pub max_bytes: Option<ByteSize>,
    /// How long a worker waits for a batch to fill. Default 200ms.
    pub max_wait: Option<Dur>,
}

/// `handler.retry:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryKeys {
    /// Total tries, the first included (≥ 1; 1 = no retry). Default 3.
    pub attempts: Option<u32>,
    /// Delay before the first retry; doubles each retry. Default 1s.
    pub backoff: Option<Dur>,
    /// Cap on one delay (a Retry-After hint may exceed it). Default 1m.
    pub max_backoff: Option<Dur>,
    /// Each delay is drawn from ±this fraction of the nominal one (0 to 1). Default 0.2.
    pub jitter: Option<f64>,
    /// Cap on a downstream's Retry-After hint; a longer one is capped, with
    /// a warning. Default 10m.
    pub max_retry_after: Option<Dur>,
}

/// `handler.breaker:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerKeys {
    /// Consecutive retryable failures that open it (≥ 1). Default 5.
    pub failures: Option<u32>,
    /// How long it stays open before probing. Default 30s.
    pub open_for: Option<Dur>,
    /// Probe calls let through when half-open (≥ 1). Default 1.
    pub half_open_probes: Option<u32>,
    /// `wait` (default; pause workers) or `skip` (return items to the source).
    pub when_open: Option<WhenOpen>,
}
