//! systemd notifications (`sd_notify(3)`) for a `Type=notify` service:
//! readiness, a one-line status, stop, timeout extensions while a drain
//! makes progress, and the watchdog — pinged only while the engine is
//! healthy, so that a wedged lote is restarted by systemd.
//!
//! [`Notifier`] sends; [`Watchdog`] decides whether a ping is deserved;
//! [`DrainWatch`] decides whether a drain earned more time. The last two are
//! plain values over counters, testable without a socket; the daemon's
//! `lote-notify` thread reads the counters and calls them.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) every
//! send is a no-op: the `sd-notify` crate returns `Ok(())` when the variable
//! is unset, and the daemon does not even start its notify thread.
//!
//! # The watchdog contract
//!
//! With `WatchdogSec=` set, systemd restarts lote when `WATCHDOG=1` has not
//! arrived for that long. lote checks every `min(WATCHDOG_USEC / 2, 1 s)`
//! and pings only if **both** of these hold:
//!
//! - **Workers**: since the last look the workers made progress (an
//!   outcome — done, failed, skipped, returned — or a retry scheduled, which
//!   ends an attempt), **or** no worker is inside a handler call, **or** the
//!   time since the workers were last seen progressing or idle is within
//!   [`Bounds::worker`]: the per-call `handler.timeout` plus
//!   [`WORKER_MARGIN`] (1 s), or [`NO_TIMEOUT_BOUND`] (10 min) when no
//!   timeout is configured.
//! - **Writer**: since the last look the write-behind thread made progress
//!   (outcomes persisted, a flush given up, a flush retried), **or** its
//!   depth is 0, **or** the time since it was last seen progressing or empty
//!   is within [`Bounds::writer`]: `flush_every` + the longest retry back-off
//!   + the SQLite sinks' `busy_timeout`s + [`WRITER_MARGIN`] (5 s).
//!
//! Why these bounds: a call past its `timeout` is already being cut short
//! (the exec handler has sent SIGTERM); one that is still running a second
//! after its deadline is not doing useful work, so the pings stop. The
//! exec `kill_grace` is deliberately *not* added: systemd only restarts
//! after `WatchdogSec` without a ping *on top of* the bound, so a child that
//! takes a little longer than the margin to die merely delays a ping.
//! Operators should set `WatchdogSec` ≥ `kill_grace`. Without a timeout a
//! call may legitimately be long (a large upload); ten minutes is far past
//! any sensible call and still restarts a truly stuck one in reasonable time.
//!
//! Known limit: the counters are shared by all workers, so one wedged worker
//! among others that progress is not seen (the pings go on; the call shows
//! in `busy` and, with a timeout, in the timeouts counter). Telling workers
//! apart would need per-worker state on the hot path; the watchdog keeps to
//! counters the engine already has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::config::{Config, SinkSpec};
use crate::metrics::Metrics;
use crate::writer::WriterMetrics;

/// Added to `handler.timeout` before a busy worker counts as wedged.
pub const WORKER_MARGIN: Duration = Duration::from_secs(1);
/// How long a busy worker may go without progress when no timeout is set.
pub const NO_TIMEOUT_BOUND: Duration = Duration::from_secs(600);
/// Added to the writer's own bound: one flush's write and fsync.
pub const WRITER_MARGIN: Duration = Duration::from_secs(5);
/// What `EXTEND_TIMEOUT_USEC` asks for each time a drain progressed; the
/// notify thread looks at least once a second, so this spans a few looks.
pub const DRAIN_EXTENSION: Duration = Duration::from_secs(5);
/// The longest pause between two looks of the notify thread.
pub const MAX_TICK: Duration = Duration::from_secs(1);

/// Sends notifications to systemd; a silent no-op when not under systemd.
/// Clones share the "stopping sent" and "warned" flags.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set when the notifier was made.
    enabled: bool,
    /// `STOPPING=1` has been sent (it is sent once, whoever asks first).
    /// Relaxed: a flag guarding a datagram, it orders nothing else.
    stopping_sent: Arc<AtomicBool>,
    /// A send failure has been logged (the next ones only at debug level).
    /// Relaxed: it only rate-limits a log line.
    warned: Arc<AtomicBool>,
}

impl Notifier {
    /// Enabled if `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            stopping_sent: Arc::new(AtomicBool::new(false)),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A notifier that never sends (tests, library use).
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            ..Notifier::from_env()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this pid),
    /// if any; `None` when notifications are off.
    pub fn watchdog_period(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled().filter(|d| self.enabled && !d.is_zero())
    }

    /// `READY=1` with a first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    /// `STATUS=`: what `systemctl status` shows.
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(&one_line(line))]);
    }

    /// `STOPPING=1`, once per process however often asked.
    pub fn stopping(&self) {
        if !self.stopping_sent.swap(true, Ordering::Relaxed) {
            self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }

    /// `EXTEND_TIMEOUT_USEC`: the current (start, stop) timeout is extended
    /// to at least `by` from now.
    pub fn extend(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// `WATCHDOG=1`. Call only when [`Watchdog::check`] says healthy.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            // systemd gone or the socket unreachable: lote carries on; one
            // warning says why systemd may not see it.
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!("notifying systemd failed: {e} (further failures are logged at debug level)");
            } else {
                log::debug!("notifying systemd failed: {e}");
            }
        }
    }
}

/// `STATUS=` is one line; systemd shows the rest as garbage.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// How long each part may go without progress before it counts as wedged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Busy workers that made no progress for longer are wedged.
    pub worker: Duration,
    /// A non-empty writer that made no progress for longer is wedged.
    pub writer: Duration,
}

impl Bounds {
    /// The bounds the module doc derives from a config.
    pub fn of(config: &Config) -> Bounds {
        // Saturating: configured durations flow in (validation bounds them).
        let worker = config
            .policy
            .timeout
            .map_or(NO_TIMEOUT_BOUND, |t| t.saturating_add(WORKER_MARGIN));
        let w = &config.writer;
        let longest_backoff = (0..w.max_retries.min(16))
            .map(|retry| w.retry_backoff.saturating_mul(1 << retry))
            .max()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(30));
        let busy = |spec: Option<&SinkSpec>| spec.map_or(Duration::ZERO, SinkSpec::busy_timeout);
        let writer = w
            .flush_every
            .saturating_add(longest_backoff)
            .saturating_add(busy(Some(&config.sink)))
            .saturating_add(busy(config.dead_letter.as_ref()))
            .saturating_add(WRITER_MARGIN);
        Bounds { worker, writer }
    }
}

/// The counters the watchdog compares between looks. Plain numbers, so the
/// rule is tested without threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Outcomes (done + failed + skipped + returned) plus retries scheduled.
    pub worker_events: u64,
    /// Workers inside a handler call now.
    pub busy_workers: u64,
    /// Outcomes persisted or given up, plus flush retries.
    pub writer_events: u64,
    /// Outcomes handed to the writer and not yet flushed.
    pub writer_depth: u64,
}

impl Progress {
    /// Reads the counters now (all `Relaxed` statistics: a look may be a
    /// little stale, which only shifts a decision by one tick).
    pub fn read(metrics: &Metrics, writer: Option<&WriterMetrics>) -> Progress {
        let worker_events = metrics.done.get()
            + metrics.failed.get()
            + metrics.skipped.get()
            + metrics.returned.get()
            + metrics.retries.get();
        let (writer_events, writer_depth) = writer.map_or((0, 0), |w| {
            (w.persisted.get() + w.failed.get() + w.retries.get(), w.depth.get())
        });
        Progress {
            worker_events,
            busy_workers: metrics.busy_workers.get(),
            writer_events,
            writer_depth,
        }
    }
}

/// Which part is wedged, and for how long it has been.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wedged {
    Workers { busy: u64, for_: Duration },
    Writer { depth: u64, for_: Duration },
}

impl std::fmt::Display for Wedged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wedged::Workers { busy, for_ } => {
                write!(f, "{busy} busy worker(s) made no progress for {}ms", for_.as_millis())
            }
            Wedged::Writer { depth, for_ } => write!(
                f,
                "the writer (depth {depth}) made no progress for {}ms",
                for_.as_millis()
            ),
        }
    }
}

/// The health checker behind `WATCHDOG=1` (the rule is in the module doc).
/// Lives in the notify thread; the hot paths only bump their counters.
#[derive(Debug)]
pub struct Watchdog {
    bounds: Bounds,
    /// The counters at the last look.
    last: Progress,
    /// When the workers were last seen progressing or idle.
    workers_fine_at: Instant,
    /// When the writer was last seen progressing or empty.
    writer_fine_at: Instant,
}

impl Watchdog {
    /// A checker that starts from `first`, everything fine at `now`.
    pub fn new(bounds: Bounds, first: Progress, now: Instant) -> Watchdog {
        Watchdog {
            bounds,
            last: first,
            workers_fine_at: now,
            writer_fine_at: now,
        }
    }

    /// New bounds after a reload; the progress history stays.
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
    }

    /// One look: `Ok(())` if a ping is deserved. A counter that changed in
    /// either direction counts as progress (a reload starts a new writer,
    /// whose counters begin at 0).
    pub fn check(&mut self, now: Progress, at: Instant) -> Result<(), Wedged> {
        if now.worker_events != self.last.worker_events || now.busy_workers == 0 {
            self.workers_fine_at = at;
        }
        if now.writer_events != self.last.writer_events || now.writer_depth == 0 {
            self.writer_fine_at = at;
        }
        self.last = now;
        let workers_for = at.saturating_duration_since(self.workers_fine_at);
        if workers_for > self.bounds.worker {
            return Err(Wedged::Workers {
                busy: now.busy_workers,
                for_: workers_for,
            });
        }
        let writer_for = at.saturating_duration_since(self.writer_fine_at);
        if writer_for > self.bounds.writer {
            return Err(Wedged::Writer {
                depth: now.writer_depth,
                for_: writer_for,
            });
        }
        Ok(())
    }
}

/// While the writer drains at shutdown: more time each time its depth went
/// down since the last look, none when it stalls (systemd's own stop timeout
/// then decides).
#[derive(Debug, Default)]
pub struct DrainWatch {
    /// The depth at the last look; `None` before the first.
    last: Option<u64>,
}

impl DrainWatch {
    /// Looks at `depth`; `Some(extension)` if the drain progressed.
    pub fn look(&mut self, depth: u64) -> Option<Duration> {
        let progressed = self.last.is_some_and(|last| depth < last);
        self.last = Some(depth);
        progressed.then_some(DRAIN_EXTENSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        worker: Duration::from_millis(1200),
        writer: Duration::from_secs(7),
    };

    fn progress(worker_events: u64, busy_workers: u64, writer_events: u64, writer_depth: u64) -> Progress {
        Progress {
            worker_events,
            busy_workers,
            writer_events,
            writer_depth,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_workers_and_an_empty_writer_are_healthy_forever() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        for s in 1..100 {
            assert_eq!(dog.check(Progress::default(), t0 + Duration::from_secs(s)), Ok(()));
        }
    }

    #[test]
    fn busy_workers_that_progress_are_healthy() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        for s in 1..100 {
            assert_eq!(dog.check(progress(s, 4, s, 3), t0 + Duration::from_secs(s)), Ok(()));
        }
    }

    #[test]
    fn a_long_call_within_its_timeout_is_not_a_wedge() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        assert_eq!(dog.check(progress(0, 1, 0, 0), t0 + ms(200)), Ok(()));
        assert_eq!(dog.check(progress(0, 1, 0, 0), t0 + ms(1200)), Ok(()));
    }

    #[test]
    fn a_worker_busy_past_its_bound_stops_the_pings_until_it_moves() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        assert_eq!(dog.check(progress(0, 1, 0, 0), t0 + ms(600)), Ok(()));
        assert_eq!(
            dog.check(progress(0, 1, 0, 0), t0 + ms(1300)),
            Err(Wedged::Workers {
                busy: 1,
                for_: ms(1300)
            })
        );
        assert!(dog.check(progress(0, 1, 0, 0), t0 + ms(5000)).is_err());
        // The call ended (timed out, item returned): pings resume.
        assert_eq!(dog.check(progress(1, 0, 0, 1), t0 + ms(5200)), Ok(()));
    }

    #[test]
    fn a_retry_counts_as_progress() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        // Attempts that each take most of the timeout, the worker never
        // seen idle between them: the retries counter keeps it healthy.
        for i in 1..10 {
            assert_eq!(dog.check(progress(i, 1, 0, 0), t0 + ms(1000 * i)), Ok(()));
        }
    }

    #[test]
    fn a_writer_with_depth_and_no_progress_past_its_bound_is_wedged() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, Progress::default(), t0);
        assert_eq!(dog.check(progress(5, 0, 0, 5), t0 + ms(6000)), Ok(()));
        assert_eq!(
            dog.check(progress(5, 0, 0, 5), t0 + ms(7500)),
            Err(Wedged::Writer {
                depth: 5,
                for_: ms(7500)
            })
        );
        assert_eq!(dog.check(progress(5, 0, 5, 0), t0 + ms(7700)), Ok(()));
    }

    #[test]
    fn a_reset_writer_counter_is_progress() {
        let t0 = Instant::now();
        let mut dog = Watchdog::new(BOUNDS, progress(0, 0, 100, 4), t0);
        assert_eq!(dog.check(progress(0, 0, 0, 4), t0 + ms(6000)), Ok(()));
    }

    #[test]
    fn bounds_follow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {}\nsource: {{kind: spool, path: in}}\nhandler: {{kind: exec, command: [true]}}\n",
            dir.path().display()
        );
        let mut config = Config::from_yaml(&yaml, std::path::Path::new("test.yaml")).unwrap();
        config.policy.timeout = Some(ms(200));
        assert_eq!(Bounds::of(&config).worker, ms(1200));
        config.policy.timeout = None;
        assert_eq!(Bounds::of(&config).worker, NO_TIMEOUT_BOUND);
        assert!(Bounds::of(&config).writer >= config.writer.flush_every + WRITER_MARGIN);
    }

    #[test]
    fn a_drain_earns_time_only_while_its_depth_goes_down() {
        let mut watch = DrainWatch::default();
        assert_eq!(watch.look(100), None);
        assert_eq!(watch.look(60), Some(DRAIN_EXTENSION));
        assert_eq!(watch.look(60), None);
        assert_eq!(watch.look(0), Some(DRAIN_EXTENSION));
        assert_eq!(watch.look(0), None);
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_period(), None);
        notifier.ready("x");
        notifier.stopping();
        notifier.watchdog();
    }
}
