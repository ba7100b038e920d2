//! loom models of the queue: every interleaving of a few threads (bounded by
//! LOOM_MAX_PREEMPTIONS) is run, so a lost wake-up shows up as a deadlock
//! and a broken invariant as a failed assertion.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_queue
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;

use lote::{Message, PushError, QueueConfig, WorkQueue};

#[test]
fn loom_push_then_end_of_data_reaches_a_waiting_consumer_in_order() {
    loom::model(|| {
        let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(2)));
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                let first = queue.pop();
                let second = queue.pop();
                (first, second)
            })
        };
        queue.push(0, 7).unwrap();
        queue.push_end_of_data(1);
        assert_eq!(consumer.join().unwrap(), (Message::Work(7), Message::EndOfData));
    });
}

#[test]
fn loom_one_stop_per_consumer_wakes_every_consumer() {
    loom::model(|| {
        let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(2)));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || queue.pop())
            })
            .collect();
        queue.push_stop(2);
        for consumer in consumers {
            assert_eq!(consumer.join().unwrap(), Message::Stop);
        }
    });
}

#[test]
fn loom_a_blocked_producer_resumes_after_a_pop() {
    loom::model(|| {
        let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(1)));
        queue.push(0, 1).unwrap();
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || queue.push(0, 2).is_ok())
        };
        assert_eq!(queue.pop(), Message::Work(1));
        assert!(producer.join().unwrap());
        assert_eq!(queue.pop(), Message::Work(2));
    });
}

#[test]
fn loom_close_and_stop_release_a_blocked_producer_and_consumers() {
    loom::model(|| {
        let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(1)));
        queue.push(0, 1).unwrap();
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || queue.push(0, 2))
        };
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || queue.pop())
        };
        // The stop sequence of a session: Stop per worker, then close.
        queue.push_stop(1);
        queue.close();
        // The consumer got the Stop (it overtakes item 1) or, if it popped
        // before the stop, item 1.
        let popped = consumer.join().unwrap();
        assert!(matches!(popped, Message::Stop | Message::Work(1)));
        // The producer either got room before the close or its item back.
        match producer.join().unwrap() {
            Ok(None) => {}
            Err(PushError::Closed(2)) => {}
            other => panic!("unexpected push result {other:?}"),
        }
        // Whatever is left is still there to be given back.
        let left = queue.take_work();
        assert!(left.len() <= 2);
    });
}

#[test]
fn loom_a_stop_ends_the_wait_for_a_batch_to_fill_and_loses_no_work() {
    loom::model(|| {
        let queue = Arc::new(WorkQueue::<u32>::new(QueueConfig::new(4)));
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut batch = Vec::new();
                let far = std::time::Instant::now() + std::time::Duration::from_secs(600);
                let end = queue.pop_more_until(far, 4, &mut batch, |_| true);
                (end, batch)
            })
        };
        queue.push(0, 1).unwrap();
        queue.push_stop(1);
        let (end, batch) = consumer.join().unwrap();
        assert_eq!(end, Some(Message::Stop));
        // The item is in the batch or still queued: never both, never lost.
        assert_eq!(batch.len() + queue.len(), 1);
    });
}
