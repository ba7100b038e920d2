//! Batch calls from the library (SPEC §3.12): a batch closure through
//! `batch_fn`, per-item attempts and outcomes, a breaker that counts calls
//! and not items, and a batch config refused for a one-item handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lote::commit::MemoryCommitter;
use lote::policy::{Breaker, BreakerConfig, CallPolicy, RetryPolicy, WhenOpen};
use lote::source::VecSource;
use lote::{batch_fn, BatchConfig, BatchReply, CallContext, Failure, Item, ItemReply, Session, SessionConfig, Status};

/// One call a batch closure saw: its attempt and its items' ids.
type Call = (u32, Vec<String>);

fn config(max_items: usize) -> SessionConfig {
    SessionConfig {
        threads: 1,
        batch: Some(BatchConfig {
            max_items,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(100),
        }),
        ..SessionConfig::default()
    }
}

#[test]
fn a_batch_closure_gives_each_item_its_own_attempts_and_outcome() {
    let items: Vec<Item> = (0..10).map(|i| Item::new(format!("i{i}"), format!("{i}"))).collect();
    let source = Arc::new(VecSource::new(items));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let handler = {
        let calls = Arc::clone(&calls);
        batch_fn(move |ctx: &CallContext<'_>, items: &[Item]| {
            calls
                .lock()
                .unwrap()
                .push((ctx.attempt(), items.iter().map(|i| i.id.clone()).collect()));
            assert!(ctx.idempotency_key().starts_with("batch-"));
            let replies = items
                .iter()
                .filter_map(|item| {
                    let n: u32 = String::from_utf8_lossy(&item.payload).parse().unwrap();
                    let result = match n {
                        // Fails for good.
                        3 => Err(Failure::fatal("bad reading")),
                        // Fails once, then succeeds.
                        5 if ctx.attempt() == 1 => Err(Failure::retryable("busy")),
                        // Left out of the first reply.
                        7 if ctx.attempt() == 1 => return None,
                        _ => Ok(format!("ok {n}")),
                    };
                    Some(ItemReply {
                        id: item.id.clone(),
                        result,
                    })
                })
                .collect();
            Ok(BatchReply::Each(replies))
        })
    };
    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..CallPolicy::plain()
    };
    let summary = Session::new(config(100), source.clone(), Arc::new(handler), committer.clone())
        .policy(policy)
        .run()
        .unwrap();
    assert_eq!((summary.counts.done, summary.counts.failed), (9, 1));
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].1.len(), 10);
    assert_eq!(calls[1], (2, vec!["i5".to_string(), "i7".to_string()]));
    let outcomes = committer.outcomes();
    let of = |id: &str| outcomes.iter().find(|o| o.item.id == id).unwrap().clone();
    assert_eq!((of("i0").status, of("i0").attempts), (Status::Done, 1));
    assert_eq!(of("i0").output.as_deref(), Some("ok 0"));
    assert_eq!((of("i3").status, of("i3").attempts), (Status::Failed, 1));
    assert_eq!((of("i5").status, of("i5").attempts), (Status::Done, 2));
    assert_eq!((of("i7").status, of("i7").attempts), (Status::Done, 2));
}

#[test]
fn the_breaker_counts_batch_calls_not_items() {
    let source = Arc::new(VecSource::numbered(30));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let calls = Arc::new(Mutex::new(0u32));
    let handler = {
        let calls = Arc::clone(&calls);
        batch_fn(move |_: &CallContext<'_>, _: &[Item]| {
            *calls.lock().unwrap() += 1;
            Err(Failure::retryable("uplink down"))
        })
    };
    let breaker = Breaker::new(BreakerConfig {
        failures: 2,
        open_for: Duration::from_secs(60),
        half_open_probes: 1,
    });
    let policy = CallPolicy {
        breaker: Some(Arc::new(breaker)),
        when_open: WhenOpen::Skip,
        ..CallPolicy::plain()
    };
    let summary = Session::new(config(10), source.clone(), Arc::new(handler), committer)
        .policy(policy)
        .run()
        .unwrap();
    // Two failed calls of 10 items open it (not the first 2 items); the
    // third batch goes back to the source untouched.
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(summary.counts.failed, 20);
    assert_eq!(summary.counts.returned, 10);
    assert_eq!(source.pending().len(), 10);
}

#[test]
fn a_batch_config_needs_a_handler_that_takes_batches() {
    let source = Arc::new(VecSource::numbered(3));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let one = |_: &CallContext<'_>, _: &Item| -> Result<String, Failure> { Ok(String::new()) };
    let err = Session::new(config(10), source, Arc::new(one), committer)
        .run()
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes one item per call"), "{err}");
}

#[test]
fn a_retry_of_a_batch_waits_for_the_longest_retry_after_of_its_items() {
    let source = Arc::new(VecSource::numbered(3));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let calls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let handler = {
        let calls = Arc::clone(&calls);
        batch_fn(move |ctx: &CallContext<'_>, items: &[Item]| {
            calls.lock().unwrap().push(std::time::Instant::now());
            if ctx.attempt() > 1 {
                return Ok(BatchReply::AllDone);
            }
            let hint = |ms| Failure::retryable("slow down").with_retry_after(Duration::from_millis(ms));
            Ok(BatchReply::Each(
                items
                    .iter()
                    .zip([50, 400, 100])
                    .map(|(item, ms)| ItemReply {
                        id: item.id.clone(),
                        result: Err(hint(ms)),
                    })
                    .collect(),
            ))
        })
    };
    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 2,
            backoff: Duration::from_millis(10),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..CallPolicy::plain()
    };
    let summary = Session::new(config(10), source, Arc::new(handler), committer)
        .policy(policy)
        .run()
        .unwrap();
    assert_eq!(summary.counts.done, 3);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let waited = calls[1] - calls[0];
    assert!(waited >= Duration::from_millis(400), "waited {waited:?}");
}
