//! The daemon: `lote run`. Builds the parts a config names (source, handler,
//! sinks, the write-behind thread), runs sessions — one (`--once`), one per
//! `session.every` tick, or one continuous session polling a stream source —
//! and turns signals into stops, reloads and status lines.
//!
//! # Threads (besides a session's own, see `session`)
//!
//! | thread | started by | stopped by | wakes |
//! |---|---|---|---|
//! | signals (`lote-signals`, `signals.rs`) | [`run`] | [`run`] closing the signal iterator on the way out | at a signal only |
//! | status (`lote-status`, `threads.rs`) | `Daemon::run` | the `over` handle, stopped by `Daemon::run` after the drain | every `metrics.every` / `metrics.log_every`, and when the bell rings (a state change, a session's end, a reload, the first stop) |
//! | notify (`lote-notify`, `threads.rs`), only under systemd (`NOTIFY_SOCKET` set) | `Daemon::run` | the `over` handle, like status | every `WATCHDOG_USEC / 2` if systemd asks for a watchdog; else once a second while something moves, backing off to `metrics.every` while nothing does; and when the bell rings |
//! | writer (`lote-writer`) | `Parts::build` via `Writer::start` | `Parts::close` (a reload, or after the last session: the drain) | its own batches |
//!
//! The files: `parts.rs` builds and closes the parts (the per-kind wiring,
//! and what a reload keeps), `state.rs` holds what the threads share and the
//! state transitions, `signals.rs` and `threads.rs` the thread bodies; this
//! file runs the sessions (`Daemon`) and the reloads.
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
//! - `STATUS=` from the notify thread, at most once a second (and no more
//!   than once per `metrics.every` while nothing changes): state, queue,
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

mod ingest;
mod parts;
mod signals;
mod state;
mod threads;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime};

use crate::config::{Config, ConfigError};
use crate::ingest::Listener;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::session::{EndReason, Session, SessionSummary, StopHandle, StopReason};
use crate::status::DaemonState;
use crate::sync::Mutex;

pub use parts::{dead_letters, requeue_dead_letters};

use parts::{keep_breaker, Opened, Parts};
use signals::{SignalFlags, SignalThread};
use state::{inputs_of, Bell, Shared};

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
            _ if summary.counts.failed > 0 => RunEnd::ItemsFailed,
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

/// `lote run` with a config already loaded (and logging set up from it).
pub fn run(options: RunOptions, config: Config) -> Result<RunEnd, DaemonError> {
    let stop = StopHandle::new();
    let notifier = Notifier::from_env();
    let flags = Arc::new(SignalFlags::default());
    let signal_thread = SignalThread::start(stop.clone(), Arc::clone(&flags), notifier.clone())?;
    let result = (|| {
        if !options.resume && !config.source.resumes_from_sink() {
            log::warn!(
                "--no-resume applies to a lines source only; spool and sqlite sources remember what they finished"
            );
        }
        let stream = !options.once && config.every.is_none();
        let parts = Parts::build(config, stream, options.resume, None)?;
        let shared = Arc::new(Shared {
            inputs: Mutex::new(inputs_of(&parts)),
            metrics: Arc::new(Metrics::new()),
            started_at: SystemTime::now(),
            config_path: options.config_path.clone(),
            stop: stop.clone(),
            bell: Bell::new(),
        });
        let listener = match parts.config.http.as_ref().map(|http| ingest::start(http, &shared)) {
            None => None,
            Some(Ok(listener)) => Some(Arc::new(listener)),
            Some(Err(e)) => {
                parts.close();
                return Err(e);
            }
        };
        notifier.ready("started");
        let mut daemon = Daemon {
            parts,
            options,
            stop,
            flags,
            shared,
            listener,
        };
        daemon.run(&notifier)
    })();
    signal_thread.close();
    result
}

/// A running daemon: its parts and what its session loop needs besides.
struct Daemon {
    parts: Parts,
    options: RunOptions,
    /// The daemon's stop (the signals'); each session runs on a child.
    stop: StopHandle,
    flags: Arc<SignalFlags>,
    shared: Arc<Shared>,
    /// The HTTP listener (`http:`), if any; shared with the stop's drain.
    listener: Option<Arc<Listener>>,
}

impl Daemon {
    /// Starts the status (and notify) thread, runs the sessions, drains the
    /// writer, and ends the threads.
    fn run(&mut self, notifier: &Notifier) -> Result<RunEnd, DaemonError> {
        let shared = Arc::clone(&self.shared);
        // Not a child of `stop`: the status and notify threads report the
        // drain that follows a stop, so they end only when `run` says.
        let over = StopHandle::new();
        // The first stop rings the bell: the files say `stopping` at once.
        let _ring_at_stop = self.stop.on_change({
            let shared = Arc::clone(&shared);
            move |_| shared.bell.ring()
        });
        // The first stop drains the listener: new requests get 503.
        let drain_at_stop = self.listener.as_ref().map(|listener| {
            let listener = Arc::clone(listener);
            self.stop.on_change(move |_| listener.drain())
        });
        let end_threads = || {
            over.stop(StopReason::Requested);
            shared.bell.ring();
        };
        thread::scope(|scope| {
            let status = thread::Builder::new()
                .name("lote-status".into())
                .spawn_scoped(scope, || threads::status_thread(&shared, &over))
                .map_err(|e| DaemonError::Build(format!("starting the status thread: {e}")))?;
            let notify = if notifier.is_enabled() {
                let spawned = thread::Builder::new()
                    .name("lote-notify".into())
                    .spawn_scoped(scope, || threads::notify_thread(&shared, &over, notifier));
                match spawned {
                    Ok(spawned) => Some(spawned),
                    Err(e) => {
                        // The status thread is running: end it, or the scope
                        // would wait for it forever.
                        end_threads();
                        self.parts.close();
                        return Err(DaemonError::Build(format!("starting the notify thread: {e}")));
                    }
                }
            } else {
                None
            };
            let result = self.run_sessions();
            // Every 202 answered is on disk; then no more pushes come.
            drop(drain_at_stop);
            if let Some(listener) = self.listener.take() {
                // The only other holder was the drain, dropped above.
                if let Ok(listener) = Arc::try_unwrap(listener) {
                    listener.stop();
                }
            }
            if let Some(intake) = &self.parts.intake {
                intake.close();
            }
            notifier.stopping();
            shared.set_state(DaemonState::Draining);
            let drained = self.parts.close();
            let result = result.map(|end| end.with_unsaved(drained.unwritten));
            if let Ok(RunEnd::OutcomesUnsaved(n)) = result {
                log::error!("{n} outcome(s) were not saved (see the errors above); their items will run again");
            }
            shared.set_state(DaemonState::Stopped);
            end_threads();
            let _ = status.join();
            if let Some(notify) = notify {
                let _ = notify.join();
            }
            shared.write_files();
            result
        })
    }

    /// Whether the running config makes a continuous session.
    fn continuous(&self) -> bool {
        !self.options.once && self.parts.config.every.is_none()
    }

    /// A session's own stop handle, a child of the daemon's, registered
    /// for SIGHUP when the session is continuous.
    fn start_session(&self) -> StopHandle {
        let session_stop = self.stop.child();
        let continuous = self.continuous();
        let mut current = self.flags.current.lock();
        *current = continuous.then(|| session_stop.clone());
        // A SIGHUP that came while no session was registered (between
        // sessions, during a reload) found nothing to end: end this one
        // now, or that reload would wait for the next SIGHUP. The signal
        // thread sets the flag before it takes this lock.
        if continuous && self.flags.reload.load(Ordering::Relaxed) {
            session_stop.stop(StopReason::Requested);
        }
        session_stop
    }

    /// One session with the running parts; the summary and how many
    /// outcomes its writer could not save meanwhile.
    fn run_session(&self) -> Result<(SessionSummary, u64), DaemonError> {
        let parts = &self.parts;
        let session = Session::new(
            parts.config.session.clone(),
            Arc::clone(&parts.source),
            Arc::clone(&parts.handler),
            Arc::clone(&parts.writer) as Arc<dyn crate::commit::Committer>,
        )
        .policy(parts.policy.clone())
        .stop_handle(self.start_session())
        .metrics(Arc::clone(&self.shared.metrics));
        let unsaved_before = parts.writer.metrics().unsaved.get();
        let summary = session.run().map_err(|e| DaemonError::Session(e.to_string()));
        let unsaved = parts.writer.metrics().unsaved.get().saturating_sub(unsaved_before);
        *self.flags.current.lock() = None;
        Ok((summary?, unsaved))
    }

    /// Runs sessions until `--once` is done, a stop, or (stream) forever.
    fn run_sessions(&mut self) -> Result<RunEnd, DaemonError> {
        let mut end = RunEnd::Complete;
        // Outcomes the drains at reloads could not write: an I/O failure the
        // exit code tells of, like the final drain's.
        let mut unsaved_at_reloads = 0u64;
        let stop = self.stop.clone();
        loop {
            let started = Instant::now();
            self.shared.set_state(DaemonState::Running);
            let (summary, unsaved) = self.run_session()?;
            self.shared.session_ended(&summary);
            self.shared.write_files();
            if self.flags.status_wanted.swap(false, Ordering::Relaxed) {
                log::info!("{}", self.shared.capture().summary_line());
            }
            // Whatever way the run ends now, what this session could not save
            // is still to run (a source that ends got the items back at its
            // finish, for a later run): exit 1. A stream's session gave them
            // back to run again in it; what its writer still holds, the final
            // drain counts.
            let last_unsaved = if self.parts.opened.stream { 0 } else { unsaved };
            let ending = |end: RunEnd| end.with_unsaved(last_unsaved).with_unsaved(unsaved_at_reloads);
            let this = RunEnd::of_session(&summary);
            if self.options.once || stop.is_stopping() {
                return Ok(ending(if stop.is_stopping() { RunEnd::Stopped } else { this }));
            }
            if this == RunEnd::ItemsFailed {
                end = RunEnd::ItemsFailed;
            }
            let Some(every) = self.parts.config.every else {
                if self.flags.reload.swap(false, Ordering::Relaxed) {
                    // SIGHUP ended the continuous session: reload, go on.
                    unsaved_at_reloads += self.reload()?;
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
            if self.flags.reload.swap(false, Ordering::Relaxed) {
                unsaved_at_reloads += self.reload()?;
            }
        }
    }

    /// SIGHUP: reads the config again; on success the parts are rebuilt, on
    /// failure the old config stays and the error is logged. Returns how
    /// many outcomes the old writer's drain could not write; an error only
    /// when the old parts cannot be built again either (see [`reload`]).
    fn reload(&mut self) -> Result<u64, DaemonError> {
        let config = match Config::load(&self.options.config_path) {
            Ok(config) => config,
            Err(e) => {
                log::error!("SIGHUP: the new config is invalid, keeping the old one: {e}");
                return Ok(0);
            }
        };
        if config.http != self.parts.config.http {
            log::warn!("SIGHUP: `http:` changed; the listener keeps its old settings until lote restarts");
        }
        let old_writer = Arc::clone(&self.parts.writer);
        let unsaved = reload(&mut self.parts, config, &self.options)?;
        self.shared.reloaded(old_writer.metrics(), &self.parts);
        Ok(unsaved)
    }
}

/// Applies a valid new `config` to `parts`. The open source is kept when
/// `source:` did not change (where it is, its resume mode, its locks):
/// opening it again could fail (a lines file replaced since) or lose
/// `--no-resume`; a changed one is closed first, then the new one opens as
/// at start. The old writer drains before the new parts open the same
/// files; returns how many outcomes it could not write. If the new parts
/// cannot be built, the old ones are built again; an error only if that
/// fails too: there is then no writer to run with, and the daemon must stop
/// (exit 1) rather than hand outcomes to a closed one.
fn reload(parts: &mut Parts, config: Config, options: &RunOptions) -> Result<u64, DaemonError> {
    let stream_of = |config: &Config| !options.once && config.every.is_none();
    let unsaved = parts.close().unwritten;
    let stream = stream_of(&config);
    let keep = Opened::of(&config, stream) == parts.opened;
    if !keep {
        // Released before the new source opens (a spool's lock, a table's
        // connection); nothing runs until the parts are rebuilt.
        parts.source = Arc::new(crate::source::VecSource::new(Vec::new()));
        parts.table_ack = None;
        parts.intake = None;
    }
    let live = |keep: bool| keep.then(|| (Arc::clone(&parts.source), parts.table_ack.clone(), parts.intake.clone()));
    match Parts::build(config, stream, options.resume, live(keep)) {
        Ok(mut new) => {
            keep_breaker((&parts.config, &parts.policy), (&new.config, &mut new.policy));
            *parts = new;
            if std::env::var_os("RUST_LOG").is_none() {
                log::set_max_level(crate::config::level_filter(&parts.config.log));
            }
            log::info!("SIGHUP: config reloaded");
        }
        Err(new_failed) => {
            log::error!("SIGHUP: the new config could not be applied ({new_failed}); keeping the old one");
            let old = parts.config.clone();
            let stream = stream_of(&old);
            // The old source, as it was; one reopened resumes (the records
            // are tied to its file by now).
            // It keeps the running breaker (the handler did not change).
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
    Ok(unsaved)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    /// A config in `dir`: a spool source at `spool`, the noop handler, a
    /// SQLite sink.
    fn write_config(dir: &Path, spool: &str) -> PathBuf {
        let path = dir.join("config.yaml");
        let yaml = format!(
            "state_dir: {}\nsource: {{kind: spool, path: {spool}, stable_for: 0s}}\nhandler: {{kind: noop}}\n\
             sink: {{kind: sqlite, path: outcomes.db}}\n",
            dir.join("state").display()
        );
        fs::write(&path, yaml).unwrap();
        path
    }

    /// A daemon for `config_path` running `--once` sessions (no signals).
    fn daemon(config_path: &Path) -> Daemon {
        let config = Config::load(config_path).unwrap();
        let options = RunOptions {
            config_path: config_path.to_path_buf(),
            once: true,
            resume: true,
        };
        let parts = Parts::build(config, false, true, None).unwrap();
        let stop = StopHandle::new();
        let shared = Arc::new(Shared {
            inputs: Mutex::new(inputs_of(&parts)),
            metrics: Arc::new(Metrics::new()),
            started_at: SystemTime::now(),
            config_path: config_path.to_path_buf(),
            stop: stop.clone(),
            bell: Bell::new(),
        });
        Daemon {
            parts,
            options,
            stop,
            flags: Arc::new(SignalFlags::default()),
            shared,
            listener: None,
        }
    }

    fn state(daemon: &Daemon) -> DaemonState {
        let inputs = daemon.shared.inputs.lock();
        daemon.shared.state(&inputs)
    }

    #[test]
    fn the_states_follow_the_sessions_and_a_stop_reads_stopping_until_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon(&write_config(dir.path(), "in"));
        assert_eq!(state(&daemon), DaemonState::Starting);
        let rung = daemon.shared.bell.rung();
        daemon.shared.set_state(DaemonState::Running);
        assert_eq!(state(&daemon), DaemonState::Running);
        assert!(daemon.shared.bell.rung() > rung, "a state change rings the bell");
        let (summary, _) = daemon.run_session().unwrap();
        daemon.shared.session_ended(&summary);
        assert_eq!(state(&daemon), DaemonState::Idle);
        assert_eq!(daemon.shared.capture().sessions, 1);

        daemon.stop.trigger(StopReason::Requested);
        assert_eq!(state(&daemon), DaemonState::Stopping);
        daemon.shared.set_state(DaemonState::Running);
        assert_eq!(
            state(&daemon),
            DaemonState::Stopping,
            "the loop cannot overwrite stopping"
        );
        daemon.shared.set_state(DaemonState::Draining);
        assert_eq!(state(&daemon), DaemonState::Draining);
        daemon.shared.set_state(DaemonState::Stopped);
        assert_eq!(state(&daemon), DaemonState::Stopped);
        daemon.parts.close();
    }

    #[test]
    fn a_reload_keeps_an_unchanged_source_open_and_the_writer_counts() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config(dir.path(), "in");
        let mut daemon = daemon(&config_path);
        fs::write(dir.path().join("state/in/a"), "one").unwrap();
        fs::write(dir.path().join("state/in/b"), "two").unwrap();
        let (summary, unsaved) = daemon.run_session().unwrap();
        assert_eq!((summary.counts.done, unsaved), (2, 0));
        daemon.shared.session_ended(&summary);

        // The same config: the same source object, the counts carried over.
        let source = Arc::clone(&daemon.parts.source);
        let writer = Arc::clone(&daemon.parts.writer);
        assert_eq!(daemon.reload().unwrap(), 0);
        assert!(
            Arc::ptr_eq(&source, &daemon.parts.source),
            "an unchanged source stays open"
        );
        assert!(!Arc::ptr_eq(&writer, &daemon.parts.writer), "the writer is new");
        let status = daemon.shared.capture();
        assert_eq!(status.sessions, 1);
        assert_eq!(status.writer.as_ref().unwrap().counters.persisted, 2, "{status:?}");
        assert_eq!(state(&daemon), DaemonState::Idle);

        // A second reload adds the second writer's counts, not the first's
        // again.
        fs::write(dir.path().join("state/in/c"), "three").unwrap();
        let (summary, _) = daemon.run_session().unwrap();
        assert_eq!(summary.counts.done, 1);
        daemon.reload().unwrap();
        assert_eq!(daemon.shared.capture().writer.unwrap().counters.persisted, 3);

        // A changed source: opened anew.
        fs::create_dir_all(dir.path().join("state/other")).unwrap();
        write_config(dir.path(), "other");
        let source = Arc::clone(&daemon.parts.source);
        daemon.reload().unwrap();
        assert!(
            !Arc::ptr_eq(&source, &daemon.parts.source),
            "a changed source is opened again"
        );
        assert_eq!(daemon.parts.config.source, Config::load(&config_path).unwrap().source);
        daemon.parts.close();
    }

    #[test]
    fn an_invalid_config_at_a_reload_keeps_the_running_parts() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config(dir.path(), "in");
        let mut daemon = daemon(&config_path);
        let writer = Arc::clone(&daemon.parts.writer);
        fs::write(&config_path, "no_such_key: 1\n").unwrap();
        assert_eq!(daemon.reload().unwrap(), 0);
        assert!(Arc::ptr_eq(&writer, &daemon.parts.writer));
        daemon.parts.close();
    }
}
