//! Stress: many producers and consumers, every item counted exactly once
//! (a counter per item, the crossbeam habit), under a timeout so that a
//! deadlock fails the test instead of hanging CI.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use lote::commit::MemoryCommitter;
use lote::queue::BatchPush;
use lote::source::VecSource;
use lote::{CallContext, Failure, Item, Message, QueueConfig, Session, SessionConfig, Status, WhenFull, WorkQueue};

const ITEMS: usize = 100_000;

/// Runs `body` on a thread and fails if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(body());
    });
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}: deadlock or lost wake-up"))
}

fn hammer(producers: usize, consumers: usize, capacity: usize, batch: usize) {
    let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(capacity)));
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..ITEMS).map(|_| AtomicU8::new(0)).collect());
    let consumers: Vec<_> = (0..consumers)
        .map(|_| {
            let (queue, seen) = (queue.clone(), seen.clone());
            thread::spawn(move || loop {
                match queue.pop() {
                    Message::Work(id) => {
                        seen[id as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    Message::EndOfData => return,
                    Message::Stop => panic!("no stop was pushed"),
                }
            })
        })
        .collect();
    let per_producer = ITEMS / producers;
    let producers_done: Vec<_> = (0..producers)
        .map(|p| {
            let queue = queue.clone();
            thread::spawn(move || {
                let ids = (p * per_producer..(p + 1) * per_producer).map(|i| i as u32);
                if batch <= 1 {
                    for id in ids {
                        assert!(queue.push((id % 7) as i32, id).unwrap().is_none());
                    }
                } else {
                    let mut buffer = Vec::with_capacity(batch);
                    for id in ids {
                        buffer.push(((id % 7) as i32, id));
                        if buffer.len() == batch {
                            let result: BatchPush<u32> = queue.push_batch(&mut buffer);
                            assert!(result.is_clean());
                        }
                    }
                    assert!(queue.push_batch(&mut buffer).is_clean());
                }
            })
        })
        .collect();
    for producer in producers_done {
        producer.join().unwrap();
    }
    queue.push_end_of_data(consumers.len());
    for consumer in consumers {
        consumer.join().unwrap();
    }
    let wrong: Vec<usize> = (0..per_producer * producers)
        .filter(|&i| seen[i].load(Ordering::Relaxed) != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} items not seen exactly once, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let stats = queue.stats();
    assert_eq!(stats.pushed, stats.popped);
    assert!(stats.high_water <= capacity);
}

#[test]
fn stress_queue_every_item_exactly_once_across_producers_and_consumers() {
    for consumers in [2, 4, 8] {
        for (producers, capacity, batch) in [(1, 1024, 1), (3, 16, 1), (4, 64, 32), (2, 1, 8)] {
            within(Duration::from_secs(120), move || {
                hammer(producers, consumers, capacity, batch)
            });
        }
    }
}

#[test]
fn stress_drop_oldest_hands_back_every_evicted_item() {
    within(Duration::from_secs(120), || {
        let queue = Arc::new(WorkQueue::<u32>::new(
            QueueConfig::new(8).when_full(WhenFull::DropOldest),
        ));
        let seen: Arc<Vec<AtomicU8>> = Arc::new((0..ITEMS).map(|_| AtomicU8::new(0)).collect());
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let (queue, seen) = (queue.clone(), seen.clone());
                thread::spawn(move || {
                    while let Message::Work(id) = queue.pop() {
                        seen[id as usize].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for id in 0..ITEMS as u32 {
            // What is evicted goes "back to the source": count it here.
            if let Some(evicted) = queue.push(0, id).unwrap() {
                seen[evicted as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        queue.push_end_of_data(3);
        for consumer in consumers {
            consumer.join().unwrap();
        }
        assert!((0..ITEMS).all(|i| seen[i].load(Ordering::Relaxed) == 1));
        let stats = queue.stats();
        assert_eq!(stats.popped + stats.dropped, ITEMS as u64);
    });
}

#[test]
fn stress_session_every_item_done_and_acked_exactly_once() {
    within(Duration::from_secs(120), || {
        for threads in [2, 8] {
            let source = Arc::new(VecSource::numbered(ITEMS));
            let committer = Arc::new(MemoryCommitter::acking(source.clone()));
            let runs: Arc<Vec<AtomicU8>> = Arc::new((0..ITEMS).map(|_| AtomicU8::new(0)).collect());
            let counted = runs.clone();
            let handler = Arc::new(move |_: &CallContext<'_>, item: &Item| {
                counted[item.id.parse::<usize>().unwrap()].fetch_add(1, Ordering::Relaxed);
                Ok::<_, Failure>(String::new())
            });
            let config = SessionConfig {
                threads,
                chunk: 50,
                queue: QueueConfig::new(256),
                ..SessionConfig::default()
            };
            let summary = Session::new(config, source.clone(), handler, committer).run().unwrap();
            assert_eq!(summary.counts.done, ITEMS as u64);
            assert!((0..ITEMS).all(|i| runs[i].load(Ordering::Relaxed) == 1));
            assert_eq!(source.ack_count(), ITEMS);
            assert!((0..ITEMS)
                .step_by(997)
                .all(|i| source.acks(&i.to_string()) == vec![Status::Done]));
        }
    });
}
