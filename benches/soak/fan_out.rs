//! Scenario 2: one item fanned out to 120 elements, over and over.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::handler::compose::{FanOut, OnElementFailure};
use lote::policy::CallPolicy;
use lote::{CallContext, Failure, Handler, Item, Status};

use crate::paced::{run_session, Paced};
use crate::verdict;

fn threads_now() -> usize {
    fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn rss_kib_now() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(items: usize) {
    const ELEMENTS: usize = 120;
    const MAX_PARALLEL: usize = 8;
    const WORKERS: usize = 2;
    println!(
        "== 2. one item fanned out to {ELEMENTS} elements, max_parallel {MAX_PARALLEL}, {items} items, {WORKERS} workers (library FanOut in a Session) =="
    );
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let each = {
        let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most_in_flight));
        move |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(1));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("{{\"element\":{}}}", String::from_utf8_lossy(&item.payload)))
        }
    };
    let fan = FanOut::new("/lines", Arc::new(each), MAX_PARALLEL, OnElementFailure::Fail, 1000).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let finished = Arc::clone(&finished);
        move |ctx: &CallContext<'_>, item: &Item| {
            let result = fan.handle(ctx, item);
            finished.fetch_add(1, Ordering::SeqCst);
            result
        }
    };
    let payload = format!(
        "{{\"lines\":[{}]}}",
        (0..ELEMENTS).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let list: Vec<Item> = (0..items)
        .map(|n| Item::new(format!("f{n}"), payload.clone()))
        .collect();
    // As fast as the workers take them: the paced source at a rate far above.
    let source = Paced::new(list, 1_000_000);
    let (base_threads, base_rss) = (threads_now(), rss_kib_now());
    // Peaks per window of finished items: 1–10, 11–50, 51–100, 101–items.
    let bounds = [10, 50, 100, items];
    let peaks: Vec<(AtomicUsize, AtomicUsize)> = bounds.iter().map(|_| Default::default()).collect();
    let sampling = AtomicBool::new(true);
    let started = Instant::now();
    let outcomes = thread::scope(|scope| {
        scope.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                let done = finished.load(Ordering::SeqCst);
                let w = bounds.iter().position(|&b| done < b).unwrap_or(bounds.len() - 1);
                peaks[w].0.fetch_max(threads_now(), Ordering::Relaxed);
                peaks[w].1.fetch_max(rss_kib_now(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
        });
        let outcomes = run_session(source, Arc::new(handler), WORKERS, CallPolicy::plain());
        sampling.store(false, Ordering::Relaxed);
        outcomes
    });
    let elapsed = started.elapsed();
    let done = outcomes.iter().filter(|o| o.status == Status::Done).count();
    let complete = outcomes
        .iter()
        .filter(|o| {
            o.output
                .as_deref()
                .is_some_and(|out| out.matches("element").count() == ELEMENTS)
        })
        .count();
    println!(
        "{done} of {items} items done, {complete} with all {ELEMENTS} elements merged, in {:.2} s ({:.0} elements/s); most element calls at once {} (≤ {} = workers × max_parallel)",
        elapsed.as_secs_f64(),
        (done * ELEMENTS) as f64 / elapsed.as_secs_f64(),
        most_in_flight.load(Ordering::SeqCst),
        WORKERS * MAX_PARALLEL
    );
    println!(
        "before the session: {base_threads} threads, RSS {:.1} MB",
        base_rss as f64 / 1024.0
    );
    let mut from = 1;
    for (bound, (threads, rss)) in bounds.iter().zip(&peaks) {
        println!(
            "  items {from:>3}–{bound:<3} peak threads {:>3}  peak RSS {:>6.1} MB",
            threads.load(Ordering::Relaxed),
            rss.load(Ordering::Relaxed) as f64 / 1024.0
        );
        from = bound + 1;
    }
    let kept: usize = outcomes
        .iter()
        .map(|o| o.item.payload.len() + o.output.as_ref().map_or(0, String::len))
        .sum();
    println!(
        "(RSS grows with what the bench keeps: the in-memory committer holds all {} outcomes, {:.2} MB of payloads and outputs)",
        outcomes.len(),
        kept as f64 / 1024.0 / 1024.0
    );
    // The bench's sampler, the producer, the workers, their element threads.
    let bound = base_threads + 1 + 1 + WORKERS + WORKERS * MAX_PARALLEL;
    let peak = peaks.iter().map(|p| p.0.load(Ordering::Relaxed)).max().unwrap_or(0);
    let after = threads_now();
    println!(
        "peak {peak} threads ≤ before + sampler + producer + {WORKERS} workers + {WORKERS}×{MAX_PARALLEL} element threads = {bound}: {}; after the session {after} threads (as before: {})",
        verdict(peak <= bound),
        verdict(after == base_threads)
    );
    println!();
    assert!(
        done == items && complete == items,
        "every item done with all its elements"
    );
    assert!(
        peak <= bound && after == base_threads,
        "threads bounded, none left over"
    );
}
