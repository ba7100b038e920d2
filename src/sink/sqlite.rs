//! The SQLite sink: one table of records (`outcomes`, or `dead_letters` for
//! the dead-letter sink), upserted by id, one transaction per batch, in WAL
//! mode. With a [`TableAck`] it also marks the items' rows in a work table of
//! the same file, in that same transaction.
//!
//! # Invariants
//!
//! - A batch is committed when `write` returns `Ok`, and not before: every
//!   upsert (and every acknowledgement of a [`TableAck`]) of the batch runs in
//!   one `BEGIN IMMEDIATE` transaction. The writer acknowledges items to their
//!   source only after `write` returns `Ok`.
//! - A failed `write` leaves nothing of its batch behind: the transaction is
//!   rolled back, acknowledgements included, so the items stay pending and
//!   the batch can be written again in full (the upsert makes that harmless).
//! - How durable "committed" is depends on [`Synchronous`]:
//!   - `Full` fsyncs the WAL at every commit: *acknowledged ⇒ durable*, even
//!     across a power cut.
//!   - `Normal` (the default) fsyncs only at checkpoints. A commit survives a
//!     crash of lote (the WAL is in the kernel's page cache), but a power cut
//!     can lose the last transactions committed before it. It never corrupts
//!     the database (on storage that honours fsync): WAL + NORMAL comes back
//!     at an earlier consistent state.
//!     That loss is what the default trades for speed on slow flash; with a
//!     [`TableAck`] it is harmless, since the lost outcomes and the lost
//!     acknowledgements are the same transactions, so those items run again.
//! - `Skipped` outcomes are never written (their `done` record is already
//!   there), but a [`TableAck`] marks them done.
//! - The sink's connection is the only writer of its table. Readers use their
//!   own read-only connection ([`Sink::lookup`]); under WAL they see the last
//!   committed batch and never block the writer.
//! - A closed sink leaves a self-contained file: dropping it first closes
//!   its lookups' read connections, then checkpoints the WAL into the main
//!   file (`wal_checkpoint(TRUNCATE)`, without waiting: busy, it is skipped,
//!   so closing never stalls another process's writers) and closes its own,
//!   so the last connection to close is a writer and SQLite removes `-wal`
//!   and `-shm`.
//!   (A read-only connection closing last cannot checkpoint: it would leave
//!   every row in `-wal` and a main file a plain copy cannot read.) A lookup
//!   asked after that answers with an error.
//! - Every identifier spliced into SQL is validated (letters, digits, `_`)
//!   and double-quoted; every value is a bound parameter.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSql, ValueRef};
use rusqlite::{params, params_from_iter, Connection, ErrorCode, OpenFlags, Row, TransactionBehavior};

use super::{encode_payload, sink_keys, DoneLookup, Place, Record, Role, Sink, SinkError, SinkKind, WriterKeys};
use crate::item::{Outcome, Status};
use crate::spec::effective::{self, dur, map};
use crate::spec::{self, absolute, Check, Dur, MAX_BUSY_TIMEOUT};
use crate::sql::{columns, has_column, is_identifier, set_busy_timeout, sqlite_path, switch_to_wal};

/// The schema this lote writes, kept in `PRAGMA user_version` (0 = a new
/// file). Both roles share it when they share a file.
const SCHEMA_VERSION: i64 = 1;

/// Most ids one done-lookup statement asks about: well under SQLite's limit
/// on bound parameters, and large enough that a chunk costs one query.
const LOOKUP_CHUNK: usize = 500;

/// What an operator should do about a damaged database file.
const DAMAGED_ADVICE: &str = "move it aside and lote will create a new one, or restore it from a backup";

/// How often the WAL is fsynced (SQLite's `PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// At checkpoints only: commits survive a crash of lote, and a power cut
    /// can lose the last ones but never corrupts the file.
    #[default]
    Normal,
    /// At every commit: a batch acknowledged to its source survives a power
    /// cut. Costs an fsync per batch.
    Full,
}

impl Synchronous {
    /// The config and pragma spelling: `normal`, `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }
}

/// What [`SqliteSink::open`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; its parent directory is created if missing.
    pub path: PathBuf,
    /// Which table this sink keeps: `outcomes` or `dead_letters`.
    pub role: Role,
    /// Default `normal`; see the module invariants for what each promises.
    pub synchronous: Synchronous,
    /// How long a statement waits for another connection's lock before it
    /// fails as busy (a retryable `Io` error). Default 5 s.
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// A config with the defaults: `synchronous = normal`, 5 s busy timeout.
    pub fn new(path: impl Into<PathBuf>, role: Role) -> Self {
        SqliteConfig {
            path: path.into(),
            role,
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

sink_keys! {
    /// `sink: {kind: sqlite}` — table `outcomes` (or `dead_letters`), upsert by id, WAL.
    SqliteKeys {
        /// The database file. Default `outcomes.db` (sink), `dead-letter.db` (dead_letter).
        path: Option<PathBuf>,
        /// `normal` (default; survives a crash of lote) or `full` (survives a power cut).
        synchronous: Option<Synchronous>,
        /// Wait this long for a lock another process holds. Default 5s.
        busy_timeout: Option<Dur>,
    }
}

impl SinkKind for SqliteConfig {
    const NAME: &'static str = "sqlite";
    type Keys = SqliteKeys;

    fn build(k: SqliteKeys, at: &Place, check: &Check) -> spec::Result<(Self, WriterKeys)> {
        let path = k
            .path
            .unwrap_or_else(|| at.default_path("outcomes.db", "dead-letter.db").into());
        check.path(&at.key("path"), &path)?;
        let d = SqliteConfig::new(absolute(at.state_dir, &path), at.role);
        let config = SqliteConfig {
            synchronous: k.synchronous.unwrap_or(d.synchronous),
            busy_timeout: check.at_most(
                &at.key("busy_timeout"),
                k.busy_timeout.map_or(d.busy_timeout, |t| t.0),
                MAX_BUSY_TIMEOUT,
            )?,
            ..d
        };
        Ok((config, k.writer))
    }

    fn effective(&self) -> serde_yaml::Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", effective::path(&self.path)),
            ("synchronous", self.synchronous.as_str().into()),
            ("busy_timeout", dur(self.busy_timeout)),
        ])
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn acks_in_transaction(&self) -> bool {
        true
    }

    fn open(&self, table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, String> {
        let sink = SqliteSink::open(self.clone()).map_err(|e| e.to_string())?;
        Ok(match table_ack {
            None => Box::new(sink),
            Some(ack) => Box::new(sink.with_table_ack(ack).map_err(|e| e.to_string())?),
        })
    }

    fn records(&self) -> Result<Vec<Record>, String> {
        let mut sink = SqliteSink::open(self.clone()).map_err(|e| e.to_string())?;
        sink.records().map_err(|e| e.to_string())
    }

    fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }
}

/// Marks rows of a work table in the same database, in the same transaction
/// as the outcomes (SPEC: with a SQLite source and a SQLite sink in the same
/// file, outcome and acknowledgement commit in one transaction).
///
/// For each outcome of a batch: `UPDATE "table" SET "status_column" = value
/// WHERE "id_column" = id`, with `done_value` for `Done` and `Skipped` items
/// and `failed_value` for `Failed` ones.
#[derive(Clone, Debug)]
pub struct TableAck {
    /// The work table (letters, digits and `_` only).
    pub table: String,
    /// Its column holding the item id.
    pub id_column: String,
    /// Its column holding the item's status.
    pub status_column: String,
    /// What `status_column` becomes for a done (or skipped) item.
    pub done_value: String,
    /// What `status_column` becomes for a failed item.
    pub failed_value: String,
    /// More assignments for the same `UPDATE`, spliced in after the status
    /// one: `""`, or e.g. `", payload = NULL"` (the inbox forgets a
    /// finished item's payload). `'static`: only lote's own code writes it,
    /// never a config.
    pub also_set: &'static str,
}

/// A validated [`TableAck`] and the statement it runs.
#[derive(Debug)]
struct Ack {
    config: TableAck,
    /// `UPDATE "table" SET "status" = ?1 WHERE "id" = ?2`.
    sql: String,
}

impl Ack {
    /// The status value an outcome sets in the work table.
    fn value(&self, status: Status) -> &str {
        match status {
            Status::Done | Status::Skipped => &self.config.done_value,
            Status::Failed => &self.config.failed_value,
        }
    }
}

/// The SQL of one role's table. Our own table and column names are fixed
/// here, so they need no validation.
struct Layout {
    table: &'static str,
    create: &'static str,
    upsert: &'static str,
    select: &'static str,
    delete: &'static str,
}

const OUTCOMES: Layout = Layout {
    table: "outcomes",
    // No index on status: done lookups go through the primary key (`id IN`)
    // and an extra index would only slow every write.
    create: "CREATE TABLE IF NOT EXISTS outcomes (id TEXT PRIMARY KEY, status TEXT NOT NULL, \
             attempts INTEGER NOT NULL, output TEXT, error TEXT, started_at TEXT NOT NULL, \
             finished_at TEXT NOT NULL, duration_ms INTEGER NOT NULL)",
    upsert: "INSERT INTO outcomes (id, status, attempts, output, error, started_at, finished_at, duration_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO UPDATE SET status = excluded.status, \
             attempts = excluded.attempts, output = excluded.output, error = excluded.error, \
             started_at = excluded.started_at, finished_at = excluded.finished_at, duration_ms = excluded.duration_ms",
    select: "SELECT id, status, attempts, output, error, started_at, finished_at, duration_ms \
             FROM outcomes ORDER BY finished_at, id",
    delete: "DELETE FROM outcomes WHERE id = ?1",
};

const DEAD_LETTERS: Layout = Layout {
    table: "dead_letters",
    create: "CREATE TABLE IF NOT EXISTS dead_letters (id TEXT PRIMARY KEY, status TEXT NOT NULL, \
             attempts INTEGER NOT NULL, output TEXT, error TEXT, started_at TEXT NOT NULL, \
             finished_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, priority INTEGER NOT NULL, \
             payload BLOB NOT NULL)",
    upsert: "INSERT INTO dead_letters (id, status, attempts, output, error, started_at, finished_at, duration_ms, \
             priority, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(id) DO UPDATE SET \
             status = excluded.status, attempts = excluded.attempts, output = excluded.output, \
             error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at, \
             duration_ms = excluded.duration_ms, priority = excluded.priority, payload = excluded.payload",
    select: "SELECT id, status, attempts, output, error, started_at, finished_at, duration_ms, priority, payload \
             FROM dead_letters ORDER BY finished_at, id",
    delete: "DELETE FROM dead_letters WHERE id = ?1",
};

fn layout(role: Role) -> &'static Layout {
    match role {
        Role::Outcomes => &OUTCOMES,
        Role::DeadLetter => &DEAD_LETTERS,
    }
}

/// Outcomes and dead letters in a SQLite database. Owned by the write-behind
/// thread; see the module invariants.
pub struct SqliteSink {
    config: SqliteConfig,
    layout: &'static Layout,
    /// The one writing connection.
    conn: Connection,
    ack: Option<Ack>,
    /// The read connections handed to lookups, closed before `conn` when the
    /// sink is dropped (see the module invariants). Locked only by `lookup`
    /// and `drop`.
    readers: Mutex<Vec<Reader>>,
}

/// A lookup's read connection, shared with the sink that closes it; `None`
/// once closed.
type Reader = Arc<Mutex<Option<Connection>>>;

impl SqliteSink {
    /// Opens (or creates) the database at `config.path`: WAL mode, the
    /// configured `synchronous`, a quick integrity check, and this role's
    /// table. A damaged file, or one from a newer lote, is a `Corrupt` error
    /// that says what to do.
    pub fn open(config: SqliteConfig) -> Result<Self, SinkError> {
        let path = config.path.clone();
        create_parent(&path)?;
        let layout = layout(config.role);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(sqlite_path(&path), flags).map_err(|e| sql_error(&path, "opening", e))?;
        let at = path.as_path();
        let fail = |doing: &'static str| move |e| sql_error(at, doing, e);

        set_busy_timeout(&mut conn, config.busy_timeout).map_err(fail("setting the busy timeout"))?;
        // Before anything writes to the file: a damaged one is left as it is
        // for a person to look at.
        quick_check(&conn, at)?;
        let version = user_version(&conn).map_err(fail("reading the schema version"))?;
        check_version(&path, version)?;

        let mode = switch_to_wal(&conn, config.busy_timeout).map_err(fail("switching to WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still correct, but lookups then wait for the writer's commits.
            log::warn!("{}: SQLite refused WAL mode (journal_mode is {mode})", path.display());
        }
        conn.pragma_update(None, "synchronous", config.synchronous.as_str())
            .map_err(fail("setting synchronous"))?;

        let version = create_schema(&mut conn, layout).map_err(fail("creating the schema"))?;
        check_version(&path, version)?;
        fits_schema(&conn, layout, at)?;
        Ok(SqliteSink {
            config,
            layout,
            conn,
            ack: None,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The same sink, also marking the items' rows of a work table in this
    /// database (see [`TableAck`]). Fails if a name is not a plain identifier
    /// or the table or a column does not exist.
    pub fn with_table_ack(mut self, ack: TableAck) -> Result<Self, SinkError> {
        let path = self.config.path.as_path();
        for (what, name) in [
            ("table", &ack.table),
            ("id column", &ack.id_column),
            ("status column", &ack.status_column),
        ] {
            if !is_identifier(name) {
                return Err(SinkError::corrupt(
                    path,
                    format!("acknowledgement {what} {name:?} is not a plain name (use letters, digits and _ only)"),
                ));
            }
        }
        let columns = columns(&self.conn, &ack.table).map_err(|e| sql_error(path, "reading the work table", e))?;
        if columns.is_empty() {
            return Err(SinkError::corrupt(
                path,
                format!("acknowledgement table {} does not exist in this database", ack.table),
            ));
        }
        for column in [&ack.id_column, &ack.status_column] {
            if !has_column(&columns, column) {
                return Err(SinkError::corrupt(
                    path,
                    format!("acknowledgement table {} has no column {column}", ack.table),
                ));
            }
        }
        let sql = format!(
            "UPDATE \"{}\" SET \"{}\" = ?1{} WHERE \"{}\" = ?2",
            ack.table, ack.status_column, ack.also_set, ack.id_column
        );
        self.ack = Some(Ack { config: ack, sql });
        Ok(self)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The batch's transaction. Upsert and acknowledgement alternate per
    /// outcome; either failing rolls back both for the whole batch.
    fn write_batch(&mut self, outcomes: &[Outcome]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare_cached(self.layout.upsert)?;
            let mut update = match &self.ack {
                Some(ack) => Some((ack, tx.prepare_cached(&ack.sql)?)),
                None => None,
            };
            for outcome in outcomes {
                if is_written(outcome.status) {
                    // Role::Outcomes: the shared fields only, formatted the
                    // way every sink formats them; the payload goes in raw.
                    let r = Record::new(outcome, Role::Outcomes);
                    let ms = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
                    let shared: [&dyn ToSql; 8] = [
                        &r.id,
                        &r.status,
                        &r.attempts,
                        &r.output,
                        &r.error,
                        &r.started_at,
                        &r.finished_at,
                        &ms,
                    ];
                    let dead_letter: [&dyn ToSql; 2] = [&outcome.item.priority, &outcome.item.payload];
                    let extra = match self.config.role {
                        Role::Outcomes => &[][..],
                        Role::DeadLetter => &dead_letter[..],
                    };
                    upsert.execute(params_from_iter(shared.iter().chain(extra)))?;
                }
                if let Some((ack, update)) = &mut update {
                    update.execute(params![ack.value(outcome.status), outcome.id()])?;
                }
            }
        }
        // A failed COMMIT drops `tx` still open, and dropping rolls it back.
        tx.commit()
    }

    fn read_records(&self) -> rusqlite::Result<Vec<Record>> {
        let role = self.config.role;
        let mut select = self.conn.prepare_cached(self.layout.select)?;
        let records = select.query_map([], |row| record_from_row(row, role))?;
        records.collect()
    }

    fn delete(&mut self, ids: &[String]) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = 0;
        {
            let mut delete = tx.prepare_cached(self.layout.delete)?;
            for id in ids {
                removed += delete.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}

impl Sink for SqliteSink {
    fn describe(&self) -> String {
        match self.config.role {
            Role::Outcomes => format!("sqlite {}", self.config.path.display()),
            Role::DeadLetter => format!("sqlite {} (dead letters)", self.config.path.display()),
        }
    }

    fn write(&mut self, outcomes: &[Outcome]) -> Result<(), SinkError> {
        let acks = self.ack.is_some();
        if !outcomes.iter().any(|o| is_written(o.status) || acks) {
            return Ok(());
        }
        self.write_batch(outcomes)
            .map_err(|e| sql_error(&self.config.path, &format!("writing {} outcomes", outcomes.len()), e))
    }

    /// For an outcomes sink, a lookup with its own read-only connection. A
    /// dead-letter sink keeps no `done` records, so its lookup always
    /// answers with an empty set.
    fn lookup(&self) -> Result<Box<dyn DoneLookup>, SinkError> {
        if self.config.role == Role::DeadLetter {
            return Ok(Box::new(NoDoneRecords));
        }
        let path = &self.config.path;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(sqlite_path(path), flags)
            .and_then(|mut conn| set_busy_timeout(&mut conn, self.config.busy_timeout).map(|()| conn))
            .map_err(|e| sql_error(path, "opening a reader", e))?;
        let reader: Reader = Arc::new(Mutex::new(Some(conn)));
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&reader));
        Ok(Box::new(SqliteLookup {
            path: path.clone(),
            sql: lookup_sql(),
            conn: reader,
        }))
    }

    fn records(&mut self) -> Result<Vec<Record>, SinkError> {
        self.read_records()
            .map_err(|e| sql_error(&self.config.path, &format!("reading {}", self.layout.table), e))
    }

    fn remove(&mut self, ids: &[String]) -> Result<usize, SinkError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete(ids)
            .map_err(|e| sql_error(&self.config.path, &format!("removing {} records", ids.len()), e))
    }
}

impl Drop for SqliteSink {
    /// Closes the lookups' readers, then checkpoints, so that the writer is
    /// the last connection and SQLite deletes the WAL when it closes (see the
    /// module invariants).
    fn drop(&mut self) {
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(PoisonError::into_inner));
        for reader in readers {
            // Waits for a query in flight; none runs once the sessions ended.
            reader.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        // TRUNCATE: everything into the main file, the WAL emptied, even if
        // another process keeps the database open (then it stays, empty).
        // Without waiting: a checkpoint that waits for another process's
        // readers holds the write lock meanwhile and stalls its writers (a
        // `lote dead-letter list` beside a running lote). Busy, it is skipped:
        // the last connection to close checkpoints anyway.
        if let Err(e) = self.conn.busy_timeout(Duration::ZERO) {
            log::warn!(
                "{}: the closing checkpoint was skipped: {e}",
                self.config.path.display()
            );
            return;
        }
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
        match checkpoint {
            Ok(0) => {}
            Ok(_) => log::debug!(
                "{}: the closing checkpoint was blocked by another connection; the WAL stays until it closes",
                self.config.path.display()
            ),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) =>
            {
                log::debug!(
                    "{}: the closing checkpoint was skipped, another connection is writing; the WAL stays until \
                     the last one closes",
                    self.config.path.display()
                )
            }
            Err(e) => log::warn!("{}: the closing checkpoint failed: {e}", self.config.path.display()),
        }
    }
}

/// Answers done lookups from a read-only connection of its own.
struct SqliteLookup {
    path: PathBuf,
    /// `SELECT id FROM outcomes WHERE status = ?1 AND id IN (?2, …, ?501)`.
    sql: String,
    /// The read connection. A `Connection` is `Send` but not `Sync`, so
    /// threads asking at once take turns; it is held for one query's reads.
    /// `None` once the sink has closed it.
    conn: Reader,
}

impl DoneLookup for SqliteLookup {
    fn done_ids(&self, ids: &[&str]) -> Result<HashSet<String>, SinkError> {
        let mut done = HashSet::new();
        if ids.is_empty() {
            return Ok(done);
        }
        // Poisoning is ignored as in `crate::sync`: a statement is dropped on
        // unwind, and the connection is fine after any single query.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(conn) = conn.as_ref() else {
            return Err(SinkError::io(&self.path, "looking up done ids: the sink is closed"));
        };
        let query = |done: &mut HashSet<String>| -> rusqlite::Result<()> {
            let mut select = conn.prepare_cached(&self.sql)?;
            for chunk in ids.chunks(LOOKUP_CHUNK) {
                // Unused places get NULL, which `IN` never matches: one
                // statement serves every chunk size.
                let values = std::iter::once(Some(Status::Done.as_str()))
                    .chain(chunk.iter().map(|id| Some(*id)))
                    .chain(std::iter::repeat_n(None, LOOKUP_CHUNK - chunk.len()));
                let mut rows = select.query(params_from_iter(values))?;
                while let Some(row) = rows.next()? {
                    done.insert(row.get(0)?);
                }
            }
            Ok(())
        };
        query(&mut done).map_err(|e| sql_error(&self.path, &format!("looking up {} ids", ids.len()), e))?;
        Ok(done)
    }
}

/// The lookup of a dead-letter sink: dead letters are never done.
struct NoDoneRecords;

impl DoneLookup for NoDoneRecords {
    fn done_ids(&self, _ids: &[&str]) -> Result<HashSet<String>, SinkError> {
        Ok(HashSet::new())
    }
}

fn lookup_sql() -> String {
    let places: Vec<String> = (2..LOOKUP_CHUNK + 2).map(|n| format!("?{n}")).collect();
    format!(
        "SELECT id FROM outcomes WHERE status = ?1 AND id IN ({})",
        places.join(", ")
    )
}

/// True for the outcomes that get a record.
fn is_written(status: Status) -> bool {
    matches!(status, Status::Done | Status::Failed)
}

fn record_from_row(row: &Row<'_>, role: Role) -> rusqlite::Result<Record> {
    let mut record = Record {
        id: row.get(0)?,
        status: row.get(1)?,
        attempts: row.get(2)?,
        output: row.get(3)?,
        error: row.get(4)?,
        started_at: row.get(5)?,
        finished_at: row.get(6)?,
        duration_ms: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
        priority: None,
        payload: None,
        payload_base64: None,
    };
    if role == Role::DeadLetter {
        let payload = match row.get_ref(9)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes.to_vec(),
            _ => Vec::new(),
        };
        (record.payload, record.payload_base64) = encode_payload(&payload);
        record.priority = Some(row.get(8)?);
    }
    Ok(record)
}

/// Maps a SQLite error to a sink error: damage is `Corrupt` (retrying cannot
/// help); anything else (busy, locked, I/O, disk full) is `Io`.
fn sql_error(path: &Path, doing: &str, error: rusqlite::Error) -> SinkError {
    if is_damage(&error) {
        SinkError::corrupt(
            path,
            format!("{doing}: the database is damaged ({error}); {DAMAGED_ADVICE}"),
        )
    } else {
        SinkError::io(path, format!("{doing}: {error}"))
    }
}

/// SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged or not a database.
fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn check_version(path: &Path, version: i64) -> Result<(), SinkError> {
    if version > SCHEMA_VERSION {
        return Err(SinkError::corrupt(
            path,
            format!(
                "the database was written by a newer lote (schema version {version}, this lote knows \
                 {SCHEMA_VERSION}); run that lote, or move the file aside to start a new one"
            ),
        ));
    }
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), SinkError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent)
            .map_err(|e| SinkError::io(path, format!("cannot create the directory {}: {e}", parent.display()))),
        _ => Ok(()),
    }
}

/// Runs `PRAGMA quick_check` (O(file size), once per open). Its answer is
/// one row "ok", or rows naming the problems, or rows and then a corruption
/// error; the first few problems go into the error.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), SinkError> {
    let mut problems: Vec<String> = Vec::new();
    let result = conn.pragma_query(None, "quick_check", |row| {
        let problem: String = row.get(0)?;
        let problem = problem.trim_start_matches("*** in database main ***").trim();
        problems.push(problem.replace('\n', " "));
        Ok(())
    });
    match result {
        Ok(()) if problems == ["ok"] => return Ok(()),
        Ok(()) => {}
        Err(e) if is_damage(&e) => problems.push(e.to_string()),
        Err(e) => return Err(sql_error(path, "checking the database", e)),
    }
    problems.truncate(3);
    Err(SinkError::corrupt(
        path,
        format!(
            "the database is damaged (quick_check: {}); {DAMAGED_ADVICE}",
            problems.join("; ")
        ),
    ))
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Creates `layout`'s table and stamps a new file with our version, in one
/// transaction (two sinks may open one file at once). Returns the version
/// found, so the caller can refuse a newer one.
fn create_schema(conn: &mut Connection, layout: &Layout) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    if version > SCHEMA_VERSION {
        return Ok(version); // dropping `tx` rolls back
    }
    tx.execute_batch(layout.create)?;
    if version == 0 {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(version)
}

/// Checks that an existing table of ours has the columns and the unique id
/// the statements need, by preparing them: a table of the same name made by
/// another program is refused before any write.
fn fits_schema(conn: &Connection, layout: &Layout, path: &Path) -> Result<(), SinkError> {
    for sql in [layout.upsert, layout.select] {
        match conn.prepare_cached(sql) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::Unknown) => {
                return Err(SinkError::corrupt(
                    path,
                    format!(
                        "table {} does not fit lote's schema ({e}): the file was not made by lote; \
                         point the sink at another file",
                        layout.table
                    ),
                ))
            }
            Err(e) => return Err(sql_error(path, "reading the schema", e)),
        }
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests;
