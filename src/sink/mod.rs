//! Sinks: where outcomes become durable. `sqlite`, `jsonl` and
//! `redis_stream`, one file each; each also serves as the dead-letter sink.
//!
//! One [`Sink`] value is owned by the write-behind thread, the only writer.
//! Readers on other threads (the exactly-once check, `dead-letter list`) go
//! through a [`DoneLookup`] the sink hands out, which reads without blocking
//! the writer (a second SQLite connection under WAL; a shared index for
//! JSONL).
//!
//! # Records
//!
//! Every kind stores the same fields (SPEC §3.6): `id, status, attempts,
//! output, error, started_at, finished_at, duration_ms`, timestamps as RFC
//! 3339 UTC with milliseconds. A dead-letter sink ([`Role::DeadLetter`]) also
//! keeps `priority` and the payload, so the item can be requeued: `payload`
//! as text when it is UTF-8, else `payload_base64`.
//!
//! # Invariants
//!
//! - `write` is all or nothing: after `Ok`, every record of the batch is on
//!   disk (a committed transaction; an fsynced file) or in the Redis stream
//!   (an answered `EXEC`); after `Err`, the batch may be written again in
//!   full and the result is the same (upsert by id in SQLite; in JSONL and in
//!   a stream the last record for an id wins).
//! - `Skipped` outcomes are never written: the item's `done` record is already
//!   there, and overwriting it would lose its output.

mod jsonl;
mod kind;
mod redis_stream;
mod sqlite;

pub use jsonl::{JsonlConfig, JsonlSink};
pub use kind::{Place, SinkKind, WriterKeys};
pub use redis_stream::{RedisStreamSink, RedisStreamSinkConfig};
pub use sqlite::{SqliteConfig, SqliteSink, Synchronous, TableAck};

use kind::{sink_keys, sink_kinds};

// The registry: one line per kind (see `kind.rs`).
sink_kinds! {
    Sqlite(SqliteConfig),
    Jsonl(JsonlConfig),
    RedisStream(RedisStreamSinkConfig),
}

/// The kind an absent `sink:` section means.
pub const DEFAULT_KIND: &str = "sqlite";
/// The kind an absent `dead_letter:` section means.
pub const DEFAULT_DEAD_LETTER_KIND: &str = "jsonl";

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::item::{Item, Outcome, Priority, Status, DEFAULT_PRIORITY};

/// What a sink keeps: every outcome, or dead letters only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The outcomes store (`outcomes` table / file).
    #[default]
    Outcomes,
    /// Items that failed for good, with their payload for requeueing
    /// (`dead_letters` table / file).
    DeadLetter,
}

/// Where outcomes become durable. Owned by one writer thread.
pub trait Sink: Send {
    /// A short name for logs ("sqlite state/outcomes.db").
    fn describe(&self) -> String;

    /// Persists `outcomes` as one durable unit (see the module invariants).
    /// `Skipped` outcomes are passed over.
    fn write(&mut self, outcomes: &[Outcome]) -> Result<(), SinkError>;

    /// A handle other threads use to ask which ids are done.
    fn lookup(&self) -> Result<Box<dyn DoneLookup>, SinkError>;

    /// Every record, oldest first (for `dead-letter list`).
    fn records(&mut self) -> Result<Vec<Record>, SinkError>;

    /// Deletes the records of `ids` (after a requeue). Returns how many went.
    fn remove(&mut self, ids: &[String]) -> Result<usize, SinkError>;
}

/// Answers "which of these ids have a `done` record?" from any thread.
pub trait DoneLookup: Send + Sync {
    fn done_ids(&self, ids: &[&str]) -> Result<HashSet<String>, SinkError>;
}

/// One stored outcome: a row of the `outcomes` table, a line of a JSONL file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// `done`, `failed`.
    pub status: String,
    pub attempts: u32,
    pub output: Option<String>,
    pub error: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Dead letters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Dead letters only: the payload, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Dead letters only: the payload, base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl Record {
    /// The record of `outcome` for a sink of `role`.
    pub fn new(outcome: &Outcome, role: Role) -> Self {
        let (priority, payload, payload_base64) = match role {
            Role::Outcomes => (None, None, None),
            Role::DeadLetter => {
                let (text, encoded) = encode_payload(&outcome.item.payload);
                (Some(outcome.item.priority), text, encoded)
            }
        };
        Record {
            id: outcome.item.id.clone(),
            status: outcome.status.as_str().to_string(),
            attempts: outcome.attempts,
            output: outcome.output.clone(),
            error: outcome.error.clone(),
            started_at: timestamp(outcome.started_at),
            finished_at: timestamp(outcome.finished_at),
            duration_ms: duration_ms(outcome.duration),
            priority,
            payload,
            payload_base64,
        }
    }

    /// True if the record says the item is done.
    pub fn is_done(&self) -> bool {
        self.status == Status::Done.as_str()
    }

    /// The item again, for a requeue: its id, priority and payload. `None` if
    /// the record keeps no payload (an outcomes record) or it is undecodable.
    pub fn to_item(&self) -> Option<Item> {
        let payload = match (&self.payload, &self.payload_base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD.decode(encoded).ok()?,
            (None, None) => return None,
        };
        Some(Item {
            id: self.id.clone(),
            priority: self.priority.unwrap_or(DEFAULT_PRIORITY),
            payload,
            defect: None,
        })
    }
}

/// A dead letter's payload as records keep it: `(payload, payload_base64)`,
/// the text when it is UTF-8, else base64. The one place that rule lives.
pub fn encode_payload(payload: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(payload))),
    }
}

/// Appends the JSON line of `outcome` (what `Record::new` would serialize,
/// byte for byte) and a newline to `out`, without building a `Record`: the
/// JSONL sink's hot path, one call per outcome on the writer thread.
pub fn encode_json_line(outcome: &Outcome, role: Role, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let (priority, payload, payload_base64) = match role {
        Role::Outcomes => (None, None, None),
        Role::DeadLetter => {
            let (text, encoded) = encode_payload(&outcome.item.payload);
            (Some(outcome.item.priority), text, encoded)
        }
    };
    let view = RecordView {
        id: &outcome.item.id,
        status: outcome.status.as_str(),
        attempts: outcome.attempts,
        output: outcome.output.as_deref(),
        error: outcome.error.as_deref(),
        started_at: Rfc3339(outcome.started_at),
        finished_at: Rfc3339(outcome.finished_at),
        duration_ms: duration_ms(outcome.duration),
        priority,
        payload,
        payload_base64,
    };
    serde_json::to_writer(&mut *out, &view)?;
    out.push(b'\n');
    Ok(())
}

/// `Record`'s fields, borrowed; the same names in the same order.
#[derive(Serialize)]
struct RecordView<'a> {
    id: &'a str,
    status: &'a str,
    attempts: u32,
    output: Option<&'a str>,
    error: Option<&'a str>,
    started_at: Rfc3339,
    finished_at: Rfc3339,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// A time serialized as `timestamp` formats it, without a `String`.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let at = if self.0 < UNIX_EPOCH { UNIX_EPOCH } else { self.0 };
        serializer.collect_str(&humantime::format_rfc3339_millis(at))
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T20:17:32.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    // Before 1970 cannot be formatted; a clock that far off is clamped.
    let at = if at < UNIX_EPOCH { UNIX_EPOCH } else { at };
    humantime::format_rfc3339_millis(at).to_string()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a sink could not do what was asked, with the file it concerns.
#[derive(Debug)]
pub struct SinkError {
    /// The file (database, JSONL file) concerned.
    pub path: PathBuf,
    pub kind: SinkErrorKind,
    /// What was going on and why it failed, in words for the operator.
    pub message: String,
}

/// The kinds of sink error that call for different handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Worth retrying (disk full, database busy, an I/O error).
    Io,
    /// The file is damaged or of a newer schema: retrying cannot help; a
    /// person must look (the message says what to do).
    Corrupt,
}

impl SinkError {
    pub fn io(path: &Path, message: impl Into<String>) -> Self {
        SinkError {
            path: path.to_path_buf(),
            kind: SinkErrorKind::Io,
            message: message.into(),
        }
    }

    pub fn corrupt(path: &Path, message: impl Into<String>) -> Self {
        SinkError {
            path: path.to_path_buf(),
            kind: SinkErrorKind::Corrupt,
            message: message.into(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for SinkError {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn outcome(payload: &[u8]) -> Outcome {
        Outcome {
            item: Item::new("a", payload.to_vec()).with_priority(3),
            status: Status::Failed,
            attempts: 2,
            output: None,
            error: Some("boom".into()),
            started_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            finished_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_456),
            duration: Duration::from_millis(333),
        }
    }

    #[test]
    fn the_encoded_line_is_the_record_serialized() {
        for role in [Role::Outcomes, Role::DeadLetter] {
            for payload in [b"text".to_vec(), vec![0xff, 0x01]] {
                let o = outcome(&payload);
                let mut line = Vec::new();
                encode_json_line(&o, role, &mut line).unwrap();
                let expected = serde_json::to_string(&Record::new(&o, role)).unwrap() + "\n";
                assert_eq!(String::from_utf8(line).unwrap(), expected);
            }
        }
    }

    #[test]
    fn outcome_records_keep_no_payload() {
        let record = Record::new(&outcome(b"x"), Role::Outcomes);
        assert_eq!((record.payload, record.priority), (None, None));
        assert_eq!(record.started_at, "2023-11-14T22:13:20.123Z");
        assert_eq!(record.duration_ms, 333);
    }

    #[test]
    fn dead_letters_round_trip_text_and_binary_payloads() {
        for payload in [b"plain text".to_vec(), vec![0xff, 0x00, 0xfe]] {
            let record = Record::new(&outcome(&payload), Role::DeadLetter);
            let item = record.to_item().unwrap();
            assert_eq!((item.id.as_str(), item.priority, item.payload), ("a", 3, payload));
        }
    }
}
