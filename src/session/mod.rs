//! A session (SPEC §3.2, seed 003): one producer, `threads` workers and, if a
//! deadline is set, a deadline thread, around one [`WorkQueue`].
//!
//! # Threads
//!
//! | thread   | started by      | stopped by                                         |
//! |----------|-----------------|----------------------------------------------------|
//! | producer | [`Session::run`] | source drained / `max_items` / source error, or a stop (queue closed) |
//! | worker×N | [`Session::run`] | the `EndOfData` or `Stop` message it pops          |
//! | deadline | [`Session::run`] | the deadline (it then stops the session), a stop, or the session's end |
//!
//! All of them are scoped threads: `run` joins every one before it returns.
//!
//! # Stopping
//!
//! The session's [`StopHandle`] is a child of the one given to it (a daemon's
//! signal handle), so a signal stops the session and the deadline stops only
//! this session. On the first stop, a listener pushes one `Stop` per worker
//! (they overtake all queued work) and closes the queue (which wakes a
//! producer blocked on a full queue). Workers finish the item in hand,
//! commit, and exit; `run` then takes the work still queued and gives it back
//! to the source untouched.

mod batch;
mod call;
mod events;
mod producer;
mod summary;
mod worker;

pub use crate::stop::{StopHandle, StopLevel, StopReason, Subscription};
pub use summary::{EndReason, SessionCounts, SessionSummary};

pub use crate::policy::Qos;
use std::fmt;
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use crate::commit::Committer;
use crate::handler::Handler;
use crate::item::Item;
use crate::metrics::{Metrics, QueueReading};
use crate::policy::{CallPolicy, RetryPolicy};
use crate::queue::{QueueConfig, WorkQueue};
use crate::sink::DoneLookup;
use crate::source::{ReturnReason, Source};
use events::Events;
use producer::{Producer, ProducerEnd};
use worker::Worker;

/// The knobs of one session (seed 003's `threads`, `chunk`, `lote`, `timer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Worker threads (≥ 1).
    pub threads: usize,
    /// Each worker commits every `chunk` outcomes (≥ 1).
    pub chunk: usize,
    /// ... or sooner, once its oldest uncommitted outcome is this old; and
    /// always before it waits for work (SPEC §3.2). 0 = commit every outcome.
    pub chunk_wait: Duration,
    /// Most items taken from the source in one session; 0 = no limit.
    pub max_items: usize,
    /// Stop the session this long after it starts.
    pub deadline: Option<Duration>,
    pub queue: QueueConfig,
    /// Items asked of the source per pull, pushed under one queue lock.
    pub pull_batch: usize,
    /// How long the producer waits before polling an idle stream source.
    pub poll_interval: Duration,
    pub qos: Qos,
    /// `handler.batch`: workers take many items per handler call. `None`:
    /// one item per call.
    pub batch: Option<BatchConfig>,
}

/// How a worker fills a batch (SPEC §3.12, `handler.batch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most items per call (≥ 1).
    pub max_items: usize,
    /// Most payload bytes per call; a batch closes before the item that
    /// would pass it (an item larger on its own goes alone).
    pub max_bytes: usize,
    /// How long a worker holding at least one item waits for the batch to
    /// fill before it calls with what it has.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    /// Seed 000's batches of 100, at most 1 MiB, filled for at most 200 ms.
    fn default() -> Self {
        BatchConfig {
            max_items: 100,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(200),
        }
    }
}

impl Default for SessionConfig {
    /// SPEC §4's example: 4 threads, chunk 50 (or 1s), no item limit, no
    /// deadline, the default queue; pulls of 64; idle polls every second.
    fn default() -> Self {
        SessionConfig {
            threads: 4,
            chunk: 50,
            chunk_wait: Duration::from_secs(1),
            max_items: 0,
            deadline: None,
            queue: QueueConfig::default(),
            pull_batch: 64,
            poll_interval: Duration::from_secs(1),
            qos: Qos::AtLeastOnce,
            batch: None,
        }
    }
}

impl SessionConfig {
    /// Checks the combinations a session cannot run with.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |what: &str| Err(SessionError::Config(what.to_string()));
        if self.threads == 0 {
            return bad("threads is 0: a session needs at least 1 worker thread");
        }
        if self.chunk == 0 {
            return bad("chunk is 0: workers commit every `chunk` outcomes, so it must be at least 1");
        }
        if self.queue.capacity == 0 {
            return bad("queue capacity is 0: the queue must hold at least 1 item");
        }
        if self.pull_batch == 0 {
            return bad("pull_batch is 0: the producer must ask for at least 1 item at a time");
        }
        if self.deadline == Some(Duration::ZERO) {
            return bad("deadline is 0: omit it for no deadline, or give a positive duration");
        }
        if let Some(batch) = &self.batch {
            if batch.max_items == 0 {
                return bad("batch max_items is 0: a batch holds at least 1 item");
            }
            if batch.max_bytes == 0 {
                return bad("batch max_bytes is 0: give a limit like 1MiB");
            }
        }
        Ok(())
    }
}

/// Why a session could not run.
#[derive(Debug)]
pub enum SessionError {
    /// The configuration is impossible; the message says what to change.
    Config(String),
    /// A thread could not be started (the OS refused).
    Spawn(std::io::Error),
    /// A lote thread panicked: a bug in lote, not in a handler.
    ThreadPanicked(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Config(why) => write!(f, "invalid session config: {why}"),
            SessionError::Spawn(e) => write!(f, "could not start a session thread: {e}"),
            SessionError::ThreadPanicked(which) => write!(f, "the {which} thread panicked (a bug in lote)"),
        }
    }
}

impl std::error::Error for SessionError {}

/// A work item on its way through the queue, with its timestamps.
pub(crate) struct Job {
    pub item: Item,
    /// When the source yielded it, before any wait for queue room or the
    /// exactly-once lookup (end-to-end latency).
    pub pulled_at: Instant,
    /// When the producer pushed it (queue-wait latency).
    pub queued_at: Instant,
}

/// One producer/consumer run over a source, ready to [`run`](Session::run).
pub struct Session {
    config: SessionConfig,
    source: Arc<dyn Source>,
    handler: Arc<dyn Handler>,
    committer: Arc<dyn Committer>,
    policy: CallPolicy,
    stop: StopHandle,
    metrics: Arc<Metrics>,
}

impl Session {
    /// A session with no retry, no breaker and no timeout, its own stop
    /// handle and its own metrics; change them with the builder methods.
    pub fn new(
        config: SessionConfig,
        source: Arc<dyn Source>,
        handler: Arc<dyn Handler>,
        committer: Arc<dyn Committer>,
    ) -> Self {
        Session {
            config,
            source,
            handler,
            committer,
            policy: CallPolicy::plain(),
            stop: StopHandle::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Runs handler calls under `policy` (retry, breaker, timeout).
    pub fn policy(mut self, policy: CallPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Stops when `stop` does (the session stops a child of it, so its own
    /// deadline does not stop `stop`).
    pub fn stop_handle(mut self, stop: StopHandle) -> Self {
        self.stop = stop;
        self
    }

    /// Counts into `metrics` (shared with whoever reports them).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs the session to its end and returns what happened: checks the
    /// config, starts the threads around a fresh queue, waits for them,
    /// gives back what is still queued and sums up.
    pub fn run(&self) -> Result<SessionSummary, SessionError> {
        self.config.validate()?;
        if self.config.batch.is_some() && self.handler.as_batch().is_none() {
            return Err(SessionError::Config(
                "batch is set, but this handler takes one item per call; \
                 give a BatchHandler (handler::batch_fn) or leave batch unset"
                    .to_string(),
            ));
        }
        let done = self.done_lookup()?;
        let policy = self.call_policy();
        let started = Instant::now();
        let queue: Arc<WorkQueue<Job>> = Arc::new(WorkQueue::new(self.config.queue.clone()));
        let events = Events::new(&self.metrics, self.source.as_ref());
        self.show_queue(&queue, &events);
        let stop = self.stop.child();
        let stopper = stop_workers_on_stop(&stop, &queue, self.config.threads);

        let threads = self.run_threads(&queue, &stop, &policy, done, &events, started);

        drop(stopper);
        self.metrics.queue.set(None);
        self.wind_down(&queue, &events);
        let producer_end = threads?;
        let source_drained = producer_end == ProducerEnd::Drained;
        let end = end_reason(stop.reason(), producer_end);
        Ok(events.ended(end, source_drained, started.elapsed()))
    }

    /// The lookup of done items, if this session skips them (exactly-once,
    /// or a source that needs resuming); an error if it must and the
    /// committer has none.
    fn done_lookup(&self) -> Result<Option<&dyn DoneLookup>, SessionError> {
        let skip_done = self.config.qos == Qos::ExactlyOnce || self.source.needs_resume();
        if !skip_done {
            return Ok(None);
        }
        match self.committer.done_lookup() {
            Some(lookup) => Ok(Some(lookup)),
            None => Err(SessionError::Config(format!(
                "{} needs a committer that can look up done items \
                 (a Writer started with WriterConfig::done_lookups)",
                if self.config.qos == Qos::ExactlyOnce {
                    "qos exactly_once"
                } else {
                    "resuming this source"
                }
            ))),
        }
    }

    /// The call policy under this session's QoS: at most once never makes a
    /// second attempt.
    fn call_policy(&self) -> CallPolicy {
        match self.config.qos {
            Qos::AtMostOnce => CallPolicy {
                retry: RetryPolicy::none(),
                ..self.policy.clone()
            },
            _ => self.policy.clone(),
        }
    }

    /// Lets status readers see `queue` (and its warnings) while the session runs.
    fn show_queue(&self, queue: &Arc<WorkQueue<Job>>, events: &Events<'_>) {
        let queue = Arc::clone(queue);
        let warnings = events.queue_warnings();
        self.metrics.queue.set(Some(Arc::new(move || QueueReading {
            stats: queue.stats(),
            high_water_warnings: warnings.get(),
        })));
    }

    /// Starts the deadline thread, the workers and the producer, and joins
    /// them all: how the producer ended, or which thread panicked.
    fn run_threads(
        &self,
        queue: &WorkQueue<Job>,
        stop: &StopHandle,
        policy: &CallPolicy,
        done: Option<&dyn DoneLookup>,
        events: &Events<'_>,
        started: Instant,
    ) -> Result<ProducerEnd, SessionError> {
        // The session's end also ends the deadline thread's sleep.
        let over = stop.child();
        thread::scope(|scope| -> Result<ProducerEnd, SessionError> {
            // If a thread cannot start, stop what did; the scope joins it.
            let give_up = |e| {
                stop.stop(StopReason::Requested);
                over.stop(StopReason::Requested);
                e
            };
            let deadline = match self.config.deadline {
                Some(after) => {
                    let over = &over;
                    Some(spawn(scope, "lote-deadline", move || {
                        deadline_thread(stop, over, started, after)
                    })?)
                }
                None => None,
            };
            let mut workers = Vec::with_capacity(self.config.threads);
            for index in 0..self.config.threads {
                let worker = Worker {
                    index,
                    queue,
                    handler: self.handler.as_ref(),
                    committer: self.committer.as_ref(),
                    policy,
                    stop,
                    events,
                    chunk: self.config.chunk,
                    chunk_wait: self.config.chunk_wait,
                    batch: self.config.batch.as_ref().zip(self.handler.as_batch()),
                };
                workers.push(spawn(scope, &format!("lote-worker-{index}"), move || worker.run()).map_err(give_up)?);
            }
            let producer = Producer {
                source: self.source.as_ref(),
                committer: self.committer.as_ref(),
                done,
                queue,
                stop,
                events,
                max_items: self.config.max_items,
                workers: self.config.threads,
                batch: self.config.pull_batch,
                poll_interval: self.config.poll_interval,
            };
            let producer = spawn(scope, "lote-producer", move || producer.run()).map_err(give_up)?;

            let mut panicked = None;
            let end = producer.join().unwrap_or_else(|_| {
                // The producer died: stop the workers so nothing waits forever.
                stop.stop(StopReason::Requested);
                panicked = Some("producer");
                ProducerEnd::Stopped
            });
            for worker in workers {
                if worker.join().is_err() {
                    stop.stop(StopReason::Requested);
                    panicked = Some("worker");
                }
            }
            over.stop(StopReason::Requested);
            if deadline.is_some_and(|d| d.join().is_err()) {
                panicked = Some("deadline");
            }
            match panicked {
                Some(which) => Err(SessionError::ThreadPanicked(which.to_string())),
                None => Ok(end),
            }
        })
    }

    /// After the threads: work still queued (after a stop) goes back
    /// untouched, and the committer makes everything durable.
    fn wind_down(&self, queue: &WorkQueue<Job>, events: &Events<'_>) {
        let left: Vec<Item> = queue.take_work().into_iter().map(|job| job.item).collect();
        events.give_back(left, ReturnReason::Stopped);
        if let Err(error) = self.committer.finish() {
            events.commit_failed(0, &error);
        }
    }
}

/// On the first stop (a handle can jump straight to Hurry, so not only on
/// Stopping): one Stop per worker, and no more work in.
fn stop_workers_on_stop(stop: &StopHandle, queue: &Arc<WorkQueue<Job>>, workers: usize) -> Subscription {
    let queue = Arc::clone(queue);
    let once = Once::new();
    stop.on_change(move |level| {
        if level >= StopLevel::Stopping {
            once.call_once(|| {
                queue.push_stop(workers);
                queue.close();
            });
        }
    })
}

/// Why the session ended: a stop's reason wins over how the producer ended.
fn end_reason(stop: Option<StopReason>, producer: ProducerEnd) -> EndReason {
    match (stop, producer) {
        (Some(StopReason::Deadline), _) => EndReason::Deadline,
        (Some(_), _) => EndReason::Stopped,
        (None, ProducerEnd::Drained) => EndReason::Drained,
        (None, ProducerEnd::MaxItems) => EndReason::MaxItems,
        (None, ProducerEnd::SourceFailed(why)) => EndReason::SourceFailed(why),
        (None, ProducerEnd::Stopped) => EndReason::Stopped,
    }
}

/// Sleeps until the deadline, then stops the session. Ends early when the
/// session stops or ends (`over` is a child of `stop`, stopped at the end).
fn deadline_thread(stop: &StopHandle, over: &StopHandle, started: Instant, after: Duration) {
    let Some(at) = started.checked_add(after) else {
        over.wait_for_stop();
        return;
    };
    if !over.sleep_until(at) {
        log::warn!("deadline of {}ms reached: stopping the session", after.as_millis());
        stop.stop(StopReason::Deadline);
    }
}

fn spawn<'scope, 'env, T: Send + 'scope>(
    scope: &'scope thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<thread::ScopedJoinHandle<'scope, T>, SessionError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, f)
        .map_err(SessionError::Spawn)
}
