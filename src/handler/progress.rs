//! [`Progress`]: which branches of a `parallel` node and which elements of a
//! `fan_out` node an item has already got an answer from, on disk (SPEC
//! §3.13, under `qos: exactly_once`). An item that failed part-way is
//! retried — in this run or the next, after a crash — calling only the
//! parts that did not answer; the recorded answers are used for the rest.
//!
//! # Invariants
//!
//! - A part's answer is recorded (one transaction, `synchronous = FULL`)
//!   before its composite returns, so a crash after it loses nothing.
//! - A composite that succeeded forgets its item's answers: a later item
//!   with the same id (a requeue) is called afresh.
//! - The answers are keyed by item id, node path and part; a recorded
//!   answer was made from the payload the node saw then (a sequence step
//!   before it that answers differently on a retry does not change it).
//! - A failure to read or write the file costs the saving, never the item:
//!   it is logged and the part is called as without progress.
//! - The answers of an item that never succeeds (failed for good) are
//!   removed when the file is opened 35 days after they were recorded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::sql::{set_busy_timeout, sqlite_path, switch_to_wal};
use crate::sync::Mutex;

/// How long answers are kept for an item that has not succeeded: longer
/// than any retry policy lote accepts waits (a month), and a requeue soon
/// after still finds them.
const KEEP: Duration = Duration::from_secs(35 * 24 * 3600);

/// How long a write waits for another lote's lock on the file.
const BUSY: Duration = Duration::from_secs(5);

/// The answers parts of composite nodes gave, per item. The file is opened
/// at its first use (so `lote check`, which starts the handler, creates
/// nothing), and again after a failure.
pub struct Progress {
    path: PathBuf,
    /// Protects: the one connection (SQLite serialises writers anyway).
    conn: Mutex<Option<Connection>>,
}

impl Progress {
    /// The progress file at `path`, not opened yet.
    pub fn new(path: &Path) -> Progress {
        Progress {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<Connection, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let mut conn = Connection::open(sqlite_path(&self.path)).map_err(|e| fail("opening", &e))?;
        set_busy_timeout(&mut conn, BUSY).map_err(|e| fail("setting the busy timeout", &e))?;
        switch_to_wal(&conn, BUSY).map_err(|e| fail("switching to WAL", &e))?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS progress (
                 item TEXT NOT NULL, node TEXT NOT NULL, part TEXT NOT NULL,
                 output TEXT NOT NULL, at INTEGER NOT NULL DEFAULT (unixepoch()),
                 PRIMARY KEY (item, node, part));",
        )
        .map_err(|e| fail("creating its table", &e))?;
        // An item that failed for good never succeeds to forget its
        // answers: they go once they are older than anyone retries.
        conn.execute(
            "DELETE FROM progress WHERE at < unixepoch() - ?1",
            [KEEP.as_secs() as i64],
        )
        .map_err(|e| fail("removing old answers", &e))?;
        Ok(conn)
    }

    /// Runs `f` on the connection, opening it first if need be; an error
    /// is logged with `doing` and gives `None`.
    fn with<T>(&self, doing: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let mut conn = self.conn.lock();
        if conn.is_none() {
            match self.open() {
                Ok(opened) => *conn = Some(opened),
                Err(e) => {
                    log::warn!("progress file {}: {e} ({doing})", self.path.display());
                    return None;
                }
            }
        }
        let result = f(conn.as_ref()?);
        result
            .map_err(|e| log::warn!("progress file {}: {doing}: {e}", self.path.display()))
            .ok()
    }

    /// The answer `part` of `node` gave for `item`, if one is recorded.
    pub fn recall(&self, item: &str, node: &str, part: &str) -> Option<String> {
        self.with("reading; calling the part again", |conn| {
            conn.query_row(
                "SELECT output FROM progress WHERE item = ?1 AND node = ?2 AND part = ?3",
                params![item, node, part],
                |row| row.get(0),
            )
            .optional()
        })
        .flatten()
    }

    /// Records that `part` of `node` answered `output` for `item`.
    pub fn record(&self, item: &str, node: &str, part: &str, output: &str) {
        self.with("recording an answer; a retry calls its part again", |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO progress (item, node, part, output) VALUES (?1, ?2, ?3, ?4)",
                params![item, node, part, output],
            )
        });
    }

    /// Forgets every answer of `node` for `item` (it succeeded whole).
    pub fn forget(&self, item: &str, node: &str) {
        self.with("forgetting the answers of an item that succeeded", |conn| {
            conn.execute(
                "DELETE FROM progress WHERE item = ?1 AND node = ?2",
                params![item, node],
            )
        });
    }

    /// Answers recorded now, all items.
    pub fn len(&self) -> usize {
        self.with("counting", |conn| {
            conn.query_row("SELECT count(*) FROM progress", [], |row| row.get::<_, i64>(0))
        })
        .map_or(0, |n| n as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A composite's progress: the store and the node's path in the tree.
#[derive(Clone)]
pub struct NodeProgress {
    pub store: std::sync::Arc<Progress>,
    pub node: String,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_a_reopen_and_are_forgotten_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.db");
        let p = Progress::new(&path);
        p.record("a", "handler", "sales", "{\"x\":1}");
        p.record("a", "handler.each", "0", "1");
        drop(p);
        let p = Progress::new(&path);
        assert_eq!(p.recall("a", "handler", "sales").as_deref(), Some("{\"x\":1}"));
        assert_eq!(p.recall("a", "handler", "stock"), None);
        p.forget("a", "handler");
        assert_eq!(p.recall("a", "handler", "sales"), None);
        assert_eq!(p.recall("a", "handler.each", "0").as_deref(), Some("1"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn answers_older_than_any_retry_go_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.db");
        let p = Progress::new(&path);
        p.record("old", "handler", "a", "1");
        p.record("new", "handler", "a", "2");
        let conn = Connection::open(&path).unwrap();
        let old = 36 * 24 * 3600;
        conn.execute("UPDATE progress SET at = unixepoch() - ?1 WHERE item = 'old'", [old])
            .unwrap();
        drop((p, conn));
        let p = Progress::new(&path);
        assert_eq!(p.recall("old", "handler", "a"), None);
        assert_eq!(p.recall("new", "handler", "a").as_deref(), Some("2"));
    }
}
