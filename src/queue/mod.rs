//! [`WorkQueue`]: the bounded priority queue between the producer and the
//! workers, and its [`Message`]s. Nothing else lives here.
//!
//! Messages leave in the order `Stop < Work(priority, seq) < EndOfData`
//! (seed 003: `-1` first, `ENDP` last). A lower priority number is more
//! urgent; equal priorities leave in arrival order (`seq`).
//!
//! # Invariants
//!
//! - **Capacity counts work only.** `len <= capacity` after every operation.
//!   `Stop` and `EndOfData` live in two counters beside the work levels:
//!   they are accepted at once whatever the fill level, even once the queue is
//!   closed, and are never dropped or evicted.
//! - **The control lane overtakes.** `pop` returns a pending `Stop` before any
//!   work, and an `EndOfData` only once no work is left. Each control message
//!   is returned exactly once (one per worker is the session's contract).
//! - **Nothing vanishes.** An item that cannot be queued, or that is evicted to
//!   make room, is handed back to the caller (`PushError`, `Ok(Some(evicted))`,
//!   [`BatchPush`]) and counted in [`QueueStats`]; the caller returns it to its
//!   source.
//! - **Closed means closed to work.** After [`WorkQueue::close`], pushes of
//!   work fail with `Closed` and hand the item back; queued work can still be
//!   popped or taken back with [`WorkQueue::take_work`].
//! - **A blocked producer wakes at low water.** Pops notify `writable` only
//!   once at most `low_water` (¾ of capacity) work items are left, so a
//!   producer that waited for room gets room for a batch. Whatever stops the
//!   pops before that also wakes it: `close` (every stop) and `take_work`.
//!   A producer whose `block_timeout` passes re-checks for room before it
//!   gives up.
//! - **No lost wake-ups.** A thread waits only inside a `while` on its
//!   condition, having registered itself in `waiting_*` under the lock;
//!   every change that could satisfy a waiter notifies it (see `readable`
//!   and `writable`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::item::Priority;
use crate::sync::{wait_maybe_until, Condvar, Mutex, MutexGuard};

mod types;

pub use types::{BatchPush, Message, PushError, QueueConfig, QueueStats, WhenFull};

/// The bounded priority queue. `Sync`: share it by reference or `Arc`.
pub struct WorkQueue<T> {
    capacity: usize,
    /// A blocked producer is woken once the queue drains to this many work
    /// items (¾ of capacity), not at every pop: it then has room for a batch
    /// instead of one slot, and a full queue does not cost a wake-up per pop.
    low_water: usize,
    when_full: WhenFull,
    block_timeout: Option<Duration>,
    /// Protects everything that changes: the levels, the control counters, the
    /// closed flag, the waiter counts and the statistics.
    state: Mutex<State<T>>,
    /// Consumers wait here for a message. Notified by every push of work or
    /// control (one notification per item, up to the number of waiters).
    readable: Condvar,
    /// Blocked producers wait here for room. Notified by a pop that leaves
    /// `low_water` or fewer work items while producers wait, by `take_work`,
    /// and by `close` (all).
    writable: Condvar,
}

struct State<T> {
    /// Work by priority level, most urgent level first; each level a FIFO in
    /// arrival order. A level is in the map only while it holds work.
    levels: BTreeMap<Priority, VecDeque<Entry<T>>>,
    /// Work items in `levels`, all levels together.
    len: usize,
    /// Emptied level deques kept (at most `SPARE_LEVELS`) so that a queue
    /// that keeps emptying and refilling does not allocate.
    spare: Vec<VecDeque<Entry<T>>>,
    /// Pending `Stop` messages.
    stops: usize,
    /// Pending `EndOfData` messages.
    ends: usize,
    closed: bool,
    /// Arrival counter: orders equal priorities and finds oldest/newest.
    next_seq: u64,
    /// Consumers inside `readable.wait`.
    waiting_consumers: usize,
    /// Producers inside `writable.wait`.
    waiting_producers: usize,
    pushed: u64,
    popped: u64,
    dropped: u64,
    rejected: u64,
    timed_out: u64,
    high_water: usize,
}

/// A queued work item with its arrival number (for drop_oldest/newest
/// across levels; within a level, position already is arrival order).
struct Entry<T> {
    seq: u64,
    item: T,
}

/// How many emptied level deques a queue keeps for reuse.
const SPARE_LEVELS: usize = 4;

/// Where a push stands after looking at the fill level.
enum Room<T> {
    /// Queue it (after an eviction, which is handed back).
    Queue(Option<T>),
    /// Wait for room (`block`).
    Wait,
    /// Refuse it, with this error.
    Refuse(PushError<T>),
}

impl<T> State<T> {
    fn is_full(&self, capacity: usize) -> bool {
        self.len >= capacity
    }

    fn insert(&mut self, priority: Priority, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let spare = &mut self.spare;
        self.levels
            .entry(priority)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push_back(Entry { seq, item });
        self.len += 1;
        self.pushed += 1;
        self.high_water = self.high_water.max(self.len);
    }

    /// The most urgent, oldest work item.
    fn pop_work(&mut self) -> Option<T> {
        let mut level = self.levels.first_entry()?;
        let entry = level.get_mut().pop_front().expect("a level in the map holds work");
        if level.get().is_empty() {
            let emptied = level.remove();
            self.retire(emptied);
        }
        self.len -= 1;
        Some(entry.item)
    }

    /// The work item `pop_work` would take, left in place.
    fn peek_work(&self) -> Option<&T> {
        let (_, level) = self.levels.first_key_value()?;
        level.front().map(|entry| &entry.item)
    }

    /// Removes the queued item that arrived first (`oldest`) or last,
    /// whatever its priority: the front or back of one of the levels.
    fn evict(&mut self, oldest: bool) -> Option<T> {
        let arrival = |q: &VecDeque<Entry<T>>| if oldest { q.front() } else { q.back() }.map_or(0, |e| e.seq);
        let levels = self.levels.iter().map(|(priority, q)| (arrival(q), *priority));
        let (_, priority) = if oldest { levels.min() } else { levels.max() }?;
        let level = self.levels.get_mut(&priority).expect("found above");
        let entry = if oldest { level.pop_front() } else { level.pop_back() }.expect("a level in the map holds work");
        if level.is_empty() {
            let emptied = self.levels.remove(&priority).expect("found above");
            self.retire(emptied);
        }
        self.len -= 1;
        self.dropped += 1;
        Some(entry.item)
    }

    /// Keeps an emptied level's deque for reuse, up to `SPARE_LEVELS`.
    fn retire(&mut self, level: VecDeque<Entry<T>>) {
        if self.spare.len() < SPARE_LEVELS {
            self.spare.push(level);
        }
    }

    /// Every work item, most urgent first, emptying the queue.
    fn take_all(&mut self) -> Vec<T> {
        let mut items = Vec::with_capacity(self.len);
        for (_, level) in std::mem::take(&mut self.levels) {
            items.extend(level.into_iter().map(|e| e.item));
        }
        self.len = 0;
        items
    }

    /// Decides what a push of one work item does now.
    fn room_for(&mut self, capacity: usize, when_full: WhenFull, item: T) -> (Room<T>, Option<T>) {
        if self.closed {
            return (Room::Refuse(PushError::Closed(item)), None);
        }
        if !self.is_full(capacity) {
            return (Room::Queue(None), Some(item));
        }
        match when_full {
            WhenFull::Block => (Room::Wait, Some(item)),
            WhenFull::DropOldest => {
                let evicted = self.evict(true);
                (Room::Queue(evicted), Some(item))
            }
            WhenFull::DropNewest => {
                let evicted = self.evict(false);
                (Room::Queue(evicted), Some(item))
            }
            WhenFull::DropWrite => {
                self.dropped += 1;
                (Room::Refuse(PushError::Dropped(item)), None)
            }
            WhenFull::Reject => {
                self.rejected += 1;
                (Room::Refuse(PushError::Rejected(item)), None)
            }
        }
    }
}

impl<T> WorkQueue<T> {
    /// An empty, open queue. A capacity of 0 is raised to 1 (config
    /// validation rejects 0 before it gets here).
    pub fn new(config: QueueConfig) -> Self {
        WorkQueue {
            capacity: config.capacity.max(1),
            low_water: low_water(config.capacity.max(1)),
            when_full: config.when_full,
            block_timeout: config.block_timeout,
            state: Mutex::new(State {
                levels: BTreeMap::new(),
                len: 0,
                spare: Vec::new(),
                stops: 0,
                ends: 0,
                closed: false,
                next_seq: 0,
                waiting_consumers: 0,
                waiting_producers: 0,
                pushed: 0,
                popped: 0,
                dropped: 0,
                rejected: 0,
                timed_out: 0,
                high_water: 0,
            }),
            readable: Condvar::new(),
            writable: Condvar::new(),
        }
    }

    /// The most work items the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues one work item.
    ///
    /// `Ok(None)`: queued. `Ok(Some(evicted))`: queued, and `evicted` was
    /// pushed out to make room (`drop_oldest` / `drop_newest`); it must go
    /// back to its source. `Err(e)`: not queued; `e.into_inner()` is the item.
    pub fn push(&self, priority: Priority, item: T) -> Result<Option<T>, PushError<T>> {
        let deadline = self.block_deadline();
        let mut state = self.state.lock();
        let mut item = item;
        loop {
            let (room, kept) = state.room_for(self.capacity, self.when_full, item);
            match room {
                Room::Queue(evicted) => {
                    state.insert(priority, kept.expect("room_for keeps a queued item"));
                    let wake = state.waiting_consumers > 0;
                    drop(state);
                    if wake {
                        self.readable.notify_one();
                    }
                    return Ok(evicted);
                }
                Room::Refuse(error) => return Err(error),
                Room::Wait => {
                    item = kept.expect("room_for keeps an item to wait with");
                    // Woken by a pop, `take_work` or `close` (see `writable`).
                    let timed_out;
                    state.waiting_producers += 1;
                    (state, timed_out) = wait_maybe_until(&self.writable, state, deadline);
                    state.waiting_producers -= 1;
                    if timed_out && state.is_full(self.capacity) && !state.closed {
                        state.timed_out += 1;
                        return Err(PushError::TimedOut(item));
                    }
                }
            }
        }
    }

    /// Queues a batch of work items, in order, taking the lock once per run
    /// of free space instead of once per item. Drains `batch`.
    ///
    /// With `block`, waits for room as often as needed (each wait bounded by
    /// `block_timeout`); what could not be queued comes back in `refused`.
    pub fn push_batch(&self, batch: &mut Vec<(Priority, T)>) -> BatchPush<T> {
        let mut result = BatchPush::new();
        if batch.is_empty() {
            return result;
        }
        let mut items = batch.drain(..);
        let mut state = self.state.lock();
        let mut queued_now = 0usize;
        while let Some((priority, item)) = items.next() {
            let mut item = item;
            loop {
                let (room, kept) = state.room_for(self.capacity, self.when_full, item);
                match room {
                    Room::Queue(evicted) => {
                        state.insert(priority, kept.expect("room_for keeps a queued item"));
                        queued_now += 1;
                        result.queued += 1;
                        result.evicted.extend(evicted);
                        break;
                    }
                    Room::Refuse(error) => {
                        result.refused.push(error);
                        break;
                    }
                    Room::Wait => {
                        item = kept.expect("room_for keeps an item to wait with");
                        // Let consumers at what we queued before we sleep.
                        self.wake_consumers(&state, std::mem::take(&mut queued_now));
                        let deadline = self.block_deadline();
                        let timed_out;
                        state.waiting_producers += 1;
                        (state, timed_out) = wait_maybe_until(&self.writable, state, deadline);
                        state.waiting_producers -= 1;
                        if timed_out && state.is_full(self.capacity) && !state.closed {
                            // Give up on this item and the rest of the batch:
                            // one timeout means the consumers are stuck.
                            state.timed_out += 1 + items.len() as u64;
                            result.refused.push(PushError::TimedOut(item));
                            result
                                .refused
                                .extend(items.by_ref().map(|(_, i)| PushError::TimedOut(i)));
                            self.wake_consumers(&state, queued_now);
                            return result;
                        }
                    }
                }
            }
        }
        self.wake_consumers(&state, queued_now);
        result
    }

    /// Queues `n` `Stop` messages. They overtake all work; always accepted,
    /// even on a full or closed queue.
    pub fn push_stop(&self, n: usize) {
        let mut state = self.state.lock();
        state.stops += n;
        drop(state);
        self.readable.notify_all();
    }

    /// Queues `n` `EndOfData` messages. They leave only after all work;
    /// always accepted, even on a full or closed queue.
    pub fn push_end_of_data(&self, n: usize) {
        let mut state = self.state.lock();
        state.ends += n;
        drop(state);
        self.readable.notify_all();
    }

    /// Takes the next message, waiting as long as it takes.
    pub fn pop(&self) -> Message<T> {
        let (mut state, message) = self.spin_for_one(self.state.lock());
        if let Some(message) = message {
            return message;
        }
        loop {
            // Woken by any push (see `readable`).
            state.waiting_consumers += 1;
            state = self.readable.wait(state);
            state.waiting_consumers -= 1;
            if let Some(message) = self.take_one(&mut state) {
                return message;
            }
        }
    }

    /// Takes the next message if one is there or arrives while [`pop`]
    /// would still be spinning; `None` where `pop` would park. A worker
    /// holding outcomes calls this first, so it can commit them before it
    /// sleeps (SPEC §3.2, `chunk_wait`).
    ///
    /// [`pop`]: WorkQueue::pop
    pub fn pop_before_parking(&self) -> Option<Message<T>> {
        self.spin_for_one(self.state.lock()).1
    }

    /// Takes a message, spinning (then yielding) a little while there is
    /// none: a busy producer refills within microseconds, and that is far
    /// cheaper than parking and being woken. Hands the guard back for a
    /// caller that goes on to park.
    fn spin_for_one<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<T>>,
    ) -> (MutexGuard<'a, State<T>>, Option<Message<T>>) {
        let mut backoff = Backoff::new();
        loop {
            if let Some(message) = self.take_one(&mut state) {
                return (state, Some(message));
            }
            if backoff.is_done() {
                return (state, None);
            }
            drop(state);
            backoff.snooze();
            state = self.state.lock();
        }
    }

    /// Takes the next message, waiting until `deadline` at most.
    pub fn pop_until(&self, deadline: Instant) -> Option<Message<T>> {
        let mut state = self.state.lock();
        loop {
            if let Some(message) = self.take_one(&mut state) {
                return Some(message);
            }
            // Woken by any push (see `readable`).
            let timed_out;
            state.waiting_consumers += 1;
            (state, timed_out) = self.readable.wait_until(state, deadline);
            state.waiting_consumers -= 1;
            if timed_out {
                return self.take_one(&mut state);
            }
        }
    }

    /// Takes the next message if there is one, without waiting.
    pub fn try_pop(&self) -> Option<Message<T>> {
        let mut state = self.state.lock();
        self.take_one(&mut state)
    }

    /// Waits for at least one message, then appends to `out` either exactly
    /// one control message (`Stop` first; `EndOfData` once no work is left) or
    /// up to `max` work items in order.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<Message<T>>) {
        let max = max.max(1);
        let mut state = self.state.lock();
        loop {
            if state.stops > 0 || state.len == 0 {
                if let Some(message) = self.take_one(&mut state) {
                    out.push(message);
                    return;
                }
            } else {
                let n = max.min(state.len);
                for _ in 0..n {
                    let item = state.pop_work().expect("n <= len");
                    out.push(Message::Work(item));
                }
                state.popped += n as u64;
                let wake = state.waiting_producers > 0 && state.len <= self.low_water;
                drop(state);
                if wake {
                    self.writable.notify_all();
                }
                return;
            }
            // Woken by any push (see `readable`).
            state.waiting_consumers += 1;
            state = self.readable.wait(state);
            state.waiting_consumers -= 1;
        }
    }

    /// Fills a batch: appends to `out` the next work items, most urgent
    /// first, while `out` holds fewer than `max` and `fits` accepts the next
    /// one, waiting for more until `deadline`. Returns `None` once the batch
    /// is full, the next item does not fit (it stays queued) or the deadline
    /// has passed; or the control message that ended the wait, taken: a
    /// `Stop` (it overtakes: no work is taken while one is pending) or, once
    /// no work is left, an `EndOfData`. A batch never spans either.
    pub fn pop_more_until(
        &self,
        deadline: Instant,
        max: usize,
        out: &mut Vec<T>,
        mut fits: impl FnMut(&T) -> bool,
    ) -> Option<Message<T>> {
        let mut state = self.state.lock();
        loop {
            if state.stops > 0 {
                state.stops -= 1;
                return Some(Message::Stop);
            }
            if self.take_fitting(&mut state, max, out, &mut fits) {
                return None;
            }
            if state.len == 0 && state.ends > 0 {
                state.ends -= 1;
                return Some(Message::EndOfData);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Woken by any push (see `readable`); after the deadline, one
            // more look above takes what came with it.
            state.waiting_consumers += 1;
            (state, _) = self.readable.wait_until(state, deadline);
            state.waiting_consumers -= 1;
        }
    }

    /// Moves work into `out` while it holds fewer than `max` and `fits`
    /// accepts the next item. True if the batch is full (or the next item
    /// does not fit).
    fn take_fitting(
        &self,
        state: &mut MutexGuard<'_, State<T>>,
        max: usize,
        out: &mut Vec<T>,
        fits: &mut impl FnMut(&T) -> bool,
    ) -> bool {
        let mut taken = 0u64;
        let mut full = out.len() >= max;
        while !full {
            let Some(next) = state.peek_work() else { break };
            if !fits(next) {
                full = true;
                break;
            }
            out.push(state.pop_work().expect("peeked above"));
            taken += 1;
            full = out.len() >= max;
        }
        if taken > 0 {
            state.popped += taken;
            if state.waiting_producers > 0 && state.len <= self.low_water {
                self.writable.notify_all();
            }
        }
        full
    }

    /// Closes the queue to work: later work pushes fail with `Closed`, and
    /// producers waiting for room wake and get their items back. Control
    /// messages are still accepted; queued work can still be popped.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        drop(state);
        self.writable.notify_all();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Removes and returns every queued work item, most urgent first (to
    /// return them to their source at a stop). Control messages stay.
    pub fn take_work(&self) -> Vec<T> {
        let mut state = self.state.lock();
        let items = state.take_all();
        let wake = state.waiting_producers > 0;
        drop(state);
        if wake {
            self.writable.notify_all();
        }
        items
    }

    /// Work items queued now.
    pub fn len(&self) -> usize {
        self.state.lock().len
    }

    /// True if no work is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A consistent snapshot of the state and counters (one lock).
    pub fn stats(&self) -> QueueStats {
        let state = self.state.lock();
        QueueStats {
            len: state.len,
            capacity: self.capacity,
            can_push: !state.closed && !state.is_full(self.capacity),
            closed: state.closed,
            control: state.stops + state.ends,
            pushed: state.pushed,
            popped: state.popped,
            dropped: state.dropped,
            rejected: state.rejected,
            timed_out: state.timed_out,
            high_water: state.high_water,
        }
    }

    fn block_deadline(&self) -> Option<Instant> {
        self.block_timeout.and_then(|t| Instant::now().checked_add(t))
    }

    /// The control lane first, then work, then end of data.
    fn take_one(&self, state: &mut MutexGuard<'_, State<T>>) -> Option<Message<T>> {
        if state.stops > 0 {
            state.stops -= 1;
            return Some(Message::Stop);
        }
        if let Some(item) = state.pop_work() {
            state.popped += 1;
            if state.waiting_producers > 0 && state.len <= self.low_water {
                self.writable.notify_one();
            }
            return Some(Message::Work(item));
        }
        if state.ends > 0 {
            state.ends -= 1;
            return Some(Message::EndOfData);
        }
        None
    }

    /// Wakes up to `queued` waiting consumers after `queued` items arrived.
    fn wake_consumers(&self, state: &State<T>, queued: usize) {
        let waiting = state.waiting_consumers;
        if queued == 0 || waiting == 0 {
            return;
        }
        if queued >= waiting {
            self.readable.notify_all();
        } else {
            for _ in 0..queued {
                self.readable.notify_one();
            }
        }
    }
}

/// Bounded waiting before a consumer parks: spins of 1, 2, 4 … 64 pause
/// instructions, then a few `yield_now`s (which let a descheduled producer
/// run on a 2-core box), then done. Under loom it is done at once: loom
/// models the parking, and spinning would only multiply interleavings.
struct Backoff {
    step: u32,
}

impl Backoff {
    const SPIN_STEPS: u32 = 6;
    const YIELD_STEPS: u32 = 10;

    fn new() -> Self {
        Backoff { step: 0 }
    }

    fn is_done(&self) -> bool {
        cfg!(loom) || self.step > Self::YIELD_STEPS
    }

    fn snooze(&mut self) {
        if self.step <= Self::SPIN_STEPS {
            for _ in 0..1u32 << self.step {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        self.step += 1;
    }
}

/// ¾ of `capacity`, and below capacity whenever capacity > 1.
fn low_water(capacity: usize) -> usize {
    (capacity - capacity / 4).min(capacity - 1).max(capacity.min(1) - 1)
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("when_full", &self.when_full)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
