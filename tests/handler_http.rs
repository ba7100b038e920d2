//! The http handler against a real HTTP server on 127.0.0.1 (tiny_http):
//! what the request carries, how statuses and transport errors map to
//! outcomes (SPEC §3.6), and the call's time limits (SPEC §3.5).

use std::net::TcpListener;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lote::handler::http::{HttpConfig, HttpHandler};
use lote::{CallContext, Failure, FailureKind, Handler, Item, StopHandle, StopReason};

/// What the scripted server answers, one per request.
enum Reply {
    /// Status, headers, body.
    Send(u16, Vec<(&'static str, &'static str)>, Vec<u8>),
    /// Read the request, never answer; let go when the test says so.
    Hang,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply::Send(status, Vec::new(), body.as_bytes().to_vec())
}

/// A request as the server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A server on 127.0.0.1 that answers exactly `replies`, in order, then
/// ends. Bounded: each wait for a request or a release gives up after 10 s,
/// and the test joins the thread (`finish`).
struct Scripted {
    url: String,
    seen: Receiver<Seen>,
    release: Sender<()>,
    thread: JoinHandle<()>,
}

impl Scripted {
    fn start(replies: Vec<Reply>) -> Scripted {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/items", server.server_addr().to_ip().unwrap());
        let (seen_tx, seen) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            for reply in replies {
                let Ok(Some(mut request)) = server.recv_timeout(Duration::from_secs(10)) else {
                    return;
                };
                let mut body = Vec::new();
                request.as_reader().read_to_end(&mut body).unwrap();
                let _ = seen_tx.send(Seen {
                    method: request.method().to_string(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                });
                match reply {
                    Reply::Send(status, headers, body) => {
                        let mut response = tiny_http::Response::from_data(body).with_status_code(status);
                        for (name, value) in headers {
                            response.add_header(tiny_http::Header::from_bytes(name, value).unwrap());
                        }
                        let _ = request.respond(response);
                    }
                    Reply::Hang => {
                        let _ = release_rx.recv_timeout(Duration::from_secs(10));
                        drop(request);
                    }
                }
            }
        });
        Scripted {
            url,
            seen,
            release,
            thread,
        }
    }

    fn handler(&self) -> HttpHandler {
        HttpHandler::new(HttpConfig::new(&self.url)).unwrap()
    }

    fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(Duration::from_secs(5))
            .expect("the server saw a request")
    }

    fn finish(self) {
        let _ = self.release.send(());
        self.thread.join().unwrap();
    }
}

fn call(handler: &HttpHandler, item: &Item, deadline: Option<Duration>) -> (Result<String, Failure>, Duration) {
    let stop = StopHandle::new();
    call_with(handler, item, 1, deadline, &stop)
}

fn call_with(
    handler: &HttpHandler,
    item: &Item,
    attempt: u32,
    deadline: Option<Duration>,
    stop: &StopHandle,
) -> (Result<String, Failure>, Duration) {
    let started = Instant::now();
    let ctx = CallContext::new(item, attempt, deadline.map(|d| started + d), stop);
    let result = handler.handle(&ctx, item);
    (result, started.elapsed())
}

#[test]
fn a_2xx_is_done_with_the_body_and_the_request_carries_key_attempt_and_payload() {
    let server = Scripted::start(vec![reply(200, "stored"), reply(201, "")]);
    let mut config = HttpConfig::new(&server.url);
    config.headers = vec![("X-Tenant".into(), "north".into())];
    let http = HttpHandler::new(config).unwrap();

    let item = Item::new("order-17", r#"{"qty":3}"#);
    let (result, took) = call_with(&http, &item, 2, None, &StopHandle::new());
    assert_eq!(result.unwrap(), "stored");
    eprintln!("first POST (connect included): {took:?}");
    let seen = server.next_seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("Idempotency-Key"), Some("order-17"));
    assert_eq!(seen.header("X-Lote-Attempt"), Some("2"));
    assert_eq!(seen.header("X-Tenant"), Some("north"));
    assert_eq!(seen.body, br#"{"qty":3}"#);

    let (result, took) = call(&http, &Item::new("order-18", "x"), None);
    assert_eq!(result.unwrap(), "");
    eprintln!("second POST (pooled connection): {took:?}");
    assert_eq!(server.next_seen().header("Idempotency-Key"), Some("order-18"));
    server.finish();
}

#[test]
fn the_method_is_configurable() {
    let server = Scripted::start(vec![reply(204, "")]);
    let mut config = HttpConfig::new(&server.url);
    config.method = "put".into();
    let http = HttpHandler::new(config).unwrap();
    assert_eq!(call(&http, &Item::new("a", "p"), None).0.unwrap(), "");
    let seen = server.next_seen();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body, b"p");
    server.finish();
}

#[test]
fn a_503_with_retry_after_is_retryable_with_the_hint() {
    let server = Scripted::start(vec![Reply::Send(503, vec![("Retry-After", "7")], b"busy\n".to_vec())]);
    let failure = call(&server.handler(), &Item::new("a", "p"), None).0.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert_eq!(failure.message, "HTTP 503: busy");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
    server.finish();
}

#[test]
fn statuses_408_429_and_5xx_are_retryable() {
    let server = Scripted::start(vec![
        reply(429, "slow down"),
        reply(408, ""),
        reply(500, "oops"),
        reply(502, "bad gateway"),
    ]);
    let http = server.handler();
    for expected in [
        "HTTP 429: slow down",
        "HTTP 408",
        "HTTP 500: oops",
        "HTTP 502: bad gateway",
    ] {
        let failure = call(&http, &Item::new("a", "p"), None).0.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Retryable, "{expected}");
        assert_eq!(failure.message, expected);
        assert_eq!(failure.retry_after, None);
    }
    server.finish();
}

#[test]
fn other_4xx_are_fatal() {
    let server = Scripted::start(vec![
        Reply::Send(400, vec![("Retry-After", "5")], b"field qty missing".to_vec()),
        reply(404, "no such route"),
        reply(422, ""),
    ]);
    let http = server.handler();
    for expected in ["HTTP 400: field qty missing", "HTTP 404: no such route", "HTTP 422"] {
        let failure = call(&http, &Item::new("a", "p"), None).0.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Fatal, "{expected}");
        assert_eq!(failure.message, expected);
        // A hint is meaningless on a failure that is never retried.
        assert_eq!(failure.retry_after, None);
    }
    server.finish();
}

#[test]
fn a_redirect_is_not_followed_and_is_fatal() {
    let server = Scripted::start(vec![Reply::Send(
        308,
        vec![("Location", "http://elsewhere.example/items")],
        Vec::new(),
    )]);
    let failure = call(&server.handler(), &Item::new("a", "p"), None).0.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Fatal);
    assert_eq!(
        failure.message,
        "HTTP 308: unexpected redirect to http://elsewhere.example/items"
    );
    server.finish();
}

#[test]
fn the_error_body_quote_is_200_bytes_at_most() {
    let server = Scripted::start(vec![Reply::Send(500, Vec::new(), vec![b'e'; 5000])]);
    let failure = call(&server.handler(), &Item::new("a", "p"), None).0.unwrap_err();
    assert_eq!(failure.message, format!("HTTP 500: {}", "e".repeat(200)));
    server.finish();
}

#[test]
fn output_is_cut_at_the_limit() {
    let server = Scripted::start(vec![Reply::Send(200, Vec::new(), vec![b'o'; 100_000])]);
    let mut config = HttpConfig::new(&server.url);
    config.output_limit = 100;
    let http = HttpHandler::new(config).unwrap();
    assert_eq!(call(&http, &Item::new("a", "p"), None).0.unwrap(), "o".repeat(100));
    server.finish();
}

/// The call's deadline (300 ms) is sooner than the handler's 30 s timeout:
/// the deadline bounds the call.
#[test]
fn a_server_that_never_answers_times_out_at_the_call_deadline() {
    let server = Scripted::start(vec![Reply::Hang]);
    let (result, took) = call(
        &server.handler(),
        &Item::new("a", "p"),
        Some(Duration::from_millis(300)),
    );
    eprintln!("silent server, deadline 300ms: returned after {took:?}");
    let failure = result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert!(failure.message.starts_with("timed out after "), "{}", failure.message);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    server.finish();
}

#[test]
fn the_handler_timeout_bounds_a_call_without_a_deadline() {
    let server = Scripted::start(vec![Reply::Hang]);
    let mut config = HttpConfig::new(&server.url);
    config.timeout = Duration::from_millis(250);
    let http = HttpHandler::new(config).unwrap();
    let (result, took) = call(&http, &Item::new("a", "p"), None);
    let failure = result.unwrap_err();
    assert!(failure.message.starts_with("timed out after "), "{}", failure.message);
    assert!(took < Duration::from_secs(1), "{took:?}");
    server.finish();
}

/// A hurry (second stop signal) fails the request in flight at once, and the
/// handler still works afterwards for a new session.
#[test]
fn hurry_cuts_a_request_in_flight_and_the_handler_recovers() {
    let server = Scripted::start(vec![Reply::Hang, reply(200, "after")]);
    let http = server.handler();
    let stop = StopHandle::new();
    let signaller = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            stop.trigger(StopReason::Signal("SIGTERM".into()));
            thread::sleep(Duration::from_millis(100));
            stop.trigger(StopReason::Signal("SIGTERM".into()));
        })
    };
    let (result, took) = call_with(&http, &Item::new("a", "p"), 1, None, &stop);
    signaller.join().unwrap();
    eprintln!("hurry at 200ms during a silent request: returned after {took:?}");
    let failure = result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert_eq!(failure.message, "cut short: lote is stopping");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let _ = server.release.send(());

    // A new session (a fresh stop handle) gets a fresh agent.
    assert_eq!(call(&http, &Item::new("b", "p"), None).0.unwrap(), "after");
    server.finish();
}

#[test]
fn connection_refused_is_retryable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let http = HttpHandler::new(HttpConfig::new(format!("http://127.0.0.1:{port}/items"))).unwrap();
    let (result, took) = call(&http, &Item::new("a", "p"), Some(Duration::from_secs(5)));
    let failure = result.unwrap_err();
    eprintln!("connection refused: {took:?}, {:?}", failure.message);
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert!(failure.message.starts_with("transport error: "), "{}", failure.message);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_past_deadline_sends_nothing() {
    let http = HttpHandler::new(HttpConfig::new("http://127.0.0.1:9/items")).unwrap();
    let failure = call(&http, &Item::new("a", "p"), Some(Duration::ZERO)).0.unwrap_err();
    assert_eq!(failure.message, "timed out after 0ms");
}

#[test]
fn new_rejects_bad_config_with_a_clear_error() {
    let err = HttpHandler::new(HttpConfig::new("127.0.0.1:8080/items")).unwrap_err();
    assert!(err.contains("must start with http:// or https://"), "{err}");
    let mut config = HttpConfig::new("http://127.0.0.1/items");
    config.method = "TEAPOT".into();
    let err = HttpHandler::new(config).unwrap_err();
    assert!(err.contains("use POST"), "{err}");
    let mut config = HttpConfig::new("http://127.0.0.1/items");
    config.headers = vec![("X-Ok".into(), "line\nbreak".into())];
    let err = HttpHandler::new(config).unwrap_err();
    assert!(err.contains("X-Ok") || err.contains("x-ok"), "{err}");
}
