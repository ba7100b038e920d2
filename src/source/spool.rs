//! `spool`: a directory; one file = one item (SPEC §3.6).

use std::path::PathBuf;
use std::time::Duration;

/// What happens to a file once its outcome is durable and `done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDone {
    /// Move it to `<dir>/done/` (default).
    #[default]
    Move,
    /// Delete it.
    Delete,
}

/// Where an item's priority comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpoolPriority {
    /// A leading number in the file name followed by `-` or `_`
    /// (`1-reading.json` → 1); files without one get the default priority.
    #[default]
    FilenamePrefix,
    /// An integer field of the file's JSON object (`{"priority": 2, …}`).
    JsonField(String),
    /// Every item gets the default priority.
    Fixed,
}

/// A spool source's settings (config section `source:` with `kind: spool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory to take files from.
    pub dir: PathBuf,
    pub on_done: OnDone,
    pub priority: SpoolPriority,
    /// A file must be unchanged (size and mtime) this long before it is taken,
    /// so half-written files are skipped. Default 1 s.
    pub stable_for: Duration,
    /// Larger files are not processed: they fail as defective and go to the
    /// dead-letter sink. Default 16 MiB.
    pub max_bytes: u64,
    /// `true`: an empty directory means "nothing yet" (a daemon polls);
    /// `false`: it ends the session.
    pub stream: bool,
}
