//! The `http:` section (SPEC §3.11): the keys as written ([`HttpKeys`]) and
//! the checked config the listener runs with ([`HttpConfig`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::spec::effective::{bytes, dur, path};
use crate::spec::{self, absolute, ByteSize, Check, Dur, MAX_DURATION};

/// The most connections `http.max_connections` allows: each one is a thread.
pub const MAX_CONNECTIONS: u64 = 10_000;

/// A token file longer than this is not a token file.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Where the listener binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `host:port` as written (`localhost` resolves when binding).
    Tcp(String),
    /// `unix:/path`: a Unix stream socket at this path.
    Unix(PathBuf),
}

impl Listen {
    /// The address as the config spells it.
    pub fn spelled(&self) -> String {
        match self {
            Listen::Tcp(address) => address.clone(),
            Listen::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// `http:` as written. Every key is optional; the defaults are on the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpKeys {
    /// `host:port`, or `unix:/path` (relative to `state_dir`). Default
    /// `127.0.0.1:8787`. Anything but a loopback address or a Unix socket
    /// needs `token_file`.
    pub listen: Option<String>,
    /// The Unix socket's permissions, in octal and quoted (`"0660"`).
    /// Default `"0660"`. Unix sockets only.
    pub socket_mode: Option<Value>,
    /// A file whose first line is the bearer token every request but
    /// `GET /healthz` must carry. Relative to `state_dir`. Default none.
    pub token_file: Option<PathBuf>,
    /// Larger request bodies are answered 413. Default 16MiB.
    pub max_body: Option<ByteSize>,
    /// Open connections at most; the next one is answered 503 at once.
    /// Default 64.
    pub max_connections: Option<u64>,
    /// The `Retry-After` of every 503 (whole seconds, rounded up). Default 1s.
    pub retry_after: Option<Dur>,
    /// A request's head and body must arrive within this of its first byte,
    /// and an idle connection is closed after it. Default 10s.
    pub read_timeout: Option<Dur>,
    /// An answer the client does not take within this closes the
    /// connection. Default 10s.
    pub write_timeout: Option<Dur>,
}

/// The listener's checked config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: Listen,
    /// Permission bits of a Unix socket (at most 0o777).
    pub socket_mode: u32,
    /// Absolute.
    pub token_file: Option<PathBuf>,
    pub max_body: usize,
    /// At least 1.
    pub max_connections: usize,
    pub retry_after: Duration,
    /// Not zero.
    pub read_timeout: Duration,
    /// Not zero.
    pub write_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Listen::Tcp("127.0.0.1:8787".into()),
            socket_mode: 0o660,
            token_file: None,
            max_body: 16 << 20,
            max_connections: 64,
            retry_after: Duration::from_secs(1),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    /// Checks `http:` and fills in the defaults.
    pub fn build(keys: HttpKeys, state_dir: &Path, check: &Check) -> spec::Result<HttpConfig> {
        let d = HttpConfig::default();
        let listen = match keys.listen {
            None => d.listen,
            Some(text) => listen(&text, state_dir, check)?,
        };
        let socket_mode = match (&listen, keys.socket_mode) {
            (_, None) => d.socket_mode,
            (Listen::Unix(_), Some(mode)) => socket_mode(&mode, check)?,
            (Listen::Tcp(_), Some(_)) => {
                return check.err(
                    "http.socket_mode",
                    "applies to a Unix socket only; remove it, or listen on unix:/path",
                )
            }
        };
        let token_file = match keys.token_file {
            None => None,
            Some(file) => {
                check.path("http.token_file", &file)?;
                Some(absolute(state_dir, &file))
            }
        };
        if token_file.is_none() {
            if let Listen::Tcp(address) = &listen {
                if !is_loopback(address) {
                    return check.err(
                        "http.listen",
                        format!(
                            "is {address}, which other machines can reach, and there is no http.token_file; \
                             set http.token_file, or bind 127.0.0.1 (or a unix: socket)"
                        ),
                    );
                }
            }
        }
        let max_body = match keys.max_body {
            None => d.max_body,
            Some(ByteSize(0)) => return check.err("http.max_body", "is 0; expected a size of at least 1 byte"),
            Some(ByteSize(n)) => check.usize_bytes("http.max_body", n)?,
        };
        let max_connections = match keys.max_connections {
            None => d.max_connections,
            Some(n) => {
                check.count("http.max_connections", n, 1..=MAX_CONNECTIONS)?;
                n as usize
            }
        };
        let retry_after = check.at_most(
            "http.retry_after",
            keys.retry_after.map_or(d.retry_after, |t| t.0),
            MAX_DURATION,
        )?;
        let timeout = |key: &str, value: Option<Dur>, default: Duration| match value {
            Some(Dur(Duration::ZERO)) => check.err(key, "is 0; expected a duration like 10s"),
            other => check.at_most(key, other.map_or(default, |t| t.0), MAX_DURATION),
        };
        Ok(HttpConfig {
            read_timeout: timeout("http.read_timeout", keys.read_timeout, d.read_timeout)?,
            write_timeout: timeout("http.write_timeout", keys.write_timeout, d.write_timeout)?,
            listen,
            socket_mode,
            token_file,
            max_body,
            max_connections,
            retry_after,
        })
    }

    /// The section as `lote check` prints it (loading it again gives the
    /// same config).
    pub fn effective(&self) -> Value {
        let mut out = Mapping::new();
        let mut put = |key: &str, value: Value| out.insert(Value::from(key), value);
        put("listen", Value::from(self.listen.spelled()));
        if let Listen::Unix(_) = self.listen {
            put("socket_mode", Value::from(format!("{:04o}", self.socket_mode)));
        }
        put("token_file", self.token_file.as_deref().map_or(Value::Null, path));
        put("max_body", bytes(self.max_body as u64));
        put("max_connections", Value::from(self.max_connections as u64));
        put("retry_after", dur(self.retry_after));
        put("read_timeout", dur(self.read_timeout));
        put("write_timeout", dur(self.write_timeout));
        Value::Mapping(out)
    }

    /// The bearer token: `token_file`'s first line, trimmed. `Ok(None)`
    /// without a `token_file`; `Err` says what is wrong with the file.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        use std::io::Read;
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let fail = |why: String| format!("http.token_file {}: {why}", file.display());
        let mut text = Vec::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut text))
            .map_err(|e| fail(format!("cannot read it ({e})")))?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            return Err(fail(format!(
                "is larger than {MAX_TOKEN_FILE} bytes; expected one line holding the token"
            )));
        }
        let text = String::from_utf8(text).map_err(|_| fail("is not UTF-8 text".into()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(fail(
                "its first line is empty; write the token on the first line".into(),
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// `host:port`, `[v6]:port` or `unix:/path`.
fn listen(text: &str, state_dir: &Path, check: &Check) -> spec::Result<Listen> {
    const KEY: &str = "http.listen";
    if let Some(file) = text.strip_prefix("unix:") {
        let file = Path::new(file);
        check.path(KEY, file)?;
        let file = absolute(state_dir, file);
        // sun_path holds 108 bytes with the terminating NUL.
        if file.as_os_str().len() > 107 {
            return check.err(
                KEY,
                format!(
                    "the socket path {} is longer than the 107 bytes a Unix socket address holds; \
                     expected a shorter path",
                    file.display()
                ),
            );
        }
        return Ok(Listen::Unix(file));
    }
    let bad = |why: &str| {
        check.err(
            KEY,
            format!("is {text:?}, {why}; expected host:port like 127.0.0.1:8787, or unix:/path/to.sock"),
        )
    };
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(Listen::Tcp(text.to_string()));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return bad("which has no port");
    };
    if port.parse::<u16>().is_err() {
        return bad("whose port is not a number from 0 to 65535");
    }
    if host.is_empty() {
        return bad("which has no host");
    }
    if host.contains(':') || host.contains('[') {
        return bad("not an address (an IPv6 address goes in brackets: [::1]:8787)");
    }
    Ok(Listen::Tcp(text.to_string()))
}

/// True for 127.0.0.0/8, ::1 and `localhost`. Any other name could resolve
/// to an address other machines reach.
fn is_loopback(address: &str) -> bool {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    match address.rsplit_once(':') {
        Some((host, _)) => {
            host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// `"0660"`: octal permission bits, at most 0777. A number is refused: YAML
/// reads 0660 as decimal 660, which is not the mode anyone meant.
fn socket_mode(value: &Value, check: &Check) -> spec::Result<u32> {
    const KEY: &str = "http.socket_mode";
    let Value::String(text) = value else {
        return check.err(
            KEY,
            "is not a string; write the mode in octal and in quotes, like \"0660\"",
        );
    };
    let octal = !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(text, 8) {
        Ok(mode) if octal && mode <= 0o777 => Ok(mode),
        _ => check.err(
            KEY,
            format!("is {text:?}; expected permission bits in octal from \"0000\" to \"0777\", like \"0660\""),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::spec::{Check, Doc};

    fn build(yaml: &str) -> Result<HttpConfig, String> {
        let keys: HttpKeys = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let doc = Doc {
            file: Path::new("config.yaml"),
            text: yaml,
        };
        let check = Check {
            doc: &doc,
            warnings: Vec::new(),
        };
        HttpConfig::build(keys, Path::new("/state"), &check).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_the_spec_s() {
        let config = build("{}").unwrap();
        assert_eq!(config, HttpConfig::default());
        assert_eq!(config.listen, Listen::Tcp("127.0.0.1:8787".into()));
        assert_eq!((config.max_body, config.max_connections), (16 << 20, 64));
        assert_eq!(config.retry_after, Duration::from_secs(1));
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_file() {
        for listen in ["0.0.0.0:8787", "192.168.1.5:80", "[::]:8787", "box.example:8787"] {
            let err = build(&format!("listen: \"{listen}\"")).unwrap_err();
            assert!(err.contains("http.listen"), "{err}");
            assert!(err.contains("set http.token_file, or bind 127.0.0.1"), "{err}");
            let ok = build(&format!("listen: \"{listen}\"\ntoken_file: token")).unwrap();
            assert_eq!(ok.token_file.as_deref(), Some(Path::new("/state/token")));
        }
        for listen in ["127.0.0.2:1", "[::1]:8787", "localhost:8787", "unix:ingest.sock"] {
            build(&format!("listen: \"{listen}\"")).unwrap();
        }
        let unix = build("listen: unix:run/ingest.sock").unwrap();
        assert_eq!(unix.listen, Listen::Unix("/state/run/ingest.sock".into()));
        for bad in ["8787", "::1:8787", ":8787", "host:port", "unix:"] {
            let err = build(&format!("listen: \"{bad}\"")).unwrap_err();
            assert!(err.contains("http.listen"), "{bad}: {err}");
        }
    }

    #[test]
    fn socket_mode_is_quoted_octal_for_a_unix_socket_only() {
        let ok = build("listen: unix:/run/x.sock\nsocket_mode: \"0600\"").unwrap();
        assert_eq!(ok.socket_mode, 0o600);
        for bad in ["\"0999\"", "\"rw\"", "\"+660\"", "\"01777\"", "660", "\"\""] {
            let err = build(&format!("listen: unix:/run/x.sock\nsocket_mode: {bad}")).unwrap_err();
            assert!(err.contains("http.socket_mode"), "{bad}: {err}");
            assert!(err.contains("\"0660\""), "{bad}: {err}");
        }
        let err = build("socket_mode: \"0600\"").unwrap_err();
        assert!(err.contains("Unix socket only"), "{err}");
    }

    #[test]
    fn impossible_values_are_refused_by_key() {
        for (yaml, key) in [
            ("max_connections: 0", "http.max_connections"),
            ("max_body: 0", "http.max_body"),
            ("max_body: 2GiB", "http.max_body"),
            ("read_timeout: 0s", "http.read_timeout"),
            ("write_timeout: 0s", "http.write_timeout"),
            ("retry_after: 100d", "http.retry_after"),
        ] {
            let err = build(yaml).unwrap_err();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        assert!(build("listen_on: x").unwrap_err().contains("unknown field"));
    }

    #[test]
    fn the_effective_section_builds_the_same_config() {
        for yaml in [
            "{}",
            "listen: unix:/run/lote/ingest.sock\nsocket_mode: \"0640\"\ntoken_file: t\nmax_body: 1MiB\n\
             max_connections: 3\nretry_after: 2s\nread_timeout: 1s\nwrite_timeout: 3s",
        ] {
            let config = build(yaml).unwrap();
            let again = build(&serde_yaml::to_string(&config.effective()).unwrap()).unwrap();
            assert_eq!(again, config);
        }
    }

    #[test]
    fn the_token_is_the_token_file_s_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let config = HttpConfig {
            token_file: Some(file.clone()),
            ..HttpConfig::default()
        };
        assert_eq!(HttpConfig::default().read_token(), Ok(None));
        assert!(config.read_token().unwrap_err().contains("cannot read it"));
        std::fs::write(&file, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(config.read_token(), Ok(Some("s3cret".into())));
        std::fs::write(&file, "\nx\n").unwrap();
        assert!(config.read_token().unwrap_err().contains("first line is empty"));
    }
}
