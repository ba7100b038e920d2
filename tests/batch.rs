//! Batch calls (SPEC §3.12) through the real binary: a real HTTP receiver
//! on 127.0.0.1 (tiny_http) answering per-item results, real exec scripts
//! reading NDJSON, real signals during a batch's wait and during its call.

mod common;

use std::collections::HashMap;
use std::fs;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{text, Setup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One batch request as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    content_type: Option<String>,
    key: Option<String>,
    /// The NDJSON lines, parsed.
    lines: Vec<serde_json::Value>,
}

impl Seen {
    fn ids(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// How the receiver answers one batch: the lines it has read, and how many
/// times it has seen each id before this request.
type Answer = dyn Fn(&[serde_json::Value], &HashMap<String, u32>) -> (u16, String) + Send + Sync;

/// A batch receiver on 127.0.0.1 that records every request and answers
/// with `answer`, optionally after `delay`, until dropped.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests read so far (counted before the answer's delay).
    arrived: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(delay: Duration, answer: Box<Answer>) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/batch", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let arrived = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (seen, stop, arrived) = (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&arrived));
            thread::spawn(move || {
                let mut times: HashMap<String, u32> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                        continue;
                    };
                    let header = |name: &'static str| {
                        request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.to_string())
                    };
                    let (content_type, key) = (header("Content-Type"), header("Idempotency-Key"));
                    let mut body = String::new();
                    request.as_reader().read_to_string(&mut body).unwrap();
                    let lines: Vec<serde_json::Value> =
                        body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                    arrived.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(delay);
                    let (status, reply) = answer(&lines, &times);
                    for line in &lines {
                        *times.entry(line["id"].as_str().unwrap().to_string()).or_default() += 1;
                    }
                    seen.lock().unwrap().push(Seen {
                        content_type,
                        key,
                        lines,
                    });
                    let _ = request.respond(tiny_http::Response::from_string(reply).with_status_code(status));
                }
            })
        };
        Receiver {
            url,
            seen,
            arrived,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `(id, status, attempts, output, error)` from the sqlite sink, by id.
fn outcomes(setup: &Setup) -> HashMap<String, (String, i64, String, String)> {
    let conn = rusqlite::Connection::open(setup.path("state/outcomes.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, status, attempts, coalesce(output, ''), coalesce(error, '') FROM outcomes")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn write_lines(setup: &Setup, lines: &[(&str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(id, payload)| format!("{{\"id\":\"{id}\",\"payload\":\"{payload}\"}}\n"))
        .collect();
    fs::write(setup.path("items.ndjson"), text).unwrap();
}

fn lines_config(setup: &Setup, handler: &str) -> std::path::PathBuf {
    setup.config(&format!(
        "source: {{kind: lines, path: {}}}\n\
         session: {{threads: 1}}\n\
         {handler}\n\
         sink: {{kind: sqlite, path: outcomes.db}}\n\
         dead_letter: {{kind: jsonl, path: dead.jsonl}}\n",
        setup.path("items.ndjson").display()
    ))
}

#[test]
fn each_item_of_an_http_batch_gets_its_own_outcome_and_only_retryable_ones_go_again() {
    // ok → done at once; fatal → dead-lettered at once; flaky → retryable
    // the first time, then ok; missing → not named the first time, then ok.
    let receiver = Receiver::start(
        Duration::ZERO,
        Box::new(|lines, times| {
            let mut reply = String::new();
            for line in lines {
                let id = line["id"].as_str().unwrap();
                let first = !times.contains_key(id);
                let text = match line["payload"].as_str().unwrap() {
                    "fatal" => format!(r#"{{"id":"{id}","ok":false,"retryable":false,"error":"bad reading"}}"#),
                    "flaky" if first => format!(r#"{{"id":"{id}","ok":false,"retryable":true,"error":"busy"}}"#),
                    "missing" if first => continue,
                    _ => format!(r#"{{"id":"{id}","ok":true,"output":"stored {id}"}}"#),
                };
                reply.push_str(&text);
                reply.push('\n');
            }
            (200, reply)
        }),
    );
    let setup = Setup::new();
    write_lines(
        &setup,
        &[
            ("a", "ok"),
            ("b", "fatal"),
            ("c", "flaky"),
            ("d", "missing"),
            ("e", "ok"),
        ],
    );
    let config = lines_config(
        &setup,
        &format!(
            "handler:\n  kind: http\n  url: {}\n  retry: {{attempts: 3, backoff: 20ms}}\n  \
             batch: {{max_items: 10, max_wait: 300ms}}",
            receiver.url
        ),
    );
    let out = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    // Exit 3: the run ended and some items failed (SPEC §3.8).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let got = outcomes(&setup);
    assert_eq!(got["a"], ("done".into(), 1, "stored a".into(), String::new()));
    assert_eq!(got["e"], ("done".into(), 1, "stored e".into(), String::new()));
    assert_eq!(got["c"], ("done".into(), 2, "stored c".into(), String::new()));
    assert_eq!(got["d"], ("done".into(), 2, "stored d".into(), String::new()));
    assert_eq!((got["b"].0.as_str(), got["b"].1), ("failed", 1));
    assert!(got["b"].3.contains("bad reading"), "{:?}", got["b"]);
    let dead = fs::read_to_string(setup.path("state/dead.jsonl")).unwrap();
    assert!(dead.contains("\"b\"") && dead.lines().count() == 1, "{dead}");

    let seen = receiver.seen();
    assert_eq!(
        seen.len(),
        2,
        "one batch, then one retry of the two retryable items: {seen:?}"
    );
    assert_eq!(seen[0].ids(), ["a", "b", "c", "d", "e"]);
    assert_eq!(seen[1].ids(), ["c", "d"]);
    assert_eq!(seen[0].content_type.as_deref(), Some("application/x-ndjson"));
    let (first, second) = (seen[0].key.clone().unwrap(), seen[1].key.clone().unwrap());
    assert!(first.starts_with("batch-") && first != second, "{first} {second}");
    assert_eq!(seen[0].lines[0]["payload"], "ok");
    assert_eq!(seen[0].lines[0]["priority"], 100, "the default priority");
}

#[test]
fn a_whole_batch_failure_fails_every_item_alike() {
    let receiver = Receiver::start(Duration::ZERO, Box::new(|_, _| (400, "schema mismatch".to_string())));
    let setup = Setup::new();
    write_lines(&setup, &[("a", "1"), ("b", "2"), ("c", "3")]);
    let config = lines_config(
        &setup,
        &format!(
            "handler:\n  kind: http\n  url: {}\n  batch: {{max_items: 10, max_wait: 300ms}}",
            receiver.url
        ),
    );
    let out = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    // Exit 3: the run ended and some items failed (SPEC §3.8).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let got = outcomes(&setup);
    for id in ["a", "b", "c"] {
        assert_eq!((got[id].0.as_str(), got[id].1), ("failed", 1), "{id}: {:?}", got[id]);
        assert!(got[id].3.contains("HTTP 400: schema mismatch"), "{:?}", got[id]);
    }
    let seen = receiver.seen();
    let sent: usize = seen.iter().map(|s| s.lines.len()).sum();
    assert_eq!(sent, 3, "a fatal status is not retried: {seen:?}");
}

/// An exec receiver: reads the batch's NDJSON on stdin and answers a line
/// per item (`bad` payloads fatally), counting its calls in `calls`.
const EXEC_RECEIVER: &str = r#"echo call >> "$1"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  case "$line" in
    *'"payload":"bad"'*) printf '{"id":"%s","ok":false,"retryable":false,"error":"bad reading"}\n' "$id" ;;
    *) printf '{"id":"%s","ok":true,"output":"got %s of %s"}\n' "$id" "$id" "$LOTE_BATCH_SIZE" ;;
  esac
done"#;

#[test]
fn an_exec_batch_reads_ndjson_and_answers_per_line() {
    let setup = Setup::new();
    let script = setup.path("receiver.sh");
    fs::write(&script, EXEC_RECEIVER).unwrap();
    write_lines(&setup, &[("a", "1"), ("b", "bad"), ("c", "3")]);
    let calls = setup.path("calls");
    let config = lines_config(
        &setup,
        &format!(
            "handler:\n  kind: exec\n  command: [/bin/sh, {}, {}]\n  batch: {{max_items: 10, max_wait: 300ms}}",
            script.display(),
            calls.display()
        ),
    );
    let out = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    // Exit 3: the run ended and some items failed (SPEC §3.8).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let got = outcomes(&setup);
    assert_eq!(got["a"], ("done".into(), 1, "got a of 3".into(), String::new()));
    assert_eq!(got["c"], ("done".into(), 1, "got c of 3".into(), String::new()));
    assert_eq!((got["b"].0.as_str(), got["b"].1), ("failed", 1));
    assert!(got["b"].3.contains("bad reading"));
    assert_eq!(
        fs::read_to_string(&calls).unwrap().lines().count(),
        1,
        "one call for three items"
    );
}

#[test]
fn an_exec_batch_exiting_non_zero_fails_the_whole_batch() {
    let setup = Setup::new();
    write_lines(&setup, &[("a", "1"), ("b", "2")]);
    let config = lines_config(
        &setup,
        "handler:\n  kind: exec\n  command: [/bin/sh, -c, 'cat >/dev/null; echo broken >&2; exit 3']\n  \
         fatal_exit_codes: [3]\n  batch: {max_items: 10, max_wait: 300ms}",
    );
    let out = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    // Exit 3: the run ended and some items failed (SPEC §3.8).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let got = outcomes(&setup);
    for id in ["a", "b"] {
        assert_eq!((got[id].0.as_str(), got[id].1), ("failed", 1), "{:?}", got[id]);
        assert!(got[id].3.contains("exit code 3: broken"), "{:?}", got[id]);
    }
}

fn spool_daemon(setup: &Setup, url: &str, extra: &str) -> Child {
    fs::create_dir_all(setup.path("spool")).unwrap();
    let config = setup.config(&format!(
        "source: {{kind: spool, path: {}}}\n\
         session: {{threads: 1}}\n\
         handler:\n  kind: http\n  url: {url}\n  qos: exactly_once\n{extra}\
         sink: {{kind: sqlite, path: outcomes.db}}\n",
        setup.path("spool").display()
    ));
    setup
        .lote(&["run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_stop_ends_the_wait_for_a_batch_to_fill_and_the_batch_in_hand_is_sent() {
    let receiver = Receiver::start(Duration::ZERO, Box::new(|_, _| (200, String::new())));
    let setup = Setup::new();
    let mut daemon = spool_daemon(&setup, &receiver.url, "  batch: {max_items: 100, max_wait: 30s}\n");
    for id in ["a", "b", "c"] {
        fs::write(setup.path(&format!("spool/{id}")), id).unwrap();
    }
    // Let the worker take them and start waiting for more.
    thread::sleep(Duration::from_millis(1500));
    assert!(receiver.seen().is_empty(), "the batch waits to fill");
    let stopped = Instant::now();
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    wait_for("the daemon's exit", Duration::from_secs(20), || {
        daemon.try_wait().unwrap().is_some()
    });
    let took = stopped.elapsed();
    let status = daemon.wait().unwrap();
    let log = stderr_of(daemon);
    assert!(status.success(), "{log}");
    assert!(
        took < Duration::from_secs(10),
        "the stop ended a 30 s wait: {took:?}\n{log}"
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let mut ids = seen[0].ids();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    let got = outcomes(&setup);
    assert!(["a", "b", "c"].iter().all(|id| got[*id].0 == "done"), "{got:?}");
}

#[test]
fn a_stop_during_a_batch_call_loses_nothing_and_exactly_once_sends_nothing_twice() {
    let receiver = Receiver::start(Duration::from_millis(1500), Box::new(|_, _| (200, String::new())));
    let setup = Setup::new();
    let batch = "  batch: {max_items: 5, max_wait: 200ms}\n";
    let mut daemon = spool_daemon(&setup, &receiver.url, batch);
    for i in 0..20 {
        fs::write(setup.path(&format!("spool/item-{i:02}")), format!("{i}")).unwrap();
    }
    // The call is under way (the receiver holds it 1.5 s): stop now.
    wait_for("the batch call", Duration::from_secs(10), || {
        receiver.arrived.load(Ordering::Relaxed) > 0
    });
    thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    wait_for("the daemon's exit", Duration::from_secs(20), || {
        daemon.try_wait().unwrap().is_some()
    });
    let status = daemon.wait().unwrap();
    let log = stderr_of(daemon);
    assert!(status.success(), "{log}");
    let first_run: usize = receiver.seen().iter().map(|s| s.lines.len()).sum();
    let got = outcomes(&setup);
    let done = got.values().filter(|o| o.0 == "done").count();
    let left = fs::read_dir(setup.path("spool"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("item-"))
        .count();
    assert_eq!(done + left, 20, "every item done or still in the spool: {got:?}\n{log}");
    assert_eq!(done, first_run, "what was sent finished; nothing else did");
    assert!(left > 0, "the stop came during the first batch of 5: {left} left");

    // A second run finishes the rest and sends no done id again.
    let mut daemon = spool_daemon(&setup, &receiver.url, batch);
    wait_for("the rest", Duration::from_secs(20), || {
        outcomes(&setup).values().filter(|o| o.0 == "done").count() == 20
    });
    kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).unwrap();
    assert!(daemon.wait().unwrap().success());
    let mut sent: Vec<String> = receiver.seen().iter().flat_map(Seen::ids).collect();
    assert_eq!(sent.len(), 20, "each item sent once: {sent:?}");
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 20);
}

#[test]
fn the_readme_example_receiver_takes_a_batch_and_answers_per_item() {
    let setup = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/batch-receiver.py");
    let mut receiver = std::process::Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .current_dir(setup.dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the README's example receiver (install python3)");
    wait_for("the example receiver", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    fs::write(
        setup.path("items.ndjson"),
        "{\"id\":\"r1\",\"payload\":{\"celsius\":21.5}}\n\
         {\"id\":\"r2\",\"payload\":\"not a reading\"}\n\
         {\"id\":\"r3\",\"payload\":{\"celsius\":19}}\n",
    )
    .unwrap();
    let config = lines_config(
        &setup,
        &format!("handler:\n  kind: http\n  url: http://127.0.0.1:{port}/\n  batch: {{max_wait: 300ms}}"),
    );
    let out = setup.run(&["run", "--once", "-c", config.to_str().unwrap()]);
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert_eq!(out.status.code(), Some(3), "r2 fails: {}", text(&out));
    let got = outcomes(&setup);
    assert_eq!(got["r1"], ("done".into(), 1, "stored".into(), String::new()));
    assert_eq!(got["r3"], ("done".into(), 1, "stored".into(), String::new()));
    assert_eq!((got["r2"].0.as_str(), got["r2"].1), ("failed", 1));
    let stored = fs::read_to_string(setup.path("readings.ndjson")).unwrap();
    assert_eq!(stored.lines().count(), 2, "{stored}");
    assert!(stored.contains("\"celsius\": 21.5"), "{stored}");
}
