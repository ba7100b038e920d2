//! `inbox`: lote's own durable queue (SPEC §3.11). Other processes on the
//! box put items in — the HTTP/Unix-socket listener and `lote push`, both
//! through an [`Intake`] — and a session takes them out as its source.
//!
//! One table, `inbox`, in a SQLite file in WAL mode: by default the SQLite
//! sink's own file, so that an outcome and its item's acknowledgement
//! commit in one transaction.
//!
//! # Invariants
//!
//! - A row is `pending`, `running` (claimed by a pull), `done` or `failed`.
//!   The number of unfinished rows (pending + running) is kept in the
//!   one-row table `inbox_depth` by triggers, in the same transaction as the
//!   change, whichever connection or process makes it: the capacity check
//!   never counts rows.
//! - A push is all or nothing (one savepoint per request) and is refused
//!   whole when it would take the unfinished rows past `capacity`.
//! - An id that is pending, running or done is a duplicate: acknowledged,
//!   nothing changes. A `failed` id sent again becomes a new pending item
//!   (it was dead-lettered; the sender wants it run). Finished rows keep
//!   their id (not their payload) for `dedupe_window`, then are deleted: a
//!   duplicate is caught within that window.
//! - A pull claims rows in one `BEGIN IMMEDIATE` transaction, in priority
//!   then arrival order. Rows a crash left `running` are pending again when
//!   the source opens: an item may run again (at-least-once), never stays
//!   stuck.
//! - A row becomes `done`/`failed` (its payload dropped) only once its
//!   outcome is durable: in the sink's own transaction when the inbox is the
//!   sink's file ([`TableAck`]), else by this source's `ack` after it.
//! - An idle continuous session does not poll: the producer waits on the
//!   source's [`Doorbell`], rung by every write to the database's WAL
//!   (inotify; another process's `lote push` included) and by this
//!   process's intake after each commit.

mod intake;
mod kind;

pub use intake::{Admitted, Intake, IntakeStats, Refused};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::watch::Watch;
use super::{Doorbell, Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Status};
use crate::sink::{Synchronous, TableAck};
use crate::sql::{set_busy_timeout, sqlite_path, switch_to_wal};
use crate::sync::Mutex;

/// The inbox's settings (`source: {kind: inbox}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// Most unfinished items; a push beyond is refused.
    pub capacity: u64,
    /// Largest payload of one item, bytes.
    pub max_bytes: u64,
    /// How pushes are made durable: `full` (default) fsyncs each commit.
    pub synchronous: Synchronous,
    /// How long a finished item's id is remembered (duplicates within it
    /// are caught).
    pub dedupe_window: Duration,
    /// Wait this long for another connection's lock.
    pub busy_timeout: Duration,
    /// `true`: an empty inbox means "nothing yet" (a daemon waits);
    /// `false`: the session is done (`run --once`).
    pub stream: bool,
}

impl InboxConfig {
    /// The defaults for an inbox in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        InboxConfig {
            path: path.into(),
            capacity: 100_000,
            max_bytes: 1 << 20,
            synchronous: Synchronous::Full,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            busy_timeout: Duration::from_secs(5),
            stream: false,
        }
    }
}

/// The schema; every statement is idempotent, run at each open.
const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    payload BLOB,
    status TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS inbox_next ON inbox (priority, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS inbox_finished ON inbox (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS inbox_depth (one INTEGER PRIMARY KEY CHECK (one = 1), unfinished INTEGER NOT NULL);
INSERT OR IGNORE INTO inbox_depth (one, unfinished) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS inbox_added AFTER INSERT ON inbox
    WHEN NEW.status IN ('pending', 'running')
    BEGIN UPDATE inbox_depth SET unfinished = unfinished + 1; END;
CREATE TRIGGER IF NOT EXISTS inbox_finished AFTER UPDATE OF status ON inbox
    WHEN OLD.status IN ('pending', 'running') AND NEW.status NOT IN ('pending', 'running')
    BEGIN UPDATE inbox_depth SET unfinished = unfinished - 1; END;
CREATE TRIGGER IF NOT EXISTS inbox_reopened AFTER UPDATE OF status ON inbox
    WHEN OLD.status NOT IN ('pending', 'running') AND NEW.status IN ('pending', 'running')
    BEGIN UPDATE inbox_depth SET unfinished = unfinished + 1; END;
CREATE TRIGGER IF NOT EXISTS inbox_removed AFTER DELETE ON inbox
    WHEN OLD.status IN ('pending', 'running')
    BEGIN UPDATE inbox_depth SET unfinished = unfinished - 1; END;
";

/// What an acknowledgement sets besides the status (see [`TableAck`]).
const FINISH: &str = ", payload = NULL, finished_at = CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// How long items given back wait before they are offered again: an open
/// breaker that skips must not spin on them.
const GIVEN_BACK_PAUSE: Duration = Duration::from_secs(1);

/// How often an idle source deletes finished rows older than the window.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per pruning statement (short transactions).
const PRUNE_ROWS: i64 = 10_000;

/// Opens (creating the file and the schema if missing) a connection to the
/// inbox. Errors are whole sentences.
pub(crate) fn open_db(config: &InboxConfig) -> Result<Connection, String> {
    let path = &config.path;
    let fail = |doing: &str, e: &dyn std::fmt::Display| format!("inbox {}: {doing}: {e}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| fail(&format!("creating {}", parent.display()), &e))?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(sqlite_path(path), flags).map_err(|e| fail("opening", &e))?;
    set_busy_timeout(&mut conn, config.busy_timeout).map_err(|e| fail("setting the busy timeout", &e))?;
    let mode = switch_to_wal(&conn, config.busy_timeout).map_err(|e| fail("switching to WAL", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(
            "switching to WAL",
            &format!(
                "SQLite answered journal_mode {mode}; the inbox needs WAL (is the file on a network file system?)"
            ),
        ));
    }
    conn.pragma_update(None, "synchronous", config.synchronous.as_str())
        .map_err(|e| fail("setting synchronous", &e))?;
    // Two processes creating the schema at once: one waits for the other.
    conn.execute_batch(&format!("BEGIN IMMEDIATE;\n{SCHEMA}COMMIT;"))
        .map_err(|e| fail("creating the inbox table", &e))?;
    Ok(conn)
}

/// Unfinished items (pending + running).
fn depth(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT unfinished FROM inbox_depth", [], |row| row.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The inbox as a source. See the module invariants.
pub struct InboxSource {
    config: InboxConfig,
    /// True once the sink acknowledges in its own transaction.
    acked_by_sink: bool,
    /// Pulls (producer), give-backs (workers) and acks (writer) come from
    /// different threads; one SQLite handle must not be used by two at once.
    conn: Mutex<Connection>,
    bell: Arc<Doorbell>,
    _watch: Option<Watch>,
    /// Nothing is offered before this moment (items just given back), and
    /// when finished rows were last pruned.
    timing: Mutex<Timing>,
}

struct Timing {
    paused_until: Option<Instant>,
    pruned_at: Instant,
}

impl InboxSource {
    /// Opens the inbox (creating it if missing) for a run: sets rows a
    /// crash left running back to pending, and prunes finished rows past
    /// the window.
    pub fn open(config: InboxConfig) -> Result<Self, SourceError> {
        Self::open_to(config, true)
    }

    /// Opens the inbox to put items back into it (`dead-letter requeue`),
    /// leaving running rows alone: a daemon may be running them.
    pub fn open_for_requeue(config: InboxConfig) -> Result<Self, SourceError> {
        Self::open_to(config, false)
    }

    fn open_to(config: InboxConfig, reclaim: bool) -> Result<Self, SourceError> {
        let conn = open_db(&config).map_err(|e| SourceError::new("opening the inbox", e))?;
        let source_error =
            |what: &str, e: rusqlite::Error| SourceError::new(format!("inbox {}: {what}", config.path.display()), e);
        let reset = match reclaim {
            true => conn
                .execute("UPDATE inbox SET status = 'pending' WHERE status = 'running'", [])
                .map_err(|e| source_error("resetting rows left running", e))?,
            false => 0,
        };
        if reset > 0 {
            log::warn!(
                "inbox {}: {reset} item(s) were left running by an earlier run that did not finish; they are pending again",
                config.path.display()
            );
        }
        prune(&conn, config.dedupe_window).map_err(|e| source_error("deleting finished rows", e))?;
        let bell = Arc::new(Doorbell::new());
        let watch = if config.stream {
            let wal = wal_path(&config.path);
            match Watch::writes(&wal, Arc::clone(&bell)) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    log::warn!(
                        "inbox {}: cannot watch {} with inotify ({e}); pushes by other processes are seen within poll_every",
                        config.path.display(),
                        wal.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        if watch.is_none() {
            bell.go_deaf();
        }
        Ok(InboxSource {
            config,
            acked_by_sink: false,
            conn: Mutex::new(conn),
            bell,
            _watch: watch,
            timing: Mutex::new(Timing {
                paused_until: None,
                pruned_at: Instant::now(),
            }),
        })
    }

    /// How the SQLite sink acknowledges this inbox's rows in its own
    /// transaction.
    pub fn table_ack() -> TableAck {
        TableAck {
            table: "inbox".into(),
            id_column: "id".into(),
            status_column: "status".into(),
            done_value: "done".into(),
            failed_value: "failed".into(),
            also_set: FINISH,
        }
    }

    /// Leaves acknowledgement to a SQLite sink in the same file, set up with
    /// [`InboxSource::table_ack`]: this source's `ack` then does nothing.
    pub fn acked_in_sink_transaction(mut self) -> Self {
        self.acked_by_sink = true;
        self
    }

    fn error(&self, what: &str, e: rusqlite::Error) -> SourceError {
        SourceError::new(format!("inbox {}: {what}", self.config.path.display()), e)
    }

    /// Runs `sql` with (value, id) for each id, in one transaction.
    fn set_each(&self, sql: &str, value: &str, ids: &[&str], what: &str) -> Result<(), SourceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(what, e))?;
        {
            let mut statement = tx.prepare_cached(sql).map_err(|e| self.error(what, e))?;
            for id in ids {
                statement
                    .execute(params![value, id])
                    .map_err(|e| self.error(&format!("{what}: item {id}"), e))?;
            }
        }
        tx.commit().map_err(|e| self.error(what, e))
    }

    /// Claims up to `max` pending rows.
    fn claim(&self, max: usize) -> Result<Vec<Item>, SourceError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error("claiming items", e))?;
        let rows = {
            let mut select = tx
                .prepare_cached(
                    "SELECT seq, id, priority, payload FROM inbox WHERE status = 'pending' \
                     ORDER BY priority, seq LIMIT ?1",
                )
                .map_err(|e| self.error("claiming items", e))?;
            let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
            let rows = select
                .query_map([limit], |row| {
                    let item = Item::new(
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                    )
                    .with_priority(row.get(2)?);
                    Ok((row.get::<_, i64>(0)?, item))
                })
                .map_err(|e| self.error("claiming items", e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.error("claiming items", e))?
        };
        {
            let mut mark = tx
                .prepare_cached("UPDATE inbox SET status = 'running' WHERE seq = ?1")
                .map_err(|e| self.error("claiming items", e))?;
            for (seq, item) in &rows {
                mark.execute([seq])
                    .map_err(|e| self.error(&format!("claiming item {}", item.id), e))?;
            }
        }
        tx.commit().map_err(|e| self.error("claiming items", e))?;
        Ok(rows.into_iter().map(|(_, item)| item).collect())
    }

    /// Deletes finished rows past the window, once every [`PRUNE_EVERY`].
    fn prune_if_due(&self) -> Result<(), SourceError> {
        {
            let mut timing = self.timing.lock();
            if timing.pruned_at.elapsed() < PRUNE_EVERY {
                return Ok(());
            }
            timing.pruned_at = Instant::now();
        }
        let conn = self.conn.lock();
        prune(&conn, self.config.dedupe_window).map_err(|e| self.error("deleting finished rows", e))
    }
}

/// Deletes finished rows older than `window`, a bounded number per
/// transaction.
fn prune(conn: &Connection, window: Duration) -> rusqlite::Result<()> {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let before = now_ms().saturating_sub(window_ms);
    let mut removed = 0;
    loop {
        let n = conn.execute(
            "DELETE FROM inbox WHERE seq IN \
             (SELECT seq FROM inbox WHERE finished_at < ?1 LIMIT ?2)",
            params![before, PRUNE_ROWS],
        )?;
        removed += n;
        if (n as i64) < PRUNE_ROWS {
            break;
        }
    }
    if removed > 0 {
        log::debug!("inbox: forgot {removed} finished item(s) older than the dedupe window");
    }
    Ok(())
}

/// The write-ahead log next to a database file.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Source for InboxSource {
    fn describe(&self) -> String {
        format!("inbox {}", self.config.path.display())
    }

    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let paused = self.timing.lock().paused_until.filter(|until| Instant::now() < *until);
        if let Some(until) = paused {
            self.bell.ring_at(until);
            return Ok(Pull::Idle);
        }
        let items = self.claim(max)?;
        if !items.is_empty() {
            return Ok(Pull::Items(items));
        }
        if !self.config.stream {
            return Ok(Pull::Exhausted);
        }
        self.prune_if_due()?;
        Ok(Pull::Idle)
    }

    fn give_back(&self, items: Vec<Item>, _reason: ReturnReason) -> Result<(), SourceError> {
        self.timing.lock().paused_until = Some(Instant::now() + GIVEN_BACK_PAUSE);
        // The write back is heard as an arrival: held, it wakes the producer
        // when the pause ends.
        self.bell.hold(Instant::now() + GIVEN_BACK_PAUSE);
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        self.set_each(
            "UPDATE inbox SET status = ?1 WHERE id = ?2 AND status = 'running'",
            "pending",
            &ids,
            "giving items back",
        )
    }

    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        if self.acked_by_sink {
            return Ok(());
        }
        let sql = format!("UPDATE inbox SET status = ?1{FINISH} WHERE id = ?2");
        let (failed, done): (Vec<&Outcome>, Vec<&Outcome>) = outcomes.iter().partition(|o| o.status == Status::Failed);
        let done: Vec<&str> = done.iter().map(|o| o.id()).collect();
        let failed: Vec<&str> = failed.iter().map(|o| o.id()).collect();
        self.set_each(&sql, "done", &done, "marking items done")?;
        self.set_each(&sql, "failed", &failed, "marking items failed")
    }

    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error("requeueing", e))?;
        {
            let mut forget = tx
                .prepare_cached("DELETE FROM inbox WHERE id = ?1 AND status IN ('done', 'failed')")
                .map_err(|e| self.error("requeueing", e))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO inbox (id, priority, payload, status, received_at) \
                     VALUES (?1, ?2, ?3, 'pending', ?4) ON CONFLICT(id) DO NOTHING",
                )
                .map_err(|e| self.error("requeueing", e))?;
            let now = now_ms();
            for item in &items {
                forget
                    .execute([&item.id])
                    .and_then(|_| insert.execute(params![item.id, item.priority, item.payload, now]))
                    .map_err(|e| self.error(&format!("requeueing item {}", item.id), e))?;
            }
        }
        tx.commit().map_err(|e| self.error("requeueing", e))?;
        drop(conn);
        self.bell.ring();
        Ok(())
    }

    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        Some(Arc::clone(&self.bell))
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
