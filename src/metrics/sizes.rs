//! [`Sizes`]: a histogram of counts (rows per commit, items per batch call)
//! on power-of-two bounds, recorded wait-free like [`super::Histogram`].

use std::sync::atomic::{AtomicU64, Ordering};

/// The upper bounds of the buckets: 1, 2, 4, … 8192; larger sizes count
/// only in `+Inf` (the total).
pub const SIZE_BOUNDS: [u64; 14] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

/// How many values fell at or under each bound, their total and their sum.
/// All `Relaxed`: statistics only.
#[derive(Debug, Default)]
pub struct Sizes {
    /// Values in each bucket (not cumulative): bucket `i` holds values in
    /// `(SIZE_BOUNDS[i-1], SIZE_BOUNDS[i]]`.
    buckets: [AtomicU64; SIZE_BOUNDS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

/// What a [`Sizes`] held when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SizesSnapshot {
    /// `(bound, values at or under it)`, cumulative, one per [`SIZE_BOUNDS`].
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
}

impl Sizes {
    pub fn record(&self, n: u64) {
        if let Some(bucket) = SIZE_BOUNDS.iter().position(|&bound| n <= bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> SizesSnapshot {
        let mut running = 0;
        let cumulative = SIZE_BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, bucket)| {
                running += bucket.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        SizesSnapshot {
            cumulative,
            // At least every bounded bucket, whatever a recording in flight did.
            count: self.count.load(Ordering::Relaxed).max(running),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fall_in_their_buckets_and_big_ones_only_in_the_total() {
        let sizes = Sizes::default();
        for n in [1, 3, 4, 500, 10_000] {
            sizes.record(n);
        }
        let s = sizes.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 10_508);
        let at = |bound| s.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!((at(1), at(2), at(4), at(256), at(512), at(8192)), (1, 1, 3, 3, 4, 4));
    }
}
