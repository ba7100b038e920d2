//! Sources: where items come from, where unprocessed ones go back to, and who
//! hears that an item's outcome is durable.
//!
//! The producer thread calls [`Source::pull`]; a worker or the session calls
//! [`Source::give_back`] for items it did not process (a stop, an open
//! breaker, a full queue); the committer calls [`Source::ack`] once outcomes
//! are durable, and `give_back` for items whose outcomes it could not make
//! durable. These calls come from different threads, so a source is
//! `Sync` and locks what it must inside.

mod doorbell;
mod file_identity;
pub mod inbox;
mod kind;
pub mod lines;
mod memory;
pub mod redis_stream;
pub mod spool;
mod sqlite;
mod watch;

pub use doorbell::{Doorbell, SAFETY_NET};
pub use inbox::{Admitted, InboxConfig, InboxSource, Intake, IntakeStats, Refused};
pub use kind::{Run, SourceAt, SourceKind};
pub use memory::VecSource;
pub use redis_stream::{RedisSnapshot, RedisStats, RedisStreamConfig, RedisStreamSource};
pub use sqlite::{SqliteSource, SqliteSourceConfig};

use kind::source_kinds;
use lines::LinesConfig;
use spool::SpoolConfig;

// The registry: one line per kind (see `kind.rs`).
source_kinds! {
    Spool(SpoolConfig),
    Lines(LinesConfig),
    Sqlite(SqliteSourceConfig),
    Inbox(InboxConfig),
    RedisStream(RedisStreamConfig),
}

/// The warning `lote check` gives for a source file that does not exist yet.
fn missing_source(path: &std::path::Path, what: &str) -> String {
    format!(
        "source.path: {} does not exist (yet); `lote run` refuses to start until it does; {what}",
        path.display()
    )
}

use std::fmt;
use std::sync::Arc;

use crate::item::{Item, Outcome};

/// What one pull found.
#[derive(Debug, PartialEq)]
pub enum Pull {
    /// Some items (never empty).
    Items(Vec<Item>),
    /// Nothing now, but a stream source may have more later: poll again.
    Idle,
    /// Nothing left: this source is drained for this session.
    Exhausted,
}

/// Why items go back to their source untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnReason {
    /// A stop (signal, deadline) came before they were processed.
    Stopped,
    /// The circuit breaker was open and `when_open` is `skip`.
    BreakerOpen,
    /// The queue was full and its `when_full` mode dropped or refused them.
    QueueFull,
    /// They ran, but the write-behind thread could not make their outcomes
    /// durable (a full disk, a locked database) even after retrying.
    FlushFailed,
}

impl ReturnReason {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnReason::Stopped => "stopped",
            ReturnReason::BreakerOpen => "breaker_open",
            ReturnReason::QueueFull => "queue_full",
            ReturnReason::FlushFailed => "flush_failed",
        }
    }
}

impl fmt::Display for ReturnReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a source, with what it was doing.
#[derive(Debug)]
pub struct SourceError {
    /// What failed, e.g. "reading /var/spool/lote/item-7".
    pub context: String,
    pub cause: Box<dyn std::error::Error + Send + Sync>,
    /// For a `give_back` of several items that took some back: the ids of
    /// those it did not (still claimed). `None`: none of them went back.
    still_claimed: Option<Vec<String>>,
}

impl SourceError {
    pub fn new(context: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SourceError {
            context: context.into(),
            cause: cause.into(),
            still_claimed: None,
        }
    }

    /// Says which items of a `give_back` are still claimed, when the others
    /// did go back.
    pub fn with_still_claimed(mut self, ids: Vec<String>) -> Self {
        self.still_claimed = Some(ids);
        self
    }

    /// The ids a failed `give_back` left claimed, if it took the others
    /// back; `None`: it took none back.
    pub fn still_claimed(&self) -> Option<&[String]> {
        self.still_claimed.as_deref()
    }

    /// True when the source was busy: a SQLite database locked by another
    /// connection (`SQLITE_BUSY`/`SQLITE_LOCKED`, after `busy_timeout`).
    /// Trying again later may work; trying again now only waits again.
    pub fn is_busy(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self.cause.as_ref());
        while let Some(error) = cause {
            let code = error
                .downcast_ref::<rusqlite::Error>()
                .and_then(rusqlite::Error::sqlite_error_code);
            if matches!(
                code,
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.cause)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// Where items come from.
pub trait Source: Send + Sync {
    /// A short name for logs ("spool /var/spool/lote", "memory").
    fn describe(&self) -> String;

    /// Takes up to `max` (≥ 1) items that are pending. An item pulled is
    /// *claimed*: it is not pulled again until it is given back (or, after a
    /// crash, until the source's own recovery releases it).
    fn pull(&self, max: usize) -> Result<Pull, SourceError>;

    /// Takes back items that were pulled but will not be acknowledged: not
    /// processed, or processed without their outcomes becoming durable
    /// (`FlushFailed`). They stay (or become) pending and are pulled again,
    /// by a later pull of this session or by a later session. An error
    /// means none of them went back, unless it names the ones still claimed
    /// ([`SourceError::still_claimed`]): then all the others did.
    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) -> Result<(), SourceError>;

    /// Hears that these outcomes are durable: the items are finished for the
    /// source (a spool file moved, a row marked). Only called after the
    /// outcome is persisted.
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError>;

    /// Takes dead-lettered items back as new pending work (`dead-letter
    /// requeue`). Sources that cannot say so.
    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        let n = items.len();
        Err(SourceError::new(
            format!("requeueing {n} item(s)"),
            format!("the {} source cannot take items back", self.describe()),
        ))
    }

    /// For a stream source that hears new items arrive (a spool watched
    /// with inotify): the bell it rings then. An idle producer waits on it
    /// instead of pulling again every `poll_every`. `None` (the default):
    /// the producer polls.
    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        None
    }

    /// True for a source that cannot remember what it finished (a plain file
    /// of lines): the session then asks the sink which pulled ids are done and
    /// skips them, whatever the QoS (`--resume`).
    fn needs_resume(&self) -> bool {
        false
    }

    /// A redis_stream source's counters (claimed, acked, reclaimed…), for
    /// the status and `/metrics`; `None` for every other kind.
    fn redis_stats(&self) -> Option<Arc<RedisStats>> {
        None
    }
}
