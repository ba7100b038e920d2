//! What a session returns: counts per outcome and why it ended.

use std::fmt;
use std::time::Duration;

pub use super::events::SessionCounts;

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The source had nothing left.
    Drained,
    /// `max_items` items were taken (the source may have more).
    MaxItems,
    /// The session's deadline passed; items still queued went back.
    Deadline,
    /// A stop was asked for (signal or API); items still queued went back.
    Stopped,
    /// The source failed; the message says how. What was queued still ran.
    SourceFailed(String),
}

impl EndReason {
    /// A short name for logs and status files.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Drained => "drained",
            EndReason::MaxItems => "max_items",
            EndReason::Deadline => "deadline",
            EndReason::Stopped => "stopped",
            EndReason::SourceFailed(_) => "source_failed",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::SourceFailed(why) => write!(f, "source failed: {why}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What one session did and why it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub end: EndReason,
    pub counts: SessionCounts,
    /// True if the producer saw the source run dry: nothing was left to pull.
    pub source_drained: bool,
    pub elapsed: Duration,
}

impl SessionSummary {
    /// Items that reached an outcome (done, failed or skipped).
    pub fn processed(&self) -> u64 {
        self.counts.done + self.counts.failed + self.counts.skipped
    }

    /// True if items may be left at the source: some went back, or the
    /// producer stopped before the source ran dry.
    pub fn items_left(&self) -> bool {
        self.counts.returned > 0 || !self.source_drained
    }

    /// True if every item taken is accounted for: processed or returned.
    pub fn balanced(&self) -> bool {
        self.processed() + self.counts.returned == self.counts.pulled
    }
}

impl fmt::Display for SessionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "session ended ({}) after {}ms: {} pulled, {} done, {} failed, {} skipped, {} returned, {} commits",
            self.end,
            self.elapsed.as_millis(),
            c.pulled,
            c.done,
            c.failed,
            c.skipped,
            c.returned,
            c.commits
        )?;
        if c.commit_errors > 0 {
            write!(f, " ({} refused)", c.commit_errors)?;
        }
        Ok(())
    }
}
