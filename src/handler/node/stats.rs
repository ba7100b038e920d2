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

/// A node's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    /// Calls of the node's kind (each attempt is one).
    pub calls: u64,
    pub failures: u64,
    /// How long the calls took.
    pub latency: HistogramSnapshot,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub bulkhead_rejected: u64,
    pub fallbacks: u64,
    /// Walk-away calls abandoned at their deadline, and refused because
    /// too many were abandoned already.
    pub walked_away: u64,
    pub walk_away_refused: u64,
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
        let mut s = NodeSnapshot::default();
        if let Some(counts) = &self.counts {
            s.calls = counts.calls.load(Ordering::Relaxed);
            s.failures = counts.failures.load(Ordering::Relaxed);
            s.latency = counts.latency.snapshot();
        }
        if let Some(cache) = &self.cache {
            // A caller that waited on another's call for its key got an answer
            // without a call of its own: a hit too.
            s.cache_hits = cache.stats().hits.load(Ordering::Relaxed) + cache.stats().shared.load(Ordering::Relaxed);
            s.cache_misses = cache.stats().misses.load(Ordering::Relaxed);
        }
        s.bulkhead_rejected = self.bulkhead.as_ref().map_or(0, |b| b.rejected());
        s.fallbacks = self.fallback.as_ref().map_or(0, |f| f.answered());
        if let Some(w) = &self.walk_away {
            s.walked_away = w.walked_away();
            s.walk_away_refused = w.refused();
        }
        s
    }

    /// Whether the node carries a cache, a bulkhead, a fallback, walk-away.
    pub fn has(&self) -> [bool; 4] {
        [
            self.cache.is_some(),
            self.bulkhead.is_some(),
            self.fallback.is_some(),
            self.walk_away.is_some(),
        ]
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
