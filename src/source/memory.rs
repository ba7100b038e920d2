//! `VecSource`: an in-memory source for tests, examples and benchmarks.

use std::collections::{HashMap, VecDeque};

use super::{Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Status};
use crate::sync::Mutex;

/// Items held in memory, pulled in the order given. Keeps what happened to
/// each item so tests can check that nothing was lost or doubled.
#[derive(Debug, Default)]
pub struct VecSource {
    /// Protects the pending items and the per-item record.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Item>,
    /// How many times each item was pulled.
    pulls: HashMap<String, u32>,
    /// How many times each item was given back.
    returns: HashMap<String, u32>,
    /// The statuses acknowledged for each item, in order.
    acks: HashMap<String, Vec<Status>>,
}

impl VecSource {
    /// A source that yields `items` in order.
    pub fn new(items: impl IntoIterator<Item = Item>) -> Self {
        VecSource {
            state: Mutex::new(State {
                pending: items.into_iter().collect(),
                ..State::default()
            }),
        }
    }

    /// Ids `0..n` as items with empty payloads and the default priority.
    pub fn numbered(n: usize) -> Self {
        VecSource::new((0..n).map(|i| Item::new(i.to_string(), Vec::new())))
    }

    /// Items not pulled (or pulled and given back), in pull order.
    pub fn pending(&self) -> Vec<Item> {
        self.state.lock().pending.iter().cloned().collect()
    }

    /// How many times `id` was pulled.
    pub fn pulls(&self, id: &str) -> u32 {
        self.state.lock().pulls.get(id).copied().unwrap_or(0)
    }

    /// How many times `id` was given back.
    pub fn returns(&self, id: &str) -> u32 {
        self.state.lock().returns.get(id).copied().unwrap_or(0)
    }

    /// The statuses acknowledged for `id`, in order.
    pub fn acks(&self, id: &str) -> Vec<Status> {
        self.state.lock().acks.get(id).cloned().unwrap_or_default()
    }

    /// How many acknowledgements arrived in all.
    pub fn ack_count(&self) -> usize {
        self.state.lock().acks.values().map(Vec::len).sum()
    }
}

impl Source for VecSource {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let mut state = self.state.lock();
        if state.pending.is_empty() {
            return Ok(Pull::Exhausted);
        }
        let n = max.max(1).min(state.pending.len());
        let items: Vec<Item> = state.pending.drain(..n).collect();
        for item in &items {
            *state.pulls.entry(item.id.clone()).or_default() += 1;
        }
        Ok(Pull::Items(items))
    }

    fn give_back(&self, items: Vec<Item>, _reason: ReturnReason) -> Result<(), SourceError> {
        let mut state = self.state.lock();
        for item in items {
            *state.returns.entry(item.id.clone()).or_default() += 1;
            state.pending.push_back(item);
        }
        Ok(())
    }

    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        self.state.lock().pending.extend(items);
        Ok(())
    }

    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        let mut state = self.state.lock();
        for outcome in outcomes {
            state
                .acks
                .entry(outcome.item.id.clone())
                .or_default()
                .push(outcome.status);
        }
        Ok(())
    }
}
