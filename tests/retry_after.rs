//! A Retry-After wait is bounded and visible: a downstream's hint is capped
//! at `retry.max_retry_after` with a warning, a long wait is logged, and a
//! worker sleeping in a back-off shows as waiting in `status.json`,
//! `lote status` and the Prometheus textfile.
//!
//! The real binary against a real HTTP server on 127.0.0.1 that answers
//! `429 Retry-After: 99999` once, then 200. It signals only the child
//! processes it starts.

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

const LOTE: &str = env!("CARGO_BIN_EXE_lote");

/// A server that answers the first request `429 Retry-After: 99999` (27.8 h)
/// and every later one 200. Stops when dropped.
struct RateLimited {
    url: String,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RateLimited {
    fn start() -> RateLimited {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/ingest", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counting, stopping) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let response = if counting.fetch_add(1, Ordering::SeqCst) == 0 {
                    let header = tiny_http::Header::from_bytes("Retry-After", "99999").unwrap();
                    tiny_http::Response::from_string("slow down")
                        .with_status_code(429)
                        .with_header(header)
                } else {
                    tiny_http::Response::from_string("stored").with_status_code(200)
                };
                let _ = request.respond(response);
            }
        });
        RateLimited {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RateLimited {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// One item in a spool, an http handler with `retry`, status and the
    /// textfile every 100 ms.
    fn new(url: &str, retry: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir_all(&spool).unwrap();
        fs::write(spool.join("item-1.json"), "{\"reading\": 1}\n").unwrap();
        let config = format!(
            "state_dir: {state}\nlog: info\nsession:\n  threads: 2\n\
             source:\n  kind: spool\n  path: {spool}\n  stable_for: 0s\n\
             handler:\n  kind: http\n  url: {url}\n  timeout: 5s\n  retry: {retry}\n\
             sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 100ms\n\
             metrics:\n  every: 100ms\n  textfile: lote.prom\n",
            state = dir.path().join("state").display(),
            spool = spool.display(),
        );
        fs::write(dir.path().join("config.yaml"), config).unwrap();
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn lote(&self, args: &[&str]) -> Command {
        let mut command = Command::new(LOTE);
        command
            .args(args)
            .args(["-c", self.path("config.yaml").to_str().unwrap()])
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG");
        command
    }

    fn spawn_once(&self) -> Child {
        self.lote(&["run", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Waits for the exit (at most `limit`; killed and failed past it) and
/// returns the exit code and the log.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
            return (status.code(), log);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
            panic!("lote was still waiting after {limit:?} (a Retry-After of 27.8 h honoured?)\n{log}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn outcome_status(db: &Path, id: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row("SELECT status FROM outcomes WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

/// The value of one sample line of a Prometheus textfile.
fn sample(prom: &str, name: &str) -> Option<f64> {
    prom.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_retry_after_wait_is_bounded_by_max_retry_after_with_a_warning() {
    let server = RateLimited::start();
    let setup = Setup::new(&server.url, "{ attempts: 3, backoff: 10ms, max_retry_after: 2s }");
    let started = Instant::now();
    let (code, log) = finish(setup.spawn_once(), Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        2,
        "one 429, then one 200\n{log}"
    );
    assert_eq!(
        outcome_status(&setup.path("state/outcomes.db"), "item-1.json").as_deref(),
        Some("done")
    );
    assert!(
        took >= Duration::from_secs(2),
        "the capped wait is still a wait: {took:?}"
    );
    assert!(
        log.contains("asked to retry after 1day 3h 46m 39s, more than retry.max_retry_after (2s); waiting 2s instead"),
        "no capped warning in the log:\n{log}"
    );
    let prom = fs::read_to_string(setup.path("state/lote.prom")).unwrap();
    assert_eq!(sample(&prom, "lote_retry_after_capped_total"), Some(1.0), "{prom}");
}

#[test]
fn a_worker_in_a_retry_after_wait_shows_as_waiting_in_the_status() {
    let server = RateLimited::start();
    // Long enough to watch, capped so a failure cannot hang the test for long.
    let setup = Setup::new(&server.url, "{ attempts: 3, backoff: 10ms, max_retry_after: 30s }");
    let child = setup.spawn_once();
    let pid = Pid::from_raw(child.id() as i32);
    let status_file = setup.path("state/status.json");
    let waiting = || -> Option<u64> {
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&status_file).ok()?).ok()?;
        json["workers"]["waiting"].as_u64()
    };
    let started = Instant::now();
    while waiting() != Some(1) && started.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    let seen = waiting();
    let text = setup.lote(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let prom = fs::read_to_string(setup.path("state/lote.prom")).unwrap_or_default();
    // A stop cuts the wait short; the item goes back to the spool.
    kill(pid, Signal::SIGTERM).unwrap();
    let (code, log) = finish(child, Duration::from_secs(15));

    assert_eq!(seen, Some(1), "status.json never showed the waiting worker\n{log}");
    assert!(text.contains("0/2 busy, 1 waiting"), "`lote status` says:\n{text}");
    assert_eq!(sample(&prom, "lote_workers_waiting"), Some(1.0), "{prom}");
    assert!(
        log.contains("item item-1.json: attempt 1 failed (HTTP 429: slow down, Retry-After 1day 3h 46m 39s); this worker waits 30s before retrying"),
        "the long wait is not in the log:\n{log}"
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        setup.path("spool/item-1.json").exists(),
        "the item went back to the spool"
    );
}
