//! Dead letters: items that failed for good, kept with their payload by the
//! dead-letter sink (the write-behind thread writes every failed outcome
//! there before it acknowledges the batch). An operator lists them and
//! requeues them into the source once the cause is fixed.

use std::fmt;

use crate::sink::{Record, Sink, SinkError};
use crate::source::{Source, SourceError};

/// Every dead letter, oldest first; one per id (a JSONL file may hold an id
/// more than once, and its last line wins, as it does everywhere).
pub fn list(sink: &mut dyn Sink) -> Result<Vec<Record>, SinkError> {
    Ok(latest_per_id(sink.records()?))
}

/// The last record of each id, in the order of those last records.
pub fn latest_per_id(records: Vec<Record>) -> Vec<Record> {
    let mut seen = std::collections::HashSet::new();
    let mut latest: Vec<Record> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    latest.reverse();
    latest
}

/// What a requeue did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Ids handed back to the source and removed from the dead letters.
    pub requeued: Vec<String>,
    /// Ids asked for that are not dead letters.
    pub unknown: Vec<String>,
}

/// Why a requeue stopped.
#[derive(Debug)]
pub enum RequeueError {
    Sink(SinkError),
    Source(SourceError),
    /// A record without a decodable payload cannot become an item again.
    NoPayload(String),
}

impl fmt::Display for RequeueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequeueError::Sink(e) => write!(f, "dead-letter sink: {e}"),
            RequeueError::Source(e) => write!(f, "source: {e}"),
            RequeueError::NoPayload(id) => write!(
                f,
                "dead letter {id} has no payload to requeue (is this an outcomes sink rather than the dead-letter sink?)"
            ),
        }
    }
}

impl std::error::Error for RequeueError {}

/// Hands dead letters back to `source` as pending items and removes them from
/// the dead-letter sink: the ones named in `ids`, or all of them with `None`.
///
/// The source takes them first and the records go after, so a crash between
/// the two can requeue an item twice, never lose it.
pub fn requeue(sink: &mut dyn Sink, source: &dyn Source, ids: Option<&[String]>) -> Result<Requeued, RequeueError> {
    let records = sink.records().map_err(RequeueError::Sink)?;
    let wanted = |id: &str| ids.is_none_or(|ids| ids.iter().any(|w| w == id));
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // The last record of an id wins (a JSONL file may hold several).
    for record in records.iter().rev().filter(|r| wanted(&r.id)) {
        if seen.insert(record.id.clone()) {
            items.push(
                record
                    .to_item()
                    .ok_or_else(|| RequeueError::NoPayload(record.id.clone()))?,
            );
        }
    }
    items.reverse();
    let requeued: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let unknown = match ids {
        Some(ids) => ids.iter().filter(|id| !seen.contains(*id)).cloned().collect(),
        None => Vec::new(),
    };
    if !items.is_empty() {
        source.requeue(items).map_err(RequeueError::Source)?;
        sink.remove(&requeued).map_err(RequeueError::Sink)?;
        log::info!("requeued {} dead letter(s) into {}", requeued.len(), source.describe());
    }
    Ok(Requeued { requeued, unknown })
}
