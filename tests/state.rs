//! What lote leaves in its state directory and picks up again, driven through
//! the real binary: the outcomes database after a clean exit, what a lines
//! source resumes from, rotation against done lookups, and two instances
//! starting at once on fresh state.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

const LOTE: &str = env!("CARGO_BIN_EXE_lote");

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Writes `config.yaml` with `state_dir` in the temp dir.
    fn config(&self, body: &str) -> PathBuf {
        let path = self.path("config.yaml");
        let text = format!("state_dir: {}\nlog: info\n{body}", self.path("state").display());
        fs::write(&path, text).unwrap();
        path
    }
    fn lote(&self, args: &[&str]) -> Command {
        let mut command = Command::new(LOTE);
        command.args(args).current_dir(self.dir.path()).env_remove("RUST_LOG");
        command
    }
    fn run(&self, args: &[&str]) -> Output {
        self.lote(args).output().unwrap()
    }
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

fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
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
