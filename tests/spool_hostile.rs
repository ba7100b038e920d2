//! The spool against a hostile producer, set up as the package sets it up:
//! the spool directory belongs to lote's user (uid `LOTE`), group `GROUP`,
//! mode 2770; lote runs as `LOTE` with umask 027 (the units' `UMask=`); the
//! producer is another uid (`PRODUCER`) whose only right is its membership of
//! `GROUP`. Real uids through `setpriv`, the real binary, real files (SPEC
//! §3.9, §3.10). Needs root; skipped with a note otherwise.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::text;

const LOTE_BIN: &str = env!("CARGO_BIN_EXE_lote");

/// lote's user, its group (the spool's), and a producer in that group. No
/// passwd entries are needed: `setpriv` takes numbers.
const LOTE: u32 = 64_201;
const GROUP: u32 = 64_202;
const PRODUCER: u32 = 64_203;

fn is_root() -> bool {
    // /proc/self belongs to the effective uid.
    if fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return true;
    }
    eprintln!("skipped: needs root (two real uids through setpriv)");
    false
}

/// A temporary tree: `spool/` (LOTE:GROUP 2770), `state/` (LOTE, 0700),
/// `config.yaml`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let this = Setup { dir };
        let spool = this.path("spool");
        fs::create_dir(&spool).unwrap();
        chown(&spool, Some(LOTE), Some(GROUP)).unwrap();
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o2770)).unwrap();
        let state = this.path("state");
        fs::create_dir(&state).unwrap();
        chown(&state, Some(LOTE), Some(LOTE)).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        this
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, source: &str, handler: &str, session: &str) -> PathBuf {
        let text = format!(
            "state_dir: {state}\nlog: info\nsession:\n{session}\nsource:\n  kind: spool\n  path: {spool}\n  stable_for: 0s\n{source}\
             handler:\n{handler}\nsink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n\
             dead_letter:\n  kind: jsonl\n  path: dead-letter.jsonl\n",
            state = self.path("state").display(),
            spool = self.path("spool").display(),
        );
        let path = self.path("config.yaml");
        fs::write(&path, text).unwrap();
        path
    }

    /// `lote <args>` as lote's user, as the unit runs it.
    fn lote(&self, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={LOTE}"))
            .arg(format!("--regid={GROUP}"))
            .arg("--clear-groups")
            .args(["sh", "-c", "umask 027; exec \"$0\" \"$@\"", LOTE_BIN])
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG");
        command
    }

    fn run_once(&self) -> Output {
        let config = self.path("config.yaml");
        self.lote(&["run", "--once", "-c", config.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn spawn_daemon(&self) -> Child {
        let config = self.path("config.yaml");
        self.lote(&["run", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `script` with `sh` in the spool as the producer (its own uid and
    /// gid, lote's group as a supplementary group, umask 002).
    fn producer(&self, script: &str) {
        let output = Command::new("setpriv")
            .arg(format!("--reuid={PRODUCER}"))
            .arg(format!("--regid={PRODUCER}"))
            .arg(format!("--groups={GROUP}"))
            .args(["sh", "-c", &format!("umask 002; set -e; {script}")])
            .current_dir(self.path("spool"))
            .output()
            .unwrap();
        assert!(output.status.success(), "producer script failed: {}", text(&output));
    }

    /// The names in `rel` (dot-entries included), sorted, lossily.
    fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// (id, error) of every dead letter.
    fn dead_letters(&self) -> Vec<(String, String)> {
        let text = fs::read_to_string(self.path("state/dead-letter.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                let field = |name: &str| record[name].as_str().unwrap_or_default().to_string();
                (field("id"), field("error"))
            })
            .collect()
    }

    /// The ids in outcomes.db (lote has exited).
    fn outcome_ids(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.path("state/outcomes.db")).unwrap();
        let mut s = conn.prepare("SELECT id FROM outcomes ORDER BY id").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

/// Polls `done` every 20 ms for up to 15 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then the exit and stderr.
fn stop(mut child: Child) -> (Option<i32>, String) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("lote did not stop within 15 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), err)
}

/// Every file under `dir` (recursively, links not followed) whose bytes
/// contain `marker`.
fn files_containing(dir: &Path, marker: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(files_containing(&path, marker));
        } else if meta.is_file() && fs::read(&path).unwrap().windows(marker.len()).any(|w| w == marker) {
            found.push(path);
        }
    }
    found
}

const NOOP: &str = "  kind: noop\n";

#[test]
fn a_producer_cannot_redirect_lotes_moves_into_the_state_dir() {
    if !is_root() {
        return;
    }
    let b = Setup::new();
    b.config("  max_bytes: 100\n", NOOP, "  threads: 1\n  chunk: 1");
    let lote = b.spawn_daemon();
    b.producer("echo warm > .warm && mv .warm warmup");
    wait_for("warmup in done/", || b.path("spool/done/warmup").exists());
    let state = b.path("state");
    let db_ino = fs::metadata(state.join("outcomes.db")).unwrap().ino();

    // The attack: failed/ is empty, so a group member may remove it; a
    // symlink to the state dir takes its place, and an oversized file named
    // like lote's database is dropped, to be dead-lettered "into failed/".
    b.producer(&format!(
        "rmdir failed && ln -s {} failed && \
         {{ echo PRODUCER-MARKER; head -c 300 /dev/zero | tr '\\0' x; }} > .o && mv .o outcomes.db",
        state.display()
    ));
    wait_for("the producer's outcomes.db dead-lettered", || {
        b.dead_letters().iter().any(|(id, _)| id == "outcomes.db")
    });
    // One more item after it: once it is done, the dead letter's ack came and went.
    b.producer("echo after > .after && mv .after after");
    wait_for("after in done/", || b.path("spool/done/after").exists());
    let (code, err) = stop(lote);
    assert_eq!(code, Some(0), "{err}");

    // lote's database is its own, untouched; nothing reached the state dir
    // through the link; the producer's file is still in the spool.
    assert_eq!(fs::metadata(state.join("outcomes.db")).unwrap().ino(), db_ino);
    assert_eq!(files_containing(&state, b"PRODUCER-MARKER"), Vec::<PathBuf>::new());
    assert_eq!(b.outcome_ids(), vec!["after", "outcomes.db", "warmup"]);
    assert!(fs::symlink_metadata(b.path("spool/failed"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        b.path("spool/.claimed/outcomes.db").exists(),
        "{:?}",
        b.names("spool/.claimed")
    );
    assert!(err.contains("is not a directory") && err.contains("failed"), "{err}");
}

#[test]
fn a_file_hard_linked_into_the_spool_is_never_read() {
    if !is_root() {
        return;
    }
    let b = Setup::new();
    b.config("", "  kind: exec\n  command: [/bin/cat]\n", "  threads: 1");
    // A file of lote's own that the producer cannot read.
    let secret = b.path("state/secret");
    fs::write(&secret, "TOP-SECRET-MARKER\n").unwrap();
    chown(&secret, Some(LOTE), Some(LOTE)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    // With fs.protected_hardlinks=0 the producer links it itself; the
    // default (1) forbids that, so root makes the same link here.
    fs::hard_link(&secret, b.path("spool/stolen.json")).unwrap();
    b.producer("echo normal > .n && mv .n normal.json");

    let output = b.run_once();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert_eq!(
        files_containing(&b.path("state"), b"TOP-SECRET-MARKER"),
        vec![secret.clone()],
        "the secret was read into lote's records"
    );
    let dead = b.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "stolen.json");
    assert!(
        dead[0].1.contains("2 hard links") && dead[0].1.contains("refused unread"),
        "{dead:?}"
    );
    // The link itself went to failed/; the secret is as it was.
    assert_eq!(
        fs::metadata(b.path("spool/failed/stolen.json")).unwrap().ino(),
        fs::metadata(&secret).unwrap().ino()
    );
    assert_eq!(fs::read(&secret).unwrap(), b"TOP-SECRET-MARKER\n");
    assert_eq!(b.names("spool/done"), vec!["normal.json"]);
}

#[test]
fn an_existing_file_in_done_or_failed_is_never_replaced() {
    if !is_root() {
        return;
    }
    let b = Setup::new();
    b.config("  max_bytes: 20\n", NOOP, "  threads: 1");
    let drop_both = |version: &str| {
        b.producer(&format!(
            "echo {version} > .x && mv .x x.json && \
             {{ echo {version}; head -c 40 /dev/zero | tr '\\0' y; }} > .y && mv .y y.json"
        ))
    };
    drop_both("first");
    let output = b.run_once();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    // The producer reuses both names.
    drop_both("second");
    let output = b.run_once();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));

    for (sub, name) in [("done", "x.json"), ("failed", "y.json")] {
        let names = b.names(&format!("spool/{sub}"));
        assert_eq!(names.len(), 2, "{sub}: {names:?}");
        assert_eq!(names[0], name);
        assert!(
            names[1].starts_with(&format!("{name}.~")) && names[1].ends_with('~'),
            "{names:?}"
        );
        let read = |n: &str| fs::read_to_string(b.path(&format!("spool/{sub}/{n}"))).unwrap();
        assert!(read(&names[0]).starts_with("first"), "{sub}/{name} was replaced");
        assert!(read(&names[1]).starts_with("second"));
    }
}

#[test]
fn fifos_sockets_devices_directories_and_odd_names_are_dead_lettered_with_a_reason() {
    if !is_root() {
        return;
    }
    let b = Setup::new();
    b.config("", NOOP, "  threads: 2");
    let spool = b.path("spool");
    b.producer("mkfifo pipe && mkdir subdir && echo inner > subdir/inner && echo a > a.json && echo b > b.json");
    // A directory lote may not move (the producer's, mode 0755): it stays,
    // logged once, and nothing else waits for it.
    b.producer("mkdir locked-dir && chmod 0755 locked-dir");
    let _socket = std::os::unix::net::UnixListener::bind(spool.join("sock")).unwrap();
    for (name, kind, dev) in [("char-dev", "c", "1 3"), ("block-dev", "b", "7 200")] {
        let status = Command::new("mknod")
            .arg(spool.join(name))
            .arg(kind)
            .args(dev.split(' '))
            .status()
            .unwrap();
        assert!(status.success(), "mknod {name}");
    }
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.json");
    fs::write(spool.join(odd), "odd").unwrap();
    for name in ["sock", "char-dev", "block-dev", "caf\u{fffd}.json"] {
        let path = fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy() == name)
            .unwrap();
        std::os::unix::fs::lchown(&path, Some(PRODUCER), Some(GROUP)).unwrap();
    }

    let output = b.run_once();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);

    // The normal files are done; every odd entry is in failed/, with a
    // dead letter that says why; only the unmovable directory is left.
    assert_eq!(b.names("spool/done"), vec!["a.json", "b.json"]);
    let expected = [
        ("block-dev", "it is a block device"),
        ("caf%E9.json", "its name is not UTF-8"),
        ("char-dev", "it is a character device"),
        ("pipe", "it is a FIFO"),
        ("sock", "it is a socket"),
        ("subdir", "it is a directory"),
    ];
    assert_eq!(
        b.names("spool/failed"),
        expected.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(fs::read(spool.join("failed/subdir/inner")).unwrap(), b"inner\n");
    let mut dead = b.dead_letters();
    dead.sort();
    assert_eq!(dead.len(), expected.len(), "{dead:?}");
    for ((id, error), (want_id, why)) in dead.iter().zip(expected) {
        assert_eq!(id, want_id);
        assert!(error.contains(why), "{id}: {error}");
    }
    assert_eq!(
        b.names("spool"),
        vec![".claimed", ".lote.lock", "done", "failed", "locked-dir"]
    );
    assert!(
        stderr.contains("locked-dir is a directory and cannot be moved"),
        "{stderr}"
    );
    // A second run finds nothing to do and does not stumble on locked-dir.
    let output = b.run_once();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}
