//! Loom models of the circuit breaker's races: every interleaving of a few
//! threads, each checking that exactly one thread wins each transition.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_breaker`
//!
//! Time is synthetic (`try_acquire_at` / `failure_at` with instants built
//! from one reading), so the models depend only on the interleaving. Loom's
//! threads need `'static` closures and a permit borrows its breaker, so a
//! permit taken before the race stays on the model's main thread, which races
//! the spawned thread itself.

#![cfg(loom)]

use std::time::{Duration, Instant};

use loom::sync::Arc;
use loom::thread;
use lote::policy::{Breaker, BreakerConfig, BreakerState, Transition};

const OPEN_FOR: Duration = Duration::from_secs(1);
/// Long enough after an open for probes: the breaker stamps an open in whole
/// milliseconds rounded up, so it may open up to 1ms after the instant given.
const PAST_OPEN_FOR: Duration = Duration::from_millis(1_001);

fn breaker(failures: u32, half_open_probes: u32) -> Arc<Breaker> {
    Arc::new(Breaker::new(BreakerConfig {
        failures,
        open_for: OPEN_FOR,
        half_open_probes,
    }))
}

/// One counted failure at `now`, from a call admitted at `now`.
fn fail(breaker: &Breaker, now: Instant) -> Option<Transition> {
    breaker.try_acquire_at(now).expect("admitted").failure_at(now)
}

#[test]
fn two_failures_racing_to_the_threshold_open_it_once() {
    loom::model(|| {
        let b = breaker(2, 1);
        let now = Instant::now();
        let other = {
            let b = Arc::clone(&b);
            thread::spawn(move || fail(&b, now))
        };
        let mine = fail(&b, now);
        let theirs = other.join().unwrap();

        let opened: Vec<_> = [mine, theirs].into_iter().flatten().collect();
        assert_eq!(opened, [Transition::Opened]);
        assert_eq!(b.opens(), 1);
        assert_eq!(b.state_at(now), BreakerState::Open);
    });
}

#[test]
fn half_open_lets_exactly_one_of_two_racers_probe() {
    loom::model(|| {
        let b = breaker(1, 1);
        let now = Instant::now();
        assert_eq!(fail(&b, now), Some(Transition::Opened));
        let later = now + PAST_OPEN_FOR;
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);

        // Each racer settles its probe as a failure, so a probe slot never
        // frees up for the other: it sees either the slot taken or the
        // breaker reopened, and is turned away both ways.
        let race = |b: Arc<Breaker>| {
            move || match b.try_acquire_at(later) {
                Ok(probe) => {
                    assert!(probe.is_probe());
                    assert_eq!(probe.failure_at(later), Some(Transition::Reopened));
                    true
                }
                Err(_) => false,
            }
        };
        let other = thread::spawn(race(Arc::clone(&b)));
        let mine = race(Arc::clone(&b))();
        let theirs = other.join().unwrap();

        assert!(mine ^ theirs, "exactly one probe: mine {mine}, theirs {theirs}");
        assert_eq!(b.opens(), 2);
        assert_eq!(b.state_at(later), BreakerState::Open);
    });
}

#[test]
fn probe_success_racing_a_late_plain_failure_ends_closed() {
    loom::model(|| {
        let b = breaker(1, 1);
        let now = Instant::now();
        // A slow call admitted while closed, still running when it opens.
        let late = b.try_acquire_at(now).expect("closed admits");
        assert_eq!(fail(&b, now), Some(Transition::Opened));
        let later = now + PAST_OPEN_FOR;

        let prober = {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                let probe = b
                    .try_acquire_at(later)
                    .expect("the late failure must not take the probe");
                assert!(probe.is_probe());
                probe.success()
            })
        };
        let late_result = late.failure_at(later);
        let probe_result = prober.join().unwrap();

        assert_eq!(late_result, None);
        assert_eq!(probe_result, Some(Transition::Closed));
        assert_eq!(b.state_at(later), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.opens(), 1);
    });
}

#[test]
fn an_abandoned_probe_racing_an_acquire_never_leaks_its_slot() {
    loom::model(|| {
        let b = breaker(1, 1);
        let now = Instant::now();
        assert_eq!(fail(&b, now), Some(Transition::Opened));
        let later = now + PAST_OPEN_FOR;
        let probe = b.try_acquire_at(later).expect("probe");

        let other = {
            let b = Arc::clone(&b);
            thread::spawn(move || b.try_acquire_at(later).map(|p| p.success()).ok())
        };
        drop(probe);
        let theirs = other.join().unwrap();

        // Either the other thread came after the drop and probed (closing
        // it), or it came before and was turned away, leaving the slot free.
        match theirs {
            Some(transition) => {
                assert_eq!(transition, Some(Transition::Closed));
                assert_eq!(b.state_at(later), BreakerState::Closed);
            }
            None => {
                let again = b.try_acquire_at(later).expect("the abandoned slot is free");
                assert!(again.is_probe());
            }
        }
    });
}
