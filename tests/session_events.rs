//! A session's events measure what they claim: end-to-end latency starts
//! when the source yields an item, and a queue rising past 80 % of its
//! capacity is counted once per crossing (SPEC §3.7).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::commit::{CommitError, MemoryCommitter};
use lote::metrics::Metrics;
use lote::sink::{DoneLookup, SinkError};
use lote::source::VecSource;
use lote::status::prometheus;
use lote::status::{Status, StatusSources};
use lote::{CallContext, Committer, Item, Outcome, Qos, QueueConfig, Session, SessionConfig};

/// The exactly-once lookup takes this long; nothing is ever done.
const LOOKUP: Duration = Duration::from_millis(150);

/// A committer whose done lookup is slow: the time an item spends between
/// the source and the queue.
struct SlowLookup(MemoryCommitter);

impl Committer for SlowLookup {
    fn commit(&self, chunk: Vec<Outcome>) -> Result<(), CommitError> {
        self.0.commit(chunk)
    }
    fn done_lookup(&self) -> Option<&dyn DoneLookup> {
        Some(self)
    }
}

impl DoneLookup for SlowLookup {
    fn done_ids(&self, _: &[&str]) -> Result<HashSet<String>, SinkError> {
        thread::sleep(LOOKUP);
        Ok(HashSet::new())
    }
}

#[test]
fn end_to_end_latency_starts_when_the_source_yields_the_item() {
    let metrics = Arc::new(Metrics::new());
    let config = SessionConfig {
        threads: 1,
        qos: Qos::ExactlyOnce,
        ..SessionConfig::default()
    };
    let source = Arc::new(VecSource::numbered(3));
    let handler = |_: &CallContext<'_>, item: &Item| Ok(item.id.clone());
    let summary = Session::new(
        config,
        source,
        Arc::new(handler),
        Arc::new(SlowLookup(MemoryCommitter::new())),
    )
    .metrics(metrics.clone())
    .run()
    .unwrap();
    assert_eq!(summary.counts.done, 3);
    let end_to_end = metrics.end_to_end.snapshot();
    assert_eq!(end_to_end.count, 3);
    // Every item waited out the lookup after it was pulled; the handler
    // itself takes no time.
    assert!(
        end_to_end.p50 >= LOOKUP && end_to_end.max >= LOOKUP,
        "end to end {end_to_end:?} leaves out the {LOOKUP:?} lookup"
    );
    assert!(metrics.queue_wait.snapshot().p50 < LOOKUP);
}

#[test]
fn a_queue_rising_past_80_percent_is_counted_once_per_crossing() {
    let metrics = Arc::new(Metrics::new());
    let config = SessionConfig {
        threads: 1,
        pull_batch: 1,
        queue: QueueConfig {
            capacity: 10,
            ..QueueConfig::default()
        },
        ..SessionConfig::default()
    };
    // The one worker holds the first item until the queue has been seen at
    // 9 of 10: pushes at 8 and at 9 both find the queue past the line.
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let handler = move |_: &CallContext<'_>, item: &Item| {
        while !held.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        Ok(item.id.clone())
    };
    let source = Arc::new(VecSource::numbered(10));
    let session =
        Session::new(config, source, Arc::new(handler), Arc::new(MemoryCommitter::new())).metrics(metrics.clone());
    let (status, warnings) = thread::scope(|scope| {
        let running = scope.spawn(|| session.run().unwrap());
        let give_up = Instant::now() + Duration::from_secs(20);
        let reading = loop {
            match metrics.queue.stats() {
                Some(q) if q.stats.len == 9 => break q,
                _ if Instant::now() > give_up => panic!("the queue never filled"),
                _ => thread::sleep(Duration::from_millis(5)),
            }
        };
        let status = Status::capture(
            StatusSources {
                metrics: &metrics,
                writer: None,
                breaker: None,
                threads: 1,
                inbox: None,
                stopping: false,
            },
            "running",
            "config.yaml",
            std::time::SystemTime::now(),
            1,
            None,
        );
        release.store(true, Ordering::SeqCst);
        assert_eq!(running.join().unwrap().counts.done, 10);
        (status, reading.high_water_warnings)
    });
    assert_eq!(
        warnings, 1,
        "one crossing, however many pushes find the queue above the line"
    );
    assert_eq!(status.queue.as_ref().unwrap().high_water_warnings, 1);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["queue"]["high_water_warnings"], 1);
    let text = prometheus::render(&status, &metrics);
    for line in [
        "# TYPE lote_queue_high_water_warnings_total counter",
        "lote_queue_high_water_warnings_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
    }
}
