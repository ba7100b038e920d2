//! The inbox through the real binary: `lote push` (exit 0, 75 when full,
//! 1 on a malformed line, what it accepted kept each time), a running
//! daemon picking up what another process pushed (no polling: within a
//! second, though the safety net is 30 s), `run --once` draining the inbox,
//! outcome and inbox row finished in one file, and SIGTERM keeping every
//! accepted item.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::{text, Setup};

const SINK: &str = "sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n";

impl Setup {
    /// `lote push` with `input` on stdin.
    fn push(&self, args: &[&str], input: &str) -> std::process::Output {
        let mut args = args.to_vec();
        args.insert(0, "push");
        let mut child = self
            .lote(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // lote may refuse (and exit) before it reads: a broken pipe then.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// (id, status, payload kept) of every inbox row, in arrival order.
    fn inbox_rows(&self, db: &str) -> Vec<(String, String, bool)> {
        let conn = rusqlite::Connection::open(self.path(db)).unwrap();
        let mut s = conn
            .prepare("SELECT id, status, payload IS NOT NULL FROM inbox ORDER BY seq")
            .unwrap();
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// (id, status, output) of every outcome.
    fn outcomes(&self) -> Vec<(String, String, String)> {
        let conn = rusqlite::Connection::open(self.path("state/outcomes.db")).unwrap();
        let mut s = conn
            .prepare("SELECT id, status, coalesce(output, '') FROM outcomes ORDER BY id")
            .unwrap();
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("lote did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn push_stores_lines_counts_duplicates_and_says_what_it_kept_when_full_or_malformed() {
    let setup = Setup::new();
    let config = setup.config(&format!(
        "source:\n  kind: inbox\n  capacity: 5\nhandler:\n  kind: noop\n{SINK}"
    ));
    let c = config.to_str().unwrap();

    let out = setup.push(&["-c", c], "one\n\ntwo\r\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 2 item(s), 0 duplicate(s)"));

    let ndjson =
        "{\"id\": \"a\", \"priority\": 1, \"payload\": {\"t\": 20}}\n{\"id\": \"a\", \"payload\": \"again\"}\n";
    let out = setup.push(&["-c", c, "--format", "ndjson"], ndjson);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 1 item(s), 1 duplicate(s)"));

    let bad = "{\"id\": \"b\", \"payload\": \"x\"}\n{\"id\": \"c\"}\n{\"id\": \"d\", \"payload\": \"y\"}\n";
    let out = setup.push(&["-c", c, "--format", "ndjson"], bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("no \"payload\""), "{err}");
    assert!(err.contains("the 1 item(s) before it were accepted"), "{err}");

    // 4 of 5 taken: two more do not fit, and neither is kept.
    let out = setup.push(&["-c", c], "x\ny\n");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the inbox is full"),
        "{}",
        text(&out)
    );

    let rows = setup.inbox_rows("state/outcomes.db");
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(&ids[2..], ["a", "b"]);
    assert!(rows.iter().all(|r| r.1 == "pending" && r.2));
}

#[test]
fn push_refuses_a_config_whose_source_is_not_an_inbox() {
    let setup = Setup::new();
    let config = setup.config(&format!(
        "source:\n  kind: lines\n  path: items.txt\nhandler:\n  kind: noop\n{SINK}"
    ));
    let out = setup.push(&["-c", config.to_str().unwrap()], "x\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set `source: {kind: inbox}`"));
}

#[test]
fn run_once_drains_the_inbox_and_finishes_each_row_with_its_outcome() {
    let setup = Setup::new();
    let config = setup.config(&format!(
        "source:\n  kind: inbox\nhandler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"tr a-z A-Z\"]\n{SINK}"
    ));
    let c = config.to_str().unwrap();
    let out = setup.push(&["-c", c], "alpha\nbeta\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = setup.run(&["run", "--once", "-c", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let outputs: Vec<String> = setup.outcomes().into_iter().map(|o| o.2).collect();
    let mut sorted = outputs.clone();
    sorted.sort();
    assert_eq!(sorted, ["ALPHA", "BETA"]);
    assert!(setup
        .inbox_rows("state/outcomes.db")
        .iter()
        .all(|r| r.1 == "done" && !r.2));
}

#[test]
fn a_running_daemon_takes_what_another_process_pushes_at_once_and_sigterm_keeps_the_rest() {
    let setup = Setup::new();
    // Slow enough that a SIGTERM finds items still pending.
    let config = setup.config(&format!(
        "session:\n  threads: 1\nsource:\n  kind: inbox\nhandler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"sleep 0.2; cat\"]\n{SINK}"
    ));
    let c = config.to_str().unwrap();
    let mut daemon = setup
        .lote(&["run", "-c", c])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the daemon to start", Duration::from_secs(10), || {
        setup.path("state/status.json").exists()
    });
    let pushed = Instant::now();
    let out = setup.push(&["-c", c], "first\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for("the first outcome", Duration::from_secs(10), || {
        setup.outcomes().len() == 1
    });
    // The safety net would take 30 s: the WAL watch heard the push.
    assert!(pushed.elapsed() < Duration::from_secs(5), "{:?}", pushed.elapsed());

    let many: String = (0..30).map(|i| format!("item {i}\n")).collect();
    let out = setup.push(&["-c", c], &many);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(exit_within(&mut daemon, Duration::from_secs(20)), Some(0));

    let rows = setup.inbox_rows("state/outcomes.db");
    assert_eq!(rows.len(), 31);
    let done = rows.iter().filter(|r| r.1 == "done").count();
    let pending = rows.iter().filter(|r| r.1 == "pending" && r.2).count();
    assert_eq!(done + pending, 31, "nothing running or lost after a stop: {rows:?}");
    assert!(pending > 0, "the stop came before the end: {rows:?}");
    assert_eq!(setup.outcomes().len(), done);
}

#[test]
fn check_puts_the_inbox_in_the_sink_file_or_its_own() {
    let setup = Setup::new();
    let config = setup.config(&format!("source:\n  kind: inbox\nhandler:\n  kind: noop\n{SINK}"));
    let out = setup.run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let sink_file = setup.path("state/outcomes.db");
    assert!(printed.contains(&format!("path: {}", sink_file.display())), "{printed}");
    let config =
        setup.config("source:\n  kind: inbox\nhandler:\n  kind: noop\nsink:\n  kind: jsonl\n  path: outcomes.jsonl\n");
    let out = setup.run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let inbox_file = setup.path("state").join(Path::new("inbox.db"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&inbox_file.display().to_string()));
}
