//! The config file (SPEC §4, §3.9): the reference `config.yaml` loads, the
//! effective config loads back into the same config, seed 003's aliases
//! work, and every malformed config is refused with a message that names the
//! file, the place (line:column or the dotted key) and what was expected.
//!
//! Run with `--nocapture` to read every message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lote::config::{Config, ConfigError, HandlerSpec, SinkSpec, SourceSpec};
use lote::Qos;

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")
}

/// A valid config around `sections`, with its state under `dir`.
fn with_state(dir: &Path, sections: &str) -> String {
    format!("state_dir: {}\n{sections}", dir.display())
}

const MINIMAL: &str = "\
source:
  kind: lines
  path: items.txt
handler:
  kind: noop
";

#[test]
fn the_reference_config_loads() {
    let config = Config::load(&reference()).unwrap_or_else(|e| panic!("config.yaml is refused: {e}"));
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("state");
    assert_eq!(config.state_dir, state);
    assert!(config.session.threads >= 1);
    match &config.source {
        SourceSpec::Lines(lines) => {
            // `state/../samples/…` once `state/` exists, `samples/…` on a
            // fresh clone (where `state/` is not there yet): the same file.
            let path = lines.path.as_ref().unwrap();
            assert!(path.exists(), "the demo's input exists: {}", path.display());
            let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/readings.txt");
            assert_eq!(path.canonicalize().unwrap(), samples.canonicalize().unwrap());
        }
        other => panic!("the demo reads lines, not {other:?}"),
    }
    match &config.handler {
        HandlerSpec::Exec(exec) => assert_eq!(exec.command[0], "/bin/sh"),
        other => panic!("the demo runs exec, not {other:?}"),
    }
    assert!(matches!(&config.sink, SinkSpec::Sqlite(s) if s.path == state.join("outcomes.db")));
    assert!(matches!(&config.dead_letter, Some(SinkSpec::Jsonl(j)) if j.path == state.join("dead-letter.jsonl")));
    assert!(
        config.writer.done_lookups,
        "a lines source resumes from the sink's records"
    );
    assert!(config.policy.breaker.is_some());
    assert_eq!(config.metrics.textfile, Some(state.join("lote.prom")));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn the_effective_config_loads_back_into_the_same_config() {
    let config = Config::load(&reference()).unwrap();
    let effective = config.effective_yaml();
    eprintln!("--- effective config.yaml ---\n{effective}");
    let again = Config::from_yaml(&effective, Path::new("effective.yaml"))
        .unwrap_or_else(|e| panic!("the effective config is refused: {e}\n{effective}"));
    assert_eq!(again, config);
    assert_eq!(again.effective_yaml(), effective);
}

#[test]
fn seed_003_aliases_lote_and_timer() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = with_state(dir.path(), &format!("session:\n  lote: 7\n  timer: 30s\n{MINIMAL}"));
    let config = Config::from_yaml(&yaml, Path::new("alias.yaml")).unwrap();
    assert_eq!(config.session.max_items, 7);
    assert_eq!(config.session.deadline, Some(Duration::from_secs(30)));
    // The effective config says it the long way.
    assert!(config.effective_yaml().contains("max_items: 7"));
    assert!(config.effective_yaml().contains("deadline: 30s"));

    let both = with_state(dir.path(), &format!("session:\n  max_items: 5\n  lote: 7\n{MINIMAL}"));
    let err = Config::from_yaml(&both, Path::new("alias.yaml"))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("`max_items`") && err.contains("`lote`"), "{err}");

    let both = with_state(
        dir.path(),
        &format!("session:\n  deadline: 1m\n  timer: 30s\n{MINIMAL}"),
    );
    let err = Config::from_yaml(&both, Path::new("alias.yaml"))
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("`deadline`") && err.contains("`timer`"), "{err}");
}

#[test]
fn defaults_fill_a_minimal_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml(&with_state(dir.path(), MINIMAL), Path::new("minimal.yaml")).unwrap();
    let s = &config.session;
    assert_eq!((s.threads, s.chunk, s.max_items, s.deadline), (4, 50, 0, None));
    assert_eq!(s.queue.capacity, 1024);
    assert_eq!(s.qos, Qos::AtLeastOnce);
    assert_eq!(config.every, None);
    assert_eq!(config.policy.retry.attempts, 3);
    assert!(config.policy.breaker.is_none());
    assert_eq!((config.writer.batch, config.writer.max_retries), (500, 5));
    assert!(matches!(&config.sink, SinkSpec::Sqlite(s) if s.path == dir.path().join("outcomes.db")));
    assert!(matches!(&config.dead_letter, Some(SinkSpec::Jsonl(j)) if j.path == dir.path().join("dead-letter.jsonl")));
    assert_eq!(config.log, "info");
}

/// One malformed config: what it is, the YAML (after a `state_dir:` line),
/// a piece of the line the error must point at (`None`: the key alone must
/// be named), the dotted key it must name, and words of what was expected.
struct Case {
    name: &'static str,
    yaml: &'static str,
    at: Option<&'static str>,
    key: Option<&'static str>,
    expected: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "bad indentation",
        yaml: "session:\n  threads: 4\n   chunk: 5\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("   chunk: 5"),
        key: None,
        expected: &["check the indentation"],
    },
    Case {
        name: "a tab",
        yaml: "session:\n\tthreads: 4\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("\tthreads"),
        key: None,
        expected: &["use spaces"],
    },
    Case {
        name: "unknown top-level key",
        yaml: "sesion:\n  threads: 4\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("sesion:"),
        key: Some("sesion"),
        expected: &["expected one of `state_dir`", "did you mean `session`?"],
    },
    Case {
        name: "near miss inside session",
        yaml: "session:\n  thread: 4\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("thread: 4"),
        key: Some("session.thread"),
        expected: &["`threads`", "did you mean `threads`?"],
    },
    Case {
        name: "unknown key inside a kind: exec handler",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: [/bin/true]\n  \
               fatal_exit_code: [3]\n",
        at: Some("fatal_exit_code:"),
        key: Some("handler.fatal_exit_code"),
        expected: &["expected one of", "`retry`", "did you mean `fatal_exit_codes`?"],
    },
    Case {
        name: "unknown key inside a one-line flow section",
        yaml: "source: {kind: lines, path: x, formt: text}\nhandler: {kind: noop}\n",
        at: Some("formt"),
        key: Some("source.formt"),
        expected: &["did you mean `format`?"],
    },
    Case {
        name: "wrong type",
        yaml: "session:\n  threads: \"four\"\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("threads:"),
        key: Some("session.threads"),
        expected: &["expected a whole number"],
    },
    Case {
        name: "bad duration",
        yaml: "session:\n  deadline: 5 minutes please\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("deadline:"),
        key: Some("session.deadline"),
        expected: &["invalid duration `5 minutes please`", "like 250ms, 30s, 5m"],
    },
    Case {
        name: "negative capacity",
        yaml: "queue:\n  capacity: -5\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("capacity:"),
        key: Some("queue.capacity"),
        expected: &["expected a whole number (0 or more)"],
    },
    Case {
        name: "threads 0",
        yaml: "session:\n  threads: 0\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("threads: 0"),
        key: Some("session.threads"),
        expected: &["must be at least 1 (found 0)"],
    },
    Case {
        name: "chunk 0",
        yaml: "session:\n  chunk: 0\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("chunk: 0"),
        key: Some("session.chunk"),
        expected: &["must be at least 1 (found 0)"],
    },
    Case {
        name: "deadline not shorter than every",
        yaml: "session:\n  timer: 5m\n  every: 5m\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("timer: 5m"),
        key: Some("session.timer"),
        expected: &["expected a deadline below 5m"],
    },
    Case {
        name: "unknown kind",
        yaml: "source:\n  kind: spoool\n  path: x\nhandler: {kind: noop}\n",
        at: Some("kind: spoool"),
        key: Some("source.kind"),
        expected: &["expected one of `spool`, `lines`, `sqlite`", "did you mean `spool`?"],
    },
    Case {
        name: "a parallel node without branches",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: parallel\n",
        at: Some("handler:"),
        key: Some("handler.branches"),
        expected: &["is missing or empty; expected named branches"],
    },
    Case {
        name: "an unknown key in a nested node",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: parallel\n  branches:\n    a: {kind: noop}\n    b:\n      kind: exec\n      comand: [/bin/true]\n",
        at: Some("comand:"),
        key: Some("handler.branches.b.comand"),
        expected: &["unknown field `comand`", "did you mean `command`?"],
    },
    Case {
        name: "a bad value deep in the tree",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: sequence\n  steps:\n    - {kind: noop}\n    - kind: fan_out\n      split: /items\n      each:\n        kind: noop\n        retry: {attempts: 0}\n",
        at: Some("retry:"),
        key: Some("handler.steps.1.each.retry.attempts"),
        expected: &["retry attempts is 0; expected at least 1"],
    },
    Case {
        name: "an unknown kind in a nested node",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: fan_out\n  each: {kind: exex, command: [/bin/true]}\n",
        at: Some("each:"),
        key: Some("handler.each.kind"),
        expected: &["unknown kind `exex`", "did you mean `exec`?"],
    },
    Case {
        name: "optional outside a parallel branch",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: sequence\n  steps:\n    - kind: noop\n      optional: true\n",
        at: Some("optional: true"),
        key: Some("handler.steps.0.optional"),
        expected: &["only a branch of `kind: parallel` can be optional"],
    },
    Case {
        name: "walk-away without a timeout",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  timeout_mode: walk_away\n",
        at: Some("timeout_mode:"),
        key: Some("handler.timeout_mode"),
        expected: &["without a `timeout`"],
    },
    Case {
        name: "a fallback with both a value and a handler",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  fallback: {value: x, handler: {kind: noop}}\n",
        at: Some("fallback:"),
        key: Some("handler.fallback"),
        expected: &["exactly one of `value"],
    },
    Case {
        name: "a cache key with an unknown placeholder",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  cache: {key: \"{name}\"}\n",
        at: Some("cache:"),
        key: Some("handler.cache.key"),
        expected: &["not a placeholder lote knows"],
    },
    Case {
        name: "missing kind",
        yaml: "source:\n  path: x\nhandler: {kind: noop}\n",
        at: Some("source:"),
        key: Some("source"),
        expected: &["has no `kind:`; expected one of `spool`, `lines`, `sqlite`"],
    },
    Case {
        name: "missing handler section",
        yaml: "source: {kind: lines, path: x}\n",
        at: None,
        key: Some("handler"),
        expected: &["`handler:` is missing; expected a mapping with a `kind:`"],
    },
    Case {
        name: "command as a string",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: /usr/bin/foo --flag\n",
        at: Some("command:"),
        key: Some("handler.command"),
        expected: &["command must be a list (argv), e.g. [\"/usr/bin/foo\", \"--flag\"]; lote never runs a shell"],
    },
    Case {
        name: "empty command",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: []\n",
        at: Some("command: []"),
        key: Some("handler.command"),
        expected: &["is empty; expected the program and its arguments"],
    },
    Case {
        name: "a program that does not exist",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: exec\n  command: [/nonexistent/lote-test]\n",
        at: Some("command:"),
        key: Some("handler.command"),
        expected: &["expected the full path of a program"],
    },
    Case {
        name: "bad url",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: http\n  url: ftp://example.com/items\n",
        at: Some("url:"),
        key: Some("handler.url"),
        expected: &["expected http://host[:port]/path or https://"],
    },
    Case {
        name: "bad when_full",
        yaml: "queue:\n  when_full: blocking\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("when_full:"),
        key: Some("queue.when_full"),
        expected: &["expected one of `block`, `drop_oldest`"],
    },
    Case {
        name: "jitter 1.5",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  retry: { attempts: 5, jitter: 1.5 }\n",
        at: Some("jitter: 1.5"),
        key: Some("handler.retry.jitter"),
        expected: &["expected a fraction between 0 and 1"],
    },
    Case {
        name: "attempts 0",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  retry:\n    attempts: 0\n",
        at: Some("attempts: 0"),
        key: Some("handler.retry.attempts"),
        expected: &["expected at least 1"],
    },
    Case {
        name: "batch of 0 items",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  batch:\n    max_items: 0\n",
        at: Some("max_items: 0"),
        key: Some("handler.batch.max_items"),
        expected: &["expected a whole number from 1 to 100000"],
    },
    Case {
        name: "batch with an unknown key",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  batch: { size: 10 }\n",
        at: Some("size: 10"),
        key: None,
        expected: &["unknown field `size`", "max_items"],
    },
    Case {
        name: "backoff longer than max_backoff",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  retry:\n    backoff: 2m\n",
        at: Some("backoff: 2m"),
        key: Some("handler.retry.backoff"),
        expected: &["expected backoff <= max_backoff"],
    },
    Case {
        name: "breaker failures 0",
        yaml: "source: {kind: lines, path: x}\nhandler:\n  kind: noop\n  breaker:\n    failures: 0\n",
        at: Some("failures: 0"),
        key: Some("handler.breaker.failures"),
        expected: &["expected 1 to"],
    },
    Case {
        name: "block_timeout with drop_oldest",
        yaml: "queue:\n  when_full: drop_oldest\n  block_timeout: 5s\n\
               source: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("block_timeout:"),
        key: Some("queue.block_timeout"),
        expected: &[
            "has no effect with `when_full: drop_oldest`",
            "expected either `when_full: block`",
        ],
    },
    Case {
        name: "sink directory cannot be created",
        yaml: "source: {kind: lines, path: x}\nhandler: {kind: noop}\n\
               sink:\n  kind: sqlite\n  path: a-file/sub/outcomes.db\n",
        at: Some("path: a-file"),
        key: Some("sink.path"),
        expected: &[
            "cannot create the directory",
            "a-file/sub",
            "expected a directory lote can create",
        ],
    },
    Case {
        name: "stdin with every",
        yaml: "session:\n  every: 5m\nsource:\n  kind: lines\n  path: \"-\"\nhandler: {kind: noop}\n",
        at: Some("path: \"-\""),
        key: Some("source.path"),
        expected: &["can be read only once", "expected a file, or no `every`"],
    },
    Case {
        name: "an unquoted -",
        yaml: "source:\n  kind: lines\n  path: -\nhandler: {kind: noop}\n",
        at: Some("path: -"),
        key: None,
        expected: &["quote it"],
    },
    Case {
        name: "bad byte size",
        yaml: "source: {kind: lines, path: x}\nhandler: {kind: noop}\n\
               sink:\n  kind: jsonl\n  rotate_bytes: 12 potatoes\n",
        at: Some("rotate_bytes:"),
        key: Some("sink.rotate_bytes"),
        expected: &["unknown unit `potatoes`", "expected a whole number of bytes"],
    },
    Case {
        name: "sink and dead letters in one file",
        yaml: "source: {kind: lines, path: x}\nhandler: {kind: noop}\nsink: {kind: jsonl, path: out.jsonl}\n\
               dead_letter: {kind: jsonl, path: out.jsonl}\n",
        at: Some("dead_letter:"),
        key: Some("dead_letter.path"),
        expected: &["is the sink's file too", "expected another path"],
    },
    Case {
        name: "writer keys under dead_letter",
        yaml: "source: {kind: lines, path: x}\nhandler: {kind: noop}\ndead_letter:\n  kind: jsonl\n  batch: 10\n",
        at: Some("batch: 10"),
        key: Some("dead_letter.batch"),
        expected: &["belongs under `sink:`"],
    },
    Case {
        name: "duplicate key",
        yaml: "session:\n  threads: 2\n  threads: 3\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("threads: 3"),
        key: Some("session.threads"),
        expected: &["expected each key once per section"],
    },
    Case {
        name: "bad log level",
        yaml: "log: verbose\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("log:"),
        key: Some("log"),
        expected: &["expected one of `error`, `warn`, `info`, `debug`, `trace`"],
    },
    Case {
        name: "a key one level too high",
        yaml: "threads: 4\nsource: {kind: lines, path: x}\nhandler: {kind: noop}\n",
        at: Some("threads: 4"),
        key: Some("threads"),
        expected: &["belongs under `session:`"],
    },
];

/// The 1-based line of the first line containing `piece`.
fn line_of(text: &str, piece: &str) -> usize {
    text.lines()
        .position(|l| l.contains(piece))
        .unwrap_or_else(|| panic!("`{piece}` is not in the case's YAML"))
        + 1
}

#[test]
fn malformed_configs_are_refused_with_file_place_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    let file = Path::new("bad.yaml");
    let mut failures = Vec::new();
    for case in CASES {
        let yaml = with_state(dir.path(), case.yaml);
        let err: ConfigError = match Config::from_yaml(&yaml, file) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(err) => err,
        };
        let shown = err.to_string();
        eprintln!("{:<44} {shown}", format!("[{}]", case.name));
        let mut wrong = Vec::new();
        if err.file != file || !shown.starts_with("bad.yaml:") {
            wrong.push("does not name the file".to_string());
        }
        if let Some(at) = case.at {
            let line = line_of(&yaml, at);
            if err.line != Some(line) || err.column.is_none() {
                wrong.push(format!("points at {:?}:{:?}, not line {line}", err.line, err.column));
            } else if !shown.starts_with(&format!("bad.yaml:{line}:")) {
                wrong.push("does not show the line".to_string());
            }
        }
        if case.key.is_some() && err.key.as_deref() != case.key {
            wrong.push(format!("names key {:?}, not {:?}", err.key, case.key));
        }
        if err.line.is_none() && err.key.is_none() {
            wrong.push("names neither a line nor a key".to_string());
        }
        for words in case.expected {
            if !shown.contains(words) {
                wrong.push(format!("does not say {words:?}"));
            }
        }
        if !shown.contains("expected") {
            wrong.push("does not say what was expected".to_string());
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n    {shown}", case.name, wrong.join("; ")));
        }
    }
    assert!(CASES.len() >= 20);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn an_unreadable_file_names_itself() {
    let err = Config::load(Path::new("/nonexistent/lote.yaml")).unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.file, Path::new("/nonexistent/lote.yaml"));
    assert!(err
        .to_string()
        .starts_with("/nonexistent/lote.yaml: cannot read the config file"));
}

#[test]
fn an_empty_file_says_what_it_needs() {
    let err = Config::from_yaml("# nothing\n", Path::new("empty.yaml")).unwrap_err();
    eprintln!("{err}");
    assert!(err
        .to_string()
        .contains("expected a mapping with at least `source:` and `handler:`"));
}

/// SPEC §3.6: a lines file ending `.ndjson` or `.jsonl` is NDJSON unless
/// `format:` says otherwise, and `lote check` prints the format it chose.
#[test]
fn a_lines_file_named_ndjson_or_jsonl_reads_ndjson_unless_format_says_otherwise() {
    use lote::source::lines::LinesFormat;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("items.ndjson", "", LinesFormat::Ndjson),
        ("items.jsonl", "", LinesFormat::Ndjson),
        ("items.jsonl", "  format: text\n", LinesFormat::Text),
        ("items.txt", "", LinesFormat::Text),
        ("items.ndjson.txt", "", LinesFormat::Text),
        ("items.txt", "  format: ndjson\n", LinesFormat::Ndjson),
        ("\"-\"", "", LinesFormat::Text),
    ];
    for (path, format, expected) in cases {
        let yaml = with_state(
            dir.path(),
            &format!("source:\n  kind: lines\n  path: {path}\n{format}handler:\n  kind: noop\n"),
        );
        let config = Config::from_yaml(&yaml, Path::new("lines.yaml")).unwrap();
        let SourceSpec::Lines(lines) = &config.source else {
            panic!("{path}: a lines source")
        };
        assert_eq!(lines.format, expected, "{path} {format}");
        let spelled = if expected == LinesFormat::Ndjson {
            "ndjson"
        } else {
            "text"
        };
        let effective = config.effective_yaml();
        assert!(
            effective.contains(&format!("format: {spelled}")),
            "{path}:\n{effective}"
        );
    }
}
