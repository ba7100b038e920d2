//! What flows through lote: an [`Item`] in, an [`Outcome`] out, and the
//! [`Failure`] of one attempt on the way.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Ordering key of a work item: a lower number is more urgent (seed 003:
/// 1 before 2 before 5). Items of equal priority leave in arrival order.
pub type Priority = i32;

/// The priority an item gets when its source says nothing.
pub const DEFAULT_PRIORITY: Priority = 100;

/// One unit of work, as a source yields it.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    /// Unique within its source; also the idempotency key handed to handlers
    /// and the primary key of the outcome record.
    pub id: String,
    /// Lower is more urgent.
    pub priority: Priority,
    /// Opaque bytes for the handler (an exec handler's stdin, an HTTP body).
    pub payload: Vec<u8>,
    /// Why this item cannot be processed, when its source already knows
    /// (undecodable, oversized). Such an item is never handed to the handler:
    /// it fails at once with this reason and goes to the dead-letter sink
    /// with its raw payload, and the worker carries on.
    pub defect: Option<String>,
}

impl Item {
    /// An item with the default priority.
    pub fn new(id: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Item {
            id: id.into(),
            priority: DEFAULT_PRIORITY,
            payload: payload.into(),
            defect: None,
        }
    }

    /// An item its source could not decode (or that is too large): it fails
    /// with `reason` without running, and is dead-lettered.
    pub fn defective(id: impl Into<String>, payload: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        Item {
            defect: Some(reason.into()),
            ..Item::new(id, payload)
        }
    }

    /// The same item with another priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

impl fmt::Debug for Item {
    // Payloads can be large or binary: show their size, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("id", &self.id)
            .field("priority", &self.priority)
            .field("payload_len", &self.payload.len())
            .field("defect", &self.defect)
            .finish()
    }
}

/// An item as a JSON object `{"id", "priority", "payload"}` (an NDJSON line
/// of a lines source, a line of `lote push --format ndjson`, an HTTP
/// `POST /items` body): what was given. Other members are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonItem {
    /// A string, or a number written as its decimal text; `None` when absent
    /// or `null` (the reader picks one).
    pub id: Option<String>,
    /// `None` when absent or `null`.
    pub priority: Option<Priority>,
    /// A JSON string's text; any other JSON value as its compact JSON text.
    pub payload: Vec<u8>,
}

impl JsonItem {
    /// Reads one JSON object, or says what is wrong with it (a sentence
    /// fragment: "it has no \"payload\"", "\"id\" is an empty string").
    pub fn parse(raw: &[u8]) -> Result<JsonItem, String> {
        use serde_json::Value;
        let mut object = match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(object)) => object,
            Ok(other) => return Err(format!("it is {}", json_kind(&other))),
            Err(e) => return Err(e.to_string()),
        };
        let id = match object.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.is_empty() => return Err("\"id\" is an empty string".into()),
            Some(Value::String(id)) => Some(id),
            Some(Value::Number(id)) => Some(id.to_string()),
            Some(other) => {
                return Err(format!(
                    "\"id\" must be a string or a number, not {}",
                    json_kind(&other)
                ))
            }
        };
        let priority = match object.remove("priority") {
            None | Some(Value::Null) => None,
            Some(Value::Number(p)) => match p.as_i64().and_then(|p| Priority::try_from(p).ok()) {
                Some(p) => Some(p),
                None => return Err(format!("\"priority\" must be a 32-bit integer, not {p}")),
            },
            Some(other) => return Err(format!("\"priority\" must be an integer, not {}", json_kind(&other))),
        };
        let payload = match object.remove("payload") {
            None => return Err("it has no \"payload\"".into()),
            Some(Value::String(text)) => text.into_bytes(),
            Some(other) => other.to_string().into_bytes(),
        };
        Ok(JsonItem { id, priority, payload })
    }
}

/// "a string", "an array", … for messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How an item's processing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The handler succeeded; `output` holds what it returned.
    Done,
    /// The handler failed for good (fatal error or retries exhausted); the
    /// item goes to the dead-letter sink.
    Failed,
    /// Already done in an earlier run (exactly-once): not run again.
    Skipped,
}
// An item not taken (a stop, an open breaker, a full queue) has no outcome:
// it goes back to its source (`Source::give_back`) and is counted `returned`.

impl Status {
    /// The lowercase name used in records, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record of one processed item, committed in chunks by the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The item itself: sinks need its id, acknowledgements may need more,
    /// and a dead-lettered item must be requeueable from its record.
    pub item: Item,
    pub status: Status,
    /// How many times the handler ran (0 for skipped items).
    pub attempts: u32,
    /// What the handler returned, for `Done`.
    pub output: Option<String>,
    /// The last error, for `Failed`.
    pub error: Option<String>,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    /// Wall time from the first attempt's start to the outcome, retries and
    /// their back-off included.
    pub duration: Duration,
}

impl Outcome {
    /// `item` is done: the handler returned `output` after `attempts` runs,
    /// the first started at `started_at`, `duration` ago.
    pub fn done(item: Item, attempts: u32, output: String, started_at: SystemTime, duration: Duration) -> Self {
        Outcome {
            output: Some(output),
            ..Outcome::ended(item, Status::Done, attempts, started_at, duration)
        }
    }

    /// `item` failed for good with `error` after `attempts` runs (0 for a
    /// defective item, never run): it goes to the dead-letter sink.
    pub fn failed(item: Item, attempts: u32, error: String, started_at: SystemTime, duration: Duration) -> Self {
        Outcome {
            error: Some(error),
            ..Outcome::ended(item, Status::Failed, attempts, started_at, duration)
        }
    }

    /// `item` was already done in an earlier run (exactly-once, resume): it
    /// is recorded now without running.
    pub fn skipped(item: Item) -> Self {
        Outcome::ended(item, Status::Skipped, 0, SystemTime::now(), Duration::ZERO)
    }

    /// An outcome that ends now, with neither output nor error.
    fn ended(item: Item, status: Status, attempts: u32, started_at: SystemTime, duration: Duration) -> Self {
        Outcome {
            item,
            status,
            attempts,
            output: None,
            error: None,
            started_at,
            finished_at: SystemTime::now(),
            duration,
        }
    }

    /// The item's id.
    pub fn id(&self) -> &str {
        &self.item.id
    }
}

/// Whether retrying a failed attempt could help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient (a timeout, 429, 503, a dead uplink): retried per policy, and
    /// counted by the circuit breaker.
    Retryable,
    /// The item itself is bad (400, a listed exit code): never retried, and
    /// not held against the downstream's health.
    Fatal,
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The downstream's own word on when to try again (HTTP Retry-After).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure no retry can fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Fatal,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A call that ran past its deadline (retryable).
    pub fn timed_out(after: Duration) -> Self {
        Failure::retryable(format!("timed out after {}ms", after.as_millis()))
    }

    /// The same failure with the downstream's Retry-After hint.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// True if a retry could help.
    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Retryable
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
