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
//!   - transport errors (refused, DNS, reset, a timeout other than the
//!     call's) → `Failure::retryable("transport error: <cause>")`; the call's
//!     own timeout → `Failure::timed_out` ("timed out after Nms"); cut by a
//!     hurry → `"cut short: lote is stopping"`.
//!   - TLS failures (untrusted or expired server certificate, a client
//!     certificate the server refuses) → `Failure::retryable("TLS: <what>;
//!     <the key to check>")`: why retryable is in `tls.rs`.
//!
//!   In `HTTP N: <body>` the body part is left out when the body is empty.
//! - **The uplink** (SPEC §3.12), all read when the handler starts — at
//!   `lote run`, at every reload (which starts the handler again) and in
//!   `lote check`, so a bad file is an error there: `tls` (`tls.rs`: the
//!   trust store, a private CA, the client certificate), `token_file`
//!   (`Authorization: Bearer <its first line>`; the token is kept only as a
//!   header value marked sensitive, never logged, printed or in `Debug`),
//!   the proxy (`proxy.rs`, from the environment). `compress: gzip` gzips
//!   every request body in the one exchange (`send.rs`), so batches too.

mod batch;
mod keys;
mod proxy;
mod send;
mod tls;

pub use keys::HttpKeys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ureq::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING};
use ureq::http::{Method, Uri};
use ureq::Agent;

use super::{BatchHandler, CallContext, Failure, Handler};
use crate::item::Item;
use send::{Agents, Outgoing};

/// Bytes of an error response's body quoted in the failure message.
pub const ERROR_BODY_QUOTE: usize = 200;

/// The message of a call cut short by a hurry.
const CUT_SHORT: &str = "cut short: lote is stopping";

/// Headers lote sets itself on every request.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const ATTEMPT: &str = "x-lote-attempt";

/// Largest token file read: a bearer token is a line, not a document.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// `handler.tls`: PEM files, all optional. The config gives them
/// absolute (relative to `state_dir`); a library caller's relative paths
/// resolve against the working directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA (or CAs) that sign the server's certificate, trusted instead
    /// of the system's store. Default: the system's store.
    pub ca_file: Option<PathBuf>,
    /// The box's certificate (then its intermediates), for mutual TLS.
    /// Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PKCS#8, RSA or SEC1, unencrypted).
    pub key_file: Option<PathBuf>,
}

/// `handler.compress`: how request bodies travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    /// As they are (the default).
    #[default]
    None,
    /// gzip (flate2's default level), with `Content-Encoding: gzip`.
    Gzip,
}

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
    /// Trust and identity for `https://`. Default: the system's trust
    /// store, no client certificate.
    pub tls: TlsFiles,
    /// A file whose first line is sent as `Authorization: Bearer <line>`,
    /// read when the handler starts. Default none.
    pub token_file: Option<PathBuf>,
    /// Request bodies compressed or not. Default none.
    pub compress: Compress,
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
            tls: TlsFiles::default(),
            token_file: None,
            compress: Compress::None,
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
    /// `Bearer <token>` from `token_file`, marked sensitive.
    authorization: Option<HeaderValue>,
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
            if name == AUTHORIZATION && config.token_file.is_some() {
                return Err(
                    "http handler: header Authorization and token_file are both set; keep one (token_file sends Authorization: Bearer <token>)"
                        .into(),
                );
            }
            if name == CONTENT_ENCODING && config.compress != Compress::None {
                return Err(
                    "http handler: header Content-Encoding and compress are both set; lote sets Content-Encoding itself when it compresses, remove the header"
                        .into(),
                );
            }
            headers.push((name, value));
        }
        let authorization = config.token_file.as_deref().map(read_token).transpose()?;
        let proxy = proxy::from_env(&uri, |name| std::env::var(name).ok())
            .map_err(|e| format!("http handler: {e}"))?
            .map(|(proxy, described)| {
                log::info!(
                    "http handler: sending to {} through the proxy {described}",
                    uri.host().unwrap_or_default()
                );
                proxy
            });
        // TLS is spoken to an https:// URL, and to an https:// proxy (with
        // the same trust: ureq has one TLS setting per agent).
        let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"))
            || proxy
                .as_ref()
                .is_some_and(|p| p.protocol() == ureq::ProxyProtocol::Https);
        let tls = tls::tls_config(&config.tls, https, SystemTime::now())?;
        let agent_config = Agent::config_builder()
            // 4xx and 5xx come back as responses, to be mapped below.
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            // See the module doc: a redirect is a config error.
            .max_redirects(0)
            .user_agent(concat!("lote/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            // Chosen above (`proxy.rs`); None also keeps ureq from reading
            // the environment its own way.
            .proxy(proxy)
            .build();
        let agents = Agents::new(agent_config);
        Ok(HttpHandler {
            config,
            method,
            uri,
            headers,
            authorization,
            agents: Arc::new(agents),
        })
    }

    /// The settings this handler runs with.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }
}

/// `token_file`'s first line as an `Authorization: Bearer` value. Errors
/// name the file, never its contents.
fn read_token(path: &Path) -> Result<HeaderValue, String> {
    use std::io::Read;
    let at = format!("handler.token_file {}", path.display());
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES).read_to_end(&mut text))
        .map_err(|e| format!("{at}: cannot read it: {e}"))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let token = std::str::from_utf8(line)
        .map_err(|_| format!("{at}: its first line is not UTF-8 text; expected the bearer token"))?
        .trim();
    if token.is_empty() {
        return Err(format!(
            "{at}: its first line is empty; expected the bearer token on the first line"
        ));
    }
    let cannot_carry = || {
        format!("{at}: the token holds characters an HTTP header cannot carry; expected printable ASCII without spaces")
    };
    // RFC 6750's b64token is printable ASCII; HeaderValue alone would let
    // bytes above 0x7f through.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(cannot_carry());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| cannot_carry())?;
    value.set_sensitive(true);
    Ok(value)
}

impl Handler for HttpHandler {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let body = self.exchange(
            ctx,
            Outgoing {
                body: &item.payload,
                key: ctx.idempotency_key(),
                content_type: None,
                read_limit: self.config.output_limit,
            },
        )?;
        Ok(String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn new_reads_the_token_and_refuses_what_would_clash_with_it_or_with_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let with_token = |headers: Vec<(String, String)>| HttpConfig {
            token_file: Some(token.clone()),
            headers,
            ..HttpConfig::new("http://127.0.0.1/")
        };
        std::fs::write(&token, "  abc.def  \nnext\n").unwrap();
        let handler = HttpHandler::new(with_token(Vec::new())).unwrap();
        let value = handler.authorization.as_ref().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc.def");
        assert!(value.is_sensitive());
        assert!(!format!("{handler:?}").contains("abc.def"));

        let err = HttpHandler::new(with_token(vec![("authorization".into(), "Basic x".into())])).unwrap_err();
        assert!(err.contains("Authorization and token_file"), "{err}");
        let cases: [(&[u8], &str); 5] = [
            (b"", "first line is empty"),
            (b" \r\nsecond", "first line is empty"),
            (b"\x7ftok\n", "cannot carry"),
            ("t\u{ff}k".as_bytes(), "cannot carry"),
            (b"t\xffk", "not UTF-8"),
        ];
        for (text, expect) in cases {
            std::fs::write(&token, text).unwrap();
            let err = HttpHandler::new(with_token(Vec::new())).unwrap_err();
            assert!(err.contains("handler.token_file") && err.contains(expect), "{err}");
            assert!(!err.contains("tok\n") && !err.contains("t\u{ff}k"), "{err}");
        }
        std::fs::remove_file(&token).unwrap();
        assert!(HttpHandler::new(with_token(Vec::new()))
            .unwrap_err()
            .contains("cannot read it"));

        let gzip = HttpConfig {
            compress: Compress::Gzip,
            headers: vec![("Content-Encoding".into(), "br".into())],
            ..HttpConfig::new("http://127.0.0.1/")
        };
        assert!(HttpHandler::new(gzip)
            .unwrap_err()
            .contains("Content-Encoding and compress"));
    }
}
