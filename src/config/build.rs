//! Stage two: the raw config validated into a [`Config`] — defaults
//! applied, every value bounded, impossible combinations refused with the
//! key that causes them, paths resolved, and what `lote run` would refuse at
//! start looked for on disk (looked for only: nothing is created).

mod handler;
mod source;

use std::path::Path;
use std::time::Duration;

use super::raw::{self, RawConfig, RawDeadLetter};
use super::{
    Config, HttpConfig, MetricsSpec, DEFAULT_LOG, DEFAULT_METRICS_EVERY, DEFAULT_METRICS_LOG_EVERY, DEFAULT_STATE_DIR,
};
use crate::queue::{QueueConfig, WhenFull};
use crate::session::{Qos, SessionConfig};
use crate::sink::{self, Place, Role, SinkKeys, SinkSpec};
use crate::spec::{absolute, format_duration, Check, Result};
use crate::spec::{MAX_CAPACITY, MAX_DURATION, MAX_ITEMS, MAX_OUTCOMES, MAX_THREADS, MAX_TRIES};
use crate::writer::WriterConfig;

impl Check<'_> {
    pub fn config(mut self, raw: RawConfig, cwd: &Path) -> Result<Config> {
        let state_dir = raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if state_dir.as_os_str().is_empty() {
            return self.err(
                "state_dir",
                "is empty; expected a directory, e.g. ./state or /var/lib/lote",
            );
        }
        self.path("state_dir", &state_dir)?;
        let state_dir = absolute(cwd, &state_dir);
        let log = raw.log.map_or(DEFAULT_LOG, |l| l.as_str()).to_string();

        let (mut session, every) = self.session(raw.session.unwrap_or_default(), raw.queue.unwrap_or_default())?;
        // The sink before the source: an inbox lives in the sink's file by
        // default.
        let (sink, writer) = self.sink(raw.sink, &state_dir)?;
        let source = self.source(raw.source, &state_dir, every, &sink)?;
        let (handler, policy, qos, batch) = self.handler(raw.handler, &state_dir)?;
        session.qos = qos;
        session.batch = batch;
        self.claim_outlasts_calls(&source, &policy)?;

        let dead_letter = self.dead_letter(raw.dead_letter, &state_dir)?;
        if let Some(dead) = &dead_letter {
            self.sinks_apart(&sink, dead, &state_dir)?;
        }
        let writer = WriterConfig {
            done_lookups: qos == Qos::ExactlyOnce || source.resumes_from_sink(),
            ..writer
        };
        if writer.done_lookups {
            let why = if qos == Qos::ExactlyOnce {
                "handler.qos: exactly_once"
            } else {
                "a lines source (it resumes from the sink's records)"
            };
            sink.done_records_survive(&self, why)?;
        }
        let metrics = self.metrics(raw.metrics.unwrap_or_default(), &state_dir)?;
        let http = match raw.http {
            Some(keys) => Some(HttpConfig::build(keys, &state_dir, &self)?),
            None => None,
        };

        // The engine's own check, a backstop behind the located ones above.
        session
            .validate()
            .map_err(|e| self.doc.error("session", e.to_string()))?;

        // Last, because they look at the disk (changing nothing: `lote run`
        // creates the directories, `Config::create_dirs`): what `lote run`
        // would refuse at start.
        self.creatable_dir("state_dir", &["state_dir"], &state_dir, None)?;
        if let Some(file) = sink.path() {
            self.writable_file("sink.path", file)?;
        }
        sink.on_disk(&self)?;
        if let Some(dead) = &dead_letter {
            if let Some(file) = dead.path() {
                self.writable_file("dead_letter.path", file)?;
            }
            dead.on_disk(&self)?;
        }
        if let Some(textfile) = &metrics.textfile {
            self.writable_file("metrics.textfile", textfile)?;
        }
        source.on_disk(&mut self)?;
        if let Some(http) = &http {
            http.read_token().or_else(|why| self.err("http.token_file", why))?;
        }

        Ok(Config {
            state_dir,
            log,
            session,
            every,
            source,
            handler,
            policy,
            sink,
            dead_letter,
            writer,
            metrics,
            http,
            warnings: self.warnings,
        })
    }

    fn session(&self, s: raw::RawSession, q: raw::RawQueue) -> Result<(SessionConfig, Option<Duration>)> {
        let d = SessionConfig::default();
        let threads = s.threads.unwrap_or(d.threads);
        if threads == 0 {
            return self.err(
                "session.threads",
                "must be at least 1 (found 0); expected the number of worker threads, e.g. 4",
            );
        }
        let chunk = s.chunk.unwrap_or(d.chunk);
        if chunk == 0 {
            return self.err(
                "session.chunk",
                "must be at least 1 (found 0); expected how many outcomes each worker commits at once, e.g. 50",
            );
        }
        let chunk_wait = self.at_most(
            "session.chunk_wait",
            s.chunk_wait.map_or(d.chunk_wait, |w| w.0),
            MAX_DURATION,
        )?;
        let max_items = match (s.max_items, s.lote) {
            (Some(a), Some(b)) => {
                return Err(self.doc.error_at(
                    "session.lote",
                    &["session.lote"],
                    format!(
                        "`max_items` ({a}) and its seed-003 alias `lote` ({b}) are both given; expected one of them"
                    ),
                ))
            }
            (a, b) => a.or(b).unwrap_or(d.max_items),
        };
        self.count("session.threads", threads as u64, 1..=MAX_THREADS as u64)?;
        self.count("session.chunk", chunk as u64, 1..=MAX_OUTCOMES as u64)?;
        let max_items_key = if s.lote.is_some() {
            "session.lote"
        } else {
            "session.max_items"
        };
        self.count(max_items_key, max_items as u64, 0..=MAX_ITEMS)?;
        let (deadline_key, deadline) = match (s.deadline, s.timer) {
            (Some(_), Some(_)) => {
                return self.err(
                    "session.timer",
                    "`deadline` and its seed-003 alias `timer` are both given; expected one of them",
                )
            }
            (Some(d), None) => ("session.deadline", Some(d.0)),
            (None, Some(t)) => ("session.timer", Some(t.0)),
            (None, None) => ("session.deadline", None),
        };
        let deadline = self.opt_at_most(deadline_key, deadline, MAX_DURATION)?;
        let every = self.opt_at_most("session.every", s.every.map(|e| e.0), MAX_DURATION)?;
        if deadline == Some(Duration::ZERO) {
            return self.err(
                deadline_key,
                "is 0; expected a positive duration like 4m, or no deadline (omit the key)",
            );
        }
        if every == Some(Duration::ZERO) {
            return self.err(
                "session.every",
                "is 0; expected a period like 5m, or omit it for one session",
            );
        }
        if let (Some(deadline), Some(every)) = (deadline, every) {
            if deadline >= every {
                return self.err(
                    deadline_key,
                    format!(
                        "{} is not shorter than `every` ({}); sessions never overlap, so each must stop before the \
                         next is due; expected a deadline below {}",
                        format_duration(deadline),
                        format_duration(every),
                        format_duration(every),
                    ),
                );
            }
        }
        let poll_interval = self.at_most(
            "session.poll_every",
            s.poll_every.map_or(d.poll_interval, |p| p.0),
            MAX_DURATION,
        )?;
        if poll_interval.is_zero() {
            return self.err(
                "session.poll_every",
                "is 0; expected a pause like 1s (0 would spin on an idle source)",
            );
        }

        let dq = QueueConfig::default();
        let capacity = q.capacity.unwrap_or(dq.capacity);
        if capacity == 0 {
            return self.err(
                "queue.capacity",
                "must be at least 1 (found 0); expected how many items the queue holds, e.g. 1024",
            );
        }
        self.count("queue.capacity", capacity as u64, 1..=MAX_CAPACITY as u64)?;
        let when_full = q.when_full.unwrap_or(dq.when_full);
        let block_timeout = self.opt_at_most("queue.block_timeout", q.block_timeout.map(|t| t.0), MAX_DURATION)?;
        if block_timeout.is_some() && when_full != WhenFull::Block {
            return self.err(
                "queue.block_timeout",
                format!(
                    "has no effect with `when_full: {}` (only `block` waits for room); expected either \
                     `when_full: block` or no block_timeout",
                    when_full.as_str()
                ),
            );
        }
        let session = SessionConfig {
            threads,
            chunk,
            chunk_wait,
            max_items,
            deadline,
            queue: QueueConfig {
                capacity,
                when_full,
                block_timeout,
            },
            pull_batch: d.pull_batch,
            poll_interval,
            qos: d.qos,
            batch: None,
        };
        Ok((session, every))
    }

    fn sink(&self, raw: Option<SinkKeys>, state_dir: &Path) -> Result<(SinkSpec, WriterConfig)> {
        let at = Place {
            role: Role::Outcomes,
            state_dir,
        };
        let keys = raw
            .or_else(|| SinkKeys::empty(sink::DEFAULT_KIND))
            .expect("the default sink kind is registered");
        let (spec, w) = SinkSpec::build(keys, &at, self)?;
        let d = WriterConfig::default();
        let writer = WriterConfig {
            batch: w.batch.unwrap_or(d.batch),
            flush_every: w.flush_every.map_or(d.flush_every, |t| t.0),
            max_retries: w.max_retries.unwrap_or(d.max_retries),
            drain_timeout: w.drain_timeout.map_or(d.drain_timeout, |t| t.0),
            ..d
        };
        if writer.batch == 0 {
            return self.err(
                "sink.batch",
                "must be at least 1 (found 0); expected outcomes per write, e.g. 500",
            );
        }
        if writer.flush_every.is_zero() {
            return self.err("sink.flush_every", "is 0; expected how long a batch may wait, e.g. 1s");
        }
        if writer.drain_timeout.is_zero() {
            return self.err(
                "sink.drain_timeout",
                "is 0, so nothing queued would be written at shutdown; expected e.g. 30s",
            );
        }
        self.count("sink.batch", writer.batch as u64, 1..=MAX_OUTCOMES as u64)?;
        self.at_most("sink.flush_every", writer.flush_every, MAX_DURATION)?;
        self.count("sink.max_retries", u64::from(writer.max_retries), 0..=MAX_TRIES)?;
        self.at_most("sink.drain_timeout", writer.drain_timeout, MAX_DURATION)?;
        Ok((spec, writer))
    }

    /// Refuses a dead-letter sink in the sink's own file, or in its own
    /// Redis stream: two sinks there would fight over it (and the JSONL
    /// lock), and dead letters mixed with outcomes could not be requeued.
    fn sinks_apart(&self, sink: &SinkSpec, dead: &SinkSpec, state_dir: &Path) -> Result<()> {
        if let (Some(file), Some(dead_file)) = (sink.path(), dead.path()) {
            if file == dead_file {
                return Err(self.doc.error_at(
                    "dead_letter.path",
                    &["dead_letter.path", "sink.path", "dead_letter"],
                    format!(
                        "is the sink's file too ({}); two sinks in one file would fight over it (and the JSONL \
                         lock); expected another path, e.g. {}",
                        dead_file.display(),
                        self.default_dead_letter_file(dead.kind(), state_dir)
                    ),
                ));
            }
        }
        if let (SinkSpec::RedisStream(s), SinkSpec::RedisStream(d)) = (sink, dead) {
            if s.url == d.url && s.stream == d.stream {
                return Err(self.doc.error_at(
                    "dead_letter.stream",
                    &["dead_letter.stream", "sink.stream", "dead_letter"],
                    format!(
                        "is the sink's stream too ({}); dead letters mixed with outcomes could not be listed or \
                         requeued; expected another stream, e.g. {}:dead-letters",
                        d.stream, s.stream
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The file name a dead-letter sink of `kind` has by default
    /// (`dead-letter.db`), for an example in an error.
    fn default_dead_letter_file(&self, kind: &str, state_dir: &Path) -> String {
        let at = Place {
            role: Role::DeadLetter,
            state_dir,
        };
        SinkKeys::empty(kind)
            .and_then(|keys| SinkSpec::build(keys, &at, self).ok())
            .and_then(|(spec, _)| {
                spec.path()
                    .and_then(Path::file_name)
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "dead-letter".into())
    }

    fn dead_letter(&self, raw: Option<RawDeadLetter>, state_dir: &Path) -> Result<Option<SinkSpec>> {
        let at = Place {
            role: Role::DeadLetter,
            state_dir,
        };
        match raw {
            None => {
                let keys = SinkKeys::empty(sink::DEFAULT_DEAD_LETTER_KIND)
                    .expect("the default dead-letter kind is registered");
                Ok(Some(SinkSpec::build(keys, &at, self)?.0))
            }
            Some(RawDeadLetter::None) => Ok(None),
            Some(RawDeadLetter::Sink(raw)) => {
                let (spec, writer) = SinkSpec::build(raw, &at, self)?;
                if let Some(key) = writer.given().first() {
                    return self.err(
                        &format!("dead_letter.{key}"),
                        "belongs under `sink:`; expected no writer keys here: one write-behind thread writes \
                         both sinks, so `batch`, `flush_every`, `max_retries` and `drain_timeout` are set once, \
                         under `sink:`",
                    );
                }
                Ok(Some(spec))
            }
        }
    }

    fn metrics(&self, m: raw::RawMetrics, state_dir: &Path) -> Result<MetricsSpec> {
        let every = self.at_most(
            "metrics.every",
            m.every.map_or(DEFAULT_METRICS_EVERY, |t| t.0),
            MAX_DURATION,
        )?;
        if every.is_zero() {
            return self.err(
                "metrics.every",
                "is 0; expected how often the textfile is written, e.g. 15s",
            );
        }
        let log_every = self.at_most(
            "metrics.log_every",
            m.log_every.map_or(DEFAULT_METRICS_LOG_EVERY, |t| t.0),
            MAX_DURATION,
        )?;
        if log_every.is_zero() {
            return self.err(
                "metrics.log_every",
                "is 0; expected how often the summary is logged, e.g. 30s",
            );
        }
        if let Some(textfile) = &m.textfile {
            self.path("metrics.textfile", textfile)?;
        }
        Ok(MetricsSpec {
            every,
            textfile: m.textfile.map(|t| absolute(state_dir, &t)),
            log_every,
        })
    }
}
