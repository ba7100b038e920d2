//! [`Bulkhead`]: at most `max_parallel` calls of a handler at once, at most
//! `max_queued` more waiting; beyond both a call is rejected at once as a
//! retryable failure and counted (SPEC §3.5, seed 002). A library
//! decorator; a sleeping retry around it holds no permit, and a rejection is
//! a failure of this call only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::sync::{Condvar, Mutex};

/// A warning is logged each time the bulkhead fills to this share of its
/// room (`max_parallel + max_queued`) from below.
const WARN_PERCENT: usize = 80;

/// How often a queued call looks at its stop handle while it waits.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Bounds the calls of `handler` in flight and waiting.
pub struct Bulkhead<H> {
    handler: H,
    max_parallel: usize,
    max_queued: usize,
    /// Protects: how many calls run and wait now, and whether the last
    /// crossing of the warning line was upwards.
    state: Mutex<Room>,
    /// Queued calls wait here for a running one to end.
    freed: Condvar,
    rejected: AtomicU64,
}

#[derive(Default)]
struct Room {
    running: usize,
    queued: usize,
    warned: bool,
}

impl<H: Handler> Bulkhead<H> {
    /// `max_parallel` ≥ 1; `max_queued` may be 0 (reject once all run).
    pub fn new(handler: H, max_parallel: usize, max_queued: usize) -> Result<Self, String> {
        if max_parallel == 0 {
            return Err("bulkhead: max_parallel is 0; at least 1 call must be able to run".to_string());
        }
        Ok(Bulkhead {
            handler,
            max_parallel,
            max_queued,
            state: Mutex::new(Room::default()),
            freed: Condvar::new(),
            rejected: AtomicU64::new(0),
        })
    }

    /// Calls rejected so far because the bulkhead was full.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Takes a running slot, waiting in the queue if there is room there.
    fn enter(&self, ctx: &CallContext<'_>) -> Result<(), Failure> {
        let mut room = self.state.lock();
        if room.running >= self.max_parallel {
            if room.queued >= self.max_queued {
                drop(room);
                // Relaxed: a statistic.
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::retryable(format!(
                    "bulkhead full: {} running, {} queued",
                    self.max_parallel, self.max_queued
                )));
            }
            room.queued += 1;
            self.note_fill(&mut room);
            // A stop is looked at before the room: a queued call that wakes
            // to a stop leaves, even if a slot came free.
            loop {
                if ctx.should_stop() {
                    room.queued -= 1;
                    return Err(Failure::retryable("cut short while queued in the bulkhead"));
                }
                if room.running < self.max_parallel {
                    break;
                }
                (room, _) = self.freed.wait_until(room, std::time::Instant::now() + STOP_CHECK);
            }
            room.queued -= 1;
        }
        room.running += 1;
        self.note_fill(&mut room);
        Ok(())
    }

    fn leave(&self) {
        let mut room = self.state.lock();
        room.running -= 1;
        self.note_fill(&mut room);
        drop(room);
        self.freed.notify_one();
    }

    /// Logs each rise past [`WARN_PERCENT`] of the room once.
    fn note_fill(&self, room: &mut Room) {
        let total = self.max_parallel + self.max_queued;
        let used = room.running + room.queued;
        let high = used * 100 >= total * WARN_PERCENT;
        if high && !room.warned {
            log::warn!(
                "bulkhead at {used} of {total} ({} running, {} queued): calls beyond {total} are rejected",
                room.running,
                room.queued
            );
        }
        room.warned = high;
    }
}

impl<H: Handler> Handler for Bulkhead<H> {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        self.enter(ctx)?;
        // Left however the call ends, a panic included.
        struct Leave<'b, H: Handler>(&'b Bulkhead<H>);
        impl<H: Handler> Drop for Leave<'_, H> {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        let _leave = Leave(self);
        self.handler.handle(ctx, item)
    }

    fn kill_running(&self) {
        self.handler.kill_running();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;

    use super::*;
    use crate::stop::StopHandle;

    #[test]
    fn beyond_parallel_and_queued_calls_are_rejected_and_counted_and_the_limit_holds() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let slow = {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            move |_: &CallContext<'_>, _: &Item| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(String::new())
            }
        };
        let bulkhead = Arc::new(Bulkhead::new(slow, 2, 3).unwrap());
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let bulkhead = Arc::clone(&bulkhead);
                thread::spawn(move || {
                    let stop = StopHandle::new();
                    let item = Item::new(i.to_string(), "");
                    let ctx = CallContext::new(&item, 1, None, &stop);
                    bulkhead.handle(&ctx, &item)
                })
            })
            .collect();
        let results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        let rejected: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(rejected.len(), 3, "8 calls, room for 2 + 3: {results:?}");
        assert!(rejected
            .iter()
            .all(|f| f.is_retryable() && f.message.contains("bulkhead full")));
        assert_eq!(bulkhead.rejected(), 3);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_queued_call_leaves_when_lote_hurries() {
        let blocker = |ctx: &CallContext<'_>, _: &Item| {
            ctx.stop_handle().sleep(Duration::from_secs(30));
            Ok(String::new())
        };
        let bulkhead = Arc::new(Bulkhead::new(blocker, 1, 1).unwrap());
        let stop = StopHandle::new();
        let first = {
            let (bulkhead, stop) = (Arc::clone(&bulkhead), stop.clone());
            thread::spawn(move || {
                let item = Item::new("a", "");
                bulkhead.handle(&CallContext::new(&item, 1, None, &stop), &item)
            })
        };
        thread::sleep(Duration::from_millis(50));
        let second = {
            let (bulkhead, stop) = (Arc::clone(&bulkhead), stop.clone());
            thread::spawn(move || {
                let item = Item::new("b", "");
                bulkhead.handle(&CallContext::new(&item, 1, None, &stop), &item)
            })
        };
        thread::sleep(Duration::from_millis(50));
        // A stop lets calls in hand finish; a hurry cuts them short.
        stop.hurry(crate::stop::StopReason::Requested);
        assert!(first.join().unwrap().is_ok());
        let queued = second.join().unwrap().unwrap_err();
        assert!(queued.message.contains("cut short"), "{queued:?}");
        assert!(Bulkhead::new(|_: &CallContext<'_>, _: &Item| Ok(String::new()), 0, 1).is_err());
    }
}
