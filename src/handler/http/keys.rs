//! The `handler:` section of `kind: http` as written, checked into an
//! [`HttpConfig`], printed and started.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{HttpConfig, HttpHandler};
use crate::handler::{handler_keys, Handler, HandlerAt, HandlerKind};
use crate::spec::effective::{bytes, dur, map, pairs};
use crate::spec::{self, ByteSize, Check, Dur, MAX_DURATION};

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
