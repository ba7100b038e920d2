//! The write-behind thread (seed 001, holes closed): workers hand their
//! chunks of outcomes to a bounded channel; one thread batches them into a
//! [`Sink`], and only once a batch is durable acknowledges its items to the
//! source.
//!
//! # Invariants
//!
//! - **No outcome is dropped.** The channel is bounded; when it is full,
//!   `commit` blocks the worker (backpressure), it never discards.
//! - **Acknowledged ⇒ durable.** `Source::ack` is called for a batch only
//!   after the dead-letter sink (for its failed outcomes) and the sink have
//!   both returned `Ok` from `write`.
//! - **A failed flush is retried, then given back.** Up to `max_retries`
//!   more tries with doubling back-off; after that the batch's outcomes are
//!   *unsaved*: counted ([`WriterMetrics::unsaved`]) and logged with the
//!   cause, their items are never acknowledged but given back to the source
//!   ([`ReturnReason::FlushFailed`]) so that they run again, and the thread
//!   carries on with the next batch. *When* they go back is [`GiveBack`]: in a
//!   continuous session at once when a later flush is durable, or after a
//!   pause that doubles with each give-back while the sink keeps failing (so
//!   a sink that stays broken is not fed the same items in a hot loop); in a
//!   batch session, when it finishes. An item whose give-back fails is
//!   tried again then; one still claimed at the drain waits for the source's
//!   own recovery at the next start. A given-back item is pulled like any
//!   other, so under exactly-once one whose outcome became durable after all
//!   (a commit that reported an error) is skipped, not run twice.
//! - **Dead letters are written once.** A retry writes only what an earlier
//!   try of the same flush did not make durable: the dead letters of a batch
//!   are not written again when only its outcomes failed. (If the outcomes
//!   then fail for good, the item runs again with its dead letter already on
//!   disk; should it fail again, a second dead letter for its id is written,
//!   and `dead-letter list` shows the latest per id.)
//! - **A batch closes** at `batch` outcomes or `flush_every` after its oldest
//!   outcome arrived, whichever comes first; a `finish` closes it at once.
//! - **Order.** Commands are handled in the order sent, so `finish` returns
//!   only when everything committed before it has been flushed.
//! - **Drain.** `close` flushes everything queued within `drain_timeout`,
//!   gives back the items of what it could not write, and reports them.
//! - **Memory grows with use**, never with a configured count: nothing is
//!   preallocated by `batch`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use lote::sink::{JsonlConfig, JsonlSink, Role, SqliteConfig, SqliteSink};
//! use lote::source::VecSource;
//! use lote::writer::{Writer, WriterConfig};
//! use lote::{handler::Noop, Session, SessionConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # std::env::set_current_dir(dir.path())?;
//! let source = Arc::new(VecSource::numbered(100));
//! let sink = SqliteSink::open(SqliteConfig::new("state/outcomes.db", Role::Outcomes))?;
//! let dead = JsonlSink::open(JsonlConfig::new("state/dead-letter.jsonl", Role::DeadLetter))?;
//! let writer = Arc::new(Writer::start(WriterConfig::default(), Box::new(sink), Some(Box::new(dead)), source.clone())?);
//! let summary = Session::new(SessionConfig::default(), source, Arc::new(Noop), writer.clone()).run()?;
//! let drained = writer.close(); // drain, then stop the thread
//! assert_eq!((summary.counts.done, writer.metrics().persisted.get(), drained.unwritten), (100, 100, 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Thread
//!
//! Started by [`Writer::start`]; stopped by [`Writer::close`] (a `Shutdown`
//! command after everything committed), or by the last `Writer` handle being
//! dropped (the channel disconnects; what is pending is flushed). It owns the
//! sinks.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::commit::{CommitError, Committer};
use crate::item::{Item, Outcome, Status};
use crate::metrics::{counter_set, Gauge};
use crate::policy;
use crate::sink::{DoneLookup, Sink, SinkError, SinkErrorKind};
use crate::source::{ReturnReason, Source};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::Mutex;

/// How the write-behind thread batches and retries (SPEC §3.4, `sink:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// A batch closes at this many outcomes (`sink.batch`). ≥ 1.
    pub batch: usize,
    /// … or this long after its oldest outcome arrived (`sink.flush_every`).
    pub flush_every: Duration,
    /// Retries of a failed flush before its items are left unacknowledged
    /// (`sink.max_retries`).
    pub max_retries: u32,
    /// Back-off before the first retry; doubles, capped at 30 s.
    pub retry_backoff: Duration,
    /// How long `close` may take to flush what is queued (`sink.drain_timeout`).
    pub drain_timeout: Duration,
    /// Chunks the channel holds before `commit` blocks.
    pub channel_chunks: usize,
    /// Answer `done_ids` (exactly-once, resume). Off by default: a JSONL sink
    /// then keeps no in-memory index of done ids.
    pub done_lookups: bool,
    /// When the items of a flush that failed for good go back to the source.
    pub give_back: GiveBack,
}

/// When the items of a batch whose flush failed for good (its outcomes are
/// unsaved) go back to their source, to run again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GiveBack {
    /// For a continuous session, which never finishes on its own: as soon as
    /// a later flush is durable (the sink works again), or else after a
    /// pause that starts at `retry_backoff` and doubles with each give-back
    /// while the sink keeps failing, up to 30 s. A daemon so finishes them
    /// on its own once the disk recovers (within about as long as it was
    /// full, at most 30 s), and a sink that stays broken gets the same items
    /// again at most twice a minute, not in a hot loop.
    Soon,
    /// For a batch session (`run --once`, `session.every`): when it finishes
    /// ([`Committer::finish`]) or the writer closes. Pulled again sooner, they
    /// would keep a session whose sink stays broken from ever ending; the
    /// next session takes them.
    #[default]
    AtFinish,
}

impl Default for WriterConfig {
    /// SPEC §4: batch 500, flush every 1 s, 5 retries; 200 ms first back-off,
    /// 30 s drain, 64 chunks in flight, no done lookups; failed items given
    /// back when the session finishes.
    fn default() -> Self {
        WriterConfig {
            batch: 500,
            flush_every: Duration::from_secs(1),
            max_retries: 5,
            retry_backoff: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            channel_chunks: 64,
            done_lookups: false,
            give_back: GiveBack::AtFinish,
        }
    }
}

/// The longest pause between two tries of one flush.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

counter_set! {
    /// What the write-behind thread has done (seed 001's metrics and more).
    pub struct WriterMetrics;
    /// The write-behind thread's counters at one moment: the counters of
    /// status.json's `writer` object (SPEC §3.4).
    pub struct WriterCounters;
    counters {
        /// Outcomes handed over by `commit`.
        enqueued,
        /// Outcomes made durable.
        persisted,
        /// Outcomes whose flush failed for good (their items given back).
        failed,
        /// Outcomes given up on: those of `failed`, and those a drain had no
        /// time to write. Their items go back to the source and run again; a
        /// `run --once` with any exits 1.
        unsaved,
        /// Items given back to the source because their outcomes are unsaved.
        given_back,
        /// Flush retries.
        retries,
        /// Batches made durable.
        batches,
        /// Batches whose flush failed for good.
        failed_flushes,
        /// Durable batches whose acknowledgement to the source failed.
        ack_errors,
    }
    others {
        /// Outcomes handed over and not yet flushed (channel + open batch).
        pub depth: Gauge,
        /// The last successful flush, in microseconds. Relaxed: a statistic.
        pub last_flush_micros: AtomicU64,
        /// When the oldest unflushed outcome arrived, in milliseconds since the
        /// writer started, plus one (0 = nothing unflushed). Relaxed: a statistic.
        oldest_unflushed_ms: AtomicU64,
        /// When the writer started: the epoch of `oldest_unflushed_ms`.
        started: Option<Instant>,
    }
}

impl WriterMetrics {
    fn new(started: Instant) -> Self {
        WriterMetrics {
            started: Some(started),
            ..WriterMetrics::default()
        }
    }

    /// How long the oldest outcome not yet durable has waited.
    pub fn oldest_unflushed_age(&self) -> Option<Duration> {
        let stamp = self.oldest_unflushed_ms.load(Ordering::Relaxed);
        let started = self.started?;
        (stamp > 0).then(|| started.elapsed().saturating_sub(Duration::from_millis(stamp - 1)))
    }

    /// The last successful flush's duration.
    pub fn last_flush(&self) -> Duration {
        Duration::from_micros(self.last_flush_micros.load(Ordering::Relaxed))
    }

    fn mark_oldest(&self, at: Option<Instant>) {
        let stamp = match (at, self.started) {
            (Some(at), Some(started)) => at.saturating_duration_since(started).as_millis() as u64 + 1,
            _ => 0,
        };
        self.oldest_unflushed_ms.store(stamp, Ordering::Relaxed);
    }
}

/// What `close` could and could not write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Outcomes made durable during the drain.
    pub persisted: u64,
    /// Outcomes left unwritten (drain timeout or failed flushes); their items
    /// are given back to the source (or, if the thread is stuck, stay
    /// claimed) and run again later.
    pub unwritten: u64,
    /// True if the drain ran out of time.
    pub timed_out: bool,
}

enum Command {
    Chunk(Vec<Outcome>),
    /// Flush everything before this command, then answer whether all of it
    /// is durable.
    Flush(Sender<Result<(), String>>),
    /// Flush what is queued until the deadline, answer, and exit.
    Shutdown(Instant, Sender<DrainReport>),
}

/// The committer that persists through the write-behind thread.
pub struct Writer {
    commands: Sender<Command>,
    /// `close` sends the drain deadline here first: it wakes the thread from
    /// a flush's back-off at once (a `Shutdown` waits behind the flush).
    closing: Sender<Instant>,
    metrics: Arc<WriterMetrics>,
    /// Answers exactly-once lookups; `None` if the sink cannot.
    lookup: Option<Box<dyn DoneLookup>>,
    /// The thread, until `close` joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
    drain_timeout: Duration,
}

impl Writer {
    /// Starts the write-behind thread. It owns `sink` and, if given,
    /// `dead_letter` (which receives every failed outcome), and acknowledges
    /// durable outcomes to `source`.
    pub fn start(
        config: WriterConfig,
        sink: Box<dyn Sink>,
        dead_letter: Option<Box<dyn Sink>>,
        source: Arc<dyn Source>,
    ) -> Result<Writer, SinkError> {
        // Asked for now, while this thread still owns the sink.
        let lookup = if config.done_lookups {
            Some(sink.lookup()?)
        } else {
            None
        };
        let (commands, inbox) = bounded(config.channel_chunks.max(1));
        let (closing, closing_inbox) = bounded(1);
        let metrics = Arc::new(WriterMetrics::new(Instant::now()));
        let drain_timeout = config.drain_timeout;
        let thread = {
            let metrics = Arc::clone(&metrics);
            let name = sink.describe();
            let flusher = Flusher {
                config,
                sink,
                dead_letter,
                source,
                metrics,
                unsaved_items: Vec::new(),
                give_back_at: None,
                give_backs_in_a_row: 0,
                closing: closing_inbox,
                drain_deadline: None,
            };
            thread::Builder::new()
                .name("lote-writer".to_string())
                .spawn(move || flusher.run(inbox))
                .map_err(|e| SinkError::io(std::path::Path::new(&name), format!("starting the writer thread: {e}")))?
        };
        Ok(Writer {
            commands,
            closing,
            metrics,
            lookup,
            thread: Mutex::new(Some(thread)),
            drain_timeout,
        })
    }

    /// The writer's counters.
    pub fn metrics(&self) -> &Arc<WriterMetrics> {
        &self.metrics
    }

    /// Flushes everything queued (within `drain_timeout`), stops the thread
    /// and reports what could not be written.
    pub fn close(&self) -> DrainReport {
        let Some(thread) = self.thread.lock().take() else {
            return DrainReport::default();
        };
        let deadline = Instant::now() + self.drain_timeout;
        let (reply, report) = bounded(1);
        let queued = self.metrics.depth.get();
        // Wakes a back-off now; a full slot means a close is already under way.
        let _ = self.closing.try_send(deadline);
        // The send waits for room in the channel, but no longer than the drain.
        let sent = self
            .commands
            .send_deadline(Command::Shutdown(deadline, reply), deadline)
            .is_ok();
        let result = if sent {
            // A little past the deadline: the thread itself stops at it.
            report.recv_deadline(deadline + Duration::from_secs(1)).ok()
        } else {
            None
        };
        match result {
            Some(report) => {
                let _ = thread.join();
                if report.unwritten > 0 {
                    log::error!(
                        "writer drain: {} outcome(s) not written{}; their items go back to the source and will run again",
                        report.unwritten,
                        if report.timed_out {
                            " (drain_timeout ran out)"
                        } else {
                            ""
                        }
                    );
                }
                report
            }
            None => {
                // The thread is stuck in a sink call; leave it (the process
                // is on its way out) and say what is at stake.
                let unwritten = self.metrics.depth.get().max(queued);
                log::error!(
                    "writer drain: timed out after {}ms with {unwritten} outcome(s) not written; \
                     their items stay unacknowledged and will run again",
                    self.drain_timeout.as_millis()
                );
                DrainReport {
                    persisted: 0,
                    unwritten,
                    timed_out: true,
                }
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.thread.lock().is_some() {
            self.close();
        }
    }
}

impl Committer for Writer {
    fn commit(&self, chunk: Vec<Outcome>) -> Result<(), CommitError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len() as u64;
        self.metrics.enqueued.add(n);
        self.metrics.depth.add(n);
        // Blocks while the channel is full: backpressure, never a drop.
        self.commands.send(Command::Chunk(chunk)).map_err(|_| {
            self.metrics.depth.sub(n);
            // Never written: unsaved, so a run that hit this exits 1. The
            // items stay claimed at their source, whose crash recovery
            // releases them at the next start.
            self.metrics.unsaved.add(n);
            CommitError::Unavailable("the writer thread has stopped".to_string())
        })
    }

    fn finish(&self) -> Result<(), CommitError> {
        let (reply, answer) = bounded(1);
        self.commands
            .send(Command::Flush(reply))
            .map_err(|_| CommitError::Unavailable("the writer thread has stopped".to_string()))?;
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(CommitError::Unavailable(why)),
            Err(_) => Err(CommitError::Unavailable("the writer thread has stopped".to_string())),
        }
    }

    fn done_lookup(&self) -> Option<&dyn DoneLookup> {
        self.lookup.as_deref()
    }
}

/// The write-behind thread's state: what it owns.
struct Flusher {
    config: WriterConfig,
    sink: Box<dyn Sink>,
    dead_letter: Option<Box<dyn Sink>>,
    source: Arc<dyn Source>,
    metrics: Arc<WriterMetrics>,
    /// The items of unsaved outcomes, until they go back to the source
    /// (see [`GiveBack`]). At most one session's worth under `AtFinish`.
    unsaved_items: Vec<Item>,
    /// `GiveBack::Soon`: when `unsaved_items` go back if no flush is durable
    /// before. `None` while there are none (or under `AtFinish`).
    give_back_at: Option<Instant>,
    /// Give-backs since the last durable flush: the pause before
    /// `GiveBack::Soon` gives items back doubles with each.
    give_backs_in_a_row: u32,
    /// Where `close` announces the drain deadline (see [`Writer::close`]).
    closing: Receiver<Instant>,
    /// Once announced: no flush retries past it.
    drain_deadline: Option<Instant>,
}

/// How one flush ended.
enum Flushed {
    Durable,
    /// Not written; the message says why.
    Failed(String),
}

impl Flusher {
    fn run(mut self, inbox: Receiver<Command>) {
        log::debug!(
            "writer started: {} (batch {}, flush every {}ms)",
            self.sink.describe(),
            self.config.batch,
            self.config.flush_every.as_millis()
        );
        // Grows with what arrives: `batch` may be far larger than any real batch.
        let mut pending: Vec<Outcome> = Vec::new();
        let mut oldest: Option<Instant> = None;
        loop {
            let close_batch = oldest.map(|at| at + self.config.flush_every);
            let wake = close_batch.into_iter().chain(self.give_back_at).min();
            let command = match wake {
                Some(at) => inbox.recv_deadline(at),
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Chunk(chunk)) => {
                    if oldest.is_none() {
                        oldest = Some(Instant::now());
                        self.metrics.mark_oldest(oldest);
                    }
                    pending.extend(chunk);
                    while pending.len() >= self.config.batch {
                        let rest = pending.split_off(self.config.batch);
                        let full = std::mem::replace(&mut pending, rest);
                        self.flush(full, None);
                    }
                    if pending.is_empty() {
                        oldest = None;
                        self.metrics.mark_oldest(None);
                    }
                }
                Ok(Command::Flush(reply)) => {
                    let result = self.flush_all(&mut pending, None);
                    oldest = None;
                    self.metrics.mark_oldest(None);
                    // The session is over: what it could not save goes back.
                    self.give_back_unsaved();
                    let _ = reply.send(result);
                }
                Ok(Command::Shutdown(deadline, reply)) => {
                    let report = self.drain(&mut pending, &inbox, deadline);
                    self.metrics.mark_oldest(None);
                    let _ = reply.send(report);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if close_batch.is_some_and(|at| at <= now) {
                        let _ = self.flush_all(&mut pending, None);
                        oldest = None;
                        self.metrics.mark_oldest(None);
                    }
                    if self.give_back_at.is_some_and(|at| at <= now) {
                        self.give_back_unsaved();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Every Writer handle is gone without a close: flush what
                    // is here, with the default drain time, and end.
                    let deadline = Instant::now() + self.config.drain_timeout;
                    self.drain(&mut pending, &inbox, deadline);
                    return;
                }
            }
        }
    }

    /// Flushes everything in `pending` in batches; Err names what failed.
    fn flush_all(&mut self, pending: &mut Vec<Outcome>, deadline: Option<Instant>) -> Result<(), String> {
        let mut failures = Vec::new();
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(self.config.batch));
            let batch = std::mem::replace(pending, rest);
            if let Flushed::Failed(why) = self.flush(batch, deadline) {
                failures.push(why);
            }
        }
        match failures.len() {
            0 => Ok(()),
            n => Err(format!("{n} batch(es) not persisted: {}", failures.join("; "))),
        }
    }

    /// Takes every chunk still in the channel and flushes it all by `deadline`.
    fn drain(&mut self, pending: &mut Vec<Outcome>, inbox: &Receiver<Command>, deadline: Instant) -> DrainReport {
        // The close's announcement is this deadline: a back-off need not wait for it.
        let _ = self.closing.try_recv();
        self.drain_deadline = Some(deadline);
        let persisted_before = self.metrics.persisted.get();
        let failed_before = self.metrics.failed.get();
        while let Ok(command) = inbox.try_recv() {
            match command {
                Command::Chunk(chunk) => pending.extend(chunk),
                Command::Flush(reply) => {
                    let _ = reply.send(Err("the writer is shutting down".to_string()));
                }
                Command::Shutdown(_, reply) => {
                    let _ = reply.send(DrainReport::default());
                }
            }
        }
        let mut timed_out = false;
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            let rest = pending.split_off(pending.len().min(self.config.batch));
            let batch = std::mem::replace(pending, rest);
            self.flush(batch, Some(deadline));
        }
        let unwritten_now = pending.len() as u64;
        if unwritten_now > 0 {
            self.metrics.depth.sub(unwritten_now);
            self.metrics.unsaved.add(unwritten_now);
            self.unsaved_items.extend(pending.drain(..).map(|o| o.item));
        }
        self.give_back_unsaved();
        if !self.unsaved_items.is_empty() {
            log::error!(
                "{} item(s) whose outcomes were not saved could not be given back; \
                 they stay claimed until lote starts again",
                self.unsaved_items.len()
            );
            self.unsaved_items.clear();
        }
        DrainReport {
            persisted: self.metrics.persisted.get() - persisted_before,
            unwritten: unwritten_now + (self.metrics.failed.get() - failed_before),
            timed_out,
        }
    }

    /// Makes one batch durable (retrying), then acknowledges it; if that
    /// fails for good, keeps its items to give back (see [`GiveBack`]).
    fn flush(&mut self, batch: Vec<Outcome>, deadline: Option<Instant>) -> Flushed {
        let n = batch.len() as u64;
        let dead: Vec<Outcome> = match self.dead_letter {
            Some(_) => batch.iter().filter(|o| o.status == Status::Failed).cloned().collect(),
            None => Vec::new(),
        };
        // Once a try has made the dead letters durable, retries skip them.
        let mut dead_durable = dead.is_empty();
        let mut retry = 0u32;
        let result = loop {
            // A close announced during a back-off bounds the retries too.
            let deadline = deadline.into_iter().chain(self.drain_deadline).min();
            let started = Instant::now();
            match self.write_once(&batch, &dead, &mut dead_durable) {
                Ok(()) => {
                    self.metrics
                        .last_flush_micros
                        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    break Flushed::Durable;
                }
                Err(error) => {
                    let give_up = error.kind == SinkErrorKind::Corrupt || retry >= self.config.max_retries;
                    let delay = backoff(self.config.retry_backoff, retry);
                    let past_deadline = deadline.is_some_and(|d| Instant::now() + delay >= d);
                    if give_up || past_deadline {
                        self.metrics.failed.add(n);
                        self.metrics.failed_flushes.inc();
                        log::error!(
                            "flushing {n} outcome(s) failed after {} tries: {error}; \
                             their items go back to the source and will run again",
                            retry + 1
                        );
                        break Flushed::Failed(error.to_string());
                    }
                    retry += 1;
                    self.metrics.retries.inc();
                    log::warn!(
                        "flushing {n} outcome(s) failed: {error}; retry {retry} of {} in {}ms",
                        self.config.max_retries,
                        delay.as_millis()
                    );
                    self.back_off(delay);
                }
            }
        };
        self.metrics.depth.sub(n);
        match &result {
            Flushed::Durable => {
                self.metrics.persisted.add(n);
                self.metrics.batches.inc();
                if let Err(error) = self.source.ack(&batch) {
                    // The outcomes are durable: a rerun of these items is
                    // recognised (exactly-once) or harmless (at-least-once).
                    self.metrics.ack_errors.inc();
                    log::error!("acknowledging {n} durable outcome(s) to the source failed: {error}");
                }
                if self.config.give_back == GiveBack::Soon {
                    // The sink works again: what it could not take, it can now.
                    self.give_back_unsaved();
                }
                self.give_backs_in_a_row = 0;
            }
            Flushed::Failed(_) => {
                self.metrics.unsaved.add(n);
                self.unsaved_items.extend(batch.into_iter().map(|o| o.item));
                if self.config.give_back == GiveBack::Soon {
                    let pause = backoff(self.config.retry_backoff, self.give_backs_in_a_row);
                    // The first failed batch sets the time; later ones go with it.
                    self.give_back_at.get_or_insert(Instant::now() + pause);
                }
            }
        }
        result
    }

    /// Gives the items of unsaved outcomes back to the source, to run again:
    /// all in one call first (one transaction for a SQLite table). If that
    /// fails because the source is busy (a locked database, likely the very
    /// lock that failed the flush), all are kept: one call per item would
    /// wait `busy_timeout` each. On another error, the items it left claimed
    /// go one call each, so that a failure names the very items still
    /// claimed, stopping at the first busy answer. What is kept is exactly
    /// what is still claimed, tried again later (`Soon`: after the next
    /// pause; `AtFinish`: at the next finish), never an item that did go
    /// back (it may be claimed again by now). What is left at the drain stays
    /// claimed until the source's own recovery at the next start.
    fn give_back_unsaved(&mut self) {
        self.give_back_at = None;
        if self.unsaved_items.is_empty() {
            return;
        }
        self.give_backs_in_a_row = self.give_backs_in_a_row.saturating_add(1);
        let items = std::mem::take(&mut self.unsaved_items);
        let n = items.len();
        let mut first_error = None;
        if let Err(error) = self.source.give_back(items.clone(), ReturnReason::FlushFailed) {
            let still_claimed: Vec<Item> = match error.still_claimed() {
                Some(ids) => items.into_iter().filter(|item| ids.contains(&item.id)).collect(),
                None => items,
            };
            let busy = error.is_busy();
            first_error = Some(error);
            let mut rest = still_claimed.into_iter();
            if !busy {
                for item in rest.by_ref() {
                    if let Err(error) = self.source.give_back(vec![item.clone()], ReturnReason::FlushFailed) {
                        self.unsaved_items.push(item);
                        if error.is_busy() {
                            break;
                        }
                    }
                }
            }
            self.unsaved_items.extend(rest);
        }
        let back = n - self.unsaved_items.len();
        if back > 0 {
            self.metrics.given_back.add(back as u64);
            log::warn!(
                "{back} item(s) whose outcomes were not saved went back to the source ({}); they will run again",
                ReturnReason::FlushFailed
            );
        }
        if let Some(error) = first_error.filter(|_| !self.unsaved_items.is_empty()) {
            let kept = self.unsaved_items.len();
            log::error!(
                "giving back {kept} item(s) whose outcomes were not saved failed (first: {error}); tried again later"
            );
            if self.config.give_back == GiveBack::Soon {
                let pause = backoff(self.config.retry_backoff, self.give_backs_in_a_row);
                self.give_back_at = Some(Instant::now() + pause);
            }
        }
    }

    /// Sleeps `delay` between two tries of a flush, waking at once when the
    /// writer is told to close: the next try then runs within the drain
    /// deadline. (Once closing, `flush` never asks for a pause past it.)
    fn back_off(&mut self, delay: Duration) {
        if self.drain_deadline.is_some() {
            thread::sleep(delay);
            return;
        }
        match self.closing.recv_timeout(delay) {
            Ok(deadline) => self.drain_deadline = Some(deadline),
            Err(RecvTimeoutError::Timeout) => {}
            // Every Writer is gone (no close): drain as `run` does then.
            Err(RecvTimeoutError::Disconnected) => {
                self.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
            }
        }
    }

    /// One try: dead letters first (unless an earlier try made them
    /// durable), then the outcomes. Both writes are idempotent, so a retry
    /// of a half-done try stores the same records.
    fn write_once(&mut self, batch: &[Outcome], dead: &[Outcome], dead_durable: &mut bool) -> Result<(), SinkError> {
        if !*dead_durable {
            if let Some(dead_letter) = self.dead_letter.as_mut() {
                dead_letter.write(dead)?;
            }
            *dead_durable = true;
        }
        self.sink.write(batch)
    }
}

/// `base` doubled `retry` times, capped at `MAX_RETRY_BACKOFF`.
fn backoff(base: Duration, retry: u32) -> Duration {
    policy::doubled(base, retry, MAX_RETRY_BACKOFF)
}
