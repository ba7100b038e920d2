//! The connection to redis-server the fleet's source and sink share (SPEC
//! §3.14): where it is ([`Target`]: the URL and the password file), a
//! connection that comes back after a loss ([`Link`]), and the shape of
//! stream entries in replies ([`Entry`]).
//!
//! A leaf module: the source (layer 3) and the sink (layer 1) both use it.
//!
//! # Invariants
//!
//! - **The password is never in the config text** nor in a log line: it is
//!   read from `password_file` at each connect, and a URL with one in it is
//!   refused.
//! - **A lost connection is dropped, never reused**: after any error that
//!   is not a server's answer (an I/O error, a timeout, a reply that did not
//!   parse) the next call connects again. Connects are spaced by a back-off
//!   that doubles from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], so a server that
//!   is down is not hammered and a caller never spins: a call in the back-off
//!   fails at once with [`LinkError::Down`] saying when to try again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, Value};

/// The first wait after a failed connect or a lost connection.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two connects.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a connect may take, and a write of a command.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where redis-server is: the URL (`redis://`, `rediss://` for TLS,
/// `redis+unix://`), without a password, and the file the password is in.
#[derive(Clone, Debug)]
pub struct Target {
    info: ConnectionInfo,
    password_file: Option<PathBuf>,
}

impl Target {
    /// Checks `url` (refusing one with a password in it) and keeps
    /// `password_file` to read at each connect.
    pub fn parse(url: &str, password_file: Option<PathBuf>) -> Result<Target, String> {
        let info = url.into_connection_info().map_err(|e| {
            format!(
                "is not a Redis URL ({e}); expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or \
                 redis+unix:///PATH"
            )
        })?;
        if info.redis_settings().password().is_some() {
            return Err(
                "has a password in it; put the password in a file and name it in password_file \
                 (a user name may stay in the URL: redis://USER@HOST:PORT)"
                    .into(),
            );
        }
        Ok(Target { info, password_file })
    }

    /// `host:port/db` (or the socket's path), for logs: no password.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.info.addr(), self.info.redis_settings().db())
    }

    pub fn password_file(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// The password: the first line of `password_file`, if there is one.
    pub fn password(&self) -> Result<Option<String>, String> {
        let Some(file) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(format!(
                "the password file {} has an empty first line; expected the password there",
                file.display()
            ));
        }
        Ok(Some(line.to_string()))
    }

    /// A new connection, authenticated, with `read_timeout` on replies.
    pub fn connect(&self, read_timeout: Duration) -> Result<Connection, String> {
        let mut info = self.info.clone();
        if let Some(password) = self.password()? {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(|e| format!("redis {}: {e}", self.describe()))?;
        let conn = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| format!("connecting to redis {}: {e}", self.describe()))?;
        conn.set_read_timeout(Some(read_timeout))
            .and_then(|()| conn.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| format!("redis {}: {e}", self.describe()))?;
        Ok(conn)
    }
}

/// A stream, group or consumer name: not empty, no spaces or control
/// characters (they would be hard to type into redis-cli).
pub fn check_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{value}` is empty or has spaces or control characters; expected a name like lote:work"
        ));
    }
    Ok(())
}

/// What a [`Link`] counts, shared with the metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Connections made after the first (a lost one replaced). Relaxed:
    /// statistics only.
    pub reconnects: AtomicU64,
    /// Whether the link holds a connection now. Relaxed: a status only.
    pub connected: AtomicBool,
}

/// Why a call over a [`Link`] failed.
#[derive(Debug)]
pub enum LinkError {
    /// No connection: it was lost, or the server cannot be reached. Nothing
    /// was done (or what was done is unknown); try again after `retry_in`.
    Down { why: String, retry_in: Duration },
    /// The server answered with an error (NOGROUP, WRONGTYPE, NOPERM…); the
    /// connection is fine.
    Server(RedisError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Down { why, retry_in } => {
                write!(f, "{why} (connecting again in {}ms)", retry_in.as_millis())
            }
            LinkError::Server(e) => write!(f, "redis answered: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

impl LinkError {
    /// The server's error code (`NOGROUP`, `BUSYGROUP`), if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            LinkError::Server(e) => e.code(),
            LinkError::Down { .. } => None,
        }
    }
}

/// One connection to redis-server that is made again after a loss (see the
/// module invariants). Not shared: each thread that talks to Redis owns one
/// (behind the lock of what it serves).
pub struct Link {
    target: Target,
    read_timeout: Duration,
    conn: Option<Connection>,
    /// Connects (or losses) in a row that failed; 0 while connected.
    failures: u32,
    /// No connect before this moment.
    next_try: Option<Instant>,
    /// Connections made so far (the second and later are reconnects).
    connects: u64,
    stats: std::sync::Arc<LinkStats>,
}

impl Link {
    /// A link that connects on its first call. `read_timeout` bounds every
    /// reply (give a blocking read its block time on top).
    pub fn new(target: Target, read_timeout: Duration, stats: std::sync::Arc<LinkStats>) -> Link {
        Link {
            target,
            read_timeout,
            conn: None,
            failures: 0,
            next_try: None,
            connects: 0,
            stats,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connections made so far: a caller that saw another count knows the
    /// connection was replaced since.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Runs `call` on the connection, connecting first if there is none.
    pub fn run<T>(&mut self, call: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, LinkError> {
        let conn = self.connection()?;
        match call(conn) {
            Ok(value) => Ok(value),
            Err(e) if is_answer(&e) => Err(LinkError::Server(e)),
            Err(e) => Err(self.lost(format!("redis {}: {e}", self.target.describe()))),
        }
    }

    /// Drops the connection (after a reply this link cannot trust).
    pub fn reset(&mut self, why: &str) -> LinkError {
        self.lost(why.to_string())
    }

    fn connection(&mut self) -> Result<&mut Connection, LinkError> {
        if self.conn.is_none() {
            if let Some(at) = self.next_try {
                let now = Instant::now();
                if now < at {
                    return Err(LinkError::Down {
                        why: format!("redis {} is not reachable", self.target.describe()),
                        retry_in: at - now,
                    });
                }
            }
            match self.target.connect(self.read_timeout) {
                Ok(conn) => {
                    if self.connects > 0 {
                        // Relaxed: statistics only.
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        log::info!("reconnected to redis {}", self.target.describe());
                    }
                    self.connects += 1;
                    self.failures = 0;
                    self.next_try = None;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.conn = Some(conn);
                }
                Err(why) => return Err(self.lost(why)),
            }
        }
        Ok(self.conn.as_mut().expect("connected just above"))
    }

    fn lost(&mut self, why: String) -> LinkError {
        let had = self.conn.take().is_some();
        self.stats.connected.store(false, Ordering::Relaxed);
        let retry_in = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.next_try = Some(Instant::now() + retry_in);
        if had || self.failures == 1 {
            log::warn!("{why}; connecting again in {}ms", retry_in.as_millis());
        }
        LinkError::Down { why, retry_in }
    }
}

/// True for an error the server answered for good (the connection still
/// works, and asking again would get the same answer). A server that is
/// still loading its data after a restart (LOADING), or a replica or
/// cluster in transition (TRYAGAIN, MASTERDOWN, CLUSTERDOWN), answers
/// "not now": that is treated as a lost connection, tried again after the
/// back-off.
fn is_answer(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    match e.kind() {
        ErrorKind::Server(S::BusyLoading | S::TryAgain | S::MasterDown | S::ClusterDown) => false,
        ErrorKind::Server(_) | ErrorKind::Extension => !e.is_io_error(),
        _ => false,
    }
}

/// The wait after `failures` failures in a row: doubling, ± 20 % jitter so
/// that a fleet does not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << failures.min(10)).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// One stream entry of a reply: its id and fields, or `None` for an entry
/// still pending but deleted from the stream (trimmed, XDEL).
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

impl Entry {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The entries of an `XREADGROUP` reply for one stream (nil: none).
pub fn read_reply(reply: Value) -> Result<Vec<Entry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams.into_iter().map(|s| match s {
            Value::Array(mut pair) if pair.len() == 2 => Ok(pair.remove(1)),
            other => Err(format!("XREADGROUP: expected [stream, entries], got {other:?}")),
        }),
        other => return Err(format!("XREADGROUP: expected an array or nil, got {other:?}")),
    };
    let mut entries = Vec::new();
    for list in streams {
        entries.extend(entry_list(list?)?);
    }
    Ok(entries)
}

/// An array of `[id, [field, value, …] | nil]` (XREADGROUP's per stream,
/// XAUTOCLAIM's second element).
pub fn entry_list(list: Value) -> Result<Vec<Entry>, String> {
    let Value::Array(list) = list else {
        return Err(format!("expected an array of stream entries, got {list:?}"));
    };
    list.into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                return Err(format!("expected a stream entry [id, fields], got {entry:?}"));
            };
            if parts.len() != 2 {
                return Err(format!("expected a stream entry [id, fields], got {parts:?}"));
            }
            let fields = parts.pop().expect("two parts");
            let id = text(parts.pop().expect("two parts"))?;
            let fields = match fields {
                Value::Nil => None,
                Value::Array(flat) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        pairs.push((text(k)?, bytes(v)?));
                    }
                    Some(pairs)
                }
                other => return Err(format!("entry {id}: expected its fields, got {other:?}")),
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

/// A bulk or simple string as text.
pub fn text(v: Value) -> Result<String, String> {
    String::from_utf8(bytes(v)?).map_err(|e| format!("expected text, got bytes that are not UTF-8: {e}"))
}

fn bytes(v: Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_url_with_a_password_is_refused_and_one_without_is_described_without() {
        let err = Target::parse("redis://:secret@127.0.0.1:6379/0", None).unwrap_err();
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let t = Target::parse("redis://127.0.0.1:6380/2", None).unwrap();
        assert_eq!(t.describe(), "127.0.0.1:6380/2");
        assert!(Target::parse("http://x", None).unwrap_err().contains("not a Redis URL"));
        assert!(Target::parse("rediss://example.org:6380/0", None).is_ok());
    }

    #[test]
    fn the_password_is_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\r\nignored\n").unwrap();
        let t = Target::parse("redis://127.0.0.1/0", Some(file.clone())).unwrap();
        assert_eq!(t.password().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(t.password().unwrap_err().contains("empty first line"));
    }

    #[test]
    fn replies_parse_into_entries_with_deleted_ones_kept_as_none() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("lote:work"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("id"), bulk("a"), bulk("payload"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].field("id"), Some(&b"a"[..]));
        assert_eq!(entries[0].field("payload"), Some(&b"x"[..]));
        assert_eq!(
            entries[1],
            Entry {
                id: "2-0".into(),
                fields: None
            }
        );
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        assert!(read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_bound() {
        assert!(backoff(0) <= FIRST_BACKOFF.mul_f64(1.2));
        assert!(backoff(20) <= MAX_BACKOFF.mul_f64(1.2));
        assert!(backoff(20) >= MAX_BACKOFF.mul_f64(0.8));
    }
}
