use super::*;

fn table(dir: &tempfile::TempDir, rows: &[(&str, &str, i32)]) -> PathBuf {
    let path = dir.path().join("work.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE jobs(id TEXT PRIMARY KEY, payload BLOB, priority INTEGER, status TEXT NOT NULL)")
        .unwrap();
    for (id, payload, priority) in rows {
        conn.execute(
            "INSERT INTO jobs VALUES (?1, ?2, ?3, 'pending')",
            rusqlite::params![id, payload.as_bytes(), priority],
        )
        .unwrap();
    }
    path
}

fn statuses(path: &Path) -> Vec<(String, String)> {
    let conn = Connection::open(path).unwrap();
    let mut s = conn.prepare("SELECT id, status FROM jobs ORDER BY id").unwrap();
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[test]
fn pulls_claim_by_priority_and_acks_and_give_backs_mark_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = table(&dir, &[("a", "x", 5), ("b", "y", 1), ("c", "z", 3)]);
    let source = SqliteSource::open(SqliteSourceConfig::new(&path, "jobs")).unwrap();
    let Pull::Items(items) = source.pull(2).unwrap() else {
        panic!("items expected")
    };
    assert_eq!(items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["b", "c"]);
    assert_eq!(items[0].payload, b"y");
    source.give_back(vec![items[1].clone()], ReturnReason::Stopped).unwrap();
    let now = std::time::SystemTime::now();
    let done = Outcome {
        item: items[0].clone(),
        status: Status::Done,
        attempts: 1,
        output: None,
        error: None,
        started_at: now,
        finished_at: now,
        duration: Duration::ZERO,
    };
    source.ack(&[done]).unwrap();
    let expected =
        |a: &str, b: &str, c: &str| vec![("a".into(), a.into()), ("b".into(), b.into()), ("c".into(), c.into())];
    assert_eq!(statuses(&path), expected("pending", "done", "pending"));
    let Pull::Items(rest) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    assert_eq!(rest.len(), 2);
    assert_eq!(source.pull(10).unwrap(), Pull::Exhausted);
}

#[test]
fn rows_left_running_by_a_crash_are_pending_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = table(&dir, &[("a", "x", 1), ("b", "y", 1)]);
    let first = SqliteSource::open(SqliteSourceConfig::new(&path, "jobs")).unwrap();
    let Pull::Items(_) = first.pull(10).unwrap() else {
        panic!("items expected")
    };
    drop(first); // the "crash": claimed, never finished
    let second = SqliteSource::open(SqliteSourceConfig::new(&path, "jobs")).unwrap();
    let Pull::Items(items) = second.pull(10).unwrap() else {
        panic!("items expected")
    };
    assert_eq!(items.len(), 2);
}

#[test]
fn a_missing_table_or_column_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = table(&dir, &[]);
    let error = SqliteSource::open(SqliteSourceConfig::new(&path, "nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no table named \"nope\""), "{error}");
    let mut config = SqliteSourceConfig::new(&path, "jobs");
    config.payload_column = "body".into();
    let error = SqliteSource::open(config).err().unwrap().to_string();
    assert!(error.contains("no column \"body\""), "{error}");
    let error = SqliteSource::open(SqliteSourceConfig::new(dir.path().join("absent.db"), "jobs"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
}

#[test]
fn requeue_inserts_or_resets_rows_as_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = table(&dir, &[("a", "x", 1)]);
    let source = SqliteSource::open(SqliteSourceConfig::new(&path, "jobs")).unwrap();
    let Pull::Items(_) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    source
        .requeue(vec![Item::new("a", "x2"), Item::new("n", "new").with_priority(7)])
        .unwrap();
    assert_eq!(
        statuses(&path),
        vec![("a".into(), "pending".into()), ("n".into(), "pending".into())]
    );
}
