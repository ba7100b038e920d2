//! What the end-to-end benches share: a source that makes its items on the
//! fly and counts acknowledgements, so no bookkeeping is measured instead
//! of lote; and ([`daemon`]) the real daemon with a client for its listener.
#![allow(dead_code)]

pub mod daemon;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use lote::sink::Sink;
use lote::source::{Pull, ReturnReason, Source, SourceError};
use lote::writer::{Writer, WriterConfig};
use lote::{Item, Outcome};

/// The write-behind thread the end-to-end benches run with: batches of
/// 1000 outcomes, a deep channel, no dead-letter sink.
pub fn writer(sink: Box<dyn Sink>, source: Arc<Generated>) -> Writer {
    let config = WriterConfig {
        batch: 1000,
        channel_chunks: 256,
        ..WriterConfig::default()
    };
    Writer::start(config, sink, None, source).expect("the writer starts")
}

/// `total` items, the `i`th made by `make(i)`.
pub struct Generated {
    next: AtomicUsize,
    total: usize,
    make: fn(usize) -> Item,
    pub acked: AtomicU64,
}

impl Generated {
    pub fn new(total: usize, make: fn(usize) -> Item) -> Self {
        Generated {
            next: AtomicUsize::new(0),
            total,
            make,
            acked: AtomicU64::new(0),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed) as usize
    }
}

impl Source for Generated {
    fn describe(&self) -> String {
        "generated".into()
    }
    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let start = self.next.fetch_add(max, Ordering::Relaxed).min(self.total);
        let end = (start + max).min(self.total);
        if start >= end {
            return Ok(Pull::Exhausted);
        }
        Ok(Pull::Items((start..end).map(self.make).collect()))
    }
    fn give_back(&self, _: Vec<Item>, _: ReturnReason) -> Result<(), SourceError> {
        Ok(())
    }
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        self.acked.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
