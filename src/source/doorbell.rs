//! A doorbell: how a stream source that can hear new items arrive (a spool
//! watched with inotify) wakes the producer thread waiting on it, so that an
//! idle daemon does not poll.
//!
//! The source rings it when something may have arrived, or sets a time to
//! look again (a file seen but not stable yet). The producer waits on it
//! instead of sleeping `poll_every`; it also rings it when the session stops
//! (`StopHandle::on_change`), so a stop never waits for the bell.

use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};

/// How long an idle producer waits on a bell that nobody rings, while the
/// source still hears arrivals: a safety net for what the kernel does not
/// report (a file written on another host into a network file system, an
/// event lost some other way). 30 s keeps an idle daemon's wake-ups from it
/// at 0.03 per second; a longer `poll_every` is kept.
pub const SAFETY_NET: Duration = Duration::from_secs(30);

/// See the module documentation.
pub struct Doorbell {
    state: Mutex<Bell>,
    changed: Condvar,
}

#[derive(Default)]
struct Bell {
    /// Rung since the last wait ended.
    rung: bool,
    /// Look again at this moment at the latest (the earliest asked).
    due: Option<Instant>,
    /// The source no longer hears arrivals (its watch failed): waits are
    /// `poll_every` again.
    deaf: bool,
    /// Rings before this moment only make it due then (see
    /// [`Doorbell::hold`]).
    held_until: Option<Instant>,
}

impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}

impl Doorbell {
    pub fn new() -> Self {
        Doorbell {
            state: Mutex::new(Bell::default()),
            changed: Condvar::new(),
        }
    }

    /// Something may have arrived: the waiting producer pulls again now
    /// (or, while the bell is held, when the hold ends).
    pub fn ring(&self) {
        let mut bell = self.state.lock();
        match bell.held_until {
            Some(until) if Instant::now() < until => {
                if bell.due.is_none_or(|due| until < due) {
                    bell.due = Some(until);
                }
            }
            _ => bell.rung = true,
        }
        drop(bell);
        self.changed.notify_all();
    }

    /// Holds the bell until `until`: a ring before then wakes the producer
    /// only at `until`. A source holds it before it puts items back itself,
    /// so that its own moves (heard as arrivals) do not offer the items
    /// again at once: a breaker that skips must not spin on a quiet spool.
    pub fn hold(&self, until: Instant) {
        let mut bell = self.state.lock();
        if bell.held_until.is_none_or(|held| held < until) {
            bell.held_until = Some(until);
        }
    }

    /// Rings now, held or not: a stop must never wait.
    pub fn ring_now(&self) {
        self.state.lock().rung = true;
        self.changed.notify_all();
    }

    /// Asks the producer to pull again at `at` at the latest.
    pub fn ring_at(&self, at: Instant) {
        let mut bell = self.state.lock();
        if bell.due.is_none_or(|due| at < due) {
            bell.due = Some(at);
        }
        drop(bell);
        self.changed.notify_all();
    }

    /// The source can no longer hear arrivals: from now on the producer
    /// polls every `poll_every`, as for a source without a bell.
    pub fn go_deaf(&self) {
        self.state.lock().deaf = true;
        self.ring_now();
    }

    /// Whether the source still hears arrivals.
    pub fn hears(&self) -> bool {
        !self.state.lock().deaf
    }

    /// Waits until the bell rings, the time asked by [`Doorbell::ring_at`]
    /// comes, or, when nothing asks earlier, `poll_every` (the source is
    /// deaf) or the longer of `poll_every` and [`SAFETY_NET`] (it hears).
    pub fn wait(&self, poll_every: Duration) {
        let mut bell = self.state.lock();
        let started = Instant::now();
        loop {
            if bell.rung {
                break;
            }
            let period = if bell.deaf {
                poll_every
            } else {
                poll_every.max(SAFETY_NET)
            };
            let fallback = started.checked_add(period);
            let deadline = match (bell.due, fallback) {
                (Some(due), Some(fallback)) => Some(due.min(fallback)),
                (due, fallback) => due.or(fallback),
            };
            match deadline {
                Some(deadline) if Instant::now() >= deadline => break,
                Some(deadline) => bell = crate::sync::wait_maybe_until(&self.changed, bell, Some(deadline)).0,
                None => bell = self.changed.wait(bell),
            }
        }
        bell.rung = false;
        bell.due = None;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_ring_ends_the_wait_and_a_due_time_shortens_it() {
        let bell = Arc::new(Doorbell::new());
        let ringer = Arc::clone(&bell);
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ringer.ring();
        });
        bell.wait(Duration::from_secs(3600));
        thread.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));

        let started = Instant::now();
        bell.ring_at(Instant::now() + Duration::from_millis(50));
        bell.wait(Duration::from_secs(3600));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_held_bell_defers_a_ring_to_the_end_of_the_hold_but_not_a_stop() {
        let bell = Doorbell::new();
        let started = Instant::now();
        bell.hold(started + Duration::from_millis(300));
        bell.ring();
        bell.wait(Duration::from_secs(3600));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let started = Instant::now();
        bell.hold(started + Duration::from_secs(3600));
        bell.ring_now();
        bell.wait(Duration::from_secs(3600));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_deaf_bell_waits_poll_every() {
        let bell = Doorbell::new();
        bell.go_deaf();
        bell.wait(Duration::from_secs(3600)); // the ring of go_deaf
        assert!(!bell.hears());
        let started = Instant::now();
        bell.wait(Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
