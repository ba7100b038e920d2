//! An idle daemon's spool source wakes when a file arrives, not when
//! `poll_every` comes round (inotify; README "Spool"): with `poll_every: 1h`
//! an item dropped into a running daemon's spool is taken within a second,
//! whether the producer renames it in or writes it in place (then it waits
//! `stable_for`, and no more).
//!
//! The real binary over a real spool; it signals only the child it starts.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Setup;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The promise: taken this soon after it arrives, although `poll_every` is 1h.
const TAKEN_WITHIN: Duration = Duration::from_secs(1);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn start(setup: &Setup, stable_for: &str) -> (Daemon, PathBuf) {
    let spool = setup.path("spool");
    let config = setup.config(&format!(
        "session:\n  poll_every: 1h\nsource:\n  kind: spool\n  path: {}\n  stable_for: {stable_for}\n\
         handler:\n  kind: noop\nsink:\n  kind: jsonl\n  path: outcomes.jsonl\n",
        spool.display()
    ));
    let child = setup
        .lote(&["run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    // Opened (`.claimed/` made), then idle: its first pull found nothing
    // and it waits.
    let opened = Instant::now();
    while !spool.join(".claimed").is_dir() {
        assert!(opened.elapsed() < Duration::from_secs(10), "the spool was not opened");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(500));
    (daemon, spool)
}

/// How long until `name` has left `<spool>/` (claimed), at most 5 s.
fn taken_after(spool: &Path, name: &str, since: Instant) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(5) {
        if !spool.join(name).exists() {
            return Some(since.elapsed());
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_file_renamed_into_an_idle_spool_is_taken_at_once() {
    let setup = Setup::new();
    let (_daemon, spool) = start(&setup, "0s");
    for name in ["first.txt", "second.txt"] {
        let hidden = spool.join(format!(".{name}.tmp"));
        fs::write(&hidden, "payload").unwrap();
        let dropped = Instant::now();
        fs::rename(&hidden, spool.join(name)).unwrap();
        let took = taken_after(&spool, name, dropped);
        assert!(
            took.is_some_and(|t| t < TAKEN_WITHIN),
            "{name} renamed into an idle spool (poll_every 1h) was taken after {took:?}, not within {TAKEN_WITHIN:?}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_file_written_in_place_is_taken_once_stable_for_has_passed() {
    let setup = Setup::new();
    let (_daemon, spool) = start(&setup, "300ms");
    let dropped = Instant::now();
    fs::write(spool.join("in-place.txt"), "payload").unwrap();
    let took = taken_after(&spool, "in-place.txt", dropped);
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(300) && t < TAKEN_WITHIN),
        "a file written in place (stable_for 300ms, poll_every 1h) was taken after {took:?}, \
         not between 300ms and {TAKEN_WITHIN:?}"
    );
}

/// A breaker that skips hands its items back to the spool, and the moves
/// back are heard as arrivals: they must not offer the items again at once,
/// or a quiet spool spins (claim, skip, put back) for all of `open_for`. As
/// when the spool was polled, a given-back item comes round about once a
/// second.
#[test]
fn items_a_skipping_breaker_gives_back_do_not_spin_on_a_quiet_spool() {
    let setup = Setup::new();
    let spool = setup.path("spool");
    fs::create_dir_all(&spool).unwrap();
    // The first item fails (exit 1, retryable, one attempt) and opens the
    // breaker; the second is then skipped, again and again.
    for name in ["1-opens.txt", "2-skipped.txt"] {
        fs::write(spool.join(name), "payload").unwrap();
    }
    let config = setup.config(&format!(
        "session:\n  threads: 1\n  poll_every: 1h\nsource:\n  kind: spool\n  path: {}\n  stable_for: 0s\n\
         handler:\n  kind: exec\n  command: [/bin/false]\n  retry: {{attempts: 1}}\n\
         \x20 breaker: {{failures: 1, open_for: 1h, when_open: skip}}\n\
         sink:\n  kind: jsonl\n  path: outcomes.jsonl\nmetrics:\n  every: 1s\n",
        spool.display()
    ));
    let child = setup
        .lote(&["run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    thread::sleep(Duration::from_secs(4));
    let status: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(setup.path("state/status.json")).unwrap()).unwrap();
    let returned = status["counters"]["returned"].as_u64().expect("counters.returned");
    assert!(
        (1..=8).contains(&returned),
        "the skipped item was given back {returned} time(s) in 4 s (about once a second expected): {status}"
    );
}
