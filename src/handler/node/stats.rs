//! What each node of a handler tree counted, for the metrics (a `node`
//! label holding its path) and `lote status`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::bulkhead::Bulkhead;
use super::super::cache::Cache;
use super::super::fallback::Fallback;
use super::super::walk_away::WalkAway;
use super::wrap::{Counts, Shared};
use crate::metrics::HistogramSnapshot;

/// One node's live counters: its own, and those of the policies it carries.
pub struct NodeStats {
    pub path: String,
    pub kind: &'static str,
    pub(super) counts: Option<Arc<Counts>>,
    pub(super) cache: Option<Arc<Cache>>,
    pub(super) bulkhead: Option<Arc<Bulkhead<Shared>>>,
    pub(super) fallback: Option<Arc<Fallback<Shared>>>,
    pub(super) walk_away: Option<Arc<WalkAway>>,
}

/// A node's counters at one moment. A policy's counters are `None` when
/// the node does not carry that policy.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    /// Calls of the node's kind (each attempt is one).
    pub calls: u64,
    pub failures: u64,
    /// How long the calls took.
    pub latency: HistogramSnapshot,
    /// A caller that waited on another's call for its key got an answer
    /// without a call of its own: a hit too.
    pub cache_hits: Option<u64>,
    pub cache_misses: Option<u64>,
    pub bulkhead_rejected: Option<u64>,
    pub fallbacks: Option<u64>,
    /// Walk-away calls abandoned at their deadline.
    pub walked_away: Option<u64>,
}

impl NodeStats {
    pub(super) fn new(path: &str, kind: &'static str) -> Self {
        NodeStats {
            path: path.to_string(),
            kind,
            counts: None,
            cache: None,
            bulkhead: None,
            fallback: None,
            walk_away: None,
        }
    }

    pub fn snapshot(&self) -> NodeSnapshot {
        let (calls, failures, latency) = self.counts.as_ref().map_or_else(Default::default, |c| {
            (
                c.calls.load(Ordering::Relaxed),
                c.failures.load(Ordering::Relaxed),
                c.latency.snapshot(),
            )
        });
        NodeSnapshot {
            calls,
            failures,
            latency,
            cache_hits: self
                .cache
                .as_ref()
                .map(|c| c.stats().hits.load(Ordering::Relaxed) + c.stats().shared.load(Ordering::Relaxed)),
            cache_misses: self.cache.as_ref().map(|c| c.stats().misses.load(Ordering::Relaxed)),
            bulkhead_rejected: self.bulkhead.as_ref().map(|b| b.rejected()),
            fallbacks: self.fallback.as_ref().map(|f| f.answered()),
            walked_away: self.walk_away.as_ref().map(|w| w.walked_away()),
        }
    }
}

/// Every node of a started tree, each parent before its children.
#[derive(Clone, Default)]
pub struct Nodes(Vec<Arc<NodeStats>>);

impl Nodes {
    pub fn new() -> Self {
        Nodes::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn insert(&mut self, at: usize, stats: NodeStats) {
        self.0.insert(at, Arc::new(stats));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<NodeStats>> {
        self.0.iter()
    }
}
