//! The real binary, as a user drives it: `lote run --once` over a spool with
//! an exec handler, the deadline's exit code, SIGTERM (once and twice), the
//! http handler against a real server on 127.0.0.1 that fails then recovers,
//! `lote check` on bad configs, `lote status`, `lote dead-letter`.
//!
//! One file per scenario family would be tidier for signals; these tests
//! signal only the child processes they start, never the test process.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::{text, Setup, LOTE};

impl Setup {
    fn spool(&self, n: usize) -> PathBuf {
        let spool = self.path("spool");
        fs::create_dir_all(&spool).unwrap();
        for i in 0..n {
            fs::write(spool.join(format!("item-{i:04}.txt")), format!("payload {i}\n")).unwrap();
        }
        spool
    }
    fn spawn(&self, args: &[&str]) -> Child {
        self.lote(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    fn files_in(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.path(rel)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "done" && n != "failed")
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
    /// (id, status) of every outcome record in state/outcomes.db.
    fn outcomes(&self) -> Vec<(String, String)> {
        let db = self.path("state/outcomes.db");
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut s = conn.prepare("SELECT id, status FROM outcomes ORDER BY id").unwrap();
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

fn spool_config(spool: &Path, handler: &str, session: &str) -> String {
    format!(
        "session:\n{session}\nsource:\n  kind: spool\n  path: {}\n  stable_for: 0s\n{handler}\nsink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\ndead_letter:\n  kind: jsonl\n  path: dead-letter.jsonl\nmetrics:\n  every: 100ms\n  textfile: lote.prom\n",
        spool.display()
    )
}

/// Waits for the child to exit, at most `limit`.
fn wait(child: &mut Child, limit: Duration) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), started.elapsed(), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("lote did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_once_over_a_spool_with_an_exec_handler_does_every_item_once() {
    let setup = Setup::new();
    let spool = setup.spool(25);
    let runs = setup.path("runs.log");
    let handler = format!(
        "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"echo \\\"$LOTE_ITEM_ID\\\" >> {}; tr a-z A-Z\"]\n  qos: exactly_once",
        runs.display()
    );
    let config = setup.config(&spool_config(&spool, &handler, "  threads: 3\n  chunk: 4"));
    let output = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let outcomes = setup.outcomes();
    assert_eq!(outcomes.len(), 25);
    assert!(outcomes.iter().all(|(_, status)| status == "done"), "{outcomes:?}");
    let ran = fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().count(), 25, "each item ran exactly once");
    assert!(setup.files_in("spool").is_empty(), "nothing left in the spool");
    assert_eq!(setup.files_in("spool/done").len(), 25, "every file moved to done/");
    // The output is the command's stdout.
    let conn = rusqlite::Connection::open(setup.path("state/outcomes.db")).unwrap();
    let output: String = conn
        .query_row("SELECT output FROM outcomes WHERE id = 'item-0003.txt'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(output, "PAYLOAD 3\n");
    // `lote status` reads the status file the run left.
    let status = setup.run(&["status", "-c", config.to_str().unwrap(), "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["state"], "stopped");
    assert_eq!(json["counters"]["done"], 25);
    assert!(fs::read_to_string(setup.path("state/lote.prom"))
        .unwrap()
        .contains("lote_items_total"));
}

#[test]
fn failed_items_give_exit_code_3_and_land_in_dead_letters_and_failed_dir() {
    let setup = Setup::new();
    let spool = setup.spool(6);
    // Items whose payload mentions 3 or 5 exit 65 (fatal).
    let handler = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"grep -q -e 'payload [35]' && exit 65; cat\"]\n  fatal_exit_codes: [65]";
    let config = setup.config(&spool_config(&spool, handler, "  threads: 2"));
    let output = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert_eq!(setup.files_in("spool/failed"), vec!["item-0003.txt", "item-0005.txt"]);
    let list = setup.run(&["dead-letter", "list", "-c", config.to_str().unwrap()]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("item-0003.txt") && listed.contains("exit code 65"),
        "{listed}"
    );

    // Requeue one: it is back in the spool with its payload.
    let requeue = setup.run(&[
        "dead-letter",
        "requeue",
        "-c",
        config.to_str().unwrap(),
        "--id",
        "item-0003.txt",
    ]);
    assert_eq!(requeue.status.code(), Some(0), "{}", text(&requeue));
    assert_eq!(fs::read_to_string(spool.join("item-0003.txt")).unwrap(), "payload 3\n");
}

#[test]
fn the_deadline_exits_4_with_items_left_and_a_second_run_finishes_them_without_reruns() {
    let setup = Setup::new();
    let spool = setup.spool(12);
    let runs = setup.path("runs.log");
    let handler = format!(
        "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"echo \\\"$LOTE_ITEM_ID\\\" >> {}; sleep 0.2\"]\n  qos: exactly_once",
        runs.display()
    );
    let config = setup.config(&spool_config(&spool, &handler, "  threads: 2\n  deadline: 500ms"));
    let started = Instant::now();
    let first = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert_eq!(first.status.code(), Some(4), "{}", text(&first));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let left = setup.files_in("spool");
    assert!(!left.is_empty() && left.len() < 12, "some items left pending: {left:?}");

    let second = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert!(matches!(second.status.code(), Some(0) | Some(4)), "{}", text(&second));
    let third = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert!(matches!(third.status.code(), Some(0) | Some(4)), "{}", text(&third));
    let fourth = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    assert_eq!(fourth.status.code(), Some(0), "{}", text(&fourth));
    assert_eq!(setup.outcomes().len(), 12);
    let ran = fs::read_to_string(&runs).unwrap();
    let mut ids: Vec<&str> = ran.lines().collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "no item ran twice");
}

#[test]
fn sigterm_stops_gracefully_and_a_second_sigterm_kills_the_children() {
    // Graceful: each item takes 300 ms; SIGTERM mid-run → exit 0 within one
    // item plus the flush, nothing lost.
    let setup = Setup::new();
    let spool = setup.spool(40);
    let handler = "handler:\n  kind: exec\n  command: [\"sleep\", \"0.3\"]";
    let config = setup.config(&spool_config(&spool, handler, "  threads: 2"));
    let mut child = setup.spawn(&["run", "-c", config.to_str().unwrap()]);
    thread::sleep(Duration::from_millis(800));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (code, took, err) = wait(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_millis(300 + 1500), "took {took:?}\n{err}");
    let done = setup.outcomes().len();
    let pending = setup.files_in("spool").len();
    assert_eq!(
        done + pending,
        40,
        "every item done or still pending: {done} + {pending}\n{err}"
    );
    assert!(done > 0 && pending > 0);

    // Hurry: items take 30 s; the first SIGTERM waits for them, the second
    // kills them at once.
    let setup = Setup::new();
    let spool = setup.spool(4);
    let pids = setup.path("pids");
    let handler = format!(
        "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"echo $$ >> {}; exec sleep 30\"]\n  kill_grace: 200ms",
        pids.display()
    );
    let config = setup.config(&spool_config(&spool, &handler, "  threads: 2"));
    let mut child = setup.spawn(&["run", "-c", config.to_str().unwrap()]);
    let started = Instant::now();
    while fs::read_to_string(&pids).map(|p| p.lines().count()).unwrap_or(0) < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "children never started");
        thread::sleep(Duration::from_millis(20));
    }
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIGTERM waits for the items in hand"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    let (code, took, err) = wait(&mut child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(3), "hurry took {took:?}\n{err}");
    assert!(matches!(code, Some(0)), "{err}");
    for line in fs::read_to_string(&pids).unwrap().lines() {
        let alive = Path::new(&format!("/proc/{line}")).exists();
        assert!(!alive, "exec child {line} outlived lote");
    }
    assert_eq!(setup.files_in("spool").len(), 4, "cut-short items are pending again");
}

/// A server on 127.0.0.1 that answers 503 to the first `failures` requests,
/// then 200. Stops when `stop` is set; counts requests.
fn flaky_server(failures: usize) -> (String, Arc<AtomicBool>, Arc<AtomicUsize>, thread::JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", server.server_addr().to_ip().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&count));
    let handle = thread::spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let n = counting.fetch_add(1, Ordering::SeqCst);
            let response = if n < failures {
                tiny_http::Response::from_string("busy").with_status_code(503)
            } else {
                tiny_http::Response::from_string(format!("stored {body}")).with_status_code(200)
            };
            let _ = request.respond(response);
        }
    });
    (url, stop, count, handle)
}

#[test]
fn the_http_handler_rides_out_a_failing_server_with_retries_and_the_breaker() {
    let (url, stop, count, server) = flaky_server(6);
    let setup = Setup::new();
    let spool = setup.spool(10);
    let handler = format!(
        "handler:\n  kind: http\n  url: {url}\n  timeout: 2s\n  retry: {{ attempts: 6, backoff: 20ms, max_backoff: 100ms, jitter: 0.2 }}\n  breaker: {{ failures: 3, open_for: 200ms, half_open_probes: 1, when_open: wait }}"
    );
    let config = setup.config(&spool_config(&spool, &handler, "  threads: 2"));
    let output = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(count.load(Ordering::SeqCst) >= 16, "10 items + 6 failures");
    let outcomes = setup.outcomes();
    assert_eq!(outcomes.len(), 10);
    assert!(outcomes.iter().all(|(_, s)| s == "done"), "{outcomes:?}");
    assert!(
        !setup.path("state/dead-letter.jsonl").exists()
            || fs::read_to_string(setup.path("state/dead-letter.jsonl"))
                .unwrap()
                .is_empty(),
        "nothing dead-lettered"
    );
    let prom = fs::read_to_string(setup.path("state/lote.prom")).unwrap();
    let value = |name: &str| -> f64 {
        prom.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in the textfile:\n{prom}"))
    };
    assert!(value("lote_retries_total") >= 1.0, "retries visible in the metrics");
    assert!(
        value("lote_breaker_opens_total") >= 1.0,
        "the breaker opened and it shows"
    );
}

#[test]
fn check_accepts_the_reference_config_and_refuses_bad_ones_with_where_and_what() {
    let setup = Setup::new();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let ok = Command::new(LOTE)
        .args(["check", "-c", reference.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("threads"),
        "prints the effective config"
    );

    for (body, expect) in [
        (
            "session:\n  threads: 0\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
            "threads",
        ),
        (
            "session:\n  thread: 2\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
            "thread",
        ),
        (
            "session:\n  deadline: soon\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
            "deadline",
        ),
        (
            "source: {kind: lines, path: x}\nhandler: {kind: exec, command: \"rm -rf /\"}\n",
            "command",
        ),
    ] {
        let config = setup.config(body);
        let output = setup.run(&["check", "-c", config.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&output.stderr);
        eprintln!("{err}");
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(err.contains("config.yaml") && err.contains(expect), "{err}");
    }
    // Usage errors exit 2.
    assert_eq!(setup.run(&["run", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(setup.run(&["--help"]).status.code(), Some(0));
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_runs_sessions_on_a_period_and_sighup_reloads_or_keeps_the_old_config() {
    let setup = Setup::new();
    let spool = setup.spool(3);
    let body = |command: &str| {
        spool_config(
            &spool,
            &format!("handler:\n  kind: exec\n  command: {command}"),
            "  threads: 2\n  every: 300ms",
        )
    };
    let config = setup.config(&body(r#"["cat"]"#));
    let mut child = setup.spawn(&["run", "-c", config.to_str().unwrap()]);
    let pid = Pid::from_raw(child.id() as i32);
    let outputs = |setup: &Setup| -> Vec<(String, String)> {
        let Ok(conn) = rusqlite::Connection::open(setup.path("state/outcomes.db")) else {
            return Vec::new();
        };
        let Ok(mut s) = conn.prepare("SELECT id, output FROM outcomes ORDER BY id") else {
            return Vec::new();
        };
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap_or_default()
    };
    wait_for("the first session", Duration::from_secs(10), || {
        outputs(&setup).len() == 3
    });

    // A later tick takes files that arrive later.
    fs::write(spool.join("late-1.txt"), "late one\n").unwrap();
    wait_for("a later session", Duration::from_secs(10), || {
        outputs(&setup).len() == 4
    });

    // An invalid config on SIGHUP: logged, the old one stays.
    fs::write(&config, "session: {threads: 0}\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    fs::write(spool.join("late-2.txt"), "late two\n").unwrap();
    wait_for("a session after the bad reload", Duration::from_secs(10), || {
        outputs(&setup).len() == 5
    });

    // A valid one on SIGHUP: applied at the next session boundary.
    fs::write(
        &config,
        format!(
            "state_dir: {}\nlog: info\n{}",
            setup.path("state").display(),
            body(r#"["tr", "a-z", "A-Z"]"#)
        ),
    )
    .unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    thread::sleep(Duration::from_millis(800));
    fs::write(spool.join("late-3.txt"), "late three\n").unwrap();
    wait_for("a session after the reload", Duration::from_secs(10), || {
        outputs(&setup).len() == 6
    });
    let all = outputs(&setup);
    let late3 = all.iter().find(|(id, _)| id == "late-3.txt").unwrap();
    assert_eq!(late3.1, "LATE THREE\n", "the reloaded handler ran it");

    kill(pid, Signal::SIGUSR1).unwrap();
    thread::sleep(Duration::from_millis(600));
    kill(pid, Signal::SIGTERM).unwrap();
    let (code, _, err) = wait(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("keeping the old one"),
        "the bad config was reported:\n{err}"
    );
    assert!(err.contains("config reloaded"), "{err}");
    assert!(err.contains("workers"), "SIGUSR1 logged a status line:\n{err}");
}

#[test]
fn a_lines_source_reads_standard_input() {
    use std::io::Write as _;
    let setup = Setup::new();
    let config = setup.config(
        "source:\n  kind: lines\n  path: \"-\"\n  format: ndjson\nhandler:\n  kind: exec\n  command: [\"cat\"]\nsink:\n  kind: jsonl\n  path: outcomes.jsonl\n  rotate_bytes: 0\n",
    );
    let mut child = setup
        .lote(&["run", "--once", "-c", config.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..5 {
        writeln!(stdin, r#"{{"id": "reading-{i}", "payload": "value {i}"}}"#).unwrap();
    }
    writeln!(stdin, "not json").unwrap();
    drop(stdin);
    let (code, _, err) = wait(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(3), "the malformed line failed: {err}");
    let records = fs::read_to_string(setup.path("state/outcomes.jsonl")).unwrap();
    for i in 0..5 {
        assert!(
            records.contains(&format!(r#""id":"reading-{i}","status":"done""#)),
            "{records}"
        );
    }
    let dead = fs::read_to_string(setup.path("state/dead-letter.jsonl")).unwrap();
    assert!(dead.contains("line 6") && dead.contains("not json"), "{dead}");
}

/// SPEC §3.8: an I/O error is exit 1. A source that cannot be read (here
/// standard input is a directory: EISDIR on the first read) ends the run
/// with 1, under `--once` and as a daemon alike, so a timer or systemd's
/// `Restart=on-failure` sees it.
#[test]
fn a_source_that_fails_ends_the_run_with_exit_1() {
    let setup = Setup::new();
    let config = setup.config("source:\n  kind: lines\n  path: \"-\"\nhandler:\n  kind: noop\n");
    for once in [true, false] {
        let mut args = vec!["run", "-c", config.to_str().unwrap()];
        if once {
            args.insert(1, "--once");
        }
        let mut child = setup
            .lote(&args)
            .stdin(fs::File::open(setup.path("")).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (code, _, err) = wait(&mut child, Duration::from_secs(20));
        assert_eq!(code, Some(1), "once: {once}: {err}");
        assert!(err.contains("source failed"), "{err}");
    }
}

#[test]
fn check_quiet_prints_nothing_on_success_and_still_refuses_a_bad_config() {
    let setup = Setup::new();
    let spool = setup.spool(0);
    let good = setup.config(&spool_config(&spool, "handler:\n  kind: noop", "  threads: 1"));
    let output = setup.run(&["check", "--quiet", "-c", good.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "--quiet printed something on a valid config:\n{}",
        text(&output)
    );

    let bad = setup.config("session:\n  threads: 0\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n");
    let output = setup.run(&["check", "-q", "-c", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(output.stdout.is_empty(), "{}", text(&output));
    assert!(err.contains("config.yaml:") && err.contains("threads"), "{err}");
}

/// A continuous spool daemon whose stderr goes to `lote.log`.
fn spawn_logged(setup: &Setup, config: &Path) -> Child {
    let log = fs::File::create(setup.path("lote.log")).unwrap();
    setup
        .lote(&["run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The child's exit code; panics if it has not exited within `limit`.
fn exit_code_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(started.elapsed() < limit, "lote did not exit within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if a test fails before it exits.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_double_reload_failure_stops_lote_with_exit_1() {
    let setup = Setup::new();
    let spool = setup.spool(1);
    let config = setup.config(&spool_config(
        &spool,
        "handler:\n  kind: noop",
        "  threads: 1\n  chunk: 1",
    ));
    let mut lote = KillOnDrop(spawn_logged(&setup, &config));
    let pid = Pid::from_raw(lote.0.id() as i32);
    wait_for("the first item", Duration::from_secs(10), || {
        rusqlite::Connection::open(setup.path("state/outcomes.db"))
            .and_then(|c| c.query_row("SELECT count(*) FROM outcomes", [], |r| r.get::<_, i64>(0)))
            .is_ok_and(|n| n == 1)
    });

    // The config stays valid, but neither it nor the old one can open the
    // sink any more: outcomes.db is no longer a database. (The running
    // writer keeps its open files; without its -wal and -shm, whose pages
    // would hide the garbage, a new connection reads the bad header.)
    let db = setup.path("state/outcomes.db");
    fs::rename(&db, setup.path("state/moved.db")).unwrap();
    for aside in ["state/outcomes.db-wal", "state/outcomes.db-shm"] {
        let _ = fs::remove_file(setup.path(aside));
    }
    fs::write(&db, vec![b'x'; 8192]).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();

    // Today's lote would log the second failure and run on.
    let code = exit_code_within(&mut lote.0, Duration::from_secs(15));
    let log = fs::read_to_string(setup.path("lote.log")).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("rebuilding the old parts failed too"), "{log}");
}

#[test]
fn a_reload_keeps_an_open_breaker_open() {
    // A server that always fails: the breaker opens at the first failure
    // and the item's retry waits for it (open_for 60 s).
    let (url, stop, count, server) = flaky_server(usize::MAX);
    let setup = Setup::new();
    let spool = setup.spool(1);
    let handler = format!(
        "handler:\n  kind: http\n  url: {url}\n  timeout: 2s\n  retry: {{ attempts: 3, backoff: 10ms }}\n  \
         breaker: {{ failures: 1, open_for: 60s, when_open: wait }}"
    );
    let config = setup.config(&spool_config(&spool, &handler, "  threads: 1\n  poll_every: 50ms"));
    let mut lote = KillOnDrop(spawn_logged(&setup, &config));
    let pid = Pid::from_raw(lote.0.id() as i32);
    let breaker = || -> Option<(String, u64)> {
        let text = fs::read_to_string(setup.path("state/status.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let b = &json["breaker"];
        Some((b["state"].as_str()?.to_string(), b["opens"].as_u64()?))
    };
    let log = || fs::read_to_string(setup.path("lote.log")).unwrap_or_default();
    wait_for("the breaker to open", Duration::from_secs(10), || {
        breaker().is_some_and(|(state, _)| state == "open")
    });
    let calls = count.load(Ordering::SeqCst);
    assert_eq!(calls, 1, "one call opened it");

    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the reload", Duration::from_secs(10), || {
        log().contains("config reloaded")
    });
    // The item is claimed again at once by the new session; a breaker
    // reset by the reload would let it call the server again.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count.load(Ordering::SeqCst),
        calls,
        "the reload let a call through the open breaker:\n{}",
        log()
    );
    assert_eq!(breaker(), Some(("open".to_string(), 1)), "{}", log());

    kill(pid, Signal::SIGTERM).unwrap();
    let code = exit_code_within(&mut lote.0, Duration::from_secs(10));
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert_eq!(code, Some(0), "{}", log());
}
