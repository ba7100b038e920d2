//! `http`: sends each item's payload to a URL (SPEC §3.6).
//!
//! # Invariants
//!
//! - **One request per call**: `method url`, the payload as the body, the
//!   configured headers, then `Idempotency-Key: <item id>` and
//!   `X-Lote-Attempt: <n>` (set by lote; a config cannot override them). One
//!   [`ureq::Agent`] (and its connection pool) serves every worker.
//! - **Time.** Connecting is bounded by `connect_timeout`; the whole call
//!   (connect, send, response, body) by the sooner of `timeout` and the call
//!   context's deadline. When lote hurries, the agent is shut down, which
//!   fails every request in flight at once (a DNS lookup or TCP connect in
//!   progress still runs out its own timeout), and a fresh agent serves later
//!   calls.
//! - **Status mapping.**
//!   - 2xx → done; the output is the body's first `output_limit` bytes, lossy
//!     UTF-8 (the rest is not read: the connection is dropped instead).
//!   - 408, 429, 5xx → `Failure::retryable("HTTP 503: <first 200 bytes of
//!     body>")`, carrying `Retry-After` as a hint when the header holds
//!     delta-seconds or an IMF-fixdate (the form RFC 9110 requires senders to
//!     use). The obsolete RFC 850 and asctime date forms give no hint.
//!   - 3xx → `Failure::fatal("HTTP 301: unexpected redirect to <Location>")`.
//!     Redirects are never followed: following one would re-send (or, on
//!     301/302/303, silently drop) the payload to a place the config never
//!     named, and a moved endpoint is a config error a retry cannot fix.
//!   - other 4xx → `Failure::fatal("HTTP 400: <first 200 bytes of body>")`.
//!   - anything else (1xx, 6xx…) → retryable `"HTTP 600: unexpected status"`.
//!   - transport errors (refused, DNS, TLS, reset, a timeout other than the
//!     call's) → `Failure::retryable("transport error: <cause>")`; the call's
//!     own timeout → `Failure::timed_out` ("timed out after Nms"); cut by a
//!     hurry → `"cut short: lote is stopping"`.
//!
//!   In `HTTP N: <body>` the body part is left out when the body is empty.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::header::{HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use ureq::http::{Method, Request, Uri};
use ureq::{Agent, Timeout};

use super::{handler_keys, CallContext, Failure, Handler, HandlerAt, HandlerKind};
use crate::item::Item;
use crate::spec::effective::{bytes, dur, map, pairs};
use crate::spec::{self, ByteSize, Check, Dur, MAX_DURATION};
use crate::stop::StopLevel;
use crate::sync::Mutex;

/// Bytes of an error response's body quoted in the failure message.
pub const ERROR_BODY_QUOTE: usize = 200;

/// The message of a call cut short by a hurry.
const CUT_SHORT: &str = "cut short: lote is stopping";

/// Headers lote sets itself on every request.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const ATTEMPT: &str = "x-lote-attempt";

/// An http handler's settings (config section `handler:` with `kind: http`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    pub url: String,
    /// Default `POST`.
    pub method: String,
    /// Extra request headers (`Idempotency-Key: <id>` is always sent).
    pub headers: Vec<(String, String)>,
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Whole request, when the call context has no sooner deadline.
    /// Default 30 s.
    pub timeout: Duration,
    /// Most bytes of the response body kept as the output. Default 64 KiB.
    pub output_limit: usize,
}

impl Default for HttpConfig {
    /// No URL (it must be set), `POST`, no extra headers, 5 s to connect,
    /// 30 s per call, 64 KiB of output.
    fn default() -> Self {
        HttpConfig {
            url: String::new(),
            method: "POST".to_string(),
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            output_limit: 64 * 1024,
        }
    }
}

impl HttpConfig {
    /// The defaults, sending to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        HttpConfig {
            url: url.into(),
            ..HttpConfig::default()
        }
    }
}

/// Sends each item to [`HttpConfig::url`]. One value serves every worker.
pub struct HttpHandler {
    config: HttpConfig,
    method: Method,
    uri: Uri,
    /// The configured headers, checked once.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Shared with the hurry listeners of calls in flight.
    agents: Arc<Agents>,
}

impl std::fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandler")
            .field("method", &self.method)
            // Not the whole URL: its userinfo or query may hold a secret.
            .field("host", &self.uri.host())
            .finish_non_exhaustive()
    }
}

/// The agent calls use, replaceable after a hurry shut it down.
struct Agents {
    /// What every agent is built from.
    config: ureq::config::Config,
    /// Protects: which agent new calls take. Held only to clone or swap it.
    current: Mutex<Generation>,
}

struct Generation {
    /// Bumped on every swap, so that of several calls hurried at once only the
    /// first replaces the agent they shared.
    number: u64,
    agent: Agent,
}

impl Agents {
    fn current(&self) -> (u64, Agent) {
        let current = self.current.lock();
        (current.number, current.agent.clone())
    }

    /// Shuts down `agent` (generation `number`), failing its requests in
    /// flight, and gives later calls a fresh one.
    fn retire(&self, number: u64, agent: Agent) {
        {
            let mut current = self.current.lock();
            if current.number == number {
                current.number += 1;
                current.agent = Agent::new_with_config(self.config.clone());
            }
        }
        // Outside the lock: closes sockets.
        agent.shutdown();
    }
}

impl HttpHandler {
    /// Checks `config` and builds the agent. The error says what is wrong and
    /// what to do about it.
    pub fn new(config: HttpConfig) -> Result<Self, String> {
        let url = config.url.trim();
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(format!(
                "http handler: url {url:?} must start with http:// or https://, e.g. http://127.0.0.1:8080/items"
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("http handler: url {url:?} is not a valid URL: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("http handler: url {url:?} has no host"));
        }
        let method = match config.method.to_ascii_uppercase().as_str() {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "GET" => Method::GET,
            _ => {
                return Err(format!(
                    "http handler: method {:?} is not supported; use POST (the default), PUT, PATCH, DELETE or GET",
                    config.method
                ))
            }
        };
        let mut headers = Vec::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("http handler: header name {name:?} is not a valid HTTP header name"))?;
            if name == IDEMPOTENCY_KEY || name == ATTEMPT {
                return Err(format!(
                    "http handler: header {name} is set by lote on every request; remove it"
                ));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("http handler: header {name} has a value with characters HTTP does not allow"))?;
            headers.push((name, value));
        }
        let agent_config = Agent::config_builder()
            // 4xx and 5xx come back as responses, to be mapped below.
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            // See the module doc: a redirect is a config error.
            .max_redirects(0)
            .user_agent(concat!("lote/", env!("CARGO_PKG_VERSION")))
            .build();
        let agents = Agents {
            current: Mutex::new(Generation {
                number: 0,
                agent: Agent::new_with_config(agent_config.clone()),
            }),
            config: agent_config,
        };
        Ok(HttpHandler {
            config,
            method,
            uri,
            headers,
            agents: Arc::new(agents),
        })
    }

    /// The settings this handler runs with.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    fn request<'p>(&self, ctx: &CallContext<'_>, payload: &'p [u8]) -> Result<Request<&'p [u8]>, Failure> {
        let key = HeaderValue::from_bytes(ctx.idempotency_key().as_bytes()).map_err(|_| {
            Failure::fatal("item id has characters HTTP does not allow in a header; it cannot be an Idempotency-Key")
        })?;
        let mut request = Request::builder().method(self.method.clone()).uri(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request
            .header(IDEMPOTENCY_KEY, key)
            .header(ATTEMPT, ctx.attempt())
            .body(payload)
            .map_err(|e| Failure::fatal(format!("cannot build the request: {e}")))
    }
}

impl Handler for HttpHandler {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        if ctx.is_cancelled() {
            return Err(Failure::retryable(CUT_SHORT));
        }
        let timeout = ctx
            .remaining()
            .map_or(self.config.timeout, |left| left.min(self.config.timeout));
        if timeout.is_zero() {
            return Err(Failure::timed_out(Duration::ZERO));
        }
        let request = self.request(ctx, &item.payload)?;

        let (generation, agent) = self.agents.current();
        // A hurry shuts this call's agent down, which fails the request at
        // once; the listener is called at once if lote is already hurrying,
        // and unregistered when `_hurry` drops.
        let _hurry = {
            let agents = Arc::clone(&self.agents);
            let agent = agent.clone();
            ctx.stop_handle().on_change(move |level| {
                if level == StopLevel::Hurry {
                    agents.retire(generation, agent.clone());
                }
            })
        };
        let started = Instant::now();
        let request = agent.configure_request(request).timeout_global(Some(timeout)).build();
        let transport_failure = |e: ureq::Error| {
            if ctx.is_cancelled() {
                Failure::retryable(CUT_SHORT)
            } else if matches!(e, ureq::Error::Timeout(Timeout::Global)) {
                Failure::timed_out(started.elapsed())
            } else {
                Failure::retryable(format!("transport error: {e}"))
            }
        };
        let mut response = agent.run(request).map_err(transport_failure)?;

        let status = response.status().as_u16();
        if response.status().is_success() {
            let mut body = Vec::new();
            response
                .body_mut()
                .as_reader()
                .take(self.config.output_limit as u64)
                .read_to_end(&mut body)
                .map_err(|e| transport_failure(ureq::Error::from(e)))?;
            return Ok(String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
        }
        if response.status().is_redirection() {
            let to = response
                .headers()
                .get(LOCATION)
                .map_or("(no Location)".into(), |to| String::from_utf8_lossy(to.as_bytes()));
            return Err(Failure::fatal(format!("HTTP {status}: unexpected redirect to {to}")));
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut quote = Vec::new();
        // Best effort: a body that fails to arrive leaves the quote short.
        let _ = response
            .body_mut()
            .as_reader()
            .take(ERROR_BODY_QUOTE as u64)
            .read_to_end(&mut quote);
        let quote = String::from_utf8_lossy(&quote);
        let quote = quote.trim();
        let message = if quote.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {quote}")
        };
        let failure = match status {
            408 | 429 | 500..=599 => Failure::retryable(message),
            400..=499 => Failure::fatal(message),
            _ => Failure::retryable(format!("HTTP {status}: unexpected status")),
        };
        Err(match (failure.is_retryable(), retry_after) {
            (true, Some(after)) => failure.with_retry_after(after),
            _ => failure,
        })
    }
}

/// A `Retry-After` value as a wait from `now`: delta-seconds, or an
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`; a past date is zero).
/// `None` for anything else, including the obsolete date forms.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, rewritten as RFC 3339 for humantime
/// (already a dependency) rather than pulling in a date crate for one format.
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let (_weekday, rest) = value.split_once(", ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = fields.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    if day.len() != 2 || year.len() != 4 {
        return None;
    }
    humantime::parse_rfc3339(&format!("{year}-{month:02}-{day}T{time}Z")).ok()
}

handler_keys! {
    /// `handler: {kind: http}` — sends each payload to a URL.
    HttpKeys {
        /// `http://…` or `https://…`. Required.
        url: Option<String>,
        /// Default `POST`.
        method: Option<String>,
        /// Extra request headers. Default none.
        headers: Option<BTreeMap<String, String>>,
        /// Default 5s.
        connect_timeout: Option<Dur>,
        /// Most bytes of the response body kept as the output. Default 64KiB.
        output_limit: Option<ByteSize>,
    }
}

impl HandlerKind for HttpConfig {
    const NAME: &'static str = "http";
    type Keys = HttpKeys;

    fn build(h: HttpKeys, at: &HandlerAt, check: &Check) -> spec::Result<Self> {
        let timeout = at.timeout;
        let d = HttpConfig::default();
        let Some(url) = h.url else {
            return check.err(
                "handler.url",
                "is missing; expected the URL to send items to, e.g. https://example.com/items",
            );
        };
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
            return check.err(
                "handler.url",
                format!("`{url}` is not an http(s) URL; expected http://host[:port]/path or https://…"),
            );
        }
        let method = h.method.unwrap_or(d.method).to_ascii_uppercase();
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return check.err(
                "handler.method",
                format!("`{method}` is not an HTTP method; expected e.g. POST or PUT"),
            );
        }
        let headers: Vec<(String, String)> = h.headers.map_or(d.headers, |m| m.into_iter().collect());
        for (name, value) in &headers {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) || value.contains(['\r', '\n']) {
                return check.err(
                    &format!("handler.headers.{name}"),
                    "is not a valid header; expected a name of letters, digits and -, and a one-line value",
                );
            }
        }
        let connect_timeout = check.at_most(
            "handler.connect_timeout",
            h.connect_timeout.map_or(d.connect_timeout, |t| t.0),
            MAX_DURATION,
        )?;
        if connect_timeout.is_zero() {
            return check.err("handler.connect_timeout", "is 0; expected a limit like 5s");
        }
        Ok(HttpConfig {
            url,
            method,
            headers,
            connect_timeout,
            timeout: timeout.unwrap_or(d.timeout),
            output_limit: match h.output_limit {
                None => d.output_limit,
                Some(b) => check.usize_bytes("handler.output_limit", b.0)?,
            },
        })
    }

    fn effective(&self) -> serde_yaml::Value {
        map([
            ("kind", Self::NAME.into()),
            ("url", self.url.as_str().into()),
            ("method", self.method.as_str().into()),
            ("headers", pairs(&self.headers)),
            ("connect_timeout", dur(self.connect_timeout)),
            ("output_limit", bytes(self.output_limit as u64)),
        ])
    }

    fn start(&self) -> Result<Arc<dyn Handler>, String> {
        Ok(Arc::new(HttpHandler::new(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_imf_dates() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:30Z").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Obsolete forms and junk give no hint.
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), None);
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn new_rejects_bad_urls_methods_and_headers() {
        let err = |config: HttpConfig| HttpHandler::new(config).unwrap_err();
        assert!(err(HttpConfig::new("ftp://x/")).contains("http:// or https://"));
        assert!(
            err(HttpConfig::new("http://")).contains("not a valid URL")
                || err(HttpConfig::new("http://")).contains("no host")
        );
        let mut config = HttpConfig::new("http://127.0.0.1/");
        config.method = "BREW".into();
        assert!(err(config).contains("method \"BREW\""));
        let mut config = HttpConfig::new("http://127.0.0.1/");
        config.headers = vec![("Idempotency-Key".into(), "x".into())];
        assert!(err(config).contains("set by lote"));
        let mut config = HttpConfig::new("http://127.0.0.1/");
        config.headers = vec![("Bad Name".into(), "x".into())];
        assert!(err(config).contains("not a valid HTTP header name"));
        let mut config = HttpConfig::new("https://example.com/items");
        config.method = "put".into();
        assert_eq!(HttpHandler::new(config).unwrap().method, Method::PUT);
    }
}
