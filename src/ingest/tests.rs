//! The listener over real sockets (127.0.0.1 and a Unix socket in a
//! temporary directory), with raw clients that write exactly the bytes a
//! test needs, against an in-memory backend with switches.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

// ------------------------------------------------------------ the backend

/// An inbox in a Vec. Switches: full, draining, not ready, slow, panicking.
#[derive(Default)]
struct Memory {
    items: Mutex<Vec<JsonItem>>,
    full: AtomicBool,
    draining: AtomicBool,
    not_ready: AtomicBool,
    panics: AtomicBool,
    /// Milliseconds every accept takes.
    slow_ms: AtomicU64,
}

/// An item's payload above this is refused as too large.
const MAX_ITEM: usize = 1000;

impl Backend for Memory {
    fn accept(&self, items: Vec<JsonItem>) -> Result<Accepted, Refusal> {
        if self.panics.load(Ordering::Relaxed) {
            panic!("the test backend panics");
        }
        std::thread::sleep(Duration::from_millis(self.slow_ms.load(Ordering::Relaxed)));
        if self.full.load(Ordering::Relaxed) {
            return Err(Refusal::Full("100 of 100 items".into()));
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        if let Some((i, _)) = items.iter().enumerate().find(|(_, item)| item.payload.len() > MAX_ITEM) {
            return Err(Refusal::TooLarge(format!("item {} is larger than 1000 bytes", i + 1)));
        }
        let mut stored = self.items.lock().unwrap();
        let (mut accepted, mut duplicates, mut ids) = (0, 0, Vec::new());
        for mut item in items {
            let id = item.id.clone().unwrap_or_else(|| format!("made-{}", stored.len()));
            if stored.iter().any(|s| s.id.as_deref() == Some(&id)) {
                duplicates += 1;
            } else {
                accepted += 1;
                item.id = Some(id.clone());
                stored.push(item);
            }
            ids.push(id);
        }
        Ok(Accepted {
            accepted,
            duplicates,
            ids,
        })
    }

    fn status(&self) -> Vec<u8> {
        br#"{"state":"running"}"#.to_vec()
    }

    fn metrics(&self) -> String {
        "# HELP lote_items_total Items.\n# TYPE lote_items_total counter\nlote_items_total 3\n".into()
    }

    fn ready(&self) -> Result<(), String> {
        match self.not_ready.load(Ordering::Relaxed) {
            true => Err("the inbox is full".into()),
            false => Ok(()),
        }
    }
}

impl Memory {
    fn count(&self) -> usize {
        self.items.lock().unwrap().len()
    }
}

fn config() -> HttpConfig {
    HttpConfig {
        listen: Listen::Tcp("127.0.0.1:0".into()),
        read_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

fn start_with(config: HttpConfig, token: Option<&str>) -> (Listener, Arc<Memory>, SocketAddr) {
    let backend = Arc::new(Memory::default());
    let listener = Listener::start(&config, token.map(String::from), backend.clone()).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, backend, addr)
}

fn start() -> (Listener, Arc<Memory>, SocketAddr) {
    start_with(config(), None)
}

// ------------------------------------------------------------ the client

struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// One connection, several requests.
struct Client<S: Read + Write> {
    reader: BufReader<S>,
}

impl Client<TcpStream> {
    fn tcp(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Reads one answer; `None` at the end of the stream.
    fn answer(&mut self) -> Option<Answer> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let code = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            match line.trim_end().split_once(": ") {
                Some((name, value)) => headers.push((name.to_string(), value.to_string())),
                None => break,
            }
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        Some(Answer {
            code,
            headers,
            body: String::from_utf8(body).unwrap(),
        })
    }

    fn ask(&mut self, bytes: &[u8]) -> Answer {
        self.send(bytes);
        self.answer().expect("an answer")
    }

    /// True once the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut byte = [0];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

fn post(body: &str, headers: &str) -> Vec<u8> {
    format!(
        "POST /items HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes()
}

fn ask(addr: SocketAddr, bytes: &[u8]) -> Answer {
    Client::tcp(addr).ask(bytes)
}

const NDJSON: &str = "Content-Type: application/x-ndjson\r\n";

// ------------------------------------------------------------ POST /items

#[test]
fn one_item_is_answered_202_with_its_id_after_the_backend_took_it() {
    let (_listener, backend, addr) = start();
    let answer = ask(addr, &post(r#"{"id": "a", "priority": 3, "payload": {"n": 1}}"#, ""));
    assert_eq!(answer.code, 202, "{}", answer.body);
    assert_eq!(answer.header("Content-Type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        serde_json::json!({"accepted": 1, "duplicates": 0, "ids": ["a"]})
    );
    let stored = backend.items.lock().unwrap()[0].clone();
    assert_eq!((stored.priority, stored.payload), (Some(3), br#"{"n":1}"#.to_vec()));
    let again = ask(addr, &post(r#"{"id": "a", "payload": "x"}"#, ""));
    assert_eq!(again.json()["duplicates"], 1);
}

#[test]
fn an_ndjson_batch_is_all_or_nothing_and_the_bad_line_is_named() {
    let (_listener, backend, addr) = start();
    let bad = "{\"payload\": 1}\n\n{\"id\": \"b\"}\n{\"payload\": 3}\n";
    let answer = ask(addr, &post(bad, NDJSON));
    assert_eq!(answer.code, 400);
    assert_eq!(answer.error(), "line 3: it has no \"payload\"");
    assert_eq!(backend.count(), 0, "nothing of a refused batch is stored");

    let broken = ask(addr, &post("{\"payload\": 1}\n{\"payload\": \n", NDJSON));
    assert!(
        broken.error().starts_with("line 2: EOF while parsing"),
        "{}",
        broken.error()
    );

    let good = "{\"payload\": 1}\r\n\n  \n{\"id\": \"b\", \"payload\": 2}\n";
    let answer = ask(addr, &post(good, NDJSON));
    assert_eq!(answer.code, 202, "{}", answer.body);
    assert_eq!(
        answer.json(),
        serde_json::json!({"accepted": 2, "duplicates": 0, "ids": ["made-0", "b"]})
    );

    let empty = ask(addr, &post("\n\n", NDJSON));
    assert_eq!((empty.code, empty.error().contains("no items")), (400, true));
}

#[test]
fn a_malformed_single_body_is_a_400_that_says_why_and_hints_at_ndjson() {
    let (_listener, backend, addr) = start();
    let answer = ask(addr, &post("{\"payload\": 1}\n{\"payload\": 2}\n", ""));
    assert_eq!(answer.code, 400);
    assert!(answer.error().contains("application/x-ndjson"), "{}", answer.error());
    assert_eq!(
        ask(addr, &post("[1]", "")).error(),
        "the body is not an item: it is an array"
    );
    assert_eq!(ask(addr, &post("", "")).code, 400);
    assert_eq!(backend.count(), 0);
}

#[test]
fn a_body_over_max_body_is_413_without_being_read() {
    let (_listener, backend, addr) = start_with(
        HttpConfig {
            max_body: 100,
            ..config()
        },
        None,
    );
    // The head declares 1 MB and no byte of the body follows: the answer
    // comes anyway, so the server did not wait for the body.
    let mut client = Client::tcp(addr);
    let answer = client.ask(b"POST /items HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
    assert_eq!(answer.code, 413);
    assert!(answer.error().contains("http.max_body (100)"), "{}", answer.error());
    assert_eq!(answer.header("Connection"), Some("close"));
    assert!(client.closed());

    // Chunked: refused at the chunk that passes the limit.
    let mut client = Client::tcp(addr);
    client.send(b"POST /items HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n");
    client.send(&[b'x'; 0x50]);
    assert_eq!(client.ask(b"\r\n50\r\n").code, 413);

    let exact = format!("{{\"payload\": \"{}\"}}", "x".repeat(100 - 15));
    assert_eq!(exact.len(), 100);
    assert_eq!(ask(addr, &post(&exact, "")).code, 202);
    assert_eq!(backend.count(), 1);
}

#[test]
fn a_chunked_body_is_read_like_curl_t_sends_it() {
    let (_listener, backend, addr) = start();
    let mut client = Client::tcp(addr);
    client.send(b"POST /items HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-ndjson\r\n\r\n");
    client.send(b"f\r\n{\"payload\": 1}\n\r\n");
    client.send(b"7;ext=1\r\n{\"paylo\r\n8\r\nad\": 2}\n\r\n0\r\nX-Trailer: y\r\n\r\n");
    let answer = client.answer().unwrap();
    assert_eq!(answer.code, 202, "{}", answer.body);
    assert_eq!(backend.count(), 2);
    // The connection is still good for the next request.
    assert_eq!(client.ask(&get("/healthz", "")).code, 200);
}

#[test]
fn an_item_the_backend_finds_too_large_is_413() {
    let (_listener, backend, addr) = start();
    let body = format!("{{\"payload\": \"{}\"}}", "x".repeat(MAX_ITEM + 1));
    let answer = ask(addr, &post(&body, ""));
    assert_eq!(
        (answer.code, answer.error()),
        (413, "item 1 is larger than 1000 bytes".to_string())
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn a_full_inbox_is_503_with_retry_after_in_whole_seconds_rounded_up() {
    let (_listener, backend, addr) = start_with(
        HttpConfig {
            retry_after: Duration::from_millis(1500),
            ..config()
        },
        None,
    );
    backend.full.store(true, Ordering::Relaxed);
    let answer = ask(addr, &post(r#"{"payload": 1}"#, ""));
    assert_eq!(answer.code, 503);
    assert_eq!(answer.header("Retry-After"), Some("2"));
    assert!(
        answer.error().starts_with("the inbox is full: 100 of 100 items"),
        "{}",
        answer.error()
    );
    backend.not_ready.store(true, Ordering::Relaxed);
    let ready = ask(addr, &get("/readyz", ""));
    assert_eq!((ready.code, ready.header("Retry-After")), (503, Some("2")));
    assert!(ready.error().contains("the inbox is full"));
    assert_eq!(serve::retry_seconds(Duration::ZERO), 1);
    assert_eq!(serve::retry_seconds(Duration::from_secs(3)), 3);
}

#[test]
fn expect_100_continue_gets_a_100_before_the_body_and_none_when_refused() {
    let (_listener, _backend, addr) = start_with(
        HttpConfig {
            max_body: 100,
            ..config()
        },
        None,
    );
    let mut client = Client::tcp(addr);
    let body = r#"{"payload": 1}"#;
    let head = format!(
        "POST /items HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(client.ask(head.as_bytes()).code, 100);
    assert_eq!(client.ask(body.as_bytes()).code, 202);
    let too_large = "POST /items HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n";
    assert_eq!(client.ask(too_large.as_bytes()).code, 413);
}

// ------------------------------------------------------------ connections

#[test]
fn keep_alive_serves_several_requests_on_one_connection_and_http_1_0_closes() {
    let (_listener, backend, addr) = start();
    let mut client = Client::tcp(addr);
    for i in 0..3 {
        let answer = client.ask(&post(&format!(r#"{{"id": "{i}", "payload": 1}}"#), ""));
        assert_eq!((answer.code, answer.header("Connection")), (202, Some("keep-alive")));
    }
    // Two pipelined requests in one write.
    let mut both = get("/healthz", "");
    both.extend(get("/readyz", ""));
    client.send(&both);
    assert_eq!(client.answer().unwrap().code, 200);
    assert_eq!(client.answer().unwrap().code, 200);
    assert_eq!(backend.count(), 3);

    let mut old = Client::tcp(addr);
    let answer = old.ask(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!((answer.code, answer.body.as_str()), (200, "ok\n"));
    assert!(old.closed(), "HTTP/1.0 without keep-alive closes");
    let mut kept = Client::tcp(addr);
    kept.ask(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(kept.ask(b"GET /healthz HTTP/1.0\r\n\r\n").code, 200);
}

#[test]
fn a_connection_beyond_max_connections_gets_503_at_once_while_the_others_stay_open() {
    let (_listener, _backend, addr) = start_with(
        HttpConfig {
            max_connections: 2,
            read_timeout: Duration::from_secs(30),
            ..config()
        },
        None,
    );
    let mut held: Vec<_> = (0..2).map(|_| Client::tcp(addr)).collect();
    for client in &mut held {
        assert_eq!(client.ask(&get("/healthz", "")).code, 200);
    }
    let started = Instant::now();
    let mut third = Client::tcp(addr);
    third.send(&get("/healthz", ""));
    let answer = third.answer().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!((answer.code, answer.header("Retry-After")), (503, Some("1")));
    assert!(
        answer.error().contains("http.max_connections (2)"),
        "{}",
        answer.error()
    );
    assert!(third.closed());
    for client in &mut held {
        assert_eq!(
            client.ask(&get("/healthz", "")).code,
            200,
            "held connections still serve"
        );
    }
    let metrics = held[0].ask(&get("/metrics", "")).body;
    assert!(metrics.contains("lote_http_connections_refused_total 1\n"), "{metrics}");
    assert!(metrics.contains("lote_http_connections 2\n"), "{metrics}");
    // A slot freed is a slot taken.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask(addr, &get("/healthz", "")).code != 200 {
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_client_does_not_delay_another_and_is_closed_after_read_timeout() {
    let read_timeout = Duration::from_millis(1500);
    let (_listener, _backend, addr) = start_with(
        HttpConfig {
            read_timeout,
            ..config()
        },
        None,
    );
    let started = Instant::now();
    let mut stalled = Client::tcp(addr);
    stalled.send(b"POST /items HTTP/1.1\r\nContent-Le");
    let mut slowloris = Client::tcp(addr);
    slowloris.send(b"G");
    // Another client is served while both hold their connections.
    let quick = Instant::now();
    assert_eq!(ask(addr, &post(r#"{"payload": 1}"#, "")).code, 202);
    assert!(quick.elapsed() < Duration::from_millis(500), "{:?}", quick.elapsed());
    // A byte now and then, past read_timeout, does not reset the clock.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        slowloris.reader.get_mut().write_all(b"E").ok();
    }
    for client in [&mut stalled, &mut slowloris] {
        let answer = client.answer().unwrap();
        assert_eq!(answer.code, 408, "{}", answer.body);
        assert!(client.closed());
    }
    let waited = started.elapsed();
    assert!(waited >= read_timeout && waited < read_timeout * 2, "{waited:?}");
}

#[test]
fn a_slow_backend_call_does_not_delay_other_requests() {
    let (_listener, backend, addr) = start();
    backend.slow_ms.store(1500, Ordering::Relaxed);
    let slow = std::thread::spawn(move || ask(addr, &post(r#"{"payload": 1}"#, "")).code);
    std::thread::sleep(Duration::from_millis(100));
    let quick = Instant::now();
    assert_eq!(ask(addr, &get("/healthz", "")).code, 200);
    assert!(quick.elapsed() < Duration::from_millis(500));
    assert_eq!(slow.join().unwrap(), 202);
}

#[test]
fn a_malformed_request_is_a_400_and_the_connection_closes() {
    let (_listener, _backend, addr) = start();
    let mut client = Client::tcp(addr);
    let answer = client.ask(b"GARBAGE\r\n\r\n");
    assert_eq!(answer.code, 400);
    assert!(answer.error().contains("not HTTP/1.x"), "{}", answer.error());
    assert!(client.closed());
    let smuggle = b"POST /items HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(ask(addr, smuggle).code, 400);
    let huge = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(20_000));
    assert_eq!(ask(addr, huge.as_bytes()).code, 400);
}

// ------------------------------------------------------------ endpoints

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let (_listener, _backend, addr) = start();
    let answer = ask(addr, &get("/nope", ""));
    assert_eq!(answer.code, 404);
    assert!(answer.error().contains("POST /items"), "{}", answer.error());
    let answer = ask(addr, &get("/items", ""));
    assert_eq!((answer.code, answer.header("Allow")), (405, Some("POST")));
    let answer = ask(addr, b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((answer.code, answer.header("Allow")), (405, Some("GET")));
    assert_eq!(answer.error(), "/status takes GET, not POST");
}

#[test]
fn a_token_is_needed_everywhere_but_healthz() {
    let (_listener, backend, addr) = start_with(config(), Some("s3cret"));
    for request in [
        post(r#"{"payload": 1}"#, ""),
        get("/status", ""),
        get("/metrics", ""),
        get("/nope", ""),
    ] {
        let answer = ask(addr, &request);
        assert_eq!((answer.code, answer.header("WWW-Authenticate")), (401, Some("Bearer")));
        assert!(answer.error().contains("http.token_file"));
    }
    let wrong = ask(addr, &post(r#"{"payload": 1}"#, "Authorization: Bearer s3cres\r\n"));
    assert_eq!(wrong.code, 401);
    let longer = ask(addr, &get("/status", "Authorization: Bearer s3cret2\r\n"));
    assert_eq!(longer.code, 401);
    assert_eq!(backend.count(), 0);
    assert_eq!(ask(addr, &get("/healthz", "")).code, 200);
    let right = ask(addr, &post(r#"{"payload": 1}"#, "Authorization: bearer s3cret\r\n"));
    assert_eq!(right.code, 202, "{}", right.body);
    assert_eq!(ask(addr, &get("/status", "Authorization: Bearer s3cret\r\n")).code, 200);
}

#[test]
fn status_metrics_healthz_and_readyz_answer_from_the_backend() {
    let (_listener, backend, addr) = start();
    let status = ask(addr, &get("/status", ""));
    assert_eq!(
        (status.code, status.header("Content-Type")),
        (200, Some("application/json"))
    );
    assert_eq!(status.body, r#"{"state":"running"}"#);
    assert_eq!(ask(addr, &get("/readyz", "")).code, 200);
    assert_eq!(ask(addr, &post(r#"{"payload": 1}"#, "")).code, 202);
    ask(addr, &get("/nope", ""));
    // Earlier connections may still be closing: ask until the gauge is 1.
    let (mut metrics, mut tries) = (ask(addr, &get("/metrics", "")), 1);
    while !metrics.body.contains("lote_http_connections 1\n") && tries < 100 {
        std::thread::sleep(Duration::from_millis(20));
        (metrics, tries) = (ask(addr, &get("/metrics", "")), tries + 1);
    }
    assert_eq!(metrics.header("Content-Type"), Some("text/plain; version=0.0.4"));
    let text = metrics.body;
    assert!(text.starts_with(&backend.metrics()), "{text}");
    assert!(text.contains("lote_http_requests_total{code=\"202\"} 1\n"), "{text}");
    assert!(text.contains("lote_http_requests_total{code=\"404\"} 1\n"), "{text}");
    // /status, /readyz, and the earlier tries of /metrics.
    let ok = format!("lote_http_requests_total{{code=\"200\"}} {}\n", 1 + tries);
    assert!(text.contains(&ok), "{text}");
    assert!(text.contains("lote_http_connections 1\n"), "{text}");
    promtool_clean(&text);
}

/// What `promtool check metrics` checks that matters here: each family's
/// HELP and TYPE once, before its samples, and its samples together.
fn promtool_clean(text: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap().to_string();
            assert!(seen.insert(family.clone()), "TYPE {family} twice");
            current = family;
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "{name} outside its family");
        }
    }
}

#[test]
fn a_panicking_backend_answers_500_and_the_server_lives_on() {
    let (_listener, backend, addr) = start();
    backend.panics.store(true, Ordering::Relaxed);
    let mut client = Client::tcp(addr);
    let answer = client.ask(&post(r#"{"payload": 1}"#, ""));
    assert_eq!(answer.code, 500);
    assert!(answer.error().contains("the test backend panics"), "{}", answer.error());
    backend.panics.store(false, Ordering::Relaxed);
    assert_eq!(client.ask(&post(r#"{"payload": 1}"#, "")).code, 202);
}

// ------------------------------------------------------------ drain, stop

#[test]
fn after_drain_new_requests_get_503_and_one_in_flight_is_answered() {
    let (listener, backend, addr) = start();
    backend.slow_ms.store(800, Ordering::Relaxed);
    let in_flight = std::thread::spawn(move || ask(addr, &post(r#"{"payload": 1}"#, "")));
    std::thread::sleep(Duration::from_millis(200));
    listener.drain();
    for request in [post(r#"{"payload": 2}"#, ""), get("/readyz", ""), get("/status", "")] {
        let mut client = Client::tcp(addr);
        let answer = client.ask(&request);
        assert_eq!((answer.code, answer.header("Retry-After")), (503, Some("1")));
        assert!(answer.error().contains("stopping"), "{}", answer.error());
        assert!(client.closed());
    }
    assert_eq!(ask(addr, &get("/healthz", "")).code, 200, "alive while draining");
    let answer = in_flight.join().unwrap();
    assert_eq!((answer.code, answer.header("Connection")), (202, Some("close")));
    assert_eq!(backend.count(), 1);
}

#[test]
fn the_backend_draining_is_503() {
    let (_listener, backend, addr) = start();
    backend.draining.store(true, Ordering::Relaxed);
    let answer = ask(addr, &post(r#"{"payload": 1}"#, ""));
    assert_eq!((answer.code, answer.header("Retry-After")), (503, Some("1")));
}

#[test]
fn over_a_unix_socket_with_its_mode_and_stop_joins_every_thread_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.sock");
    // A socket file left by a process that died: replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let config = HttpConfig {
        listen: Listen::Unix(path.clone()),
        socket_mode: 0o600,
        read_timeout: Duration::from_secs(60),
        ..HttpConfig::default()
    };
    let backend = Arc::new(Memory::default());
    let listener = Listener::start(&config, None, backend.clone()).unwrap();
    assert_eq!(listener.socket_path(), Some(path.as_path()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // A second listener on a live socket is refused.
    let again = Listener::start(&config, None, backend.clone());
    assert_eq!(again.err().unwrap().kind(), std::io::ErrorKind::AddrInUse);

    let mut idle = Client {
        reader: BufReader::new(UnixStream::connect(&path).unwrap()),
    };
    assert_eq!(idle.ask(&post(r#"{"payload": 1}"#, "")).code, 202);
    assert_eq!(backend.count(), 1);
    // The idle connection would be kept 60 s; stop ends it at once.
    let stopping = Instant::now();
    listener.stop();
    assert!(stopping.elapsed() < Duration::from_secs(2), "{:?}", stopping.elapsed());
    assert!(idle.closed());
    assert!(!path.exists(), "the socket file is removed");
    // Every thread that held the backend was joined and dropped it.
    assert_eq!(Arc::strong_count(&backend), 1);
}

#[test]
fn a_path_that_is_not_a_socket_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "data").unwrap();
    let config = HttpConfig {
        listen: Listen::Unix(path.clone()),
        ..HttpConfig::default()
    };
    let err = Listener::start(&config, None, Arc::new(Memory::default()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn dropping_the_listener_stops_it_and_closes_the_port() {
    let (listener, backend, addr) = start();
    assert_eq!(ask(addr, &get("/healthz", "")).code, 200);
    drop(listener);
    assert!(TcpStream::connect(addr).is_err());
    assert_eq!(Arc::strong_count(&backend), 1);
}
