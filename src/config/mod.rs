//! The config file (SPEC §4), in two stages (STYLE habit 6).
//!
//! 1. `raw`: serde types that mirror the YAML exactly, unknown keys refused,
//!    every field optional.
//! 2. [`Config`]: validated, defaults applied, paths resolved, and built from
//!    the engine's own types ([`SessionConfig`], [`RetryPolicy`] and
//!    [`BreakerConfig`] in a [`PolicySpec`], [`WriterConfig`], each
//!    source's, handler's and sink's config) so the daemon builds everything
//!    from it directly. It is plain data (`PartialEq`): nothing live, not
//!    even the breaker ([`PolicySpec::call_policy`] builds that).
//!
//! The same [`Config::load`] runs in `lote check`, in the unit's
//! `ExecStartPre` and at start. Every error is a [`ConfigError`] naming the
//! file, the line and column, the dotted key, and what was expected.
//!
//! # Paths
//!
//! `state_dir` resolves against the current directory (SPEC §4's `./state`
//! demo runs from the checkout); every other relative path — source, sink,
//! dead letters, `workdir`, the metrics textfile — resolves against
//! `state_dir`. [`Config`] holds them absolute, so a daemon may change
//! directory. Loading changes nothing on disk: it checks that `state_dir`
//! and the sinks' and textfile's directories exist or can be created (a
//! directory that cannot be is a config error, found before anything
//! starts), and `lote run` creates them ([`Config::create_dirs`]).
//!
//! # Bounds
//!
//! Every number, size and duration has a range (`spec::check`'s `MAX_*`), so
//! nothing `lote check` accepts can overflow a clock or a counter or ask
//! for an impossible allocation in `lote run`; the file itself is read only
//! if it is a regular file of at most [`MAX_FILE_BYTES`] (`text.rs`).
//!
//! # Defaults
//!
//! Where an engine type has a default (`SessionConfig::default()`,
//! `RetryPolicy::default()`, `SpoolConfig::new`, …) that is the config's
//! default too; the rest are the `DEFAULT_*` constants here.
//!
//! # Kinds
//!
//! No source, handler or sink kind is named here: `source/mod.rs`,
//! `handler/mod.rs` and `sink/mod.rs` each list their kinds on one line
//! apiece, and that registry generates the section's `*Keys` (as written),
//! its `*Spec` (as checked) and the dispatch; each kind's own file reads,
//! checks, prints and opens its section. The generic pieces a kind needs
//! (value types, the located error, the checks and bounds) are in `spec`,
//! below the engine.

mod arg;
mod build;
mod effective;
mod raw;
mod text;

pub use crate::spec::ConfigError;
pub use crate::spec::{format_bytes, format_duration, parse_bytes, parse_duration};
pub use arg::level_filter;
pub use text::MAX_FILE_BYTES;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeSeed;

pub use crate::handler::HandlerSpec;
pub use crate::ingest::HttpConfig;
use crate::session::SessionConfig;
pub use crate::sink::SinkSpec;
pub use crate::source::SourceSpec;
use crate::spec::{Check, Doc};
use crate::writer::WriterConfig;
use raw::{Kinds, Section};

/// `state_dir` when none is given.
pub const DEFAULT_STATE_DIR: &str = "./state";
/// `log` when none is given.
pub const DEFAULT_LOG: &str = "info";
/// `metrics.every`: how often the Prometheus textfile is written.
pub const DEFAULT_METRICS_EVERY: Duration = Duration::from_secs(15);
/// `metrics.log_every`: how often the summary log line is written.
pub const DEFAULT_METRICS_LOG_EVERY: Duration = Duration::from_secs(30);

/// A validated config: what the daemon runs. Plain data: the daemon builds
/// the live parts (the circuit breaker among them, [`PolicySpec::call_policy`])
/// from it, so two configs compare by their settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Absolute. lote's files live here; relative paths resolved against it.
    pub state_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` wins).
    pub log: String,
    /// Threads, chunk, max_items, deadline, the queue (`queue:`), the poll
    /// interval (`session.poll_every`) and the QoS (`handler.qos`).
    pub session: SessionConfig,
    /// `session.every`: start a session on this period; `None` = one session
    /// (or one continuous session for a stream source).
    pub every: Option<Duration>,
    pub source: SourceSpec,
    pub handler: HandlerSpec,
    /// `handler.retry`, `handler.breaker` (with `when_open`), `handler.timeout`.
    pub policy: PolicySpec,
    pub sink: SinkSpec,
    /// `None` with `dead_letter: {kind: none}`.
    pub dead_letter: Option<SinkSpec>,
    /// `sink.batch`, `flush_every`, `max_retries`, `drain_timeout`;
    /// `done_lookups` is on for `qos: exactly_once` and for a `lines` source.
    pub writer: WriterConfig,
    pub metrics: MetricsSpec,
    /// `http:`, the ingest listener; `None` = no listener.
    pub http: Option<HttpConfig>,
    /// Things that are allowed but probably not meant (a program not found in
    /// PATH, retries under `at_most_once`). Not errors; the daemon logs them
    /// once its logger is up, `lote check` prints them.
    pub warnings: Vec<String>,
}

/// The top handler's policies (`handler.retry`, `breaker`, `timeout`,
/// `bulkhead`, `fallback`, `cache`, `timeout_mode`): a node's.
pub use crate::handler::node::NodePolicy as PolicySpec;

/// `metrics:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSpec {
    /// How often the textfile is written. Default 15s.
    pub every: Duration,
    /// A node_exporter textfile (absolute), written atomically; `None` = none.
    pub textfile: Option<PathBuf>,
    /// How often the summary log line is written. Default 30s.
    pub log_every: Duration,
}

impl Config {
    /// Reads and validates the config file at `path`.
    /// Only a regular file of at most [`MAX_FILE_BYTES`] is read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_yaml(&text::read(path)?, path)
    }

    /// Validates `text`; `file` names it in errors. Relative paths resolve as
    /// the module doc says; directories are created as it says.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        // A byte-order mark is invisible and not YAML content.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let doc = Doc { file, text };
        text::check(&doc)?;
        let kinds = first_pass(&doc)?;
        let raw = raw::RawConfigSeed(kinds)
            .deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| doc.yaml_error(&e))?;
        let cwd = std::env::current_dir().map_err(|e| {
            doc.error(
                "state_dir",
                format!("cannot read the current directory to resolve it: {e}"),
            )
        })?;
        Check {
            doc: &doc,
            warnings: Vec::new(),
        }
        .config(raw, &cwd)
    }

    /// Creates the directories lote writes to: `state_dir`, the sinks' and
    /// the metrics textfile's. `lote run` calls it before opening anything;
    /// loading (and so `lote check`) only checks that it could (SPEC §3.8:
    /// `lote check` changes nothing on disk).
    pub fn create_dirs(&self) -> Result<(), String> {
        let files = [
            self.sink.path(),
            self.dead_letter.as_ref().and_then(SinkSpec::path),
            self.metrics.textfile.as_deref(),
        ];
        let dirs =
            std::iter::once(self.state_dir.as_path()).chain(files.into_iter().flatten().filter_map(Path::parent));
        for dir in dirs {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// The effective config, every default filled in, in `config.yaml`'s
    /// layout (for `lote check`). It loads again into an equal `Config`.
    /// The handler tree, one line per node with the policies it carries,
    /// children indented under their parent (`lote check`).
    pub fn handler_tree(&self) -> Vec<String> {
        let mut out = vec![format!("handler ({}{})", self.handler.kind(), self.policy.brief(false))];
        self.handler.tree(1, &mut out);
        if let Some(crate::handler::node::FallbackSpec::Node(node)) = &self.policy.fallback {
            node.tree(1, &mut out);
        }
        out
    }

    pub fn effective_yaml(&self) -> String {
        effective::to_yaml(self)
    }
}

/// Pass one: parse the YAML (syntax errors, duplicate keys) and read the
/// `kind:` of each tagged section, so pass two can deserialize each section
/// straight into its kind's struct (see [`raw`]).
fn first_pass(doc: &Doc) -> Result<Kinds, ConfigError> {
    use serde_yaml::Value;
    let spent = std::cell::Cell::new(0);
    let value: Value = text::BudgetedValue { spent: &spent }
        .deserialize(serde_yaml::Deserializer::from_str(doc.text))
        .map_err(|e| doc.yaml_error(&e))?;
    let top = match &value {
        Value::Mapping(top) => top,
        Value::Null => return Err(doc.whole(
            "the file is empty; expected a mapping with at least `source:` and `handler:` sections (see config.yaml)",
        )),
        _ => {
            return Err(doc.at_start(
                "expected a mapping of sections (`session:`, `source:`, `handler:`, …) at the top of the \
                 file",
            ))
        }
    };
    Ok(Kinds {
        source: section_kind(doc, top, &raw::source_section(), true, raw::source_kind)?,
        handler: section_kind(doc, top, &raw::handler_section(), true, raw::handler_kind)?,
        sink: section_kind(doc, top, &raw::sink_section(), false, raw::sink_kind)?,
        dead_letter: section_kind(doc, top, &raw::dead_letter_section(), false, raw::dead_letter_kind)?,
    })
}

fn section_kind<K>(
    doc: &Doc,
    top: &serde_yaml::Mapping,
    section: &Section,
    required: bool,
    parse: fn(&str) -> Option<K>,
) -> Result<Option<K>, ConfigError> {
    use serde_yaml::Value;
    let names = backquoted(&section.kinds);
    let key = section.key;
    let expected = format!("expected a mapping with a `kind:` (one of {names}) and that kind's keys");
    let body = match top.get(key) {
        None if required => return Err(doc.whole(format!("`{key}:` is missing; {expected}")).with_key(key)),
        None => return Ok(None),
        Some(Value::Mapping(body)) => body,
        Some(Value::Null) if key == "dead_letter" => {
            return Err(doc.error(
                key,
                format!("is empty; {expected} (`kind: none` for no dead-letter sink)"),
            ))
        }
        Some(Value::Null) => return Err(doc.error(key, format!("is empty; {expected}"))),
        Some(_) => return Err(doc.error(key, format!("is not a mapping; {expected}"))),
    };
    let kind_key = format!("{key}.kind");
    match body.get("kind") {
        None => Err(doc.error(key, format!("has no `kind:`; expected one of {names}"))),
        Some(Value::String(name)) => match parse(name) {
            Some(kind) => Ok(Some(kind)),
            None if section.later.contains(&name.as_str()) => Err(doc.error(
                &kind_key,
                format!(
                    "kind `{name}` is specified in SPEC but not implemented in this build of lote; expected one \
                     of {names}"
                ),
            )),
            None => Err(doc.error(
                &kind_key,
                format!(
                    "unknown kind `{name}`; expected one of {names}{}",
                    crate::spec::did_you_mean(name, &format!("expected {names}"))
                ),
            )),
        },
        Some(_) => Err(doc.error(&kind_key, format!("must be a name; expected one of {names}"))),
    }
}

fn backquoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

impl ConfigError {
    fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::node::FallbackSpec;
    use crate::policy::WhenOpen;
    use crate::queue::WhenFull;
    use crate::session::Qos;
    use crate::sink::{Role, Synchronous};
    use crate::source::lines::LinesFormat;
    use crate::source::spool::{OnDone, SpoolPriority};
    use crate::spec::absolute;

    fn load(dir: &Path, sections: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(
            &format!("state_dir: {}\n{sections}", dir.display()),
            Path::new("test.yaml"),
        )
    }

    /// Loads, prints the effective config, loads that, and checks both agree.
    fn round_trip(config: &Config) {
        let text = config.effective_yaml();
        let again = Config::from_yaml(&text, Path::new("effective.yaml"))
            .unwrap_or_else(|e| panic!("effective config refused: {e}\n{text}"));
        assert_eq!(&again, config, "\n{text}");
        assert_eq!(again.effective_yaml(), text);
    }

    #[test]
    fn every_kind_fills_its_engine_config_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spool = load(
            dir.path(),
            "source: {kind: spool, path: in, on_done: delete, priority: {json_field: prio}, stable_for: 250ms, \
             max_bytes: 2MiB}\n\
             handler:\n  kind: http\n  url: https://example.com/items\n  method: put\n  headers: {X-Token: abc}\n  \
             timeout: 10s\n  qos: exactly_once\n  breaker: {failures: 3, when_open: skip}\n\
             sink: {kind: jsonl, rotate_bytes: 0, keep_files: 2, batch: 10}\n\
             dead_letter: {kind: sqlite, synchronous: full}\n",
        )
        .unwrap();
        let SourceSpec::Spool(s) = &spool.source else { panic!() };
        assert_eq!(s.dir, dir.path().join("in"));
        assert_eq!(
            (s.on_done, s.stable_for, s.max_bytes),
            (OnDone::Delete, Duration::from_millis(250), 2 << 20)
        );
        assert_eq!(s.priority, SpoolPriority::JsonField("prio".into()));
        assert!(!s.stream, "the daemon decides");
        let HandlerSpec::Http(h) = &spool.handler else { panic!() };
        assert_eq!((h.method.as_str(), h.timeout), ("PUT", Duration::from_secs(10)));
        assert_eq!(h.headers, [("X-Token".to_string(), "abc".to_string())]);
        assert_eq!(spool.policy.timeout, Some(Duration::from_secs(10)));
        assert_eq!(spool.policy.when_open, WhenOpen::Skip);
        assert_eq!(spool.policy.breaker.as_ref().unwrap().failures, 3);
        assert_eq!(spool.session.qos, Qos::ExactlyOnce);
        assert!(spool.writer.done_lookups, "exactly-once asks the sink");
        assert_eq!(spool.writer.batch, 10);
        let SinkSpec::Jsonl(j) = &spool.sink else { panic!() };
        assert_eq!(
            (j.path.clone(), j.rotate_bytes, j.keep_files, j.role),
            (dir.path().join("outcomes.jsonl"), None, 2, Role::Outcomes)
        );
        let Some(SinkSpec::Sqlite(d)) = &spool.dead_letter else {
            panic!()
        };
        assert_eq!(
            (d.path.clone(), d.synchronous, d.role),
            (dir.path().join("dead-letter.db"), Synchronous::Full, Role::DeadLetter)
        );
        round_trip(&spool);

        std::fs::create_dir(dir.path().join("w")).unwrap();
        let sqlite = load(
            dir.path(),
            "source: {kind: sqlite, path: work.db, table: items, priority_column: null, pending: new}\n\
             handler:\n  kind: exec\n  command: [sh, -c, cat]\n  env: {A: '1'}\n  workdir: w\n  output_limit: 1KB\n\
             dead_letter: {kind: none}\n\
             queue: {when_full: reject, capacity: 8}\n\
             session: {every: 1m, deadline: 30s}\n",
        )
        .unwrap();
        let SourceSpec::Sqlite(s) = &sqlite.source else {
            panic!()
        };
        assert_eq!(
            (s.table.as_str(), s.priority_column.clone(), s.pending.as_str()),
            ("items", None, "new")
        );
        assert_eq!(s.path, dir.path().join("work.db"));
        let HandlerSpec::Exec(e) = &sqlite.handler else {
            panic!()
        };
        assert_eq!((e.output_limit, e.workdir.clone()), (1000, Some(dir.path().join("w"))));
        assert_eq!(e.env, [("A".to_string(), "1".to_string())]);
        assert!(sqlite.dead_letter.is_none());
        assert_eq!(sqlite.session.queue.when_full, WhenFull::Reject);
        assert_eq!(sqlite.every, Some(Duration::from_secs(60)));
        assert!(!sqlite.writer.done_lookups);
        round_trip(&sqlite);

        let stdin = load(
            dir.path(),
            "source: {kind: lines, path: \"-\", format: ndjson}\nhandler: {kind: noop}\n",
        )
        .unwrap();
        let SourceSpec::Lines(l) = &stdin.source else { panic!() };
        assert_eq!((l.path.clone(), l.format), (None, LinesFormat::Ndjson));
        round_trip(&stdin);
    }

    #[test]
    fn a_handler_tree_with_every_policy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let tree = load(
            dir.path(),
            "source: {kind: lines, path: x}\n\
             handler:\n  kind: parallel\n  qos: exactly_once\n  timeout: 5s\n  timeout_mode: walk_away\n  \
             max_abandoned: 3\n  fallback: {handler: {kind: noop, cache: {ttl: 1s}}}\n  branches:\n    \
             a: {kind: noop, optional: true, bulkhead: {max_parallel: 2}, breaker: {failures: 2}}\n    \
             b:\n      kind: sequence\n      retry: {attempts: 2}\n      steps:\n        - {kind: noop, \
             fallback: {value: {x: 1}}}\n        - kind: fan_out\n          split: /items\n          \
             on_element_failure: drop\n          each: {kind: noop, cache: {key: \"{/id}\", refresh_ahead: 0.5}}\n",
        )
        .unwrap();
        let HandlerSpec::Parallel(p) = &tree.handler else {
            panic!()
        };
        assert_eq!(p.branches.len(), 2);
        assert!(p.branches[0].1.optional && p.progress.is_some());
        let b = &p.branches[1].1;
        assert_eq!((b.path.as_str(), b.policy.retry.attempts), ("handler.branches.b", 2));
        let HandlerSpec::Sequence(seq) = &b.kind else { panic!() };
        assert_eq!(seq.steps[1].path, "handler.branches.b.steps.1");
        assert!(matches!(&seq.steps[0].policy.fallback, Some(FallbackSpec::Value(v)) if v == "{\"x\":1}"));
        assert_eq!(tree.policy.walk_away, Some(3));
        assert!(matches!(&tree.policy.fallback, Some(FallbackSpec::Node(n)) if n.policy.cache.is_some()));
        assert_eq!(
            tree.policy.call_policy().retry.attempts,
            1,
            "with a fallback the node retries itself"
        );
        assert_eq!(tree.handler_tree().len(), 7, "{:?}", tree.handler_tree());
        round_trip(&tree);
        // YAML reads an unquoted null as no value; here it names the policy.
        let fan_out = load(
            dir.path(),
            "source: {kind: lines, path: x}\nhandler: {kind: fan_out, on_element_failure: null, each: {kind: noop}}\n",
        )
        .unwrap();
        let HandlerSpec::FanOut(f) = &fan_out.handler else {
            panic!()
        };
        assert_eq!(f.on_element_failure, crate::handler::compose::OnElementFailure::Null);
        round_trip(&fan_out);
    }

    #[test]
    fn serde_internally_tagged_enums_lose_the_place_which_is_why_kinds_take_two_passes() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
        #[allow(dead_code)]
        enum Tagged {
            Lines { path: String },
        }
        let text = "kind: lines\npath: x\nbogus: 1\n";
        let err = serde_yaml::from_str::<Tagged>(text).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "rejected, as hoped");
        let at = err.location().map(|l| (l.line(), l.column()));
        assert_ne!(
            at,
            Some((3, 1)),
            "…but not located; if this fails, serde learned to, and one pass would do"
        );

        let dir = tempfile::tempdir().unwrap();
        let ours = load(
            dir.path(),
            "source:\n  kind: lines\n  path: x\n  bogus: 1\nhandler: {kind: noop}\n",
        )
        .unwrap_err();
        assert_eq!(
            (ours.line, ours.column, ours.key.as_deref()),
            (Some(5), Some(3), Some("source.bogus"))
        );
    }

    #[test]
    fn warnings_are_kept_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(
            dir.path(),
            "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: [sh]\n  \
             qos: at_most_once\n  retry: {attempts: 4}\n",
        )
        .unwrap();
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings.iter().any(|w| w.contains("does not exist (yet)")));
        assert!(config.warnings.iter().any(|w| w.contains("never retries")));
    }

    #[test]
    fn a_program_not_in_path_is_refused_as_run_would() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            dir.path(),
            "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: [no-such-program-lote]\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.key.as_deref(), err.line),
            (Some("handler.command"), Some(5)),
            "{err}"
        );
        assert!(err.message.contains("not in PATH"), "{err}");
    }

    #[test]
    fn paths_resolve_against_state_dir_and_run_creates_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let state = dir.path().join("new/state");
        let config = Config::from_yaml(
            &format!(
                "state_dir: {}\nsource: {{kind: lines, path: ./in.txt}}\nhandler: {{kind: noop}}\n\
                 sink: {{kind: sqlite, path: {}/db/outcomes.db}}\nmetrics: {{textfile: prom/lote.prom}}\n",
                state.display(),
                elsewhere.path().display()
            ),
            Path::new("t.yaml"),
        )
        .unwrap();
        assert!(!state.exists(), "loading changes nothing on disk");
        config.create_dirs().unwrap();
        assert!(state.is_dir());
        let SourceSpec::Lines(l) = &config.source else { panic!() };
        assert_eq!(l.path, Some(state.join("in.txt")));
        assert_eq!(
            config.sink.path(),
            Some(elsewhere.path().join("db/outcomes.db").as_path()),
            "absolute stays"
        );
        assert!(elsewhere.path().join("db").is_dir());
        assert_eq!(config.metrics.textfile, Some(state.join("prom/lote.prom")));
        assert!(state.join("prom").is_dir());
    }

    /// Every truncation, every line dropped and every line indented by a tab
    /// of the reference config: an error or a config, never a panic, and an
    /// error always names a place or a key.
    #[test]
    fn mangled_reference_configs_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("../../config.yaml")
            .replace("state_dir: ./state", &format!("state_dir: {}", dir.path().display()));
        let lines: Vec<&str> = text.lines().collect();
        let mut variants: Vec<String> = text
            .char_indices()
            .step_by(3)
            .map(|(i, _)| text[..i].to_string())
            .collect();
        for i in 0..lines.len() {
            let mut dropped = lines.clone();
            dropped.remove(i);
            variants.push(dropped.join("\n"));
            let mut tabbed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            tabbed[i] = format!("\t{}", tabbed[i]);
            variants.push(tabbed.join("\n"));
        }
        for variant in &variants {
            if let Err(e) = Config::from_yaml(variant, Path::new("mangled.yaml")) {
                assert!(
                    e.line.is_some() || e.key.is_some() || e.message.contains("empty"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn absolute_drops_dots_and_folds_parents_except_after_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        assert_eq!(absolute(w, Path::new("./state")), w.join("state"));
        // `state` does not exist yet (run creates it), then it does: the
        // same path either way, so a reload sees the same source.
        assert_eq!(absolute(&w.join("state"), Path::new("../x")), w.join("x"));
        std::fs::create_dir(w.join("state")).unwrap();
        assert_eq!(absolute(&w.join("state"), Path::new("../x")), w.join("x"));
        // A symlink's `..` is its target's parent: only the kernel knows.
        std::os::unix::fs::symlink("/tmp", w.join("link")).unwrap();
        assert_eq!(absolute(&w.join("link"), Path::new("../x")), w.join("link/../x"));
        assert_eq!(absolute(w, Path::new("/etc/x")), Path::new("/etc/x"));
    }
}
