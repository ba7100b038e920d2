//! End to end through the write-behind thread, against raw writes of the
//! same rows in the same run:
//!
//! - in-memory source → noop handler → write-behind → SQLite sink, against a
//!   raw rusqlite program inserting the same rows, 1000 per transaction, WAL,
//!   synchronous NORMAL;
//! - the same into the JSONL sink, against a raw `BufWriter` writing the same
//!   lines with an fsync every 1000.
//!
//! The raw programs get their rows and lines ready-made before the clock
//! starts; lote's time covers everything from making the items to the last
//! acknowledgement.
//!
//! Run: `cargo bench --bench sink` (`LOTE_BENCH_ITEMS` overrides the 1M).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lote::handler::Noop;
use lote::sink::{JsonlConfig, JsonlSink, Record, Role, Sink, SqliteConfig, SqliteSink};
use lote::{Item, Outcome, QueueConfig, Session, SessionConfig, Status};

mod common;

use common::Generated;

const DEFAULT_ITEMS: usize = 1_000_000;

fn lote_end_to_end(items: usize, sink: Box<dyn Sink>) -> Duration {
    let source = Arc::new(Generated::new(items, |i| Item::new(i.to_string(), Vec::new())));
    let started = Instant::now();
    let writer = Arc::new(common::writer(sink, source.clone()));
    let config = SessionConfig {
        threads: 2,
        chunk: 100,
        queue: QueueConfig::new(1024),
        pull_batch: 256,
        ..SessionConfig::default()
    };
    let summary = Session::new(config, source.clone(), Arc::new(Noop), writer.clone())
        .run()
        .unwrap();
    let report = writer.close();
    let elapsed = started.elapsed();
    assert_eq!(summary.counts.done as usize, items);
    assert_eq!(report.unwritten, 0);
    assert_eq!(source.acked(), items, "every outcome durable and acked");
    elapsed
}

/// The records lote writes for `items` noop outcomes.
fn records(items: usize) -> impl Iterator<Item = Record> {
    (0..items).map(|i| {
        let now = SystemTime::now();
        Record::new(
            &Outcome {
                item: Item::new(i.to_string(), Vec::new()),
                status: Status::Done,
                attempts: 1,
                output: Some(String::new()),
                error: None,
                started_at: now,
                finished_at: now,
                duration: Duration::ZERO,
            },
            Role::Outcomes,
        )
    })
}

/// The raw program gets its rows ready-made: only the inserts are timed.
fn raw_rusqlite(items: usize, path: &Path) -> Duration {
    let rows: Vec<Record> = records(items).collect();
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE outcomes(id TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL, output TEXT, \
         error TEXT, started_at TEXT NOT NULL, finished_at TEXT NOT NULL, duration_ms INTEGER NOT NULL)",
    )
    .unwrap();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO outcomes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .unwrap();
            for r in rows.by_ref().take(1000) {
                insert
                    .execute(rusqlite::params![
                        r.id,
                        r.status,
                        r.attempts,
                        r.output,
                        r.error,
                        r.started_at,
                        r.finished_at,
                        r.duration_ms as i64
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    started.elapsed()
}

/// The raw program gets its lines ready-made: only the writes are timed.
fn raw_bufwriter(items: usize, path: &Path) -> Duration {
    let lines: Vec<String> = records(items)
        .map(|r| serde_json::to_string(&r).unwrap() + "\n")
        .collect();
    let started = Instant::now();
    let file = File::create(path).unwrap();
    let mut out = BufWriter::new(file);
    for (n, line) in lines.iter().enumerate() {
        out.write_all(line.as_bytes()).unwrap();
        if (n + 1) % 1000 == 0 {
            out.flush().unwrap();
            out.get_ref().sync_data().unwrap();
        }
    }
    out.flush().unwrap();
    out.get_ref().sync_data().unwrap();
    started.elapsed()
}

fn rate(items: usize, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64()
}

fn main() {
    let items = std::env::var("LOTE_BENCH_ITEMS")
        .ok()
        .map(|v| v.trim().parse::<usize>().expect("LOTE_BENCH_ITEMS must be a number"))
        .unwrap_or(DEFAULT_ITEMS);
    println!("sink bench: {items} items, noop handler, 2 workers, sink batch 1000 (best of 3 runs each)");
    let mut rows = Vec::new();
    for (name, target) in [("sqlite", 0.5), ("jsonl", 0.5)] {
        let mut lote_best = f64::MIN;
        let mut raw_best = f64::MIN;
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (lote, raw) = if name == "sqlite" {
                let sink = SqliteSink::open(SqliteConfig::new(dir.path().join("lote.db"), Role::Outcomes)).unwrap();
                (
                    lote_end_to_end(items, Box::new(sink)),
                    raw_rusqlite(items, &dir.path().join("raw.db")),
                )
            } else {
                let config = JsonlConfig {
                    rotate_bytes: None,
                    ..JsonlConfig::new(dir.path().join("lote.jsonl"), Role::Outcomes)
                };
                let sink = JsonlSink::open(config).unwrap();
                (
                    lote_end_to_end(items, Box::new(sink)),
                    raw_bufwriter(items, &dir.path().join("raw.jsonl")),
                )
            };
            lote_best = lote_best.max(rate(items, lote));
            raw_best = raw_best.max(rate(items, raw));
        }
        rows.push((name, lote_best, raw_best, target));
    }
    println!();
    println!(
        "{:<8} {:>16} {:>16} {:>8}",
        "sink", "lote items/s", "raw rows/s", "ratio"
    );
    for (name, lote, raw, _) in &rows {
        println!(
            "{name:<8} {:>14.2} M {:>14.2} M {:>7.2}×",
            lote / 1e6,
            raw / 1e6,
            lote / raw
        );
    }
    println!();
    for (name, lote, raw, target) in &rows {
        println!(
            "sink bench: {name} end to end = {:.2}× raw (target ≥ {target}×)",
            lote / raw
        );
    }
}
