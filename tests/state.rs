//! What lote leaves in its state directory and picks up again, driven through
//! the real binary: the outcomes database after a clean exit, what a lines
//! source resumes from, rotation against done lookups, and two instances
//! starting at once on fresh state.

use std::fs;
use std::process::Output;

mod common;
use common::{text, Setup};

impl Setup {
    /// `lote run --once -c config.yaml` plus `extra`, which must exit 0.
    fn run_once(&self, extra: &[&str]) -> Output {
        let mut args = vec!["run", "--once", "-c", "config.yaml"];
        args.extend_from_slice(extra);
        let output = self.run(&args);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        output
    }
    /// Writes the lines file `input.txt`: `n` lines `"{tag} {i}"`.
    fn lines(&self, tag: &str, n: usize) {
        let body: String = (1..=n).map(|i| format!("{tag} {i}\n")).collect();
        fs::write(self.path("input.txt"), body).unwrap();
    }
    /// (id, output) of every done record in the SQLite file `db`.
    fn done(db: &std::path::Path) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut s = conn
            .prepare("SELECT id, output FROM outcomes WHERE status = 'done' ORDER BY CAST(id AS INTEGER)")
            .unwrap();
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

/// An exec handler that echoes its payload: the output says which line ran.
const ECHO: &str = "handler:\n  kind: exec\n  command: [cat]\n";

#[test]
fn a_copy_of_outcomes_db_is_a_backup() {
    let setup = Setup::new();
    setup.lines("reading", 200);
    // exactly_once over a lines source: done lookups on, the case that left
    // everything in the WAL.
    setup.config(&format!(
        "source: {{kind: lines, path: ../input.txt}}\n{ECHO}  qos: exactly_once\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n"
    ));
    setup.run_once(&[]);

    let wal = setup.path("state/outcomes.db-wal");
    assert!(!wal.exists(), "a clean exit left {}", wal.display());
    // Only the main file, copied elsewhere, as `cp` would for a backup.
    let backup = tempfile::tempdir().unwrap();
    let copy = backup.path().join("outcomes.db");
    fs::copy(setup.path("state/outcomes.db"), &copy).unwrap();
    let done = Setup::done(&copy);
    assert_eq!(done.len(), 200, "the copy holds {} of 200 rows", done.len());
    assert_eq!(done[199], ("200".to_string(), "reading 200".to_string()));
}

/// Starts two `lote run --once -c config.yaml` at the same moment and
/// returns both outputs.
fn two_at_once(setup: &Setup) -> [Output; 2] {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let run = || {
            let mut command = setup.lote(&["run", "--once", "-c", "config.yaml"]);
            barrier.wait();
            command.output().unwrap()
        };
        let a = scope.spawn(run);
        let b = scope.spawn(run);
        [a.join().unwrap(), b.join().unwrap()]
    })
}

/// What a start race used to say: a directory made by the other instance
/// first, or the WAL switch refused while the other held the lock.
/// Starts two `lote run --once` at once over `setup`: neither may fail on
/// the start race, both must exit 0, and the 10 items are done.
fn both_start_and_finish(round: usize, setup: &Setup) {
    let outputs = two_at_once(setup);
    assert_no_start_race(round, &outputs);
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "round {round}: {}", text(output));
    }
    assert_eq!(Setup::done(&setup.path("state/outcomes.db")).len(), 10);
}

fn assert_no_start_race(round: usize, outputs: &[Output]) {
    for output in outputs {
        let all = text(output);
        assert!(
            !all.contains("File exists") && !all.contains("database is locked"),
            "round {round}: {all}"
        );
    }
}

#[test]
fn two_instances_started_at_once_on_fresh_state_both_run() {
    // SQLite sink and dead letters: a JSONL file takes one writer, and its
    // lock refuses the second instance on purpose (a clear message, tested
    // in tests/sink_jsonl.rs), which is not the race this is about.
    let sinks = "handler: {kind: noop}\nsink: {kind: sqlite, path: outcomes.db, flush_every: 50ms}\n\
                 dead_letter: {kind: sqlite, path: dead-letter.db}\n";
    for round in 0..20 {
        // A spool: the source made for several consumers; both take files.
        let setup = Setup::new();
        let spool = setup.path("spool");
        setup.config(&format!(
            "source: {{kind: spool, path: {}, stable_for: 0s}}\n{sinks}",
            spool.display()
        ));
        fs::create_dir(&spool).unwrap();
        for i in 0..10 {
            fs::write(spool.join(format!("item-{i}")), "x").unwrap();
        }
        both_start_and_finish(round, &setup);

        // A SQLite work table, in a file of its own: rows are claimed in a
        // transaction, so both share the table.
        let setup = Setup::new();
        fs::create_dir(setup.path("state")).unwrap();
        let work = rusqlite::Connection::open(setup.path("state/work.db")).unwrap();
        work.execute_batch(
            "CREATE TABLE items (id TEXT PRIMARY KEY, payload BLOB, priority INTEGER, status TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
             INSERT INTO items SELECT i, 'x', 0, 'pending' FROM n;",
        )
        .unwrap();
        drop(work);
        setup.config(&format!(
            "source: {{kind: sqlite, path: work.db, table: items}}\n{sinks}"
        ));
        both_start_and_finish(round, &setup);

        // A lines file: nothing claims a line, so both read every line (two
        // instances over one lines file and one sink are a mistake this does
        // not guard against), but both start and finish.
        let setup = Setup::new();
        setup.lines("reading", 10);
        setup.config(&format!("source: {{kind: lines, path: ../input.txt}}\n{sinks}"));
        both_start_and_finish(round, &setup);
    }
}

/// Runs of the handler so far, one line per call, from `runs.log`.
fn runs(setup: &Setup) -> usize {
    fs::read_to_string(setup.path("runs.log")).map_or(0, |log| log.lines().count())
}

/// An exec handler that echoes its payload and counts its calls in `runs.log`.
fn counting_handler(setup: &Setup) -> String {
    format!(
        "handler:\n  kind: exec\n  command: [/bin/sh, -c, 'cat; echo \"$LOTE_ITEM_ID\" >> {}']\n",
        setup.path("runs.log").display()
    )
}

#[test]
fn rotation_never_makes_exactly_once_re_run() {
    let setup = Setup::new();
    setup.lines("reading", 300);
    let config = |rotation: &str| {
        setup.config(&format!(
            "source: {{kind: lines, path: ../input.txt}}\n{}  qos: exactly_once\n\
             sink:\n  kind: jsonl\n  path: outcomes.jsonl\n  batch: 20\n  flush_every: 50ms\n{rotation}",
            counting_handler(&setup)
        ))
    };
    // 300 records of ~170 bytes through 4 KiB files of which one is kept:
    // rotation deletes most of them.
    config("  rotate_bytes: 4KiB\n  keep_files: 1\n");
    let check = setup.run(&["check", "-c", "config.yaml"]);
    if check.status.success() {
        // Accepted: then no item may run twice.
        setup.run_once(&[]);
        setup.run_once(&[]);
        assert_eq!(
            runs(&setup),
            300,
            "items ran again after rotation deleted their records"
        );
    } else {
        // Refused up front, saying what to change; `run` refuses it too.
        let said = text(&check);
        assert_eq!(check.status.code(), Some(1), "{said}");
        for words in ["sink.rotate_bytes", "run again", "rotate_bytes: 0", "kind: sqlite"] {
            assert!(said.contains(words), "the refusal lacks {words:?}: {said}");
        }
        let run = setup.run(&["run", "--once", "-c", "config.yaml"]);
        assert_eq!(run.status.code(), Some(1), "{}", text(&run));
        assert_eq!(runs(&setup), 0);
    }
    // What the refusal suggests works: one growing file, nothing run twice.
    let _ = fs::remove_dir_all(setup.path("state"));
    let _ = fs::remove_file(setup.path("runs.log"));
    config("  rotate_bytes: 0\n");
    setup.run_once(&[]);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 300);
}

/// A lines config over `input.txt` with the counting echo handler and a
/// SQLite sink, at `qos`.
fn lines_config(setup: &Setup, qos: &str) {
    setup.config(&format!(
        "source: {{kind: lines, path: ../input.txt}}\n{}  qos: {qos}\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n",
        counting_handler(setup)
    ));
}

#[test]
fn a_replaced_lines_file_is_not_silently_skipped() {
    let setup = Setup::new();
    lines_config(&setup, "at_least_once");
    setup.lines("yesterday", 100);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 100);

    // Today's file arrives as files do: written beside, renamed over.
    let body: String = (1..=150).map(|i| format!("today {i}\n")).collect();
    fs::write(setup.path("input.txt.new"), body).unwrap();
    fs::rename(setup.path("input.txt.new"), setup.path("input.txt")).unwrap();
    let second = setup.run(&["run", "--once", "-c", "config.yaml"]);
    if second.status.success() {
        // Accepted: then every line of today's file ran.
        assert_eq!(runs(&setup), 250, "today's first lines were skipped: {}", text(&second));
    } else {
        // Refused before anything ran, saying what to do.
        let said = text(&second);
        assert_eq!(second.status.code(), Some(1), "{said}");
        assert!(said.contains("not the file the sink's records came from"), "{said}");
        assert!(said.contains("--no-resume"), "{said}");
        assert_eq!(runs(&setup), 100, "{said}");
        // … and what it says works: every line of today's file runs.
        setup.run_once(&["--no-resume"]);
        assert_eq!(runs(&setup), 250);
    }
    let done = Setup::done(&setup.path("state/outcomes.db"));
    assert_eq!(done.len(), 150);
    assert!(done.iter().all(|(_, output)| output.starts_with("today ")), "{done:?}");

    // From then on the records are today's file's: a rerun resumes, and an
    // append runs only the new lines.
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 250);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(setup.path("input.txt"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"today 151\n").unwrap();
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 251);
}

#[test]
fn no_resume_re_runs_everything() {
    let setup = Setup::new();
    lines_config(&setup, "at_least_once");
    setup.lines("reading", 50);
    setup.run_once(&["--resume"]);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 50, "the default resumes");
    setup.run_once(&["--no-resume"]);
    assert_eq!(runs(&setup), 100, "--no-resume runs every line again");
    setup.run_once(&["--no-resume", "--resume"]);
    assert_eq!(runs(&setup), 100, "the last of the two switches wins");

    // exactly_once promises never to re-run a durable item: refused.
    lines_config(&setup, "exactly_once");
    let refused = setup.run(&["run", "--once", "--no-resume", "-c", "config.yaml"]);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("--no-resume") && said.contains("exactly_once"), "{said}");
    assert_eq!(runs(&setup), 100);
}

/// As [`lines_config`] (at least once), reading at most `max_items` lines
/// per run when given.
fn lines_config_reading_at_most(setup: &Setup, max_items: Option<usize>) {
    let session = max_items.map_or(String::new(), |n| format!("session:\n  max_items: {n}\n"));
    setup.config(&format!(
        "{session}source: {{kind: lines, path: ../input.txt}}\n{}  qos: at_least_once\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n",
        counting_handler(setup)
    ));
}

#[test]
fn a_no_resume_pass_stopped_halfway_is_not_silently_resumed() {
    let setup = Setup::new();
    lines_config_reading_at_most(&setup, None);
    setup.lines("yesterday", 100);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 100);

    // Today's file; its --no-resume pass stops after 40 lines (max_items
    // stands for a signal, a kill, a full disk).
    setup.lines("today", 150);
    lines_config_reading_at_most(&setup, Some(40));
    setup.run_once(&["--no-resume"]);
    assert_eq!(runs(&setup), 140);

    // A plain run must not take yesterday's records of lines 41..100 for
    // today's: it refuses before anything runs, saying what to do.
    lines_config_reading_at_most(&setup, None);
    let resumed = setup.run(&["run", "--once", "-c", "config.yaml"]);
    let said = text(&resumed);
    assert_eq!(
        resumed.status.code(),
        Some(1),
        "today's lines 41..100 were skipped: {said}"
    );
    assert!(
        said.contains("did not finish") && said.contains("--no-resume again"),
        "{said}"
    );
    assert_eq!(runs(&setup), 140, "{said}");

    // What it says works; once that pass is finished, runs resume.
    setup.run_once(&["--no-resume"]);
    assert_eq!(runs(&setup), 290);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 290);
    let done = Setup::done(&setup.path("state/outcomes.db"));
    assert_eq!(done.len(), 150);
    assert!(done.iter().all(|(_, output)| output.starts_with("today ")), "{done:?}");

    // Over the file the records already are of, a --no-resume pass stopped
    // halfway leaves nothing to confuse: a plain run resumes.
    lines_config_reading_at_most(&setup, Some(40));
    setup.run_once(&["--no-resume"]);
    assert_eq!(runs(&setup), 330);
    lines_config_reading_at_most(&setup, None);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 330);
}

#[test]
fn an_upgrade_without_a_lines_file_record_warns() {
    let setup = Setup::new();
    lines_config_reading_at_most(&setup, None);
    setup.lines("reading", 50);
    setup.run_once(&[]);
    assert_eq!(runs(&setup), 50);

    // The records of a version that kept no identity of their file.
    let identity = setup.path("state/outcomes.db.lines-file");
    fs::remove_file(&identity).unwrap();
    let upgraded = setup.run_once(&[]);
    let said = text(&upgraded);
    assert_eq!(runs(&setup), 50, "it resumes: {said}");
    assert!(
        said.contains("could not be verified") && said.contains("recorded from now on"),
        "no warning that the file was not checked: {said}"
    );
    assert!(identity.exists(), "{said}");

    // From then on it is checked, and quietly.
    let again = setup.run_once(&[]);
    assert!(!text(&again).contains("could not be verified"), "{}", text(&again));
    assert_eq!(runs(&setup), 50);
}
