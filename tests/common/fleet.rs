//! What the tests of the fleet (SPEC §3.14) share: a redis-server of the
//! test's own, lote instances reading a stream, waiting on them.
//! `redis_stream.rs` (the source) and `redis_sink.rs` (the sink) include it
//! with `#[path]`, after `mod common;`, so the other test binaries do not
//! build it. Not every file uses every helper.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use crate::common::Setup;

/// A redis-server of the test's own, killed when dropped.
pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// `--requirepass`, if the test asked for one.
    password: Option<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// A server that asks every client for `password` (AUTH).
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_with(Some(password.into()))
    }

    fn start_with(password: Option<String>) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer {
            dir,
            port,
            child: None,
            password,
        };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start redis-server ({e}): these tests need a real one (>= 7). Install it with \
                 `apt-get install -y redis-server` (CI does, in .ci/run)"
            ),
        };
        self.child = Some(child);
        let started = Instant::now();
        while redis::Client::open(self.client_url())
            .unwrap()
            .get_connection()
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not come up"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then the same port and data again (what `appendfsync
    /// always` wrote is back).
    pub fn crash_and_restart(&mut self, down_for: Duration) {
        self.kill();
        thread::sleep(down_for);
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The test's own URL: with the password in it, which lote refuses.
    fn client_url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        }
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.client_url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Adds entries `(id, payload)` to `stream`, one pipeline.
    pub fn publish(&self, stream: &str, entries: &[(String, String)]) {
        let mut pipe = redis::pipe();
        for (id, payload) in entries {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.exec(&mut self.conn()).unwrap();
    }

    /// The group's pending count, all consumers (0 before the group exists).
    pub fn pending(&self, stream: &str) -> i64 {
        match redis::cmd("XPENDING")
            .arg(stream)
            .arg("lote")
            .query::<Value>(&mut self.conn())
        {
            Ok(Value::Array(parts)) => match parts.first() {
                Some(Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Pending entries per consumer.
    pub fn pending_of(&self, stream: &str, consumer: &str) -> usize {
        let rows: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg("lote")
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(consumer)
            .query(&mut self.conn())
            .unwrap_or(Value::Nil);
        match rows {
            Value::Array(rows) => rows.len(),
            _ => 0,
        }
    }

    /// (consumer, deliveries) of every pending entry.
    pub fn pending_rows(&self, stream: &str) -> Vec<(String, i64)> {
        let rows: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg("lote")
            .arg("-")
            .arg("+")
            .arg(100)
            .query(&mut self.conn())
            .unwrap_or(Value::Nil);
        let Value::Array(rows) = rows else { return Vec::new() };
        rows.into_iter()
            .filter_map(|row| match row {
                Value::Array(f) => match (f.get(1), f.get(3)) {
                    (Some(Value::BulkString(c)), Some(Value::Int(n))) => {
                        Some((String::from_utf8_lossy(c).into_owned(), *n))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Every entry of `stream` as field maps.
    pub fn entries(&self, stream: &str) -> Vec<HashMap<String, String>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query(&mut self.conn())
            .unwrap();
        let Value::Array(entries) = reply else {
            return Vec::new();
        };
        entries
            .into_iter()
            .map(|e| {
                let Value::Array(mut parts) = e else {
                    panic!("entry {e:?}")
                };
                let Value::Array(flat) = parts.remove(1) else {
                    panic!("fields")
                };
                let s = |v: &Value| match v {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                };
                flat.chunks(2).map(|kv| (s(&kv[0]), s(&kv[1]))).collect()
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One lote instance: its own directory, config and process.
pub struct Instance {
    pub setup: Setup,
    pub consumer: String,
    child: Option<Child>,
}

impl Instance {
    /// An instance reading `lote:work` into a SQLite sink, `outcomes.db`.
    pub fn new(redis: &RedisServer, consumer: &str, source_extra: &str, rest: &str) -> Instance {
        let sink = "sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n";
        Instance::with_sink(redis, consumer, source_extra, sink, rest)
    }

    /// An instance reading `lote:work` into the sink section `sink`.
    pub fn with_sink(redis: &RedisServer, consumer: &str, source_extra: &str, sink: &str, rest: &str) -> Instance {
        let setup = Setup::new();
        setup.config(&format!(
            "source:\n  kind: redis_stream\n  url: {}\n  stream: lote:work\n  group: lote\n  consumer: {consumer}\n\
             {source_extra}{sink}{rest}",
            redis.url()
        ));
        Instance {
            setup,
            consumer: consumer.into(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.setup.path("lote.log"))
            .unwrap();
        let child = self
            .setup
            .lote(&["run", "-c", "config.yaml"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Whether the process ended by itself (reaped).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait().unwrap()) {
            Some(Some(_)) => {
                self.child = None;
                true
            }
            Some(None) => false,
            None => true,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.setup.path("lote.log")).unwrap_or_default()
    }

    /// id → status of every outcome recorded so far.
    pub fn outcomes(&self) -> Vec<(String, String)> {
        outcomes(&self.setup.path("state/outcomes.db"))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub fn outcomes(db: &Path) -> Vec<(String, String)> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut s = match conn.prepare("SELECT id, status FROM outcomes") {
        Ok(s) => s,
        // Not created yet by the instance.
        Err(e) if e.to_string().contains("no such table") => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", db.display()),
    };
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// The ids done in the union of the instances' outcomes.
pub fn done_union(instances: &[Instance]) -> HashSet<String> {
    instances
        .iter()
        .flat_map(|i| i.outcomes())
        .filter(|(_, status)| status == "done")
        .map(|(id, _)| id)
        .collect()
}

pub fn wait_for(what: &str, limit: Duration, instances: &[&Instance], mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            let logs: Vec<String> = instances
                .iter()
                .map(|i| format!("--- {}\n{}", i.consumer, i.log()))
                .collect();
            panic!("waited {limit:?} for {what}\n{}", logs.join("\n"));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

pub fn work(n: usize, prefix: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{i:05}"), format!("payload {i}")))
        .collect()
}
