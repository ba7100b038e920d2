//! Sessions end the way SPEC §3.2 says: drained, at `max_items`, at the
//! deadline, or on a stop, with every item taken accounted for exactly once
//! (processed, or given back to the source untouched).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lote::commit::MemoryCommitter;
use lote::policy::{Breaker, BreakerConfig, CallPolicy, RetryPolicy, WhenOpen};
use lote::source::VecSource;
use lote::{
    CallContext, EndReason, Failure, Handler, Item, Session, SessionConfig, SessionSummary, Status, StopHandle,
    StopReason,
};

/// Counts how often each item id reaches the handler.
#[derive(Default)]
struct Calls(Mutex<HashMap<String, u32>>);

impl Calls {
    fn note(&self, id: &str) -> u32 {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }
    fn of(&self, id: &str) -> u32 {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Run {
    summary: SessionSummary,
    source: Arc<VecSource>,
    committer: Arc<MemoryCommitter>,
    elapsed: Duration,
}

fn run(n: usize, config: SessionConfig, policy: CallPolicy, stop: StopHandle, handler: impl Handler + 'static) -> Run {
    let source = Arc::new(VecSource::numbered(n));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let session = Session::new(config, source.clone(), Arc::new(handler), committer.clone())
        .policy(policy)
        .stop_handle(stop);
    let started = Instant::now();
    let summary = session.run().expect("session runs");
    Run {
        summary,
        source,
        committer,
        elapsed: started.elapsed(),
    }
}

/// Nothing lost, nothing doubled: each of the `n` items is either acked once
/// (done or failed) or pending again at the source, never both.
fn assert_accounted(run: &Run, n: usize) {
    assert!(run.summary.balanced(), "{:?}", run.summary);
    let pending: Vec<String> = run.source.pending().into_iter().map(|i| i.id).collect();
    for i in 0..n {
        let id = i.to_string();
        let acks = run.source.acks(&id);
        let waiting = pending.iter().filter(|p| **p == id).count();
        assert!(
            (acks.len() == 1 && waiting == 0) || (acks.is_empty() && waiting == 1),
            "item {id}: acks {acks:?}, pending {waiting} times"
        );
    }
    assert_eq!(run.committer.outcomes().len() as u64, run.summary.processed());
}

fn config(threads: usize) -> SessionConfig {
    SessionConfig {
        threads,
        chunk: 10,
        ..SessionConfig::default()
    }
}

#[test]
fn a_drained_session_processes_every_item_once() {
    let calls = Arc::new(Calls::default());
    let counted = calls.clone();
    let run = run(
        1000,
        config(4),
        CallPolicy::plain(),
        StopHandle::new(),
        move |_: &CallContext<'_>, item: &Item| {
            counted.note(&item.id);
            Ok(item.id.clone())
        },
    );
    assert_eq!(run.summary.end, EndReason::Drained);
    assert_eq!((run.summary.counts.done, run.summary.counts.returned), (1000, 0));
    assert_eq!(calls.distinct(), 1000);
    assert!((0..1000).all(|i| calls.of(&i.to_string()) == 1));
    assert_accounted(&run, 1000);
}

#[test]
fn each_worker_commits_every_chunk_and_its_partial_chunk_at_the_end() {
    let run = run(
        10,
        SessionConfig {
            threads: 1,
            chunk: 3,
            ..SessionConfig::default()
        },
        CallPolicy::plain(),
        StopHandle::new(),
        lote::handler::Noop,
    );
    assert_eq!(run.committer.chunk_sizes(), vec![3, 3, 3, 1]);
    assert_eq!(run.summary.counts.commits, 4);
}

#[test]
fn max_items_bounds_what_one_session_takes() {
    let run = run(
        100,
        SessionConfig {
            max_items: 10,
            ..config(2)
        },
        CallPolicy::plain(),
        StopHandle::new(),
        lote::handler::Noop,
    );
    assert_eq!(run.summary.end, EndReason::MaxItems);
    assert_eq!((run.summary.counts.pulled, run.summary.counts.done), (10, 10));
    assert_eq!(run.source.pending().len(), 90);
    assert_accounted(&run, 100);
}

#[test]
fn the_deadline_stops_a_slow_session_within_one_item_and_returns_the_rest() {
    let item_time = Duration::from_millis(50);
    let deadline = Duration::from_millis(300);
    let calls = Arc::new(Calls::default());
    let counted = calls.clone();
    let run = run(
        100,
        SessionConfig {
            deadline: Some(deadline),
            ..config(2)
        },
        CallPolicy::plain(),
        StopHandle::new(),
        move |_: &CallContext<'_>, item: &Item| {
            counted.note(&item.id);
            thread::sleep(item_time);
            Ok(String::new())
        },
    );
    assert_eq!(run.summary.end, EndReason::Deadline);
    // Deadline + the item in hand, with room for a slow CI machine.
    assert!(
        run.elapsed < deadline + item_time + Duration::from_millis(500),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.summary.counts.done >= 2 && run.summary.counts.done < 100,
        "{:?}",
        run.summary
    );
    assert_eq!(run.summary.counts.done + run.summary.counts.returned, 100);
    assert!((0..100).all(|i| calls.of(&i.to_string()) <= 1), "no item ran twice");
    assert_accounted(&run, 100);
}

#[test]
fn a_stop_from_the_handle_ends_the_session_and_returns_queued_items() {
    let stop = StopHandle::new();
    let started = Arc::new(AtomicUsize::new(0));
    let trigger = stop.clone();
    let seen = started.clone();
    let run = run(
        500,
        config(3),
        CallPolicy::plain(),
        stop,
        move |_: &CallContext<'_>, _: &Item| {
            if seen.fetch_add(1, Ordering::SeqCst) == 20 {
                trigger.trigger(StopReason::Requested);
            }
            thread::sleep(Duration::from_millis(1));
            Ok(String::new())
        },
    );
    assert_eq!(run.summary.end, EndReason::Stopped);
    assert!(run.summary.counts.returned > 0);
    assert!(run.summary.counts.done < 500);
    assert_accounted(&run, 500);
}

#[test]
fn a_second_trigger_hurries_handlers_through_their_context() {
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let cancelled_seen = Arc::new(AtomicUsize::new(0));
    let seen = cancelled_seen.clone();
    let signaller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        trigger.trigger(StopReason::Signal("SIGTERM".into()));
        thread::sleep(Duration::from_millis(50));
        trigger.trigger(StopReason::Signal("SIGTERM".into()));
    });
    let run = run(
        2,
        config(2),
        CallPolicy::plain(),
        stop,
        move |ctx: &CallContext<'_>, _: &Item| {
            // A long call that checks its context, as handlers should.
            let give_up = Instant::now() + Duration::from_secs(30);
            while !ctx.is_cancelled() && Instant::now() < give_up {
                ctx.stop_handle().sleep(Duration::from_millis(5));
            }
            seen.fetch_add(1, Ordering::SeqCst);
            Err(Failure::retryable("cut short"))
        },
    );
    signaller.join().unwrap();
    assert_eq!(cancelled_seen.load(Ordering::SeqCst), 2);
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);
    assert_eq!(run.summary.end, EndReason::Stopped);
}

#[test]
fn a_waiting_retry_wakes_at_once_on_stop_and_the_item_goes_back() {
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..CallPolicy::default()
    };
    let run = run(1, config(1), policy, stop, move |_: &CallContext<'_>, _: &Item| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            let trigger = trigger.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                trigger.stop(StopReason::Requested);
            });
        }
        Err(Failure::retryable("downstream unavailable"))
    });
    assert!(
        run.elapsed < Duration::from_secs(10),
        "slept through the stop: {:?}",
        run.elapsed
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!((run.summary.counts.failed, run.summary.counts.returned), (0, 1));
    assert_accounted(&run, 1);
}

#[test]
fn retries_then_success_counts_the_attempts() {
    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            jitter: 0.2,
            ..RetryPolicy::default()
        },
        ..CallPolicy::default()
    };
    let run = run(
        1,
        config(1),
        policy,
        StopHandle::new(),
        |ctx: &CallContext<'_>, _: &Item| match ctx.attempt() {
            1 | 2 => Err(Failure::retryable("flaky")),
            _ => Ok(format!("ok on attempt {}", ctx.attempt())),
        },
    );
    let outcome = &run.committer.outcomes()[0];
    assert_eq!((outcome.status, outcome.attempts), (Status::Done, 3));
    assert_eq!(outcome.output.as_deref(), Some("ok on attempt 3"));
}

#[test]
fn fatal_failures_are_not_retried_and_exhausted_retries_fail() {
    let policy = CallPolicy {
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..CallPolicy::default()
    };
    let run = run(
        2,
        config(1),
        policy,
        StopHandle::new(),
        |_: &CallContext<'_>, item: &Item| {
            if item.id == "0" {
                Err(Failure::fatal("bad item"))
            } else {
                Err(Failure::retryable("still down"))
            }
        },
    );
    let outcomes = run.committer.outcomes();
    let by_id = |id: &str| outcomes.iter().find(|o| o.item.id == id).unwrap().clone();
    assert_eq!((by_id("0").status, by_id("0").attempts), (Status::Failed, 1));
    assert_eq!((by_id("1").status, by_id("1").attempts), (Status::Failed, 3));
    assert!(by_id("1").error.unwrap().contains("gave up after 3 attempts"));
    assert_eq!(run.summary.counts.failed, 2);
}

#[test]
fn a_panicking_handler_fails_that_item_only() {
    let run = run(
        50,
        config(2),
        CallPolicy::plain(),
        StopHandle::new(),
        |_: &CallContext<'_>, item: &Item| {
            if item.id == "7" {
                panic!("boom on 7");
            }
            Ok(String::new())
        },
    );
    assert_eq!((run.summary.counts.done, run.summary.counts.failed), (49, 1));
    let failed = run
        .committer
        .outcomes()
        .into_iter()
        .find(|o| o.status == Status::Failed)
        .unwrap();
    assert_eq!(failed.item.id, "7");
    assert!(failed.error.unwrap().contains("boom on 7"));
}

fn breaker(failures: u32, open_for: Duration) -> Arc<Breaker> {
    Arc::new(Breaker::new(BreakerConfig {
        failures,
        open_for,
        half_open_probes: 1,
    }))
}

#[test]
fn an_open_breaker_with_skip_returns_items_and_never_fails_them() {
    let policy = CallPolicy {
        retry: RetryPolicy::none(),
        breaker: Some(breaker(3, Duration::from_secs(60))),
        when_open: WhenOpen::Skip,
        timeout: None,
    };
    let run = run(
        20,
        config(1),
        policy,
        StopHandle::new(),
        |_: &CallContext<'_>, _: &Item| Err(Failure::retryable("503")),
    );
    assert_eq!(run.summary.counts.failed, 3, "only the calls that opened it failed");
    // The rest were not attempted: each went back to the source. A
    // VecSource takes a returned item back at once, so the producer may
    // pull it again in this session (and it goes back again): at least 17.
    assert!(
        run.summary.counts.returned >= 17,
        "the rest were not attempted: {}",
        run.summary.counts.returned
    );
    assert_eq!(run.source.pending().len(), 17, "all of them are back in the source");
    assert_accounted(&run, 20);
}

#[test]
fn an_open_breaker_with_wait_pauses_until_a_probe_succeeds() {
    let healthy_after = Instant::now() + Duration::from_millis(150);
    let policy = CallPolicy {
        retry: RetryPolicy::none(),
        breaker: Some(breaker(2, Duration::from_millis(50))),
        when_open: WhenOpen::Wait,
        timeout: None,
    };
    let run = run(
        10,
        config(2),
        policy,
        StopHandle::new(),
        move |_: &CallContext<'_>, _: &Item| {
            if Instant::now() < healthy_after {
                Err(Failure::retryable("503"))
            } else {
                Ok(String::new())
            }
        },
    );
    assert_eq!(run.summary.counts.returned, 0, "wait mode returns nothing");
    assert_eq!(run.summary.counts.done + run.summary.counts.failed, 10);
    assert!(run.summary.counts.done >= 5, "{:?}", run.summary);
}

#[test]
fn a_stop_ends_a_breaker_wait_and_returns_the_item() {
    let stop = StopHandle::new();
    let trigger = stop.clone();
    let policy = CallPolicy {
        retry: RetryPolicy::none(),
        breaker: Some(breaker(1, Duration::from_secs(3600))),
        when_open: WhenOpen::Wait,
        timeout: None,
    };
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        trigger.stop(StopReason::Requested);
    });
    let run = run(5, config(1), policy, stop, |_: &CallContext<'_>, _: &Item| {
        Err(Failure::retryable("503"))
    });
    assert!(run.elapsed < Duration::from_secs(10));
    assert_eq!(run.summary.counts.failed, 1);
    assert_eq!(run.summary.counts.returned, 4);
    assert_accounted(&run, 5);
}

#[test]
fn the_timeout_is_a_deadline_in_the_call_context() {
    let policy = CallPolicy {
        timeout: Some(Duration::from_millis(30)),
        ..CallPolicy::plain()
    };
    let run = run(
        1,
        config(1),
        policy,
        StopHandle::new(),
        |ctx: &CallContext<'_>, _: &Item| {
            assert!(ctx.remaining().unwrap() <= Duration::from_millis(30));
            while !ctx.should_stop() {
                thread::sleep(Duration::from_millis(1));
            }
            Err(Failure::timed_out(Duration::from_millis(30)))
        },
    );
    let outcome = &run.committer.outcomes()[0];
    assert_eq!(outcome.status, Status::Failed);
    assert!(outcome.error.as_deref().unwrap().contains("timed out"));
}

#[test]
fn impossible_configs_are_refused_before_anything_starts() {
    for bad in [
        SessionConfig {
            threads: 0,
            ..SessionConfig::default()
        },
        SessionConfig {
            chunk: 0,
            ..SessionConfig::default()
        },
        SessionConfig {
            deadline: Some(Duration::ZERO),
            ..SessionConfig::default()
        },
    ] {
        let source = Arc::new(VecSource::numbered(3));
        let session = Session::new(
            bad,
            source.clone(),
            Arc::new(lote::handler::Noop),
            Arc::new(MemoryCommitter::new()),
        );
        let error = session.run().unwrap_err().to_string();
        assert!(error.contains("is 0"), "{error}");
        assert_eq!(source.pending().len(), 3, "nothing was taken");
    }
}
