//! A source whose items arrive paced, and a library session over it.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use lote::commit::MemoryCommitter;
use lote::policy::CallPolicy;
use lote::source::{Pull, ReturnReason, Source, SourceError};
use lote::{Handler, Item, Outcome, Session, SessionConfig};

/// Items that become available one by one, `period` apart from the first
/// pull (a pull waits for the next one due), so a session sees arrivals,
/// not a backlog.
pub struct Paced {
    items: Vec<Item>,
    period: Duration,
    /// Protects: the index of the next item to hand out.
    next: Mutex<usize>,
    started: Mutex<Option<(Instant, SystemTime)>>,
}

impl Paced {
    pub fn new(items: Vec<Item>, per_second: usize) -> Arc<Self> {
        Arc::new(Paced {
            items,
            period: Duration::from_secs_f64(1.0 / per_second as f64),
            next: Mutex::new(0),
            started: Mutex::new(None),
        })
    }

    /// When item `n` was due (wall clock, to compare with `finished_at`).
    pub fn due(&self, n: usize) -> SystemTime {
        self.started.lock().unwrap().expect("pulled").1 + self.period * n as u32
    }
}

impl Source for Paced {
    fn describe(&self) -> String {
        "paced".into()
    }
    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let (t0, _) = *self
            .started
            .lock()
            .unwrap()
            .get_or_insert_with(|| (Instant::now(), SystemTime::now()));
        let mut next = self.next.lock().unwrap();
        if *next >= self.items.len() {
            return Ok(Pull::Exhausted);
        }
        let due = t0 + self.period * *next as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let now = Instant::now();
        let mut end = *next + 1;
        while end < self.items.len() && end - *next < max && t0 + self.period * end as u32 <= now {
            end += 1;
        }
        let items = self.items[*next..end].to_vec();
        *next = end;
        Ok(Pull::Items(items))
    }
    fn give_back(&self, _: Vec<Item>, _: ReturnReason) -> Result<(), SourceError> {
        Ok(())
    }
    fn ack(&self, _: &[Outcome]) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A session over `source` with `threads` workers; its outcomes.
pub fn run_session(source: Arc<Paced>, handler: Arc<dyn Handler>, threads: usize, policy: CallPolicy) -> Vec<Outcome> {
    let committer = Arc::new(MemoryCommitter::acking(source.clone()));
    let config = SessionConfig {
        threads,
        chunk: 10,
        chunk_wait: Duration::from_millis(50),
        poll_interval: Duration::from_millis(1),
        ..SessionConfig::default()
    };
    let summary = Session::new(config, source, handler, committer.clone())
        .policy(policy)
        .run()
        .expect("the session runs");
    assert!(summary.balanced(), "every item accounted for: {summary}");
    committer.outcomes()
}

pub fn index(id: &str) -> usize {
    id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap()
}
