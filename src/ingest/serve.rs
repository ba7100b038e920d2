//! One connection's life: read a request, check its token, route it to an
//! endpoint, answer, and again while the connection is kept alive. And the
//! listener's own metrics, counted where the answers are written.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::http::{Conn, Framing, Head, ReadError, Response};
use super::{Accepted, Backend, HttpConfig, Refusal};
use crate::item::JsonItem;
use crate::sync::Mutex;

/// What every connection thread and the accept thread share.
pub struct Shared {
    pub config: HttpConfig,
    /// The bearer token every request but `GET /healthz` must carry.
    pub token: Option<String>,
    pub backend: Arc<dyn Backend>,
    /// Set by `Listener::drain`: every request from then on gets a 503.
    /// Relaxed: a flag read once per request; it guards no other memory.
    pub draining: AtomicBool,
    /// Set by `Listener::stop`: connections close after their answer.
    /// Relaxed: the wake-up comes from shutting the sockets' read sides.
    pub stopping: AtomicBool,
    /// Protects the open connections' sockets, by connection number (its
    /// length is the `lote_http_connections` gauge; admission checks it).
    pub open: Mutex<Open>,
    pub counts: Counts,
}

/// The open connections: a clone of each socket, so a stop can shut its
/// read side and wake the thread reading it.
#[derive(Default)]
pub struct Open {
    pub next: u64,
    pub sockets: std::collections::HashMap<u64, super::http::Stream>,
}

/// The status codes the listener answers with, in `/metrics` order.
const CODES: [u16; 10] = [200, 202, 400, 401, 404, 405, 408, 413, 500, 503];

/// The listener's counters. Relaxed throughout: statistics only.
#[derive(Default)]
pub struct Counts {
    /// Answers sent, by the index of their code in [`CODES`].
    answers: [AtomicU64; CODES.len()],
    /// Connections answered 503 at once at `max_connections`.
    refused: AtomicU64,
}

impl Counts {
    /// Counts an answer (an unlisted code is a bug the tests catch).
    pub fn answered(&self, code: u16) {
        if let Some(i) = CODES.iter().position(|&c| c == code) {
            self.answers[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.answered(503);
    }
}

/// Serves one connection until it closes, times out, or the listener stops.
pub fn connection(shared: &Shared, mut conn: Conn) {
    let config = &shared.config;
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let head = match conn.read_head(config.read_timeout, config.read_timeout) {
            Ok(head) => head,
            Err(ReadError::Gone) => return,
            Err(e) => {
                let response = read_error(shared, e);
                shared.counts.answered(response.code);
                let _ = conn.answer(&response, false, config.write_timeout);
                return conn.linger();
            }
        };
        let (response, body_read) = match respond(shared, &head, &mut conn) {
            Ok(answer) => answer,
            Err(ReadError::Gone) => return,
            Err(e) => (read_error(shared, e), false),
        };
        let unread = head.framing != Framing::None && !body_read;
        let keep_alive = head.keep_alive
            && !unread
            && response.code != 408
            && !shared.draining.load(Ordering::Relaxed)
            && !shared.stopping.load(Ordering::Relaxed);
        shared.counts.answered(response.code);
        if conn.answer(&response, keep_alive, config.write_timeout).is_err() {
            return;
        }
        if !keep_alive {
            return if unread { conn.linger() } else { drop(conn) };
        }
    }
}

/// The answer to a request that could not be read.
fn read_error(shared: &Shared, e: ReadError) -> Response {
    match e {
        ReadError::TimedOut => Response::error(
            408,
            format!(
                "the request did not arrive within http.read_timeout ({}); send it whole, without pauses",
                crate::spec::format_duration(shared.config.read_timeout)
            ),
        ),
        ReadError::Bad(why) => Response::error(400, format!("{why}; send an HTTP/1.1 request")),
        ReadError::TooLarge => Response::error(
            413,
            format!(
                "the body is larger than http.max_body ({}); send fewer items per request",
                crate::spec::format_bytes(shared.config.max_body as u64)
            ),
        ),
        ReadError::Gone => Response::error(400, "the client went away"),
    }
}

/// The endpoints. `/healthz` alone needs no token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Items,
    Status,
    Metrics,
    Healthz,
    Readyz,
}

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/items" => Endpoint::Items,
            "/status" => Endpoint::Status,
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Endpoint::Items => "POST",
            _ => "GET",
        }
    }
}

/// The answer to `head`, and whether its body was read.
fn respond(shared: &Shared, head: &Head, conn: &mut Conn) -> Result<(Response, bool), ReadError> {
    let endpoint = Endpoint::of(&head.path);
    let open = endpoint == Some(Endpoint::Healthz) && head.method == "GET";
    if !open && !authorized(shared.token.as_deref(), head.authorization.as_deref()) {
        let response = Response::error(
            401,
            "a bearer token is required; send \"Authorization: Bearer <token>\" with the first line of \
             http.token_file",
        )
        .with("WWW-Authenticate", "Bearer");
        return Ok((response, false));
    }
    let Some(endpoint) = endpoint else {
        let response = Response::error(
            404,
            format!(
                "there is nothing at {}; lote serves POST /items, GET /status, GET /metrics, GET /healthz and \
                 GET /readyz",
                head.path
            ),
        );
        return Ok((response, false));
    };
    if head.method != endpoint.method() {
        let response = Response::error(
            405,
            format!("{} takes {}, not {}", head.path, endpoint.method(), head.method),
        )
        .with("Allow", endpoint.method());
        return Ok((response, false));
    }
    if endpoint != Endpoint::Healthz && shared.draining.load(Ordering::Relaxed) {
        return Ok((unavailable(shared, "lote is stopping and takes no new requests"), false));
    }
    let backend = &*shared.backend;
    let response = match endpoint {
        Endpoint::Items => return items(shared, head, conn).map(|response| (response, true)),
        Endpoint::Status => match guarded("the status", || backend.status()) {
            Ok(status) => Response::new(200, "application/json", status),
            Err(failed) => failed,
        },
        Endpoint::Metrics => match guarded("the metrics", || backend.metrics()) {
            Ok(text) => Response::new(200, "text/plain; version=0.0.4", metrics(shared, text)),
            Err(failed) => failed,
        },
        Endpoint::Healthz => Response::new(200, "text/plain", "ok\n"),
        Endpoint::Readyz => match guarded("readiness", || backend.ready()) {
            Ok(Ok(())) => Response::new(200, "text/plain", "ok\n"),
            Ok(Err(why)) => unavailable(shared, format!("not ready: {why}")),
            Err(failed) => failed,
        },
    };
    Ok((response, false))
}

/// `POST /items`: read the body, parse it, and answer 202 only once the
/// backend says every item is durable.
fn items(shared: &Shared, head: &Head, conn: &mut Conn) -> Result<Response, ReadError> {
    let config = &shared.config;
    let declared_too_large = matches!(head.framing, Framing::Length(n) if n > config.max_body as u64);
    if head.expect_continue && head.framing != Framing::None && !declared_too_large {
        conn.send_continue(config.write_timeout).map_err(|_| ReadError::Gone)?;
    }
    let body = conn.read_body(head, config.max_body)?;
    let ndjson = head.content_type.as_deref() == Some("application/x-ndjson");
    let items = match parse_items(&body, ndjson) {
        Ok(items) => items,
        Err(why) => return Ok(Response::error(400, why)),
    };
    drop(body);
    let answer = match guarded("the inbox", || shared.backend.accept(items)) {
        Ok(answer) => answer,
        Err(failed) => return Ok(failed),
    };
    Ok(match answer {
        Ok(Accepted {
            accepted,
            duplicates,
            ids,
        }) => Response::json(
            202,
            &serde_json::json!({ "accepted": accepted, "duplicates": duplicates, "ids": ids }),
        ),
        Err(Refusal::Full(why)) => unavailable(shared, format!("the inbox is full: {why}")),
        Err(Refusal::TooLarge(why)) => Response::error(413, why),
        Err(Refusal::Draining) => unavailable(shared, "lote is stopping and takes no new items"),
        Err(Refusal::NoInbox(why)) => Response::error(404, why),
        Err(Refusal::Failed(why)) => Response::error(
            500,
            format!("the inbox failed, and none of the items is promised: {why}"),
        ),
    })
}

/// One JSON object, or NDJSON lines (blank ones ignored), all of them good.
pub fn parse_items(body: &[u8], ndjson: bool) -> Result<Vec<JsonItem>, String> {
    if !ndjson {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err("the body is empty; send one JSON object like {\"payload\": \"...\"}, \
                        or NDJSON lines with Content-Type: application/x-ndjson"
                .into());
        }
        return JsonItem::parse(body).map(|item| vec![item]).map_err(|why| {
            let lines = body
                .split(|&b| b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
            let hint = if lines.count() > 1 {
                "; for a batch, send one object per line with Content-Type: application/x-ndjson"
            } else {
                ""
            };
            format!("the body is not an item: {why}{hint}")
        });
    }
    let mut items = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = JsonItem::parse(line).map_err(|why| format!("line {}: {}", i + 1, within_line(&why)))?;
        items.push(item);
    }
    if items.is_empty() {
        return Err("the batch has no items; send one JSON object per line".into());
    }
    Ok(items)
}

/// serde_json counts lines within the text it was given, here one line:
/// "at line 1 column 7" is said "at column 7".
fn within_line(why: &str) -> String {
    why.replace(" at line 1 column ", " at column ")
}

/// True when no token is configured, or `authorization` is `Bearer <token>`.
fn authorized(token: Option<&str>, authorization: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some((scheme, given)) = authorization.and_then(|a| a.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && same(given.trim().as_bytes(), token.as_bytes())
}

/// Compares in time that depends on the lengths only, not on where the
/// bytes first differ (a guess cannot be found byte by byte).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut differ = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        differ |= x ^ y;
    }
    std::hint::black_box(differ) == 0
}

/// A 503 with Retry-After.
pub fn unavailable(shared: &Shared, why: impl Into<String>) -> Response {
    let seconds = retry_seconds(shared.config.retry_after);
    Response::error(503, format!("{}; retry after {seconds} s", why.into())).with("Retry-After", seconds.to_string())
}

/// Whole seconds, rounded up, at least 1.
pub fn retry_seconds(after: Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

/// Runs a backend call; a panic becomes a 500 that names `what`.
fn guarded<T>(what: &str, call: impl FnOnce() -> T) -> Result<T, Response> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        log::error!("http: {what} panicked: {message}");
        Response::error(
            500,
            format!("{what} failed inside lote ({message}); nothing is promised: retry, and report it if it persists"),
        )
    })
}

/// The backend's metrics, then the listener's own.
fn metrics(shared: &Shared, mut text: String) -> String {
    use std::fmt::Write as _;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let counts = &shared.counts;
    text.push_str(
        "# HELP lote_http_requests_total HTTP answers the listener sent, by status code (a connection refused at \
         http.max_connections counts as a 503).\n# TYPE lote_http_requests_total counter\n",
    );
    for (code, count) in CODES.iter().zip(&counts.answers) {
        let _ = writeln!(
            text,
            "lote_http_requests_total{{code=\"{code}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    let open = shared.open.lock().sockets.len();
    let _ = write!(
        text,
        "# HELP lote_http_connections HTTP connections open now.\n# TYPE lote_http_connections gauge\n\
         lote_http_connections {open}\n\
         # HELP lote_http_connections_refused_total Connections answered 503 at once because http.max_connections \
         were open.\n# TYPE lote_http_connections_refused_total counter\n\
         lote_http_connections_refused_total {}\n",
        counts.refused.load(Ordering::Relaxed)
    );
    text
}
