//! Scenario 3: one call in ten takes 5 s against a 1 s timeout.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::handler::WalkAway;
use lote::policy::{CallPolicy, RetryPolicy};
use lote::{CallContext, Failure, Handler, Item, Status};

use crate::paced::{index, run_session, Paced};
use crate::{ms, verdict, Latencies};

/// Every tenth item (index 0, 10, 20, …) is the slow one.
fn slow(item: &Item) -> bool {
    index(&item.id).is_multiple_of(10)
}

pub fn run(items: usize, rate: usize) {
    const THREADS: usize = 16;
    let timeout = Duration::from_secs(1);
    println!(
        "== 3. one call in ten takes 5 s against timeout 1 s; {items} items arriving at {rate}/s, {THREADS} workers, others take 2 ms =="
    );
    let policy = CallPolicy {
        retry: RetryPolicy::none(),
        timeout: Some(timeout),
        ..CallPolicy::default()
    };
    let cooperative = |with_slow: bool| {
        move |ctx: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
            if with_slow && slow(item) {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(5) {
                    if ctx.should_stop() {
                        return Err(Failure::timed_out(started.elapsed()));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            } else {
                thread::sleep(Duration::from_millis(2));
            }
            Ok("ok".into())
        }
    };
    // Does not look at its context: only walking away cuts it.
    let stubborn = |_: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
        thread::sleep(if slow(item) {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(2)
        });
        Ok("ok".into())
    };
    let walk_away = Arc::new(WalkAway::new(Arc::new(stubborn), timeout, 64).unwrap());
    let list = || (0..items).map(|n| Item::new(format!("t{n}"), "x")).collect::<Vec<_>>();
    let runs: [(&str, Arc<dyn Handler>); 3] = [
        ("no slow calls (reference)", Arc::new(cooperative(false))),
        ("cooperative, checks should_stop()", Arc::new(cooperative(true))),
        ("non-cooperative, WalkAway", walk_away.clone()),
    ];
    let mut reference_p99 = Duration::ZERO;
    for (name, handler) in runs {
        let source = Paced::new(list(), rate);
        let outcomes = run_session(Arc::clone(&source), handler, THREADS, policy.clone());
        let (mut others, mut cut) = (Vec::new(), Vec::new());
        let mut timed_out = 0;
        for outcome in &outcomes {
            let latency = outcome
                .finished_at
                .duration_since(source.due(index(outcome.id())))
                .unwrap_or_default();
            if slow(&outcome.item) && name != "no slow calls (reference)" {
                cut.push(outcome.duration);
                timed_out += usize::from(outcome.status == Status::Failed);
            } else {
                others.push(latency);
            }
        }
        let others = Latencies::new(others);
        println!("{name}:");
        println!("  other items, arrival → finished: {}", others.summary());
        if name == "no slow calls (reference)" {
            reference_p99 = others.quantile(0.99);
        } else {
            let cut = Latencies::new(cut);
            println!(
                "  slow calls: {} of {} failed as timed out; cut after p50 {} max {}",
                timed_out,
                cut.0.len(),
                ms(cut.quantile(0.5)),
                ms(cut.max())
            );
            println!(
                "  others' p99 vs the reference: {} vs {} ({:+.1} ms); cut within 1.1 s: {}",
                ms(others.quantile(0.99)),
                ms(reference_p99),
                (others.quantile(0.99).as_secs_f64() - reference_p99.as_secs_f64()) * 1000.0,
                verdict(cut.max() <= Duration::from_millis(1100))
            );
        }
    }
    println!(
        "  WalkAway: walked away from {} calls, refused {}, {} abandoned threads still running at the end (they end when their 5 s sleep does)",
        walk_away.walked_away(),
        walk_away.refused(),
        walk_away.abandoned_now()
    );
    println!();
}
