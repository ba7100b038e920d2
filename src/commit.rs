//! Committers: where the workers' chunks of outcomes go.
//!
//! A worker hands over its chunk every `chunk` outcomes and once more with
//! the partial chunk when it exits. The committer makes the outcomes durable
//! and then acknowledges them to their source; until then the source still
//! holds the items as claimed, so a crash loses no item (it runs again).
//!
//! [`MemoryCommitter`] keeps outcomes in memory and acknowledges at once: the
//! committer for tests, examples and benchmarks. The write-behind thread to
//! SQLite or JSONL implements the same trait.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::item::{Outcome, Status};
use crate::sink::{DoneLookup, SinkError};
use crate::source::{Source, SourceError};
use crate::sync::Mutex;

/// An error from a committer.
#[derive(Debug)]
pub enum CommitError {
    /// The acknowledgement to the source failed after the outcomes were kept.
    Ack(SourceError),
    /// The committer is shut down or broken; the message says which and why.
    Unavailable(String),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Ack(e) => write!(f, "acknowledging to the source: {e}"),
            CommitError::Unavailable(why) => write!(f, "committer unavailable: {why}"),
        }
    }
}

impl std::error::Error for CommitError {}

/// Receives the workers' chunks. Called from worker threads; may block to
/// push back on them (a full write-behind channel), never drops an outcome.
pub trait Committer: Send + Sync {
    /// Takes one chunk. Outcomes handed over here are persisted and then
    /// acknowledged, or (on failure) left unacknowledged so they run again.
    fn commit(&self, chunk: Vec<Outcome>) -> Result<(), CommitError>;

    /// Called once when all workers of a session have exited: returns when
    /// everything handed over is durable (or reports what is not).
    fn finish(&self) -> Result<(), CommitError> {
        Ok(())
    }

    /// Where the ids that already have a durable `done` outcome are looked
    /// up (the exactly-once check and `--resume`): the sink's own lookup.
    /// `None` if this committer cannot tell.
    fn done_lookup(&self) -> Option<&dyn DoneLookup> {
        None
    }
}

/// Keeps every committed outcome in memory and acknowledges it to the source
/// at once. Also records chunk sizes, so tests can check the chunking.
pub struct MemoryCommitter {
    source: Option<Arc<dyn Source>>,
    /// Protects the kept outcomes and chunk sizes.
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    outcomes: Vec<Outcome>,
    chunk_sizes: Vec<usize>,
    /// Ids with a `done` outcome, for `done_ids`.
    done: HashSet<String>,
}

impl MemoryCommitter {
    /// Keeps outcomes without acknowledging them anywhere.
    pub fn new() -> Self {
        MemoryCommitter {
            source: None,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Keeps outcomes and acknowledges each chunk to `source`.
    pub fn acking(source: Arc<dyn Source>) -> Self {
        MemoryCommitter {
            source: Some(source),
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Every outcome committed so far, in commit order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.kept.lock().outcomes.clone()
    }

    /// The size of every chunk committed so far, in commit order.
    pub fn chunk_sizes(&self) -> Vec<usize> {
        self.kept.lock().chunk_sizes.clone()
    }
}

impl Default for MemoryCommitter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryCommitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCommitter")
            .field("outcomes", &self.kept.lock().outcomes.len())
            .finish()
    }
}

impl Committer for MemoryCommitter {
    fn commit(&self, chunk: Vec<Outcome>) -> Result<(), CommitError> {
        if chunk.is_empty() {
            return Ok(());
        }
        // A durable committer persists first and acknowledges after. Keeping
        // in memory cannot fail, so acknowledging first changes nothing and
        // lets the chunk move into the store without a copy.
        if let Some(source) = &self.source {
            source.ack(&chunk).map_err(CommitError::Ack)?;
        }
        let mut kept = self.kept.lock();
        kept.chunk_sizes.push(chunk.len());
        for outcome in chunk.iter().filter(|o| o.status == Status::Done) {
            kept.done.insert(outcome.item.id.clone());
        }
        kept.outcomes.extend(chunk);
        Ok(())
    }

    fn done_lookup(&self) -> Option<&dyn DoneLookup> {
        Some(self)
    }
}

impl DoneLookup for MemoryCommitter {
    fn done_ids(&self, ids: &[&str]) -> Result<HashSet<String>, SinkError> {
        let kept = self.kept.lock();
        Ok(ids
            .iter()
            .filter(|id| kept.done.contains(**id))
            .map(|id| id.to_string())
            .collect())
    }
}
