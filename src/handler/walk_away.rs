//! [`WalkAway`]: a timeout for a library handler that does not look at its
//! [`CallContext`] (SPEC §3.5, `timeout_mode: walk_away`). The call runs on
//! a helper thread; at the deadline the caller stops waiting, fails the
//! call as timed out, and abandons the thread, which runs on until the
//! handler returns (Rust cannot kill a thread). Abandoned threads are
//! counted and bounded: with `max_abandoned` of them still running, a call
//! is refused at once (retryable) rather than piling up more. (Calls that
//! passed that check together may each be abandoned: the bound is
//! `max_abandoned` plus the callers running at that moment, at most the
//! worker threads.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};

use super::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::sync::Mutex;

/// Runs `handler` on helper threads and walks away at `timeout`.
pub struct WalkAway {
    handler: Arc<dyn Handler>,
    timeout: Duration,
    max_abandoned: usize,
    /// Abandoned threads still running now.
    abandoned: Arc<AtomicUsize>,
    /// Calls walked away from, since the start.
    walked_away: AtomicU64,
    /// Calls refused because `max_abandoned` threads still ran.
    refused: AtomicU64,
}

/// Whether a call's thread finished or was abandoned: decided once, under
/// this lock, by whichever side gets there first.
#[derive(Default)]
struct Fate {
    finished: bool,
    abandoned: bool,
}

impl WalkAway {
    /// `timeout` > 0, `max_abandoned` ≥ 1.
    pub fn new(handler: Arc<dyn Handler>, timeout: Duration, max_abandoned: usize) -> Result<Self, String> {
        if timeout.is_zero() || max_abandoned == 0 {
            return Err("walk_away: timeout and max_abandoned must be above 0".to_string());
        }
        Ok(WalkAway {
            handler,
            timeout,
            max_abandoned,
            abandoned: Arc::new(AtomicUsize::new(0)),
            walked_away: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Abandoned threads still running now.
    pub fn abandoned_now(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Calls walked away from so far.
    pub fn walked_away(&self) -> u64 {
        self.walked_away.load(Ordering::Relaxed)
    }

    /// Calls refused so far because too many abandoned threads still ran.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Handler for WalkAway {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let running = self.abandoned.load(Ordering::SeqCst);
        if running >= self.max_abandoned {
            // Relaxed: a statistic.
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::retryable(format!(
                "walk_away: {running} abandoned calls still run (the most allowed); refusing more until they end"
            )));
        }
        let deadline = ctx
            .deadline()
            .map_or(Instant::now() + self.timeout, |d| d.min(Instant::now() + self.timeout));
        let (sender, receiver) = bounded(1);
        let fate = Arc::new(Mutex::new(Fate::default()));
        let spawned = {
            let (handler, item, fate, abandoned) = (
                Arc::clone(&self.handler),
                item.clone(),
                Arc::clone(&fate),
                Arc::clone(&self.abandoned),
            );
            let (attempt, stop) = (ctx.attempt(), ctx.stop_handle().clone());
            std::thread::Builder::new()
                .name("lote-walk-away".to_string())
                .spawn(move || {
                    let ctx = CallContext::new(&item, attempt, Some(deadline), &stop);
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(&ctx, &item)))
                        .unwrap_or_else(|_| Err(Failure::fatal("handler panicked")));
                    let mut fate = fate.lock();
                    fate.finished = true;
                    if fate.abandoned {
                        abandoned.fetch_sub(1, Ordering::SeqCst);
                    } else {
                        let _ = sender.send(result);
                    }
                })
        };
        if let Err(e) = spawned {
            return Err(Failure::retryable(format!(
                "walk_away: cannot start the call's thread: {e}"
            )));
        }
        let started = Instant::now();
        match receiver.recv_deadline(deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                let mut fate = fate.lock();
                if fate.finished {
                    drop(fate);
                    // It finished as the deadline passed: its result is there.
                    return receiver
                        .try_recv()
                        .unwrap_or_else(|_| Err(Failure::fatal("the call's thread ended without a result")));
                }
                fate.abandoned = true;
                self.abandoned.fetch_add(1, Ordering::SeqCst);
                drop(fate);
                self.walked_away.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "item {}: walked away from the call after {}ms; its thread runs on ({} abandoned now)",
                    item.id,
                    started.elapsed().as_millis(),
                    self.abandoned_now()
                );
                Err(Failure::timed_out(started.elapsed()))
            }
        }
    }

    /// An exec child under an abandoned call is killed with the rest.
    fn kill_running(&self) {
        self.handler.kill_running();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::StopHandle;

    #[test]
    fn a_fast_call_answers_and_a_slow_one_is_walked_away_from() {
        let sleepy: Arc<dyn Handler> = Arc::new(|_: &CallContext<'_>, item: &Item| {
            if item.payload == b"slow" {
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok("done".to_string())
        });
        let guard = WalkAway::new(sleepy, Duration::from_millis(50), 4).unwrap();
        let stop = StopHandle::new();
        let fast = Item::new("f", "fast");
        assert_eq!(
            guard.handle(&CallContext::new(&fast, 1, None, &stop), &fast).unwrap(),
            "done"
        );
        let slow = Item::new("s", "slow");
        let started = Instant::now();
        let failure = guard
            .handle(&CallContext::new(&slow, 1, None, &stop), &slow)
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "walked away at the timeout"
        );
        assert!(failure.is_retryable() && failure.message.starts_with("timed out after"));
        assert_eq!((guard.walked_away(), guard.abandoned_now()), (1, 1));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            guard.abandoned_now(),
            0,
            "the abandoned thread ended and was counted out"
        );
    }

    #[test]
    fn ten_thousand_timed_out_calls_leave_at_most_max_abandoned_threads() {
        let stuck: Arc<dyn Handler> = Arc::new(|_: &CallContext<'_>, _: &Item| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(String::new())
        });
        let guard = WalkAway::new(stuck, Duration::from_millis(1), 8).unwrap();
        let stop = StopHandle::new();
        let item = Item::new("x", "");
        let mut most = 0;
        for _ in 0..10_000 {
            let result = guard.handle(&CallContext::new(&item, 1, None, &stop), &item);
            assert!(result.is_err());
            most = most.max(guard.abandoned_now());
        }
        assert!(most <= 8, "at most 8 abandoned threads at once, saw {most}");
        assert_eq!(guard.walked_away() + guard.refused(), 10_000);
        assert!(guard.refused() > 9_000, "the rest were refused, not piled up");
    }
}
