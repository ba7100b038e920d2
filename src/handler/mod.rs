//! Handlers: what runs one item. A handler gets the item and a
//! [`CallContext`] (attempt number, the per-call deadline, whether lote is in a
//! hurry) and returns the output or a [`Failure`] that says whether a retry
//! could help.
//!
//! Any `Fn(&CallContext, &Item) -> Result<String, Failure>` closure is a
//! handler; so are the kinds in this folder, one file each.
//!
//! A handler may also take items in batches (SPEC §3.12): a
//! [`BatchHandler`] answers one call for many items with a [`BatchReply`]
//! (all done, or one result per item). The kinds here take both; a closure
//! of `Fn(&CallContext, &[Item]) -> Result<BatchReply, Failure>` becomes a
//! handler with [`batch_fn`].

mod batch;
mod bulkhead;
pub mod cache;
pub mod compose;
pub mod exec;
mod fallback;
pub mod http;
mod kind;
pub mod node;
mod noop;
pub mod progress;
mod walk_away;

pub use batch::{batch_fn, batch_key, BatchFn, BatchHandler, BatchReply, ItemReply};
pub use bulkhead::Bulkhead;
pub use fallback::{Fallback, FallbackTo};
pub use kind::{HandlerAt, HandlerKind, WithPolicy};
pub use noop::{Noop, NoopConfig};
pub use walk_away::WalkAway;

use compose::{FanOutConfig, ParallelConfig, SequenceConfig};
use exec::ExecConfig;
use http::HttpConfig;
use kind::{handler_keys, handler_kinds};

// The registry: one line per kind (see `kind.rs`).
handler_kinds! {
    Exec(ExecConfig),
    Http(HttpConfig),
    Noop(NoopConfig),
    Parallel(ParallelConfig),
    Sequence(SequenceConfig),
    FanOut(FanOutConfig),
}
// Defined beside the item (metrics counts them without knowing handlers).
pub use crate::item::{Failure, FailureKind};

use std::time::{Duration, Instant};

use crate::item::{Item, Priority};
use crate::stop::StopHandle;

/// Processes one item. Called from worker threads with no lock held; one
/// handler value serves every worker, so it must be `Sync`.
pub trait Handler: Send + Sync {
    /// Runs one attempt. `ctx` says which attempt it is and how long it may
    /// take; a long-running handler should check [`CallContext::should_stop`].
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure>;

    /// On the daemon's way out: stop what is still running (an exec
    /// handler kills its children's process groups) and start nothing more.
    /// Most handlers have nothing to stop.
    fn kill_running(&self) {}

    /// The same handler taking batches, if it can (`handler.batch`). `None`
    /// (the default): one item per call only.
    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        None
    }
}

impl<F> Handler for F
where
    F: Fn(&CallContext<'_>, &Item) -> Result<String, Failure> + Send + Sync,
{
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        self(ctx, item)
    }
}

/// What a handler knows about the call it is in.
pub struct CallContext<'a> {
    /// The item's id, or a batch's key.
    key: &'a str,
    priority: Priority,
    attempt: u32,
    deadline: Option<Instant>,
    stop: &'a StopHandle,
}

impl<'a> CallContext<'a> {
    /// A context for `attempt` (1-based) of `item`, cut off at `deadline`.
    pub fn new(item: &'a Item, attempt: u32, deadline: Option<Instant>, stop: &'a StopHandle) -> Self {
        CallContext {
            key: &item.id,
            priority: item.priority,
            attempt,
            deadline,
            stop,
        }
    }

    /// A context for a batch call: `key` is the batch's [`batch_key`],
    /// `priority` its most urgent item's.
    pub fn for_batch(
        key: &'a str,
        priority: Priority,
        attempt: u32,
        deadline: Option<Instant>,
        stop: &'a StopHandle,
    ) -> Self {
        CallContext {
            key,
            priority,
            attempt,
            deadline,
            stop,
        }
    }

    /// The same call seen by a node inside it: `attempt` of that node, cut
    /// off at `deadline` or at this call's own deadline, whichever is first.
    pub fn narrowed(&self, attempt: u32, deadline: Option<Instant>) -> CallContext<'a> {
        CallContext {
            key: self.key,
            priority: self.priority,
            attempt,
            deadline: match (self.deadline, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            stop: self.stop,
        }
    }

    /// The item's id; in a batch call, the batch's key.
    pub fn item_id(&self) -> &str {
        self.key
    }

    /// The key a downstream uses to recognise a repeat of this call: the
    /// item's id, or for a batch a key of its set of ids ([`batch_key`]).
    pub fn idempotency_key(&self) -> &str {
        self.key
    }

    /// The item's priority; in a batch call, its most urgent item's.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this call should be over (the handler's `timeout`), if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` without one; zero once past).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the call's deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// True once lote is in a hurry (a second stop signal): cut work short.
    pub fn is_cancelled(&self) -> bool {
        self.stop.is_hurrying()
    }

    /// True if the handler should give up now: cancelled or past its deadline.
    pub fn should_stop(&self) -> bool {
        self.is_cancelled() || self.expired()
    }

    /// The stop handle, for handlers that wait (they can sleep on it and wake
    /// at once on a stop).
    pub fn stop_handle(&self) -> &StopHandle {
        self.stop
    }
}
