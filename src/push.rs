//! `lote push` (SPEC §3.8, §3.11): lines from stdin into the inbox, through
//! the same [`Intake`] as the HTTP listener, whether or not the daemon runs
//! (SQLite lets both write the file; a running daemon hears the commits).
//!
//! Items go in chunks of [`CHUNK`] lines, one transaction each: a chunk is
//! all or nothing, and what earlier chunks accepted stays whatever happens
//! after. A malformed line stops the push after the items before it are
//! stored; a full inbox stops it with what was accepted so far.

use std::io::BufRead;

use crate::cli::PushFormat;
use crate::config::Config;
use crate::item::JsonItem;
use crate::source::{Intake, Refused};

/// Lines per transaction.
pub const CHUNK: usize = 1000;

/// What a push stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub accepted: usize,
    pub duplicates: usize,
}

impl std::fmt::Display for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {} item(s), {} duplicate(s) already in the inbox",
            self.accepted, self.duplicates
        )
    }
}

/// Why a push stopped early; `pushed` says what it stored before.
#[derive(Debug)]
pub struct PushError {
    pub pushed: Pushed,
    /// The inbox was full (exit 75), rather than an error (exit 1).
    pub full: bool,
    pub message: String,
}

/// Pushes every line of `input` into `config`'s inbox.
pub fn push(config: &Config, input: impl BufRead, format: PushFormat) -> Result<Pushed, PushError> {
    let error = |pushed: Pushed, message: String| PushError {
        pushed,
        full: false,
        message,
    };
    let intake = match config.source.intake(None) {
        Some(Ok(intake)) => intake,
        Some(Err(e)) => return Err(error(Pushed::default(), e)),
        None => {
            return Err(error(
                Pushed::default(),
                format!(
                    "lote push fills an inbox, and this config's source is `kind: {}`; set `source: {{kind: inbox}}`",
                    config.source.kind()
                ),
            ))
        }
    };
    let mut pushed = Pushed::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    for (n, line) in input.split(b'\n').enumerate() {
        let number = n + 1;
        let mut line = line.map_err(|e| error(pushed, format!("reading stdin (line {number}): {e}")))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match format {
            PushFormat::Text => Ok(JsonItem {
                id: None,
                priority: None,
                payload: line,
            }),
            PushFormat::Ndjson => JsonItem::parse(&line),
        };
        match item {
            Ok(item) => chunk.push(item),
            Err(why) => {
                store(&intake, &mut chunk, &mut pushed)?;
                return Err(error(
                    pushed,
                    format!(
                        "line {number} is not a JSON object with id/priority/payload: {why}; \
                         the {} item(s) before it were accepted, nothing after it was read",
                        pushed.accepted + pushed.duplicates
                    ),
                ));
            }
        }
        if chunk.len() == CHUNK {
            store(&intake, &mut chunk, &mut pushed)?;
        }
    }
    store(&intake, &mut chunk, &mut pushed)?;
    Ok(pushed)
}

/// Stores one chunk and empties it.
fn store(intake: &Intake, chunk: &mut Vec<JsonItem>, pushed: &mut Pushed) -> Result<(), PushError> {
    match intake.push(std::mem::take(chunk)) {
        Ok(admitted) => {
            pushed.accepted += admitted.accepted;
            pushed.duplicates += admitted.duplicates;
            Ok(())
        }
        Err(refused) => Err(PushError {
            pushed: *pushed,
            full: matches!(refused, Refused::Full { .. }),
            message: match refused {
                Refused::Full { .. } => format!(
                    "{refused}; {} item(s) were accepted before, the rest were not taken",
                    pushed.accepted
                ),
                other => other.to_string(),
            },
        }),
    }
}
