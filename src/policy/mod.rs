//! Policies around a handler call: retry, circuit breaker, timeout, and what
//! to do while the breaker is open. The loop that applies them is the
//! session's (`session/call.rs`).

mod breaker;
mod retry;

use std::sync::Arc;
use std::time::Duration;

pub use breaker::{Breaker, BreakerConfig, BreakerState, Permit, Rejected, Transition};
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
