//! The redis_stream sink (SPEC §3.14): every outcome an entry of a Redis
//! stream (`XADD <stream> MAXLEN ~ <max_len> * field value …`), for a central
//! collector that reads what a fleet of instances did.
//!
//! # Entries
//!
//! The fields of an entry are the fields of a [`Record`], named as the JSONL
//! sink names them: `id, status, attempts, output, error, started_at,
//! finished_at, duration_ms` (a field that is `null` in JSON is left out),
//! and for a dead-letter sink also `priority` and `payload` (UTF-8) or
//! `payload_base64`. Numbers are decimal text.
//!
//! # Invariants
//!
//! - **One batch, one round trip, all or nothing**: a batch is one
//!   `MULTI`, an `XADD` per record, `EXEC`, written in one go and answered in
//!   one go. Redis runs a transaction as a unit, so a reader never sees half
//!   a batch, and a connection lost before `EXEC` reached the server leaves
//!   nothing behind. (A plain pipeline would be as fast, but a connection
//!   lost in its middle leaves a prefix of the batch in the stream, which the
//!   retry then writes a second time.)
//! - **`write` returns `Ok` only after `EXEC` answered** with every `XADD`
//!   done: the writer acknowledges the batch's items to the source only
//!   then. Redis down, a timeout, an error answer: `Err`, nothing is
//!   acknowledged, and the writer retries with its back-off; the connection
//!   ([`Link`]) spaces its own connects, so nothing spins.
//! - **At least once**: a connection lost after `EXEC` ran but before its
//!   answer arrived makes the retry add the batch again. A collector
//!   deduplicates by the `id` field (the last entry for an id wins, as the
//!   last line does in a JSONL file).
//! - **Durable means what the server promises**: `XADD` is in the server's
//!   memory when `EXEC` answers; on disk as its `appendfsync` says
//!   (`always` for nothing lost in a power cut).
//! - **Trimmed, so never a done lookup**: `MAXLEN ~` drops the oldest
//!   entries, so the stream cannot say which ids are done. Exactly-once and
//!   a lines source's resume are refused with this sink
//!   ([`SinkKind::done_records_survive`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use redis::Value;
use serde_yaml::Value as Yaml;

use super::{sink_keys, DoneLookup, Place, Record, Role, Sink, SinkError, SinkKind, TableAck, WriterKeys};
use crate::item::{Outcome, Status};
use crate::redis_conn::{self, entry_list, Entry, Link, LinkError, LinkStats, Target, CONNECT_TIMEOUT};
use crate::spec::effective::{map, path};
use crate::spec::{self, absolute, Check};

/// `max_len` when not given (SPEC §3.14).
pub const DEFAULT_MAX_LEN: u64 = 1_000_000;
/// The largest `max_len` accepted: a billion entries is far beyond what one
/// redis-server holds in memory.
const MAX_MAX_LEN: u64 = 1_000_000_000;
/// How long the answer to one batch (or one page of `XRANGE`) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries per `XRANGE` page and ids per `XDEL`.
const PAGE: usize = 1000;

/// Where a redis_stream sink writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStreamSinkConfig {
    /// redis://HOST:PORT/DB, rediss:// for TLS; never with a password.
    pub url: String,
    /// The stream outcomes are added to.
    pub stream: String,
    /// `MAXLEN ~`: the stream is trimmed to about this many entries (Redis
    /// trims whole nodes, so it may hold up to a node's worth more).
    pub max_len: u64,
    /// The password (or the ACL user's), first line of this file. Absolute.
    pub password_file: Option<PathBuf>,
    /// Outcomes, or dead letters (payload and priority kept).
    pub role: Role,
}

impl RedisStreamSinkConfig {
    /// A config with the default `max_len` and no password.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, role: Role) -> Self {
        RedisStreamSinkConfig {
            url: url.into(),
            stream: stream.into(),
            max_len: DEFAULT_MAX_LEN,
            password_file: None,
            role,
        }
    }

    /// Where redis-server is.
    pub fn target(&self) -> Result<Target, String> {
        Target::parse(&self.url, self.password_file.clone())
    }

    /// The section of the config, for error keys.
    fn at(&self) -> &'static str {
        match self.role {
            Role::Outcomes => "sink",
            Role::DeadLetter => "dead_letter",
        }
    }
}

sink_keys! {
    /// `sink: {kind: redis_stream}` — every outcome an entry of a Redis stream.
    RedisStreamSinkKeys {
        /// redis://HOST:PORT/DB, rediss:// for TLS. No password in it. Required.
        url: Option<String>,
        /// The stream outcomes go to, e.g. lote:outcomes. Required.
        stream: Option<String>,
        /// Trim the stream to about this many entries (MAXLEN ~). Default 1000000.
        max_len: Option<u64>,
        /// The password (or the ACL user's), first line of this file.
        password_file: Option<PathBuf>,
    }
}

impl SinkKind for RedisStreamSinkConfig {
    const NAME: &'static str = "redis_stream";
    type Keys = RedisStreamSinkKeys;

    fn build(k: RedisStreamSinkKeys, at: &Place, check: &Check) -> spec::Result<(Self, WriterKeys)> {
        let Some(url) = k.url else {
            return check.err(
                &at.key("url"),
                "is missing; expected where redis-server is, e.g. redis://127.0.0.1:6379/0",
            );
        };
        Target::parse(&url, None).or_else(|why| check.err(&at.key("url"), why))?;
        let Some(stream) = k.stream else {
            return check.err(
                &at.key("stream"),
                "is missing; expected the stream the outcomes go to, e.g. lote:outcomes",
            );
        };
        redis_conn::check_name(&stream).or_else(|why| check.err(&at.key("stream"), why))?;
        let max_len = k.max_len.unwrap_or(DEFAULT_MAX_LEN);
        check.count(&at.key("max_len"), max_len, 1..=MAX_MAX_LEN)?;
        let password_file = match k.password_file {
            Some(file) => {
                check.path(&at.key("password_file"), &file)?;
                Some(absolute(at.state_dir, &file))
            }
            None => None,
        };
        let config = RedisStreamSinkConfig {
            url,
            stream,
            max_len,
            password_file,
            role: at.role,
        };
        Ok((config, k.writer))
    }

    fn effective(&self) -> Yaml {
        map([
            ("kind", Self::NAME.into()),
            ("url", self.url.clone().into()),
            ("stream", self.stream.clone().into()),
            ("max_len", self.max_len.into()),
            ("password_file", self.password_file.as_deref().map_or(Yaml::Null, path)),
        ])
    }

    fn path(&self) -> Option<&Path> {
        None
    }

    fn on_disk(&self, check: &Check) -> spec::Result<()> {
        let at = self.at();
        let target = self.target().or_else(|why| check.err(&format!("{at}.url"), why))?;
        target
            .password()
            .or_else(|why| check.err(&format!("{at}.password_file"), why))?;
        Ok(())
    }

    fn open(&self, _table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(
            RedisStreamSink::open(self.clone()).map_err(|e| e.to_string())?,
        ))
    }

    fn records(&self) -> Result<Vec<Record>, String> {
        let mut sink = RedisStreamSink::unconnected(self.clone()).map_err(|e| e.to_string())?;
        sink.records().map_err(|e| e.to_string())
    }

    /// A connect and one batch's answer, for the stop watchdog's margin.
    fn busy_timeout(&self) -> Duration {
        CONNECT_TIMEOUT + READ_TIMEOUT
    }

    /// The stream is trimmed at `max_len` (and a collector may delete what
    /// it has read), so the done ids cannot be read back from it: refused.
    fn done_records_survive(&self, check: &Check, why: &str) -> spec::Result<()> {
        Err(check.doc.error_at(
            "sink.kind",
            &["sink.kind", "sink"],
            format!(
                "is redis_stream: its stream is trimmed (MAXLEN ~ {}), so which items are done cannot be read \
                 back from it, and with {why} the items trimmed away would silently run again; expected \
                 `sink.kind: sqlite` (or `sink.kind: jsonl` with `rotate_bytes: 0`) for that",
                self.max_len
            ),
        ))
    }
}

/// A sink that adds records to a Redis stream (see the module invariants).
pub struct RedisStreamSink {
    config: RedisStreamSinkConfig,
    link: Link,
    /// `redis HOST:PORT/DB STREAM`: what errors name in place of a file.
    place: PathBuf,
}

impl RedisStreamSink {
    /// A sink for `config`. Asks the server once what the stream's key
    /// holds: another type is refused at once; a server that does not answer
    /// is not (outcomes wait in the writer, which retries).
    pub fn open(config: RedisStreamSinkConfig) -> Result<Self, SinkError> {
        let mut sink = RedisStreamSink::unconnected(config)?;
        let stream = sink.config.stream.clone();
        match sink
            .link
            .run(|conn| redis::cmd("TYPE").arg(&stream).query::<String>(conn))
        {
            Ok(kind) if kind == "stream" || kind == "none" => {}
            Ok(kind) => return Err(sink.not_a_stream(&kind)),
            // Logged by the link; the first write connects again.
            Err(LinkError::Down { .. }) => {}
            Err(e) => return Err(sink.failed("asking what the stream's key holds", e)),
        }
        Ok(sink)
    }

    /// A sink that connects on its first call (whose error then says why
    /// the server cannot be reached: `dead-letter list` shows it).
    fn unconnected(config: RedisStreamSinkConfig) -> Result<Self, SinkError> {
        let place = PathBuf::from(format!("redis {} {}", describe_url(&config.url), config.stream));
        let target = config
            .target()
            .map_err(|why| SinkError::corrupt(&place, format!("url {why}")))?;
        let link = Link::new(target, READ_TIMEOUT, Arc::new(LinkStats::default()));
        Ok(RedisStreamSink { config, link, place })
    }

    fn not_a_stream(&self, kind: &str) -> SinkError {
        SinkError::corrupt(
            &self.place,
            format!(
                "the key {} holds a {kind}, not a stream; expected another {}.stream, or delete the key",
                self.config.stream,
                self.config.at()
            ),
        )
    }

    /// A failed call as a sink error: a wrong-type answer cannot get better
    /// by retrying; anything else (down, timeout, OOM, NOPERM) may.
    fn failed(&self, doing: &str, e: LinkError) -> SinkError {
        if e.code() == Some("WRONGTYPE") {
            return self.not_a_stream("value of another type");
        }
        SinkError::io(&self.place, format!("{doing}: {e}"))
    }

    /// One page of `XRANGE` from `start` (`-`, or `(ID` after an entry).
    fn page(&mut self, start: &str) -> Result<Vec<Entry>, SinkError> {
        let stream = &self.config.stream;
        let reply = self
            .link
            .run(|conn| {
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE)
                    .query::<Value>(conn)
            })
            .map_err(|e| self.failed("reading the stream (XRANGE)", e))?;
        entry_list(reply).map_err(|why| {
            let e = self.link.reset(&format!("an unexpected reply from redis: {why}"));
            SinkError::io(&self.place, e.to_string())
        })
    }

    /// Calls `each` with every entry of the stream, oldest first.
    fn for_each_entry(&mut self, mut each: impl FnMut(&Entry)) -> Result<(), SinkError> {
        let mut start = "-".to_string();
        loop {
            let entries = self.page(&start)?;
            entries.iter().for_each(&mut each);
            match entries.last() {
                Some(last) if entries.len() == PAGE => start = format!("({}", last.id),
                _ => return Ok(()),
            }
        }
    }
}

/// `host:port/db` of `url`, without what a URL might hold besides.
fn describe_url(url: &str) -> String {
    Target::parse(url, None).map_or_else(|_| "(bad url)".into(), |t| t.describe())
}

impl Sink for RedisStreamSink {
    fn describe(&self) -> String {
        format!("redis_stream {}", self.place.display())
    }

    fn write(&mut self, outcomes: &[Outcome]) -> Result<(), SinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut added = 0;
        for outcome in outcomes.iter().filter(|o| o.status != Status::Skipped) {
            let xadd = pipe
                .cmd("XADD")
                .arg(&self.config.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.max_len)
                .arg("*");
            for (name, value) in fields(&Record::new(outcome, self.config.role)) {
                xadd.arg(name).arg(value);
            }
            added += 1;
        }
        if added == 0 {
            return Ok(());
        }
        self.link
            .run(|conn| pipe.exec(conn))
            .map_err(|e| self.failed(&format!("adding {added} outcome(s) (MULTI, XADD…, EXEC)"), e))
    }

    fn lookup(&self) -> Result<Box<dyn DoneLookup>, SinkError> {
        Err(SinkError::corrupt(
            &self.place,
            "a redis_stream sink cannot say which items are done (its stream is trimmed at max_len); \
             exactly-once and a lines source's resume need a sqlite or jsonl sink",
        ))
    }

    fn records(&mut self) -> Result<Vec<Record>, SinkError> {
        let mut records = Vec::new();
        let mut unreadable = 0usize;
        self.for_each_entry(|entry| match record(entry) {
            Some(r) => records.push(r),
            None => unreadable += 1,
        })?;
        if unreadable > 0 {
            warn!(
                "{}: {unreadable} entr(ies) without the fields of an outcome (id, status…) were skipped",
                self.place.display()
            );
        }
        Ok(records)
    }

    /// Deletes (XDEL) every entry whose `id` field is one of `ids`.
    fn remove(&mut self, ids: &[String]) -> Result<usize, SinkError> {
        let ids: HashSet<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
        let mut doomed = Vec::new();
        self.for_each_entry(|entry| {
            if entry.field("id").is_some_and(|id| ids.contains(id)) {
                doomed.push(entry.id.clone());
            }
        })?;
        let mut removed = 0;
        for chunk in doomed.chunks(PAGE) {
            let stream = &self.config.stream;
            let n: usize = self
                .link
                .run(|conn| redis::cmd("XDEL").arg(stream).arg(chunk).query(conn))
                .map_err(|e| self.failed("deleting entries (XDEL)", e))?;
            removed += n;
        }
        Ok(removed)
    }
}

/// The fields of an entry for `r`, in `Record`'s order; `None`s left out.
fn fields(r: &Record) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("id", r.id.clone()),
        ("status", r.status.clone()),
        ("attempts", r.attempts.to_string()),
    ];
    let optional = [
        ("output", r.output.clone()),
        ("error", r.error.clone()),
        ("started_at", Some(r.started_at.clone())),
        ("finished_at", Some(r.finished_at.clone())),
        ("duration_ms", Some(r.duration_ms.to_string())),
        ("priority", r.priority.map(|p| p.to_string())),
        ("payload", r.payload.clone()),
        ("payload_base64", r.payload_base64.clone()),
    ];
    f.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?))));
    f
}

/// The record an entry holds; `None` without an `id` and a `status`.
fn record(entry: &Entry) -> Option<Record> {
    let text = |name: &str| entry.field(name).map(|v| String::from_utf8_lossy(v).into_owned());
    fn number<T: std::str::FromStr>(entry: &Entry, name: &str) -> Option<T> {
        std::str::from_utf8(entry.field(name)?).ok()?.parse().ok()
    }
    Some(Record {
        id: text("id")?,
        status: text("status")?,
        attempts: number(entry, "attempts").unwrap_or(0),
        output: text("output"),
        error: text("error"),
        started_at: text("started_at").unwrap_or_default(),
        finished_at: text("finished_at").unwrap_or_default(),
        duration_ms: number(entry, "duration_ms").unwrap_or(0),
        priority: number(entry, "priority"),
        payload: text("payload"),
        payload_base64: text("payload_base64"),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::item::Item;

    fn outcome(payload: &[u8], output: Option<&str>) -> Outcome {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Outcome {
            item: Item::new("a", payload.to_vec()).with_priority(7),
            status: Status::Failed,
            attempts: 3,
            output: output.map(Into::into),
            error: Some("boom".into()),
            started_at: at,
            finished_at: at + Duration::from_millis(5),
            duration: Duration::from_millis(5),
        }
    }

    fn entry(fields: Vec<(&'static str, String)>) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: Some(fields.into_iter().map(|(k, v)| (k.into(), v.into_bytes())).collect()),
        }
    }

    #[test]
    fn an_entry_holds_the_record_and_reads_back_into_it() {
        for role in [Role::Outcomes, Role::DeadLetter] {
            for (payload, output) in [(b"text".to_vec(), Some("out")), (vec![0xff, 0x00], None)] {
                let r = Record::new(&outcome(&payload, output), role);
                assert_eq!(record(&entry(fields(&r))), Some(r.clone()));
            }
        }
        let r = Record::new(&outcome(b"x", None), Role::Outcomes);
        let names: Vec<_> = fields(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "id",
                "status",
                "attempts",
                "error",
                "started_at",
                "finished_at",
                "duration_ms"
            ]
        );
    }

    #[test]
    fn an_entry_without_an_id_or_status_is_no_record() {
        assert_eq!(record(&entry(vec![("status", "done".into())])), None);
        assert_eq!(record(&entry(vec![("id", "a".into())])), None);
        let deleted = Entry {
            id: "1-0".into(),
            fields: None,
        };
        assert_eq!(record(&deleted), None);
    }
}
