//! [`Cache`]: a cache-aside decorator for a handler (SPEC §3.5, seed 004):
//! outputs kept for `ttl` under a key made from the item, at most
//! `max_entries` of them (least recently used out first), refreshed in the
//! background once `refresh_ahead` of their TTL has passed, and **single
//! flight**: concurrent misses of one key make one call, whose result every
//! one of them gets.
//!
//! Failures are never cached (a later call tries again); the callers that
//! waited on a failed flight get its failure. A key that cannot be made (a
//! JSON pointer into a payload that is not JSON) means the call goes
//! through uncached.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::stop::StopHandle;
use crate::sync::{Condvar, Mutex};

/// How a cache key is made from an item (`cache.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheKey {
    /// A SHA-256 of the payload (the default).
    PayloadHash,
    /// A template: `{payload}` and `{id}` are replaced by the item's, and
    /// `{/a/b}` by the JSON value at that pointer in the payload.
    Template(String),
}

impl CacheKey {
    /// `"{payload}"`, `"{id}"`, `"{/customer/id}"` or any text mixing them.
    pub fn template(text: impl Into<String>) -> Self {
        CacheKey::Template(text.into())
    }

    fn of(&self, item: &Item) -> Option<String> {
        match self {
            CacheKey::PayloadHash => {
                let digest = ring::digest::digest(&ring::digest::SHA256, &item.payload);
                let mut key = String::new();
                super::batch::push_hex(&mut key, digest.as_ref());
                Some(key)
            }
            CacheKey::Template(template) => {
                let mut key = String::with_capacity(template.len());
                let mut rest = template.as_str();
                let mut payload: Option<serde_json::Value> = None;
                while let Some(open) = rest.find('{') {
                    key.push_str(&rest[..open]);
                    let close = open + rest[open..].find('}')?;
                    let name = &rest[open + 1..close];
                    match name {
                        "payload" => key.push_str(&String::from_utf8_lossy(&item.payload)),
                        "id" => key.push_str(&item.id),
                        pointer if pointer.starts_with('/') => {
                            if payload.is_none() {
                                payload = Some(serde_json::from_slice(&item.payload).ok()?);
                            }
                            match payload.as_ref()?.pointer(pointer)? {
                                serde_json::Value::String(text) => key.push_str(text),
                                other => key.push_str(&other.to_string()),
                            }
                        }
                        _ => return None,
                    }
                    rest = &rest[close + 1..];
                }
                key.push_str(rest);
                Some(key)
            }
        }
    }
}

/// A cache's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: usize,
    pub key: CacheKey,
    /// Refresh in the background once an entry is this fraction of its TTL
    /// old (0 < f < 1); `None`: entries just expire.
    pub refresh_ahead: Option<f64>,
}

impl CacheConfig {
    /// `ttl`, 1000 entries, keyed by a hash of the payload, no refresh ahead.
    pub fn new(ttl: Duration) -> Self {
        CacheConfig {
            ttl,
            max_entries: 1000,
            key: CacheKey::PayloadHash,
            refresh_ahead: None,
        }
    }
}

/// What a [`Cache`] counted.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Callers that waited on another caller's call for the same key.
    pub shared: AtomicU64,
    pub refreshes: AtomicU64,
    pub evictions: AtomicU64,
}

/// Caches `handler`'s outputs. Cheap to share: one value serves every worker.
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    handler: Arc<dyn Handler>,
    config: CacheConfig,
    /// Protects the entries, their recency index and the flights.
    state: Mutex<State>,
    stats: CacheStats,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Recency: use tick → key; the first is the least recently used.
    recency: BTreeMap<u64, String>,
    next_tick: u64,
    flights: HashMap<String, Arc<Flight>>,
}

struct Entry {
    output: String,
    stored: Instant,
    tick: u64,
    refreshing: bool,
}

/// One call in progress for a key, and its result once known.
#[derive(Default)]
struct Flight {
    /// Protects: the result, set once when the call lands (`None` until then).
    result: Mutex<Option<Result<String, Failure>>>,
    /// The callers waiting on the result wait here; notified when it lands.
    landed: Condvar,
}

impl Cache {
    pub fn new(handler: Arc<dyn Handler>, config: CacheConfig) -> Result<Self, String> {
        if config.ttl.is_zero() || config.max_entries == 0 {
            return Err("cache: ttl and max_entries must be above 0".to_string());
        }
        if config.refresh_ahead.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
            return Err("cache: refresh_ahead must be a fraction between 0 and 1, like 0.8".to_string());
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                handler,
                config,
                state: Mutex::new(State::default()),
                stats: CacheStats::default(),
            }),
        })
    }

    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }
}

impl Handler for Cache {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let Some(key) = self.inner.config.key.of(item) else {
            log::debug!("item {}: no cache key can be made from it; calling uncached", item.id);
            return self.inner.handler.handle(ctx, item);
        };
        let inner = &self.inner;
        let mut state = inner.state.lock();
        let ttl = inner.config.ttl;
        if let Some(entry) = state.entries.get(&key) {
            let age = entry.stored.elapsed();
            if age < ttl {
                let output = entry.output.clone();
                let refresh = inner
                    .config
                    .refresh_ahead
                    .is_some_and(|f| !entry.refreshing && age.as_secs_f64() >= f * ttl.as_secs_f64());
                state.touch(&key);
                if refresh {
                    if let Some(entry) = state.entries.get_mut(&key) {
                        entry.refreshing = true;
                    }
                    drop(state);
                    inner.refresh_in_background(key, item.clone());
                }
                // Relaxed: statistics.
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(output);
            }
        }
        if let Some(flight) = state.flights.get(&key).cloned() {
            drop(state);
            inner.stats.shared.fetch_add(1, Ordering::Relaxed);
            return flight.wait(ctx);
        }
        let flight = Arc::new(Flight::default());
        state.flights.insert(key.clone(), Arc::clone(&flight));
        drop(state);
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.handler.handle(ctx, item)))
            .unwrap_or_else(|_| Err(Failure::fatal("the cached handler panicked")));
        inner.land(&key, &flight, &result);
        result
    }

    fn kill_running(&self) {
        self.inner.handler.kill_running();
    }
}

impl Inner {
    /// Stores a successful result, ends the flight and wakes its waiters.
    fn land(&self, key: &str, flight: &Flight, result: &Result<String, Failure>) {
        let mut state = self.state.lock();
        if let Ok(output) = result {
            state.store(key, output.clone(), self.config.max_entries, &self.stats);
        }
        state.flights.remove(key);
        drop(state);
        *flight.result.lock() = Some(result.clone());
        flight.landed.notify_all();
    }

    /// Calls the handler for `item` on a thread of its own and stores the
    /// new output (a failure keeps the old one until it expires).
    fn refresh_in_background(self: &Arc<Self>, key: String, item: Item) {
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("lote-cache-refresh".to_string())
            .spawn(move || {
                let stop = StopHandle::new();
                let deadline = Instant::now().checked_add(inner.config.ttl);
                let ctx = CallContext::new(&item, 1, deadline, &stop);
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.handler.handle(&ctx, &item)))
                        .unwrap_or_else(|_| Err(Failure::fatal("the cached handler panicked")));
                inner.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                let mut state = inner.state.lock();
                match result {
                    Ok(output) => state.store(&key, output, inner.config.max_entries, &inner.stats),
                    Err(failure) => {
                        log::warn!(
                            "cache: refreshing {key:?} failed ({failure}); the cached output stays until it expires"
                        );
                        if let Some(entry) = state.entries.get_mut(&key) {
                            entry.refreshing = false;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cache: cannot start a refresh thread ({e}); the entry expires instead");
        }
    }
}

impl State {
    /// Marks `key` most recently used.
    fn touch(&mut self, key: &str) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            self.recency.remove(&entry.tick);
            entry.tick = tick;
            self.recency.insert(tick, key.to_string());
        }
    }

    fn store(&mut self, key: &str, output: String, max_entries: usize, stats: &CacheStats) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(old) = self.entries.remove(key) {
            self.recency.remove(&old.tick);
        }
        while self.entries.len() >= max_entries {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.insert(
            key.to_string(),
            Entry {
                output,
                stored: Instant::now(),
                tick,
                refreshing: false,
            },
        );
        self.recency.insert(tick, key.to_string());
    }
}

impl Flight {
    /// The flight's result, once it lands; a hurry ends the wait.
    fn wait(&self, ctx: &CallContext<'_>) -> Result<String, Failure> {
        let mut result = self.result.lock();
        loop {
            if let Some(result) = result.as_ref() {
                return result.clone();
            }
            if ctx.should_stop() {
                return Err(Failure::retryable("cut short while waiting for the same key's call"));
            }
            (result, _) = self
                .landed
                .wait_until(result, Instant::now() + Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests;
