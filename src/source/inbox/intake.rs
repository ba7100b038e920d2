//! The way into the inbox: [`Intake::push`] makes a request's items durable
//! or refuses them whole. Many threads push at once (the listener's
//! connections); one thread, the committer, writes: it takes every request
//! waiting, runs them in one transaction with one savepoint each, commits
//! once (one fsync under `synchronous: full`), and only then answers each.
//! While one commit's fsync runs, the next requests pile up and go in the
//! next commit together: batches grow with load by themselves (group
//! commit).
//!
//! # Invariants
//!
//! - A request is answered `Ok` only after the transaction holding its rows
//!   committed; an error in one request rolls back its savepoint only.
//! - The channel to the committer is bounded ([`WAITING`] requests): a
//!   pusher beyond it waits, it is never queued without bound.
//! - Closing ends the committer after the requests already sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use rusqlite::{params, Connection, TransactionBehavior};

use super::{depth, now_ms, open_db, InboxConfig};
use crate::item::{JsonItem, DEFAULT_PRIORITY};
use crate::metrics::{Histogram, Sizes};
use crate::source::Doorbell;
use crate::sync::Mutex;

/// Requests that may wait for the committer; more wait to be sent.
const WAITING: usize = 256;

/// Rows one commit takes at most (a later request waits for the next).
const MAX_GROUP_ROWS: usize = 8192;

/// What a push made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// New items.
    pub accepted: usize,
    /// Items whose id was already pending, running or done.
    pub duplicates: usize,
    /// Every item's id, in request order (made up where none was given).
    pub ids: Vec<String>,
}

/// Why a push was refused; nothing of it was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The inbox holds `unfinished` of `capacity` items; `new` more would
    /// not fit.
    Full { unfinished: u64, capacity: u64, new: usize },
    /// Item `index` (from 0) is `len` bytes, over `max_bytes`.
    TooLarge { index: usize, len: usize, max_bytes: u64 },
    /// The intake is closed (lote is stopping).
    Closed,
    /// The database failed (a sentence).
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full {
                unfinished,
                capacity,
                new,
            } => write!(
                f,
                "the inbox is full ({unfinished} of {capacity} items unfinished; {new} more do not fit); try again later"
            ),
            Refused::TooLarge { index, len, max_bytes } => write!(
                f,
                "item {} is {len} bytes, over the inbox's max_bytes of {max_bytes}",
                index + 1
            ),
            Refused::Closed => f.write_str("lote is stopping and takes no more items; try again later"),
            Refused::Failed(why) => f.write_str(why),
        }
    }
}

/// Counters of the intake (Prometheus: `lote_inbox_*`).
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// Items made durable, and duplicates acknowledged.
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Requests refused because the inbox was full.
    pub refused_full: AtomicU64,
    /// Commits, and requests they carried.
    pub commits: AtomicU64,
    pub requests: AtomicU64,
    /// Rows per commit.
    pub batch_rows: Sizes,
    /// How long each commit took (its transaction, fsync included).
    pub commit_time: Histogram,
}

impl IntakeStats {
    fn committed(&self, rows: usize, requests: usize, took: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.batch_rows.record(rows as u64);
        self.commit_time.record(took);
    }
}

/// One request to the committer.
struct Request {
    items: Vec<JsonItem>,
    reply: Sender<Result<Admitted, Refused>>,
}

/// See the module documentation.
pub struct Intake {
    config: InboxConfig,
    /// The way to the committer; taken (`None`) by `close`, so pushes
    /// after it are refused. Locked only to clone or take the sender.
    requests: Mutex<Option<Sender<Request>>>,
    /// The committer thread, taken and joined by `close` (once).
    committer: Mutex<Option<JoinHandle<()>>>,
    /// A read connection for [`Intake::depth`] and the full check of
    /// `push`; the committer writes through its own. One SQLite handle is
    /// used by one thread at a time, so reads take turns (a read under WAL
    /// never waits for the writer).
    reader: Mutex<Connection>,
    stats: Arc<IntakeStats>,
}

impl Intake {
    /// Opens the inbox (creating it if missing) and starts the committer.
    /// `bell`: rung after each commit (the source's, in the same process).
    pub fn open(config: InboxConfig, bell: Option<Arc<Doorbell>>) -> Result<Intake, String> {
        let writer = open_db(&config)?;
        let reader = open_db(&config)?;
        let stats = Arc::new(IntakeStats::default());
        let (send, receive) = bounded(WAITING);
        let committer = std::thread::Builder::new()
            .name("lote-inbox-commit".into())
            .spawn({
                let (config, stats) = (config.clone(), Arc::clone(&stats));
                move || commit_loop(&config, writer, &receive, &stats, bell.as_deref())
            })
            .map_err(|e| format!("inbox {}: starting the committer: {e}", config.path.display()))?;
        Ok(Intake {
            config,
            requests: Mutex::new(Some(send)),
            committer: Mutex::new(Some(committer)),
            reader: Mutex::new(reader),
            stats,
        })
    }

    /// Makes all `items` durable, or none: see [`Refused`]. Blocks until
    /// the commit that holds them is done.
    pub fn push(&self, items: Vec<JsonItem>) -> Result<Admitted, Refused> {
        if let Some((index, item)) = items
            .iter()
            .enumerate()
            .find(|(_, item)| item.payload.len() as u64 > self.config.max_bytes)
        {
            return Err(Refused::TooLarge {
                index,
                len: item.payload.len(),
                max_bytes: self.config.max_bytes,
            });
        }
        if items.is_empty() {
            return Ok(Admitted::default());
        }
        if let Some(full) = self.full_already(&items) {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(full);
        }
        let Some(send) = self.requests.lock().clone() else {
            return Err(Refused::Closed);
        };
        let (reply, answer) = bounded(1);
        send.send(Request { items, reply }).map_err(|_| Refused::Closed)?;
        drop(send);
        answer.recv().unwrap_or(Err(Refused::Closed))
    }

    /// A full inbox answers at once, without waiting for a write
    /// transaction: `Some` when the items new to it (ids not already
    /// pending, running or done) would not fit now. The committer checks
    /// again under its transaction; a failed read here decides nothing.
    fn full_already(&self, items: &[JsonItem]) -> Option<Refused> {
        let conn = self.reader.lock();
        let unfinished = depth(&conn).ok()?;
        if unfinished + items.len() as u64 <= self.config.capacity {
            return None;
        }
        let mut known = conn
            .prepare_cached("SELECT 1 FROM inbox WHERE id = ?1 AND status != 'failed'")
            .ok()?;
        let mut new = 0;
        for item in items {
            match &item.id {
                Some(id) if known.exists([id]).ok()? => {}
                _ => new += 1,
            }
        }
        (unfinished + new as u64 > self.config.capacity).then_some(Refused::Full {
            unfinished,
            capacity: self.config.capacity,
            new,
        })
    }

    /// Unfinished items now (pending + running), read from the database.
    pub fn depth(&self) -> Result<u64, String> {
        depth(&self.reader.lock()).map_err(|e| format!("inbox {}: reading its depth: {e}", self.config.path.display()))
    }

    /// The configured capacity.
    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    pub fn stats(&self) -> &IntakeStats {
        &self.stats
    }

    /// Refuses new pushes (`Refused::Closed`), lets the committer finish
    /// those already sent, and waits for it.
    pub fn close(&self) {
        drop(self.requests.lock().take());
        if let Some(committer) = self.committer.lock().take() {
            let _ = committer.join();
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.close();
    }
}

/// The committer thread: one transaction per group of waiting requests.
fn commit_loop(
    config: &InboxConfig,
    mut conn: Connection,
    requests: &Receiver<Request>,
    stats: &IntakeStats,
    bell: Option<&Doorbell>,
) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        let mut rows = group[0].items.len();
        while rows < MAX_GROUP_ROWS {
            match requests.try_recv() {
                Ok(request) => {
                    rows += request.items.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let answers = match commit_group(config, &mut conn, &group) {
            Ok(answers) => {
                stats.committed(rows, group.len(), started.elapsed());
                answers
            }
            Err(e) => {
                let why = format!("inbox {}: committing {rows} item(s): {e}", config.path.display());
                log::error!("{why}");
                group.iter().map(|_| Err(Refused::Failed(why.clone()))).collect()
            }
        };
        let mut any = false;
        for (request, answer) in group.into_iter().zip(answers) {
            match &answer {
                Ok(admitted) => {
                    any |= admitted.accepted > 0;
                    stats.accepted.fetch_add(admitted.accepted as u64, Ordering::Relaxed);
                    stats
                        .duplicates
                        .fetch_add(admitted.duplicates as u64, Ordering::Relaxed);
                }
                Err(Refused::Full { .. }) => {
                    stats.refused_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {}
            }
            // A pusher that gave up waiting is no reason to stop.
            let _ = request.reply.send(answer);
        }
        if let (true, Some(bell)) = (any, bell) {
            bell.ring();
        }
    }
}

/// Runs `group` in one transaction: each request in a savepoint, kept or
/// rolled back whole. The answers come back only if the commit succeeded.
fn commit_group(
    config: &InboxConfig,
    conn: &mut Connection,
    group: &[Request],
) -> rusqlite::Result<Vec<Result<Admitted, Refused>>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut unfinished = depth(&tx)?;
    let now = now_ms();
    let mut answers = Vec::with_capacity(group.len());
    for request in group {
        let mut savepoint = tx.savepoint()?;
        match insert_all(&savepoint, &request.items, now) {
            Ok(admitted) if unfinished + admitted.accepted as u64 > config.capacity => {
                savepoint.rollback()?;
                answers.push(Err(Refused::Full {
                    unfinished,
                    capacity: config.capacity,
                    new: admitted.accepted,
                }));
            }
            Ok(admitted) => {
                savepoint.commit()?;
                unfinished += admitted.accepted as u64;
                answers.push(Ok(admitted));
            }
            Err(e) => {
                savepoint.rollback()?;
                answers.push(Err(Refused::Failed(format!(
                    "inbox {}: storing the items: {e}",
                    config.path.display()
                ))));
            }
        }
    }
    tx.commit()?;
    Ok(answers)
}

/// Inserts one request's items; a failed id becomes pending again.
fn insert_all(conn: &Connection, items: &[JsonItem], now: i64) -> rusqlite::Result<Admitted> {
    let mut forget_failed = conn.prepare_cached("DELETE FROM inbox WHERE id = ?1 AND status = 'failed'")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO inbox (id, priority, payload, status, received_at) \
         VALUES (?1, ?2, ?3, 'pending', ?4) ON CONFLICT(id) DO NOTHING",
    )?;
    let mut admitted = Admitted {
        ids: Vec::with_capacity(items.len()),
        ..Admitted::default()
    };
    for item in items {
        let id = item.id.clone().unwrap_or_else(new_id);
        forget_failed.execute([&id])?;
        let priority = item.priority.unwrap_or(DEFAULT_PRIORITY);
        match insert.execute(params![id, priority, item.payload, now])? {
            0 => admitted.duplicates += 1,
            _ => admitted.accepted += 1,
        }
        admitted.ids.push(id);
    }
    Ok(admitted)
}

/// An id for an item sent without one: the time in microseconds and 48
/// random bits, both hex ("18c6f2a1b3c4d-9f1e2d3c4b5a"). Unique in practice;
/// a collision would count as a duplicate.
fn new_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{micros:x}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn request(ids: &[&str]) -> Request {
        Request {
            items: ids
                .iter()
                .map(|id| JsonItem {
                    id: Some(id.to_string()),
                    priority: None,
                    payload: b"p".to_vec(),
                })
                .collect(),
            reply: bounded(1).0,
        }
    }

    /// The committer's own check, behind `full_already`: two requests that
    /// each fit alone but not together, in one group.
    #[test]
    fn the_committer_refuses_the_request_that_would_pass_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let config = InboxConfig {
            capacity: 3,
            ..InboxConfig::new(dir.path().join("inbox.db"))
        };
        let mut conn = open_db(&config).unwrap();
        let group = [request(&["a", "b"]), request(&["c", "d"]), request(&["a", "e"])];
        let answers = commit_group(&config, &mut conn, &group).unwrap();
        assert_eq!(answers[0].as_ref().unwrap().accepted, 2);
        assert_eq!(
            answers[1],
            Err(Refused::Full {
                unfinished: 2,
                capacity: 3,
                new: 2
            })
        );
        let third = answers[2].as_ref().unwrap();
        assert_eq!((third.accepted, third.duplicates), (1, 1));
        assert_eq!(depth(&conn).unwrap(), 3);
    }
}
