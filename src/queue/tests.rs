use super::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::thread;

fn queue(capacity: usize, when_full: WhenFull) -> WorkQueue<u32> {
    WorkQueue::new(QueueConfig::new(capacity).when_full(when_full))
}

fn drain(q: &WorkQueue<u32>) -> Vec<Message<u32>> {
    std::iter::from_fn(|| q.try_pop()).collect()
}

#[test]
fn lower_priority_number_leaves_first_and_ties_keep_arrival_order() {
    let q = queue(16, WhenFull::Block);
    for (priority, id) in [(5, 1), (1, 2), (5, 3), (2, 4), (1, 5)] {
        q.push(priority, id).unwrap();
    }
    let order: Vec<_> = drain(&q);
    assert_eq!(
        order,
        vec![
            Message::Work(2),
            Message::Work(5),
            Message::Work(4),
            Message::Work(1),
            Message::Work(3)
        ]
    );
}

#[test]
fn stop_overtakes_work_and_end_of_data_waits_for_it() {
    let q = queue(4, WhenFull::Block);
    q.push_end_of_data(1);
    q.push(1, 10).unwrap();
    q.push_stop(1);
    q.push(0, 11).unwrap();
    assert_eq!(
        drain(&q),
        vec![Message::Stop, Message::Work(11), Message::Work(10), Message::EndOfData]
    );
}

#[test]
fn control_messages_are_accepted_when_full_or_closed() {
    let q = queue(1, WhenFull::Reject);
    q.push(0, 1).unwrap();
    q.close();
    q.push_stop(2);
    q.push_end_of_data(2);
    assert_eq!(q.stats().control, 4);
    assert_eq!(q.len(), 1);
    assert!(matches!(q.push(0, 2), Err(PushError::Closed(2))));
}

#[test]
fn each_full_mode_hands_back_the_right_item() {
    let q = queue(2, WhenFull::DropOldest);
    q.push(9, 1).unwrap();
    q.push(0, 2).unwrap();
    assert_eq!(
        q.push(5, 3).unwrap(),
        Some(1),
        "drop_oldest evicts the earliest arrival"
    );

    let q = queue(2, WhenFull::DropNewest);
    q.push(9, 1).unwrap();
    q.push(0, 2).unwrap();
    assert_eq!(q.push(5, 3).unwrap(), Some(2), "drop_newest evicts the latest arrival");
    assert_eq!(drain(&q), vec![Message::Work(3), Message::Work(1)]);

    let q = queue(1, WhenFull::DropWrite);
    q.push(0, 1).unwrap();
    assert!(matches!(q.push(0, 2), Err(PushError::Dropped(2))));
    assert_eq!(q.stats().dropped, 1);

    let q = queue(1, WhenFull::Reject);
    q.push(0, 1).unwrap();
    assert!(matches!(q.push(0, 2), Err(PushError::Rejected(2))));
    assert_eq!(q.stats().rejected, 1);

    let q = WorkQueue::new(QueueConfig::new(1).block_timeout(Duration::from_millis(20)));
    q.push(0, 1).unwrap();
    assert!(matches!(q.push(0, 2), Err(PushError::TimedOut(2))));
    assert_eq!(q.stats().timed_out, 1);
}

#[test]
fn blocked_push_resumes_when_a_consumer_makes_room() {
    let q = Arc::new(queue(1, WhenFull::Block));
    q.push(0, 1).unwrap();
    let producer = {
        let q = Arc::clone(&q);
        thread::spawn(move || q.push(0, 2))
    };
    thread::sleep(Duration::from_millis(20));
    assert_eq!(q.pop(), Message::Work(1));
    assert!(producer.join().unwrap().is_ok());
    assert_eq!(q.pop(), Message::Work(2));
}

#[test]
fn close_wakes_a_blocked_producer_with_its_item() {
    let q = Arc::new(queue(1, WhenFull::Block));
    q.push(0, 1).unwrap();
    let producer = {
        let q = Arc::clone(&q);
        thread::spawn(move || q.push(0, 2))
    };
    thread::sleep(Duration::from_millis(20));
    q.close();
    assert!(matches!(producer.join().unwrap(), Err(PushError::Closed(2))));
}

#[test]
fn batch_push_blocks_for_room_and_keeps_order() {
    let q = Arc::new(queue(2, WhenFull::Block));
    let consumer = {
        let q = Arc::clone(&q);
        thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match q.pop() {
                    Message::Work(x) => got.push(x),
                    _ => return got,
                }
            }
        })
    };
    let mut batch: Vec<(Priority, u32)> = (0..100).map(|i| (0, i)).collect();
    let result = q.push_batch(&mut batch);
    assert!(result.is_clean());
    assert_eq!(result.queued, 100);
    q.push_end_of_data(1);
    assert_eq!(consumer.join().unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn batch_push_in_reject_mode_hands_back_the_overflow() {
    let q = queue(3, WhenFull::Reject);
    let mut batch: Vec<(Priority, u32)> = (0..5).map(|i| (0, i)).collect();
    let result = q.push_batch(&mut batch);
    assert_eq!(result.queued, 3);
    let refused: Vec<u32> = result.refused.into_iter().map(PushError::into_inner).collect();
    assert_eq!(refused, vec![3, 4]);
}

#[test]
fn pop_batch_returns_one_control_message_or_work_in_order() {
    let q = queue(16, WhenFull::Block);
    for i in 0..5 {
        q.push(0, i).unwrap();
    }
    let mut out = Vec::new();
    q.pop_batch(3, &mut out);
    assert_eq!(out, vec![Message::Work(0), Message::Work(1), Message::Work(2)]);
    q.push_stop(1);
    out.clear();
    q.pop_batch(3, &mut out);
    assert_eq!(out, vec![Message::Stop]);
    q.push_end_of_data(1);
    out.clear();
    q.pop_batch(8, &mut out);
    assert_eq!(out, vec![Message::Work(3), Message::Work(4)]);
    out.clear();
    q.pop_batch(8, &mut out);
    assert_eq!(out, vec![Message::EndOfData]);
}

#[test]
fn take_work_returns_everything_most_urgent_first() {
    let q = queue(8, WhenFull::Block);
    for (p, id) in [(3, 30), (1, 10), (2, 20), (1, 11)] {
        q.push(p, id).unwrap();
    }
    q.push_stop(1);
    assert_eq!(q.take_work(), vec![10, 11, 20, 30]);
    assert_eq!(q.pop(), Message::Stop);
}

#[test]
fn stats_count_and_remember_the_high_water_mark() {
    let q = queue(4, WhenFull::Block);
    for i in 0..3 {
        q.push(0, i).unwrap();
    }
    q.pop();
    let stats = q.stats();
    assert_eq!((stats.len, stats.pushed, stats.popped, stats.high_water), (2, 3, 1, 3));
    assert!(stats.can_push);
}

#[test]
fn pop_before_parking_takes_what_is_there_and_never_waits_for_more() {
    let q = queue(4, WhenFull::Block);
    assert_eq!(q.pop_before_parking(), None);
    q.push(0, 7).unwrap();
    q.push_end_of_data(1);
    assert_eq!(q.pop_before_parking(), Some(Message::Work(7)));
    assert_eq!(q.pop_before_parking(), Some(Message::EndOfData));
    assert_eq!(q.pop_before_parking(), None);
}

#[test]
fn a_huge_capacity_allocates_nothing_up_front() {
    // Nothing is sized by the configured capacity: this would abort if it were.
    let q = queue(usize::MAX, WhenFull::Block);
    let mut batch: Vec<(Priority, u32)> = (0..3).map(|i| (0, i)).collect();
    assert!(q.push_batch(&mut batch).is_clean());
    assert_eq!(drain(&q), vec![Message::Work(0), Message::Work(1), Message::Work(2)]);
}

#[test]
fn pop_until_gives_up_at_the_deadline() {
    let q = queue(4, WhenFull::Block);
    assert_eq!(q.pop_until(Instant::now() + Duration::from_millis(10)), None);
}

/// One operation of the property test.
#[derive(Clone, Debug)]
enum Op {
    Push(Priority),
    Stop,
    End,
    Pop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4i32).prop_map(Op::Push),
        1 => Just(Op::Stop),
        1 => Just(Op::End),
        4 => Just(Op::Pop),
    ]
}

fn mode() -> impl Strategy<Value = WhenFull> {
    prop_oneof![
        Just(WhenFull::DropOldest),
        Just(WhenFull::DropNewest),
        Just(WhenFull::DropWrite),
        Just(WhenFull::Reject),
    ]
}

/// The obviously-correct model: a list of (priority, arrival) searched
/// linearly, and two control counters.
#[derive(Default)]
struct Model {
    work: Vec<(Priority, u32)>,
    stops: usize,
    ends: usize,
}

impl Model {
    fn pop(&mut self) -> Option<Message<u32>> {
        if self.stops > 0 {
            self.stops -= 1;
            return Some(Message::Stop);
        }
        if let Some(i) = (0..self.work.len()).min_by_key(|&i| self.work[i]) {
            return Some(Message::Work(self.work.remove(i).1));
        }
        if self.ends > 0 {
            self.ends -= 1;
            return Some(Message::EndOfData);
        }
        None
    }

    /// What pushing `id` at `priority` does when `capacity` is reached.
    fn push(&mut self, capacity: usize, mode: WhenFull, priority: Priority, id: u32) -> Result<Option<u32>, u32> {
        if self.work.len() < capacity {
            self.work.push((priority, id));
            return Ok(None);
        }
        // Ids are handed out in arrival order, so the smallest id queued
        // is the oldest arrival and the largest the newest.
        let by_arrival = |w: &Vec<(Priority, u32)>, oldest: bool| {
            let ids = w.iter().enumerate().map(|(i, (_, id))| (*id, i));
            if oldest { ids.min() } else { ids.max() }.map(|(_, i)| i)
        };
        match mode {
            WhenFull::DropOldest | WhenFull::DropNewest => {
                let i = by_arrival(&self.work, mode == WhenFull::DropOldest).unwrap();
                let evicted = self.work.remove(i).1;
                self.work.push((priority, id));
                Ok(Some(evicted))
            }
            _ => Err(id),
        }
    }
}

proptest! {
    #[test]
    fn pops_follow_class_priority_arrival_and_full_modes_follow_their_rule(
        ops in proptest::collection::vec(op(), 1..200),
        capacity in 1usize..6,
        mode in mode(),
    ) {
        let q = queue(capacity, mode);
        let mut model = Model::default();
        let mut next_id = 0u32;
        for op in ops {
            match op {
                Op::Push(priority) => {
                    let id = next_id;
                    next_id += 1;
                    let real = q.push(priority, id).map_err(PushError::into_inner);
                    prop_assert_eq!(real, model.push(capacity, mode, priority, id));
                }
                Op::Stop => { q.push_stop(1); model.stops += 1; }
                Op::End => { q.push_end_of_data(1); model.ends += 1; }
                Op::Pop => prop_assert_eq!(q.try_pop(), model.pop()),
            }
            prop_assert!(q.len() <= capacity);
        }
        prop_assert_eq!(drain(&q), std::iter::from_fn(|| model.pop()).collect::<Vec<_>>());
    }
}

#[test]
fn a_batch_fills_in_priority_order_up_to_max_and_to_what_fits() {
    let q = queue(100, WhenFull::Block);
    for (priority, item) in [(5, 50), (1, 10), (5, 51), (1, 11), (9, 90)] {
        q.push(priority, item).unwrap();
    }
    let now = Instant::now();
    let mut batch = Vec::new();
    assert!(q.pop_more_until(now, 3, &mut batch, |_| true).is_none());
    assert_eq!(batch, [10, 11, 50]);
    // What does not fit stays queued, and closes the batch.
    let mut batch = Vec::new();
    assert!(q.pop_more_until(now, 10, &mut batch, |&item| item != 90).is_none());
    assert_eq!(batch, [51]);
    assert_eq!(q.len(), 1);
    assert_eq!(q.stats().popped, 4);
}

#[test]
fn a_stop_overtakes_the_batch_and_end_of_data_waits_for_the_work() {
    let q = queue(100, WhenFull::Block);
    q.push(1, 1).unwrap();
    q.push(1, 2).unwrap();
    q.push_end_of_data(1);
    let later = Instant::now() + Duration::from_secs(60);
    let mut batch = Vec::new();
    // EndOfData only once the work is taken; the wait ends at once.
    assert_eq!(
        q.pop_more_until(later, 10, &mut batch, |_| true),
        Some(Message::EndOfData)
    );
    assert_eq!(batch, [1, 2]);
    q.push(1, 3).unwrap();
    q.push_stop(1);
    let mut batch = Vec::new();
    assert_eq!(q.pop_more_until(later, 10, &mut batch, |_| true), Some(Message::Stop));
    assert!(batch.is_empty(), "no work is taken while a Stop is pending");
    assert_eq!(q.len(), 1);
}

#[test]
fn a_batch_waits_for_more_until_its_deadline_or_a_stop() {
    let q = Arc::new(queue(100, WhenFull::Block));
    let started = Instant::now();
    let mut batch = vec![0];
    assert!(q
        .pop_more_until(started + Duration::from_millis(50), 10, &mut batch, |_| true)
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(batch, [0]);

    let filler = {
        let q = Arc::clone(&q);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            q.push(1, 7).unwrap();
            thread::sleep(Duration::from_millis(30));
            q.push_stop(1);
        })
    };
    let mut batch = Vec::new();
    let ended = q.pop_more_until(Instant::now() + Duration::from_secs(60), 10, &mut batch, |_| true);
    filler.join().unwrap();
    assert_eq!((ended, batch), (Some(Message::Stop), vec![7]));
}
