//! The write-behind thread over real sinks in temp dirs: batching, the flush
//! interval, fault handling, drain, acknowledgement after durability, dead
//! letters, QoS.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use lote::commit::Committer;
use lote::sink::{DoneLookup, JsonlConfig, JsonlSink, Record, Role, Sink, SinkError, SqliteConfig, SqliteSink};
use lote::source::{Pull, Source, SqliteSource, SqliteSourceConfig, VecSource};
use lote::writer::{GiveBack, Writer, WriterConfig};
use lote::{CallContext, Failure, Item, Outcome, Qos, Session, SessionConfig, Status, StopHandle, StopReason};

fn outcome(id: usize, status: Status) -> Outcome {
    let now = SystemTime::now();
    Outcome {
        item: Item::new(id.to_string(), format!("payload {id}")),
        status,
        attempts: 1,
        output: (status == Status::Done).then(|| format!("out {id}")),
        error: (status == Status::Failed).then(|| "broken".to_string()),
        started_at: now,
        finished_at: now,
        duration: Duration::from_millis(1),
    }
}

fn sqlite(dir: &tempfile::TempDir) -> SqliteSink {
    SqliteSink::open(SqliteConfig::new(dir.path().join("outcomes.db"), Role::Outcomes)).unwrap()
}

fn reopen_records(dir: &tempfile::TempDir) -> Vec<Record> {
    sqlite(dir).records().unwrap()
}

fn config() -> WriterConfig {
    WriterConfig {
        batch: 100,
        flush_every: Duration::from_millis(50),
        max_retries: 3,
        retry_backoff: Duration::from_millis(5),
        drain_timeout: Duration::from_secs(10),
        channel_chunks: 4,
        done_lookups: true,
        give_back: GiveBack::AtFinish,
    }
}

/// A real sink that fails its first `failures` writes (u32::MAX: always).
struct Flaky<S> {
    inner: S,
    failures: Arc<AtomicU32>,
}

impl<S: Sink> Sink for Flaky<S> {
    fn describe(&self) -> String {
        format!("flaky {}", self.inner.describe())
    }
    fn write(&mut self, outcomes: &[Outcome]) -> Result<(), SinkError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            if left != u32::MAX {
                self.failures.store(left - 1, Ordering::SeqCst);
            }
            return Err(SinkError::io(
                std::path::Path::new("flaky"),
                "disk I/O error (injected)",
            ));
        }
        self.inner.write(outcomes)
    }
    fn lookup(&self) -> Result<Box<dyn DoneLookup>, SinkError> {
        self.inner.lookup()
    }
    fn records(&mut self) -> Result<Vec<Record>, SinkError> {
        self.inner.records()
    }
    fn remove(&mut self, ids: &[String]) -> Result<usize, SinkError> {
        self.inner.remove(ids)
    }
}

#[test]
fn outcomes_are_acknowledged_only_once_durable_and_batches_close_at_size() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let writer = Writer::start(
        WriterConfig {
            flush_every: Duration::from_secs(3600),
            ..config()
        },
        Box::new(sqlite(&dir)),
        None,
        source.clone(),
    )
    .unwrap();
    writer
        .commit((0..150).map(|i| outcome(i, Status::Done)).collect())
        .unwrap();
    // One full batch of 100 closes at once; 50 wait for the interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.ack_count() < 100 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(source.ack_count(), 100);
    assert_eq!(
        reopen_records(&dir).len(),
        100,
        "acked ⇒ durable: exactly the flushed batch"
    );
    writer.finish().unwrap();
    assert_eq!(source.ack_count(), 150);
    assert_eq!(reopen_records(&dir).len(), 150);
    let m = writer.metrics();
    assert_eq!(
        (m.enqueued.get(), m.persisted.get(), m.batches.get(), m.depth.get()),
        (150, 150, 2, 0)
    );
}

#[test]
fn the_flush_interval_closes_a_small_batch() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let writer = Writer::start(config(), Box::new(sqlite(&dir)), None, source.clone()).unwrap();
    writer.commit(vec![outcome(1, Status::Done)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.ack_count() < 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reopen_records(&dir).len(), 1);
}

#[test]
fn a_sink_that_fails_k_times_then_recovers_loses_nothing_and_counts_retries() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let sink = Flaky {
        inner: sqlite(&dir),
        failures: Arc::new(AtomicU32::new(2)),
    };
    let writer = Writer::start(config(), Box::new(sink), None, source.clone()).unwrap();
    writer
        .commit((0..30).map(|i| outcome(i, Status::Done)).collect())
        .unwrap();
    writer.finish().unwrap();
    assert_eq!(reopen_records(&dir).len(), 30);
    assert_eq!(source.ack_count(), 30);
    assert_eq!(writer.metrics().retries.get(), 2);
    assert_eq!(writer.metrics().failed.get(), 0);
}

#[test]
fn a_sink_that_never_recovers_leaves_items_unacknowledged_and_lote_stoppable() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let sink = Flaky {
        inner: sqlite(&dir),
        failures: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let writer = Writer::start(config(), Box::new(sink), None, source.clone()).unwrap();
    writer
        .commit((0..10).map(|i| outcome(i, Status::Done)).collect())
        .unwrap();
    let error = writer.finish().unwrap_err().to_string();
    assert!(error.contains("not persisted"), "{error}");
    // Still running: it takes more work, and still fails it honestly.
    writer.commit(vec![outcome(99, Status::Done)]).unwrap();
    assert!(writer.finish().is_err());
    assert_eq!(source.ack_count(), 0, "nothing acknowledged");
    let m = writer.metrics();
    assert_eq!((m.failed.get(), m.failed_flushes.get(), m.retries.get()), (11, 2, 6));
    // Each finish gave the session's unsaved items back, to run again.
    assert_eq!((m.unsaved.get(), m.given_back.get()), (11, 11));
    assert_eq!(source.pending().len(), 11);
    assert_eq!(source.returns("99"), 1);
    let started = Instant::now();
    let report = writer.close();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.unwritten, 0, "nothing was pending any more");
}

#[test]
fn a_close_wakes_a_writer_in_back_off_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let sink = Flaky {
        inner: sqlite(&dir),
        failures: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let writer = Writer::start(
        WriterConfig {
            batch: 1,
            // A back-off far longer than the test: only a wake-up ends it.
            retry_backoff: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(5),
            ..config()
        },
        Box::new(sink),
        None,
        source.clone(),
    )
    .unwrap();
    writer.commit(vec![outcome(1, Status::Done)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.metrics().retries.get() < 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        writer.metrics().retries.get(),
        1,
        "the flush failed once and is backing off"
    );
    thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let report = writer.close();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "close took {took:?}: the back-off slept through it"
    );
    assert!(!report.timed_out, "the thread answered the close");
    // The flush's last try fell within the drain; it failed, so its item
    // went back to the source, to run again.
    assert_eq!(writer.metrics().unsaved.get(), 1);
    assert_eq!(source.returns("1"), 1);
}

#[test]
fn dead_letters_are_written_once_per_item() {
    // The outcomes database is locked by another connection, so flushes fail
    // (busy) after the dead letters are durable, and are retried.
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = SqliteConfig::new(dir.path().join("outcomes.db"), Role::Outcomes);
    outcomes.busy_timeout = Duration::from_millis(20);
    let sink = SqliteSink::open(outcomes).unwrap();
    let dead_path = dir.path().join("dead.jsonl");
    let dead = JsonlSink::open(JsonlConfig::new(&dead_path, Role::DeadLetter)).unwrap();
    let lock = rusqlite::Connection::open(dir.path().join("outcomes.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let source = Arc::new(VecSource::numbered(0));
    let config = WriterConfig {
        max_retries: 30,
        ..config()
    };
    let writer = Writer::start(config, Box::new(sink), Some(Box::new(dead)), source.clone()).unwrap();
    let status = |i: usize| {
        if i.is_multiple_of(2) {
            Status::Failed
        } else {
            Status::Done
        }
    };
    writer.commit((0..6).map(|i| outcome(i, status(i))).collect()).unwrap();
    let started = Instant::now();
    while writer.metrics().retries.get() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "the flush never retried");
        thread::sleep(Duration::from_millis(5));
    }
    lock.execute_batch("COMMIT").unwrap();
    writer.finish().unwrap();
    assert_eq!(source.ack_count(), 6);
    assert_eq!(reopen_records(&dir).len(), 6);

    let text = std::fs::read_to_string(&dead_path).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|line| serde_json::from_str::<Record>(line).unwrap().id)
        .collect();
    assert_eq!(
        ids,
        vec!["0", "2", "4"],
        "one dead letter per failed item, not one per try"
    );
}

#[test]
fn a_continuous_writer_gives_unsaved_items_back_without_waiting_for_the_end() {
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            thread::sleep(Duration::from_millis(5));
        }
    };
    let config = WriterConfig {
        max_retries: 0,
        give_back: GiveBack::Soon,
        ..config()
    };

    // A sink that stays broken: back after a short pause, no finish needed.
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let broken = Flaky {
        inner: sqlite(&dir),
        failures: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let writer = Writer::start(config.clone(), Box::new(broken), None, source.clone()).unwrap();
    writer.commit(vec![outcome(1, Status::Done)]).unwrap();
    wait_for("the unsaved item never went back", &|| source.returns("1") == 1);
    assert_eq!(writer.metrics().unsaved.get(), 1);
    writer.close();

    // A sink that works again: back at once, not after the (30 s) pause.
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let once = Flaky {
        inner: sqlite(&dir),
        failures: Arc::new(AtomicU32::new(1)),
    };
    let slow_pause = WriterConfig {
        retry_backoff: Duration::from_secs(3600),
        ..config
    };
    let writer = Writer::start(slow_pause, Box::new(once), None, source.clone()).unwrap();
    writer.commit(vec![outcome(1, Status::Done)]).unwrap();
    wait_for("the first flush never failed", &|| writer.metrics().unsaved.get() == 1);
    assert_eq!(source.returns("1"), 0, "held during the pause");
    writer.commit(vec![outcome(2, Status::Done)]).unwrap();
    wait_for("a durable flush did not give the held item back", &|| {
        source.returns("1") == 1
    });
    assert_eq!(source.acks("2"), vec![Status::Done]);
    writer.close();
}

#[test]
fn a_work_table_gets_its_rows_back_as_pending_when_their_flush_fails_even_from_a_locked_database() {
    // Work table and outcomes in one file: the outcome and the row's marking
    // commit together, so a failed flush leaves the rows `running`, and the
    // give-back (itself refused while the lock lasts) sets them `pending`.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("work.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE jobs(id TEXT PRIMARY KEY, payload BLOB, priority INTEGER, status TEXT NOT NULL);
         INSERT INTO jobs VALUES ('a', 'x', 0, 'pending'), ('b', 'y', 0, 'pending'), ('c', 'z', 0, 'pending');",
    )
    .unwrap();
    let mut table = SqliteSourceConfig::new(&db, "jobs");
    table.busy_timeout = Duration::from_millis(20);
    let source = SqliteSource::open(table).unwrap();
    let ack = source.table_ack();
    let source = Arc::new(source.acked_in_sink_transaction());
    let mut outcomes = SqliteConfig::new(&db, Role::Outcomes);
    outcomes.busy_timeout = Duration::from_millis(20);
    let sink = SqliteSink::open(outcomes).unwrap().with_table_ack(ack).unwrap();
    let config = WriterConfig {
        max_retries: 1,
        retry_backoff: Duration::from_millis(20),
        give_back: GiveBack::Soon,
        ..config()
    };
    let writer = Writer::start(config, Box::new(sink), None, source.clone()).unwrap();
    let statuses = || -> Vec<String> {
        let mut s = conn.prepare("SELECT status FROM jobs ORDER BY id").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };

    let Ok(Pull::Items(items)) = source.pull(10) else {
        panic!("three items expected")
    };
    assert_eq!(statuses(), vec!["running"; 3]);
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let now = SystemTime::now();
    let done = |item: Item| Outcome {
        item,
        status: Status::Done,
        attempts: 1,
        output: Some("ok".into()),
        error: None,
        started_at: now,
        finished_at: now,
        duration: Duration::from_millis(1),
    };
    writer.commit(items.into_iter().map(done).collect()).unwrap();
    let started = Instant::now();
    while writer.metrics().unsaved.get() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "the flush never failed");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100)); // a give-back or two refused
    assert_eq!(
        writer.metrics().given_back.get(),
        0,
        "the lock refuses the give-back too"
    );
    conn.execute_batch("COMMIT").unwrap();
    let started = Instant::now();
    while statuses() != vec!["pending"; 3] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rows not pending again: {:?}",
            statuses()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(writer.metrics().given_back.get(), 3);
    assert!(matches!(source.pull(10), Ok(Pull::Items(again)) if again.len() == 3));
    writer.close();
}

#[test]
fn close_drains_everything_handed_over_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let writer = Writer::start(
        WriterConfig {
            flush_every: Duration::from_secs(3600),
            ..config()
        },
        Box::new(sqlite(&dir)),
        None,
        source.clone(),
    )
    .unwrap();
    for chunk in 0..20 {
        writer
            .commit((0..25).map(|i| outcome(chunk * 25 + i, Status::Done)).collect())
            .unwrap();
    }
    let report = writer.close();
    assert_eq!((report.unwritten, report.timed_out), (0, false));
    assert_eq!(reopen_records(&dir).len(), 500);
    assert_eq!(source.ack_count(), 500);
    assert!(writer.commit(vec![outcome(1, Status::Done)]).is_err(), "closed");
    // Refused outcomes are never written: they count as unsaved, so a run
    // that handed them over cannot exit 0.
    assert_eq!(writer.metrics().unsaved.get(), 1);
}

#[test]
fn failed_outcomes_go_to_the_dead_letter_sink_and_can_be_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::numbered(0));
    let dead = JsonlSink::open(JsonlConfig::new(dir.path().join("dead.jsonl"), Role::DeadLetter)).unwrap();
    let writer = Writer::start(config(), Box::new(sqlite(&dir)), Some(Box::new(dead)), source.clone()).unwrap();
    writer
        .commit(vec![
            outcome(1, Status::Done),
            outcome(2, Status::Failed),
            outcome(3, Status::Failed),
        ])
        .unwrap();
    writer.close();

    let mut dead = JsonlSink::open(JsonlConfig::new(dir.path().join("dead.jsonl"), Role::DeadLetter)).unwrap();
    let letters = lote::dead_letter::list(&mut dead).unwrap();
    let ids: Vec<&str> = letters.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["2", "3"]);
    assert_eq!(letters[0].error.as_deref(), Some("broken"));

    let result =
        lote::dead_letter::requeue(&mut dead, source.as_ref(), Some(&["3".to_string(), "7".to_string()])).unwrap();
    assert_eq!(
        (result.requeued, result.unknown),
        (vec!["3".to_string()], vec!["7".to_string()])
    );
    let pending = source.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id.as_str(), pending[0].payload.as_slice()),
        ("3", b"payload 3".as_slice())
    );
    let left: Vec<String> = lote::dead_letter::list(&mut dead)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec!["2".to_string()]);
}

fn session_over(
    dir: &tempfile::TempDir,
    n: usize,
    qos: Qos,
    stop: StopHandle,
    runs: Arc<AtomicU32>,
) -> (lote::SessionSummary, Arc<VecSource>) {
    let source = Arc::new(VecSource::numbered(n));
    let writer = Arc::new(Writer::start(config(), Box::new(sqlite(dir)), None, source.clone()).unwrap());
    let handler = Arc::new(move |_: &CallContext<'_>, item: &Item| {
        runs.fetch_add(1, Ordering::SeqCst);
        if item.id == "13" {
            Err(Failure::retryable("unlucky"))
        } else {
            thread::sleep(Duration::from_micros(200));
            Ok(format!("ok {}", item.id))
        }
    });
    let config = SessionConfig {
        threads: 2,
        chunk: 7,
        qos,
        ..SessionConfig::default()
    };
    let summary = Session::new(config, source.clone(), handler, writer.clone())
        .stop_handle(stop)
        .run()
        .unwrap();
    writer.close();
    (summary, source)
}

#[test]
fn exactly_once_skips_items_already_done_in_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let (first, _) = session_over(&dir, 200, Qos::ExactlyOnce, StopHandle::new(), runs.clone());
    assert_eq!(
        (first.counts.done, first.counts.failed, first.counts.skipped),
        (199, 1, 0)
    );
    let after_first = runs.load(Ordering::SeqCst);
    // The same 200 items again (a source that forgot its acks).
    let (second, source) = session_over(&dir, 200, Qos::ExactlyOnce, StopHandle::new(), runs.clone());
    assert_eq!(
        (second.counts.done, second.counts.skipped, second.counts.failed),
        (0, 199, 1)
    );
    assert_eq!(
        runs.load(Ordering::SeqCst) - after_first,
        1,
        "only the failed item ran again"
    );
    assert_eq!(source.acks("0"), vec![Status::Skipped]);
    let records = reopen_records(&dir);
    assert_eq!(records.len(), 200, "never two records for one item");
    assert!(records
        .iter()
        .filter(|r| r.id != "13")
        .all(|r| r.is_done() && r.output.is_some()));
}

#[test]
fn at_most_once_never_retries() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let source = Arc::new(VecSource::numbered(1));
    let writer = Arc::new(Writer::start(config(), Box::new(sqlite(&dir)), None, source.clone()).unwrap());
    let counted = runs.clone();
    let handler = Arc::new(move |_: &CallContext<'_>, _: &Item| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err::<String, _>(Failure::retryable("down"))
    });
    let summary = Session::new(
        SessionConfig {
            threads: 1,
            qos: Qos::AtMostOnce,
            ..SessionConfig::default()
        },
        source.clone(),
        handler,
        writer.clone(),
    )
    .policy(lote::policy::CallPolicy {
        retry: lote::policy::RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            jitter: 0.0,
            ..lote::policy::RetryPolicy::default()
        },
        ..Default::default()
    })
    .run()
    .unwrap();
    writer.close();
    assert_eq!((summary.counts.failed, runs.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(source.acks("0"), vec![Status::Failed], "recorded and acknowledged");
}

#[test]
fn exactly_once_refuses_a_committer_that_cannot_look_up() {
    let session = Session::new(
        SessionConfig {
            qos: Qos::ExactlyOnce,
            ..SessionConfig::default()
        },
        Arc::new(VecSource::numbered(1)),
        Arc::new(lote::handler::Noop),
        Arc::new(NoLookup),
    );
    let error = session.run().unwrap_err().to_string();
    assert!(error.contains("exactly_once"), "{error}");
}

struct NoLookup;
impl Committer for NoLookup {
    fn commit(&self, _: Vec<Outcome>) -> Result<(), lote::commit::CommitError> {
        Ok(())
    }
}

#[test]
fn a_stop_mid_stream_leaves_every_handed_over_outcome_durable() {
    let dir = tempfile::tempdir().unwrap();
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let runs = Arc::new(AtomicU32::new(0));
    let watcher = runs.clone();
    thread::spawn(move || {
        while watcher.load(Ordering::SeqCst) < 300 {
            thread::sleep(Duration::from_millis(1));
        }
        trigger.trigger(StopReason::Signal("SIGTERM".into()));
    });
    let (summary, source) = session_over(&dir, 5000, Qos::AtLeastOnce, stop, runs);
    assert!(summary.counts.returned > 0, "{summary:?}");
    let records = reopen_records(&dir);
    assert_eq!(
        records.len() as u64,
        summary.processed(),
        "every outcome handed over is durable: {summary:?}"
    );
    assert_eq!(source.ack_count() as u64, summary.processed());
    // Given back at the stop, or never pulled: pending again at the source.
    assert_eq!(source.pending().len() as u64, 5000 - summary.processed());
}

#[test]
fn an_undecodable_item_is_dead_lettered_with_its_reason_and_never_handled() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(VecSource::new([
        Item::new("good", "fine"),
        Item::defective("bad", vec![0xff, 0xfe], "line 2 is not valid JSON"),
    ]));
    let dead = JsonlSink::open(JsonlConfig::new(dir.path().join("dead.jsonl"), Role::DeadLetter)).unwrap();
    let writer =
        Arc::new(Writer::start(config(), Box::new(sqlite(&dir)), Some(Box::new(dead)), source.clone()).unwrap());
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = handled.clone();
    let handler = Arc::new(move |_: &CallContext<'_>, item: &Item| {
        seen.lock().unwrap().push(item.id.clone());
        Ok::<_, Failure>(String::new())
    });
    let summary = Session::new(SessionConfig::default(), source.clone(), handler, writer.clone())
        .run()
        .unwrap();
    writer.close();
    assert_eq!((summary.counts.done, summary.counts.failed), (1, 1));
    assert_eq!(
        *handled.lock().unwrap(),
        vec!["good".to_string()],
        "the handler never saw it"
    );
    let mut dead = JsonlSink::open(JsonlConfig::new(dir.path().join("dead.jsonl"), Role::DeadLetter)).unwrap();
    let letters = lote::dead_letter::list(&mut dead).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 0);
    assert!(letters[0]
        .error
        .as_deref()
        .unwrap()
        .contains("line 2 is not valid JSON"));
    assert_eq!(
        letters[0].to_item().unwrap().payload,
        vec![0xff, 0xfe],
        "the raw payload is kept"
    );
    assert_eq!(source.acks("bad"), vec![Status::Failed]);
}

/// A source that, like a plain file of lines, cannot remember what it
/// finished: every run yields every item again.
struct Forgetful(VecSource);

impl lote::Source for Forgetful {
    fn describe(&self) -> String {
        "forgetful".into()
    }
    fn pull(&self, max: usize) -> Result<lote::source::Pull, lote::source::SourceError> {
        self.0.pull(max)
    }
    fn give_back(&self, items: Vec<Item>, reason: lote::source::ReturnReason) -> Result<(), lote::source::SourceError> {
        self.0.give_back(items, reason)
    }
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), lote::source::SourceError> {
        self.0.ack(outcomes)
    }
    fn needs_resume(&self) -> bool {
        true
    }
}

#[test]
fn a_source_that_needs_resuming_skips_what_the_sink_has_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let run_once = |n: usize| {
        let source = Arc::new(Forgetful(VecSource::numbered(n)));
        let writer = Arc::new(Writer::start(config(), Box::new(sqlite(&dir)), None, source.clone()).unwrap());
        let counted = runs.clone();
        let handler = Arc::new(move |_: &CallContext<'_>, _: &Item| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failure>(String::new())
        });
        // at_least_once: resuming comes from the source, not the QoS.
        let summary = Session::new(SessionConfig::default(), source, handler, writer.clone())
            .run()
            .unwrap();
        writer.close();
        summary
    };
    let first = run_once(50);
    assert_eq!((first.counts.done, first.counts.skipped), (50, 0));
    let second = run_once(80);
    assert_eq!((second.counts.done, second.counts.skipped), (30, 50));
    assert_eq!(runs.load(Ordering::SeqCst), 80, "the first 50 ran once only");
}

#[test]
fn unsaved_items_of_a_locked_database_go_back_in_one_wait_not_one_per_item() {
    // Work table and outcomes in one file, a realistic busy_timeout, and the
    // database locked by someone else for good: the flush fails, and so does
    // the give-back. One call for the batch waits busy_timeout once; one per
    // item would hold the writer (and the drain) busy_timeout × items.
    let busy_timeout = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("work.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE jobs(id TEXT PRIMARY KEY, payload BLOB, priority INTEGER, status TEXT NOT NULL);")
        .unwrap();
    for id in 0..12 {
        conn.execute("INSERT INTO jobs VALUES (?1, 'x', 0, 'pending')", [id.to_string()])
            .unwrap();
    }
    let mut table = SqliteSourceConfig::new(&db, "jobs");
    table.busy_timeout = busy_timeout;
    let source = SqliteSource::open(table).unwrap();
    let ack = source.table_ack();
    let source = Arc::new(source.acked_in_sink_transaction());
    let mut outcomes = SqliteConfig::new(&db, Role::Outcomes);
    outcomes.busy_timeout = busy_timeout;
    let sink = SqliteSink::open(outcomes).unwrap().with_table_ack(ack).unwrap();
    let config = WriterConfig {
        max_retries: 0,
        drain_timeout: Duration::from_secs(30),
        give_back: GiveBack::AtFinish,
        ..config()
    };
    let writer = Writer::start(config, Box::new(sink), None, source.clone()).unwrap();
    let Ok(Pull::Items(items)) = source.pull(100) else {
        panic!("twelve items expected")
    };
    assert_eq!(items.len(), 12);
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let done = |item: Item| Outcome {
        item,
        ..outcome(0, Status::Done)
    };
    writer.commit(items.into_iter().map(done).collect()).unwrap();
    let started = Instant::now();
    while writer.metrics().unsaved.get() < 12 {
        assert!(started.elapsed() < Duration::from_secs(10), "the flush never failed");
        thread::sleep(Duration::from_millis(5));
    }

    let started = Instant::now();
    writer.close();
    let took = started.elapsed();
    assert!(
        took < busy_timeout * 5,
        "close took {took:?} with busy_timeout {busy_timeout:?}: one wait per item"
    );
    assert_eq!(writer.metrics().given_back.get(), 0, "the lock refuses the give-back");

    // Unlocked: the rows kept claimed are pending again at the next open,
    // every one of them, none done.
    conn.execute_batch("COMMIT").unwrap();
    drop(source);
    let mut table = SqliteSourceConfig::new(&db, "jobs");
    table.busy_timeout = busy_timeout;
    let again = SqliteSource::open(table).unwrap();
    let Ok(Pull::Items(items)) = again.pull(100) else {
        panic!("the rows are not pending again")
    };
    assert_eq!(items.len(), 12);
    let outcomes: i64 = conn
        .query_row("SELECT count(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outcomes, 0);
}
