//! `sqlite`: a table of work items in a SQLite database (SPEC §3.6). The
//! table has id, payload, priority and status columns whose names are
//! configured; lote claims `pending` rows, marks them `done` or `failed` once
//! their outcome is durable, and sets returned rows back to `pending`.
//!
//! # Invariants
//!
//! - A pull claims rows in one `BEGIN IMMEDIATE` transaction (select, then
//!   set `running`), so two lote processes on one table never take the same
//!   row.
//! - Rows left `running` by a crash are set back to `pending` when the source
//!   opens: an item is never stuck, and may run again (at-least-once; the
//!   exactly-once check skips it if its outcome is durable).
//! - With the SQLite sink in the same database file, the sink marks the rows
//!   in the same transaction as the outcomes ([`SqliteSource::table_ack`]
//!   gives it the statement's parts) and this source's own `ack` does
//!   nothing: outcome and acknowledgement commit together or not at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags, TransactionBehavior};

use super::{Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Status, DEFAULT_PRIORITY};
use crate::sink::TableAck;
use crate::sql::{columns, has_column, quote, set_busy_timeout, switch_to_wal};
use crate::sync::Mutex;

/// Where the work table is and what its columns are called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteSourceConfig {
    pub path: PathBuf,
    pub table: String,
    /// Default `id`.
    pub id_column: String,
    /// Default `payload` (TEXT or BLOB).
    pub payload_column: String,
    /// Default `priority`; `None`: every item gets the default priority.
    pub priority_column: Option<String>,
    /// Default `status`.
    pub status_column: String,
    /// Status values: default `pending`, `running`, `done`, `failed`.
    pub pending: String,
    pub running: String,
    pub done: String,
    pub failed: String,
    /// `true`: an empty table means "nothing yet" (a daemon polls it);
    /// `false`: it means the session is done.
    pub stream: bool,
    pub busy_timeout: Duration,
}

impl SqliteSourceConfig {
    /// The conventional column names and status values for `table` in `path`.
    pub fn new(path: impl Into<PathBuf>, table: impl Into<String>) -> Self {
        SqliteSourceConfig {
            path: path.into(),
            table: table.into(),
            id_column: "id".into(),
            payload_column: "payload".into(),
            priority_column: Some("priority".into()),
            status_column: "status".into(),
            pending: "pending".into(),
            running: "running".into(),
            done: "done".into(),
            failed: "failed".into(),
            stream: false,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A work table as a source.
pub struct SqliteSource {
    config: SqliteSourceConfig,
    /// The statements, with identifiers validated and quoted at open.
    sql: Statements,
    /// True once the sink acknowledges in its own transaction.
    acked_by_sink: bool,
    /// Protects the connection: pulls (producer), give-backs (workers) and
    /// acks (writer) come from different threads. It is held across each
    /// statement's disk write on purpose: a `Connection` is one SQLite
    /// handle that must not be used by two threads at once, and SQLite
    /// itself serialises writers to the file. Nobody holds it across a
    /// handler call; the hot path (workers) takes it only to give items back.
    conn: Mutex<Connection>,
}

struct Statements {
    select_pending: String,
    mark: String,
    reset_running: String,
    requeue: String,
}

impl SqliteSource {
    /// Opens the table, checks its columns, and sets rows left `running` by
    /// a crash back to `pending`.
    pub fn open(config: SqliteSourceConfig) -> Result<Self, SourceError> {
        let path = config.path.clone();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            SourceError::new(format!("sqlite source {}", path.display()), format!("{what}: {e}"))
        };
        if !path.exists() {
            return Err(fail(
                "opening",
                &"the database file does not exist; create the work table first (see the README)",
            ));
        }
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| fail("opening", &e))?;
        set_busy_timeout(&conn, config.busy_timeout).map_err(|e| fail("setting the busy timeout", &e))?;
        switch_to_wal(&conn, config.busy_timeout).map_err(|e| fail("switching to WAL", &e))?;
        let columns = columns(&conn, &config.table).map_err(|e| fail("reading the table's columns", &e))?;
        if columns.is_empty() {
            return Err(fail(
                "checking the table",
                &format!("there is no table named {:?} in this database", config.table),
            ));
        }
        let mut wanted = vec![&config.id_column, &config.payload_column, &config.status_column];
        wanted.extend(config.priority_column.as_ref());
        for column in wanted {
            if !has_column(&columns, column) {
                return Err(fail(
                    "checking the table",
                    &format!(
                        "table {:?} has no column {column:?} (it has: {}); name the right one in the source config",
                        config.table,
                        columns.join(", ")
                    ),
                ));
            }
        }
        let sql = Statements::new(&config);
        let reset = conn
            .execute(&sql.reset_running, [&config.pending, &config.running])
            .map_err(|e| fail("resetting rows left running", &e))?;
        if reset > 0 {
            log::warn!(
                "sqlite source {}: {reset} row(s) were left {:?} by an earlier run that did not finish; \
                 they are {:?} again",
                path.display(),
                config.running,
                config.pending
            );
        }
        Ok(SqliteSource {
            config,
            sql,
            acked_by_sink: false,
            conn: Mutex::new(conn),
        })
    }

    /// How the SQLite sink marks this table's rows in its own transaction.
    pub fn table_ack(&self) -> TableAck {
        TableAck {
            table: self.config.table.clone(),
            id_column: self.config.id_column.clone(),
            status_column: self.config.status_column.clone(),
            done_value: self.config.done.clone(),
            failed_value: self.config.failed.clone(),
        }
    }

    /// Leaves acknowledgement to a SQLite sink in the same database, set up
    /// with [`SqliteSource::table_ack`]: this source's `ack` then does nothing.
    pub fn acked_in_sink_transaction(mut self) -> Self {
        self.acked_by_sink = true;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    fn error(&self, what: String, e: rusqlite::Error) -> SourceError {
        SourceError::new(format!("sqlite source {}: {what}", self.config.path.display()), e)
    }

    /// Sets the status of `ids` in one transaction.
    fn mark(&self, ids: &[&str], status: &str, what: &str) -> Result<(), SourceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(format!("{what}: starting a transaction"), e))?;
        {
            let mut statement = tx
                .prepare_cached(&self.sql.mark)
                .map_err(|e| self.error(format!("{what}: preparing"), e))?;
            for id in ids {
                statement
                    .execute([status, id])
                    .map_err(|e| self.error(format!("{what}: item {id}"), e))?;
            }
        }
        tx.commit().map_err(|e| self.error(format!("{what}: committing"), e))
    }
}

impl Statements {
    fn new(c: &SqliteSourceConfig) -> Self {
        let t = quote(&c.table);
        let (id, payload, status) = (quote(&c.id_column), quote(&c.payload_column), quote(&c.status_column));
        let (priority_select, order) = match &c.priority_column {
            Some(p) => (quote(p), format!("{}, rowid", quote(p))),
            None => ("NULL".to_string(), "rowid".to_string()),
        };
        let priority_insert = c.priority_column.as_ref().map(|p| format!(", {}", quote(p)));
        Statements {
            select_pending: format!(
                "SELECT {id}, {payload}, {priority_select} FROM {t} WHERE {status} = ?1 ORDER BY {order} LIMIT ?2"
            ),
            mark: format!("UPDATE {t} SET {status} = ?1 WHERE {id} = ?2"),
            reset_running: format!("UPDATE {t} SET {status} = ?1 WHERE {status} = ?2"),
            requeue: match priority_insert {
                Some(priority) => format!(
                    "INSERT INTO {t} ({id}, {payload}, {status}{priority}) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT({id}) DO UPDATE SET {payload} = excluded.{payload}, {status} = excluded.{status}"
                ),
                None => format!(
                    "INSERT INTO {t} ({id}, {payload}, {status}) VALUES (?1, ?2, ?3) \
                     ON CONFLICT({id}) DO UPDATE SET {payload} = excluded.{payload}, {status} = excluded.{status}"
                ),
            },
        }
    }
}

impl Source for SqliteSource {
    fn describe(&self) -> String {
        format!("sqlite {} table {}", self.config.path.display(), self.config.table)
    }

    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error("claiming rows: starting a transaction".into(), e))?;
        let items = {
            let mut select = tx
                .prepare_cached(&self.sql.select_pending)
                .map_err(|e| self.error("claiming rows: preparing".into(), e))?;
            let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
            let rows = select
                .query_map(rusqlite::params![self.config.pending, limit], |row| {
                    Ok(Item {
                        id: text_of(row.get_ref(0)?),
                        payload: bytes_of(row.get_ref(1)?),
                        priority: match row.get_ref(2)? {
                            ValueRef::Integer(p) => p.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                            _ => DEFAULT_PRIORITY,
                        },
                        defect: None,
                    })
                })
                .map_err(|e| self.error("claiming rows: reading".into(), e))?;
            rows.collect::<Result<Vec<Item>, _>>()
                .map_err(|e| self.error("claiming rows: reading".into(), e))?
        };
        {
            let mut mark = tx
                .prepare_cached(&self.sql.mark)
                .map_err(|e| self.error("claiming rows: preparing".into(), e))?;
            for item in &items {
                mark.execute(params_from_iter([&self.config.running, &item.id]))
                    .map_err(|e| self.error(format!("claiming item {}", item.id), e))?;
            }
        }
        tx.commit()
            .map_err(|e| self.error("claiming rows: committing".into(), e))?;
        Ok(match (items.is_empty(), self.config.stream) {
            (false, _) => Pull::Items(items),
            (true, true) => Pull::Idle,
            (true, false) => Pull::Exhausted,
        })
    }

    fn give_back(&self, items: Vec<Item>, _reason: ReturnReason) -> Result<(), SourceError> {
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        self.mark(&ids, &self.config.pending, "giving rows back")
    }

    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        if self.acked_by_sink {
            return Ok(());
        }
        let (failed, done): (Vec<&Outcome>, Vec<&Outcome>) = outcomes.iter().partition(|o| o.status == Status::Failed);
        self.mark(&ids_of(&done), &self.config.done, "marking rows done")?;
        self.mark(&ids_of(&failed), &self.config.failed, "marking rows failed")
    }

    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error("requeueing: starting a transaction".into(), e))?;
        {
            let mut insert = tx
                .prepare_cached(&self.sql.requeue)
                .map_err(|e| self.error("requeueing: preparing".into(), e))?;
            for item in &items {
                let result = if self.config.priority_column.is_some() {
                    insert.execute(rusqlite::params![
                        item.id,
                        item.payload,
                        self.config.pending,
                        item.priority
                    ])
                } else {
                    insert.execute(rusqlite::params![item.id, item.payload, self.config.pending])
                };
                result.map_err(|e| self.error(format!("requeueing item {}", item.id), e))?;
            }
        }
        tx.commit().map_err(|e| self.error("requeueing: committing".into(), e))
    }
}

fn ids_of<'a>(outcomes: &[&'a Outcome]) -> Vec<&'a str> {
    outcomes.iter().map(|o| o.item.id.as_str()).collect()
}

/// A column value as text: ids may be INTEGER or TEXT columns.
fn text_of(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Null => String::new(),
    }
}

/// A column value as bytes: payloads may be TEXT or BLOB columns.
fn bytes_of(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(r) => r.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
