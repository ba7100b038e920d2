//! The keys every `handler:` section has, whatever its kind (`qos`,
//! `timeout`, `retry`, `breaker`, `batch`), as written; `config` builds the
//! [`super::CallPolicy`] parts from them.

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
