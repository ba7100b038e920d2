//! The parts a config names — source, handler, sinks, the write-behind
//! thread — and how each kind is opened (`open_source`, `open_sink`,
//! `build_handler`: the per-kind wiring, in one place). Also what a reload
//! decides about them: whether the open source is kept ([`Opened`],
//! [`same_file`]) and whether the breaker is ([`keep_breaker`]); and the
//! dead-letter commands, which open the sinks the same way.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, HandlerSpec, SinkSpec, SourceSpec};
use crate::dead_letter::Requeued;
use crate::handler::exec::ExecHandler;
use crate::handler::http::HttpHandler;
use crate::handler::{Handler, Noop};
use crate::policy::{BreakerState, CallPolicy};
use crate::session::Qos;
use crate::sink::{Record, Sink, TableAck};
use crate::source::lines::{LinesConfig, LinesSource};
use crate::source::spool::SpoolSource;
use crate::source::{Source, SqliteSource};
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
    pub(super) handler: Arc<dyn Handler>,
    /// `config.policy` built: its breaker is shared by every session.
    pub(super) policy: CallPolicy,
    /// The exec handler again, to kill its children on the way out.
    pub(super) exec: Option<Arc<ExecHandler>>,
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
pub(super) type LiveSource = (Arc<dyn Source>, Option<TableAck>);

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
        let (source, table_ack) = match live {
            Some(live) => live,
            None => open_for(&config, &opened, resume)?,
        };
        let (handler, exec) = build_handler(&config.handler)?;
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
    pub(super) fn close(&self) -> DrainReport {
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

/// A handler, and the exec handler again if it is one (to kill its
/// children on the way out).
type BuiltHandler = (Arc<dyn Handler>, Option<Arc<ExecHandler>>);

/// Builds the handler `spec` names.
fn build_handler(spec: &HandlerSpec) -> Result<BuiltHandler, DaemonError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DaemonError::Build(format!("{what}: {e}"));
    Ok(match spec {
        HandlerSpec::Exec(spec) => {
            let handler = Arc::new(ExecHandler::new(spec.clone()).map_err(|e| failed("the exec handler", &e))?);
            (Arc::clone(&handler) as Arc<dyn Handler>, Some(handler))
        }
        HandlerSpec::Http(spec) => (
            Arc::new(HttpHandler::new(spec.clone()).map_err(|e| failed("the http handler", &e))?),
            None,
        ),
        HandlerSpec::Noop => (Arc::new(Noop), None),
    })
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
    spec.open(table_ack)
        .map_err(|e| DaemonError::Build(format!("opening a sink: {e}")))
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
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
    let source = open_source(&config.source, false)?;
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

    #[test]
    fn same_file_sees_through_other_spellings_and_links_of_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("one.db");
        std::fs::write(&db, "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join("sub/../one.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        assert!(same_file(&db, &dotted));
        assert!(same_file(&db, &link));
        let other = dir.path().join("two.db");
        std::fs::write(&other, "").unwrap();
        assert!(!same_file(&db, &other));
        // A file not there yet is compared as spelled.
        assert!(same_file(&dir.path().join("new.db"), &dir.path().join("new.db")));
        assert!(!same_file(
            &dir.path().join("new.db"),
            &dir.path().join("sub/../new.db")
        ));
    }
}
