//! `lines`: a file, or standard input; one item per line (SPEC §3.6).

use std::path::PathBuf;

/// How lines are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinesFormat {
    /// Each line is the payload; the id is the line number.
    #[default]
    Text,
    /// Each line is a JSON object `{"id", "priority", "payload"}`; missing
    /// `id` → the line number, missing `priority` → the default.
    Ndjson,
}

/// A lines source's settings (config section `source:` with `kind: lines`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinesConfig {
    /// The file; `None` reads standard input (`path: "-"`).
    pub path: Option<PathBuf>,
    pub format: LinesFormat,
    /// Longer lines fail as defective and go to the dead-letter sink.
    /// Default 1 MiB.
    pub max_bytes: usize,
}
