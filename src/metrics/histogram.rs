//! [`Histogram`]: a lock-free latency histogram, and the
//! [`HistogramSnapshot`] it hands to reports and exporters.
//!
//! The buckets are log-linear, like HdrHistogram's: every power of two is
//! split into 16 equal sub-buckets, so a bucket is never wider than 1/16 of
//! its lower bound. Values below 16 µs get a bucket each.
//!
//! # Invariants
//!
//! - **Unit.** A duration is recorded as whole microseconds, rounded down;
//!   everything a snapshot reports is in those units.
//! - **Error bound.** A quantile is the upper bound of the bucket that holds
//!   it, so it never under-reports, and over-reports by less than 1/16
//!   (6.25 %) of the true value. It is never above the recorded maximum.
//! - **Range.** Buckets cover 0 ..= 2³² − 1 µs (about 71 minutes). Anything
//!   longer lands in one overflow bucket, whose quantiles report the exact
//!   maximum; recording never panics.
//! - **Size.** 465 buckets of 8 bytes plus two counters: about 3.7 KB, fixed.
//! - **Consistency.** Each counter is exact once recording stops. While
//!   threads record, a snapshot may see a value in its bucket but not yet in
//!   `sum` or `max` (or the reverse): `count` is always the sum of the
//!   buckets the snapshot read, so the buckets and `count` agree, and a
//!   quantile is never pulled below its bucket by a lagging `max`.

use std::time::Duration;

use crate::sync::atomic::{AtomicU64, Ordering};

/// log₂ of the sub-buckets per power of two: 16 sub-buckets, so a bucket is
/// at most 1/16 as wide as its lower bound (the relative error bound).
const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Values are tracked exactly up to 2^`RANGE_BITS` − 1 µs (≈ 71.6 min).
const RANGE_BITS: u32 = 32;
/// Buckets for 0 ..= 2^RANGE_BITS − 1 µs: one per value below `SUB_COUNT`,
/// then `SUB_COUNT` per power of two from 2^SUB_BITS up.
const TRACKED: usize = SUB_COUNT * (RANGE_BITS - SUB_BITS + 1) as usize;
/// The index of the overflow bucket (values ≥ 2^RANGE_BITS µs).
const OVERFLOW: usize = TRACKED;
/// All buckets, the overflow bucket included.
const BUCKETS: usize = TRACKED + 1;
// Three histograms live in every session: keep them under 4 KB each.
const _: () = assert!(BUCKETS * std::mem::size_of::<u64>() < 4096);

/// The bucket a value of `micros` falls in.
fn bucket_index(micros: u64) -> usize {
    if micros < SUB_COUNT as u64 {
        return micros as usize;
    }
    if micros >> RANGE_BITS != 0 {
        return OVERFLOW;
    }
    // `micros` lies in [2^k, 2^(k+1)), k >= SUB_BITS; that range is split
    // into SUB_COUNT buckets of width 2^(k - SUB_BITS).
    let k = 63 - micros.leading_zeros();
    let sub = (micros >> (k - SUB_BITS)) as usize & (SUB_COUNT - 1);
    ((k - SUB_BITS + 1) as usize) * SUB_COUNT + sub
}

/// The smallest and largest value (µs, inclusive) that bucket `index` of
/// the tracked range holds.
fn bucket_bounds(index: usize) -> (u64, u64) {
    debug_assert!(index < TRACKED);
    if index < SUB_COUNT {
        return (index as u64, index as u64);
    }
    let group = (index / SUB_COUNT) as u32; // >= 1
    let sub = (index % SUB_COUNT) as u64;
    let k = group + SUB_BITS - 1;
    let width = 1u64 << (k - SUB_BITS);
    let low = (1u64 << k) + sub * width;
    (low, low + width - 1)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A latency histogram that any number of threads record into at once.
///
/// Recording is wait-free: three relaxed atomic adds at most, no lock, no
/// allocation. Read it with [`Histogram::snapshot`].
pub struct Histogram {
    /// Values recorded per bucket (see [`bucket_index`]); the last one is the
    /// overflow bucket.
    buckets: Box<[AtomicU64]>,
    /// Sum of all recorded values, µs (wraps after 584 000 years of latency).
    sum_micros: AtomicU64,
    /// Largest recorded value, µs.
    max_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration, truncated to whole microseconds. Durations
    /// beyond the tracked range (≈ 71 min) go to the overflow bucket.
    pub fn record(&self, d: Duration) {
        let v = micros(d);
        // Relaxed (all three): statistics only. No other memory is published
        // through these counters, and each is exact once recording stops; a
        // snapshot taken meanwhile tolerates the counters disagreeing (see
        // the module invariants).
        self.buckets[bucket_index(v)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(v, Ordering::Relaxed);
        // Most values are not a new maximum: a plain load keeps the common
        // case from writing to (and bouncing) the shared cache line.
        if v > self.max_micros.load(Ordering::Relaxed) {
            self.max_micros.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The counts so far and the quantiles they give.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::new();
        let mut count = 0u64;
        for (index, bucket) in self.buckets.iter().enumerate() {
            // Relaxed: statistics only (see `record`).
            let n = bucket.load(Ordering::Relaxed);
            if n > 0 {
                buckets.push((index as u16, n));
                count += n;
            }
        }
        // Relaxed: statistics only (see `record`).
        let sum = self.sum_micros.load(Ordering::Relaxed);
        let max = self.max_micros.load(Ordering::Relaxed);
        let mut snapshot = HistogramSnapshot {
            count,
            sum: Duration::from_micros(sum),
            max: Duration::from_micros(max),
            buckets,
            ..HistogramSnapshot::default()
        };
        snapshot.p50 = snapshot.quantile(0.50);
        snapshot.p90 = snapshot.quantile(0.90);
        snapshot.p99 = snapshot.quantile(0.99);
        snapshot
    }

    /// Empties the histogram. Not atomic as a whole: a value recorded while
    /// a reset runs may survive in some counters and not others.
    pub fn reset(&self) {
        // Relaxed: statistics only (see `record`).
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
        self.sum_micros.store(0, Ordering::Relaxed);
        self.max_micros.store(0, Ordering::Relaxed);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    // The 465 raw buckets say nothing to a reader; the summary does.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &s.count)
            .field("max", &s.max)
            .field("p50", &s.p50)
            .field("p99", &s.p99)
            .finish()
    }
}

/// What a [`Histogram`] held when [`Histogram::snapshot`] read it.
///
/// Quantiles are bucket upper bounds: never below the true value, less than
/// 6.25 % above it, and never above `max`. All zero when nothing was
/// recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Values recorded.
    pub count: u64,
    /// Their sum.
    pub sum: Duration,
    /// The largest.
    pub max: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    /// The non-empty buckets, `(index, count)`, by ascending index. Sparse so
    /// that a snapshot of a quiet histogram stays small.
    buckets: Vec<(u16, u64)>,
}

impl HistogramSnapshot {
    /// The mean value (zero when empty).
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.count) {
            Ok(0) => Duration::ZERO,
            Ok(count) => self.sum / count,
            // More than 4 billion values: divide in µs instead.
            Err(_) => Duration::from_micros(micros(self.sum) / self.count),
        }
    }

    /// The value at quantile `q` (0.0 ..= 1.0, clamped; 0.5 is the median):
    /// the upper bound of the bucket holding the ⌈q·count⌉-th smallest value,
    /// capped at `max`. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        // `f64::clamp` keeps NaN; treat it as 0 via the `max(1)` below.
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The float product is exact enough: an off-by-one rank over 2^53
        // values moves no quantile out of its bucket that matters.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for &(index, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return self.report(index as usize);
            }
        }
        // Unreachable while `count` is the buckets' total; be safe anyway.
        self.max
    }

    /// The non-empty buckets in ascending order, each as (inclusive upper
    /// bound, cumulative count), as Prometheus `_bucket{le=..}` lines want
    /// them. The last entry's count is `count`. The overflow bucket's bound
    /// is `Duration::MAX`: print it as `+Inf`.
    ///
    /// Only buckets that hold values are listed; an exporter with a fixed
    /// `le` list should use [`HistogramSnapshot::count_at_most`].
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.buckets.iter().scan(0u64, |cumulative, &(index, n)| {
            *cumulative += n;
            let index = index as usize;
            let upper = if index == OVERFLOW {
                Duration::MAX
            } else {
                Duration::from_micros(bucket_bounds(index).1)
            };
            Some((upper, *cumulative))
        })
    }

    /// How many recorded values are certainly ≤ `le`: those in buckets whose
    /// upper bound is ≤ `le`. A bucket that straddles `le` is not counted,
    /// so this errs low by at most one bucket's worth.
    pub fn count_at_most(&self, le: Duration) -> u64 {
        self.buckets()
            .take_while(|&(upper, _)| upper <= le)
            .last()
            .map_or(0, |(_, cumulative)| cumulative)
    }

    /// What a quantile falling in bucket `index` reports: its upper bound,
    /// capped at `max` but never below the bucket's lower bound (`max` may
    /// lag the buckets while threads record).
    fn report(&self, index: usize) -> Duration {
        let max = micros(self.max);
        if index == OVERFLOW {
            return Duration::from_micros(max.max(1 << RANGE_BITS));
        }
        let (low, high) = bucket_bounds(index);
        Duration::from_micros(high.min(max.max(low)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `got` is at or above `want` and less than 6.25 % over it.
    fn assert_within_bound(got: Duration, want: Duration) {
        assert!(got >= want, "{got:?} under-reports {want:?}");
        let limit = want + want / 16;
        assert!(got < limit || got == want, "{got:?} more than 6.25 % over {want:?}");
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0;
        for index in 0..TRACKED {
            let (low, high) = bucket_bounds(index);
            assert_eq!(low, next, "bucket {index} starts where the last ended");
            assert!(high >= low);
            assert_eq!(bucket_index(low), index);
            assert_eq!(bucket_index(high), index);
            // The relative error bound: width ≤ low / 16.
            assert!((high - low + 1) * SUB_COUNT as u64 <= low.max(SUB_COUNT as u64));
            next = high + 1;
        }
        assert_eq!(next, 1 << RANGE_BITS);
        assert_eq!(bucket_index(1 << RANGE_BITS), OVERFLOW);
        assert_eq!(bucket_index(u64::MAX), OVERFLOW);
    }

    #[test]
    fn empty_snapshot_is_all_zeros() {
        let s = Histogram::new().snapshot();
        assert_eq!(s, HistogramSnapshot::default());
        assert_eq!(s.count, 0);
        assert_eq!(s.sum, Duration::ZERO);
        assert_eq!(s.max, Duration::ZERO);
        assert_eq!((s.p50, s.p90, s.p99), (Duration::ZERO, Duration::ZERO, Duration::ZERO));
        assert_eq!(s.mean(), Duration::ZERO);
        assert_eq!(s.quantile(0.999), Duration::ZERO);
        assert_eq!(s.buckets().count(), 0);
    }

    #[test]
    fn one_value_reports_that_value() {
        for v in [0, 1, 15, 16, 17, 100, 1_000, 12_345, 999_999, 3_600_000_000] {
            let h = Histogram::new();
            h.record(us(v));
            let s = h.snapshot();
            assert_eq!(s.count, 1);
            assert_eq!(s.sum, us(v));
            assert_eq!(s.max, us(v));
            assert_eq!(s.mean(), us(v));
            // Capped at max, so a lone value is reported exactly.
            for q in [s.p50, s.p90, s.p99, s.quantile(0.0), s.quantile(1.0)] {
                assert_eq!(q, us(v), "value {v}");
            }
        }
    }

    #[test]
    fn sub_microsecond_parts_are_truncated() {
        let h = Histogram::new();
        h.record(Duration::from_nanos(1_999));
        h.record(Duration::from_nanos(999));
        let s = h.snapshot();
        assert_eq!((s.count, s.sum, s.max), (2, us(1), us(1)));
    }

    #[test]
    fn uniform_1_to_1000_gives_the_expected_quantiles() {
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(us(v));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert_eq!(s.sum, us(500_500));
        assert_eq!(s.max, us(1000));
        assert_eq!(s.mean(), Duration::from_nanos(500_500));
        assert_within_bound(s.p50, us(500));
        assert_within_bound(s.p90, us(900));
        assert_within_bound(s.p99, us(990));
        assert_within_bound(s.quantile(0.999), us(999));
        assert_eq!(s.quantile(1.0), us(1000));
        assert_eq!(s.quantile(0.0), us(1));
        assert_eq!(s.quantile(f64::NAN), us(1));
        assert_eq!(s.quantile(7.0), us(1000));
    }

    #[test]
    fn every_value_is_within_the_error_bound() {
        // The ⌈q·n⌉-th of n equal values is that value's bucket: check the
        // bound at every bucket edge and in between, with max out of the way.
        for v in (1..5_000).chain((1..=32).map(|k| (1u64 << k) - 1)) {
            let h = Histogram::new();
            h.record(us(v));
            h.record(us(u64::from(u32::MAX)));
            let s = h.snapshot();
            assert_within_bound(s.quantile(0.5), us(v));
        }
    }

    #[test]
    fn huge_values_clamp_without_panicking() {
        let h = Histogram::new();
        h.record(us(10));
        h.record(Duration::from_secs(2 * 3600));
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.max, us(u64::MAX));
        // The overflow bucket reports the maximum, not a made-up bound.
        assert_eq!(s.p99, us(u64::MAX));
        assert_eq!(s.p50, us(u64::MAX));
        assert_eq!(s.quantile(0.1), us(10));
        // `sum` wrapped (Duration::MAX is 584 000 years); that is all.
        let _ = s.mean();
        let last = s.buckets().last().unwrap();
        assert_eq!(last, (Duration::MAX, 3));
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_count() {
        let h = Histogram::new();
        for v in [3, 3, 40, 41, 1_000] {
            h.record(us(v));
        }
        let s = h.snapshot();
        let buckets: Vec<_> = s.buckets().collect();
        assert_eq!(buckets, vec![(us(3), 2), (us(41), 4), (us(1_023), 5)]);
        assert_eq!(s.count_at_most(us(2)), 0);
        assert_eq!(s.count_at_most(us(3)), 2);
        assert_eq!(s.count_at_most(us(100)), 4);
        assert_eq!(s.count_at_most(Duration::MAX), 5);
    }

    #[test]
    fn reset_empties_it() {
        let h = Histogram::default();
        h.record(us(5));
        h.reset();
        assert_eq!(h.snapshot(), HistogramSnapshot::default());
    }

    #[test]
    fn concurrent_recording_counts_every_value() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 100_000;
        let h = Arc::new(Histogram::new());
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        h.record(us(t * PER_THREAD + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = h.snapshot();
        let n = THREADS * PER_THREAD;
        assert_eq!(s.count, n);
        assert_eq!(s.sum, us(n * (n - 1) / 2));
        assert_eq!(s.max, us(n - 1));
        assert_within_bound(s.p50, us(n / 2 - 1));
    }
}
