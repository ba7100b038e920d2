//! The atomic counter and gauge, and [`counter_set!`]: one list of counters
//! that becomes both the live struct of atomics and its serialisable
//! snapshot, so a counter is named and documented in one place.

use crate::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(
    /// Relaxed everywhere: a statistic, read only for reporting.
    AtomicU64,
);

impl Counter {
    pub fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (workers busy, writer depth).
#[derive(Debug, Default)]
pub struct Gauge(
    /// Relaxed everywhere: a statistic, read only for reporting.
    AtomicU64,
);

impl Gauge {
    pub fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares a set of counters once: the live struct (one [`Counter`] per
/// name, plus any other fields listed under `others`), the snapshot struct
/// (one `u64` per name, with the same docs, serialisable: status.json embeds
/// it, so the names are a file contract) and `snapshot()` between them.
/// Every snapshot field is `#[serde(default)]`, so a file written before a
/// counter existed still reads.
macro_rules! counter_set {
    (
        $(#[$live_meta:meta])*
        $live_vis:vis struct $live:ident;
        $(#[$snap_meta:meta])*
        $snap_vis:vis struct $snap:ident;
        counters {
            $( $(#[$doc:meta])* $field:ident, )*
        }
        others {
            $( $(#[$other_doc:meta])* $other_vis:vis $other:ident : $other_ty:ty, )*
        }
    ) => {
        $(#[$live_meta])*
        #[derive(Debug, Default)]
        $live_vis struct $live {
            $( $(#[$doc])* pub $field: $crate::metrics::Counter, )*
            $( $(#[$other_doc])* $other_vis $other: $other_ty, )*
        }

        $(#[$snap_meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        $snap_vis struct $snap {
            $( $(#[$doc])* #[serde(default)] pub $field: u64, )*
        }

        impl $live {
            /// Every counter now.
            pub fn snapshot(&self) -> $snap {
                $snap { $( $field: self.$field.get(), )* }
            }
        }

        impl $snap {
            /// These counts plus `other`'s, counter by counter.
            pub fn plus(&self, other: &$snap) -> $snap {
                $snap { $( $field: self.$field + other.$field, )* }
            }
        }
    };
}
pub(crate) use counter_set;
