//! SQLite helpers shared by the sqlite source, the sqlite sink and the
//! config check: plain SQL names, a table's columns, and how a connection
//! is set up (busy timeout, WAL). A leaf: it imports rusqlite and std only.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// A name safe to splice into SQL between double quotes: ASCII letters,
/// digits and `_`, not empty. Every table and column name lote puts into a
/// statement passes this first (the config refuses others).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An identifier quoted for SQL: `"name"`, with inner quotes doubled.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The column names of `table`; empty if there is no such table.
pub fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut select = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = select.query_map([table], |row| row.get::<_, String>(0))?;
    names.collect()
}

/// Whether `columns` holds `name`. SQLite compares identifiers without
/// regard to ASCII case, so this does too.
pub fn has_column(columns: &[String], name: &str) -> bool {
    columns.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// The name to hand SQLite for a file. Our bundled SQLite reads names
/// starting with `file:` as URIs; `./` keeps a relative file of that name a
/// plain file.
pub fn sqlite_path(path: &Path) -> PathBuf {
    if path.to_str().is_some_and(|p| p.starts_with("file:")) {
        Path::new(".").join(path)
    } else {
        path.to_path_buf()
    }
}

thread_local! {
    /// When this thread's current wait for a lock began.
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Makes `conn` wait for a lock held by another connection (of this
/// process or another) up to `busy_timeout`, looking again every 0.2 ms at
/// first, then every 1 ms. SQLite's own handler sleeps 1, 2, 5 … 25 ms
/// between looks: in-process writers that share a file (the inbox's intake,
/// the session's claim, the sink) hold the lock for well under a
/// millisecond, so its sleeps, not the lock, made the latency (the soak
/// bench's p99: 270 ms → 16 ms). SQLite hands the callback no state, so the
/// limit is in the function itself: one per value of a 1-2-5 series of
/// milliseconds, the busy timeout rounded down to it (1s, 5s, 50ms exactly;
/// 4s waits 2s).
pub fn set_busy_timeout(conn: &mut Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    // Capped at the most SQLite's own setting takes (`i32::MAX` ms).
    let ms = busy_timeout.min(Duration::from_millis(i32::MAX as u64)).as_millis() as u64;
    if ms == 0 {
        return conn.busy_timeout(Duration::ZERO);
    }
    conn.busy_handler(Some(handler_for(ms)))
}

/// The busy callback that waits at most the largest step of the series at
/// or below `ms` (≥ 1).
fn handler_for(ms: u64) -> fn(i32) -> bool {
    macro_rules! series {
        ($($step:literal),*) => {
            $(if ms >= $step {
                return wait_up_to::<$step>;
            })*
        };
    }
    series!(
        2_000_000_000,
        1_000_000_000,
        500_000_000,
        200_000_000,
        100_000_000,
        50_000_000,
        20_000_000,
        10_000_000,
        5_000_000,
        2_000_000,
        1_000_000,
        500_000,
        200_000,
        100_000,
        50_000,
        20_000,
        10_000,
        5_000,
        2_000,
        1_000,
        500,
        200,
        100,
        50,
        20,
        10,
        5,
        2
    );
    wait_up_to::<1>
}

/// SQLite's busy callback for a limit of `MS` milliseconds: `tries` is how
/// often it was called for this lock already. True = look again.
fn wait_up_to<const MS: u64>(tries: i32) -> bool {
    let now = Instant::now();
    let since = BUSY_SINCE.with(|since| {
        if tries == 0 || since.get().is_none() {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if now.duration_since(since) >= Duration::from_millis(MS) {
        return false;
    }
    let pause = if tries < 50 {
        Duration::from_micros(200)
    } else {
        Duration::from_millis(1)
    };
    std::thread::sleep(pause);
    true
}

/// Sets `journal_mode = WAL` and returns the mode SQLite answers with.
/// Switching needs the database's exclusive lock for a moment, and SQLite
/// does not call the busy handler for it: a second lote opening the same new
/// file at the same moment gets SQLITE_BUSY at once. So a busy answer is
/// retried, every 10–50 ms, until `busy_timeout` has passed, as any other
/// statement would wait.
pub fn switch_to_wal(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<String> {
    // None: so far ahead it never comes (a library caller's Duration::MAX).
    let deadline = Instant::now().checked_add(busy_timeout);
    let mut pause = Duration::from_millis(10);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get::<_, String>(0)) {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && deadline.is_none_or(|d| Instant::now() + pause < d) =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            answer => return answer,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_busy_wait_keeps_to_its_timeout_rounded_down_to_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        for (timeout, at_least, below) in [(100, 100, 600), (450, 200, 400)] {
            let mut waiter = Connection::open(&path).unwrap();
            set_busy_timeout(&mut waiter, Duration::from_millis(timeout)).unwrap();
            let started = Instant::now();
            let err = waiter.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
            let took = started.elapsed();
            assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy), "{err}");
            assert!(
                took >= Duration::from_millis(at_least),
                "{timeout} ms: gave up after {took:?}"
            );
            assert!(took < Duration::from_millis(below), "{timeout} ms: waited {took:?}");
        }
        holder.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn only_plain_names_are_identifiers() {
        for good in ["work", "Work_2", "_x", "9lives"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "a b", "a\"b", "a;b", "a-b", "é", "x--", "t.c"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn columns_are_listed_and_compared_as_sqlite_does() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE work (id TEXT, Payload BLOB)").unwrap();
        let found = columns(&conn, "work").unwrap();
        assert_eq!(found, ["id", "Payload"]);
        assert!(has_column(&found, "payload") && has_column(&found, "ID"));
        assert!(!has_column(&found, "status"));
        assert!(columns(&conn, "missing").unwrap().is_empty());
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
