//! The renewer: one thread per running redis_stream source that keeps what
//! this instance holds claimed, sends again the acks a lost connection
//! failed, and counts the group's pending entries.
//!
//! Started by [`super::RedisStreamSource::open`] (a run's source); stopped
//! when that source is dropped: [`Renewer`]'s drop sets `stop`, wakes the
//! thread and joins it. Each round runs every `claim_after / 3`, so an entry
//! held here is never idle for `claim_after` while this process lives and
//! reaches Redis: a slow item is not taken over while it runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redis::Value;

use super::{Shared, IDS_PER_CALL};
use crate::sync::{Condvar, Mutex};

/// The renewer's handle: dropping it stops and joins the thread.
pub(super) struct Renewer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Renewer {
    pub(super) fn start(shared: Arc<Shared>) -> Result<Renewer, String> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let every = renew_every(shared.config.claim_after);
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("lote-redis-renew".into())
                .spawn(move || run(&shared, &stop, every))
                .map_err(|e| format!("starting the redis_stream renewer thread: {e}"))?
        };
        Ok(Renewer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A third of `claim_after`: two rounds may fail (a reconnect) before an
/// entry could be taken over.
pub(super) fn renew_every(claim_after: Duration) -> Duration {
    (claim_after / 3).max(Duration::from_millis(50))
}

fn run(shared: &Shared, stop: &(Mutex<bool>, Condvar), every: Duration) {
    let mut next = Instant::now() + every;
    loop {
        {
            let mut stopped = stop.0.lock();
            // Woken by Renewer::drop (stop set) or the round's time.
            while !*stopped && Instant::now() < next {
                stopped = stop.1.wait_until(stopped, next).0;
            }
            if *stopped {
                return;
            }
        }
        next = Instant::now() + every;
        round(shared);
    }
}

/// One round: acks kept from a failure, then the renewals, then the count.
/// A failure is logged by the link and tried again next round.
fn round(shared: &Shared) {
    let (undead, unacked) = {
        let mut held = shared.held.lock();
        (std::mem::take(&mut held.undead), std::mem::take(&mut held.unacked))
    };
    if shared.send_acks(undead, unacked).is_err() {
        return;
    }
    let c = &shared.config;
    let ids = shared.held_ids();
    if !ids.is_empty() {
        let mut pipe = redis::pipe();
        for chunk in ids.chunks(IDS_PER_CALL) {
            // Idle 0 and JUSTID: resets the idle time, not the delivery count.
            pipe.cmd("XCLAIM")
                .arg(&c.stream)
                .arg(&c.group)
                .arg(&c.consumer)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .ignore();
        }
        if let Err(e) = shared.control.lock().run(|conn| pipe.exec(conn)) {
            log::warn!("renewing the claim on {} held entr(ies) failed: {e}", ids.len());
            return;
        }
    }
    let summary: Result<Value, _> = shared
        .control
        .lock()
        .run(|conn| redis::cmd("XPENDING").arg(&c.stream).arg(&c.group).query(conn));
    // [count, first id, last id, consumers]; NOGROUP before setup: skipped.
    if let Ok(Value::Array(parts)) = summary {
        if let Some(Value::Int(n)) = parts.first() {
            // Relaxed: a gauge for the metrics only.
            shared.stats.pending.store((*n).max(0) as u64, Ordering::Relaxed);
        }
    }
}
