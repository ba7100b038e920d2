//! Batch calls over a slow uplink (SPEC §3.12), in one run:
//!
//! - an upstream on 127.0.0.1 that takes 50 ms per request (an HTTP server in
//!   this file, tiny_http, 16 threads): lote's http handler one item per
//!   call against batches of 500, 4 workers each — target ≥ 50× (≥ 20 000
//!   items/s);
//! - the same upstream answering at once, batches of 500: the per-item cost
//!   end to end, from the source through the handler and the write-behind
//!   thread into the SQLite sink — target ≥ 100 000 items/s.
//!
//! Items are 40-byte readings made on the fly; every outcome is durable and
//! acknowledged before the clock stops.
//!
//! Run: `cargo bench --bench batch` (`LOTE_BENCH_ITEMS` overrides the
//! 200 000 items of the batched runs; the one-per-call run is 400 items).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lote::handler::http::{HttpConfig, HttpHandler};
use lote::session::BatchConfig;
use lote::sink::{Role, SqliteConfig, SqliteSink};
use lote::{Item, QueueConfig, Session, SessionConfig};

mod common;

use common::Generated;

const DEFAULT_ITEMS: usize = 200_000;
const ONE_PER_CALL_ITEMS: usize = 400;
const THREADS: usize = 4;
const LATENCY: Duration = Duration::from_millis(50);

/// An upstream on 127.0.0.1 that answers every request with an empty 200
/// after `latency`, on 16 threads; counts the requests.
struct Upstream {
    url: String,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Upstream {
    fn start(latency: Duration) -> Upstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/items", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..16)
            .map(|_| {
                let (server, requests, stop) = (Arc::clone(&server), Arc::clone(&requests), Arc::clone(&stop));
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                            continue;
                        };
                        let mut body = Vec::new();
                        let _ = request.as_reader().read_to_end(&mut body);
                        if !latency.is_zero() {
                            thread::sleep(latency);
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                        let _ = request.respond(tiny_http::Response::empty(200));
                    }
                })
            })
            .collect();
        Upstream {
            url,
            requests,
            stop,
            threads,
        }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Items/s and calls made for `items` readings through the http handler
/// (batched with `batch`) into a SQLite sink.
fn run(upstream: &Upstream, items: usize, batch: Option<BatchConfig>) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(Generated::new(items, |i| {
        Item::new(
            format!("r-{i}"),
            format!("{{\"sensor\":\"t-{}\",\"celsius\":21.5}}", i % 64),
        )
    }));
    let calls_before = upstream.requests.load(Ordering::Relaxed);
    let started = Instant::now();
    let sink = SqliteSink::open(SqliteConfig::new(dir.path().join("outcomes.db"), Role::Outcomes)).unwrap();
    let writer = Arc::new(common::writer(Box::new(sink), source.clone()));
    let config = SessionConfig {
        threads: THREADS,
        chunk: 500,
        queue: QueueConfig::new(8192),
        pull_batch: 1024,
        batch,
        ..SessionConfig::default()
    };
    let handler = Arc::new(HttpHandler::new(HttpConfig::new(&upstream.url)).unwrap());
    let summary = Session::new(config, source.clone(), handler, writer.clone())
        .run()
        .unwrap();
    let report = writer.close();
    let elapsed = started.elapsed();
    assert_eq!(summary.counts.done as usize, items, "{summary:?}");
    assert_eq!(report.unwritten, 0);
    assert_eq!(
        source.acked.load(Ordering::Relaxed) as usize,
        items,
        "every outcome durable and acked"
    );
    let calls = upstream.requests.load(Ordering::Relaxed) - calls_before;
    (items as f64 / elapsed.as_secs_f64(), calls)
}

fn main() {
    let items = std::env::var("LOTE_BENCH_ITEMS")
        .ok()
        .map(|v| v.trim().parse::<usize>().expect("LOTE_BENCH_ITEMS must be a number"))
        .unwrap_or(DEFAULT_ITEMS);
    let batch = BatchConfig {
        max_items: 500,
        max_bytes: 1024 * 1024,
        max_wait: Duration::from_millis(200),
    };
    println!(
        "batch bench: http handler, {THREADS} workers, SQLite sink; upstream on 127.0.0.1 \
         ({}ms per request, then 0ms)",
        LATENCY.as_millis()
    );

    let slow = Upstream::start(LATENCY);
    let (one_rate, one_calls) = run(&slow, ONE_PER_CALL_ITEMS, None);
    let (batch_rate, batch_calls) = run(&slow, items, Some(batch.clone()));
    slow.finish();
    let fast = Upstream::start(Duration::ZERO);
    let (fast_rate, fast_calls) = run(&fast, items, Some(batch));
    fast.finish();

    println!();
    println!("{:<34} {:>10} {:>8} {:>14}", "run", "items", "calls", "items/s");
    println!(
        "{:<34} {ONE_PER_CALL_ITEMS:>10} {one_calls:>8} {one_rate:>14.0}",
        "50ms upstream, one item per call"
    );
    println!(
        "{:<34} {items:>10} {batch_calls:>8} {batch_rate:>14.0}",
        "50ms upstream, batches of 500"
    );
    println!(
        "{:<34} {items:>10} {fast_calls:>8} {fast_rate:>14.0}",
        "0ms upstream, batches of 500"
    );
    println!();
    println!(
        "batch bench: batches of 500 over a 50ms link = {:.0}× one per call ({batch_rate:.0} items/s; target ≥ 50×, ≥ 20000 items/s)",
        batch_rate / one_rate
    );
    println!("batch bench: 0ms upstream, batches of 500, into SQLite = {fast_rate:.0} items/s (target ≥ 100000)");
}
