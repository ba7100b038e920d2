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
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags, TransactionBehavior};

use super::{missing_source, Run, SourceAt, SourceKind};
use super::{Pull, ReturnReason, Source, SourceError};
use crate::fsutil::same_file;
use crate::item::{Item, Outcome, Status, DEFAULT_PRIORITY};
use crate::sink::{SinkSpec, TableAck};
use crate::spec::effective::{dur, map, path};
use crate::spec::{self, absolute, Check, Dur, MAX_BUSY_TIMEOUT};
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
        Self::open_to(config, true)
    }

    /// Opens the table to put items back into it (`dead-letter requeue`),
    /// leaving rows marked running alone: a daemon may be running them.
    pub fn open_for_requeue(config: SqliteSourceConfig) -> Result<Self, SourceError> {
        Self::open_to(config, false)
    }

    fn open_to(config: SqliteSourceConfig, reclaim: bool) -> Result<Self, SourceError> {
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
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| fail("opening", &e))?;
        set_busy_timeout(&mut conn, config.busy_timeout).map_err(|e| fail("setting the busy timeout", &e))?;
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
        let reset = match reclaim {
            true => conn
                .execute(&sql.reset_running, [&config.pending, &config.running])
                .map_err(|e| fail("resetting rows left running", &e))?,
            false => 0,
        };
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
            also_set: "",
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

/// `source: {kind: sqlite}` — a work table in a SQLite file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceKeys {
    #[serde(rename = "kind", default)]
    _kind: serde::de::IgnoredAny,
    /// The database file. Required.
    pub path: Option<PathBuf>,
    /// The work table. Required. Letters, digits and `_`.
    pub table: Option<String>,
    /// Default `id`.
    pub id_column: Option<String>,
    /// Default `payload` (TEXT or BLOB).
    pub payload_column: Option<String>,
    /// Default `priority`; `null`: every item gets the default priority.
    #[serde(default, deserialize_with = "explicit_null")]
    pub priority_column: Option<Option<String>>,
    /// Default `status`.
    pub status_column: Option<String>,
    /// Status values. Defaults `pending`, `running`, `done`, `failed`.
    pub pending: Option<String>,
    pub running: Option<String>,
    pub done: Option<String>,
    pub failed: Option<String>,
    /// Wait this long for a lock another process holds. Default 5s.
    pub busy_timeout: Option<Dur>,
}

/// Tells `key: null` (Some(None)) from a missing key (None).
fn explicit_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

impl SourceKind for SqliteSourceConfig {
    const NAME: &'static str = "sqlite";
    type Keys = SqliteSourceKeys;

    fn build(s: SqliteSourceKeys, at: &SourceAt, check: &Check) -> spec::Result<Self> {
        let Some(path) = s.path else {
            return check.err(
                "source.path",
                "is missing; expected the SQLite file holding the work table",
            );
        };
        let Some(table) = s.table else {
            return check.err("source.table", "is missing; expected the name of the work table");
        };
        check.path("source.path", &path)?;
        let d = SqliteSourceConfig::new(absolute(at.state_dir, &path), table);
        let config = SqliteSourceConfig {
            id_column: s.id_column.unwrap_or(d.id_column),
            payload_column: s.payload_column.unwrap_or(d.payload_column),
            priority_column: s.priority_column.unwrap_or(d.priority_column),
            status_column: s.status_column.unwrap_or(d.status_column),
            pending: s.pending.unwrap_or(d.pending),
            running: s.running.unwrap_or(d.running),
            done: s.done.unwrap_or(d.done),
            failed: s.failed.unwrap_or(d.failed),
            busy_timeout: check.at_most(
                "source.busy_timeout",
                s.busy_timeout.map_or(d.busy_timeout, |t| t.0),
                MAX_BUSY_TIMEOUT,
            )?,
            stream: false,
            path: d.path,
            table: d.table,
        };
        let names = [
            ("table", Some(&config.table)),
            ("id_column", Some(&config.id_column)),
            ("payload_column", Some(&config.payload_column)),
            ("priority_column", config.priority_column.as_ref()),
            ("status_column", Some(&config.status_column)),
        ];
        for (key, name) in names {
            if let Some(name) = name {
                if !crate::sql::is_identifier(name) {
                    return check.err(
                        &format!("source.{key}"),
                        format!("`{name}` is not a plain SQL name; expected letters, digits and `_` only"),
                    );
                }
            }
        }
        let values = [
            ("pending", &config.pending),
            ("running", &config.running),
            ("done", &config.done),
            ("failed", &config.failed),
        ];
        for (i, (key, value)) in values.iter().enumerate() {
            if value.is_empty() {
                return check.err(
                    &format!("source.{key}"),
                    "is empty; expected the status value that means it",
                );
            }
            if let Some((other, _)) = values[..i].iter().find(|(_, v)| v == value) {
                return check.err(
                    &format!("source.{key}"),
                    format!("is `{value}`, the same as `{other}`; expected four different status values"),
                );
            }
        }
        Ok(config)
    }

    fn effective(&self) -> serde_yaml::Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", path(&self.path)),
            ("table", self.table.as_str().into()),
            ("id_column", self.id_column.as_str().into()),
            ("payload_column", self.payload_column.as_str().into()),
            (
                "priority_column",
                self.priority_column
                    .as_deref()
                    .map_or(serde_yaml::Value::Null, serde_yaml::Value::from),
            ),
            ("status_column", self.status_column.as_str().into()),
            ("pending", self.pending.as_str().into()),
            ("running", self.running.as_str().into()),
            ("done", self.done.as_str().into()),
            ("failed", self.failed.as_str().into()),
            ("busy_timeout", dur(self.busy_timeout)),
        ])
    }

    fn on_disk(&self, check: &mut Check) -> spec::Result<()> {
        if self.path.is_dir() {
            return check.err(
                "source.path",
                format!(
                    "{} is a directory; expected the SQLite file holding the work table",
                    self.path.display()
                ),
            );
        }
        if !self.path.exists() {
            check.warnings.push(missing_source(
                &self.path,
                "expected the SQLite file holding the work table",
            ));
        }
        Ok(())
    }

    fn shares_sink_file(&self, sink: &SinkSpec) -> bool {
        sink.acks_in_transaction() && sink.path().is_some_and(|file| same_file(&self.path, file))
    }

    fn open(&self, stream: bool) -> Result<Arc<dyn Source>, String> {
        let mut table = self.clone();
        table.stream = stream;
        let source = SqliteSource::open_for_requeue(table).map_err(|e| format!("opening the sqlite source: {e}"))?;
        Ok(Arc::new(source))
    }

    fn open_for_run(&self, run: &Run) -> Result<(Arc<dyn Source>, Option<TableAck>), String> {
        let mut table = self.clone();
        table.stream = run.stream;
        let source = SqliteSource::open(table).map_err(|e| format!("opening the sqlite source: {e}"))?;
        if !run.in_sink_file {
            return Ok((Arc::new(source), None));
        }
        let table_ack = source.table_ack();
        Ok((Arc::new(source.acked_in_sink_transaction()), Some(table_ack)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
