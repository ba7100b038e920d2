//! Seed 003's two examples, reproduced step by step.
//!
//! Two real consumer threads pop from a real [`WorkQueue`]; the test plays
//! the scheduler, telling one consumer at a time to pop and waiting for what
//! it got, so the trace is the seed's serialised trace, every time. The
//! second half of each example runs the same items through a real
//! [`Session`].

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use lote::commit::MemoryCommitter;
use lote::source::VecSource;
use lote::{
    CallContext, EndReason, Failure, Item, Message, QueueConfig, Session, SessionConfig, Status, StopHandle,
    StopReason, WorkQueue,
};

/// What a consumer popped, as the seed writes it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Id(u32),
    Endp,
    StopMinusOne,
}

/// A consumer thread that pops once per command and reports what it got.
struct Consumer {
    go: Sender<()>,
    got: Receiver<Seen>,
}

impl Consumer {
    fn start(queue: Arc<WorkQueue<u32>>) -> Self {
        let (go, commands) = channel::<()>();
        let (report, got) = channel();
        thread::spawn(move || {
            while commands.recv().is_ok() {
                let seen = match queue.pop() {
                    Message::Work(id) => Seen::Id(id),
                    Message::EndOfData => Seen::Endp,
                    Message::Stop => Seen::StopMinusOne,
                };
                let last = !matches!(seen, Seen::Id(_));
                report.send(seen).unwrap();
                if last {
                    return;
                }
            }
        });
        Consumer { go, got }
    }

    /// Asks for one pop without waiting for it (it may block in `pop`).
    fn ask(&self) {
        self.go.send(()).unwrap();
    }

    /// What the last pop got.
    fn got(&self) -> Seen {
        self.got
            .recv_timeout(Duration::from_secs(10))
            .expect("consumer answered")
    }

    fn pop(&self) -> Seen {
        self.ask();
        self.got()
    }
}

/// Every item has the same priority in seed 003's examples except that the
/// id is the priority: "1 tiene mayor prioridad que 2".
fn push_id(queue: &WorkQueue<u32>, id: u32) {
    queue.push(id as i32, id).unwrap();
}

#[test]
fn seed_003_example_1_two_consumers_then_two_endp() {
    let queue = Arc::new(WorkQueue::new(QueueConfig::new(16)));
    let consumer_1 = Consumer::start(Arc::clone(&queue));
    let consumer_2 = Consumer::start(Arc::clone(&queue));

    // 1. Consumer_2 reads 4, the first and only message (it was already
    //    waiting in pop; the push wakes it).
    consumer_2.ask();
    thread::sleep(Duration::from_millis(20));
    push_id(&queue, 4);
    assert_eq!(consumer_2.got(), Seen::Id(4));
    // 2. Consumer_1 reads 3, the first and only message.
    push_id(&queue, 3);
    assert_eq!(consumer_1.pop(), Seen::Id(3));
    // 3. The consumers are busy; the producer queues the rest and two ENDP.
    for id in [1, 5, 2] {
        push_id(&queue, id);
    }
    queue.push_end_of_data(2);
    // 4.–6. By priority: 1, then 2, then 5.
    assert_eq!(consumer_1.pop(), Seen::Id(1));
    assert_eq!(consumer_2.pop(), Seen::Id(2));
    assert_eq!(consumer_2.pop(), Seen::Id(5));
    // 7.–8. Each reads one ENDP and ends.
    assert_eq!(consumer_1.pop(), Seen::Endp);
    assert_eq!(consumer_2.pop(), Seen::Endp);
    // 9. Nothing is left.
    assert!(queue.try_pop().is_none());
}

#[test]
fn seed_003_example_2_two_stops_overtake_2_and_5() {
    let queue = Arc::new(WorkQueue::new(QueueConfig::new(16)));
    let consumer_1 = Consumer::start(Arc::clone(&queue));
    let consumer_2 = Consumer::start(Arc::clone(&queue));

    // The same start as Example 1: Consumer_2 reads 4, Consumer_1 reads 3,
    // then the producer queues 1 - 5 - 2.
    consumer_2.ask();
    thread::sleep(Duration::from_millis(20));
    push_id(&queue, 4);
    assert_eq!(consumer_2.got(), Seen::Id(4));
    push_id(&queue, 3);
    assert_eq!(consumer_1.pop(), Seen::Id(3));
    for id in [1, 5, 2] {
        push_id(&queue, id);
    }
    // Consumer_2 finishes 4 and takes the next by priority. (The seed says
    // it is then "processing 5"; by its own rule 1 < 2 < 5 that is 1.)
    assert_eq!(consumer_2.pop(), Seen::Id(1));
    // An interruption: one -1 per consumer. They overtake 2 and 5.
    queue.push_stop(2);
    assert_eq!(consumer_1.pop(), Seen::StopMinusOne);
    assert_eq!(consumer_2.pop(), Seen::StopMinusOne);
    // 2 and 5 were never taken: they go back to the source untouched.
    assert_eq!(queue.take_work(), vec![2, 5]);
}

#[test]
fn seed_003_example_1_as_a_session_every_item_once_then_each_worker_ends() {
    let ids = [4, 3, 1, 5, 2];
    let source = Arc::new(VecSource::new(
        ids.iter().map(|id| Item::new(id.to_string(), Vec::new())),
    ));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let config = SessionConfig {
        threads: 2,
        chunk: 50,
        ..SessionConfig::default()
    };
    let handler = Arc::new(|_: &CallContext<'_>, item: &Item| Ok::<_, Failure>(format!("processed {}", item.id)));
    let summary = Session::new(config, source.clone(), handler, committer.clone())
        .run()
        .unwrap();

    assert_eq!(summary.end, EndReason::Drained);
    assert_eq!(
        (summary.counts.pulled, summary.counts.done, summary.counts.returned),
        (5, 5, 0)
    );
    for id in ids {
        assert_eq!(source.acks(&id.to_string()), vec![Status::Done], "item {id}");
    }
    // Each of the two workers committed its partial chunk when its ENDP came.
    assert_eq!(committer.chunk_sizes().iter().sum::<usize>(), 5);
}

#[test]
fn seed_003_example_2_as_a_session_stop_returns_what_was_not_taken() {
    let ids = [4, 3, 1, 5, 2];
    let source = Arc::new(VecSource::new(
        ids.iter()
            .map(|id| Item::new(id.to_string(), Vec::new()).with_priority(*id)),
    ));
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let stop = StopHandle::new();
    // Both workers take an item and hold it until the stop has been pushed.
    let in_hand = Arc::new(Barrier::new(3));
    let release = Arc::new(Barrier::new(3));
    let ran = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (in_hand, release, ran) = (in_hand.clone(), release.clone(), ran.clone());
        Arc::new(move |ctx: &CallContext<'_>, item: &Item| {
            ran.lock().unwrap().push(item.id.clone());
            if ctx.attempt() == 1 && ran.lock().unwrap().len() <= 2 {
                in_hand.wait();
                release.wait();
            }
            Ok::<_, Failure>(String::new())
        })
    };
    let config = SessionConfig {
        threads: 2,
        // One pull takes all five, so all five are queued before the stop.
        pull_batch: 8,
        ..SessionConfig::default()
    };
    let session = Session::new(config, source.clone(), handler, committer.clone()).stop_handle(stop.clone());
    let runner = thread::spawn(move || session.run().unwrap());
    in_hand.wait();
    stop.trigger(StopReason::Signal("SIGTERM".into()));
    release.wait();
    let summary = runner.join().unwrap();

    assert_eq!(summary.end, EndReason::Stopped);
    assert_eq!(summary.counts.done, 2, "the two items in hand finish");
    assert_eq!(summary.counts.returned, 3, "the other three overtaken by -1 go back");
    assert!(summary.balanced());
    let ran = ran.lock().unwrap().clone();
    let mut left: Vec<String> = source.pending().into_iter().map(|i| i.id).collect();
    left.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .map(|i| i.to_string())
        .filter(|id| !ran.contains(id))
        .collect();
    expected.sort();
    assert_eq!(left, expected, "every item not run is pending again at the source");
}
