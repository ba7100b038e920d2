//! Each node of the handler tree in the status (SPEC §3.13's per-node
//! metrics): what it counted, by its dotted path.

use serde::{Deserialize, Serialize};

use super::Latency;
use crate::handler::node::Nodes;

/// One node's counters. The policy counters are `None` for a node that
/// does not carry that policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `handler`, `handler.branches.sales`, `handler.steps.0`, …
    pub path: String,
    pub kind: String,
    /// Calls of its kind (each attempt is one) and how many failed.
    pub calls: u64,
    pub failures: u64,
    pub latency: Latency,
    /// Seconds of all its calls together (for a rate of time spent).
    pub latency_sum_seconds: f64,
    pub cache_hits: Option<u64>,
    pub cache_misses: Option<u64>,
    pub bulkhead_rejected: Option<u64>,
    pub fallbacks: Option<u64>,
    pub walked_away: Option<u64>,
}

impl NodeStatus {
    /// Every node of a started tree, parents first.
    pub fn all(nodes: &Nodes) -> Vec<NodeStatus> {
        nodes
            .iter()
            .map(|node| {
                let s = node.snapshot();
                NodeStatus {
                    path: node.path.clone(),
                    kind: node.kind.to_string(),
                    calls: s.calls,
                    failures: s.failures,
                    latency: Latency::from(&s.latency),
                    latency_sum_seconds: s.latency.sum.as_secs_f64(),
                    cache_hits: s.cache_hits,
                    cache_misses: s.cache_misses,
                    bulkhead_rejected: s.bulkhead_rejected,
                    fallbacks: s.fallbacks,
                    walked_away: s.walked_away,
                }
            })
            .collect()
    }

    /// One line for `lote status`: `calls 12, failed 1, p99 3.2ms, cache 10/2`.
    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!("{} calls", self.calls),
            format!("{} failed", self.failures),
            format!("p99 {}", super::ms(self.latency.p99_ms)),
        ];
        if let (Some(hits), Some(misses)) = (self.cache_hits, self.cache_misses) {
            parts.push(format!("cache {hits} hits/{misses} misses"));
        }
        if let Some(n) = self.bulkhead_rejected {
            parts.push(format!("bulkhead rejected {n}"));
        }
        if let Some(n) = self.fallbacks {
            parts.push(format!("fallback answered {n}"));
        }
        if let Some(n) = self.walked_away {
            parts.push(format!("walked away {n}"));
        }
        format!("{} ({}): {}", self.path, self.kind, parts.join(", "))
    }
}
