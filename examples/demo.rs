//! The demo: a real session over the sample readings shipped in the repo,
//! persisted through the write-behind thread.
//!
//! Each line of `samples/readings.txt` is one item. The handler turns a
//! reading into a JSON document, the way an uplink handler would before
//! sending it; two malformed readings the demo adds fail for good and go to
//! the dead-letter sink,
//! and a simulated flaky uplink makes some first attempts fail so the retry
//! policy shows. Two workers, commits every 5 outcomes, a 10 s deadline, a
//! circuit breaker. Outcomes land in `state/demo-outcomes.db` (SQLite, table
//! `outcomes`), dead letters in `state/demo-dead-letter.jsonl`; a second run
//! upserts the same rows.
//!
//! Run: cargo run --release --example demo [-- path/to/readings.txt]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use lote::policy::{Breaker, BreakerConfig, CallPolicy, RetryPolicy, WhenOpen};
use lote::sink::{JsonlConfig, JsonlSink, Role, Sink, SqliteConfig, SqliteSink};
use lote::source::VecSource;
use lote::writer::{Writer, WriterConfig};
use lote::{CallContext, Failure, Item, Session, SessionConfig, Status};

/// Parses `sensor=NAME celsius=VALUE` into a JSON document.
fn to_json(line: &str) -> Result<String, String> {
    let mut sensor = None;
    let mut celsius = None;
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("sensor", name)) => sensor = Some(name),
            Some(("celsius", value)) => {
                celsius = Some(
                    value
                        .parse::<f64>()
                        .map_err(|_| format!("celsius is not a number: {value:?}"))?,
                )
            }
            _ => return Err(format!("unexpected field {field:?}")),
        }
    }
    let sensor = sensor.ok_or("no sensor= field")?;
    let celsius = celsius.ok_or("no celsius= field")?;
    Ok(format!("{{\"sensor\":\"{sensor}\",\"celsius\":{celsius}}}"))
}

fn main() -> Result<(), Box<dyn Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "samples/readings.txt".to_string());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // Two malformed readings of our own, so the dead-letter path shows.
    let malformed = ["sensor=boiler-2 celsius=not-a-number", "sensor=intake"];
    let items = text
        .lines()
        .chain(malformed)
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| Item::new(format!("line-{}", n + 1), line.as_bytes().to_vec()));
    let source = Arc::new(VecSource::new(items));
    let outcomes_db = std::path::Path::new("state/demo-outcomes.db");
    let dead_letters = std::path::Path::new("state/demo-dead-letter.jsonl");
    let writer = Arc::new(Writer::start(
        WriterConfig {
            batch: 50,
            flush_every: Duration::from_millis(200),
            ..WriterConfig::default()
        },
        Box::new(SqliteSink::open(SqliteConfig::new(outcomes_db, Role::Outcomes))?),
        Some(Box::new(JsonlSink::open(JsonlConfig::new(
            dead_letters,
            Role::DeadLetter,
        ))?)),
        source.clone(),
    )?);

    let handler = Arc::new(|ctx: &CallContext<'_>, item: &Item| {
        let line = std::str::from_utf8(&item.payload).map_err(|_| Failure::fatal("not UTF-8"))?;
        let document = to_json(line).map_err(Failure::fatal)?;
        // A flaky uplink: every third item's first attempt times out.
        let n: u32 = item.id.trim_start_matches("line-").parse().unwrap_or(0);
        if n.is_multiple_of(3) && ctx.attempt() == 1 {
            return Err(Failure::retryable("uplink timed out"));
        }
        std::thread::sleep(Duration::from_millis(20)); // the upload itself
        Ok(document)
    });

    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            jitter: 0.2,
            ..RetryPolicy::default()
        },
        breaker: Some(Arc::new(Breaker::new(BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(2),
            half_open_probes: 1,
        }))),
        when_open: WhenOpen::Wait,
        timeout: Some(Duration::from_secs(2)),
    };
    let config = SessionConfig {
        threads: 2,
        chunk: 5,
        max_items: 500,
        deadline: Some(Duration::from_secs(10)),
        ..SessionConfig::default()
    };
    let metrics = Arc::new(lote::metrics::Metrics::new());
    let summary = Session::new(config, source.clone(), handler, writer.clone())
        .policy(policy)
        .metrics(metrics.clone())
        .run()?;
    let drained = writer.close();
    println!("{summary}");
    println!(
        "writer: {} outcome(s) durable in {} batch(es), {} unwritten",
        writer.metrics().persisted.get(),
        writer.metrics().batches.get(),
        drained.unwritten
    );

    // Read back what is durable, as any SQLite client would.
    let mut records = SqliteSink::open(SqliteConfig::new(outcomes_db, Role::Outcomes))?.records()?;
    records.sort_by_key(|r| r.id.trim_start_matches("line-").parse::<u32>().unwrap_or(0));
    println!("{} (table outcomes):", outcomes_db.display());
    for r in &records {
        let text = if r.status == Status::Done.as_str() {
            &r.output
        } else {
            &r.error
        };
        println!(
            "  {:8} {:7} attempts={} {}",
            r.id,
            r.status,
            r.attempts,
            text.as_deref().unwrap_or("")
        );
    }
    let letters = lote::dead_letter::list(&mut JsonlSink::open(JsonlConfig::new(dead_letters, Role::DeadLetter))?)?;
    println!(
        "{}: {} dead letter(s), payload kept for requeue",
        dead_letters.display(),
        letters.len()
    );
    let (handler, end_to_end) = (metrics.handler_time.snapshot(), metrics.end_to_end.snapshot());
    println!(
        "retries={} handler p50={}µs p99={}µs end-to-end p99={}µs",
        metrics.retries.get(),
        handler.p50.as_micros(),
        handler.p99.as_micros(),
        end_to_end.p99.as_micros()
    );
    Ok(())
}
