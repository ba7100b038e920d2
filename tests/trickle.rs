//! A trickle is never held back (SPEC §3.2, `session.chunk_wait`): in a
//! continuous session a worker commits its partial chunk when the queue runs
//! dry or its oldest outcome is `chunk_wait` old, so an item dropped into a
//! quiet spool is durable within moments, not at the session's end, and a
//! SIGKILL after that runs none of them again.
//!
//! The real binary over a real spool; it signals only the child processes it
//! starts.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::commit::MemoryCommitter;
use lote::source::{Pull, ReturnReason, Source, SourceError, VecSource};
use lote::{Item, Outcome, Session, SessionConfig, StopHandle, StopReason};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LOTE: &str = env!("CARGO_BIN_EXE_lote");

/// The promise: an item dropped into a running daemon is durable this soon.
const DURABLE_WITHIN: Duration = Duration::from_secs(2);

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(dir: &Path, config: &Path) -> Daemon {
        let child = Command::new(LOTE)
            .args(["run", "-c", config.to_str().unwrap()])
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon { child }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the exit (at most 20 s) and returns the log.
    fn wait(mut self) -> String {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("lote did not exit within 20s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut log = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ids with a durable outcome: a row in outcomes.db (the table may not
/// exist before the first flush).
fn durable(db: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let Ok(mut query) = conn.prepare("SELECT id FROM outcomes WHERE status IN ('done', 'skipped')") else {
        return Vec::new();
    };
    let rows = match query.query_map([], |r| r.get::<_, String>(0)) {
        Ok(rows) => rows.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    };
    rows
}

fn files_in(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "done" && n != "failed")
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Drops one item into the spool the way a producer should: written under a
/// dot-name (ignored), then renamed in.
fn drop_item(spool: &Path, name: &str) {
    let hidden = spool.join(format!(".{name}.tmp"));
    fs::write(&hidden, format!("payload of {name}\n")).unwrap();
    fs::rename(hidden, spool.join(name)).unwrap();
}

#[test]
fn trickle_is_never_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    let runs = dir.path().join("runs.log");
    let db = dir.path().join("state/outcomes.db");
    // The shipped `chunk: 50` and the default chunk_wait; the source and the
    // sink poll and flush quickly, so only the worker could hold items back.
    let config = dir.path().join("config.yaml");
    fs::write(
        &config,
        format!(
            "state_dir: {state}\nlog: info\nsession:\n  threads: 2\n  chunk: 50\n  poll_every: 100ms\n\
             source:\n  kind: spool\n  path: {spool}\n  stable_for: 0s\n\
             handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"echo \\\"$LOTE_ITEM_ID\\\" >> {runs}; cat\"]\n  qos: exactly_once\n\
             sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 100ms\n",
            state = dir.path().join("state").display(),
            spool = spool.display(),
            runs = runs.display(),
        ),
    )
    .unwrap();

    let daemon = Daemon::start(dir.path(), &config);
    let ids: Vec<String> = (1..=5).map(|i| format!("item-{i}.txt")).collect();
    for id in &ids {
        drop_item(&spool, id);
        let took = within(DURABLE_WITHIN, || durable(&db).contains(id));
        assert!(
            took.is_some(),
            "{id} was not durable within {DURABLE_WITHIN:?} of being dropped into a running daemon \
             (chunk 50 held it back); durable so far: {:?}",
            durable(&db)
        );
        eprintln!("{id} durable after {:?}", took.unwrap());
    }

    // A crash now must not run any of them again.
    daemon.signal(Signal::SIGKILL);
    let _ = daemon.wait();
    let daemon = Daemon::start(dir.path(), &config);
    drop_item(&spool, "item-6.txt");
    let settled = within(Duration::from_secs(15), || {
        files_in(&spool).is_empty()
            && files_in(&spool.join(".claimed")).is_empty()
            && files_in(&spool.join("done")).len() == 6
    });
    daemon.signal(Signal::SIGTERM);
    let log = daemon.wait();
    assert!(
        settled.is_some(),
        "the restarted daemon did not finish the spool: pending {:?}, done {:?}\n{log}",
        files_in(&spool),
        files_in(&spool.join("done"))
    );
    let mut runs_of: HashMap<String, usize> = HashMap::new();
    for line in fs::read_to_string(&runs).unwrap().lines() {
        *runs_of.entry(line.to_string()).or_default() += 1;
    }
    for id in ids.iter().chain(std::iter::once(&"item-6.txt".to_string())) {
        assert_eq!(
            runs_of.get(id),
            Some(&1),
            "{id} ran {:?} time(s): {runs_of:?}",
            runs_of.get(id)
        );
    }
}

/// A source that hands out one item per pull, then is idle (a quiet stream),
/// until the test stops the session.
struct Trickle {
    items: VecSource,
}

impl Source for Trickle {
    fn describe(&self) -> String {
        "a trickle".into()
    }
    fn pull(&self, _: usize) -> Result<Pull, SourceError> {
        match self.items.pull(1)? {
            Pull::Items(items) => Ok(Pull::Items(items)),
            _ => Ok(Pull::Idle),
        }
    }
    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) -> Result<(), SourceError> {
        self.items.give_back(items, reason)
    }
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        self.items.ack(outcomes)
    }
}

#[test]
fn a_session_commits_a_trickle_while_it_runs_not_at_its_end() {
    let source = Arc::new(Trickle {
        items: VecSource::numbered(3),
    });
    let committer = Arc::new(MemoryCommitter::new());
    let stop = StopHandle::new();
    let config = SessionConfig {
        threads: 2,
        chunk: 1_000,
        poll_interval: Duration::from_millis(20),
        ..SessionConfig::default()
    };
    let session =
        Session::new(config, source, Arc::new(lote::handler::Noop), committer.clone()).stop_handle(stop.clone());
    thread::scope(|s| {
        let running = s.spawn(|| session.run().expect("session runs"));
        let committed = within(Duration::from_secs(10), || committer.outcomes().len() == 3);
        stop.stop(StopReason::Requested);
        let summary = running.join().unwrap();
        assert!(
            committed.is_some(),
            "3 outcomes of a quiet source were still uncommitted while the session ran (chunk 1000): {:?}",
            committer.chunk_sizes()
        );
        assert_eq!(summary.counts.done, 3);
    });
}

#[test]
fn a_huge_chunk_and_queue_capacity_allocate_nothing_up_front() {
    let source = Arc::new(VecSource::numbered(5));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let mut config = SessionConfig {
        threads: 2,
        chunk: 1_000_000_000,
        pull_batch: 1_000_000_000,
        ..SessionConfig::default()
    };
    config.queue.capacity = 1_000_000_000_000;
    let session = Session::new(config, source.clone(), Arc::new(lote::handler::Noop), committer.clone());
    let summary = session.run().expect("session runs");
    assert_eq!(summary.counts.done, 5);
    assert_eq!(committer.outcomes().len(), 5);
    assert!(source.pending().is_empty());
}

/// A handler slower than `chunk_wait`: each outcome is committed before the
/// next call starts, not after it, so it never waits a whole call for
/// company (SPEC §3.2: committed once older than `chunk_wait`).
#[test]
fn an_outcome_does_not_wait_out_the_next_slow_call() {
    let source = Arc::new(VecSource::numbered(3));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let config = SessionConfig {
        threads: 1,
        chunk: 1_000,
        chunk_wait: Duration::from_millis(100),
        ..SessionConfig::default()
    };
    let slow = |_: &lote::CallContext<'_>, item: &lote::Item| {
        thread::sleep(Duration::from_millis(250));
        Ok::<_, lote::Failure>(item.id.clone())
    };
    let summary = Session::new(config, source, Arc::new(slow), committer.clone())
        .run()
        .expect("session runs");
    assert_eq!(summary.counts.done, 3);
    assert_eq!(
        committer.chunk_sizes(),
        vec![1, 1, 1],
        "an outcome waited for the next 250 ms call although chunk_wait is 100 ms"
    );
}
