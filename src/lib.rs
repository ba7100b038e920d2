//! # lote
//!
//! A small, synchronous, thread-based engine that moves work items from a
//! **source**, through N worker threads and a **handler**, and commits each
//! item's **outcome** in chunks. No async runtime: OS threads pull from a
//! Mutex + Condvar priority queue whose control lane lets a `Stop`
//! overtake all queued work and makes `EndOfData` leave last.
//!
//! # Layout
//!
//! The folders follow an item's way through the house:
//! source → queue → worker → handler → commit → writer → sink.
//!
//! - [`item`]: [`Item`] (id, priority, payload) and [`Outcome`] (status,
//!   attempts, output or error, timings).
//! - [`source`]: the [`Source`] trait (yield items, take back the ones not
//!   processed, receive acknowledgements, take dead letters back);
//!   [`source::VecSource`] (in memory), [`source::SqliteSource`] (a work
//!   table in a SQLite file), [`source::spool::SpoolSource`] (a directory,
//!   one file per item), [`source::lines::LinesSource`] (a file or stdin)
//!   and [`source::InboxSource`] (lote's own durable queue, filled through
//!   an [`source::Intake`] by the HTTP listener and `lote push`) and
//!   [`source::RedisStreamSource`] (a fleet's share of a Redis stream).
//! - [`redis_conn`]: the connection to redis-server the redis_stream source
//!   and sink share: URL and password file, reconnects with back-off.
//! - [`queue`]: [`WorkQueue`], the bounded priority queue and its messages
//!   (`Stop < Work(priority, seq) < EndOfData`), with the five `when_full`
//!   modes. Nothing else lives there.
//! - [`session`]: one run of seed 003's producer/consumer: the producer
//!   thread, the workers, the call loop (retries, breaker, timeout around a
//!   handler call), the deadline thread, [`Qos`], and the [`SessionSummary`]
//!   a session returns. The [`StopHandle`] that stops them lives in a leaf
//!   module of its own; `session` re-exports it.
//! - [`handler`]: the [`Handler`] trait, its [`CallContext`] and [`Failure`];
//!   closures are handlers; [`handler::Noop`], [`handler::exec::ExecHandler`]
//!   (a command per item) and [`handler::http::HttpHandler`].
//! - [`policy`]: what runs around a handler: [`policy::RetryPolicy`]
//!   (exponential back-off with jitter), [`policy::Breaker`] (a lock-free
//!   circuit breaker), the per-call timeout: pure policies. The loop that
//!   applies them is the session's.
//! - [`commit`]: the [`Committer`] trait that receives the workers' chunks,
//!   and [`commit::MemoryCommitter`], which keeps them in memory.
//! - [`writer`]: [`writer::Writer`], the write-behind thread: the committer
//!   that batches outcomes into a sink and acknowledges them once durable.
//! - [`sink`]: the [`sink::Sink`] trait and its kinds, [`sink::SqliteSink`]
//!   and [`sink::JsonlSink`]; both also serve as the dead-letter sink.
//! - [`dead_letter`]: list dead letters and requeue them into the source.
//! - [`metrics`]: counters on atomics and latency histograms (queue wait,
//!   handler time, end to end) with p50/p90/p99.
//! - [`status`]: the status snapshot behind `status.json` and `lote status`;
//!   [`status::prometheus`] renders it and the histograms for `GET /metrics`
//!   and a node_exporter textfile.
//! - [`ingest`]: the HTTP listener of local ingest (`http:`): `POST /items`,
//!   `/status`, `/metrics`, `/healthz`, `/readyz` over loopback TCP or a
//!   Unix socket, in front of an [`ingest::Backend`] the daemon implements.
//! - [`push`]: `lote push`, stdin's lines into the inbox.
//! - [`config`]: the config file, raw then validated into the types above.
//! - [`daemon`]: `lote run` — parts from a config, sessions on a schedule,
//!   signals, reload.
//! - [`cli`]: the command line's definition (clap), shared by `src/main.rs`
//!   (thin: parse, log, exit codes) and the man page generator.
//! - [`notify`]: systemd's sd_notify protocol (ready, status, stopping,
//!   drain extensions) and the watchdog's health rule.
//! - `sync` (private): the Mutex/Condvar/atomics in use, swapped for loom's
//!   under `--cfg loom`.
//!
//! ARCHITECTURE.md beside Cargo.toml has the threads (who starts each, who
//! stops it) and the life of an item.
//!
//! # Example
//!
//! The README's example, compiled and run by `cargo test`:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lote::commit::MemoryCommitter;
//! use lote::policy::{CallPolicy, RetryPolicy};
//! use lote::source::VecSource;
//! use lote::{CallContext, Failure, Item, Session, SessionConfig, StopHandle};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let source = Arc::new(VecSource::numbered(1000));
//! let committer = Arc::new(MemoryCommitter::acking(source.clone()));
//! let handler = Arc::new(|ctx: &CallContext<'_>, item: &Item| {
//!     if ctx.should_stop() { return Err(Failure::retryable("cut short")); }
//!     Ok::<_, Failure>(format!("handled {}", item.id))
//! });
//! let stop = StopHandle::new(); // give a clone to a signal handler
//! let summary = Session::new(
//!         SessionConfig { threads: 4, chunk: 50, max_items: 500, deadline: Some(Duration::from_secs(240)), ..Default::default() },
//!         source, handler, committer)
//!     .policy(CallPolicy { retry: RetryPolicy::default(), ..Default::default() })
//!     .stop_handle(stop)
//!     .run()?;
//! println!("{summary}");
//! assert_eq!(summary.counts.done, 500);
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod dead_letter;
mod fsutil;
pub mod handler;
pub mod ingest;
pub mod item;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod push;
pub mod queue;
pub mod redis_conn;
pub mod session;
pub mod sink;
pub mod source;
pub mod spec;
mod sql;
pub mod status;
mod stop;
mod sync;
pub mod writer;

pub use commit::Committer;
pub use handler::{batch_fn, BatchHandler, BatchReply, CallContext, Failure, FailureKind, Handler, ItemReply};
pub use item::{Item, JsonItem, Outcome, Priority, Status};
pub use queue::{Message, PushError, QueueConfig, WhenFull, WorkQueue};
pub use session::{
    BatchConfig, EndReason, Qos, Session, SessionConfig, SessionSummary, StopHandle, StopLevel, StopReason,
};
pub use source::Source;
