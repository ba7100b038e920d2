//! Policies around a handler call: retry, circuit breaker, timeout, and the
//! loop that applies them ([`CallPolicy::call`]).

mod breaker;
mod call;
mod retry;

pub use breaker::{Breaker, BreakerConfig, BreakerState, Permit, Rejected, Transition};
pub use call::{CallPolicy, Verdict, WhenOpen};
pub use retry::RetryPolicy;
