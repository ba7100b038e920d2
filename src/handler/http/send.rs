//! One HTTP exchange, whatever is sent: the agent (and its replacement after
//! a hurry), the time limits, and the mapping of every answer that is not a
//! 2xx to a [`Failure`] (the rules are in the module doc of `http`). The
//! one-item call and the batch call differ only in the body they send and in
//! what they make of a 2xx body. What every call adds is here too: the
//! bearer token and the gzip of `compress`.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use ureq::http::Request;
use ureq::{Agent, Timeout};

use super::{tls, Compress, HttpHandler, ATTEMPT, CUT_SHORT, ERROR_BODY_QUOTE, IDEMPOTENCY_KEY};
use crate::handler::{CallContext, Failure};
use crate::stop::StopLevel;
use crate::sync::Mutex;

/// What one exchange sends.
pub(super) struct Outgoing<'a> {
    pub body: &'a [u8],
    /// The `Idempotency-Key` header: the item id, or a batch's key.
    pub key: &'a str,
    /// `Content-Type`, unless the configured headers set one.
    pub content_type: Option<&'static str>,
    /// Most bytes of a 2xx body read; the rest is not read (the connection
    /// is dropped instead).
    pub read_limit: usize,
}

/// The agent calls use, replaceable after a hurry shut it down.
pub(super) struct Agents {
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
    pub(super) fn new(config: ureq::config::Config) -> Self {
        Agents {
            current: Mutex::new(Generation {
                number: 0,
                agent: Agent::new_with_config(config.clone()),
            }),
            config,
        }
    }

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
    /// The request for `out`, carrying `body` (`out.body`, compressed or not).
    fn request<'b>(
        &self,
        ctx: &CallContext<'_>,
        out: &Outgoing<'_>,
        body: &'b [u8],
    ) -> Result<Request<&'b [u8]>, Failure> {
        let key = HeaderValue::from_bytes(out.key.as_bytes()).map_err(|_| {
            Failure::fatal("item id has characters HTTP does not allow in a header; it cannot be an Idempotency-Key")
        })?;
        let mut request = Request::builder().method(self.method.clone()).uri(self.uri.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(content_type) = out.content_type {
            if !self.headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
                request = request.header(CONTENT_TYPE, content_type);
            }
        }
        if let Some(token) = &self.authorization {
            request = request.header(AUTHORIZATION, token);
        }
        if self.config.compress == Compress::Gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        request
            .header(IDEMPOTENCY_KEY, key)
            .header(ATTEMPT, ctx.attempt())
            .body(body)
            .map_err(|e| Failure::fatal(format!("cannot build the request: {e}")))
    }

    /// Sends `out` and returns a 2xx answer's body (its first
    /// `out.read_limit` bytes); any other answer, or none, is the failure it
    /// maps to.
    pub(super) fn exchange(&self, ctx: &CallContext<'_>, out: Outgoing<'_>) -> Result<Vec<u8>, Failure> {
        if ctx.is_cancelled() {
            return Err(Failure::retryable(CUT_SHORT));
        }
        let timeout = ctx
            .remaining()
            .map_or(self.config.timeout, |left| left.min(self.config.timeout));
        if timeout.is_zero() {
            return Err(Failure::timed_out(Duration::ZERO));
        }
        let compressed;
        let body = match self.config.compress {
            Compress::None => out.body,
            Compress::Gzip => {
                compressed = gzip(out.body);
                &compressed[..]
            }
        };
        let request = self.request(ctx, &out, body)?;

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
            } else if let Some(what) = tls::tls_failure(
                &e,
                self.uri.host().unwrap_or_default(),
                self.config.tls.cert_file.is_some(),
            ) {
                Failure::retryable(what)
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
                .take(out.read_limit as u64)
                .read_to_end(&mut body)
                .map_err(|e| transport_failure(ureq::Error::from(e)))?;
            return Ok(body);
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

/// `body` gzipped at flate2's default level: NDJSON and JSON shrink to a
/// fraction, which is what a slow uplink is short of.
fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = b"{\"id\":\"a\",\"payload\":\"x\"}\n".repeat(100);
        let packed = gzip(&body);
        assert!(packed.len() < body.len() / 10);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, body);
        assert!(!gzip(b"").is_empty());
    }

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
}
