//! A process-wide cache of helper threads for handler calls (an exec call's
//! stdin writer, pipe readers and exit waiter). Starting four threads per
//! call cost more than the child process itself (benches/exec.rs); these are
//! started on demand, reused, and retire after `IDLE` without work.
//!
//! # Invariant
//!
//! `idle` = helpers waiting for a job − jobs queued for them. A submitter
//! takes one unit of `idle` (reserving a waiting helper) before it queues a
//! job, or starts a new helper for the job when `idle` is 0; a helper that
//! times out may retire only by taking one unit of `idle` itself. So every
//! queued job has a helper bound to take it, and no helper retires while a
//! job waits for it. Both sides use compare-exchange on `idle` (AcqRel: the
//! count is the handshake that hands a job over; the channel carries the job).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long an idle helper waits for work before it exits.
const IDLE: Duration = Duration::from_secs(10);

struct Pool {
    jobs: Sender<Job>,
    queue: Receiver<Job>,
    /// See the module invariant.
    idle: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = unbounded();
        Pool {
            jobs,
            queue,
            idle: AtomicUsize::new(0),
        }
    })
}

/// Runs `body` on a helper thread: an idle one if there is one, else a new
/// one named `name`.
pub(crate) fn run(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let pool = pool();
    if take_one(&pool.idle) {
        // A waiting helper is reserved for this job; the channel never closes
        // (the pool lives as long as the process), so the send cannot fail.
        let _ = pool.jobs.send(Box::new(body));
        return Ok(());
    }
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            body();
            serve(pool);
        })
        .map(drop)
}

/// A helper's life after its first job: wait for the next, retire when idle.
fn serve(pool: &'static Pool) {
    loop {
        pool.idle.fetch_add(1, Ordering::AcqRel);
        let job = loop {
            match pool.queue.recv_timeout(IDLE) {
                Ok(job) => break job,
                Err(RecvTimeoutError::Timeout) => {
                    if take_one(&pool.idle) {
                        return; // retired: no job was counted on this helper
                    }
                    // Every idle unit is reserved by a job on its way: wait
                    // for it.
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        job();
    }
}

/// Decrements `idle` if it is above 0. True if it did.
fn take_one(idle: &AtomicUsize) -> bool {
    idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::sync::Arc;

    #[test]
    fn every_job_runs_once_and_helpers_are_reused() {
        let ran = Arc::new(AtomicUsize::new(0));
        let (done, finished) = mpsc::channel();
        for round in 0..50 {
            for _ in 0..4 {
                let (ran, done) = (Arc::clone(&ran), done.clone());
                run("lote-test-helper", move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    done.send(()).unwrap();
                })
                .unwrap();
            }
            for _ in 0..4 {
                finished.recv_timeout(Duration::from_secs(10)).expect("job ran");
            }
            // After the first round, helpers are waiting to be reused.
            if round > 0 {
                assert!(pool().idle.load(Ordering::Acquire) > 0 || ran.load(Ordering::SeqCst) > 0);
            }
        }
        assert_eq!(ran.load(Ordering::SeqCst), 200);
    }
}
