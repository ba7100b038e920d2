//! A lock-free circuit breaker: after `failures` consecutive failures it opens
//! and turns calls away for `open_for`; then it lets up to `half_open_probes`
//! probe calls through, and the first probe result decides: a success closes
//! it, a failure opens it again for a fresh `open_for`.
//!
//! # The state word
//!
//! The whole state machine is one `AtomicU64`, so that a state change and the
//! time it happened change together, in one compare-exchange:
//!
//! ```text
//!   63   62 ........... 40   39 .................. 0
//! [open] [count: 23 bits]    [stamp: 40 bits]
//! ```
//!
//! - Closed (`open` = 0): `count` is the consecutive failures so far; `stamp`
//!   only names this closed period.
//! - Open (`open` = 1): `count` is the probes in flight; `stamp` is when it
//!   opened, in whole milliseconds since the breaker was made, rounded up (so
//!   the breaker stays open at least `open_for`). 40 bits of milliseconds
//!   last 34 years.
//!
//! Half-open is not stored: it is an open word whose `open_for` has run out,
//! read off the clock by whoever looks. Nobody has to be awake to move the
//! breaker from open to half-open.
//!
//! The `open` bit and `stamp` together are the word's *episode*. Every permit
//! remembers the episode it was issued in.
//!
//! # Invariants
//!
//! 1. Every state change is one successful compare-exchange on the word. The
//!    thread whose exchange succeeds owns that transition: it alone returns it,
//!    and, for an open, it alone counts it in `opens`.
//! 2. An episode never comes back: stamps never decrease, a reopen moves the
//!    stamp strictly forward, and closing sets it to the opened-at stamp + 1,
//!    past every earlier stamp. (Once the stamp reaches its 34-year ceiling it
//!    stops moving and this guarantee lapses.)
//! 3. A permit's result is applied only while the word is still in the
//!    permit's episode. That is how late results are ignored: a call that
//!    started while closed and ends after the breaker opened (or opened and
//!    closed again) changes nothing, nor does a probe that ends after another
//!    probe already closed or reopened the breaker.
//! 4. A permit issued while closed is a plain call, one issued while open is a
//!    probe; so plain results act only on a closed word and probe results only
//!    on an open one.
//! 5. Closed: `count` < the failure threshold (reaching it opens instead).
//!    Open: `count` <= `half_open_probes`, and it is above 0 only after
//!    `open_for` has run out, because probes are admitted only then.
//! 6. Dropping a permit unreported abandons the call: a probe gives its slot
//!    back if its episode is still current; a plain call changes nothing.
//! 7. The busy path (admitting a call while closed, a success with no failures
//!    counted) is a single load and no write, so workers do not fight over the
//!    word's cache line while all is well.
//!
//! # Memory ordering
//!
//! The breaker's own correctness rests only on the state being one atomic
//! location: every read-modify-write sees the latest value, so Relaxed would
//! keep the state machine right. Transitions still use AcqRel (and loads
//! Acquire) because a transition hands the downstream from one call to the
//! next: a worker that sees the breaker closed has synchronised with the probe
//! that closed it, so what that probe's thread wrote before reporting (say, a
//! rebuilt connection in a shared handler) is visible to the calls the close
//! lets through. It costs nothing on x86 and little on ARM, and the busy path
//! is one load either way. The `opens` counter is statistics and is Relaxed.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::atomic::{AtomicU64, Ordering};

/// Bits 0..40 of the word: the stamp, in milliseconds since the epoch.
const STAMP_BITS: u32 = 40;
/// The largest stamp the word holds; later instants are clamped to it.
const STAMP_MAX: u64 = (1 << STAMP_BITS) - 1;
/// Bits 40..63: consecutive failures (closed) or probes in flight (open).
const COUNT_BITS: u32 = 23;
/// The largest count the word holds (8,388,607); `failures` and
/// `half_open_probes` are capped to it.
const MAX_COUNT: u32 = (1 << COUNT_BITS) - 1;
/// Bit 63: set while open (including half-open).
const OPEN_BIT: u64 = 1 << 63;

/// How soon a caller turned away because every probe slot is taken should
/// look again (unless `open_for` is shorter): a probe usually answers within
/// a call's time, and the slot may come back any moment.
const PROBE_POLL: Duration = Duration::from_millis(50);
/// The shortest `retry_in` ever given, so a waiting caller never spins.
const MIN_POLL: Duration = Duration::from_millis(1);

/// The breaker's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that open the breaker (>= 1).
    pub failures: u32,
    /// How long it stays open before probes are allowed (>= 1ms).
    pub open_for: Duration,
    /// How many probe calls may be in flight while half-open (>= 1).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    /// Open after 5 consecutive failures, for 30s, then one probe.
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings; the message names the field, what it was, and
    /// what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_COUNT).contains(&self.failures) {
            return Err(format!(
                "breaker failures is {}; expected 1 to {MAX_COUNT} consecutive failures before it opens",
                self.failures
            ));
        }
        if self.open_for < Duration::from_millis(1) {
            return Err(format!(
                "breaker open_for is {:?}; expected at least 1ms (the breaker counts time in milliseconds, \
                 and an open breaker that lets probes through at once would not pause anything)",
                self.open_for
            ));
        }
        if !(1..=MAX_COUNT).contains(&self.half_open_probes) {
            return Err(format!(
                "breaker half_open_probes is {}; expected 1 to {MAX_COUNT} probe calls at a time",
                self.half_open_probes
            ));
        }
        Ok(())
    }
}

/// Where the breaker stands, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are turned away until `open_for` has run out.
    Open,
    /// `open_for` has run out: up to `half_open_probes` probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A state change caused by a call's result; returned to the one caller whose
/// result caused it, so the event is logged and counted exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: the failure threshold was reached.
    Opened,
    /// Half-open → open: a probe failed.
    Reopened,
    /// Half-open → closed: a probe succeeded.
    Closed,
}

/// A call turned away by an open breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// How long until a probe may be allowed: the rest of `open_for`, or a
    /// short poll interval while half-open with every probe slot taken.
    pub retry_in: Duration,
}

/// The unpacked state word (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    open: bool,
    count: u32,
    stamp: u64,
}

impl Word {
    fn unpack(bits: u64) -> Word {
        Word {
            open: bits & OPEN_BIT != 0,
            count: ((bits >> STAMP_BITS) & u64::from(MAX_COUNT)) as u32,
            stamp: bits & STAMP_MAX,
        }
    }

    fn pack(self) -> u64 {
        debug_assert!(self.count <= MAX_COUNT && self.stamp <= STAMP_MAX, "{self:?}");
        let open = if self.open { OPEN_BIT } else { 0 };
        open | (u64::from(self.count) << STAMP_BITS) | self.stamp
    }

    /// A closed word with no failures counted yet.
    fn closed(stamp: u64) -> Word {
        Word {
            open: false,
            count: 0,
            stamp,
        }
    }

    /// An open word with no probes in flight.
    fn opened(stamp: u64) -> Word {
        Word {
            open: true,
            count: 0,
            stamp,
        }
    }

    /// The same episode with another count.
    fn with_count(self, count: u32) -> Word {
        Word { count, ..self }
    }

    /// The open bit and stamp: what a permit remembers (invariant 3).
    fn episode(self) -> u64 {
        self.with_count(0).pack()
    }
}

/// A lock-free circuit breaker, shared by reference (`Arc<Breaker>`) among
/// the workers calling one downstream.
pub struct Breaker {
    config: BreakerConfig,
    /// `config.failures` brought into 1..=MAX_COUNT, so an unvalidated config
    /// still gives a working breaker.
    threshold: u32,
    /// `config.half_open_probes` brought into 1..=MAX_COUNT (0 would never
    /// probe and so never close).
    max_probes: u32,
    /// Time zero for stamps: when the breaker was made.
    epoch: Instant,
    /// The whole state machine, packed as described in the module docs.
    word: AtomicU64,
    /// How many times the breaker has opened or reopened; statistics only.
    opens: AtomicU64,
}

impl Breaker {
    /// A closed breaker. An out-of-range `failures` or `half_open_probes` is
    /// brought to the nearest value in 1..=8,388,607 (what the state word
    /// holds); run [`BreakerConfig::validate`] first to report it instead.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            threshold: config.failures.clamp(1, MAX_COUNT),
            max_probes: config.half_open_probes.clamp(1, MAX_COUNT),
            config,
            epoch: Instant::now(),
            word: AtomicU64::new(Word::closed(0).pack()),
            opens: AtomicU64::new(0),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    /// The state at `now` (half-open is read off the clock).
    pub fn state_at(&self, now: Instant) -> BreakerState {
        self.state_of(self.load(), now)
    }

    fn state_of(&self, word: Word, now: Instant) -> BreakerState {
        if !word.open {
            BreakerState::Closed
        } else if self.open_elapsed(word, now) < self.config.open_for {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// How many times it has opened (first opens and reopens alike).
    pub fn opens(&self) -> u64 {
        // Relaxed: statistics; nothing is read on the strength of it.
        self.opens.load(Ordering::Relaxed)
    }

    /// Counted failures in a row in the current closed period; 0 while open
    /// or half-open (counting starts again when it closes).
    pub fn consecutive_failures(&self) -> u32 {
        let word = self.load();
        if word.open {
            0
        } else {
            word.count
        }
    }

    /// Asks to make one call now.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.try_acquire_at(Instant::now())
    }

    /// Asks to make one call at `now`: always granted while closed; refused
    /// while open; granted as a probe while half-open and a probe slot is free.
    pub fn try_acquire_at(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        // Acquire: see "Memory ordering" in the module docs.
        let mut bits = self.word.load(Ordering::Acquire);
        loop {
            let word = Word::unpack(bits);
            if !word.open {
                return Ok(Permit::new(self, word));
            }
            let elapsed = self.open_elapsed(word, now);
            if elapsed < self.config.open_for {
                let retry_in = (self.config.open_for - elapsed).max(MIN_POLL);
                return Err(Rejected { retry_in });
            }
            if word.count >= self.max_probes {
                let retry_in = self.config.open_for.clamp(MIN_POLL, PROBE_POLL);
                return Err(Rejected { retry_in });
            }
            match self.exchange(bits, word.with_count(word.count + 1)) {
                Ok(()) => return Ok(Permit::new(self, word)),
                Err(actual) => bits = actual,
            }
        }
    }

    /// A call from `episode` succeeded.
    fn succeeded(&self, episode: u64) -> Option<Transition> {
        let mut bits = self.word.load(Ordering::Acquire); // Acquire: see "Memory ordering".
        loop {
            let word = Word::unpack(bits);
            if word.episode() != episode {
                return None; // A late result (invariant 3).
            }
            let (next, transition) = if word.open {
                // Past every earlier stamp (invariant 2).
                let closed = Word::closed((word.stamp + 1).min(STAMP_MAX));
                (closed, Some(Transition::Closed))
            } else if word.count == 0 {
                return None; // Nothing to reset; no write keeps the busy path a load (invariant 7).
            } else {
                (word.with_count(0), None)
            };
            match self.exchange(bits, next) {
                Ok(()) => return transition,
                Err(actual) => bits = actual,
            }
        }
    }

    /// A call from `episode` failed at `now`.
    fn failed(&self, episode: u64, now: Instant) -> Option<Transition> {
        let mut bits = self.word.load(Ordering::Acquire); // Acquire: see "Memory ordering".
        loop {
            let word = Word::unpack(bits);
            if word.episode() != episode {
                return None; // A late result (invariant 3).
            }
            let (next, transition) = if word.open {
                // Strictly forward even if `now` is not (invariant 2).
                let reopened = Word::opened(self.stamp_at(now).max(word.stamp + 1).min(STAMP_MAX));
                (reopened, Some(Transition::Reopened))
            } else if word.count + 1 >= self.threshold {
                // Not below the closed stamp, which is above every earlier
                // opened-at stamp; the open bit tells the two apart.
                let opened = Word::opened(self.stamp_at(now).max(word.stamp));
                (opened, Some(Transition::Opened))
            } else {
                (word.with_count(word.count + 1), None)
            };
            match self.exchange(bits, next) {
                Ok(()) => {
                    if transition.is_some() {
                        // Relaxed: statistics; the exchange above already made
                        // this thread the only one to count this open.
                        self.opens.fetch_add(1, Ordering::Relaxed);
                    }
                    return transition;
                }
                Err(actual) => bits = actual,
            }
        }
    }

    /// A probe from `episode` was dropped unreported: give its slot back.
    fn abandoned(&self, episode: u64) {
        let mut bits = self.word.load(Ordering::Acquire); // Acquire: see "Memory ordering".
        loop {
            let word = Word::unpack(bits);
            if word.episode() != episode || word.count == 0 {
                return; // Another probe already settled the episode; its slots went with it.
            }
            match self.exchange(bits, word.with_count(word.count - 1)) {
                Ok(()) => return,
                Err(actual) => bits = actual,
            }
        }
    }

    fn load(&self) -> Word {
        // Acquire: see "Memory ordering" in the module docs.
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    /// Moves the word from `current` to `next`, or returns what it is now.
    fn exchange(&self, current: u64, next: Word) -> Result<(), u64> {
        self.word
            // AcqRel on success: a transition publishes the caller's call and
            // sees the one before (see "Memory ordering"). Acquire on failure:
            // the value returned is the one the retry builds on. Weak: every
            // caller loops, so a spurious failure only costs a retry.
            .compare_exchange_weak(current, next.pack(), Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    /// `now` as a stamp: milliseconds since the epoch, rounded up, clamped to
    /// what the word holds.
    fn stamp_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .min(STAMP_MAX)
    }

    /// How long an open word has been open at `now` (0 if `now` is earlier).
    fn open_elapsed(&self, word: Word, now: Instant) -> Duration {
        let opened_at = self.epoch + Duration::from_millis(word.stamp);
        now.saturating_duration_since(opened_at)
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.load();
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("state", &self.state_of(word, Instant::now()))
            .field("count", &word.count)
            .field("opens", &self.opens())
            .finish()
    }
}

/// Permission to make one call. Report how it went with [`Permit::success`]
/// or [`Permit::failure`]; dropping it unreported means the call was abandoned
/// (or failed in a way that says nothing about the downstream), which frees a
/// probe slot and changes nothing else.
#[must_use = "report the call's result with success() or failure(); dropping the permit abandons it"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// The episode the permit was issued in (invariant 3).
    episode: u64,
    /// Set once the result has been reported, so `drop` does not also
    /// release the probe slot.
    reported: bool,
}

impl<'a> Permit<'a> {
    fn new(breaker: &'a Breaker, issued_in: Word) -> Self {
        Permit {
            breaker,
            episode: issued_in.episode(),
            reported: false,
        }
    }

    /// Whether this call is a half-open probe (its result decides the state).
    pub fn is_probe(&self) -> bool {
        self.episode & OPEN_BIT != 0
    }

    /// The call succeeded. Returns the transition it caused, if any.
    pub fn success(mut self) -> Option<Transition> {
        self.reported = true;
        self.breaker.succeeded(self.episode)
    }

    /// The call failed in a way that counts against the downstream. Returns
    /// the transition it caused, if any.
    pub fn failure(self) -> Option<Transition> {
        self.failure_at(Instant::now())
    }

    /// [`Permit::failure`] at a given time (it stamps an open).
    pub fn failure_at(mut self, now: Instant) -> Option<Transition> {
        self.reported = true;
        self.breaker.failed(self.episode, now)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.is_probe() {
            self.breaker.abandoned(self.episode);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .field("episode", &self.episode)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Barrier, Mutex};

    fn config(failures: u32, open_for_ms: u64, probes: u32) -> BreakerConfig {
        BreakerConfig {
            failures,
            open_for: Duration::from_millis(open_for_ms),
            half_open_probes: probes,
        }
    }

    /// A breaker and a clock reading `at(ms)` = its epoch + `ms`, so tests
    /// control time exactly.
    fn breaker(failures: u32, open_for_ms: u64, probes: u32) -> (Breaker, impl Fn(u64) -> Instant) {
        let b = Breaker::new(config(failures, open_for_ms, probes));
        let epoch = b.epoch;
        (b, move |ms| epoch + Duration::from_millis(ms))
    }

    fn fail(b: &Breaker, now: Instant) -> Option<Transition> {
        b.try_acquire_at(now).expect("admitted").failure_at(now)
    }

    fn succeed(b: &Breaker, now: Instant) -> Option<Transition> {
        b.try_acquire_at(now).expect("admitted").success()
    }

    fn rejected_for(b: &Breaker, now: Instant) -> Duration {
        b.try_acquire_at(now).expect_err("rejected").retry_in
    }

    #[test]
    fn word_round_trips() {
        for word in [
            Word::closed(0),
            Word::closed(7).with_count(MAX_COUNT),
            Word::opened(STAMP_MAX).with_count(MAX_COUNT),
            Word::opened(12_345).with_count(3),
        ] {
            assert_eq!(Word::unpack(word.pack()), word);
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = BreakerConfig::default();
        assert_eq!(
            (c.failures, c.open_for, c.half_open_probes),
            (5, Duration::from_secs(30), 1)
        );
        assert_eq!(c.validate(), Ok(()));
        assert!(config(0, 1_000, 1).validate().unwrap_err().contains("failures"));
        assert!(config(MAX_COUNT + 1, 1_000, 1)
            .validate()
            .unwrap_err()
            .contains("failures"));
        assert!(config(3, 0, 1).validate().unwrap_err().contains("open_for"));
        assert!(config(3, 1_000, 0).validate().unwrap_err().contains("half_open_probes"));
    }

    #[test]
    fn state_names() {
        let names = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen].map(BreakerState::as_str);
        assert_eq!(names, ["closed", "open", "half_open"]);
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let (b, at) = breaker(3, 1_000, 1);
        assert_eq!(fail(&b, at(0)), None);
        assert_eq!(fail(&b, at(0)), None);
        assert_eq!(b.consecutive_failures(), 2);
        assert_eq!(b.state_at(at(0)), BreakerState::Closed);
        assert_eq!(fail(&b, at(5)), Some(Transition::Opened));
        assert_eq!(b.state_at(at(5)), BreakerState::Open);
        assert_eq!(b.opens(), 1);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let (b, at) = breaker(3, 1_000, 1);
        fail(&b, at(0));
        fail(&b, at(0));
        assert_eq!(succeed(&b, at(0)), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(fail(&b, at(0)), None);
        assert_eq!(fail(&b, at(0)), None);
        assert_eq!(b.state_at(at(0)), BreakerState::Closed);
        assert_eq!(fail(&b, at(0)), Some(Transition::Opened));
    }

    #[test]
    fn open_rejects_with_the_rest_of_open_for() {
        let (b, at) = breaker(1, 1_000, 1);
        fail(&b, at(100));
        assert_eq!(rejected_for(&b, at(100)), Duration::from_millis(1_000));
        assert_eq!(rejected_for(&b, at(400)), Duration::from_millis(700));
        assert_eq!(rejected_for(&b, at(1_099)), Duration::from_millis(1));
        assert_eq!(b.state_at(at(1_099)), BreakerState::Open);
        assert_eq!(b.state_at(at(1_100)), BreakerState::HalfOpen);
    }

    #[test]
    fn an_open_between_milliseconds_lasts_at_least_open_for() {
        let (b, at) = breaker(1, 1_000, 1);
        let opened = at(100) + Duration::from_micros(300);
        fail(&b, opened);
        assert_eq!(b.state_at(opened + Duration::from_micros(999_999)), BreakerState::Open);
        assert_eq!(b.state_at(at(1_101)), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let (b, at) = breaker(1, 1_000, 1);
        fail(&b, at(0));
        let probe = b.try_acquire_at(at(1_000)).expect("probe");
        assert!(probe.is_probe());
        assert_eq!(rejected_for(&b, at(1_000)), Duration::from_millis(50));
        assert_eq!(rejected_for(&b, at(5_000)), Duration::from_millis(50));
        drop(probe);
    }

    #[test]
    fn half_open_admits_exactly_two_probes_when_configured() {
        let (b, at) = breaker(1, 1_000, 2);
        fail(&b, at(0));
        let first = b.try_acquire_at(at(1_000)).expect("first probe");
        let second = b.try_acquire_at(at(1_001)).expect("second probe");
        assert!(first.is_probe() && second.is_probe());
        assert!(b.try_acquire_at(at(1_002)).is_err());
        drop((first, second));
    }

    #[test]
    fn probe_poll_is_no_longer_than_open_for() {
        let (b, at) = breaker(1, 20, 1);
        fail(&b, at(0));
        let _probe = b.try_acquire_at(at(20)).expect("probe");
        assert_eq!(rejected_for(&b, at(20)), Duration::from_millis(20));
    }

    #[test]
    fn probe_success_closes() {
        let (b, at) = breaker(2, 1_000, 1);
        fail(&b, at(0));
        fail(&b, at(0));
        let probe = b.try_acquire_at(at(1_000)).expect("probe");
        assert_eq!(probe.success(), Some(Transition::Closed));
        assert_eq!(b.state_at(at(1_000)), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        let plain = b.try_acquire_at(at(1_000)).expect("closed admits");
        assert!(!plain.is_probe());
        assert_eq!(plain.success(), None);
        // It takes the full threshold again to reopen.
        assert_eq!(fail(&b, at(1_001)), None);
        assert_eq!(fail(&b, at(1_001)), Some(Transition::Opened));
        assert_eq!(b.opens(), 2);
    }

    #[test]
    fn probe_failure_reopens_with_a_fresh_open_for() {
        let (b, at) = breaker(1, 1_000, 1);
        fail(&b, at(0));
        let probe = b.try_acquire_at(at(1_500)).expect("probe");
        assert_eq!(probe.failure_at(at(1_500)), Some(Transition::Reopened));
        assert_eq!(b.state_at(at(1_500)), BreakerState::Open);
        assert_eq!(rejected_for(&b, at(1_600)), Duration::from_millis(900));
        assert_eq!(b.state_at(at(2_499)), BreakerState::Open);
        assert_eq!(b.state_at(at(2_500)), BreakerState::HalfOpen);
        assert_eq!(b.opens(), 2);
    }

    #[test]
    fn abandoned_probe_releases_its_slot() {
        let (b, at) = breaker(1, 1_000, 1);
        fail(&b, at(0));
        let probe = b.try_acquire_at(at(1_000)).expect("probe");
        assert!(b.try_acquire_at(at(1_000)).is_err());
        drop(probe);
        assert_eq!(b.state_at(at(1_000)), BreakerState::HalfOpen);
        let again = b.try_acquire_at(at(1_000)).expect("the slot is free again");
        assert_eq!(again.success(), Some(Transition::Closed));
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn abandoned_plain_call_changes_nothing() {
        let (b, at) = breaker(2, 1_000, 1);
        fail(&b, at(0));
        drop(b.try_acquire_at(at(0)).expect("closed admits"));
        assert_eq!(b.consecutive_failures(), 1);
        assert_eq!(b.state_at(at(0)), BreakerState::Closed);
    }

    #[test]
    fn late_plain_results_do_not_move_an_open_breaker() {
        let (b, at) = breaker(1, 1_000, 1);
        let slow_success = b.try_acquire_at(at(0)).expect("closed admits");
        let slow_failure = b.try_acquire_at(at(0)).expect("closed admits");
        assert_eq!(fail(&b, at(10)), Some(Transition::Opened));
        // A late success does not close it, a late failure does not extend it.
        assert_eq!(slow_success.success(), None);
        assert_eq!(slow_failure.failure_at(at(900)), None);
        assert_eq!(b.state_at(at(10)), BreakerState::Open);
        assert_eq!(b.state_at(at(1_010)), BreakerState::HalfOpen);
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn late_plain_results_do_not_reach_into_a_later_closed_period() {
        let (b, at) = breaker(2, 1_000, 1);
        let slow = b.try_acquire_at(at(0)).expect("closed admits");
        fail(&b, at(0));
        fail(&b, at(0));
        assert_eq!(succeed(&b, at(1_000)), Some(Transition::Closed));
        fail(&b, at(1_001));
        // `slow` started in the closed period before the open: its failure
        // must not make this period's one failure two.
        assert_eq!(slow.failure_at(at(1_002)), None);
        assert_eq!(b.consecutive_failures(), 1);
        assert_eq!(b.state_at(at(1_002)), BreakerState::Closed);
    }

    #[test]
    fn the_first_probe_result_decides_and_the_others_are_late() {
        let (b, at) = breaker(1, 1_000, 2);
        fail(&b, at(0));
        let first = b.try_acquire_at(at(1_000)).expect("probe");
        let second = b.try_acquire_at(at(1_000)).expect("probe");
        assert_eq!(first.failure_at(at(1_010)), Some(Transition::Reopened));
        // The reopened episode starts with all its probe slots free, and the
        // second probe's result belongs to the episode that ended.
        assert_eq!(second.success(), None);
        assert_eq!(b.state_at(at(1_010)), BreakerState::Open);
        assert_eq!(b.opens(), 2);
        let next = b.try_acquire_at(at(2_010)).expect("probe");
        let other = b.try_acquire_at(at(2_010)).expect("probe");
        assert_eq!(next.success(), Some(Transition::Closed));
        assert_eq!(other.failure_at(at(2_011)), None);
        assert_eq!(b.state_at(at(2_011)), BreakerState::Closed);
    }

    #[test]
    fn a_late_probe_drop_does_not_free_a_slot_in_the_next_episode() {
        let (b, at) = breaker(1, 1_000, 2);
        fail(&b, at(0));
        let first = b.try_acquire_at(at(1_000)).expect("probe");
        let stale = b.try_acquire_at(at(1_000)).expect("probe");
        first.failure_at(at(1_000));
        let a = b.try_acquire_at(at(2_000)).expect("probe");
        let c = b.try_acquire_at(at(2_000)).expect("probe");
        drop(stale);
        assert!(b.try_acquire_at(at(2_000)).is_err(), "both slots are still taken");
        drop((a, c));
    }

    #[test]
    fn opens_counts_opened_and_reopened() {
        let (b, at) = breaker(1, 100, 1);
        assert_eq!(b.opens(), 0);
        fail(&b, at(0));
        fail(&b, at(100));
        fail(&b, at(200));
        assert_eq!(b.opens(), 3);
        succeed(&b, at(300));
        fail(&b, at(301));
        assert_eq!(b.opens(), 4);
    }

    #[test]
    fn unvalidated_counts_are_brought_into_range() {
        let (b, at) = breaker(0, 1_000, 0);
        assert_eq!(fail(&b, at(0)), Some(Transition::Opened));
        let probe = b.try_acquire_at(at(1_000)).expect("one probe all the same");
        assert!(b.try_acquire_at(at(1_000)).is_err());
        drop(probe);
    }

    #[test]
    fn eight_threads_failing_at_once_open_it_once() {
        const THREADS: usize = 8;
        let b = Breaker::new(config(5, 60_000, 1));
        let start = Barrier::new(THREADS);
        let transitions = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..1_000 {
                        if let Ok(permit) = b.try_acquire() {
                            if let Some(t) = permit.failure() {
                                transitions.lock().unwrap().push(t);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(b.opens(), 1);
        assert_eq!(*transitions.lock().unwrap(), [Transition::Opened]);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
