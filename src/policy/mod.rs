//! Policies around a handler call: retry, circuit breaker, timeout, and what
//! to do while the breaker is open. The loop that applies them is the
//! session's (`session/call.rs`).

mod breaker;
mod keys;
mod retry;

use std::sync::Arc;
use std::time::Duration;

pub use breaker::{Breaker, BreakerConfig, BreakerState, Permit, Rejected, Transition};
pub use keys::{BatchKeys, BreakerKeys, BulkheadKeys, CacheKeys, FallbackKeys, PolicyKeys, RetryKeys, TimeoutMode};
pub use retry::{doubled, RetryPolicy};

/// What a worker does with an item while the breaker is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenOpen {
    /// Pause until a probe is allowed (a stop ends the pause).
    #[default]
    Wait,
    /// Return the item to its source for a later session.
    Skip,
}

/// The policies one handler runs under.
#[derive(Clone, Debug, Default)]
pub struct CallPolicy {
    pub retry: RetryPolicy,
    /// Shared by every worker (and, in a daemon, every session).
    pub breaker: Option<Arc<Breaker>>,
    pub when_open: WhenOpen,
    /// Per-call (per-attempt) deadline given to the handler's context.
    pub timeout: Option<Duration>,
}

impl CallPolicy {
    /// A policy with no retry, no breaker and no timeout.
    pub fn plain() -> Self {
        CallPolicy {
            retry: RetryPolicy::none(),
            ..CallPolicy::default()
        }
    }
}

/// Delivery guarantee (SPEC §3.3, `handler.qos`; seed 002's QoS 0/1/2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos {
    /// No retries; a failure is recorded and acknowledged, never retried.
    /// The worker still waits for the handler to finish.
    AtMostOnce,
    /// Retries per policy; an item is acknowledged only once its outcome is
    /// durable, so after a crash it may run again.
    #[default]
    AtLeastOnce,
    /// As at-least-once, plus: before an item runs, the sink's record is
    /// checked and items already done are skipped. Never two records for one
    /// item, never a re-run of an item whose outcome is durable. A side
    /// effect between the handler's run and the persist is covered only by
    /// an idempotent downstream (handlers get the item id as the key).
    ExactlyOnce,
}

impl Qos {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::AtMostOnce => "at_most_once",
            Qos::AtLeastOnce => "at_least_once",
            Qos::ExactlyOnce => "exactly_once",
        }
    }
}
