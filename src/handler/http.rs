//! `http`: sends each item's payload to a URL (SPEC §3.6).

use std::time::Duration;

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
