//! The queue benchmark: `WorkQueue` against `crossbeam_channel::bounded` in
//! the same process and the same run, so the ratio is honest, plus how long a
//! `Stop` takes to reach a worker.
//!
//! ```text
//! cargo bench --bench queue                               # 10 M items, ~1 min
//! LOTE_BENCH_ITEMS=200000 cargo bench --bench queue       # a smoke test
//! ```
//!
//! Throughput: 1 producer and 2 consumers move `LOTE_BENCH_ITEMS` (default
//! 10 000 000) no-op `u64`s through a queue of capacity 1024. Each consumer
//! sums what it receives and the totals must add up to 0 + 1 + … + (N − 1):
//! every item arrived exactly once. Each case runs 3 times, the cases taking
//! turns so that a slow moment of the machine does not land on one case only;
//! the table shows the median and the best.
//!
//! Stop latency: from `push_stop(1)` to the moment a worker pops the `Stop`,
//! (1) with the worker busy popping a queue kept at ≥ 1000 items, which the
//! `Stop` must overtake, and (2) with the worker asleep in `pop()` on an
//! empty queue, which adds a futex wake-up and a trip through the scheduler.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lote::queue::BatchPush;
use lote::{Message, Priority, QueueConfig, WorkQueue};

const DEFAULT_ITEMS: u64 = 10_000_000;
const CAPACITY: usize = 1024;
const CONSUMERS: usize = 2;
const BATCH: usize = 64;
const RUNS: usize = 5;
/// Work items the busy worker must be behind when the `Stop` arrives.
const STOP_BEHIND: usize = 1000;
const STOP_REPEATS: usize = 2000;
/// How long the main thread waits for the idle worker to fall asleep in
/// `pop()` before it pushes the `Stop` (parking_lot's condvar parks at once,
/// so a worker that has been idle this long is asleep, not spinning).
const SETTLE: Duration = Duration::from_micros(300);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    Crossbeam,
    PushPopOne,
    BatchPopOne,
    BatchPopBatch,
    BatchPopOnePriorities,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Crossbeam,
        Case::PushPopOne,
        Case::BatchPopOne,
        Case::BatchPopBatch,
        Case::BatchPopOnePriorities,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::Crossbeam => "a. crossbeam bounded: send / recv",
            Case::PushPopOne => "b. lote: push / pop",
            Case::BatchPopOne => "c. lote: push_batch(64) / pop",
            Case::BatchPopBatch => "d. lote: push_batch(64) / pop_batch(64)",
            Case::BatchPopOnePriorities => "e. lote: as c, priorities 0..8",
        }
    }
}

fn main() {
    let items = match std::env::var("LOTE_BENCH_ITEMS") {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("LOTE_BENCH_ITEMS={text:?} is not a positive number")),
        Err(_) => DEFAULT_ITEMS,
    };
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let started = Instant::now();

    println!(
        "queue bench: 1 producer, {CONSUMERS} consumers, {items} u64 items, capacity {CAPACITY}, \
         best/median of {RUNS} runs, {cores} cores"
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    for _ in 0..RUNS {
        for (case, rates) in Case::ALL.into_iter().zip(&mut rates) {
            let elapsed = run(case, items);
            rates.push(items as f64 / elapsed.as_secs_f64());
        }
    }
    let summaries: Vec<(f64, f64)> = rates.iter_mut().map(|r| median_and_best(r)).collect();
    let reference = summaries[0].0;

    println!();
    println!(
        "{:<42} {:>17} {:>12} {:>13}",
        "case", "items/s (median)", "best", "vs crossbeam"
    );
    for (case, &(median, best)) in Case::ALL.iter().zip(&summaries) {
        println!(
            "{:<42} {:>17} {:>12} {:>12.2}×",
            case.label(),
            millions(median),
            millions(best),
            median / reference
        );
    }
    // Three threads on two cores make every rate swing with scheduling luck
    // (crossbeam's most: it spins), so give the ratio of medians and of bests.
    let (lote_median, lote_best) = summaries[Case::BatchPopOne as usize];
    let reference_best = summaries[0].1;
    println!();
    println!(
        "queue bench: lote batch-push/pop-one = {:.2}× crossbeam by median, {:.2}× by best (target ≥ 0.75×)",
        lote_median / reference,
        lote_best / reference_best
    );

    println!();
    let busy = stop_latency_busy();
    print_latency(
        &format!("stop latency, busy worker ≥ {STOP_BEHIND} items behind"),
        &busy,
    );
    let idle = stop_latency_idle();
    print_latency("stop latency, idle worker asleep in pop()", &idle);
    println!();
    println!(
        "stop latency p99 = {:.1} µs (target < 50 µs)",
        micros(percentile(&busy, 0.99))
    );
    println!("stop wake-up latency p99 = {:.1} µs", micros(percentile(&idle, 0.99)));
    println!("(bench took {:.1} s)", started.elapsed().as_secs_f64());
}

/// Runs one case once; returns how long moving every item took.
fn run(case: Case, items: u64) -> Duration {
    let expected = items * (items - 1) / 2;
    let start = Instant::now();
    let total: u64 = match case {
        Case::Crossbeam => {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(CAPACITY);
            thread::scope(|s| {
                let consumers: Vec<_> = (0..CONSUMERS)
                    .map(|_| {
                        let rx = rx.clone();
                        s.spawn(move || rx.iter().sum::<u64>())
                    })
                    .collect();
                drop(rx);
                s.spawn(move || {
                    for i in 0..items {
                        tx.send(i).expect("consumers outlive the producer");
                    }
                    // Dropping `tx` disconnects: the consumers' `iter` ends.
                });
                consumers.into_iter().map(|c| c.join().unwrap()).sum()
            })
        }
        Case::PushPopOne => lote_run(case, |queue| {
            for i in 0..items {
                let evicted = queue
                    .push(0, i)
                    .expect("a blocking queue without timeout takes every item");
                assert!(evicted.is_none());
            }
        }),
        Case::BatchPopOne | Case::BatchPopBatch => lote_run_batched(items, case, || 0),
        Case::BatchPopOnePriorities => {
            // A 64-bit LCG (Knuth's MMIX constants); the top 3 bits are its
            // best, giving priorities 0..8. Cheap enough not to show.
            let mut state = 0x2545_f491_4f6c_dd1d_u64;
            lote_run_batched(items, case, move || {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 61) as Priority
            })
        }
    };
    let elapsed = start.elapsed();
    assert_eq!(total, expected, "{}: every item exactly once", case.label());
    elapsed
}

/// A lote run whose producer pushes batches of 64 with the given priorities.
fn lote_run_batched(items: u64, case: Case, mut priority: impl FnMut() -> Priority + Send) -> u64 {
    lote_run(case, move |queue| {
        let mut batch = Vec::with_capacity(BATCH);
        let mut next = 0u64;
        while next < items {
            let end = items.min(next + BATCH as u64);
            batch.extend((next..end).map(|i| (priority(), i)));
            let BatchPush { queued, refused, .. } = queue.push_batch(&mut batch);
            assert!(queued as u64 == end - next && refused.is_empty());
            next = end;
        }
    })
}

/// Runs `produce` on its own thread against a fresh queue and the consumers
/// of `case`, then ends the data; returns what the consumers summed.
fn lote_run(case: Case, produce: impl FnOnce(&WorkQueue<u64>) + Send) -> u64 {
    let queue = WorkQueue::new(QueueConfig::new(CAPACITY));
    let queue = &queue;
    thread::scope(|s| {
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                if case == Case::BatchPopBatch {
                    s.spawn(move || consume_batches(queue))
                } else {
                    s.spawn(move || consume_one_by_one(queue))
                }
            })
            .collect();
        s.spawn(move || {
            produce(queue);
            // One per consumer; each leaves only once all work is popped.
            queue.push_end_of_data(CONSUMERS);
        });
        consumers.into_iter().map(|c| c.join().unwrap()).sum()
    })
}

fn consume_one_by_one(queue: &WorkQueue<u64>) -> u64 {
    let mut sum = 0u64;
    loop {
        match queue.pop() {
            Message::Work(v) => sum += v,
            Message::EndOfData => return sum,
            Message::Stop => unreachable!("nobody stops a throughput run"),
        }
    }
}

fn consume_batches(queue: &WorkQueue<u64>) -> u64 {
    let mut sum = 0u64;
    let mut out = Vec::with_capacity(BATCH);
    loop {
        queue.pop_batch(BATCH, &mut out);
        for message in out.drain(..) {
            match message {
                Message::Work(v) => sum += v,
                Message::EndOfData => return sum,
                Message::Stop => unreachable!("nobody stops a throughput run"),
            }
        }
    }
}

/// A worker that pops as fast as it can keeps meeting a queue of ≥ 1000
/// items; the `Stop` must overtake them. One worker thread serves every
/// repeat, so no spawn time is measured.
fn stop_latency_busy() -> Vec<Duration> {
    let queue = WorkQueue::<u64>::new(QueueConfig::new(CAPACITY));
    let (popped_stop, stop_seen) = mpsc::channel::<Instant>();
    let mut samples = Vec::with_capacity(STOP_REPEATS);
    thread::scope(|s| {
        let queue = &queue;
        s.spawn(move || stop_worker(queue, &popped_stop));
        let mut batch = Vec::with_capacity(BATCH);
        let mut next = 0u64;
        for _ in 0..STOP_REPEATS {
            // The worker drains the queue meanwhile; a batch push outruns
            // its one-at-a-time pops, so the queue fills (and this blocks
            // for room once it is full).
            while queue.len() < STOP_BEHIND {
                batch.extend((next..next + BATCH as u64).map(|i| (0, i)));
                next += BATCH as u64;
                queue.push_batch(&mut batch);
            }
            let t0 = Instant::now();
            queue.push_stop(1);
            let t1 = stop_seen.recv().expect("the worker reports every stop");
            samples.push(t1 - t0);
        }
        queue.push_end_of_data(1);
    });
    samples
}

/// A worker asleep in `pop()` on an empty queue is woken by the `Stop`.
fn stop_latency_idle() -> Vec<Duration> {
    let queue = WorkQueue::<u64>::new(QueueConfig::new(CAPACITY));
    let (popped_stop, stop_seen) = mpsc::channel::<Instant>();
    let mut samples = Vec::with_capacity(STOP_REPEATS);
    thread::scope(|s| {
        let queue = &queue;
        s.spawn(move || stop_worker(queue, &popped_stop));
        for _ in 0..STOP_REPEATS {
            // Time for the worker to report the last stop and fall asleep.
            thread::sleep(SETTLE);
            let t0 = Instant::now();
            queue.push_stop(1);
            let t1 = stop_seen.recv().expect("the worker reports every stop");
            samples.push(t1 - t0);
        }
        queue.push_end_of_data(1);
    });
    samples
}

/// Pops with no processing; reports when each `Stop` arrived and carries on
/// until `EndOfData`, which the measuring thread sends when it is done.
fn stop_worker(queue: &WorkQueue<u64>, popped_stop: &mpsc::Sender<Instant>) {
    loop {
        match queue.pop() {
            Message::Work(_) => {}
            Message::Stop => {
                let t1 = Instant::now();
                popped_stop.send(t1).expect("the measuring thread waits for it");
            }
            Message::EndOfData => return,
        }
    }
}

fn print_latency(title: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    println!(
        "{title:<46} ({} repeats): p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs",
        sorted.len(),
        micros(percentile(samples, 0.50)),
        micros(percentile(samples, 0.90)),
        micros(percentile(samples, 0.99)),
        micros(*sorted.last().expect("at least one sample"))
    );
}

/// The ⌈q·n⌉-th smallest sample (nearest rank, as the histogram does it).
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_and_best(rates: &mut [f64]) -> (f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[rates.len() - 1])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millions(rate: f64) -> String {
    format!("{:.2} M", rate / 1e6)
}
