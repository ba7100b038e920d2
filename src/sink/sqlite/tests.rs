use super::*;
use crate::sink::SinkErrorKind;

#[test]
fn one_lookup_statement_has_room_for_a_full_chunk() {
    let sql = lookup_sql();
    assert_eq!(sql.matches('?').count(), LOOKUP_CHUNK + 1);
    assert!(sql.ends_with(&format!("?{})", LOOKUP_CHUNK + 1)));
}

#[test]
fn a_relative_file_named_like_a_uri_stays_a_file() {
    assert_eq!(sqlite_path(Path::new("file:x.db")), Path::new("./file:x.db"));
    assert_eq!(sqlite_path(Path::new("state/x.db")), Path::new("state/x.db"));
}

#[test]
fn returned_outcomes_are_neither_written_nor_acknowledged() {
    let ack = Ack {
        config: TableAck {
            table: "work".into(),
            id_column: "id".into(),
            status_column: "status".into(),
            done_value: "ok".into(),
            failed_value: "bad".into(),
            also_set: "",
        },
        sql: String::new(),
    };
    assert!(!is_written(Status::Skipped));
    assert_eq!(ack.value(Status::Skipped), "ok");
    assert_eq!(ack.value(Status::Failed), "bad");
}

#[test]
fn synchronous_is_applied_to_the_sink_connection() {
    let dir = tempfile::TempDir::new().unwrap();
    for (synchronous, level) in [(Synchronous::Normal, 1), (Synchronous::Full, 2)] {
        let mut config = SqliteConfig::new(dir.path().join(format!("{}.db", synchronous.as_str())), Role::Outcomes);
        config.synchronous = synchronous;
        let sink = SqliteSink::open(config).unwrap();
        let read: i64 = sink
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(read, level, "{synchronous:?}");
    }
}

#[test]
fn damage_is_corrupt_and_everything_else_io() {
    use rusqlite::ffi;
    let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    let path = Path::new("x.db");
    for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
        let err = sql_error(path, "writing 2 outcomes", failure(code));
        assert_eq!(err.kind, SinkErrorKind::Corrupt);
        assert!(
            err.message.starts_with("writing 2 outcomes: the database is damaged"),
            "{err}"
        );
    }
    for code in [
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_FULL,
        ffi::SQLITE_CONSTRAINT,
    ] {
        assert_eq!(sql_error(path, "writing", failure(code)).kind, SinkErrorKind::Io);
    }
}

#[test]
fn sqlite_sink_and_lookup_cross_threads() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<SqliteSink>();
    sync::<SqliteLookup>();
}

#[test]
fn a_dropped_sink_closes_its_lookups_and_leaves_no_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outcomes.db");
    let sink = SqliteSink::open(SqliteConfig::new(&path, Role::Outcomes)).unwrap();
    let lookup = sink.lookup().unwrap();
    assert!(lookup.done_ids(&["a"]).unwrap().is_empty());
    drop(sink);
    assert!(!dir.path().join("outcomes.db-wal").exists());
    let error = lookup.done_ids(&["a"]).unwrap_err();
    assert!(error.message.contains("the sink is closed"), "{error}");
}
