//! What each composition wrapper adds to one call (issue 13, SPEC §3.5,
//! §3.13): the library's `Bulkhead`, `Cache`, `Fallback`, `WalkAway`,
//! `Sequence`, `FanOut` and `Parallel` around a noop closure, each timed
//! call by call beside a reference in the same run: the bare call of the
//! same closure (for the parallel node over 1 ms branches: one such branch
//! called alone, so the figure is what the node adds to its slowest branch).
//! Reference and case alternate in rounds, so a busy moment on the machine
//! falls on both.
//!
//! Targets (issue 13): a parallel node adds ≤ 50 µs to its slowest branch;
//! a cache hit takes ≤ 5 µs; a bulkhead rejection ≤ 1 µs. The cache hit
//! and the rejection never call the closure, so they are judged on the
//! whole call; the others on what they add. Verdicts are on the medians
//! (the table shows means and p99 too): on a 2-core box shared with other
//! work, a mean also holds the moments another process had the core. Every figure includes one
//! `Instant::now()` pair (about 40 ns here), the same for the reference.
//! Two rows without lote show what starting threads costs on the box: the
//! floor under the walk-away and the parallel node.
//! No logger is installed: the fallback's warning costs only its level
//! check, as in a daemon logging at `error`.
//!
//! Run: `cargo bench --bench compose` (`LOTE_BENCH_ITERS` sets the calls
//! per cheap case, default 200 000; the thread-starting cases run a tenth
//! of it, the 1 ms parallel case a hundredth).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::handler::cache::{Cache, CacheConfig, CacheKey};
use lote::handler::compose::{Branch, FanOut, OnElementFailure, Parallel, Sequence};
use lote::handler::{Bulkhead, Fallback, FallbackTo, WalkAway};
use lote::{CallContext, Failure, Handler, Item, StopHandle};

/// Reference and case take turns this many times.
const ROUNDS: usize = 10;

fn noop(_: &CallContext<'_>, _: &Item) -> Result<String, Failure> {
    Ok(String::from("{\"ok\":true}"))
}

fn failing(_: &CallContext<'_>, _: &Item) -> Result<String, Failure> {
    Err(Failure::retryable("down"))
}

/// What starting threads costs here, without lote: three scoped threads
/// calling the noop closure, joined (the floor of a 3-branch parallel node).
fn raw_three_threads(ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
    thread::scope(|scope| {
        let running: Vec<_> = (0..3).map(|_| scope.spawn(|| noop(ctx, item))).collect();
        running
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Result<Vec<_>, _>>()
    })
    .map(|outputs| outputs.concat())
}

/// One spawned thread calling the noop closure, joined (the floor of a
/// walk-away call).
fn raw_one_thread(_: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
    let item = item.clone();
    thread::spawn(move || {
        let stop = StopHandle::new();
        noop(&CallContext::new(&item, 1, None, &stop), &item)
    })
    .join()
    .unwrap()
}

fn one_ms(_: &CallContext<'_>, _: &Item) -> Result<String, Failure> {
    thread::sleep(Duration::from_millis(1));
    Ok(String::from("{\"ok\":true}"))
}

/// Per-call times in nanoseconds, sorted.
struct Times(Vec<u64>);

impl Times {
    fn mean(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len() as f64
    }
    fn quantile(&self, q: f64) -> f64 {
        let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i] as f64
    }
}

/// Calls `handler` on `item` `iters` times (in `ROUNDS` turns, alternating
/// with the reference), timing each call.
fn compare(iters: usize, reference: &dyn Handler, case: &dyn Handler, item: &Item) -> (Times, Times) {
    let stop = StopHandle::new();
    let ctx = CallContext::new(item, 1, None, &stop);
    let per_round = (iters / ROUNDS).max(1);
    let (mut r, mut c) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    // Untimed calls first: caches filled, first-use costs paid.
    for _ in 0..(iters / 100).clamp(1, 1000) {
        let _ = black_box(reference.handle(&ctx, item));
        let _ = black_box(case.handle(&ctx, item));
    }
    for _ in 0..ROUNDS {
        for (handler, times) in [(reference, &mut r), (case, &mut c)] {
            for _ in 0..per_round {
                let started = Instant::now();
                let _ = black_box(handler.handle(&ctx, black_box(item)));
                times.push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    r.sort_unstable();
    c.sort_unstable();
    (Times(r), Times(c))
}

/// What a case is held to.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// The mean the case adds to its reference, at most this many µs.
    Added(f64),
    /// The case's whole mean call, at most this many µs.
    Call(f64),
}

fn us(ns: f64) -> String {
    format!("{:.3}", ns / 1000.0)
}

/// One line of the table. The verdict is on the medians: on a shared
/// 2-core box the mean also carries the times another process had the core.
fn row(case: &str, reference: &str, (r, c): (Times, Times), target: Target) {
    let added = c.quantile(0.5) - r.quantile(0.5);
    let (target_text, verdict) = match target {
        Target::None => ("—".to_string(), "—"),
        Target::Added(limit) => (format!("added ≤ {limit} µs"), pass(added / 1000.0 <= limit)),
        Target::Call(limit) => (format!("call ≤ {limit} µs"), pass(c.quantile(0.5) / 1000.0 <= limit)),
    };
    println!(
        "{case:<36} {:>9} {:>9} {:>9}  {reference:<22} {:>9} {:>9} {:>9}  {target_text:<16} {verdict}",
        us(c.mean()),
        us(c.quantile(0.5)),
        us(c.quantile(0.99)),
        us(r.quantile(0.5)),
        us(added),
        us(c.mean() - r.mean()),
    );
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let iters: usize = std::env::var("LOTE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let item = Item::new(
        "order-1",
        "{\"customer\":{\"id\":42,\"tier\":\"gold\"},\"lines\":[1,2,3],\"note\":\"a typical payload\"}",
    );
    let fan_item = Item::new("order-2", "[1,2,3]");
    println!(
        "compose bench: {iters} calls per cheap case, 2 cores, load average at start {}",
        load()
    );
    println!(
        "times in µs per call; reference: the bare noop closure unless named; added: case p50 − reference p50 \
         (and the same for the means); verdicts on the p50s"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9}  {:<22} {:>9} {:>9} {:>9}  {:<16} verdict",
        "case", "mean", "p50", "p99", "reference", "ref p50", "added", "(mean)", "target"
    );
    let started = Instant::now();

    row(
        "bare noop closure (the reference)",
        "noop",
        compare(iters, &noop, &noop, &item),
        Target::None,
    );

    let bulkhead = Bulkhead::new(noop, 8, 8).unwrap();
    row(
        "bulkhead, pass-through",
        "noop",
        compare(iters, &noop, &bulkhead, &item),
        Target::None,
    );

    // A bulkhead of one, its permit held by a call that waits on `release`:
    // every measured call is rejected.
    let release = Arc::new(AtomicBool::new(false));
    let holder = {
        let release = Arc::clone(&release);
        move |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
            if item.id == "hold" {
                while !release.load(Ordering::Acquire) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(String::new())
        }
    };
    let full = Arc::new(Bulkhead::new(holder, 1, 0).unwrap());
    let held = {
        let full = Arc::clone(&full);
        thread::spawn(move || {
            let stop = StopHandle::new();
            let hold = Item::new("hold", "");
            full.handle(&CallContext::new(&hold, 1, None, &stop), &hold)
        })
    };
    while full
        .handle(&CallContext::new(&item, 1, None, &StopHandle::new()), &item)
        .is_ok()
    {
        thread::sleep(Duration::from_millis(1));
    }
    let rejected_before = full.rejected();
    row(
        "bulkhead, rejection (full)",
        "noop",
        compare(iters, &noop, full.as_ref(), &item),
        Target::Call(1.0),
    );
    assert!(
        full.rejected() - rejected_before >= iters as u64,
        "every measured call was a rejection"
    );
    release.store(true, Ordering::Release);
    held.join().unwrap().unwrap();

    let cache = Cache::new(Arc::new(noop), CacheConfig::new(Duration::from_secs(3600))).unwrap();
    row(
        "cache hit, key = SHA-256 of payload",
        "noop",
        compare(iters, &noop, &cache, &item),
        Target::Call(5.0),
    );
    let by_pointer = Cache::new(
        Arc::new(noop),
        CacheConfig {
            key: CacheKey::template("customer-{/customer/id}"),
            ..CacheConfig::new(Duration::from_secs(3600))
        },
    )
    .unwrap();
    row(
        "cache hit, key = {/customer/id}",
        "noop",
        compare(iters, &noop, &by_pointer, &item),
        Target::Call(5.0),
    );
    let by_id = Cache::new(
        Arc::new(noop),
        CacheConfig {
            key: CacheKey::template("{id}"),
            ..CacheConfig::new(Duration::from_secs(3600))
        },
    )
    .unwrap();
    row(
        "cache hit, key = {id}",
        "noop",
        compare(iters, &noop, &by_id, &item),
        Target::Call(5.0),
    );
    assert_eq!(cache.stats().misses.load(Ordering::Relaxed), 1, "one miss, then hits");

    let fallback = Fallback::new(noop, FallbackTo::Value("{\"stock\":null}".into()));
    row(
        "fallback, pass-through",
        "noop",
        compare(iters, &noop, &fallback, &item),
        Target::None,
    );
    let answering = Fallback::new(failing, FallbackTo::Value("{\"stock\":null}".into()));
    row(
        "fallback, answering a failure",
        "failing closure",
        compare(iters, &failing, &answering, &item),
        Target::None,
    );
    assert!(answering.answered() >= iters as u64);

    let sequence = Sequence::new(vec![Arc::new(noop), Arc::new(noop), Arc::new(noop)]).unwrap();
    row(
        "sequence of 3 noop steps",
        "noop",
        compare(iters, &noop, &sequence, &item),
        Target::None,
    );

    let thread_iters = (iters / 10).max(ROUNDS);
    row(
        "raw: thread::spawn + join (no lote)",
        "noop",
        compare(thread_iters, &noop, &raw_one_thread, &item),
        Target::None,
    );
    let walk_away = WalkAway::new(Arc::new(noop), Duration::from_secs(1), 4).unwrap();
    row(
        "walk-away timeout, pass-through",
        "noop",
        compare(thread_iters, &noop, &walk_away, &item),
        Target::None,
    );

    let fan_out = FanOut::new("", Arc::new(noop), 3, OnElementFailure::Fail, 100).unwrap();
    row(
        "fan_out, 3 noop elements, 3 at once",
        "noop",
        compare(thread_iters, &noop, &fan_out, &fan_item),
        Target::None,
    );

    let branches = |h: fn(&CallContext<'_>, &Item) -> Result<String, Failure>| {
        Parallel::new(
            ["a", "b", "c"]
                .into_iter()
                .map(|name| Branch::new(name, Arc::new(h)))
                .collect(),
        )
        .unwrap()
    };
    row(
        "raw: 3 scoped threads (no lote)",
        "noop",
        compare(thread_iters, &noop, &raw_three_threads, &item),
        Target::None,
    );
    row(
        "parallel, 3 noop branches",
        "noop",
        compare(thread_iters, &noop, &branches(noop), &item),
        Target::Added(50.0),
    );
    row(
        "parallel, 3 branches of 1 ms",
        "one 1 ms branch alone",
        compare((iters / 100).max(ROUNDS), &one_ms, &branches(one_ms), &item),
        Target::Added(50.0),
    );
    println!(
        "took {:.1} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        load()
    );
}
