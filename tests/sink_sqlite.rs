//! The SQLite sink against real database files in temporary directories:
//! round trips, upserts, done lookups, dead letters, damaged and newer files,
//! and the table acknowledgement that commits with the outcomes or not at all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lote::sink::{Record, Role, Sink, SinkErrorKind, SqliteConfig, SqliteSink, Synchronous, TableAck};
use lote::{Item, Outcome, Status};
use proptest::prelude::*;
use rusqlite::Connection;
use tempfile::TempDir;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

/// An outcome of `id` with `status`, finished `ms` after a fixed instant.
fn outcome(id: &str, status: Status, ms: u64) -> Outcome {
    let (output, error) = match status {
        Status::Done => (Some(format!("out {id}")), None),
        Status::Failed => (None, Some(format!("err {id}"))),
        _ => (None, None),
    };
    Outcome {
        item: Item::new(id, format!("payload {id}")),
        status,
        attempts: if status == Status::Skipped { 0 } else { 1 },
        output,
        error,
        started_at: at(ms),
        finished_at: at(ms + 5),
        duration: Duration::from_millis(5),
    }
}

fn open(dir: &TempDir, role: Role) -> SqliteSink {
    SqliteSink::open(SqliteConfig::new(dir.path().join("lote.db"), role)).unwrap()
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// A work table like the SQLite source's, with rows `ids` pending.
fn work_table(db: &std::path::Path, ids: &[&str]) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("CREATE TABLE work (id TEXT PRIMARY KEY, payload BLOB, state TEXT NOT NULL)")
        .unwrap();
    for id in ids {
        conn.execute("INSERT INTO work VALUES (?1, x'00', 'running')", [id])
            .unwrap();
    }
}

fn work_states(db: &std::path::Path) -> Vec<(String, String)> {
    let conn = Connection::open(db).unwrap();
    let mut select = conn.prepare("SELECT id, state FROM work ORDER BY id").unwrap();
    let rows = select.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn ack() -> TableAck {
    TableAck {
        table: "work".into(),
        id_column: "id".into(),
        status_column: "state".into(),
        done_value: "finished".into(),
        failed_value: "broken".into(),
        also_set: "",
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn written_outcomes_read_back_as_records_oldest_first() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::Outcomes);
    let batch = [
        outcome("b", Status::Done, 20),
        outcome("a", Status::Failed, 10),
        outcome("c", Status::Done, 10),
    ];
    sink.write(&batch).unwrap();

    let records = sink.records().unwrap();
    assert_eq!(ids(&records), ["a", "c", "b"]);
    assert_eq!(records[2], Record::new(&batch[0], Role::Outcomes));
    assert_eq!(records[0], Record::new(&batch[1], Role::Outcomes));
    assert_eq!(records[0].error.as_deref(), Some("err a"));
    assert!(sink.describe().contains("lote.db"));
}

#[test]
fn the_same_id_twice_keeps_one_row_and_the_latest_wins() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::Outcomes);
    sink.write(&[outcome("a", Status::Failed, 0)]).unwrap();
    let mut again = outcome("a", Status::Done, 100);
    again.attempts = 3;
    sink.write(std::slice::from_ref(&again)).unwrap();

    assert_eq!(sink.records().unwrap(), [Record::new(&again, Role::Outcomes)]);
}

#[test]
fn skipped_outcomes_are_not_written_and_keep_the_done_record() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::Outcomes);
    let done = outcome("a", Status::Done, 0);
    sink.write(std::slice::from_ref(&done)).unwrap();
    sink.write(&[outcome("a", Status::Skipped, 50), outcome("b", Status::Skipped, 50)])
        .unwrap();

    assert_eq!(sink.records().unwrap(), [Record::new(&done, Role::Outcomes)]);
}

#[test]
fn done_lookup_answers_for_more_than_500_ids_at_once() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::Outcomes);
    // 1234 ids: even ones done, odd ones failed; plus unknown ids asked about.
    let batch: Vec<Outcome> = (0..1234)
        .map(|n| {
            outcome(
                &format!("item-{n}"),
                if n % 2 == 0 { Status::Done } else { Status::Failed },
                n,
            )
        })
        .collect();
    sink.write(&batch).unwrap();

    let lookup = sink.lookup().unwrap();
    let asked: Vec<String> = (0..1500).map(|n| format!("item-{n}")).collect();
    let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
    let done = lookup.done_ids(&asked).unwrap();
    assert_eq!(done.len(), 617);
    assert!((0..1234).all(|n| done.contains(&format!("item-{n}")) == (n % 2 == 0)));
    assert!(lookup.done_ids(&[]).unwrap().is_empty());
}

#[test]
fn a_lookup_sees_batches_written_after_it_was_opened() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::Outcomes);
    let lookup = sink.lookup().unwrap();
    assert!(lookup.done_ids(&["a"]).unwrap().is_empty());
    sink.write(&[outcome("a", Status::Done, 0)]).unwrap();
    assert!(lookup.done_ids(&["a"]).unwrap().contains("a"));

    // From another thread, while the writer keeps writing.
    let asker = std::thread::spawn(move || lookup.done_ids(&["a", "b"]).unwrap().len());
    sink.write(&[outcome("b", Status::Failed, 1)]).unwrap();
    assert_eq!(asker.join().unwrap(), 1);
}

#[test]
fn dead_letters_round_trip_binary_and_text_payloads() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::DeadLetter);
    let mut binary = outcome("bin", Status::Failed, 0);
    binary.item = Item::new("bin", vec![0xff, 0x00, 0xfe, 0x80]).with_priority(7);
    let text = outcome("text", Status::Failed, 10);
    sink.write(&[binary.clone(), text.clone()]).unwrap();

    let records = sink.records().unwrap();
    assert_eq!(
        records,
        [
            Record::new(&binary, Role::DeadLetter),
            Record::new(&text, Role::DeadLetter)
        ]
    );
    assert_eq!(records[0].payload, None);
    assert!(records[0].payload_base64.is_some());
    assert_eq!(records[0].to_item().unwrap(), binary.item);
    assert_eq!(records[1].payload.as_deref(), Some("payload text"));
    assert!(sink.describe().contains("dead letters"));
}

#[test]
fn dead_letter_lookup_always_answers_empty() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::DeadLetter);
    sink.write(&[outcome("a", Status::Done, 0)]).unwrap();
    assert!(sink.lookup().unwrap().done_ids(&["a"]).unwrap().is_empty());
}

#[test]
fn both_roles_share_one_file() {
    let dir = TempDir::new().unwrap();
    let mut outcomes = open(&dir, Role::Outcomes);
    let mut dead = open(&dir, Role::DeadLetter);
    outcomes.write(&[outcome("a", Status::Done, 0)]).unwrap();
    dead.write(&[outcome("b", Status::Failed, 0)]).unwrap();
    drop((outcomes, dead));

    // Reopened in the other order, each finds its own table.
    let mut dead = open(&dir, Role::DeadLetter);
    let mut outcomes = open(&dir, Role::Outcomes);
    assert_eq!(ids(&outcomes.records().unwrap()), ["a"]);
    assert_eq!(ids(&dead.records().unwrap()), ["b"]);
}

#[test]
fn remove_deletes_the_given_records_and_counts_them() {
    let dir = TempDir::new().unwrap();
    let mut sink = open(&dir, Role::DeadLetter);
    sink.write(&[
        outcome("a", Status::Failed, 0),
        outcome("b", Status::Failed, 1),
        outcome("c", Status::Failed, 2),
    ])
    .unwrap();
    let removed = sink.remove(&["a".into(), "c".into(), "missing".into()]).unwrap();
    assert_eq!(removed, 2);
    assert_eq!(ids(&sink.records().unwrap()), ["b"]);
    assert_eq!(sink.remove(&[]).unwrap(), 0);
}

#[test]
fn a_file_from_a_newer_lote_is_refused_with_what_to_do() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 2)
        .unwrap();

    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert_eq!(err.kind, SinkErrorKind::Corrupt);
    let text = err.to_string();
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(text.contains("newer") && text.contains("schema version 2"), "{text}");
    // Left as it was.
    let version: i64 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

#[test]
fn a_file_of_garbage_is_reported_as_damaged() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&db, garbage).unwrap();

    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert_eq!(err.kind, SinkErrorKind::Corrupt);
    let text = err.to_string();
    assert!(
        text.contains(&db.display().to_string()) && text.contains("damaged"),
        "{text}"
    );
    assert!(text.contains("move it aside"), "{text}");
}

#[test]
fn a_database_truncated_mid_page_is_reported_as_damaged() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    {
        let mut sink = open(&dir, Role::Outcomes);
        let batch: Vec<Outcome> = (0..3000)
            .map(|n| outcome(&format!("item-{n:05}"), Status::Done, n))
            .collect();
        sink.write(&batch).unwrap();
    } // the last connection checkpoints the WAL into the file
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 64 * 1024, "{len}");
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 2 + 1234).unwrap();
    drop(file);

    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert_eq!(err.kind, SinkErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&db.display().to_string()) && text.contains("damaged"),
        "{text}"
    );
}

#[test]
fn a_database_with_a_scribbled_page_is_reported_as_damaged() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    {
        let mut sink = open(&dir, Role::Outcomes);
        let batch: Vec<Outcome> = (0..3000)
            .map(|n| outcome(&format!("item-{n:05}"), Status::Done, n))
            .collect();
        sink.write(&batch).unwrap();
    }
    // The tail of a page in the middle of the file: cell contents.
    let mut bytes = std::fs::read(&db).unwrap();
    let page = bytes.len() / 2 / 4096 * 4096;
    bytes[page + 4000..page + 4090].fill(0x5a);
    std::fs::write(&db, &bytes).unwrap();

    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert_eq!(err.kind, SinkErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&db.display().to_string()) && text.contains("quick_check: Tree"),
        "{text}"
    );
}

#[test]
fn a_foreign_outcomes_table_is_refused() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE outcomes (id TEXT, value REAL)")
        .unwrap();
    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert_eq!(err.kind, SinkErrorKind::Corrupt);
    assert!(
        err.to_string()
            .contains("does not fit lote's schema (table outcomes has no column named status)"),
        "{err}"
    );

    // All the columns, but no unique id to upsert by.
    conn.execute_batch(
        "DROP TABLE outcomes; CREATE TABLE outcomes (id TEXT, status TEXT, attempts INTEGER, output TEXT, \
         error TEXT, started_at TEXT, finished_at TEXT, duration_ms INTEGER)",
    )
    .unwrap();
    let err = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).err().unwrap();
    assert!(err.to_string().contains("ON CONFLICT"), "{err}");
}

#[test]
fn table_ack_marks_work_rows_done_and_failed_with_the_outcomes() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    work_table(&db, &["a", "b", "c", "d"]);
    let mut sink = open(&dir, Role::Outcomes).with_table_ack(ack()).unwrap();
    // "d" has no outcome in this batch (still in flight, or given back): its
    // row is left as it is.
    sink.write(&[
        outcome("a", Status::Done, 0),
        outcome("b", Status::Failed, 0),
        outcome("c", Status::Skipped, 0),
    ])
    .unwrap();

    assert_eq!(
        work_states(&db),
        pairs(&[("a", "finished"), ("b", "broken"), ("c", "finished"), ("d", "running")])
    );
    assert_eq!(ids(&sink.records().unwrap()), ["a", "b"]);
}

#[test]
fn table_ack_matches_integer_id_columns() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE jobs (n INTEGER PRIMARY KEY, st TEXT); INSERT INTO jobs VALUES (41, 'p'), (42, 'p');",
    )
    .unwrap();
    let ack = TableAck {
        table: "jobs".into(),
        id_column: "N".into(),
        status_column: "st".into(),
        ..ack()
    };
    let mut sink = open(&dir, Role::Outcomes).with_table_ack(ack).unwrap();
    sink.write(&[outcome("42", Status::Done, 0)]).unwrap();

    let state: String = conn
        .query_row("SELECT st FROM jobs WHERE n = 42", [], |r| r.get(0))
        .unwrap();
    assert_eq!(state, "finished");
}

/// The poison item makes the outcomes upsert fail after the batch's earlier
/// outcomes and acknowledgements have run inside the transaction.
#[test]
fn a_failed_outcome_write_commits_neither_outcomes_nor_acks_of_the_batch() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    work_table(&db, &["a", "b", "poison"]);
    let mut sink = open(&dir, Role::Outcomes).with_table_ack(ack()).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON outcomes WHEN NEW.id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison'); END",
        )
        .unwrap();

    let batch = [
        outcome("a", Status::Done, 0),
        outcome("b", Status::Failed, 1),
        outcome("poison", Status::Done, 2),
    ];
    let err = sink.write(&batch).unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Io);
    assert!(
        err.to_string().contains("writing 3 outcomes") && err.to_string().contains("poison"),
        "{err}"
    );

    assert!(sink.records().unwrap().is_empty());
    assert!(sink.lookup().unwrap().done_ids(&["a", "b"]).unwrap().is_empty());
    assert_eq!(
        work_states(&db),
        pairs(&[("a", "running"), ("b", "running"), ("poison", "running")])
    );

    // Without the poison the same batch goes through whole.
    sink.write(&batch[..2]).unwrap();
    assert_eq!(ids(&sink.records().unwrap()), ["a", "b"]);
    assert_eq!(
        work_states(&db),
        pairs(&[("a", "finished"), ("b", "broken"), ("poison", "running")])
    );
}

/// The other way round: the acknowledgement fails, after the outcomes of the
/// batch were upserted.
#[test]
fn a_failed_ack_commits_no_outcome_of_the_batch() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    work_table(&db, &["a", "z"]);
    let mut sink = open(&dir, Role::Outcomes).with_table_ack(ack()).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER stuck BEFORE UPDATE ON work WHEN NEW.id = 'z' \
             BEGIN SELECT RAISE(ABORT, 'stuck'); END",
        )
        .unwrap();

    assert!(sink
        .write(&[outcome("a", Status::Done, 0), outcome("z", Status::Done, 1)])
        .is_err());
    assert!(sink.records().unwrap().is_empty());
    assert_eq!(work_states(&db), pairs(&[("a", "running"), ("z", "running")]));
}

#[test]
fn table_ack_refuses_unsafe_names_and_missing_tables_or_columns() {
    let dir = TempDir::new().unwrap();
    work_table(&dir.path().join("lote.db"), &[]);
    let cases = [
        (
            TableAck {
                table: "work; DROP TABLE work".into(),
                ..ack()
            },
            "not a plain name",
        ),
        (
            TableAck {
                status_column: "state\"".into(),
                ..ack()
            },
            "not a plain name",
        ),
        (
            TableAck {
                table: "".into(),
                ..ack()
            },
            "not a plain name",
        ),
        (
            TableAck {
                table: "nowhere".into(),
                ..ack()
            },
            "does not exist",
        ),
        (
            TableAck {
                id_column: "key".into(),
                ..ack()
            },
            "no column key",
        ),
        (
            TableAck {
                status_column: "status".into(),
                ..ack()
            },
            "no column status",
        ),
    ];
    for (bad, says) in cases {
        let err = open(&dir, Role::Outcomes).with_table_ack(bad).err().unwrap();
        assert!(err.to_string().contains(says), "{err}");
    }
    assert_eq!(work_states(&dir.path().join("lote.db")), []);
}

#[test]
fn a_busy_database_fails_the_write_retryably_and_it_succeeds_later() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let mut config = SqliteConfig::new(&db, Role::Outcomes);
    config.busy_timeout = Duration::from_millis(50);
    let mut sink = SqliteSink::open(config).unwrap();

    let mut other = Connection::open(&db).unwrap();
    let holder = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let err = sink.write(&[outcome("a", Status::Done, 0)]).unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Io, "{err}");
    holder.rollback().unwrap();

    sink.write(&[outcome("a", Status::Done, 0)]).unwrap();
    assert_eq!(ids(&sink.records().unwrap()), ["a"]);
}

/// `synchronous` is per connection, so the level itself is checked on the
/// sink's own connection by a unit test in `src/sink/sqlite.rs`.
#[test]
fn the_database_is_in_wal_mode() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let mut config = SqliteConfig::new(&db, Role::Outcomes);
    config.synchronous = Synchronous::Full;
    let sink = SqliteSink::open(config).unwrap();
    assert_eq!(sink.path(), db);
    let mode: String = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn integrity_check_is_ok_after_writes_upserts_and_removes() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("lote.db");
    let mut sink = open(&dir, Role::DeadLetter);
    for round in 0..5u64 {
        let batch: Vec<Outcome> = (0..400)
            .map(|n| outcome(&format!("i{}", (n * 7 + round) % 600), Status::Failed, n + round))
            .collect();
        sink.write(&batch).unwrap();
        let gone: Vec<String> = (0..50).map(|n| format!("i{}", n * 3 + round)).collect();
        sink.remove(&gone).unwrap();
    }
    let conn = Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn missing_parent_directories_are_created() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("state/deep/lote.db");
    let mut sink = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes)).unwrap();
    sink.write(&[outcome("a", Status::Done, 0)]).unwrap();
    assert!(db.is_file());
}

#[test]
fn a_parent_that_cannot_be_created_is_named() {
    let dir = TempDir::new().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, "a file, not a directory").unwrap();
    let err = SqliteSink::open(SqliteConfig::new(blocker.join("lote.db"), Role::Outcomes))
        .err()
        .unwrap();
    assert_eq!(err.kind, SinkErrorKind::Io);
    assert!(err.message.contains(&blocker.display().to_string()), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of batches leaves exactly the last written record per id,
    /// and the lookup reports exactly the ids whose last record is done.
    #[test]
    fn records_are_the_last_write_per_id(batches in prop::collection::vec(
        prop::collection::vec((0u8..12, 0u8..3), 0..20), 1..6)) {
        let dir = TempDir::new().unwrap();
        let mut sink = open(&dir, Role::Outcomes);
        let mut model = std::collections::BTreeMap::new();
        for (round, batch) in batches.iter().enumerate() {
            let batch: Vec<Outcome> = batch.iter().enumerate().map(|(i, &(id, status))| {
                let status = [Status::Done, Status::Failed, Status::Skipped][status as usize];
                outcome(&format!("id{id}"), status, (round * 100 + i) as u64)
            }).collect();
            sink.write(&batch).unwrap();
            for o in batch.iter().filter(|o| o.status != Status::Skipped) {
                model.insert(o.id().to_string(), Record::new(o, Role::Outcomes));
            }
        }
        let mut records = sink.records().unwrap();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        prop_assert_eq!(records, model.values().cloned().collect::<Vec<_>>());
        let asked: Vec<String> = (0..12).map(|n| format!("id{n}")).collect();
        let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
        let done = sink.lookup().unwrap().done_ids(&asked).unwrap();
        let expected: std::collections::HashSet<String> =
            model.values().filter(|r| r.is_done()).map(|r| r.id.clone()).collect();
        prop_assert_eq!(done, expected);
    }
}

#[test]
fn closing_a_second_sink_never_waits_for_another_connections_readers() {
    // A running lote's sink, a reader in a transaction (a status query, a
    // backup), and a second sink on the same file that opens and closes (as
    // `lote dead-letter list` does). Its closing checkpoint must not wait
    // busy_timeout for the reader, holding the write lock all that while.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("outcomes.db");
    let config = || SqliteConfig {
        busy_timeout: Duration::from_secs(5),
        ..SqliteConfig::new(&path, Role::Outcomes)
    };
    let mut running = SqliteSink::open(config()).unwrap();
    running.write(&[outcome("a", Status::Done, 1)]).unwrap();
    let reader = Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);

    let second = SqliteSink::open(config()).unwrap();
    let started = std::time::Instant::now();
    drop(second);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "closing took {took:?}");
    running.write(&[outcome("b", Status::Done, 2)]).unwrap();
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    drop(running);
    assert!(
        !dir.path().join("outcomes.db-wal").exists(),
        "the last close left the WAL"
    );
    assert_eq!(
        ids(&SqliteSink::open(config()).unwrap().records().unwrap()),
        vec!["a", "b"]
    );
}

#[test]
fn a_huge_busy_timeout_is_taken_without_a_panic() {
    let dir = TempDir::new().unwrap();
    let config = SqliteConfig {
        busy_timeout: Duration::MAX,
        ..SqliteConfig::new(dir.path().join("outcomes.db"), Role::Outcomes)
    };
    let mut sink = SqliteSink::open(config).unwrap();
    sink.write(&[outcome("a", Status::Done, 1)]).unwrap();
}
