//! Crash: a child process runs sessions over N items into a real sink; the
//! test kills it with SIGKILL at random moments, many times, then lets it
//! finish, and checks what SPEC §3.3 promises:
//!
//! - every item ends with a `done` record: exactly one under exactly-once, at
//!   least one under at-least-once;
//! - no acknowledged item is missing its record (acknowledged ⇒ durable);
//! - exactly-once: an item whose outcome was durable when a child died never
//!   runs in a later child;
//! - SQLite passes `PRAGMA integrity_check`; no torn JSONL line survives as
//!   data.
//!
//! The child is this test binary again, run through the `#[ignore]`d entry
//! point `crash_child` with the scenario in its environment.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lote::commit::Committer;
use lote::sink::{JsonlConfig, JsonlSink, Role, Sink, SqliteConfig, SqliteSink};
use lote::source::{Pull, ReturnReason, Source, SourceError, SqliteSource, SqliteSourceConfig};
use lote::writer::{Writer, WriterConfig};
use lote::{CallContext, Failure, Item, Outcome, Qos, Session, SessionConfig};

const ITEMS: usize = 5000;
const KILLS: usize = 15;
const SCENARIO: &str = "LOTE_CRASH_SCENARIO";
const DIR: &str = "LOTE_CRASH_DIR";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Work table and outcomes in one SQLite file, acked in one transaction.
    SqliteSameFile,
    /// JSONL outcomes, a journal file of acknowledged ids.
    Jsonl,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    kind: Kind,
    qos: Qos,
}

impl Scenario {
    fn name(self) -> String {
        format!("{:?}-{}", self.kind, self.qos.as_str())
    }

    fn parse(name: &str) -> Scenario {
        let (kind, qos) = name.split_once('-').expect("scenario name");
        Scenario {
            kind: match kind {
                "SqliteSameFile" => Kind::SqliteSameFile,
                "Jsonl" => Kind::Jsonl,
                other => panic!("unknown kind {other}"),
            },
            qos: match qos {
                "exactly_once" => Qos::ExactlyOnce,
                "at_least_once" => Qos::AtLeastOnce,
                other => panic!("unknown qos {other}"),
            },
        }
    }
}

// ---------------------------------------------------------------- the child

/// The child's entry point; not a test on its own (the crash tests run it).
#[test]
#[ignore = "entry point of the crash tests' child process"]
fn crash_child() {
    let scenario = Scenario::parse(&std::env::var(SCENARIO).expect("run by the crash tests"));
    let dir = PathBuf::from(std::env::var(DIR).expect("run by the crash tests"));
    let (source, writer): (Arc<dyn Source>, Writer) = match scenario.kind {
        Kind::SqliteSameFile => {
            let db = dir.join("lote.db");
            let source = SqliteSource::open(SqliteSourceConfig::new(&db, "items")).unwrap();
            let ack = source.table_ack();
            let source: Arc<dyn Source> = Arc::new(source.acked_in_sink_transaction());
            let sink = SqliteSink::open(SqliteConfig::new(&db, Role::Outcomes))
                .unwrap()
                .with_table_ack(ack)
                .unwrap();
            let writer = Writer::start(writer_config(), Box::new(sink), None, source.clone()).unwrap();
            (source, writer)
        }
        Kind::Jsonl => {
            let source: Arc<dyn Source> = Arc::new(JournalSource::open(&dir.join("acked.log"), ITEMS));
            let sink = JsonlSink::open(jsonl_config(&dir)).unwrap();
            let writer = Writer::start(writer_config(), Box::new(sink), None, source.clone()).unwrap();
            (source, writer)
        }
    };
    let writer = Arc::new(writer);
    let runs = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runs.log"))
            .unwrap(),
    );
    let handler = Arc::new(move |_: &CallContext<'_>, item: &Item| {
        // One write per line with O_APPEND: lines from two workers never mix.
        (&*runs)
            .write_all(format!("run {}\n", item.id).as_bytes())
            .map_err(|e| Failure::retryable(e.to_string()))?;
        thread::sleep(Duration::from_micros(200));
        Ok(format!("out-{}", item.id))
    });
    let config = SessionConfig {
        threads: 2,
        chunk: 10,
        qos: scenario.qos,
        ..SessionConfig::default()
    };
    let summary = Session::new(config, source, handler, writer.clone() as Arc<dyn Committer>)
        .run()
        .unwrap();
    let report = writer.close();
    assert_eq!(report.unwritten, 0);
    eprintln!("child finished: {summary}");
}

fn writer_config() -> WriterConfig {
    WriterConfig {
        batch: 50,
        flush_every: Duration::from_millis(20),
        done_lookups: true,
        ..WriterConfig::default()
    }
}

fn jsonl_config(dir: &Path) -> JsonlConfig {
    JsonlConfig {
        // Small files, so rotation happens under the kills too.
        rotate_bytes: Some(64 * 1024),
        keep_files: 100,
        ..JsonlConfig::new(dir.join("outcomes.jsonl"), Role::Outcomes)
    }
}

/// Items 0..n; an id is finished once it is in the journal, which `ack`
/// appends to and fsyncs. A plain file's way to remember acknowledgements.
struct JournalSource {
    /// The journal of acknowledged ids.
    journal: Mutex<File>,
    /// Ids not yet pulled (popped from the back), and ids pulled.
    state: Mutex<(Vec<String>, HashSet<String>)>,
}

impl JournalSource {
    fn open(path: &Path, n: usize) -> Self {
        let acked = read_journal(path);
        let pending = (0..n)
            .map(|i| i.to_string())
            .filter(|id| !acked.contains(id))
            .rev()
            .collect();
        let journal = OpenOptions::new().create(true).append(true).open(path).unwrap();
        JournalSource {
            journal: Mutex::new(journal),
            state: Mutex::new((pending, HashSet::new())),
        }
    }
}

/// Complete lines only: a torn last line (killed mid-write) is not an ack.
fn read_journal(path: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashSet::new();
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

impl Source for JournalSource {
    fn describe(&self) -> String {
        "journal".into()
    }
    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let mut state = self.state.lock().unwrap();
        let mut items = Vec::new();
        while items.len() < max {
            let Some(id) = state.0.pop() else { break };
            state.1.insert(id.clone());
            items.push(Item::new(id.clone(), id.into_bytes()));
        }
        Ok(if items.is_empty() {
            Pull::Exhausted
        } else {
            Pull::Items(items)
        })
    }
    fn give_back(&self, items: Vec<Item>, _: ReturnReason) -> Result<(), SourceError> {
        let mut state = self.state.lock().unwrap();
        for item in items {
            state.1.remove(&item.id);
            state.0.push(item.id);
        }
        Ok(())
    }
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        let lines: String = outcomes.iter().map(|o| format!("{}\n", o.item.id)).collect();
        let journal = self.journal.lock().unwrap();
        (&*journal)
            .write_all(lines.as_bytes())
            .and_then(|()| journal.sync_data())
            .map_err(|e| SourceError::new("appending to the journal", e))
    }
}

// ---------------------------------------------------------------- the parent

fn spawn_child(scenario: Scenario, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario.name())
        .env(DIR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn setup(scenario: Scenario, dir: &Path) {
    if scenario.kind == Kind::SqliteSameFile {
        let conn = rusqlite::Connection::open(dir.join("lote.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE items(id TEXT PRIMARY KEY, payload BLOB NOT NULL, priority INTEGER, status TEXT NOT NULL);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..ITEMS {
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2, 1, 'pending')",
                rusqlite::params![i.to_string(), i.to_string().into_bytes()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Ids with a durable `done` record, read straight from the files.
fn durable_done(scenario: Scenario, dir: &Path) -> HashMap<String, usize> {
    let mut done = HashMap::new();
    match scenario.kind {
        Kind::SqliteSameFile => {
            let conn = rusqlite::Connection::open(dir.join("lote.db")).unwrap();
            let exists: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'outcomes'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            if exists == 0 {
                return done; // no child got as far as opening the sink
            }
            let mut s = conn.prepare("SELECT id FROM outcomes WHERE status = 'done'").unwrap();
            for id in s.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                *done.entry(id.unwrap()).or_default() += 1;
            }
        }
        Kind::Jsonl => {
            // Through the sink's own open, which cuts a torn tail.
            let mut sink = JsonlSink::open(jsonl_config(dir)).unwrap();
            for record in sink.records().unwrap() {
                if record.is_done() {
                    *done.entry(record.id).or_default() += 1;
                }
            }
        }
    }
    done
}

/// The ids each child ran, child by child.
fn runs_by_child(dir: &Path) -> Vec<Vec<String>> {
    let file = File::open(dir.join("runs.log")).unwrap();
    let mut children = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.unwrap();
        if line.starts_with("child ") {
            children.push(Vec::new());
        } else if let Some(id) = line.strip_prefix("run ") {
            children.last_mut().expect("a child marker first").push(id.to_string());
        }
    }
    children
}

fn mark_child(dir: &Path, k: usize) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("runs.log"))
        .unwrap();
    writeln!(log, "child {k}").unwrap();
}

fn crash_many_times_then_finish(scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(scenario, dir);
    // done_before[k]: ids durable before child k started.
    let mut done_before: Vec<HashSet<String>> = Vec::new();
    let mut kills = 0;
    let mut k = 0;
    while kills < KILLS {
        done_before.push(durable_done(scenario, dir).into_keys().collect());
        mark_child(dir, k);
        let mut child = spawn_child(scenario, dir);
        thread::sleep(Duration::from_millis(fastrand::u64(5..60)));
        let finished_by_itself = child.try_wait().unwrap().is_some();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        k += 1;
        if finished_by_itself {
            break;
        }
        kills += 1;
    }
    // Then let it finish.
    done_before.push(durable_done(scenario, dir).into_keys().collect());
    mark_child(dir, k);
    let mut child = spawn_child(scenario, dir);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the last child did not finish"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the last child failed: {status}");
    assert!(kills >= 10, "only {kills} kills landed before the work was done");

    // Every item has a done record: exactly one under exactly-once.
    let done = durable_done(scenario, dir);
    for i in 0..ITEMS {
        let count = done.get(&i.to_string()).copied().unwrap_or(0);
        match scenario.qos {
            Qos::ExactlyOnce => assert_eq!(count, 1, "item {i}: {count} done records"),
            _ => assert!(count >= 1, "item {i}: no done record"),
        }
    }
    // Exactly-once: nothing durable before child k ran again in child k.
    if scenario.qos == Qos::ExactlyOnce {
        for (k, ran) in runs_by_child(dir).iter().enumerate() {
            let rerun: Vec<&String> = ran.iter().filter(|id| done_before[k].contains(*id)).collect();
            assert!(rerun.is_empty(), "child {k} re-ran durable items {rerun:?}");
        }
    }
    match scenario.kind {
        Kind::SqliteSameFile => {
            let conn = rusqlite::Connection::open(dir.join("lote.db")).unwrap();
            let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(check, "ok");
            // Acknowledged (row marked done) ⇒ durable, and here the converse
            // too: both commit in one transaction.
            let orphans: i64 = conn
                .query_row(
                    "SELECT count(*) FROM items i LEFT JOIN outcomes o ON o.id = i.id \
                     WHERE (i.status = 'done') != (o.id IS NOT NULL)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(orphans, 0, "an item marked done without its outcome, or the reverse");
        }
        Kind::Jsonl => {
            // No torn line survives: every line of every file parses.
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if !name.starts_with("outcomes.jsonl") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.is_empty() || text.ends_with('\n'), "{name} ends mid-line");
                for (n, line) in text.lines().enumerate() {
                    assert!(
                        serde_json::from_str::<lote::sink::Record>(line).is_ok(),
                        "{name}:{} is not a record: {line:?}",
                        n + 1
                    );
                }
            }
            let acked = read_journal(&dir.join("acked.log"));
            let missing: Vec<&String> = acked.iter().filter(|id| !done.contains_key(*id)).collect();
            assert!(missing.is_empty(), "acknowledged without a record: {missing:?}");
        }
    }
}

#[test]
fn crash_sqlite_same_file_exactly_once() {
    crash_many_times_then_finish(Scenario {
        kind: Kind::SqliteSameFile,
        qos: Qos::ExactlyOnce,
    });
}

#[test]
fn crash_sqlite_same_file_at_least_once() {
    crash_many_times_then_finish(Scenario {
        kind: Kind::SqliteSameFile,
        qos: Qos::AtLeastOnce,
    });
}

#[test]
fn crash_jsonl_exactly_once() {
    crash_many_times_then_finish(Scenario {
        kind: Kind::Jsonl,
        qos: Qos::ExactlyOnce,
    });
}

#[test]
fn crash_jsonl_at_least_once() {
    crash_many_times_then_finish(Scenario {
        kind: Kind::Jsonl,
        qos: Qos::AtLeastOnce,
    });
}
