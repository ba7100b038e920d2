//! `source: {kind: redis_stream}` — a fleet's share of one Redis stream
//! (SPEC §3.14): several lote instances read one stream in one consumer
//! group, each under its own consumer name.
//!
//! # How an entry travels
//!
//! 1. **Setup** (first pull): `XGROUP CREATE <stream> <group> 0 MKSTREAM`
//!    (from the first entry: work published before the first instance
//!    started is not skipped); an existing group (BUSYGROUP) is kept.
//! 2. **Resume**: the first pulls re-read this consumer's own pending list
//!    (`XREADGROUP … 0`): what it held when it last stopped or crashed.
//! 3. **Reclaim**: every `reclaim_every`, `XAUTOCLAIM` takes entries idle
//!    longer than `claim_after` from any consumer (a dead instance's).
//! 4. **New work**: `XREADGROUP … COUNT max BLOCK block >`, `max` being what
//!    the producer asked for.
//! 5. **Ack**: once an outcome is durable in the sink, `XACK` (one pipeline
//!    per writer batch); a dead-lettered outcome is first added to
//!    `<stream>:dead` with its reason and delivery count.
//!
//! # Invariants
//!
//! - **Claimed until acknowledged.** An entry this instance read stays in
//!   its pending list (Redis's) until its outcome is durable and acked. A
//!   crash leaves it there: the instance restarted under the same consumer
//!   name resumes it first; otherwise another instance reclaims it once idle
//!   for `claim_after`.
//! - **A running item is not stolen.** The renewer thread ([`renew`])
//!   resets the idle time of everything this instance holds every
//!   `claim_after / 3` (`XCLAIM … JUSTID`, which leaves the delivery count
//!   alone), so only an instance that stopped renewing loses its entries.
//! - **Held once.** `Held::claims` maps each entry id this instance holds to
//!   its item; an entry already held is never handed out again (a re-read of
//!   the pending list after a reconnect skips it).
//! - **Poison is bounded.** An entry delivered more than `max_deliveries`
//!   times (Redis counts every read of it: new, resumed, reclaimed) becomes a
//!   defective item: it fails without running, goes to the dead-letter sink
//!   and to `<stream>:dead`, and is acked.
//! - **A lost connection loses nothing.** Pulls answer `Idle` and ring the
//!   doorbell when the link may be back (back-off in [`crate::redis_conn`]);
//!   acks that failed are kept and sent again by the renewer; entries whose
//!   read reply was lost are found by re-reading the pending list after the
//!   reconnect.

mod commands;
pub mod kind;
mod renew;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::{Doorbell, Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Status};
use crate::redis_conn::{read_reply, Entry, Link, LinkError, LinkStats, Target};
use crate::sync::Mutex;
use commands::{autoclaim_reply, create_group, dead_fields, delivery_counts, entry_item, parse, DeadLetter};

pub use kind::RedisStreamConfig;

/// How long a given-back item waits before it is offered again when the
/// reason was an open breaker or a full queue (a stop or a failed flush: at
/// once). Without it, a breaker that skips would spin on the backlog.
const GIVE_BACK_PAUSE: Duration = Duration::from_secs(1);
/// Ids per `XCLAIM` (renewal) and per `XACK`.
const IDS_PER_CALL: usize = 1000;

/// What the source counts, shown as `lote_redis_*` (see [`RedisStats::snapshot`]).
#[derive(Debug, Default)]
pub struct RedisStats {
    /// New entries read (`>`). Relaxed: statistics only (all below too).
    pub claimed: AtomicU64,
    /// Own pending entries read again (after a restart or reconnect).
    pub resumed: AtomicU64,
    /// Entries taken over from other consumers (`XAUTOCLAIM`).
    pub reclaimed: AtomicU64,
    /// Entries acknowledged (`XACK`).
    pub acked: AtomicU64,
    /// Entries added to `<stream>:dead`.
    pub dead_lettered: AtomicU64,
    /// The group's pending entries (all consumers), from the last `XPENDING`.
    pub pending: AtomicU64,
    /// The reader's and the control connection's reconnects.
    pub reader_link: Arc<LinkStats>,
    pub control_link: Arc<LinkStats>,
}

/// A point-in-time copy of [`RedisStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedisSnapshot {
    pub claimed: u64,
    pub resumed: u64,
    pub reclaimed: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub pending: u64,
    pub reconnects: u64,
    pub connected: bool,
}

impl RedisStats {
    pub fn snapshot(&self) -> RedisSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisSnapshot {
            claimed: get(&self.claimed),
            resumed: get(&self.resumed),
            reclaimed: get(&self.reclaimed),
            acked: get(&self.acked),
            dead_lettered: get(&self.dead_lettered),
            pending: get(&self.pending),
            reconnects: get(&self.reader_link.reconnects) + get(&self.control_link.reconnects),
            connected: self.reader_link.connected.load(Ordering::Relaxed),
        }
    }
}

/// One entry this instance holds.
#[derive(Debug)]
struct Claim {
    /// Times Redis delivered it, this delivery included.
    deliveries: u64,
    /// Why it is dead-lettered without running (past `max_deliveries`).
    poison: Option<String>,
}

/// What this instance holds, under one lock (never held across a call to
/// Redis).
#[derive(Debug, Default)]
struct Held {
    /// Entry id → claim: every entry read and not yet acked.
    claims: HashMap<String, Claim>,
    /// Item id → its entry ids (an id published twice is held twice).
    by_item: HashMap<String, Vec<String>>,
    /// Given-back items, offered again from `ready_at` on, before Redis is asked.
    backlog: VecDeque<(Instant, Item)>,
    /// Acks that failed (the connection was lost): entry ids, sent again.
    unacked: Vec<String>,
    /// Dead letters not yet added to `<stream>:dead`: (entry id, fields).
    undead: Vec<DeadLetter>,
}

/// The reader's state: the link pulls use and where each scan is.
struct Reader {
    link: Link,
    /// The group exists (created or seen); false again after NOGROUP.
    group_ready: bool,
    /// Re-reading the own pending list from this id; `None`: done.
    resume_from: Option<String>,
    /// The connects of `link` seen last: a new one starts a re-read.
    connects_seen: u64,
    /// Where the running `XAUTOCLAIM` scan is ("0-0": a new scan).
    reclaim_from: String,
    next_reclaim: Instant,
}

/// What the pulling, acking and renewing threads share.
struct Shared {
    config: RedisStreamConfig,
    target: Target,
    held: Mutex<Held>,
    /// The link for acks, renewals and the pending count: never blocked by a
    /// pull waiting in `XREADGROUP … BLOCK`.
    control: Mutex<Link>,
    stats: Arc<RedisStats>,
    bell: Arc<Doorbell>,
}

/// See the module documentation.
pub struct RedisStreamSource {
    shared: Arc<Shared>,
    reader: Mutex<Reader>,
    /// `false`: `lote run --once`, the stream is read to its current end.
    stream: bool,
    /// Stopped and joined on drop.
    _renewer: Option<renew::Renewer>,
}

impl RedisStreamSource {
    /// A source for a run: with its renewer thread.
    pub fn open(config: RedisStreamConfig, stream: bool) -> Result<RedisStreamSource, String> {
        let mut source = Self::open_without_renewer(config, stream)?;
        source._renewer = Some(renew::Renewer::start(source.shared.clone())?);
        Ok(source)
    }

    /// A source for `dead-letter requeue`: no thread, no reads.
    pub fn open_without_renewer(config: RedisStreamConfig, stream: bool) -> Result<RedisStreamSource, String> {
        let target = config.target().map_err(|why| format!("source.url {why}"))?;
        let stats = Arc::new(RedisStats::default());
        // A blocked read waits `block`; a reply may take CONNECT_TIMEOUT more.
        let read_timeout = config.block + crate::redis_conn::CONNECT_TIMEOUT;
        let reader = Reader {
            link: Link::new(target.clone(), read_timeout, stats.reader_link.clone()),
            group_ready: false,
            resume_from: Some("0".into()),
            connects_seen: 0,
            reclaim_from: "0-0".into(),
            next_reclaim: Instant::now(),
        };
        let control = Link::new(
            target.clone(),
            crate::redis_conn::CONNECT_TIMEOUT,
            stats.control_link.clone(),
        );
        Ok(RedisStreamSource {
            shared: Arc::new(Shared {
                config,
                target,
                held: Mutex::new(Held::default()),
                control: Mutex::new(control),
                stats,
                bell: Arc::new(Doorbell::new()),
            }),
            reader: Mutex::new(reader),
            stream,
            _renewer: None,
        })
    }

    /// Its counters, for the status and `/metrics`.
    pub fn stats(&self) -> Arc<RedisStats> {
        self.shared.stats.clone()
    }

    /// Given-back items that are ready, up to `max`; and when the first of
    /// the others will be.
    fn take_backlog(&self, max: usize) -> (Vec<Item>, Option<Instant>) {
        let mut held = self.shared.held.lock();
        let now = Instant::now();
        let mut items = Vec::new();
        let mut later = None;
        let mut keep = VecDeque::new();
        while let Some((at, item)) = held.backlog.pop_front() {
            if at <= now && items.len() < max {
                items.push(item);
            } else {
                if at > now {
                    later = Some(later.map_or(at, |l: Instant| l.min(at)));
                }
                keep.push_back((at, item));
            }
        }
        held.backlog = keep;
        (items, later)
    }

    fn read(&self, reader: &mut Reader, max: usize) -> Result<Pull, LinkError> {
        let c = &self.shared.config;
        if !reader.group_ready {
            create_group(&mut reader.link, c)?;
            reader.group_ready = true;
        }
        let connects = reader.link.connects();
        if connects > 1 && connects != reader.connects_seen && reader.resume_from.is_none() {
            // A reply lost with the old connection may have delivered
            // entries nobody here knows of: they are in the pending list.
            reader.resume_from = Some("0".into());
        }
        reader.connects_seen = connects;
        while let Some(from) = reader.resume_from.clone() {
            let reply: Value = reader.link.run(|conn| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&c.group)
                    .arg(&c.consumer)
                    .arg("COUNT")
                    .arg(max)
                    .arg("STREAMS")
                    .arg(&c.stream)
                    .arg(&from)
                    .query(conn)
            })?;
            let entries = parse(&mut reader.link, read_reply(reply))?;
            let Some(last) = entries.last().map(|e| e.id.clone()) else {
                reader.resume_from = None;
                break;
            };
            reader.resume_from = Some(last);
            let items = self.take(&mut reader.link, entries, Via::Resumed)?;
            if !items.is_empty() {
                return Ok(Pull::Items(items));
            }
        }
        if Instant::now() >= reader.next_reclaim {
            let min_idle = c.claim_after.as_millis() as u64;
            let from = reader.reclaim_from.clone();
            let reply: Value = reader.link.run(|conn| {
                redis::cmd("XAUTOCLAIM")
                    .arg(&c.stream)
                    .arg(&c.group)
                    .arg(&c.consumer)
                    .arg(min_idle)
                    .arg(&from)
                    .arg("COUNT")
                    .arg(max)
                    .query(conn)
            })?;
            let (next, entries) = parse(&mut reader.link, autoclaim_reply(reply))?;
            if next == "0-0" {
                reader.next_reclaim = Instant::now() + c.reclaim_every;
            }
            reader.reclaim_from = next;
            let items = self.take(&mut reader.link, entries, Via::Reclaimed)?;
            if !items.is_empty() {
                return Ok(Pull::Items(items));
            }
        }
        let block = if self.stream {
            Some(c.block.as_millis() as u64)
        } else {
            None
        };
        let reply: Value = reader.link.run(|conn| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&c.group).arg(&c.consumer).arg("COUNT").arg(max);
            if let Some(ms) = block {
                cmd.arg("BLOCK").arg(ms);
            }
            cmd.arg("STREAMS").arg(&c.stream).arg(">").query(conn)
        })?;
        let entries = parse(&mut reader.link, read_reply(reply))?;
        let items = self.take(&mut reader.link, entries, Via::New)?;
        if !items.is_empty() {
            return Ok(Pull::Items(items));
        }
        if !self.stream && reader.next_reclaim > Instant::now() {
            return Ok(Pull::Exhausted);
        }
        // The read waited `block` already: pull again at once.
        self.shared.bell.ring();
        Ok(Pull::Idle)
    }

    /// Turns entries just read into items, holding them; entries already
    /// held are passed over, deleted ones acked.
    fn take(&self, link: &mut Link, entries: Vec<Entry>, via: Via) -> Result<Vec<Item>, LinkError> {
        let c = &self.shared.config;
        let deliveries = match via {
            Via::New => HashMap::new(),
            Via::Resumed | Via::Reclaimed => delivery_counts(link, c, &entries)?,
        };
        let mut gone = Vec::new();
        let mut items = Vec::with_capacity(entries.len());
        let mut held = self.shared.held.lock();
        for entry in entries {
            if held.claims.contains_key(&entry.id) {
                continue;
            }
            if entry.fields.is_none() {
                gone.push(entry.id);
                continue;
            }
            let n = deliveries.get(&entry.id).copied().unwrap_or(1);
            let (item, poison) = entry_item(&entry, n, c.max_deliveries);
            held.by_item.entry(item.id.clone()).or_default().push(entry.id.clone());
            held.claims.insert(entry.id, Claim { deliveries: n, poison });
            items.push(item);
        }
        drop(held);
        let counter = match via {
            Via::New => &self.shared.stats.claimed,
            Via::Resumed => &self.shared.stats.resumed,
            Via::Reclaimed => &self.shared.stats.reclaimed,
        };
        counter.fetch_add(items.len() as u64, Ordering::Relaxed);
        if via == Via::Reclaimed && !items.is_empty() {
            log::info!(
                "took over {} entr(ies) of {} idle for over {:?} from other consumers",
                items.len(),
                c.stream,
                c.claim_after
            );
        }
        if !gone.is_empty() {
            log::warn!(
                "{} pending entr(ies) of {} were deleted from the stream before they ran; acknowledged",
                gone.len(),
                c.stream
            );
            link.run(|conn| redis::cmd("XACK").arg(&c.stream).arg(&c.group).arg(&gone).exec(conn))?;
        }
        Ok(items)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    New,
    Resumed,
    Reclaimed,
}

impl Source for RedisStreamSource {
    fn describe(&self) -> String {
        let c = &self.shared.config;
        format!(
            "redis_stream {} {} (group {}, consumer {})",
            self.shared.target.describe(),
            c.stream,
            c.group,
            c.consumer
        )
    }

    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let (items, later) = self.take_backlog(max);
        if !items.is_empty() {
            return Ok(Pull::Items(items));
        }
        let mut reader = self.reader.lock();
        match self.read(&mut reader, max) {
            Ok(Pull::Exhausted) if later.is_some() => Ok(Pull::Idle),
            Ok(pull) => {
                if let (Pull::Idle, Some(at)) = (&pull, later) {
                    self.shared.bell.ring_at(at);
                }
                Ok(pull)
            }
            Err(LinkError::Down { retry_in, .. }) => {
                // Logged by the link; the producer waits on the bell.
                self.shared.bell.ring_at(Instant::now() + retry_in);
                Ok(Pull::Idle)
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                log::warn!(
                    "the consumer group {} of {} is gone (the server lost its data?); creating it again",
                    self.shared.config.group,
                    self.shared.config.stream
                );
                reader.group_ready = false;
                reader.resume_from = Some("0".into());
                self.shared
                    .bell
                    .ring_at(Instant::now() + crate::redis_conn::FIRST_BACKOFF);
                Ok(Pull::Idle)
            }
            Err(e) => Err(SourceError::new(format!("reading {}", self.describe()), e)),
        }
    }

    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) -> Result<(), SourceError> {
        let pause = match reason {
            ReturnReason::BreakerOpen | ReturnReason::QueueFull => GIVE_BACK_PAUSE,
            ReturnReason::Stopped | ReturnReason::FlushFailed => Duration::ZERO,
        };
        let at = Instant::now() + pause;
        let mut held = self.shared.held.lock();
        // In front: they came first. Still claimed in Redis (and renewed).
        for item in items.into_iter().rev() {
            held.backlog.push_front((at, item));
        }
        drop(held);
        self.shared.bell.ring_at(at);
        Ok(())
    }

    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        let c = &self.shared.config;
        let mut held = self.shared.held.lock();
        for outcome in outcomes {
            let Some(entry) = held.by_item.get_mut(&outcome.item.id).and_then(|ids| ids.pop()) else {
                continue;
            };
            if held.by_item.get(&outcome.item.id).is_some_and(Vec::is_empty) {
                held.by_item.remove(&outcome.item.id);
            }
            let claim = held.claims.remove(&entry);
            if outcome.status == Status::Failed {
                let (deliveries, reason) = match &claim {
                    Some(c) => (c.deliveries, c.poison.clone()),
                    None => (1, None),
                };
                let reason = reason.or_else(|| outcome.error.clone()).unwrap_or_default();
                held.undead
                    .push((entry.clone(), dead_fields(outcome, &entry, deliveries, &reason, c)));
            }
            held.unacked.push(entry);
        }
        let (undead, unacked) = (std::mem::take(&mut held.undead), std::mem::take(&mut held.unacked));
        drop(held);
        self.shared
            .send_acks(undead, unacked)
            .map_err(|e| SourceError::new(format!("acknowledging entries of {} (kept, sent again)", c.stream), e))
    }

    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        let c = &self.shared.config;
        let mut pipe = redis::pipe();
        for item in &items {
            pipe.cmd("XADD")
                .arg(&c.stream)
                .arg("*")
                .arg("id")
                .arg(&item.id)
                .arg("payload")
                .arg(&item.payload)
                .arg("priority")
                .arg(item.priority)
                .ignore();
        }
        let mut link = self.shared.control.lock();
        link.run(|conn| pipe.exec(conn))
            .map_err(|e| SourceError::new(format!("adding {} item(s) to {}", items.len(), c.stream), e))
    }

    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        Some(self.shared.bell.clone())
    }

    fn redis_stats(&self) -> Option<Arc<RedisStats>> {
        Some(self.stats())
    }
}

impl Shared {
    /// Adds the dead letters to `<stream>:dead`, then XACKs `entries`, in
    /// one pipeline. On failure, both are kept to be sent again.
    fn send_acks(&self, undead: Vec<DeadLetter>, entries: Vec<String>) -> Result<(), LinkError> {
        if entries.is_empty() && undead.is_empty() {
            return Ok(());
        }
        let c = &self.config;
        let dead_stream = format!("{}:dead", c.stream);
        let mut pipe = redis::pipe();
        for (_, fields) in &undead {
            pipe.cmd("XADD").arg(&dead_stream).arg("*").arg(fields).ignore();
        }
        for chunk in entries.chunks(IDS_PER_CALL) {
            pipe.cmd("XACK").arg(&c.stream).arg(&c.group).arg(chunk).ignore();
        }
        let sent = self.control.lock().run(|conn| pipe.exec(conn));
        match sent {
            Ok(()) => {
                let stats = &self.stats;
                stats.acked.fetch_add(entries.len() as u64, Ordering::Relaxed);
                stats.dead_lettered.fetch_add(undead.len() as u64, Ordering::Relaxed);
                for (entry, _) in &undead {
                    log::warn!("entry {entry} of {} dead-lettered to {dead_stream}", c.stream);
                }
                Ok(())
            }
            Err(e) => {
                let mut held = self.held.lock();
                held.undead.extend(undead);
                held.unacked.extend(entries);
                Err(e)
            }
        }
    }

    /// Every entry id this instance holds or has yet to ack.
    fn held_ids(&self) -> Vec<String> {
        let held = self.held.lock();
        held.claims.keys().chain(held.unacked.iter()).cloned().collect()
    }
}

#[cfg(test)]
mod tests;
