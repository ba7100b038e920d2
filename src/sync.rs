//! The synchronisation primitives lote is built on, in one place so that the
//! loom models (`RUSTFLAGS="--cfg loom"`) can swap them for loom's checked
//! versions and the lock benchmark (`--features std-sync`) for std's.
//!
//! The API is std's by-value style (`wait` takes and returns the guard), which
//! all three backends can offer. Lock poisoning is ignored on purpose: no lock
//! in lote is held across user code (handlers run with no lock held), so a
//! poisoned lock can only mean a bug in lote itself, and the data behind it
//! (counters, the queue's per-priority lanes) is still consistent after any
//! single statement.

use std::time::Instant;

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;

#[cfg(all(not(loom), not(feature = "std-sync")))]
mod imp {
    use std::time::Instant;

    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }
        /// Waits until notified or `deadline`; returns the guard and whether
        /// the deadline passed.
        pub(crate) fn wait_until<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            deadline: Instant,
        ) -> (MutexGuard<'a, T>, bool) {
            let timed_out = self.0.wait_until(&mut guard, deadline).timed_out();
            (guard, timed_out)
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(any(loom, feature = "std-sync"))]
mod imp {
    use std::sync::PoisonError;
    use std::time::Instant;

    #[cfg(loom)]
    use loom::sync as backend;
    #[cfg(not(loom))]
    use std::sync as backend;

    pub(crate) type MutexGuard<'a, T> = backend::MutexGuard<'a, T>;

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(backend::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(backend::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(backend::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(backend::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn wait_until<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            deadline: Instant,
        ) -> (MutexGuard<'a, T>, bool) {
            let timeout = deadline.saturating_duration_since(Instant::now());
            let (guard, result) = self
                .0
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            (guard, result.timed_out())
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

pub(crate) use imp::{Condvar, Mutex, MutexGuard};

/// Waits on `condvar` until notified or until `deadline` (if any) passes.
/// Returns the guard and whether the deadline passed. Callers loop on their
/// own condition around this, as with any condition variable.
pub(crate) fn wait_maybe_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, T>, bool) {
    match deadline {
        Some(deadline) => condvar.wait_until(guard, deadline),
        None => (condvar.wait(guard), false),
    }
}
