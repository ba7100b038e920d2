//! What the daemon's threads share: [`Shared`] (the inputs of the status
//! snapshot, which the session loop changes between sessions and the status
//! and notify threads read), the state transitions the loop makes
//! ([`Shared::set_state`], and `stopping` once a stop is asked for, see
//! [`Shared::state`]), the counts of writers closed by reloads
//! ([`WriterCounters`], the writer's own snapshot type), and the [`Bell`] the loop rings when something the
//! threads report changed, so that they need not tick to notice it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::Metrics;
use crate::notify::Bounds;
use crate::session::{SessionSummary, StopHandle};
use crate::status::prometheus;
use crate::status::{DaemonState, NodeStatus, Status, StatusSources};
use crate::sync::{Condvar, Mutex};
use crate::writer::{Writer, WriterCounters, WriterMetrics};

use super::parts::Parts;

/// What the status thread reports, shared with the session loop.
pub(super) struct Shared {
    /// Protects what changes between sessions.
    pub(super) inputs: Mutex<Inputs>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) started_at: SystemTime,
    pub(super) config_path: PathBuf,
    /// The daemon's stop (not a session's): once a stop is asked for, the
    /// reported state is `stopping` whatever the session loop last set
    /// (see [`Shared::state`]). Read here rather than set by the signal
    /// thread, so that the loop cannot overwrite it with `running`.
    pub(super) stop: StopHandle,
    /// Rung at each change of `inputs` and at a stop.
    pub(super) bell: Bell,
}

pub(super) struct Inputs {
    /// What the session loop set last; read it through [`Shared::state`].
    pub(super) state: DaemonState,
    pub(super) sessions: u64,
    pub(super) last: Option<(SessionSummary, SystemTime)>,
    pub(super) writer: Option<Arc<Writer>>,
    /// The counts of the writers earlier reloads closed, added to the
    /// running one's so that the reported counters never go back to 0.
    pub(super) retired: WriterCounters,
    pub(super) breaker: Option<Arc<crate::policy::Breaker>>,
    pub(super) intake: Option<Arc<crate::source::Intake>>,
    /// A redis_stream source's counters.
    pub(super) redis: Option<Arc<crate::source::RedisStats>>,
    /// The handler tree's per-node counters.
    pub(super) nodes: crate::handler::node::Nodes,
    pub(super) threads: usize,
    pub(super) status_file: PathBuf,
    pub(super) textfile: Option<PathBuf>,
    pub(super) every: Duration,
    pub(super) log_every: Duration,
    /// The watchdog's bounds for the running config (`crate::notify`).
    pub(super) bounds: Bounds,
}

impl Shared {
    /// The state to report: the session loop's, or `stopping` once a stop
    /// was asked for and the loop has not yet moved on to the drain.
    pub(super) fn state(&self, inputs: &Inputs) -> DaemonState {
        if self.stop.is_stopping() {
            inputs.state.once_stop_asked()
        } else {
            inputs.state
        }
    }

    pub(super) fn capture(&self) -> Status {
        let inputs = self.inputs.lock();
        let writer_metrics = inputs.writer.as_ref().map(|w| Arc::clone(w.metrics()));
        let mut status = Status::capture(
            StatusSources {
                metrics: &self.metrics,
                writer: writer_metrics.as_deref(),
                breaker: inputs.breaker.as_deref(),
                threads: inputs.threads,
                inbox: inputs.intake.as_deref(),
                stopping: self.stop.is_stopping(),
            },
            self.state(&inputs).as_str(),
            &self.config_path.display().to_string(),
            self.started_at,
            inputs.sessions,
            inputs.last.as_ref().map(|(summary, at)| (summary, *at)),
        );
        if let Some(writer) = status.writer.as_mut() {
            writer.counters = writer.counters.plus(&inputs.retired);
        }
        status.redis = inputs.redis.as_ref().map(|stats| stats.snapshot());
        status.nodes = NodeStatus::all(&inputs.nodes);
        status
    }

    /// Writes the status file and the metrics textfile.
    pub(super) fn write_files(&self) {
        let status = self.capture();
        let (status_file, textfile) = {
            let inputs = self.inputs.lock();
            (inputs.status_file.clone(), inputs.textfile.clone())
        };
        if let Err(e) = status.write(&status_file) {
            log::warn!("writing the status file {}: {e}", status_file.display());
        }
        if let Some(textfile) = textfile {
            let text = self.metrics_text(&status);
            if let Err(e) = crate::fsutil::replace_file(&textfile, text.as_bytes()) {
                log::warn!("writing the metrics textfile {}: {e}", textfile.display());
            }
        }
    }

    /// The Prometheus text of `status` and the live histograms: the
    /// textfile's and `GET /metrics`'s.
    pub(super) fn metrics_text(&self, status: &Status) -> String {
        let mut text = prometheus::render(status, &self.metrics);
        if let Some(intake) = self.inputs.lock().intake.clone() {
            text.push_str(&prometheus::inbox_histograms(intake.stats()));
        }
        text
    }

    pub(super) fn set_state(&self, state: DaemonState) {
        self.inputs.lock().state = state;
        self.bell.ring();
    }

    /// A session ended with `summary`: counted, kept as the last, `idle`.
    pub(super) fn session_ended(&self, summary: &SessionSummary) {
        {
            let mut inputs = self.inputs.lock();
            inputs.sessions += 1;
            inputs.last = Some((summary.clone(), SystemTime::now()));
            inputs.state = DaemonState::Idle;
        }
        self.bell.ring();
    }

    /// A reload closed the writer of `old` and built `new`: the inputs are
    /// `new`'s, the sessions and the last summary stay, and the closed
    /// writer's counts are kept (so the reported counters never go back).
    pub(super) fn reloaded(&self, old_writer: &WriterMetrics, new: &Parts) {
        {
            let mut inputs = self.inputs.lock();
            let retired = inputs.retired.plus(&old_writer.snapshot());
            let (sessions, last) = (inputs.sessions, inputs.last.take());
            *inputs = Inputs {
                sessions,
                last,
                retired,
                state: DaemonState::Idle,
                ..inputs_of(new)
            };
        }
        self.bell.ring();
    }
}

pub(super) fn inputs_of(parts: &Parts) -> Inputs {
    let config = &parts.config;
    Inputs {
        state: DaemonState::Starting,
        sessions: 0,
        last: None,
        writer: Some(Arc::clone(&parts.writer)),
        retired: WriterCounters::default(),
        breaker: parts.policy.breaker.clone(),
        intake: parts.intake.clone(),
        redis: parts.source.redis_stats(),
        nodes: parts.nodes.clone(),
        threads: config.session.threads,
        status_file: config.state_dir.join("status.json"),
        textfile: config.metrics.textfile.clone(),
        every: config.metrics.every,
        log_every: config.metrics.log_every,
        bounds: Bounds::of(config),
    }
}

/// A counter the session loop rings when what the status and notify threads
/// report changes, and they wait on with a deadline: they wake for a change
/// or for their own period, never to poll.
pub(super) struct Bell {
    rung: Mutex<u64>,
    condvar: Condvar,
}

impl Bell {
    pub(super) fn new() -> Bell {
        Bell {
            rung: Mutex::new(0),
            condvar: Condvar::new(),
        }
    }

    pub(super) fn ring(&self) {
        *self.rung.lock() += 1;
        self.condvar.notify_all();
    }

    /// How many times it was rung so far.
    pub(super) fn rung(&self) -> u64 {
        *self.rung.lock()
    }

    /// Waits until it was rung more than `seen` times, or `deadline`;
    /// returns how many times it was rung by then.
    pub(super) fn wait(&self, seen: u64, deadline: Instant) -> u64 {
        let mut rung = self.rung.lock();
        while *rung == seen {
            let (guard, timed_out) = self.condvar.wait_until(rung, deadline);
            rung = guard;
            if timed_out {
                break;
            }
        }
        *rung
    }
}
