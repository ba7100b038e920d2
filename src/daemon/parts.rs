//! The parts a config names — source, handler, sinks, the write-behind
//! thread — and how each is opened (sources and sinks through their
//! registries: `SourceSpec::open_for_run`, `HandlerSpec::start`,
//! `SinkSpec::open`). Also what a reload decides about them: whether the open
//! source is kept ([`Opened`]) and whether the breaker is
//! ([`keep_breaker`]); and the dead-letter commands, which open the sinks
//! the same way.

use std::sync::Arc;

use crate::config::{Config, SinkSpec, SourceSpec};
use crate::dead_letter::Requeued;
use crate::handler::node::{self, Nodes};
use crate::handler::Handler;
use crate::policy::{BreakerState, CallPolicy};
use crate::session::Qos;
use crate::sink::{Record, Sink, TableAck};
use crate::source::{Intake, Run, Source};
use crate::writer::{DrainReport, GiveBack, Writer, WriterConfig};

use super::DaemonError;

/// The running parts a config names.
pub(super) struct Parts {
    pub(super) config: Config,
    pub(super) source: Arc<dyn Source>,
    /// What the source was opened for: a reload keeps `source` (where it
    /// is, its resume, its locks) when the new config's is the same.
    pub(super) opened: Opened,
    /// The acknowledgement the sink makes for a source in its own file.
    pub(super) table_ack: Option<TableAck>,
    /// The way in of a source that takes pushes (an inbox): the listener's
    /// `POST /items` and the status's inbox reading.
    pub(super) intake: Option<Arc<Intake>>,
    pub(super) handler: Arc<dyn Handler>,
    /// The counters of every node of the handler tree.
    pub(super) nodes: Nodes,
    /// `config.policy` built: its breaker is shared by every session.
    pub(super) policy: CallPolicy,
    pub(super) writer: Arc<Writer>,
}

/// What a source was opened for; the same for the same source object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Opened {
    pub(super) spec: SourceSpec,
    /// Polled when empty (a spool or table in a continuous session). A
    /// lines source is never a stream: it ends at the end of its file.
    pub(super) stream: bool,
    /// A sqlite source in the sink's own file (acknowledged by the sink).
    pub(super) in_sink_file: bool,
}

impl Opened {
    pub(super) fn of(config: &Config, stream: bool) -> Opened {
        Opened {
            spec: config.source.clone(),
            stream: stream && config.source.streams(),
            in_sink_file: config.source.shares_sink_file(&config.sink),
        }
    }
}

/// A source already open, to build new parts around: the source, the
/// acknowledgement its sink makes, its intake.
pub(super) type LiveSource = (Arc<dyn Source>, Option<TableAck>, Option<Arc<Intake>>);

impl Parts {
    /// Builds everything `config` names. `stream`: sources poll when empty.
    /// `resume: false` is `--no-resume`. `live`: the source already open for
    /// this config's `source:` (a reload), used rather than opened again.
    pub(super) fn build(
        config: Config,
        stream: bool,
        resume: bool,
        live: Option<LiveSource>,
    ) -> Result<Parts, DaemonError> {
        config.create_dirs().map_err(DaemonError::Build)?;
        let build = |what: &str, e: &dyn std::fmt::Display| DaemonError::Build(format!("{what}: {e}"));
        let opened = Opened::of(&config, stream);
        let stream = opened.stream;
        let (source, table_ack, intake) = match live {
            Some(live) => live,
            None => open_for(&config, &opened, resume)?,
        };
        let mut nodes = Nodes::new();
        let handler = node::start_top(&config.handler, &config.policy, &mut nodes)
            .map_err(|e| build(&format!("the {} handler", config.handler.kind()), &e))?;
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
            intake,
            handler,
            nodes,
            writer: Arc::new(writer),
        })
    }

    /// Drains the writer, kills any exec child still running, and says what
    /// the drain could not write.
    pub(super) fn close(&self) -> DrainReport {
        let report = self.writer.close();
        if report.unwritten == 0 {
            log::info!("writer drained");
        }
        self.handler.kill_running();
        report
    }
}

/// Opens the source of `config` as `opened` says; a source in the sink's
/// own file comes with the acknowledgement the sink makes for it, and one
/// that takes pushes with its intake.
fn open_for(config: &Config, opened: &Opened, resume: bool) -> Result<LiveSource, DaemonError> {
    let run = Run {
        stream: opened.stream,
        resume,
        exactly_once: config.session.qos == Qos::ExactlyOnce,
        sink_path: config.sink.path(),
        in_sink_file: opened.in_sink_file,
    };
    let (source, table_ack) = config.source.open_for_run(&run).map_err(DaemonError::Build)?;
    let intake = match config.source.intake(source.doorbell()) {
        Some(intake) => Some(Arc::new(intake.map_err(DaemonError::Build)?)),
        None => None,
    };
    Ok((source, table_ack, intake))
}

fn open_sink(spec: &SinkSpec, table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, DaemonError> {
    spec.open(table_ack)
        .map_err(|e| DaemonError::Build(format!("opening a sink: {e}")))
}

/// A reload keeps the running breaker — open or closed, its failure count
/// and its `opens` — when neither `handler.breaker` nor the handler (what
/// it calls) changed: a SIGHUP must not let a flood of calls through to a
/// downstream the breaker is holding off. Otherwise the new config's
/// breaker starts closed, as a changed handler may well be the fix; that is
/// logged when the old one was not closed, so the reset is never silent.
pub(super) fn keep_breaker((old, running): (&Config, &CallPolicy), (new, fresh): (&Config, &mut CallPolicy)) {
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

/// `lote dead-letter requeue`: hands dead letters (`ids`, or all) back to
/// the configured source and removes them from the dead-letter sink.
pub fn requeue_dead_letters(config: &Config, ids: Option<&[String]>) -> Result<Requeued, DaemonError> {
    let Some(spec) = &config.dead_letter else {
        return Err(DaemonError::Build("this config has no dead_letter sink".into()));
    };
    // A lines source opens (nothing is read) and refuses the requeue itself.
    let source = config.source.open(false).map_err(DaemonError::Build)?;
    let mut sink = open_sink(spec, None)?;
    crate::dead_letter::requeue(sink.as_mut(), source.as_ref(), ids).map_err(|e| DaemonError::Build(e.to_string()))
}

/// `lote dead-letter list`: the dead letters of `config`, the latest record
/// per id, read without taking the sink over (safe while lote runs).
pub fn dead_letters(config: &Config) -> Result<Vec<Record>, DaemonError> {
    let Some(spec) = &config.dead_letter else {
        return Err(DaemonError::Build("this config has no dead_letter sink".into()));
    };
    let records = spec.records().map_err(DaemonError::Build)?;
    Ok(crate::dead_letter::latest_per_id(records))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
