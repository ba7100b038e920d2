//! A full disk under the real binary: lote's `state_dir` is a 1 MiB tmpfs
//! that the test fills with a filler file, so every flush to the SQLite sink
//! fails for real (`SQLITE_FULL`). Mounting needs root: without it each test
//! says so and passes (CI runs as root).
//!
//! - A daemon gives the items of a failed flush back to the spool and
//!   finishes them on its own once the disk has room again.
//! - `run --once` whose outcomes could not be saved exits 1 and says how
//!   many, and they run again.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LOTE: &str = env!("CARGO_BIN_EXE_lote");

/// True when this process runs as root (the effective uid, from /proc).
fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts one at `path`, or `None` (with a note) when not root.
    fn mount(path: &Path, test: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("{test}: skipped: mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs -o size=1m on {} failed",
            path.display()
        );
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes a filler file until the tmpfs is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = File::create(&filler).unwrap();
        let block = vec![0u8; 16 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last partial block may have gone in byte by byte: no room is left.
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a lote that a failed assertion left running still has files open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A lote process, killed when dropped (a failed test leaves none behind).
struct Lote(Child);

impl Drop for Lote {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops `name` into `spool` the way a producer should: a dot-file, renamed.
fn drop_item(spool: &Path, name: &str) {
    let tmp = spool.join(format!(".{name}.tmp"));
    fs::write(&tmp, format!("payload of {name}\n")).unwrap();
    fs::rename(&tmp, spool.join(name)).unwrap();
}

/// The item files directly in `dir` (no dot-files, no subdirectories).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `done` every 50 ms for up to `limit`; true if it came true.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A config: spool (not on the tmpfs) → noop → SQLite in `state` (the tmpfs).
/// One retry of a failed flush, so a flush fails for good within a second.
fn config(root: &Path, state: &Path, spool: &Path) -> PathBuf {
    let path = root.join("config.yaml");
    let text = format!(
        "state_dir: {}\nlog: info\nsession:\n  threads: 2\n  chunk: 1\n  poll_every: 100ms\n\
         source:\n  kind: spool\n  path: {}\n  stable_for: 0s\nhandler:\n  kind: noop\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n  max_retries: 1\n\
         dead_letter:\n  kind: none\n",
        state.display(),
        spool.display()
    );
    fs::write(&path, text).unwrap();
    path
}

fn log_of(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn daemon_recovers_from_a_failed_flush_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let Some(tmpfs) = Tmpfs::mount(&state, "daemon_recovers_from_a_failed_flush_without_a_restart") else {
        return;
    };
    let spool = root.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    let config = config(root.path(), &state, &spool);
    let log = root.path().join("lote.log");
    let mut lote = Lote(
        Command::new(LOTE)
            .args(["run", "-c", config.to_str().unwrap()])
            .current_dir(root.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let done_dir = spool.join("done");
    let all_done = |n: usize| files_in(&done_dir).len() == n && files_in(&spool).is_empty();

    for i in 0..5 {
        drop_item(&spool, &format!("before-{i}"));
    }
    assert!(
        within(Duration::from_secs(15), || all_done(5)),
        "the first items were never done\n{}",
        log_of(&log)
    );

    // The disk fills up while items keep arriving: their flushes fail.
    let filler = tmpfs.fill();
    for i in 0..10 {
        drop_item(&spool, &format!("during-{i}"));
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        within(Duration::from_secs(15), || log_of(&log)
            .contains("failed after 2 tries")),
        "no flush failed for good on the full disk\n{}",
        log_of(&log)
    );
    thread::sleep(Duration::from_secs(1));
    assert!(files_in(&done_dir).len() < 15, "the disk was never full");

    // Room again: the same process finishes every item by itself.
    fs::remove_file(&filler).unwrap();
    let finished = within(Duration::from_secs(15), || all_done(15));
    assert!(lote.0.try_wait().unwrap().is_none(), "lote exited\n{}", log_of(&log));
    assert!(
        finished,
        "not every item done 15 s after the disk had room again: done {:?}, pending {:?}, claimed {:?}\n{}",
        files_in(&done_dir),
        files_in(&spool),
        files_in(&spool.join(".claimed")),
        log_of(&log)
    );
    let conn = rusqlite::Connection::open(state.join("outcomes.db")).unwrap();
    let done: i64 = conn
        .query_row("SELECT count(*) FROM outcomes WHERE status = 'done'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(done, 15);
    drop(conn);

    kill(Pid::from_raw(lote.0.id() as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = lote.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no exit after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", log_of(&log));
    // The status file tells an operator what the full disk cost.
    let status: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(state.join("status.json")).unwrap()).unwrap();
    let writer = &status["writer"];
    assert!(writer["unsaved"].as_u64().unwrap() >= 1, "{writer}");
    assert!(writer["given_back"].as_u64().unwrap() >= 1, "{writer}");
}

#[test]
fn run_once_never_exits_0_with_outcomes_unsaved() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let Some(tmpfs) = Tmpfs::mount(&state, "run_once_never_exits_0_with_outcomes_unsaved") else {
        return;
    };
    let spool = root.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    let config = config(root.path(), &state, &spool);
    let run_once = || {
        Command::new(LOTE)
            .args(["run", "--once", "-c", config.to_str().unwrap()])
            .current_dir(root.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };

    // A first run creates the database while there is room.
    let first = run_once();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // A reader holds the database open, so its -shm stays allocated: lote
    // then opens it on the full disk, and only its writes fail.
    let reader = rusqlite::Connection::open(state.join("outcomes.db")).unwrap();
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    let filler = tmpfs.fill();

    for i in 0..20 {
        drop_item(&spool, &format!("item-{i:02}"));
    }
    let full = run_once();
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(
        full.status.code(),
        Some(1),
        "unsaved outcomes are an I/O failure\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("20 outcome(s) were not saved") && l.contains("will run again")),
        "no line says how many outcomes were not saved\n{err}"
    );
    assert_eq!(files_in(&spool).len(), 20, "the items are pending again\n{err}");

    // And they do run again, once there is room.
    fs::remove_file(&filler).unwrap();
    drop(reader);
    let again = run_once();
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert_eq!(files_in(&spool.join("done")).len(), 20, "{err}");
}
