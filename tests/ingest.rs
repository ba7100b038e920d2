//! The HTTP listener in front of the inbox, through the real binary and
//! real sockets: a 202 means on disk (the daemon SIGKILLed right after the
//! answers loses none of them), SIGTERM answers 503 + Retry-After to new
//! requests while the items in hand finish and keeps every accepted item,
//! the bearer token, a Unix socket with its mode, /readyz when full,
//! /metrics accepted by promtool, and a non-loopback address without a
//! token refused by `lote check`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::{text, Setup};

/// One answer: code, the head's lines, the body.
struct Answer {
    code: u16,
    head: String,
    body: String,
}

/// One request on a fresh connection (`Connection: close`).
fn request(stream: &mut dyn ReadWrite, method: &str, path: &str, headers: &str, body: &str) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: lote\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Answer {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn tcp(port: u16, method: &str, path: &str, headers: &str, body: &str) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    request(&mut stream, method, path, headers, body)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Setup {
    /// `lote run` with `config`, waiting until the listener answers.
    fn daemon(&self, config: &Path, port: Option<u16>) -> Child {
        let mut child = self.spawn_run(config);
        self.wait_until_up(&mut child, port);
        child
    }

    fn spawn_run(&self, config: &Path) -> Child {
        self.lote(&["run", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn wait_until_up(&self, child: &mut Child, port: Option<u16>) {
        let started = Instant::now();
        loop {
            let up = match port {
                Some(port) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
                None => self.path("state/status.json").exists(),
            };
            if up {
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not start within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ids in the inbox table, any status.
    fn inbox_ids(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.path("state/outcomes.db")).unwrap();
        let mut s = conn.prepare("SELECT id FROM inbox ORDER BY id").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
}

fn config(setup: &Setup, handler: &str, http: &str) -> std::path::PathBuf {
    setup.config(&format!(
        "source:\n  kind: inbox\n  capacity: 1000\nhandler:\n{handler}sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\nhttp:\n{http}"
    ))
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(started.elapsed() < limit, "lote did not exit within {limit:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_item_answered_202_survives_a_sigkill_right_after() {
    let setup = Setup::new();
    let port = free_port();
    // A handler that never finishes in time: the items stay in the inbox.
    let config = config(
        &setup,
        "  kind: exec\n  command: [\"/bin/sleep\", \"60\"]\n",
        &format!("  listen: 127.0.0.1:{port}\n"),
    );
    let mut daemon = setup.daemon(&config, Some(port));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            thread::spawn(move || {
                let mut accepted = Vec::new();
                for r in 0..10 {
                    let body: String = (0..5)
                        .map(|i| format!("{{\"id\":\"c{c}-r{r}-i{i}\",\"payload\":\"x\"}}\n"))
                        .collect();
                    let answer = tcp(port, "POST", "/items", "Content-Type: application/x-ndjson\r\n", &body);
                    assert_eq!(answer.code, 202, "{}{}", answer.head, answer.body);
                    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
                    assert_eq!(json["accepted"], 5);
                    accepted.extend((0..5).map(|i| format!("c{c}-r{r}-i{i}")));
                }
                accepted
            })
        })
        .collect();
    let mut accepted: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    signal(&daemon, Signal::SIGKILL);
    daemon.wait().unwrap();
    accepted.sort();
    assert_eq!(accepted.len(), 400);
    assert_eq!(setup.inbox_ids(), accepted, "a 202 promised every one of them");
}

#[test]
fn sigterm_answers_new_requests_503_while_the_items_in_hand_finish_and_keeps_every_accepted_item() {
    let setup = Setup::new();
    let port = free_port();
    let config = config(
        &setup,
        "  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"sleep 1; cat\"]\n",
        &format!("  listen: 127.0.0.1:{port}\n  retry_after: 3s\n"),
    );
    let mut daemon = setup.daemon(&config, Some(port));
    for i in 0..6 {
        let answer = tcp(
            port,
            "POST",
            "/items",
            "",
            &format!("{{\"id\":\"i{i}\",\"payload\":\"{i}\"}}"),
        );
        assert_eq!(answer.code, 202, "{}", answer.body);
    }
    thread::sleep(Duration::from_millis(300)); // the first items are in hand
    signal(&daemon, Signal::SIGTERM);
    thread::sleep(Duration::from_millis(100));
    let answer = tcp(port, "POST", "/items", "", "{\"id\":\"late\",\"payload\":\"x\"}");
    assert_eq!(answer.code, 503, "{}{}", answer.head, answer.body);
    assert!(answer.head.contains("Retry-After: 3"), "{}", answer.head);
    let ready = tcp(port, "GET", "/readyz", "", "");
    assert_eq!(ready.code, 503, "{}", ready.body);
    assert_eq!(exit_within(&mut daemon, Duration::from_secs(20)), Some(0));
    let ids = setup.inbox_ids();
    assert_eq!(
        ids,
        ["i0", "i1", "i2", "i3", "i4", "i5"],
        "every accepted item kept, the late one not taken"
    );
}

#[test]
fn a_token_guards_everything_but_healthz() {
    let setup = Setup::new();
    let port = free_port();
    fs::create_dir_all(setup.path("state")).unwrap();
    fs::write(setup.path("state/token"), "s3cret\n").unwrap();
    let config = config(
        &setup,
        "  kind: noop\n",
        &format!("  listen: 127.0.0.1:{port}\n  token_file: token\n"),
    );
    let mut daemon = setup.daemon(&config, Some(port));
    let item = "{\"payload\":\"x\"}";
    assert_eq!(tcp(port, "POST", "/items", "", item).code, 401);
    assert_eq!(
        tcp(port, "POST", "/items", "Authorization: Bearer wrong\r\n", item).code,
        401
    );
    assert_eq!(tcp(port, "GET", "/status", "", "").code, 401);
    assert_eq!(tcp(port, "GET", "/healthz", "", "").code, 200);
    assert_eq!(
        tcp(port, "POST", "/items", "Authorization: Bearer s3cret\r\n", item).code,
        202
    );
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(exit_within(&mut daemon, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_unix_socket_takes_items_with_its_mode_and_is_removed_at_stop() {
    let setup = Setup::new();
    let socket = setup.path("state/ingest.sock");
    let config = config(
        &setup,
        "  kind: noop\n",
        "  listen: unix:ingest.sock\n  socket_mode: \"0600\"\n",
    );
    let mut daemon = setup.daemon(&config, None);
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    let mut stream = UnixStream::connect(&socket).unwrap();
    let answer = request(&mut stream, "POST", "/items", "", "{\"id\":\"u1\",\"payload\":\"x\"}");
    assert_eq!(answer.code, 202, "{}", answer.body);
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(exit_within(&mut daemon, Duration::from_secs(20)), Some(0));
    assert!(!socket.exists(), "the socket file is removed at stop");
    assert_eq!(setup.inbox_ids(), ["u1"]);
}

#[test]
fn a_full_inbox_answers_503_and_is_not_ready_and_metrics_pass_promtool() {
    let setup = Setup::new();
    let port = free_port();
    let config = setup.config(&format!(
        "source:\n  kind: inbox\n  capacity: 2\nhandler:\n  kind: exec\n  command: [\"/bin/sleep\", \"60\"]\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\nhttp:\n  listen: 127.0.0.1:{port}\n"
    ));
    let mut daemon = setup.daemon(&config, Some(port));
    assert_eq!(tcp(port, "GET", "/readyz", "", "").code, 200);
    let batch = "{\"id\":\"a\",\"payload\":\"1\"}\n{\"id\":\"b\",\"payload\":\"2\"}\n";
    assert_eq!(
        tcp(port, "POST", "/items", "Content-Type: application/x-ndjson\r\n", batch).code,
        202
    );
    let full = tcp(port, "POST", "/items", "", "{\"id\":\"c\",\"payload\":\"3\"}");
    assert_eq!(full.code, 503, "{}", full.body);
    assert!(
        full.head.contains("Retry-After: 1") && full.body.contains("full"),
        "{}{}",
        full.head,
        full.body
    );
    let again = tcp(port, "POST", "/items", "", "{\"id\":\"a\",\"payload\":\"1\"}");
    assert_eq!(again.code, 202, "a duplicate takes no room: {}", again.body);
    let ready = tcp(port, "GET", "/readyz", "", "");
    assert_eq!(ready.code, 503, "{}", ready.body);
    let metrics = tcp(port, "GET", "/metrics", "", "");
    assert_eq!(metrics.code, 200);
    for family in [
        "lote_inbox_depth 2",
        "lote_inbox_refused_full_total 1",
        "lote_http_requests_total",
    ] {
        assert!(metrics.body.contains(family), "{family} missing:\n{}", metrics.body);
    }
    let status: serde_json::Value = serde_json::from_str(&tcp(port, "GET", "/status", "", "").body).unwrap();
    assert_eq!(status["inbox"]["depth"], 2);
    assert_eq!(status["inbox"]["accepting"], false);
    promtool_check(&setup, &metrics.body);
    signal(&daemon, Signal::SIGTERM);
    // Hurry, once the first is handled (two at once would be one signal):
    // the sleeps are killed.
    thread::sleep(Duration::from_millis(500));
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(exit_within(&mut daemon, Duration::from_secs(20)), Some(0));
}

fn promtool_check(setup: &Setup, text: &str) {
    let file = setup.path("metrics.prom");
    fs::write(&file, text).unwrap();
    common::promtool_check_metrics(&file);
}

#[test]
fn check_refuses_a_reachable_address_without_a_token() {
    let setup = Setup::new();
    let config = config(&setup, "  kind: noop\n", "  listen: 0.0.0.0:8787\n");
    let out = setup.run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.listen") && err.contains("token_file"), "{err}");
}
