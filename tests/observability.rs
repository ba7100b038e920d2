//! Status and metrics from real parts (SPEC §3.7, §3.8): a daemon's
//! `Metrics` filled by real sessions, a real write-behind thread over a JSONL
//! sink, a real breaker opened by failures. The status file round-trips, the
//! queue warning fires at 80 % of a live queue, the Prometheus text passes
//! `promtool check metrics` (or, without promtool, this file's own checker),
//! and a reader racing the writer never sees half a file.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

mod common;

use lote::metrics::Metrics;
use lote::policy::{Breaker, BreakerConfig, CallPolicy, RetryPolicy};
use lote::sink::{JsonlConfig, JsonlSink, Role};
use lote::source::VecSource;
use lote::status::prometheus;
use lote::status::{write_atomically, Status, StatusSources};
use lote::writer::{Writer, WriterConfig};
use lote::{CallContext, Failure, Item, QueueConfig, Session, SessionConfig, SessionSummary};

/// A daemon's long-lived parts: shared metrics, a writer, a breaker.
struct Daemon {
    dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
    writer: Arc<Writer>,
    breaker: Breaker,
    started_at: SystemTime,
}

impl Daemon {
    fn new() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonlSink::open(JsonlConfig::new(dir.path().join("outcomes.jsonl"), Role::Outcomes)).unwrap();
        let writer_source = Arc::new(VecSource::new(Vec::new()));
        let config = WriterConfig {
            flush_every: Duration::from_millis(20),
            ..WriterConfig::default()
        };
        Daemon {
            metrics: Arc::new(Metrics::new()),
            writer: Arc::new(Writer::start(config, Box::new(sink), None, writer_source).unwrap()),
            breaker: Breaker::new(BreakerConfig {
                failures: 3,
                open_for: Duration::from_secs(600),
                half_open_probes: 1,
            }),
            dir,
            started_at: SystemTime::now(),
        }
    }

    /// A session over `n` fresh items through this daemon's metrics and writer.
    fn session(&self, n: usize, config: SessionConfig, handler: impl lote::Handler + 'static) -> Session {
        let source = Arc::new(VecSource::numbered(n));
        Session::new(config, source, Arc::new(handler), self.writer.clone())
            .metrics(Arc::clone(&self.metrics))
            .policy(CallPolicy {
                retry: RetryPolicy {
                    attempts: 2,
                    backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(1),
                    jitter: 0.0,
                    ..RetryPolicy::default()
                },
                ..CallPolicy::default()
            })
    }

    /// A first, finished session: 40 items, every 10th fails for good,
    /// every 7th succeeds on its retry.
    fn run_first_session(&self) -> SessionSummary {
        let handler = |ctx: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
            let n: usize = item.id.parse().unwrap();
            thread::sleep(Duration::from_micros(300));
            if n.is_multiple_of(10) {
                Err(Failure::fatal(format!("item {n} is bad")))
            } else if n.is_multiple_of(7) && ctx.attempt() == 1 {
                Err(Failure::retryable("try again"))
            } else {
                Ok(format!("ok {n}"))
            }
        };
        let config = SessionConfig {
            threads: 2,
            chunk: 5,
            ..SessionConfig::default()
        };
        let summary = self.session(40, config, handler).run().unwrap();
        assert_eq!((summary.counts.done, summary.counts.failed), (36, 4), "{summary}");
        summary
    }

    /// Opens the breaker with three failed calls.
    fn open_breaker(&self) {
        // As the call policy does: the transition goes to the metrics.
        for _ in 0..3 {
            if let Some(moved) = self.breaker.try_acquire().unwrap().failure() {
                self.metrics.breaker_moved(moved, 3, self.breaker.config().open_for);
            }
        }
        assert_eq!(self.breaker.state().as_str(), "open");
    }

    fn capture(&self, state: &str, last: Option<&SessionSummary>) -> Status {
        Status::capture(
            StatusSources {
                metrics: &self.metrics,
                writer: Some(self.writer.metrics()),
                breaker: Some(&self.breaker),
                threads: 2,
                inbox: None,
                stopping: false,
            },
            state,
            "/etc/lote/config.yaml",
            self.started_at,
            if last.is_some() { 2 } else { 0 },
            last.map(|summary| (summary, SystemTime::now())),
        )
    }

    /// Runs a session of one worker and a queue of 10 whose handler holds
    /// the first item until `during` has looked at the full queue; returns
    /// what `during` returned.
    fn with_full_queue<T>(&self, during: impl FnOnce() -> T) -> T {
        let release = Arc::new(AtomicBool::new(false));
        let handler = {
            let release = Arc::clone(&release);
            move |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
                // Polled, not waited on a condvar: the test thread sets it once.
                while !release.load(Ordering::Acquire) {
                    thread::sleep(Duration::from_millis(1));
                }
                Ok(item.id.clone())
            }
        };
        let config = SessionConfig {
            threads: 1,
            chunk: 4,
            queue: QueueConfig::new(10),
            pull_batch: 4,
            ..SessionConfig::default()
        };
        let session = self.session(30, config, handler);
        thread::scope(|scope| {
            // Lets the handler go however this closure ends, so a failed
            // assertion below fails the test instead of hanging it.
            let _release = ReleaseOnDrop(Arc::clone(&release));
            let running = scope.spawn(|| session.run().unwrap());
            // Full once the worker holds one item and the producer has
            // filled the queue: then 10 (or 9, if the worker's pop came after
            // the producer filled it; the producer waits for low water, 7)
            // stay queued until the handler is released.
            let give_up = Instant::now() + Duration::from_secs(20);
            let full = || {
                let q = self.metrics.queue.stats()?.stats;
                (self.metrics.busy_workers.get() == 1 && q.high_water == q.capacity && q.len + 1 >= q.capacity)
                    .then_some(q)
            };
            while full().is_none() {
                assert!(
                    Instant::now() < give_up,
                    "the queue never filled: {:?}",
                    self.metrics.queue.stats()
                );
                thread::sleep(Duration::from_millis(2));
            }
            let seen = during();
            release.store(true, Ordering::Release);
            let summary = running.join().unwrap();
            assert_eq!(summary.counts.done, 30, "{summary}");
            seen
        })
    }
}

/// Sets its flag when dropped.
struct ReleaseOnDrop(Arc<AtomicBool>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Checks `text` against the exposition format with promtool if it is on
/// PATH, and always with [`check_exposition`].
fn check_metrics_text(dir: &Path, text: &str) {
    check_exposition(text).unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"));
    let file = dir.join("lote.prom");
    write_atomically(&file, text.as_bytes()).unwrap();
    common::promtool_check_metrics(&file);
}

/// A small checker of the text format 0.0.4: every sample line is
/// `name{labels} value`; every family has HELP and TYPE before its samples
/// and its samples together; counters end in `_total`; histogram buckets
/// are cumulative and end with `+Inf` equal to `_count`.
fn check_exposition(text: &str) -> Result<(), String> {
    let mut help = HashSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut closed_families = HashSet::new();
    let mut current: Option<String> = None;
    // Per histogram: (le, count) in order, and _count.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let mut sample_names = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            if !help.insert(name.clone()) || closed_families.contains(&name) {
                return Err(at(format!("second HELP for {name}")));
            }
            if let Some(previous) = current.replace(name) {
                closed_families.insert(previous);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (name, kind) = (words.next().unwrap(), words.next().unwrap_or(""));
            if current.as_deref() != Some(name) {
                return Err(at(format!("TYPE for {name} without its HELP just before")));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at(format!("counter {name} does not end in _total")));
            }
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("unexpected comment or blank line".into()));
        }
        let (name, labels, value) = parse_sample(line).map_err(at)?;
        sample_names.insert(name.clone());
        let family = current.clone().ok_or_else(|| at("sample before any HELP".into()))?;
        let kind = types.get(&family).ok_or_else(|| at(format!("{family} has no TYPE")))?;
        let belongs = match kind.as_str() {
            "histogram" => {
                [&family, "_bucket"].concat() == name
                    || [&family, "_sum"].concat() == name
                    || [&family, "_count"].concat() == name
            }
            _ => family == name,
        };
        if !belongs {
            return Err(at(format!("sample {name} outside its family (inside {family})")));
        }
        if kind == "histogram" {
            if name.ends_with("_bucket") {
                let le = labels.get("le").ok_or_else(|| at("bucket without le".into()))?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| at("bad le".into()))?
                };
                buckets.entry(family.clone()).or_default().push((le, value));
            } else if name.ends_with("_count") {
                counts.insert(family.clone(), value);
            }
        }
    }
    for (family, kind) in &types {
        if kind != "histogram" && !sample_names.contains(family) {
            return Err(format!("{family} has HELP and TYPE but no sample"));
        }
    }
    for (family, list) in &buckets {
        for pair in list.windows(2) {
            if pair[1].0 <= pair[0].0 || pair[1].1 < pair[0].1 {
                return Err(format!("{family}: buckets {pair:?} are not ascending and cumulative"));
            }
        }
        let last = list.last().unwrap();
        if last.0 != f64::INFINITY || Some(&last.1) != counts.get(family) {
            return Err(format!(
                "{family}: the last bucket {last:?} is not +Inf equal to _count"
            ));
        }
    }
    if types.values().filter(|k| *k == "histogram").count() != buckets.len() {
        return Err("a histogram without buckets".into());
    }
    Ok(())
}

/// `name{key="value",…} value` → its parts (label values unescaped).
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let name_ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !name_ok {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().ok_or("unclosed labels")?;
            match c {
                '}' if key.is_empty() => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("unclosed label value")?.1 {
                            '"' => break,
                            '\\' => match chars.next().ok_or("dangling escape")?.1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => return Err(format!("bad escape \\{c}")),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                c => return Err(format!("bad character {c:?} in labels")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name.to_string(), labels, value))
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .to_string()
}

#[test]
fn status_file_round_trips_with_every_part_filled() {
    let daemon = Daemon::new();
    let first = daemon.run_first_session();
    daemon.open_breaker();
    let status = daemon.with_full_queue(|| daemon.capture("running", Some(&first)));
    let path = daemon.dir.path().join("state/status.json");
    status.write(&path).unwrap();
    let read = Status::read(&path).unwrap();
    assert_eq!(read, status);

    // Every part is there and holds what the parts held.
    let queue = status.queue.as_ref().unwrap();
    assert_eq!(queue.capacity, 10);
    assert!(queue.len >= 9, "{queue:?}");
    let breaker = status.breaker.as_ref().unwrap();
    assert_eq!((breaker.state.as_str(), breaker.opens), ("open", 1));
    let writer = status.writer.as_ref().unwrap();
    assert_eq!(
        writer.counters.persisted, 40,
        "the first session's outcomes are durable"
    );
    assert!(writer.counters.batches >= 1 && writer.last_flush_ms > 0.0, "{writer:?}");
    let last = status.last_session.as_ref().unwrap();
    assert_eq!(
        (last.end.as_str(), last.counts.done, last.counts.failed),
        ("drained", 36, 4)
    );
    let c = &status.counters;
    assert_eq!((c.done, c.failed), (36, 4));
    assert!(c.retries >= 5, "items 7, 14, …, 35 retried: {c:?}");
    assert!(status.latency.handler.count >= 40 && status.latency.handler.p50_ms >= 0.3);
    assert_eq!(status.latency.end_to_end.count, 40);

    // The JSON contract: field names as the spec gives them.
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for key in [
        "pid",
        "version",
        "state",
        "config",
        "started_at",
        "updated_at",
        "sessions",
        "queue",
        "workers",
        "breaker",
        "writer",
        "counters",
        "latency",
        "last_session",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json:#}");
    }
    assert!(json["latency"]["handler"]["p99_ms"].is_f64());
    assert!(json["writer"]["oldest_unflushed_ms"].is_f64() || json["writer"]["oldest_unflushed_ms"].is_null());
    assert_eq!(json["last_session"]["end"], "drained");
    daemon.writer.close();
}

#[test]
fn display_summary_line_and_warnings_show_a_full_queue_and_an_open_breaker() {
    let daemon = Daemon::new();
    let first = daemon.run_first_session();
    daemon.open_breaker();
    let status = daemon.with_full_queue(|| daemon.capture("running", Some(&first)));
    // 9 or 10 queued: see `with_full_queue`.
    let len = status.queue.as_ref().unwrap().len;
    let warning = format!("queue at {}% ({len}/10)", len * 10);
    assert_eq!(status.warnings(), [warning.as_str(), "circuit breaker open"]);

    let line = status.summary_line();
    for needle in [
        &format!("queue {len}/10"),
        "workers 1/2 busy",
        "done 36 failed 4 returned 0",
        "breaker open",
        "persisted 40",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    assert!(!line.contains('\n'));

    let text = status.to_string();
    eprintln!("--- lote status ---\n{text}--- summary line ---\n{line}");
    assert!(text.lines().count() <= 15, "{text}");
    for needle in [
        "running",
        &format!("{len}/10 ({}%)", len * 10),
        "1/2 busy",
        "open, opened 1 time(s)",
        "persisted 40",
        "done 36, failed 4",
        "(drained)",
        &format!("warning   {warning}"),
        "warning   circuit breaker open",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }

    // Between sessions: no queue, no queue warning.
    let idle = daemon.capture("idle", Some(&first));
    assert_eq!(idle.queue, None);
    assert_eq!(idle.warnings(), ["circuit breaker open"]);
    assert!(
        idle.summary_line().starts_with("idle (between sessions) | "),
        "{}",
        idle.summary_line()
    );
    daemon.writer.close();
}

#[test]
fn prometheus_text_passes_promtool() {
    let daemon = Daemon::new();
    // Before anything ran: empty histograms, no queue.
    let empty = Status::capture(
        StatusSources {
            metrics: &daemon.metrics,
            writer: None,
            breaker: None,
            threads: 4,
            inbox: None,
            stopping: false,
        },
        "starting",
        "config.yaml",
        daemon.started_at,
        0,
        None,
    );
    check_metrics_text(daemon.dir.path(), &prometheus::render(&empty, &daemon.metrics));

    let first = daemon.run_first_session();
    daemon.open_breaker();
    // A value past the last bound and one in the histograms' overflow bucket.
    daemon.metrics.handler_time.record(Duration::from_secs(400));
    daemon.metrics.handler_time.record(Duration::from_secs(3 * 3600));
    let (status, text) = daemon.with_full_queue(|| {
        let status = daemon.capture("running", Some(&first));
        let text = prometheus::render(&status, &daemon.metrics);
        (status, text)
    });
    eprintln!("--- lote.prom ---\n{text}");
    check_metrics_text(daemon.dir.path(), &text);

    assert_eq!(sample(&text, "lote_up"), "1");
    assert_eq!(sample(&text, "lote_state{state=\"running\"}"), "1");
    assert_eq!(sample(&text, "lote_state{state=\"idle\"}"), "0");
    assert_eq!(sample(&text, "lote_items_total{outcome=\"done\"}"), "36");
    assert_eq!(sample(&text, "lote_items_total{outcome=\"failed\"}"), "4");
    assert_eq!(sample(&text, "lote_breaker_state{state=\"open\"}"), "1");
    assert_eq!(sample(&text, "lote_breaker_state{state=\"closed\"}"), "0");
    assert_eq!(sample(&text, "lote_breaker_opens_total"), "1");
    assert_eq!(
        sample(&text, "lote_queue_depth"),
        status.queue.as_ref().unwrap().len.to_string()
    );
    assert_eq!(sample(&text, "lote_queue_capacity"), "10");
    assert_eq!(sample(&text, "lote_writer_persisted_total"), "40");
    assert_eq!(sample(&text, "lote_build_info{version=\"0.1.0\"}"), "1");
    let handled = status.latency.handler.count;
    assert_eq!(sample(&text, "lote_handler_seconds_count"), handled.to_string());
    assert_eq!(
        sample(&text, "lote_handler_seconds_bucket{le=\"+Inf\"}"),
        handled.to_string()
    );
    assert_eq!(
        sample(&text, "lote_handler_seconds_bucket{le=\"300\"}"),
        (handled - 2).to_string(),
        "the two long calls are only under +Inf"
    );
    assert_eq!(sample(&text, "lote_end_to_end_seconds_count"), "40");

    // Between sessions and once stopped: no queue series, and lote_up 0 at the end.
    let stopped = daemon.capture("stopped", Some(&first));
    let text = prometheus::render(&stopped, &daemon.metrics);
    check_metrics_text(daemon.dir.path(), &text);
    assert!(!text.contains("lote_queue_depth"));
    assert_eq!(sample(&text, "lote_up"), "0");
    daemon.writer.close();
}

#[test]
fn own_checker_catches_what_promtool_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
    assert_eq!(check_exposition(good), Ok(()));
    for bad in [
        "a_total 1\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total one\n",
        "# HELP g G.\n# TYPE g gauge\ng{x=\"1} 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP g G.\n# TYPE g gauge\ng 1\n# HELP f F.\n# TYPE f gauge\nf 1\ng 2\n",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted:\n{bad}");
    }
}

#[test]
fn a_reader_racing_the_writer_never_sees_a_partial_file() {
    let daemon = Daemon::new();
    let path = daemon.dir.path().join("status.json");
    let base = daemon.capture("running", None);
    base.write(&path).unwrap();
    let writing = AtomicBool::new(true);
    let reads = thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0u32;
            while writing.load(Ordering::Acquire) {
                let status = Status::read(&path).unwrap_or_else(|e| panic!("read {reads}: {e}"));
                assert!(status.config.starts_with("/etc/lote/"), "{}", status.config);
                reads += 1;
            }
            reads
        });
        for i in 0..200usize {
            // Sizes vary so that a torn file could not pass as a whole one.
            let status = Status {
                sessions: i as u64,
                config: format!("/etc/lote/{}", "x".repeat(i * 37 % 4000)),
                ..base.clone()
            };
            status.write(&path).unwrap();
        }
        writing.store(false, Ordering::Release);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(Status::read(&path).unwrap().sessions, 199);
    let temporary: Vec<_> = fs::read_dir(daemon.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(temporary.is_empty(), "temporary files left behind: {temporary:?}");
    daemon.writer.close();
}
