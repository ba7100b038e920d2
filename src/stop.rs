//! [`StopHandle`]: the one way anything stops a session (a leaf: it imports
//! only `sync` and std, so the handler, the session and the daemon can all
//! hold one).
//!
//! A signal handler, the deadline thread, a test or a library user calls
//! [`StopHandle::trigger`] (or [`StopHandle::stop`]). The first trigger moves the
//! handle to [`StopLevel::Stopping`]: producers stop reading, one `Stop` per
//! worker overtakes all queued work, workers finish the item in hand. A second
//! trigger moves it to [`StopLevel::Hurry`]: handlers see their call context as
//! cancelled and cut in-flight work short.
//!
//! Invariants:
//! - The level only rises: Running → Stopping → Hurry.
//! - Every level change notifies `wake`, so every [`StopHandle::sleep_until`]
//!   (deadline thread, retry back-off, breaker pause, source polling) returns
//!   at once: no thread sleeps through a shutdown.
//! - Listeners run outside the lock, once per level change, and a listener
//!   registered after a stop is called at once: none misses the stop.
//!
//! A handle can have children ([`StopHandle::child`]): stopping the parent stops
//! every child, stopping a child leaves the parent running. A daemon keeps one
//! handle for its life (signals) and gives each session a child, which the
//! session's own deadline may stop without ending the daemon.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sync::atomic::{AtomicU8, Ordering};
use crate::sync::{Condvar, Mutex};

/// How far a stop has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    Running = 0,
    /// Stop taking work; finish the item in hand.
    Stopping = 1,
    /// Cut in-flight work short (the second signal).
    Hurry = 2,
}

impl StopLevel {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => StopLevel::Running,
            1 => StopLevel::Stopping,
            _ => StopLevel::Hurry,
        }
    }
}

/// Why the first stop happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM, SIGINT or another signal, by name.
    Signal(String),
    /// The session's `deadline` passed.
    Deadline,
    /// Asked for through the API (a test, a library user).
    Requested,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(name) => write!(f, "signal {name}"),
            StopReason::Deadline => f.write_str("deadline"),
            StopReason::Requested => f.write_str("stop requested"),
        }
    }
}

type Listener = Arc<dyn Fn(StopLevel) + Send + Sync>;

struct State {
    reason: Option<StopReason>,
    /// Called (outside this lock) on every level change.
    listeners: Vec<(u64, Listener)>,
    next_listener: u64,
}

struct Shared {
    /// The current [`StopLevel`]. Written only under `state`'s lock (so level
    /// and reason change together); read lock-free on hot paths. Release on
    /// write / Acquire on read: a thread that sees Stopping also sees the
    /// reason written before it.
    level: AtomicU8,
    /// Protects the reason and the listener list.
    state: Mutex<State>,
    /// Notified on every level change; waited on by `sleep_until`.
    wake: Condvar,
    /// For a child: its listener on the parent, removed when the child goes.
    parent_link: Mutex<Option<Subscription>>,
}

/// Triggers and observes a stop. Cheap to clone; all clones are one handle.
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("level", &self.level())
            .field("reason", &self.reason())
            .finish()
    }
}

impl StopHandle {
    /// A handle that is running.
    pub fn new() -> Self {
        StopHandle {
            shared: Arc::new(Shared {
                level: AtomicU8::new(StopLevel::Running as u8),
                state: Mutex::new(State {
                    reason: None,
                    listeners: Vec::new(),
                    next_listener: 0,
                }),
                wake: Condvar::new(),
                parent_link: Mutex::new(None),
            }),
        }
    }

    /// The signal semantics: the first call stops, any later call hurries.
    /// Returns the level reached.
    pub fn trigger(&self, reason: StopReason) -> StopLevel {
        let target = match self.level() {
            StopLevel::Running => StopLevel::Stopping,
            _ => StopLevel::Hurry,
        };
        self.raise(target, reason)
    }

    /// Stops (idempotent; never hurries). Used by the deadline.
    pub fn stop(&self, reason: StopReason) {
        self.raise(StopLevel::Stopping, reason);
    }

    /// Cuts in-flight work short, stopping first if needed.
    pub fn hurry(&self, reason: StopReason) {
        self.raise(StopLevel::Hurry, reason);
    }

    /// The current level.
    pub fn level(&self) -> StopLevel {
        // Acquire: pairs with the Release store in `raise`.
        StopLevel::from_u8(self.shared.level.load(Ordering::Acquire))
    }

    /// True once a stop has been asked for.
    pub fn is_stopping(&self) -> bool {
        self.level() >= StopLevel::Stopping
    }

    /// True once in-flight work should be cut short.
    pub fn is_hurrying(&self) -> bool {
        self.level() == StopLevel::Hurry
    }

    /// Why the first stop happened, once stopping.
    pub fn reason(&self) -> Option<StopReason> {
        self.shared.state.lock().reason.clone()
    }

    /// Sleeps for `duration` or until a stop. Returns true if stopping.
    pub fn sleep(&self, duration: Duration) -> bool {
        match Instant::now().checked_add(duration) {
            Some(deadline) => self.sleep_until(deadline),
            None => self.wait_for_stop(),
        }
    }

    /// Sleeps until `deadline` or until a stop. Returns true if stopping.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        let mut state = self.shared.state.lock();
        // Loop: condition variables wake spuriously. `raise` notifies `wake`.
        while !self.is_stopping() {
            let (guard, timed_out) = self.shared.wake.wait_until(state, deadline);
            state = guard;
            if timed_out {
                break;
            }
        }
        drop(state);
        self.is_stopping()
    }

    /// Blocks until a stop. Returns true.
    pub fn wait_for_stop(&self) -> bool {
        let mut state = self.shared.state.lock();
        // `raise` notifies `wake` after every level change.
        while !self.is_stopping() {
            state = self.shared.wake.wait(state);
        }
        true
    }

    /// Calls `listener` on every level change from now on (at once if the
    /// handle is already stopping). Dropping the subscription unregisters it.
    pub fn on_change(&self, listener: impl Fn(StopLevel) + Send + Sync + 'static) -> Subscription {
        let listener: Listener = Arc::new(listener);
        let mut state = self.shared.state.lock();
        let id = state.next_listener;
        state.next_listener += 1;
        state.listeners.push((id, Arc::clone(&listener)));
        // Read the level under the lock: `raise` changes it under the lock,
        // so either it sees our listener or we see its level, never neither.
        let level = self.level();
        drop(state);
        if level > StopLevel::Running {
            listener(level);
        }
        Subscription {
            shared: Arc::downgrade(&self.shared),
            id,
        }
    }

    /// A handle that stops (and hurries) whenever this one does, and can also
    /// be stopped on its own without stopping this one.
    pub fn child(&self) -> StopHandle {
        let child = StopHandle::new();
        let weak: Weak<Shared> = Arc::downgrade(&child.shared);
        let parent = self.clone();
        let link = self.on_change(move |level| {
            if let Some(shared) = weak.upgrade() {
                let reason = parent.reason().unwrap_or(StopReason::Requested);
                StopHandle { shared }.raise(level, reason);
            }
        });
        *child.shared.parent_link.lock() = Some(link);
        child
    }

    fn raise(&self, target: StopLevel, reason: StopReason) -> StopLevel {
        let mut state = self.shared.state.lock();
        let current = self.level();
        if target <= current {
            return current;
        }
        if state.reason.is_none() {
            state.reason = Some(reason);
        }
        // Release: pairs with the Acquire in `level`.
        self.shared.level.store(target as u8, Ordering::Release);
        let listeners: Vec<Listener> = state.listeners.iter().map(|(_, l)| Arc::clone(l)).collect();
        drop(state);
        self.shared.wake.notify_all();
        for listener in listeners {
            listener(target);
        }
        target
    }
}

/// Keeps a listener registered; dropping it unregisters the listener.
pub struct Subscription {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.state.lock().listeners.retain(|(id, _)| *id != self.id);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    #[test]
    fn first_trigger_stops_second_hurries() {
        let handle = StopHandle::new();
        assert_eq!(handle.level(), StopLevel::Running);
        assert_eq!(
            handle.trigger(StopReason::Signal("SIGTERM".into())),
            StopLevel::Stopping
        );
        assert_eq!(handle.trigger(StopReason::Signal("SIGINT".into())), StopLevel::Hurry);
        assert_eq!(handle.reason(), Some(StopReason::Signal("SIGTERM".into())));
    }

    #[test]
    fn stop_never_hurries() {
        let handle = StopHandle::new();
        handle.stop(StopReason::Deadline);
        handle.stop(StopReason::Deadline);
        assert_eq!(handle.level(), StopLevel::Stopping);
    }

    #[test]
    fn sleep_wakes_at_once_on_stop() {
        let handle = StopHandle::new();
        let sleeper = {
            let handle = handle.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let stopped = handle.sleep(Duration::from_secs(60));
                (stopped, started.elapsed())
            })
        };
        thread::sleep(Duration::from_millis(20));
        handle.stop(StopReason::Requested);
        let (stopped, slept) = sleeper.join().unwrap();
        assert!(stopped);
        assert!(slept < Duration::from_secs(30), "slept {slept:?} through a stop");
    }

    #[test]
    fn sleep_runs_its_course_without_a_stop() {
        let handle = StopHandle::new();
        assert!(!handle.sleep(Duration::from_millis(5)));
    }

    #[test]
    fn listeners_see_each_level_once_and_late_ones_at_once() {
        let handle = StopHandle::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let _early = handle.on_change(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        handle.trigger(StopReason::Requested);
        handle.trigger(StopReason::Requested);
        handle.trigger(StopReason::Requested);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        let late = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&late);
        let _late = handle.on_change(move |level| {
            assert_eq!(level, StopLevel::Hurry);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(late.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn dropped_subscription_is_not_called() {
        let handle = StopHandle::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        drop(handle.on_change(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        handle.stop(StopReason::Requested);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn parent_stops_child_but_child_does_not_stop_parent() {
        let parent = StopHandle::new();
        let first = parent.child();
        first.stop(StopReason::Deadline);
        assert!(first.is_stopping());
        assert!(!parent.is_stopping());

        let second = parent.child();
        parent.trigger(StopReason::Signal("SIGTERM".into()));
        assert!(second.is_stopping());
        assert_eq!(second.reason(), Some(StopReason::Signal("SIGTERM".into())));
        parent.trigger(StopReason::Signal("SIGTERM".into()));
        assert!(second.is_hurrying());
    }
}
