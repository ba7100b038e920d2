//! The daemon: `lote run`. Builds the parts a config names (source, handler,
//! sinks, the write-behind thread), runs sessions — one (`--once`), one per
//! `session.every` tick, or one continuous session polling a stream source —
//! and turns signals into stops, reloads and status lines.
//!
//! # Threads (besides a session's own, see `session`)
//!
//! | thread | started by | stopped by |
//! |---|---|---|
//! | signals (`lote-signals`) | [`run`] | [`run`] closing the signal iterator on the way out |
//! | status (`lote-status`) | [`run`] | the `over` handle, stopped by [`run`] on the way out (it also wakes at the first stop signal, to write `stopping` at once) |
//! | notify (`lote-notify`) | [`run`], only under systemd (`NOTIFY_SOCKET` set) | the `over` handle, like status |
//! | writer (`lote-writer`) | [`run`] via `Writer::start` | `Writer::close` after the last session (drain) |
//!
//! # Signals
//!
//! - SIGTERM / SIGINT: the first stops (sessions end the graceful way: Stop
//!   sentinels, drain, exit 0); the second hurries (exec children are killed,
//!   what is done is flushed, exit).
//! - SIGHUP: the config is read again and applied at the next session
//!   boundary; if it is invalid, the error is logged and the old one stays.
//!   (Under systemd, `ExecReload=` runs `lote check` first, so `systemctl
//!   reload` fails on an invalid config before any SIGHUP.) If the new
//!   config is valid but its parts cannot be built, the old parts are built
//!   again; if that fails too, lote stops with exit 1 rather than run on
//!   with a closed writer. A breaker is kept across the reload, open or not,
//!   when neither it nor the handler changed (see [`keep_breaker`]).
//! - SIGUSR1: a status summary in the log.
//!
//! # systemd (`Type=notify`; all silent without `NOTIFY_SOCKET`)
//!
//! - `READY=1` once the config is valid and the parts are built (stores
//!   open, writer started).
//! - `STATUS=` from the notify thread, at most once a second: state, queue,
//!   busy workers, throughput, breaker, writer depth; `stopping | …` from
//!   the first SIGTERM until the sessions are over, then `draining: writer
//!   depth N`; when the watchdog withholds, why. The states are
//!   [`DaemonState`]'s, the same as the status file's.
//! - `STOPPING=1` on the first SIGTERM/SIGINT, or when the last session
//!   ends, whichever comes first.
//! - `EXTEND_TIMEOUT_USEC` while the writer drains, each time its depth went
//!   down since the notify thread's last look.
//! - `WATCHDOG=1` (with `WatchdogSec=`) only while the workers and the
//!   writer progress or are idle by design: the rule is in `crate::notify`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::config::{Config, ConfigError, HandlerSpec, SinkSpec, SourceSpec};
use crate::dead_letter::Requeued;
use crate::handler::exec::ExecHandler;
use crate::handler::http::HttpHandler;
use crate::handler::{Handler, Noop};
use crate::metrics::{prometheus, Metrics};
use crate::notify::{Bounds, DrainWatch, Notifier, Progress, Watchdog, MAX_TICK};
use crate::policy::{BreakerState, CallPolicy};
use crate::session::{EndReason, Qos, Session, SessionSummary, StopHandle, StopLevel, StopReason};
use crate::sink::{JsonlSink, Sink, SqliteSink, TableAck};
use crate::source::lines::{LinesConfig, LinesSource};
use crate::source::spool::SpoolSource;
use crate::source::{Source, SqliteSource};
use crate::status::{DaemonState, Status, StatusSources};
use crate::sync::Mutex;
use crate::writer::{DrainReport, GiveBack, Writer, WriterConfig, WriterMetrics};

/// How `lote run` was asked to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// One session, then exit (cron / systemd timer mode).
    pub once: bool,
    /// `--resume` (the default) / `--no-resume`: whether a lines source
    /// skips the ids the sink's records say are done. Applies whenever the
    /// source opens: at start, and at a reload that changed `source:` (a
    /// reload that did not keeps the open source, where it is).
    pub resume: bool,
}

/// How a run ended, for the exit code (SPEC §3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every session complete, no item failed: exit 0.
    Complete,
    /// Some items failed (dead-lettered): exit 3.
    ItemsFailed,
    /// The deadline stopped a `--once` session with items left: exit 4.
    DeadlineWithItemsLeft,
    /// Stopped by a signal, gracefully: exit 0.
    Stopped,
    /// This many outcomes were not saved (a flush that failed for good, a
    /// drain out of time): an I/O failure, exit 1, whatever else happened.
    /// Their items run again.
    OutcomesUnsaved(u64),
    /// The source failed (an I/O error reading it) and ended the run: exit
    /// 1, so a timer or `Restart=on-failure` sees it.
    SourceFailed,
}

impl RunEnd {
    pub fn exit_code(self) -> i32 {
        match self {
            RunEnd::Complete | RunEnd::Stopped => 0,
            RunEnd::OutcomesUnsaved(_) | RunEnd::SourceFailed => 1,
            RunEnd::ItemsFailed => 3,
            RunEnd::DeadlineWithItemsLeft => 4,
        }
    }

    /// `--once`: the deadline with items left says more than failures (the
    /// run is incomplete), failures more than success.
    fn of_session(summary: &SessionSummary) -> RunEnd {
        match &summary.end {
            EndReason::Stopped => RunEnd::Stopped,
            EndReason::SourceFailed(_) => RunEnd::SourceFailed,
            EndReason::Deadline if summary.items_left() => RunEnd::DeadlineWithItemsLeft,
            _ if summary.failed > 0 => RunEnd::ItemsFailed,
            _ => RunEnd::Complete,
        }
    }

    /// This end, with `unsaved` more outcomes not saved.
    fn with_unsaved(self, unsaved: u64) -> RunEnd {
        match (self, unsaved) {
            (end, 0) => end,
            (RunEnd::OutcomesUnsaved(n), more) => RunEnd::OutcomesUnsaved(n.saturating_add(more)),
            (_, n) => RunEnd::OutcomesUnsaved(n),
        }
    }
}

/// Why the daemon could not run (exit 1).
#[derive(Debug)]
pub enum DaemonError {
    Config(ConfigError),
    /// Building a part from a valid config failed (a missing directory, a
    /// damaged database, a program not found); the message says which.
    Build(String),
    Session(String),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Config(e) => write!(f, "{e}"),
            DaemonError::Build(why) => f.write_str(why),
            DaemonError::Session(why) => write!(f, "session failed: {why}"),
        }
    }
}

impl std::error::Error for DaemonError {}

/// The running parts a config names.
struct Parts {
    config: Config,
    source: Arc<dyn Source>,
    /// What the source was opened for: a reload keeps `source` (where it
    /// is, its resume, its locks) when the new config's is the same.
    opened: Opened,
    /// The acknowledgement the sink makes for a source in its own file.
    table_ack: Option<TableAck>,
    handler: Arc<dyn Handler>,
    /// `config.policy` built: its breaker is shared by every session.
    policy: CallPolicy,
    /// The exec handler again, to kill its children on the way out.
    exec: Option<Arc<ExecHandler>>,
    writer: Arc<Writer>,
}

/// What a source was opened for; the same for the same source object.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Opened {
    spec: SourceSpec,
    /// Polled when empty (a spool or table in a continuous session). A
    /// lines source is never a stream: it ends at the end of its file.
    stream: bool,
    /// A sqlite source in the sink's own file (acknowledged by the sink).
    in_sink_file: bool,
}

impl Opened {
    fn of(config: &Config, stream: bool) -> Opened {
        let in_sink_file = match (&config.source, &config.sink) {
            (SourceSpec::Sqlite(source), SinkSpec::Sqlite(sink)) => same_file(&source.path, &sink.path),
            _ => false,
        };
        Opened {
            spec: config.source.clone(),
            stream: stream && !matches!(config.source, SourceSpec::Lines(_)),
            in_sink_file,
        }
    }
}

/// A source already open, to build new parts around.
type LiveSource = (Arc<dyn Source>, Option<TableAck>);

impl Parts {
    /// Builds everything `config` names. `stream`: sources poll when empty.
    /// `resume: false` is `--no-resume`. `live`: the source already open for
    /// this config's `source:` (a reload), used rather than opened again.
    fn build(config: Config, stream: bool, resume: bool, live: Option<LiveSource>) -> Result<Parts, DaemonError> {
        config.create_dirs().map_err(DaemonError::Build)?;
        let build = |what: &str, e: &dyn std::fmt::Display| DaemonError::Build(format!("{what}: {e}"));
        let opened = Opened::of(&config, stream);
        let stream = opened.stream;
        let (source, table_ack) = match live {
            Some(live) => live,
            None => open_for(&config, &opened, resume)?,
        };
        let mut exec = None;
        let handler: Arc<dyn Handler> = match &config.handler {
            HandlerSpec::Exec(spec) => {
                let handler = Arc::new(ExecHandler::new(spec.clone()).map_err(|e| build("the exec handler", &e))?);
                exec = Some(Arc::clone(&handler));
                handler
            }
            HandlerSpec::Http(spec) => {
                Arc::new(HttpHandler::new(spec.clone()).map_err(|e| build("the http handler", &e))?)
            }
            HandlerSpec::Noop => Arc::new(Noop),
        };
        let sink = open_sink(&config.sink, table_ack.clone())?;
        let dead_letter = match &config.dead_letter {
            Some(spec) => Some(open_sink(spec, None)?),
            None => None,
        };
        let writer_config = WriterConfig {
            // A continuous session over a stream never finishes: unsaved
            // items go back soon. A source that ends (a lines file, a batch
            // session) gets them back at the finish, for the next session.
            give_back: if stream { GiveBack::Soon } else { GiveBack::AtFinish },
            ..config.writer.clone()
        };
        let writer = Writer::start(writer_config, sink, dead_letter, Arc::clone(&source))
            .map_err(|e| build("starting the writer", &e))?;
        Ok(Parts {
            policy: config.policy.call_policy(),
            config,
            source,
            opened,
            table_ack,
            handler,
            exec,
            writer: Arc::new(writer),
        })
    }

    /// Drains the writer, kills any exec child still running, and says what
    /// the drain could not write.
    fn close(&self) -> DrainReport {
        let report = self.writer.close();
        if report.unwritten == 0 {
            log::info!("writer drained");
        }
        if let Some(exec) = &self.exec {
            exec.kill_all_running();
        }
        report
    }
}

/// Opens the source of `config` as `opened` says; a sqlite source in the
/// sink's own file comes with the acknowledgement the sink makes for it.
fn open_for(config: &Config, opened: &Opened, resume: bool) -> Result<LiveSource, DaemonError> {
    let mut table_ack = None;
    let source: Arc<dyn Source> = match &config.source {
        SourceSpec::Sqlite(table) if opened.in_sink_file => {
            let mut table = table.clone();
            table.stream = opened.stream;
            let source =
                SqliteSource::open(table).map_err(|e| DaemonError::Build(format!("opening the sqlite source: {e}")))?;
            // One file: outcome and acknowledgement in one transaction.
            table_ack = Some(source.table_ack());
            Arc::new(source.acked_in_sink_transaction())
        }
        SourceSpec::Lines(lines) => open_lines(lines, config, resume)?,
        spec => open_source(spec, opened.stream)?,
    };
    Ok((source, table_ack))
}

/// Opens the source `spec` names. `stream`: an empty spool or table means
/// "nothing yet" (a daemon polls) rather than the end of the session.
fn open_source(spec: &SourceSpec, stream: bool) -> Result<Arc<dyn Source>, DaemonError> {
    let failed = |kind: &str, e: &dyn std::fmt::Display| DaemonError::Build(format!("opening the {kind} source: {e}"));
    Ok(match spec {
        SourceSpec::Spool(spool) => {
            let mut spool = spool.clone();
            spool.stream = stream;
            Arc::new(SpoolSource::open(spool).map_err(|e| failed("spool", &e))?)
        }
        SourceSpec::Lines(lines) => Arc::new(LinesSource::open(lines.clone()).map_err(|e| failed("lines", &e))?),
        SourceSpec::Sqlite(table) => {
            let mut table = table.clone();
            table.stream = stream;
            Arc::new(SqliteSource::open(table).map_err(|e| failed("sqlite", &e))?)
        }
    })
}

/// Opens a lines source with its resume tied to the file: the identity of
/// the file the sink's records came from is kept in `<sink>.lines-file`.
fn open_lines(lines: &LinesConfig, config: &Config, resume: bool) -> Result<Arc<dyn Source>, DaemonError> {
    let failed = |e: &dyn std::fmt::Display| DaemonError::Build(format!("opening the lines source: {e}"));
    if !resume && config.session.qos == Qos::ExactlyOnce {
        return Err(DaemonError::Build(
            "--no-resume would run items whose outcome is durable again, which handler.qos: exactly_once rules \
             out; drop --no-resume, or set qos: at_least_once for this run"
                .into(),
        ));
    }
    let sink = config.sink.path();
    let mut identity_file = sink.as_os_str().to_owned();
    identity_file.push(".lines-file");
    let source = LinesSource::open(lines.clone()).map_err(|e| failed(&e))?;
    let source = source
        .tie_resume(Path::new(&identity_file), resume, sink.exists())
        .map_err(|e| failed(&e))?;
    Ok(Arc::new(source))
}

/// Opens the sink `spec` names; a SQLite sink with `table_ack` also marks
/// the source's rows in each outcome transaction.
fn open_sink(spec: &SinkSpec, table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, DaemonError> {
    let failed = |e: &dyn std::fmt::Display| DaemonError::Build(format!("opening a sink: {e}"));
    Ok(match (spec, table_ack) {
        (SinkSpec::Sqlite(config), None) => Box::new(SqliteSink::open(config.clone()).map_err(|e| failed(&e))?),
        (SinkSpec::Sqlite(config), Some(ack)) => {
            let sink = SqliteSink::open(config.clone()).map_err(|e| failed(&e))?;
            Box::new(sink.with_table_ack(ack).map_err(|e| failed(&e))?)
        }
        (SinkSpec::Jsonl(config), _) => Box::new(JsonlSink::open(config.clone()).map_err(|e| failed(&e))?),
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
}

/// What the status thread reports, shared with the session loop.
struct Shared {
    /// Protects what changes between sessions.
    inputs: Mutex<Inputs>,
    metrics: Arc<Metrics>,
    started_at: SystemTime,
    config_path: PathBuf,
    /// The daemon's stop (not a session's): once a stop is asked for, the
    /// reported state is `stopping` whatever the session loop last set
    /// (see [`Shared::state`]). Read here rather than set by the signal
    /// thread, so that the loop cannot overwrite it with `running`.
    stop: StopHandle,
}

struct Inputs {
    /// What the session loop set last; read it through [`Shared::state`].
    state: DaemonState,
    sessions: u64,
    last: Option<(SessionSummary, SystemTime)>,
    writer: Option<Arc<Writer>>,
    /// The counts of the writers earlier reloads closed, added to the
    /// running one's so that the reported counters never go back to 0.
    retired: WriterCounts,
    breaker: Option<Arc<crate::policy::Breaker>>,
    threads: usize,
    status_file: PathBuf,
    textfile: Option<PathBuf>,
    every: Duration,
    log_every: Duration,
    /// The watchdog's bounds for the running config (`crate::notify`).
    bounds: Bounds,
}

impl Shared {
    /// The state to report: the session loop's, or `stopping` once a stop
    /// was asked for and the loop has not yet moved on to the drain.
    fn state(&self, inputs: &Inputs) -> DaemonState {
        if self.stop.is_stopping() {
            inputs.state.once_stop_asked()
        } else {
            inputs.state
        }
    }

    fn capture(&self) -> Status {
        let inputs = self.inputs.lock();
        let writer_metrics = inputs.writer.as_ref().map(|w| Arc::clone(w.metrics()));
        let mut status = Status::capture(
            StatusSources {
                metrics: &self.metrics,
                writer: writer_metrics.as_deref(),
                breaker: inputs.breaker.as_deref(),
                threads: inputs.threads,
            },
            self.state(&inputs).as_str(),
            &self.config_path.display().to_string(),
            self.started_at,
            inputs.sessions,
            inputs.last.as_ref().map(|(summary, at)| (summary, *at)),
        );
        if let Some(writer) = status.writer.as_mut() {
            inputs.retired.add_to(writer);
        }
        status
    }

    /// Writes the status file and the metrics textfile.
    fn write_files(&self) {
        let status = self.capture();
        let (status_file, textfile) = {
            let inputs = self.inputs.lock();
            (inputs.status_file.clone(), inputs.textfile.clone())
        };
        if let Err(e) = status.write(&status_file) {
            log::warn!("writing the status file {}: {e}", status_file.display());
        }
        if let Some(textfile) = textfile {
            let text = prometheus::render(&status, &self.metrics);
            if let Err(e) = crate::status::write_atomically(&textfile, text.as_bytes()) {
                log::warn!("writing the metrics textfile {}: {e}", textfile.display());
            }
        }
    }

    fn set_state(&self, state: DaemonState) {
        self.inputs.lock().state = state;
    }
}

/// The status thread: files every `metrics.every`, a summary line every
/// `metrics.log_every`, warnings (queue ≥ 80 %, breaker open) when they
/// start. Ends when `over` stops. `wake` is a child of `over` that the
/// daemon's stop also stops: until then the thread sleeps on it, so that the
/// files say `stopping` as soon as a stop is asked for, not a `metrics.every`
/// (15 s by default) later; after it, on `over` alone.
fn status_thread(shared: &Shared, over: &StopHandle, wake: &StopHandle) {
    let mut next_log = Some(Instant::now());
    let mut warned: Vec<String> = Vec::new();
    loop {
        let (every, log_every) = {
            let inputs = shared.inputs.lock();
            (inputs.every, inputs.log_every)
        };
        shared.write_files();
        let status = shared.capture();
        let warnings = status.warnings();
        for warning in warnings.iter().filter(|w| !warned.contains(w)) {
            log::warn!("{warning}");
        }
        warned = warnings;
        if next_log.is_some_and(|at| Instant::now() >= at) {
            log::info!("{}", status.summary_line());
            // None (never again) only past the clock's end; validation
            // bounds `log_every` far below it.
            next_log = Instant::now().checked_add(log_every);
        }
        let pause = every.min(log_every).max(Duration::from_millis(100));
        let sleeper = if shared.stop.is_stopping() { over } else { wake };
        // `wake` stopped by the daemon's stop: write again now.
        if sleeper.sleep(pause) && over.is_stopping() {
            return;
        }
    }
}

/// The notify thread (only with `NOTIFY_SOCKET`): every `WATCHDOG_USEC / 2`
/// (at most [`MAX_TICK`]) it applies the watchdog rule and pings if healthy;
/// it sends a `STATUS=` line at most once a second, and while the writer
/// drains, its depth and a timeout extension each time the depth went down.
/// Ends when `over` stops.
fn notify_thread(shared: &Shared, over: &StopHandle, notifier: &Notifier) {
    let period = notifier.watchdog_period();
    // Not below 10 ms: a nonsense WATCHDOG_USEC must not make a busy loop.
    let tick = period.map_or(MAX_TICK, |p| (p / 2).clamp(Duration::from_millis(10), MAX_TICK));
    let look = || {
        let inputs = shared.inputs.lock();
        let writer = inputs.writer.as_ref().map(|w| Arc::clone(w.metrics()));
        let breaker = inputs.breaker.as_ref().map(|b| b.state().as_str());
        (shared.state(&inputs), inputs.bounds, inputs.threads, breaker, writer)
    };
    let (_, bounds, ..) = look();
    let mut watchdog = Watchdog::new(bounds, Progress::default(), Instant::now());
    let mut wedged = false;
    let mut drain = DrainWatch::default();
    // (when, outcomes) at the last running STATUS line, for the throughput.
    let mut last_status: Option<(Instant, u64)> = None;
    let mut last_drain_depth = None;
    loop {
        let (state, bounds, threads, breaker, writer) = look();
        let progress = Progress::read(&shared.metrics, writer.as_deref());
        let now = Instant::now();
        if period.is_some() {
            watchdog.set_bounds(bounds);
            match watchdog.check(progress, now) {
                Ok(()) => {
                    if std::mem::take(&mut wedged) {
                        log::warn!("watchdog: progress again; pinging systemd again");
                    }
                    notifier.watchdog();
                }
                Err(why) if !wedged => {
                    wedged = true;
                    log::error!("watchdog: {why}; withholding WATCHDOG=1 so that systemd restarts lote");
                    notifier.status(&format!("wedged: {why}"));
                }
                Err(_) => {}
            }
        }
        if state == DaemonState::Draining {
            if let Some(by) = drain.look(progress.writer_depth) {
                notifier.extend(by);
            }
            if last_drain_depth != Some(progress.writer_depth) && !wedged {
                notifier.status(&format!("draining: writer depth {}", progress.writer_depth));
                last_drain_depth = Some(progress.writer_depth);
            }
        } else if !wedged && last_status.is_none_or(|(at, _)| now.duration_since(at) >= MAX_TICK) {
            let m = &shared.metrics;
            let outcomes = m.done.get() + m.failed.get() + m.skipped.get();
            let rate = last_status.map_or(0.0, |(at, before)| {
                outcomes.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
            });
            let queue = m
                .queue
                .stats()
                .map_or_else(|| "-".into(), |q| format!("{}/{}", q.len, q.capacity));
            let mut line = format!(
                "{state} | queue {queue} | busy {}/{threads} | {rate:.1} items/s | done {} failed {}",
                progress.busy_workers,
                m.done.get(),
                m.failed.get()
            );
            if let Some(breaker) = breaker {
                line.push_str(&format!(" | breaker {breaker}"));
            }
            line.push_str(&format!(" | writer depth {}", progress.writer_depth));
            notifier.status(&line);
            last_status = Some((now, outcomes));
        }
        if over.sleep(tick) {
            return;
        }
    }
}

/// `lote dead-letter requeue`: hands dead letters (`ids`, or all) back to
/// the configured source and removes them from the dead-letter sink.
pub fn requeue_dead_letters(config: &Config, ids: Option<&[String]>) -> Result<Requeued, DaemonError> {
    let Some(spec) = &config.dead_letter else {
        return Err(DaemonError::Build("this config has no dead_letter sink".into()));
    };
    // A lines source opens (nothing is read) and refuses the requeue itself.
    let source = open_source(&config.source, false)?;
    let mut sink = open_sink(spec, None)?;
    crate::dead_letter::requeue(sink.as_mut(), source.as_ref(), ids).map_err(|e| DaemonError::Build(e.to_string()))
}

/// `lote run` with a config already loaded (and logging set up from it).
pub fn run(options: RunOptions, config: Config) -> Result<RunEnd, DaemonError> {
    let stop = StopHandle::new();
    let reload = Arc::new(AtomicBool::new(false));
    let status_wanted = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let notifier = Notifier::from_env();

    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| DaemonError::Build(format!("installing signal handlers: {e}")))?;
    let signals_handle = signals.handle();
    let stream = !options.once && config.every.is_none();
    // The running continuous session's own stop handle (a child of `stop`),
    // `None` between sessions and for a session that ends on its own
    // schedule (`--once`, `session.every`). Protects which session is
    // current: set and cleared by the session loop from the config running
    // then (a reload may change it), read by the signal thread (SIGHUP ends
    // a continuous session); held only to set, clear or clone it.
    let current: Arc<Mutex<Option<StopHandle>>> = Arc::new(Mutex::new(None));
    let signal_thread = {
        let (stop, reload, status_wanted) = (stop.clone(), Arc::clone(&reload), Arc::clone(&status_wanted));
        let (current, notifier) = (Arc::clone(&current), notifier.clone());
        thread::Builder::new()
            .name("lote-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    match signal {
                        SIGTERM | SIGINT => {
                            let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
                            match stop.trigger(StopReason::Signal(name.into())) {
                                StopLevel::Hurry => log::warn!("{name} again: cutting in-flight work short"),
                                _ => {
                                    log::info!("{name}: stopping after the items in hand");
                                    notifier.stopping();
                                }
                            }
                        }
                        SIGHUP => {
                            log::info!("SIGHUP: the config is read again at the next session boundary");
                            reload.store(true, Ordering::Relaxed);
                            // A continuous session has no boundary of its
                            // own: end it (gracefully) so one comes.
                            if let Some(session) = current.lock().as_ref() {
                                session.stop(StopReason::Requested);
                            }
                        }
                        SIGUSR1 => status_wanted.store(true, Ordering::Relaxed),
                        _ => {}
                    }
                }
            })
            .map_err(|e| DaemonError::Build(format!("starting the signal thread: {e}")))?
    };

    let result = (|| {
        if !options.resume && !matches!(config.source, SourceSpec::Lines(_)) {
            log::warn!(
                "--no-resume applies to a lines source only; spool and sqlite sources remember what they finished"
            );
        }
        let mut parts = Parts::build(config, stream, options.resume, None)?;
        notifier.ready("started");
        let shared = Shared {
            inputs: Mutex::new(inputs_of(&parts)),
            metrics: Arc::clone(&metrics),
            started_at: SystemTime::now(),
            config_path: options.config_path.clone(),
            stop: stop.clone(),
        };
        // Not a child of `stop`: the status and notify threads report the
        // drain that follows a stop, so they end only when `run` says.
        let over = StopHandle::new();
        let wake = over.child();
        let _wake_at_stop = stop.on_change({
            let wake = wake.clone();
            move |_| wake.stop(StopReason::Requested)
        });
        let result = thread::scope(|scope| {
            let status = thread::Builder::new()
                .name("lote-status".into())
                .spawn_scoped(scope, || status_thread(&shared, &over, &wake))
                .map_err(|e| DaemonError::Build(format!("starting the status thread: {e}")))?;
            let notify = if notifier.is_enabled() {
                let spawned = thread::Builder::new()
                    .name("lote-notify".into())
                    .spawn_scoped(scope, || notify_thread(&shared, &over, &notifier));
                match spawned {
                    Ok(spawned) => Some(spawned),
                    Err(e) => {
                        // The status thread is running: end it, or the scope
                        // would wait for it forever.
                        over.stop(StopReason::Requested);
                        parts.close();
                        return Err(DaemonError::Build(format!("starting the notify thread: {e}")));
                    }
                }
            } else {
                None
            };
            let result = session_loop(
                &mut parts,
                &options,
                &stop,
                &current,
                &metrics,
                &shared,
                &reload,
                &status_wanted,
            );
            notifier.stopping();
            shared.set_state(DaemonState::Draining);
            let drained = parts.close();
            let result = result.map(|end| end.with_unsaved(drained.unwritten));
            if let Ok(RunEnd::OutcomesUnsaved(n)) = result {
                log::error!("{n} outcome(s) were not saved (see the errors above); their items will run again");
            }
            shared.set_state(DaemonState::Stopped);
            over.stop(StopReason::Requested);
            let _ = status.join();
            if let Some(notify) = notify {
                let _ = notify.join();
            }
            shared.write_files();
            result
        });
        result
    })();
    signals_handle.close();
    let _ = signal_thread.join();
    result
}

fn inputs_of(parts: &Parts) -> Inputs {
    let config = &parts.config;
    Inputs {
        state: DaemonState::Starting,
        sessions: 0,
        last: None,
        writer: Some(Arc::clone(&parts.writer)),
        retired: WriterCounts::default(),
        breaker: parts.policy.breaker.clone(),
        threads: config.session.threads,
        status_file: config.state_dir.join("status.json"),
        textfile: config.metrics.textfile.clone(),
        every: config.metrics.every,
        log_every: config.metrics.log_every,
        bounds: Bounds::of(config),
    }
}

/// The counters of closed writers (see [`Inputs::retired`]).
#[derive(Clone, Copy, Debug, Default)]
struct WriterCounts {
    enqueued: u64,
    persisted: u64,
    failed: u64,
    unsaved: u64,
    given_back: u64,
    retries: u64,
    batches: u64,
    failed_flushes: u64,
    ack_errors: u64,
}

impl WriterCounts {
    /// These counts plus those of `writer`, closed.
    fn plus(self, writer: &WriterMetrics) -> WriterCounts {
        WriterCounts {
            enqueued: self.enqueued + writer.enqueued.get(),
            persisted: self.persisted + writer.persisted.get(),
            failed: self.failed + writer.failed.get(),
            unsaved: self.unsaved + writer.unsaved.get(),
            given_back: self.given_back + writer.given_back.get(),
            retries: self.retries + writer.retries.get(),
            batches: self.batches + writer.batches.get(),
            failed_flushes: self.failed_flushes + writer.failed_flushes.get(),
            ack_errors: self.ack_errors + writer.ack_errors.get(),
        }
    }

    fn add_to(&self, status: &mut crate::status::WriterStatus) {
        status.enqueued += self.enqueued;
        status.persisted += self.persisted;
        status.failed += self.failed;
        status.unsaved += self.unsaved;
        status.given_back += self.given_back;
        status.retries += self.retries;
        status.batches += self.batches;
        status.failed_flushes += self.failed_flushes;
        status.ack_errors += self.ack_errors;
    }
}

/// Runs sessions until `--once` is done, a stop, or (stream) forever.
#[allow(clippy::too_many_arguments)]
fn session_loop(
    parts: &mut Parts,
    options: &RunOptions,
    stop: &StopHandle,
    current: &Mutex<Option<StopHandle>>,
    metrics: &Arc<Metrics>,
    shared: &Shared,
    reload: &AtomicBool,
    status_wanted: &AtomicBool,
) -> Result<RunEnd, DaemonError> {
    let mut end = RunEnd::Complete;
    // Outcomes the drains at reloads could not write: an I/O failure the
    // exit code tells of, like the final drain's.
    let mut unsaved_at_reloads = 0u64;
    loop {
        let started = Instant::now();
        shared.set_state(DaemonState::Running);
        let session_stop = stop.child();
        let continuous = !options.once && parts.config.every.is_none();
        {
            let mut current = current.lock();
            *current = continuous.then(|| session_stop.clone());
            // A SIGHUP that came while no session was registered (between
            // sessions, during a reload) found nothing to end: end this one
            // now, or that reload would wait for the next SIGHUP. The
            // signal thread sets the flag before it takes this lock.
            if continuous && reload.load(Ordering::Relaxed) {
                session_stop.stop(StopReason::Requested);
            }
        }
        let session = Session::new(
            parts.config.session.clone(),
            Arc::clone(&parts.source),
            Arc::clone(&parts.handler),
            Arc::clone(&parts.writer) as Arc<dyn crate::commit::Committer>,
        )
        .policy(parts.policy.clone())
        .stop_handle(session_stop)
        .metrics(Arc::clone(metrics));
        let unsaved_before = parts.writer.metrics().unsaved.get();
        let summary = session.run().map_err(|e| DaemonError::Session(e.to_string()));
        let unsaved = parts.writer.metrics().unsaved.get().saturating_sub(unsaved_before);
        *current.lock() = None;
        let summary = summary?;
        {
            let mut inputs = shared.inputs.lock();
            inputs.sessions += 1;
            inputs.last = Some((summary.clone(), SystemTime::now()));
            inputs.state = DaemonState::Idle;
        }
        shared.write_files();
        if status_wanted.swap(false, Ordering::Relaxed) {
            log::info!("{}", shared.capture().summary_line());
        }
        // Whatever way the run ends now, what this session could not save
        // is still to run (a source that ends got the items back at its
        // finish, for a later run): exit 1. A stream's session gave them
        // back to run again in it; what its writer still holds, the final
        // drain counts.
        let last_unsaved = if parts.opened.stream { 0 } else { unsaved };
        let ending = |end: RunEnd| end.with_unsaved(last_unsaved).with_unsaved(unsaved_at_reloads);
        let this = RunEnd::of_session(&summary);
        if options.once || stop.is_stopping() {
            return Ok(ending(if stop.is_stopping() { RunEnd::Stopped } else { this }));
        }
        if this == RunEnd::ItemsFailed {
            end = RunEnd::ItemsFailed;
        }
        let Some(every) = parts.config.every else {
            if reload.swap(false, Ordering::Relaxed) {
                // SIGHUP ended the continuous session: reload, go on.
                unsaved_at_reloads += apply_reload(parts, options, shared)?;
                continue;
            }
            // A continuous session ended by itself: a lines file ran out,
            // or the source failed (then exit 1, not the sessions' end).
            return Ok(ending(if this == RunEnd::SourceFailed { this } else { end }));
        };
        // Validation bounds `every`; past the clock's end, wait for a stop.
        let Some(next) = started.checked_add(every) else {
            stop.wait_for_stop();
            return Ok(ending(RunEnd::Stopped));
        };
        if Instant::now() > next {
            log::warn!(
                "the session took {}ms, longer than session.every ({}ms): the next starts now",
                started.elapsed().as_millis(),
                every.as_millis()
            );
        } else if stop.sleep_until(next) {
            return Ok(ending(RunEnd::Stopped));
        }
        if reload.swap(false, Ordering::Relaxed) {
            unsaved_at_reloads += apply_reload(parts, options, shared)?;
        }
    }
}

/// SIGHUP: reads the config again; on success the parts are rebuilt, on
/// failure the old config stays and the error is logged. The open source
/// is kept when `source:` did not change (where it is, its resume mode, its
/// locks): opening it again could fail (a lines file replaced since) or
/// lose `--no-resume`; a changed one is closed first, then the new one
/// opens as at start. Returns how many outcomes the old writer's drain
/// could not write. An error only if the old parts, closed for the new
/// ones, cannot be built again either: there is then no writer to run
/// with, and the daemon must stop (exit 1) rather than hand outcomes to a
/// closed one.
fn apply_reload(parts: &mut Parts, options: &RunOptions, shared: &Shared) -> Result<u64, DaemonError> {
    let config = match Config::load(&options.config_path) {
        Ok(config) => config,
        Err(e) => {
            log::error!("SIGHUP: the new config is invalid, keeping the old one: {e}");
            return Ok(0);
        }
    };
    let stream_of = |config: &Config| !options.once && config.every.is_none();
    // The old writer drains before the new parts open the same files.
    let unsaved = parts.close().unwritten;
    let retired = shared.inputs.lock().retired.plus(parts.writer.metrics());
    let stream = stream_of(&config);
    let keep = Opened::of(&config, stream) == parts.opened;
    if !keep {
        // Released before the new source opens (a spool's lock, a table's
        // connection); nothing runs until the parts are rebuilt.
        parts.source = Arc::new(crate::source::VecSource::new(Vec::new()));
        parts.table_ack = None;
    }
    let live = |keep: bool| keep.then(|| (Arc::clone(&parts.source), parts.table_ack.clone()));
    match Parts::build(config, stream, options.resume, live(keep)) {
        Ok(mut new) => {
            keep_breaker((&parts.config, &parts.policy), (&new.config, &mut new.policy));
            *parts = new;
            if std::env::var_os("RUST_LOG").is_none() {
                log::set_max_level(level_filter(&parts.config.log));
            }
            log::info!("SIGHUP: config reloaded");
        }
        Err(new_failed) => {
            log::error!("SIGHUP: the new config could not be applied ({new_failed}); keeping the old one");
            let old = parts.config.clone();
            let stream = stream_of(&old);
            // The old source, as it was; one reopened resumes (the records
            // are tied to its file by now).
            let running = parts.policy.clone();
            *parts = Parts::build(old, stream, true, live(keep))
                .map(|old| Parts { policy: running, ..old })
                .map_err(|old_failed| {
                    DaemonError::Build(format!(
                        "SIGHUP: the new config could not be applied ({new_failed}) and rebuilding the old \
                     parts failed too ({old_failed}); stopping, as there is no writer to run with: \
                     fix the cause and start lote again"
                    ))
                })?;
        }
    }
    let mut inputs = shared.inputs.lock();
    let (sessions, last) = (inputs.sessions, inputs.last.take());
    *inputs = Inputs {
        sessions,
        last,
        retired,
        state: DaemonState::Idle,
        ..inputs_of(parts)
    };
    Ok(unsaved)
}

/// A reload keeps the running breaker — open or closed, its failure count
/// and its `opens` — when neither `handler.breaker` nor the handler (what
/// it calls) changed: a SIGHUP must not let a flood of calls through to a
/// downstream the breaker is holding off. Otherwise the new config's
/// breaker starts closed, as a changed handler may well be the fix; that is
/// logged when the old one was not closed, so the reset is never silent.
fn keep_breaker((old, running): (&Config, &CallPolicy), (new, fresh): (&Config, &mut CallPolicy)) {
    let same = (&old.handler, &old.policy.breaker) == (&new.handler, &new.policy.breaker);
    match (&running.breaker, &mut fresh.breaker) {
        (Some(running), Some(fresh)) if same => {
            *fresh = Arc::clone(running);
        }
        (Some(running), fresh) if running.state() != BreakerState::Closed => log::warn!(
            "SIGHUP: the handler or handler.breaker changed, so the breaker {} (it was {})",
            if fresh.is_some() {
                "starts again closed"
            } else {
                "is gone"
            },
            running.state().as_str()
        ),
        _ => {}
    }
}

/// The `log:` level as a filter (`info` for anything unknown; the config
/// validation has already refused unknown names).
pub fn level_filter(level: &str) -> log::LevelFilter {
    level.parse().unwrap_or(log::LevelFilter::Info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, failures: u32) -> (Config, CallPolicy) {
        let yaml = format!(
            "state_dir: /tmp/lote-test\nsource: {{kind: spool, path: in}}\n\
             handler: {{kind: http, url: \"{url}\", breaker: {{failures: {failures}}}}}\n"
        );
        let config = Config::from_yaml(&yaml, Path::new("test.yaml")).unwrap();
        let policy = config.policy.call_policy();
        (config, policy)
    }

    fn same_breaker(a: &CallPolicy, b: &CallPolicy) -> bool {
        Arc::ptr_eq(a.breaker.as_ref().unwrap(), b.breaker.as_ref().unwrap())
    }

    #[test]
    fn a_reload_keeps_the_breaker_only_for_the_same_handler_and_breaker_settings() {
        let (running, live) = config("http://127.0.0.1:9/a", 3);
        for (url, failures, kept) in [("a", 3, true), ("a", 4, false), ("b", 3, false)] {
            let (new, mut fresh) = config(&format!("http://127.0.0.1:9/{url}"), failures);
            keep_breaker((&running, &live), (&new, &mut fresh));
            assert_eq!(same_breaker(&live, &fresh), kept, "{url} {failures}");
        }
    }
}
