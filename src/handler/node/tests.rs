//! The order of a node's wrappers, as the issue states it: a bulkhead
//! rejection does not trip the breaker, a sleeping retry holds no permit, a
//! cache hit takes no permit, a fallback's answer is never cached, and the
//! fallback answers only after the retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::{wrap, BulkheadSpec, FallbackSpec, NodePolicy, Nodes};
use crate::handler::cache::CacheConfig;
use crate::handler::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::policy::{BreakerConfig, RetryPolicy};
use crate::stop::StopHandle;

fn call(handler: &dyn Handler, id: &str) -> Result<String, Failure> {
    let stop = StopHandle::new();
    let item = Item::new(id, id);
    handler.handle(&CallContext::new(&item, 1, None, &stop), &item)
}

fn policy() -> NodePolicy {
    NodePolicy {
        retry: RetryPolicy::none(),
        ..NodePolicy::default()
    }
}

fn one_at_a_time() -> Option<BulkheadSpec> {
    Some(BulkheadSpec {
        max_parallel: 1,
        max_queued: 0,
    })
}

/// A handler that takes `ms`, counting its calls.
fn slow(ms: u64) -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler = move |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
        counted.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(ms));
        Ok(format!("out {}", item.id))
    };
    (calls, Arc::new(handler))
}

#[test]
fn a_bulkhead_rejection_does_not_trip_the_breaker() {
    let (_, inner) = slow(200);
    let p = NodePolicy {
        bulkhead: one_at_a_time(),
        breaker: Some(BreakerConfig {
            failures: 1,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        }),
        ..policy()
    };
    let node = wrap("n", inner, &p, &mut Nodes::new()).unwrap();
    let start = Barrier::new(3);
    let results: Vec<_> = thread::scope(|s| {
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let (node, start) = (&node, &start);
                s.spawn(move || {
                    start.wait();
                    thread::sleep(Duration::from_millis(20 * i));
                    call(node.as_ref(), "x")
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let rejected = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|f| f.message.contains("bulkhead")))
        .count();
    assert_eq!(rejected, 2, "{results:?}");
    assert_eq!(
        call(node.as_ref(), "y").unwrap(),
        "out y",
        "the breaker opened on a rejection"
    );
}

#[test]
fn a_sleeping_retry_holds_no_permit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = move |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
        // The first call fails at once; the rest answer.
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Failure::retryable("busy"));
        }
        Ok(item.id.clone())
    };
    let p = NodePolicy {
        bulkhead: one_at_a_time(),
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(300),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..policy()
    };
    let node = wrap("n", Arc::new(inner), &p, &mut Nodes::new()).unwrap();
    thread::scope(|s| {
        let sleeper = s.spawn(|| call(node.as_ref(), "a"));
        thread::sleep(Duration::from_millis(100));
        // `a` sleeps in its back-off now: `b` finds the one slot free.
        assert_eq!(call(node.as_ref(), "b").unwrap(), "b");
        assert_eq!(sleeper.join().unwrap().unwrap(), "a");
    });
}

#[test]
fn a_cache_hit_takes_no_permit() {
    let (calls, inner) = slow(300);
    let p = NodePolicy {
        bulkhead: one_at_a_time(),
        cache: Some(CacheConfig::new(Duration::from_secs(60))),
        ..policy()
    };
    let node = wrap("n", inner, &p, &mut Nodes::new()).unwrap();
    assert_eq!(call(node.as_ref(), "hot").unwrap(), "out hot");
    thread::scope(|s| {
        let busy = s.spawn(|| call(node.as_ref(), "cold"));
        thread::sleep(Duration::from_millis(100));
        // `cold` holds the one slot; a hit does not need it.
        assert_eq!(call(node.as_ref(), "hot").unwrap(), "out hot");
        busy.join().unwrap().unwrap();
    });
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn the_fallback_answers_after_the_retries_and_its_answer_is_not_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = move |_: &CallContext<'_>, _: &Item| -> Result<String, Failure> {
        // Three failures (one item's attempts), then answers.
        if counted.fetch_add(1, Ordering::SeqCst) < 3 {
            return Err(Failure::retryable("down"));
        }
        Ok("fresh".to_string())
    };
    let p = NodePolicy {
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        },
        cache: Some(CacheConfig::new(Duration::from_secs(60))),
        fallback: Some(FallbackSpec::Value("stale".to_string())),
        ..policy()
    };
    let mut nodes = Nodes::new();
    let node = wrap("n", Arc::new(inner), &p, &mut nodes).unwrap();
    assert_eq!(call(node.as_ref(), "k").unwrap(), "stale");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the fallback answered before the retries ran out"
    );
    assert_eq!(
        call(node.as_ref(), "k").unwrap(),
        "fresh",
        "the fallback's answer was cached"
    );
    assert_eq!(call(node.as_ref(), "k").unwrap(), "fresh");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let s = nodes.iter().next().unwrap().snapshot();
    assert_eq!(
        (s.calls, s.failures, s.fallbacks, s.cache_hits),
        (4, 3, Some(1), Some(1))
    );
}
