//! The config's promises of issue 8, against the real binary:
//!
//! - Nothing `lote check` accepts makes `lote run` panic, abort or hang
//!   (every number, size and duration is bounded, and the largest allowed
//!   values run).
//! - Config errors always point somewhere and never read without bounds
//!   (YAML-level errors keep file:line:column; only a regular file of at
//!   most 1 MiB is read; deep nesting and alias bombs fail fast).
//! - `lote check` accepts only what `lote run` can start, and changes
//!   nothing on disk.
//!
//! Every child runs under a timeout, so a hang fails the test instead of
//! blocking it.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const LOTE: &str = env!("CARGO_BIN_EXE_lote");

/// How a `lote` child ended.
struct Ran {
    /// `None`: killed after the timeout.
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs `lote args` in `dir` with output in files, killed after `limit`.
fn lote(dir: &Path, args: &[&str], limit: Duration) -> Ran {
    let out = tempfile::NamedTempFile::new_in(dir).unwrap();
    let err = tempfile::NamedTempFile::new_in(dir).unwrap();
    let started = Instant::now();
    let mut child = Command::new(LOTE)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code,
        stderr: fs::read_to_string(err.path()).unwrap_or_default(),
        took: started.elapsed(),
    }
}

fn check(dir: &Path, config: &Path) -> Ran {
    lote(dir, &["check", "-c", config.to_str().unwrap()], Duration::from_secs(20))
}

fn run_once(dir: &Path, config: &Path) -> Ran {
    lote(
        dir,
        &["run", "--once", "-c", config.to_str().unwrap()],
        Duration::from_secs(30),
    )
}

/// `state_dir` under `dir`, a two-line lines file, a noop handler, then `rest`.
fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn items(dir: &Path) -> PathBuf {
    let path = dir.join("items.txt");
    fs::write(&path, "one\ntwo\n").unwrap();
    path
}

/// The 1-based line of `piece` in `text`.
fn line_of(text: &str, piece: &str) -> usize {
    text.lines().position(|l| l.contains(piece)).expect(piece) + 1
}

// ------------------------------------------------------------------ point 9

/// (key, a section holding the hostile value, the piece of its line, the range the error must state)
const HOSTILE: &[(&str, &str, &str, &str)] = &[
    (
        "sink.busy_timeout",
        "sink:\n  kind: sqlite\n  busy_timeout: 25d\n",
        "busy_timeout",
        "up to 24days",
    ),
    (
        "handler.timeout",
        "handler:\n  kind: noop\n  timeout: 18446744073709551615s\n",
        "timeout:",
        "up to 30days",
    ),
    (
        "sink.flush_every",
        "sink:\n  kind: sqlite\n  flush_every: 18446744073709551615s\n",
        "flush_every",
        "up to 30days",
    ),
    (
        "sink.drain_timeout",
        "sink:\n  kind: sqlite\n  drain_timeout: 18446744073709551615s\n",
        "drain_timeout",
        "up to 30days",
    ),
    (
        "metrics.log_every",
        "metrics:\n  log_every: 18446744073709551615s\n",
        "log_every",
        "up to 30days",
    ),
    ("metrics.every", "metrics:\n  every: 100000d\n", "every", "up to 30days"),
    (
        "session.chunk",
        "session:\n  chunk: 1000000000\n",
        "chunk",
        "from 1 to 100000",
    ),
    (
        "sink.batch",
        "sink:\n  kind: sqlite\n  batch: 1000000000\n",
        "batch",
        "from 1 to 100000",
    ),
    (
        "session.threads",
        "session:\n  threads: 100000\n",
        "threads",
        "from 1 to 1024",
    ),
    (
        "queue.capacity",
        "queue:\n  capacity: 18446744073709551615\n",
        "capacity",
        "from 1 to 1000000",
    ),
    (
        "session.deadline",
        "session:\n  deadline: 1000000000000s\n",
        "deadline",
        "up to 30days",
    ),
    ("session.every", "session:\n  every: 99999d\n", "every", "up to 30days"),
    (
        "session.poll_every",
        "session:\n  poll_every: 99999d\n",
        "poll_every",
        "up to 30days",
    ),
    (
        "session.max_items",
        "session:\n  max_items: 18446744073709551615\n",
        "max_items",
        "from 0 to 1000000000000",
    ),
    (
        "queue.block_timeout",
        "queue:\n  block_timeout: 99999d\n",
        "block_timeout",
        "up to 30days",
    ),
    (
        "handler.retry.attempts",
        "handler:\n  kind: noop\n  retry:\n    attempts: 4000000000\n",
        "attempts",
        "from 1 to 1000",
    ),
    (
        "handler.retry.max_backoff",
        "handler:\n  kind: noop\n  retry:\n    max_backoff: 99999d\n",
        "max_backoff",
        "up to 30days",
    ),
    (
        "handler.retry.max_retry_after",
        "handler:\n  kind: noop\n  retry:\n    max_retry_after: 99999d\n",
        "max_retry_after",
        "up to 30days",
    ),
    (
        "session.chunk_wait",
        "session:\n  chunk_wait: 99999d\n",
        "chunk_wait",
        "up to 30days",
    ),
    (
        "handler.breaker.open_for",
        "handler:\n  kind: noop\n  breaker:\n    open_for: 99999d\n",
        "open_for",
        "up to 30days",
    ),
    (
        "handler.kill_grace",
        "handler:\n  kind: exec\n  command: [/bin/cat]\n  kill_grace: 99999d\n",
        "kill_grace",
        "up to 30days",
    ),
    (
        "handler.output_limit",
        "handler:\n  kind: exec\n  command: [/bin/cat]\n  output_limit: 17179869184\n",
        "output_limit",
        "up to 1GiB",
    ),
    (
        "handler.connect_timeout",
        "handler:\n  kind: http\n  url: http://127.0.0.1:9/\n  connect_timeout: 99999d\n",
        "connect_timeout",
        "up to 30days",
    ),
    (
        "sink.max_retries",
        "sink:\n  kind: sqlite\n  max_retries: 4000000000\n",
        "max_retries",
        "from 0 to 1000",
    ),
    (
        "sink.keep_files",
        "sink:\n  kind: jsonl\n  keep_files: 1000000000\n",
        "keep_files",
        "from 0 to 1000",
    ),
    (
        "sink.rotate_bytes",
        "sink:\n  kind: jsonl\n  rotate_bytes: 16777216GiB\n",
        "rotate_bytes",
        "up to 1024GiB",
    ),
];

#[test]
fn nothing_check_accepts_makes_run_panic_abort_or_hang_hostile_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let mut failures = Vec::new();
    let mut cases: Vec<(String, String, String, String)> = HOSTILE
        .iter()
        .filter(|(_, section, ..)| !section.is_empty())
        .map(|(key, section, piece, range)| {
            (
                key.to_string(),
                section.to_string(),
                piece.to_string(),
                range.to_string(),
            )
        })
        .collect();
    // Sections with a `source:` of their own.
    cases.push((
        "source.busy_timeout".into(),
        format!(
            "source:\n  kind: sqlite\n  path: {}\n  table: t\n  busy_timeout: 25d\n",
            dir.path().join("w.db").display()
        ),
        "busy_timeout".into(),
        "up to 24days".into(),
    ));
    cases.push((
        "source.max_bytes".into(),
        format!(
            "source:\n  kind: spool\n  path: {}\n  max_bytes: 2GiB\n",
            dir.path().join("spool").display()
        ),
        "max_bytes".into(),
        "up to 1GiB".into(),
    ));
    for (key, section, piece, range) in &cases {
        let mut text = format!("state_dir: {}\n", dir.path().join("state").display());
        if !section.starts_with("source:") {
            text.push_str(&format!("source: {{kind: lines, path: {}}}\n", items.display()));
        }
        if !section.starts_with("handler:") {
            text.push_str("handler: {kind: noop}\n");
        }
        text.push_str(section);
        let config = write_config(dir.path(), "hostile.yaml", &text);
        let ran = check(dir.path(), &config);
        let line = line_of(&text, piece);
        let shown = ran.stderr.trim();
        let wanted = format!("hostile.yaml:{line}:");
        if ran.code != Some(1)
            || !shown.contains(&wanted)
            || !shown.contains(&format!("{key}:"))
            || !shown.contains(range.as_str())
        {
            failures.push(format!(
                "{key}: exit {:?}, wanted {wanted} {key}: … {range}\n    {shown}",
                ran.code
            ));
        } else {
            eprintln!("{key:<28} {shown}");
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A tiny HTTP server answering 200 to every request, for the http config.
fn http_ok() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut seen = Vec::new();
                let mut buf = [0; 4096];
                // The request's head and body are small: one read each is enough to answer.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn nothing_check_accepts_makes_run_panic_abort_or_hang_the_largest_values_run() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let spool = dir.path().join("spool");
    fs::create_dir(&spool).unwrap();
    let port = http_ok();
    let state = |n: usize| dir.path().join(format!("state{n}")).display().to_string();
    let session = "session:\n  threads: 1024\n  chunk: 100000\n  chunk_wait: 30d\n  max_items: 1000000000000\n  \
                   deadline: 30d\n  poll_every: 30d\n\
                   queue:\n  capacity: 1000000\n  block_timeout: 30d\n";
    let configs = [
        format!(
            "state_dir: {}\n{session}source:\n  kind: lines\n  path: {}\n  max_bytes: 1GiB\n\
             handler:\n  kind: exec\n  command: [/bin/cat]\n  timeout: 30d\n  kill_grace: 30d\n  \
             output_limit: 1GiB\n  retry: {{attempts: 1000, backoff: 30d, max_backoff: 30d, max_retry_after: 30d}}\n  \
             breaker: {{failures: 8388607, open_for: 30d, half_open_probes: 8388607}}\n\
             sink:\n  kind: sqlite\n  busy_timeout: 24d\n  batch: 100000\n  flush_every: 30d\n  \
             max_retries: 1000\n  drain_timeout: 30d\n\
             dead_letter:\n  kind: sqlite\n  busy_timeout: 24d\n\
             metrics:\n  every: 30d\n  log_every: 30d\n  textfile: lote.prom\n",
            state(1),
            items.display()
        ),
        format!(
            "state_dir: {}\nsession:\n  every: 30d\n  threads: 1024\n  chunk: 100000\n\
             source:\n  kind: spool\n  path: {}\n  stable_for: 30d\n  max_bytes: 1GiB\n\
             handler: {{kind: noop}}\n\
             sink:\n  kind: jsonl\n  rotate_bytes: 1024GiB\n  keep_files: 1000\n  batch: 100000\n  \
             flush_every: 30d\n  drain_timeout: 30d\n\
             dead_letter:\n  kind: jsonl\n  rotate_bytes: 1024GiB\n  keep_files: 1000\n",
            state(2),
            spool.display()
        ),
        format!(
            "state_dir: {}\n{session}source:\n  kind: lines\n  path: {}\n\
             handler:\n  kind: http\n  url: http://127.0.0.1:{port}/\n  timeout: 30d\n  connect_timeout: 30d\n  \
             output_limit: 1GiB\n  breaker: {{open_for: 30d}}\n",
            state(3),
            items.display()
        ),
    ];
    // An empty spool: with `stable_for: 30d` a new file would (rightly)
    // wait a month before a once-run takes it.
    for (i, text) in configs.iter().enumerate() {
        let config = write_config(dir.path(), &format!("max{i}.yaml"), text);
        let checked = check(dir.path(), &config);
        assert_eq!(checked.code, Some(0), "config {i} refused:\n{}\n{text}", checked.stderr);
        let ran = run_once(dir.path(), &config);
        eprintln!("config {i}: exit {:?} after {:?}", ran.code, ran.took);
        assert_eq!(
            ran.code,
            Some(0),
            "config {i}: `lote run --once` did not finish normally (None = hung):\n{}",
            ran.stderr
        );
        assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    }
}

// ----------------------------------------------------------------- point 11

/// (name, bytes after a valid head, a piece of the line the error must
/// point at — "" for any line — and words it must say)
fn yaml_level_cases() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    vec![
        (
            "two documents",
            b"log: info\n---\nlog: warn\n".to_vec(),
            "---",
            "more than one YAML document",
        ),
        (
            "content after ...",
            b"log: info\n...\nlog: warn\n".to_vec(),
            "log: warn",
            "more than one YAML document",
        ),
        ("bad UTF-8", b"log: in\xff\xfefo\n".to_vec(), "log: in", "not UTF-8"),
        (
            "a control character",
            b"log: in\x01fo\n".to_vec(),
            "log: in",
            "control character U+0001",
        ),
        (
            "a NUL byte",
            b"log: in\x00fo\n".to_vec(),
            "log: in",
            "control character U+0000",
        ),
        (
            "an unknown anchor",
            b"log: *nope\n".to_vec(),
            "log: *nope",
            "unknown anchor",
        ),
        (
            "billion laughs",
            {
                let mut text = String::from("x:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
                let mut prev = 'a';
                for name in "bcdefghi".chars() {
                    text.push_str(&format!(
                        "  {name}: &{name} [{}]\n",
                        vec![format!("*{prev}"); 9].join(", ")
                    ));
                    prev = name;
                }
                text.into_bytes()
            },
            "a: &a",
            "aliases",
        ),
        (
            "one alias list to a large anchor",
            format!(
                "x: &a [{}]\ny: [{}]\n",
                vec!["x"; 50_000].join(","),
                vec!["*a"; 100_000].join(",")
            )
            .into_bytes(),
            "x: &a",
            "aliases",
        ),
        (
            "deep flow nesting",
            format!("x: {}\n", "[".repeat(200_000)).into_bytes(),
            "x: [",
            "nested a few levels",
        ),
        (
            "deep flow mappings",
            format!("x: {}\n", "{a: ".repeat(100_000)).into_bytes(),
            "x: {a:",
            "nested a few levels",
        ),
        (
            "deep block nesting",
            format!(
                "x:\n{}",
                (0..300)
                    .map(|i| format!("{}k:\n", " ".repeat(i + 2)))
                    .collect::<String>()
            )
            .into_bytes(),
            "",
            "nested too deep",
        ),
    ]
}

#[test]
fn config_errors_always_point_somewhere() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let head = format!(
        "state_dir: {}\nsource: {{kind: lines, path: {}}}\nhandler: {{kind: noop}}\n",
        dir.path().join("state").display(),
        items.display()
    );
    let mut failures = Vec::new();
    for (name, tail, piece, words) in yaml_level_cases() {
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&tail);
        let path = dir.path().join("bad.yaml");
        fs::write(&path, &bytes).unwrap();
        let ran = check(dir.path(), &path);
        // The first line holding the piece, after the head.
        let place = match piece {
            "" => "bad.yaml:".to_string(),
            piece => format!(
                "bad.yaml:{}:",
                head.lines().count() + line_of(&String::from_utf8_lossy(&tail), piece)
            ),
        };
        let shown: String = ran.stderr.trim().chars().take(400).collect();
        let located = shown
            .split_once(&place)
            .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()));
        if ran.code != Some(1) || !located || !shown.contains(words) || !shown.contains("expected") {
            failures.push(format!(
                "{name}: exit {:?}, wanted {place} … {words}\n    {shown}",
                ran.code
            ));
        } else if ran.took > Duration::from_secs(5) {
            failures.push(format!("{name}: took {:?}", ran.took));
        } else {
            eprintln!("{name:<34} {:>6}ms {shown}", ran.took.as_millis());
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn config_is_never_read_without_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = dir.path().join("big.yaml");
    fs::write(&big, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    for (path, words) in [
        (Path::new("/dev/zero"), "a character device, not a regular file"),
        (fifo.as_path(), "a FIFO (named pipe), not a regular file"),
        (dir.path(), "a directory, not a regular file"),
        (big.as_path(), "more than the 1MiB a config may have"),
    ] {
        let ran = check(dir.path(), path);
        eprintln!("{:<40} {:?} {}", path.display(), ran.took, ran.stderr.trim());
        assert_eq!(ran.code, Some(1), "{}: {}", path.display(), ran.stderr);
        assert!(ran.stderr.contains(words), "{}: {}", path.display(), ran.stderr);
        assert!(
            ran.took < Duration::from_secs(10),
            "{}: took {:?}",
            path.display(),
            ran.took
        );
    }
}

// ----------------------------------------------------------------- point 12

#[test]
fn check_accepts_only_what_run_can_start() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let a_file = dir.path().join("a-file");
    fs::write(&a_file, "not a directory").unwrap();
    let a_dir = dir.path().join("a-dir");
    fs::create_dir(&a_dir).unwrap();
    let lines = format!("source: {{kind: lines, path: {}}}\n", items.display());
    let noop = "handler: {kind: noop}\n";
    // (name, sections after `state_dir:`, the key the refusal must name)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an empty sink path",
            format!("{lines}{noop}sink: {{kind: jsonl, path: \"\"}}\n"),
            "sink.path",
        ),
        (
            "a NUL in a path",
            format!("{lines}{noop}sink: {{kind: jsonl, path: \"out\\0.jsonl\"}}\n"),
            "sink.path",
        ),
        (
            "an empty spool path",
            format!("source: {{kind: spool, path: \"\"}}\n{noop}"),
            "source.path",
        ),
        (
            "a sink path that is a directory",
            format!("{lines}{noop}sink: {{kind: sqlite, path: {}}}\n", a_dir.display()),
            "sink.path",
        ),
        (
            "a textfile that is a directory",
            format!("{lines}{noop}metrics: {{textfile: {}}}\n", a_dir.display()),
            "metrics.textfile",
        ),
        (
            "a lines path that is a directory",
            format!("source: {{kind: lines, path: {}}}\n{noop}", a_dir.display()),
            "source.path",
        ),
        (
            "a spool path that is a file",
            format!("source: {{kind: spool, path: {}}}\n{noop}", a_file.display()),
            "source.path",
        ),
        (
            "a program not in PATH",
            format!("{lines}handler: {{kind: exec, command: [lote-no-such-program]}}\n"),
            "handler.command",
        ),
        (
            "a workdir that does not exist",
            format!(
                "{lines}handler: {{kind: exec, command: [/bin/cat], workdir: {}}}\n",
                dir.path().join("nowhere").display()
            ),
            "handler.workdir",
        ),
        (
            "an unknown HTTP method",
            format!("{lines}handler: {{kind: http, url: \"http://127.0.0.1:9/\", method: FOO}}\n"),
            "handler.method",
        ),
        (
            "a header lote sets itself",
            format!("{lines}handler: {{kind: http, url: \"http://127.0.0.1:9/\", headers: {{Idempotency-Key: x}}}}\n"),
            "handler.headers",
        ),
    ];
    let mut failures = Vec::new();
    for (name, sections, key) in &cases {
        let state = dir.path().join("state");
        let text = format!("state_dir: {}\n{sections}", state.display());
        let config = write_config(dir.path(), "c.yaml", &text);
        let checked = check(dir.path(), &config);
        let shown = checked.stderr.trim().to_string();
        if checked.code != Some(1) || !shown.contains(&format!("{key}:")) || !shown.contains("c.yaml:") {
            failures.push(format!(
                "{name}: check exit {:?}, wanted {key}\n    {shown}",
                checked.code
            ));
        } else {
            eprintln!("{name:<34} {shown}");
        }
        // Every case is one `lote run` refuses too (an empty spool path used
        // to be taken as `state_dir` itself, and its files as items; a
        // textfile path that is a directory was only warned about, forever).
        let ran = run_once(dir.path(), &config);
        if ran.code != Some(1) {
            failures.push(format!("{name}: `lote run` did not refuse (exit {:?})", ran.code));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // A missing lines file: `run` refuses, `check` warns (the file may be
    // made before the run) and says so.
    let missing = dir.path().join("not-yet.txt");
    let text = format!(
        "state_dir: {}\nsource: {{kind: lines, path: {}}}\n{noop}",
        dir.path().join("state").display(),
        missing.display()
    );
    let config = write_config(dir.path(), "c.yaml", &text);
    assert_ne!(run_once(dir.path(), &config).code, Some(0));
    let checked = check(dir.path(), &config);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(
        checked.stderr.contains("warning: source.path") && checked.stderr.contains("does not exist (yet)"),
        "{}",
        checked.stderr
    );
}

/// Every path under `root`, sorted, with its kind.
fn listing(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            all.push(format!(
                "{} {}",
                if kind.is_dir() { "d" } else { "f" },
                entry.path().display()
            ));
            if kind.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    all.sort();
    all
}

#[test]
fn check_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir: {state}\nsource: {{kind: spool, path: {root}/spool/in}}\nhandler: {{kind: noop}}\n\
         sink: {{kind: sqlite, path: {root}/db/outcomes.db}}\n\
         dead_letter: {{kind: jsonl, path: {root}/dead/letters.jsonl}}\nmetrics: {{textfile: prom/lote.prom}}\n",
        state = dir.path().join("state/deep").display(),
        root = dir.path().display(),
    );
    let config = write_config(dir.path(), "c.yaml", &text);
    let before = listing(dir.path());
    let ran = check(dir.path(), &config);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let checked_twice = check(dir.path(), &config);
    assert_eq!(checked_twice.code, Some(0), "{}", checked_twice.stderr);
    assert_eq!(listing(dir.path()), before, "`lote check` changed the disk");
    // `run` creates what `check` only looked at.
    let ran = run_once(dir.path(), &config);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for made in [
        "state/deep/status.json",
        "db/outcomes.db",
        "spool/in",
        "state/deep/prom",
    ] {
        assert!(dir.path().join(made).exists(), "{made} was not created by run");
    }
}
