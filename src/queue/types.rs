//! The queue's messages, settings, errors and statistics.

use std::fmt;
use std::time::Duration;

/// What a worker pops.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<T> {
    /// Stop now, cleanly: finish nothing more, commit, exit.
    Stop,
    /// One work item.
    Work(T),
    /// Nothing is left: commit, exit.
    EndOfData,
}

/// What a push does when the queue already holds `capacity` work items
/// (SPEC §3.1, `queue.when_full`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The producer waits for room, up to `block_timeout` if one is set.
    #[default]
    Block,
    /// Evict the earliest-arrived queued item to make room.
    DropOldest,
    /// Evict the latest-arrived queued item to make room.
    DropNewest,
    /// Discard the incoming item.
    DropWrite,
    /// Refuse the incoming item (an HTTP ingest answers 503 + Retry-After).
    Reject,
}

impl WhenFull {
    /// The config spelling (`drop_oldest`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WhenFull::Block => "block",
            WhenFull::DropOldest => "drop_oldest",
            WhenFull::DropNewest => "drop_newest",
            WhenFull::DropWrite => "drop_write",
            WhenFull::Reject => "reject",
        }
    }
}

/// How a queue is sized and what it does when full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most work items queued at once (control messages do not count). ≥ 1.
    pub capacity: usize,
    pub when_full: WhenFull,
    /// With `Block`: how long a push may wait for room; `None` = forever (or
    /// until the queue is closed).
    pub block_timeout: Option<Duration>,
}

impl QueueConfig {
    /// A blocking queue of `capacity` work items with no timeout.
    pub fn new(capacity: usize) -> Self {
        QueueConfig {
            capacity,
            when_full: WhenFull::Block,
            block_timeout: None,
        }
    }

    /// The same config with another full mode.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// The same config with a block timeout.
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = Some(timeout);
        self
    }
}

impl Default for QueueConfig {
    /// SPEC §4: capacity 1024, `block`, no timeout.
    fn default() -> Self {
        QueueConfig::new(1024)
    }
}

/// Why a work item was not queued. Every variant hands the item back.
#[derive(PartialEq, Eq)]
pub enum PushError<T> {
    /// `reject`: the queue is full.
    Rejected(T),
    /// `drop_write`: the queue is full and the incoming item was discarded.
    Dropped(T),
    /// `block` with a timeout: no room came in time.
    TimedOut(T),
    /// The queue is closed to work (a stop is under way).
    Closed(T),
}

impl<T> PushError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Rejected(item)
            | PushError::Dropped(item)
            | PushError::TimedOut(item)
            | PushError::Closed(item) => item,
        }
    }

    /// A short name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Rejected(_) => "queue full (reject)",
            PushError::Dropped(_) => "queue full (drop_write)",
            PushError::TimedOut(_) => "queue full (block timeout)",
            PushError::Closed(_) => "queue closed",
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    // Like crossbeam's TrySendError: do not require `T: Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushError({})", self.reason())
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl<T> std::error::Error for PushError<T> {}

/// What a batch push did with the items it could not simply queue.
#[derive(Debug)]
pub struct BatchPush<T> {
    /// How many of the batch's items were queued.
    pub queued: usize,
    /// Queued items evicted to make room (`drop_oldest`, `drop_newest`).
    pub evicted: Vec<T>,
    /// Batch items that were not queued, each with the reason.
    pub refused: Vec<PushError<T>>,
}

impl<T> BatchPush<T> {
    pub(super) fn new() -> Self {
        BatchPush {
            queued: 0,
            evicted: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// True if every item was queued and nothing was evicted.
    pub fn is_clean(&self) -> bool {
        self.evicted.is_empty() && self.refused.is_empty()
    }
}

/// A snapshot of the queue's state and lifetime counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Work items queued now.
    pub len: usize,
    pub capacity: usize,
    /// True if a work push would be accepted without waiting or dropping.
    pub can_push: bool,
    pub closed: bool,
    /// Control messages waiting (stops + ends).
    pub control: usize,
    /// Work items ever queued.
    pub pushed: u64,
    /// Work items ever popped.
    pub popped: u64,
    /// Items dropped by `drop_oldest`, `drop_newest` or `drop_write`.
    pub dropped: u64,
    /// Items refused by `reject`.
    pub rejected: u64,
    /// Items refused because a blocking push timed out.
    pub timed_out: u64,
    /// Most work items ever queued at once.
    pub high_water: usize,
}
