//! How often a failed call is tried again and how long to wait in between:
//! exponential back-off (×2 per retry) with a cap and a jitter band, and a
//! downstream's Retry-After hint as a floor, itself capped at
//! `max_retry_after` (a hint is the peer's word, not a promise to wait
//! forever: `Retry-After: 99999` would park a worker for 27 hours).
//!
//! Everything here is a pure function of the policy except [`RetryPolicy::delay`],
//! which draws the jitter. The waiting itself happens in the call loop
//! (`session/call.rs`), on the stop handle, so a Stop cuts any delay short.

use std::time::Duration;

/// How many times a call is tried and how long to wait between tries.
///
/// Only retryable failures are retried; which failures those are is the
/// handler's call, not the policy's.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total tries including the first (>= 1). 1 = no retry.
    pub attempts: u32,
    /// Delay before the first retry; doubles each retry.
    pub backoff: Duration,
    /// Cap on any single delay.
    pub max_backoff: Duration,
    /// Fraction in [0, 1]: each delay is drawn uniformly from nominal*(1±jitter), then capped at max_backoff.
    pub jitter: f64,
    /// Cap on a downstream's Retry-After hint (`retry.max_retry_after`).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Three tries, 1s then 2s apart (±20%), never more than 60s; a
    /// Retry-After hint honoured up to 10 minutes.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// One try, no retry. The delays keep the defaults, so the policy stays
    /// valid if someone raises `attempts` later.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Whether another try may follow `attempts_made` tries.
    pub fn allows_retry_after(&self, attempts_made: u32) -> bool {
        attempts_made < self.attempts
    }

    /// The delay before retry number `retry` before jitter: `backoff × 2^(retry-1)`,
    /// capped at `max_backoff`. `retry` is 1-based (the delay before the second
    /// attempt is retry 1); 0 is treated as 1.
    ///
    /// The doubling saturates instead of overflowing, so a caller that keeps
    /// counting (retry 1000) just gets `max_backoff`.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        doubled(self.backoff, retry.saturating_sub(1), self.max_backoff)
    }

    /// The delay before retry `retry` at point `unit` of the jitter band:
    /// `unit` = 0 gives `nominal × (1 - jitter)`, `unit` → 1 gives
    /// `nominal × (1 + jitter)`, and the result is capped at `max_backoff`.
    ///
    /// Pure, so tests can pin the band's edges; [`RetryPolicy::delay`] feeds it
    /// a random `unit`. Out-of-range inputs are clamped (`unit` and `jitter` to
    /// [0, 1], NaN to 0) rather than trusted, because a delay is computed on
    /// every retry and must not panic.
    pub fn jittered_delay(&self, retry: u32, unit: f64) -> Duration {
        let nominal = self.nominal_delay(retry);
        let jitter = clamp_unit(self.jitter);
        let unit = clamp_unit(unit);
        // The band [nominal(1-j), nominal(1+j)] walked linearly by `unit`.
        let factor = 1.0 - jitter + 2.0 * jitter * unit;
        let jittered = Duration::try_from_secs_f64(nominal.as_secs_f64() * factor).unwrap_or(Duration::MAX);
        jittered.min(self.max_backoff)
    }

    /// The delay before retry `retry`, jittered at random, and never shorter
    /// than the downstream's `retry_after` hint (HTTP `Retry-After`, or a
    /// handler's own) capped at `max_retry_after`.
    ///
    /// A Retry-After longer than `max_backoff` is honoured: `max_backoff`
    /// bounds our own guesswork about how long a downstream needs, but a
    /// Retry-After is the downstream telling us; retrying sooner would only
    /// spend an attempt on a call it has said it will refuse (and can get a
    /// client rate-limited harder). Only past `max_retry_after` is the hint
    /// not believed (the call loop reports that). The wait is still cut short
    /// by a Stop, so a long hint cannot hold up shutdown.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.jittered_delay(retry, fastrand::f64());
        let hint = retry_after.unwrap_or(Duration::ZERO).min(self.max_retry_after);
        jittered.max(hint)
    }

    /// Checks the policy; the message names the field, what it was, and what
    /// is expected.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts < 1 {
            return Err(format!(
                "retry attempts is {}; expected at least 1 (1 = try once, no retry)",
                self.attempts
            ));
        }
        if !self.jitter.is_finite() || !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry jitter is {}; expected a fraction between 0 and 1 (0.2 = ±20%)",
                self.jitter
            ));
        }
        if self.backoff > self.max_backoff {
            return Err(format!(
                "retry backoff ({:?}) is longer than max_backoff ({:?}); expected backoff <= max_backoff",
                self.backoff, self.max_backoff
            ));
        }
        Ok(())
    }
}

/// `base × 2^doublings`, capped at `cap`: the one exponential back-off (the
/// call loop's, through [`RetryPolicy::nominal_delay`], and the writer's).
/// Saturates instead of overflowing: any count of doublings is safe.
pub fn doubled(base: Duration, doublings: u32, cap: Duration) -> Duration {
    2u32.checked_pow(doublings)
        .and_then(|factor| base.checked_mul(factor))
        // Past 2^31 or past Duration::MAX the true value is beyond any cap;
        // zero doubled any number of times is still zero.
        .unwrap_or(if base.is_zero() { Duration::ZERO } else { Duration::MAX })
        .min(cap)
}

/// `x` clamped to [0, 1], with NaN taken as 0.
fn clamp_unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(backoff_ms: u64, max_ms: u64, jitter: f64) -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(backoff_ms),
            max_backoff: Duration::from_millis(max_ms),
            jitter,
            ..RetryPolicy::default()
        }
    }

    /// `a × f`, for the bounds the property tests compare against.
    fn scaled(a: Duration, f: f64) -> Duration {
        Duration::try_from_secs_f64(a.as_secs_f64() * f).unwrap_or(Duration::MAX)
    }

    #[test]
    fn default_matches_the_spec() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.backoff, Duration::from_secs(1));
        assert_eq!(p.max_backoff, Duration::from_secs(60));
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn none_allows_no_retry() {
        let p = RetryPolicy::none();
        assert_eq!(p.attempts, 1);
        assert!(!p.allows_retry_after(1));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn attempts_count_the_first_try() {
        let p = RetryPolicy::default();
        assert!(p.allows_retry_after(1));
        assert!(p.allows_retry_after(2));
        assert!(!p.allows_retry_after(3));
        assert!(!p.allows_retry_after(4));
    }

    #[test]
    fn nominal_delay_doubles_from_backoff() {
        let p = policy(100, 60_000, 0.0);
        let delays: Vec<u128> = (1..=5).map(|r| p.nominal_delay(r).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600]);
        // Retry 0 is not a retry number; it is read as the first.
        assert_eq!(p.nominal_delay(0), Duration::from_millis(100));
    }

    #[test]
    fn nominal_delay_is_capped_at_max_backoff() {
        let p = policy(1_000, 5_000, 0.0);
        assert_eq!(p.nominal_delay(3), Duration::from_secs(4));
        assert_eq!(p.nominal_delay(4), Duration::from_secs(5));
        assert_eq!(p.nominal_delay(10), Duration::from_secs(5));
    }

    #[test]
    fn nominal_delay_saturates_for_huge_retry_numbers() {
        let p = RetryPolicy::default();
        assert_eq!(p.nominal_delay(1000), Duration::from_secs(60));
        assert_eq!(p.nominal_delay(u32::MAX), Duration::from_secs(60));
        let uncapped = RetryPolicy {
            max_backoff: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(uncapped.nominal_delay(1000), Duration::MAX);
        let zero = policy(0, 1_000, 0.2);
        assert_eq!(zero.nominal_delay(1000), Duration::ZERO);
    }

    #[test]
    fn zero_jitter_gives_the_nominal_delay() {
        let p = policy(250, 60_000, 0.0);
        for retry in 1..=10 {
            assert_eq!(p.jittered_delay(retry, 0.0), p.nominal_delay(retry));
            assert_eq!(p.jittered_delay(retry, 0.99), p.nominal_delay(retry));
            assert_eq!(p.delay(retry, None), p.nominal_delay(retry));
        }
    }

    #[test]
    fn jitter_band_edges() {
        let p = policy(1_000, 60_000, 0.5);
        assert_eq!(p.jittered_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.jittered_delay(1, 0.5), Duration::from_millis(1_000));
        assert_eq!(p.jittered_delay(1, 1.0), Duration::from_millis(1_500));
        // The upper half of the band is cut off by the cap.
        let capped = policy(1_000, 1_200, 0.5);
        assert_eq!(capped.jittered_delay(1, 1.0), Duration::from_millis(1_200));
    }

    #[test]
    fn nonsense_unit_and_jitter_are_clamped_not_trusted() {
        let p = policy(1_000, 60_000, 0.5);
        assert_eq!(p.jittered_delay(1, f64::NAN), Duration::from_millis(500));
        assert_eq!(p.jittered_delay(1, 7.0), Duration::from_millis(1_500));
        let wild = policy(1_000, 60_000, f64::INFINITY);
        assert_eq!(wild.jittered_delay(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor_even_past_max_backoff() {
        let p = policy(100, 1_000, 0.2);
        assert_eq!(p.delay(1, Some(Duration::from_secs(30))), Duration::from_secs(30));
        let d = p.delay(1, Some(Duration::from_millis(1)));
        // Below the band, the hint changes nothing (band 80..=120ms, give or take float rounding).
        assert!(
            d >= Duration::from_micros(79_999) && d <= Duration::from_micros(120_001),
            "{d:?}"
        );
    }

    #[test]
    fn a_retry_after_wait_is_bounded_by_max_retry_after() {
        let p = RetryPolicy {
            max_retry_after: Duration::from_secs(2),
            ..policy(100, 1_000, 0.0)
        };
        assert_eq!(p.delay(1, Some(Duration::from_secs(99_999))), Duration::from_secs(2));
        assert_eq!(p.delay(1, Some(Duration::MAX)), Duration::from_secs(2));
        assert_eq!(p.delay(1, Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(RetryPolicy::default().max_retry_after, Duration::from_secs(600));
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let zero_attempts = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(zero_attempts.validate().unwrap_err().contains("attempts"));
        for jitter in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let p = RetryPolicy {
                jitter,
                ..RetryPolicy::default()
            };
            assert!(p.validate().unwrap_err().contains("jitter"), "{jitter}");
        }
        let inverted = policy(2_000, 1_000, 0.2);
        assert!(inverted.validate().unwrap_err().contains("max_backoff"));
        assert_eq!(policy(1_000, 1_000, 1.0).validate(), Ok(()));
    }

    fn valid_policy() -> impl Strategy<Value = RetryPolicy> {
        (0u64..60_000, 0u64..3_600_000, 0.0f64..=1.0)
            .prop_map(|(backoff_ms, extra_ms, jitter)| policy(backoff_ms, backoff_ms + extra_ms, jitter))
    }

    proptest! {
        #[test]
        fn nominal_is_monotonic_and_capped(p in valid_policy(), retry in 1u32..2_000) {
            prop_assert!(p.nominal_delay(retry) <= p.nominal_delay(retry + 1));
            prop_assert!(p.nominal_delay(retry) <= p.max_backoff);
        }

        #[test]
        fn jittered_stays_in_the_band(p in valid_policy(), retry in 1u32..64, unit in 0.0f64..1.0) {
            let nominal = p.nominal_delay(retry);
            let low = scaled(nominal, 1.0 - p.jitter).saturating_sub(Duration::from_nanos(1));
            let high = scaled(nominal, 1.0 + p.jitter).min(p.max_backoff) + Duration::from_nanos(1);
            let d = p.jittered_delay(retry, unit);
            prop_assert!(low <= d && d <= high, "{:?} not in [{:?}, {:?}]", d, low, high);
            prop_assert!(d <= p.max_backoff);
        }

        #[test]
        fn delay_never_undercuts_retry_after(p in valid_policy(), retry in 1u32..64, ra_ms in 0u64..7_200_000) {
            let retry_after = Duration::from_millis(ra_ms);
            prop_assert!(p.delay(retry, Some(retry_after)) >= retry_after.min(p.max_retry_after));
        }
    }
}
