//! The real binary under SIGHUP and at the end of a continuous session: a
//! reload keeps the open source (a replaced lines file, `--no-resume`),
//! SIGHUP keeps working after a reload changed the session kind, and a
//! daemon whose lines session ended with outcomes unsaved exits 1.
//!
//! These tests signal only the child processes they start.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::{Setup, LOTE};

impl Setup {
    /// `lote run -c config.yaml <extra>`, stderr to `lote.log`.
    fn spawn(&self, config: &Path, extra: &[&str]) -> Daemon {
        let log = fs::File::create(self.path("lote.log")).unwrap();
        let child = self
            .lote(&["run", "-c", config.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon(child)
    }
    fn log(&self) -> String {
        fs::read_to_string(self.path("lote.log")).unwrap_or_default()
    }
    /// Lines in `runs.txt`: one per handler call.
    fn runs(&self) -> usize {
        fs::read_to_string(self.path("runs.txt")).map_or(0, |t| t.lines().count())
    }
    fn write_lines(&self, rel: &str, n: usize) -> PathBuf {
        let path = self.path(rel);
        let text: String = (1..=n).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).unwrap();
        path
    }
}

/// Kills the child if a test fails before it exits.
struct Daemon(Child);

impl Daemon {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
    /// The exit code; panics if lote has not exited within `limit`.
    fn exit_code_within(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < limit, "lote did not exit within {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(what: &str, limit: Duration, log: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}:\n{}", log());
        thread::sleep(Duration::from_millis(20));
    }
}

/// A lines source over `lines`, one item at a time through an exec handler
/// that notes each call in `runs.txt` and then takes `sleep` seconds.
fn lines_config(setup: &Setup, lines: &Path, sleep: &str, sink: &str) -> String {
    format!(
        "session:\n  threads: 1\n  chunk: 1\nsource:\n  kind: lines\n  path: {}\n\
         handler:\n  kind: exec\n  command: [\"sh\", \"-c\", \"echo x >> {}; sleep {sleep}\"]\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n{sink}",
        lines.display(),
        setup.path("runs.txt").display(),
    )
}

#[test]
fn a_reload_over_a_replaced_lines_file_keeps_running() {
    let setup = Setup::new();
    let lines = setup.write_lines("items.txt", 12);
    let config = setup.config(&lines_config(&setup, &lines, "0.3", ""));
    let mut lote = setup.spawn(&config, &[]);
    wait_for(
        "the first calls",
        Duration::from_secs(10),
        || setup.log(),
        || setup.runs() >= 2,
    );

    // Rotated (a new file under the name) and then SIGHUP, as logrotate does.
    let fresh = setup.write_lines("items.txt.new", 3);
    fs::rename(&fresh, &lines).unwrap();
    kill(lote.pid(), Signal::SIGHUP).unwrap();

    // The daemon reloads and finishes the file it has open.
    let code = lote.exit_code_within(Duration::from_secs(15));
    let log = setup.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("config reloaded"), "{log}");
    assert_eq!(setup.runs(), 12, "every line of the open file ran once:\n{log}");
}

#[test]
fn a_reload_keeps_no_resume() {
    let setup = Setup::new();
    let lines = setup.write_lines("items.txt", 10);
    let config = setup.config(&lines_config(&setup, &lines, "0", ""));
    let first = Command::new(LOTE)
        .args(["run", "--once", "-c", config.to_str().unwrap()])
        .current_dir(setup.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(setup.runs(), 10);

    // Every line again, slowly enough for a SIGHUP in the middle.
    setup.config(&lines_config(&setup, &lines, "0.3", ""));
    let mut lote = setup.spawn(&config, &["--no-resume"]);
    wait_for(
        "the rerun to start",
        Duration::from_secs(10),
        || setup.log(),
        || setup.runs() >= 12,
    );
    kill(lote.pid(), Signal::SIGHUP).unwrap();

    let code = lote.exit_code_within(Duration::from_secs(15));
    let log = setup.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("config reloaded"), "{log}");
    assert_eq!(
        setup.runs(),
        20,
        "--no-resume ran every line again, the reload skipped none:\n{log}"
    );
}

#[test]
fn a_lines_daemon_with_unsaved_outcomes_exits_1() {
    let setup = Setup::new();
    let lines = setup.write_lines("items.txt", 6);
    let sink = "  busy_timeout: 20ms\n  max_retries: 0\n";
    let config = setup.config(&lines_config(&setup, &lines, "0.3", sink));
    let mut lote = setup.spawn(&config, &[]);
    let db = setup.path("state/outcomes.db");
    let saved = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM outcomes", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    wait_for(
        "the first outcome",
        Duration::from_secs(10),
        || setup.log(),
        || saved() >= 1,
    );

    // Another process holds the database's write lock from now on: every
    // later flush fails for good.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    // The file runs out: the continuous session ends by itself.
    let code = lote.exit_code_within(Duration::from_secs(15));
    let log = setup.log();
    drop(blocker);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("were not saved"), "{log}");
}

#[test]
fn sighup_after_reloading_from_every_to_continuous_still_reloads() {
    let setup = Setup::new();
    let spool = setup.path("spool");
    fs::create_dir_all(&spool).unwrap();
    let body = |session: &str| {
        format!(
            "session:\n{session}\nsource:\n  kind: spool\n  path: {}\n  stable_for: 0s\n\
             handler:\n  kind: noop\nsink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n",
            spool.display()
        )
    };
    let config = setup.config(&body("  threads: 1\n  every: 200ms"));
    let mut lote = setup.spawn(&config, &[]);
    let reloads = || setup.log().matches("config reloaded").count();
    wait_for(
        "a first session",
        Duration::from_secs(10),
        || setup.log(),
        || setup.path("state/status.json").exists(),
    );

    // From `every` to a continuous session.
    setup.config(&body("  threads: 1\n  poll_every: 50ms"));
    kill(lote.pid(), Signal::SIGHUP).unwrap();
    wait_for(
        "the first reload",
        Duration::from_secs(10),
        || setup.log(),
        || reloads() == 1,
    );

    // The continuous session must end at this SIGHUP for the reload to come.
    setup.config(&body("  threads: 2\n  poll_every: 50ms"));
    kill(lote.pid(), Signal::SIGHUP).unwrap();
    wait_for(
        "the second reload",
        Duration::from_secs(10),
        || setup.log(),
        || reloads() == 2,
    );

    kill(lote.pid(), Signal::SIGTERM).unwrap();
    let code = lote.exit_code_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", setup.log());
}

#[test]
fn a_reload_keeps_the_writer_counts_in_status() {
    let setup = Setup::new();
    let spool = setup.path("spool");
    fs::create_dir_all(&spool).unwrap();
    for i in 0..3 {
        fs::write(spool.join(format!("item-{i}.txt")), "payload\n").unwrap();
    }
    let body = |threads: usize| {
        format!(
            "session:\n  threads: {threads}\n  poll_every: 50ms\nsource:\n  kind: spool\n  path: {}\n  \
             stable_for: 0s\nhandler:\n  kind: noop\nsink:\n  kind: sqlite\n  path: outcomes.db\n  \
             flush_every: 50ms\nmetrics:\n  every: 100ms\n",
            spool.display()
        )
    };
    let config = setup.config(&body(1));
    let mut lote = setup.spawn(&config, &[]);
    let persisted = || -> Option<u64> {
        let text = fs::read_to_string(setup.path("state/status.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["writer"]["persisted"].as_u64()
    };
    wait_for(
        "3 outcomes in status.json",
        Duration::from_secs(10),
        || setup.log(),
        || persisted() == Some(3),
    );

    setup.config(&body(2));
    kill(lote.pid(), Signal::SIGHUP).unwrap();
    wait_for(
        "the reload",
        Duration::from_secs(10),
        || setup.log(),
        || setup.log().contains("config reloaded"),
    );
    // status.json is rewritten every 100ms; a new writer's counts alone
    // would say 0.
    thread::sleep(Duration::from_millis(600));
    assert_eq!(persisted(), Some(3), "{}", setup.log());

    kill(lote.pid(), Signal::SIGTERM).unwrap();
    let code = lote.exit_code_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", setup.log());
}

/// A SIGHUP that arrives while a reload is under way (no session to end)
/// is applied once that reload is done, not left for a third SIGHUP. The
/// first reload is held up on purpose: its new sink's file is locked by
/// the test, so opening it waits (up to `busy_timeout`, 3 s); the second
/// SIGHUP lands in that wait, then the lock goes. Two reloads must follow.
#[test]
fn a_sighup_during_a_reload_is_not_lost() {
    let setup = Setup::new();
    let spool = setup.path("spool");
    fs::create_dir_all(&spool).unwrap();
    let body = |sink: &str| {
        format!(
            "session:\n  threads: 1\n  poll_every: 50ms\nsource:\n  kind: spool\n  path: {}\n  stable_for: 0s\n\
             handler:\n  kind: noop\nsink:\n  kind: sqlite\n  path: {sink}\n  busy_timeout: 3s\n  flush_every: 50ms\n",
            spool.display()
        )
    };
    let config = setup.config(&body("outcomes.db"));
    let mut lote = setup.spawn(&config, &[]);
    wait_for(
        "the daemon to start",
        Duration::from_secs(10),
        || setup.log(),
        || setup.path("state/status.json").exists(),
    );

    let other = setup.path("state/other.db");
    let lock = rusqlite::Connection::open(&other).unwrap();
    lock.execute_batch("CREATE TABLE t(x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    setup.config(&body("other.db"));
    kill(lote.pid(), Signal::SIGHUP).unwrap();
    // The continuous session ended and the old writer drained: the reload
    // is now opening other.db, waiting on the lock.
    wait_for(
        "the first reload to start",
        Duration::from_secs(10),
        || setup.log(),
        || setup.log().contains("writer drained"),
    );
    thread::sleep(Duration::from_millis(300));
    kill(lote.pid(), Signal::SIGHUP).unwrap();
    thread::sleep(Duration::from_millis(300));
    drop(lock);
    wait_for(
        "the second SIGHUP's reload",
        Duration::from_secs(15),
        || setup.log(),
        || setup.log().matches("SIGHUP: config reloaded").count() == 2,
    );

    kill(lote.pid(), Signal::SIGTERM).unwrap();
    let code = lote.exit_code_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", setup.log());
}
