//! The `handler:` section of `kind: http` as written, checked into an
//! [`HttpConfig`], printed and started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml::Value;

use super::{Compress, HttpConfig, HttpHandler, TlsFiles};
use crate::handler::node::Nodes;
use crate::handler::{handler_keys, Handler, HandlerAt, HandlerKind};
use crate::spec::effective::{bytes, dur, map, pairs, path, spelled};
use crate::spec::{self, absolute, ByteSize, Check, Dur, MAX_DURATION};

/// `handler.tls` as written; paths relative to `state_dir`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsKeys {
    /// PEM: the CA(s) that sign the server's certificate, trusted instead
    /// of the system's store. Default: the system's store.
    pub ca_file: Option<PathBuf>,
    /// PEM: the box's certificate chain, for mutual TLS. Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM: `cert_file`'s private key. Needs `cert_file`.
    pub key_file: Option<PathBuf>,
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
        /// https trust and identity. Default: the system's trust store.
        tls: Option<TlsKeys>,
        /// `Authorization: Bearer <first line>`, read at start and reload.
        token_file: Option<PathBuf>,
        /// `none` or `gzip` request bodies. Default none.
        compress: Option<Compress>,
    }
}

impl HandlerKind for HttpConfig {
    const NAME: &'static str = "http";
    type Keys = HttpKeys;

    fn build(h: HttpKeys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self> {
        let timeout = at.timeout;
        let d = HttpConfig::default();
        let Some(url) = h.url else {
            return check.err(
                &at.key("url"),
                "is missing; expected the URL to send items to, e.g. https://example.com/items",
            );
        };
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
            return check.err(
                &at.key("url"),
                format!("`{url}` is not an http(s) URL; expected http://host[:port]/path or https://…"),
            );
        }
        let method = h.method.unwrap_or(d.method).to_ascii_uppercase();
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return check.err(
                &at.key("method"),
                format!("`{method}` is not an HTTP method; expected e.g. POST or PUT"),
            );
        }
        let headers: Vec<(String, String)> = h.headers.map_or(d.headers, |m| m.into_iter().collect());
        let compress = h.compress.unwrap_or(d.compress);
        for (name, value) in &headers {
            if name.eq_ignore_ascii_case("authorization") && h.token_file.is_some() {
                return check.err(
                    &at.key(&format!("headers.{name}")),
                    "is set together with `token_file`; keep one (token_file sends Authorization: Bearer <token>)",
                );
            }
            if name.eq_ignore_ascii_case("content-encoding") && compress != Compress::None {
                return check.err(
                    &at.key(&format!("headers.{name}")),
                    "is set together with `compress`; lote sets Content-Encoding itself when it compresses, remove the header",
                );
            }
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) || value.contains(['\r', '\n']) {
                return check.err(
                    &at.key(&format!("headers.{name}")),
                    "is not a valid header; expected a name of letters, digits and -, and a one-line value",
                );
            }
        }
        let connect_timeout = check.at_most(
            &at.key("connect_timeout"),
            h.connect_timeout.map_or(d.connect_timeout, |t| t.0),
            MAX_DURATION,
        )?;
        if connect_timeout.is_zero() {
            return check.err(&at.key("connect_timeout"), "is 0; expected a limit like 5s");
        }
        let file = |key: &str, p: Option<PathBuf>| -> spec::Result<Option<PathBuf>> {
            match p {
                Some(p) => {
                    check.path(key, &p)?;
                    Ok(Some(absolute(at.state_dir, &p)))
                }
                None => Ok(None),
            }
        };
        let t = h.tls.unwrap_or_default();
        let tls = TlsFiles {
            ca_file: file(&at.key("tls.ca_file"), t.ca_file)?,
            cert_file: file(&at.key("tls.cert_file"), t.cert_file)?,
            key_file: file(&at.key("tls.key_file"), t.key_file)?,
        };
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return check.err(
                    &at.key("tls.cert_file"),
                    "is set without `tls.key_file`; mutual TLS needs both (the certificate chain and its private key)",
                )
            }
            (None, Some(_)) => {
                return check.err(
                    &at.key("tls.key_file"),
                    "is set without `tls.cert_file`; mutual TLS needs both (the certificate chain and its private key)",
                )
            }
            _ => {}
        }
        Ok(HttpConfig {
            url,
            method,
            headers,
            connect_timeout,
            timeout: timeout.unwrap_or(d.timeout),
            output_limit: match h.output_limit {
                None => d.output_limit,
                Some(b) => check.usize_bytes(&at.key("output_limit"), b.0)?,
            },
            tls,
            token_file: file(&at.key("token_file"), h.token_file)?,
            compress,
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
            (
                "tls",
                map([
                    ("ca_file", opt_path(self.tls.ca_file.as_deref())),
                    ("cert_file", opt_path(self.tls.cert_file.as_deref())),
                    ("key_file", opt_path(self.tls.key_file.as_deref())),
                ]),
            ),
            // The path only: the token itself is read at start, never printed.
            ("token_file", opt_path(self.token_file.as_deref())),
            ("compress", spelled(&self.compress)),
        ])
    }

    fn warnings(&self) -> Vec<String> {
        super::tls::expiry_warnings(&self.tls, std::time::SystemTime::now())
    }

    fn start(&self, _nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        Ok(Arc::new(HttpHandler::new(self.clone())?))
    }
}

fn opt_path(p: Option<&Path>) -> Value {
    p.map_or(Value::Null, path)
}
