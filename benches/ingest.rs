//! The local ingest under load (issue 10): the real daemon (`target/release/lote`,
//! build it first) with an inbox (`synchronous: full`), the noop handler
//! draining it at the same time and the SQLite sink in the same file,
//! driven by an in-repo closed-loop HTTP/1.1 client over loopback TCP and
//! the Unix socket, and by `hey` when it is installed.
//!
//! Cases, each beside its target:
//! - the raw group-commit ceiling: the same inserts through the library's
//!   `Intake`, 32 threads, no HTTP (what HTTP costs is the ratio);
//! - single-item POSTs from 32 keep-alive connections: ≥ 5000 items/s, p99
//!   of the 202 ≤ 25 ms (TCP and Unix socket);
//! - NDJSON batches of 100 from 32 connections: ≥ 50 000 items/s;
//! - a full inbox: p99 of the 503 ≤ 1 ms;
//! - resident memory with 256 connections open: ≤ 40 MB.
//!
//! Run: `cargo build --release && cargo bench --bench ingest`
//! (`LOTE_BENCH_ITEMS` overrides the 20 000 single-item POSTs; the batch
//! case sends 10× as many items).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lote::source::{InboxConfig, Intake};
use lote::JsonItem;

mod common;
use common::daemon::{free_port, Daemon, Stream, Target};

const CONNECTIONS: usize = 32;
const BATCH: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn start_daemon(listen: &str, source_extra: &str, handler: &str) -> Daemon {
    Daemon::start(&format!(
        "log: error\nsession:\n  threads: 2\n  chunk: 100\n\
         source:\n  kind: inbox\n  synchronous: full\n{source_extra}\
         handler:\n{handler}\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  batch: 1000\n\
         http:\n  listen: \"{listen}\"\n  max_connections: 512\n"
    ))
}

const NOOP: &str = "  kind: noop\n";

/// `requests` requests from `CONNECTIONS` closed-loop clients; the
/// latencies (sorted), the codes seen, and the wall time.
fn load(target: &Target, requests: usize, content_type: &str, body: impl Fn(usize) -> Vec<u8> + Sync) -> Run {
    load_from(CONNECTIONS, target, requests, content_type, body)
}

fn load_from(
    connections: usize,
    target: &Target,
    requests: usize,
    content_type: &str,
    body: impl Fn(usize) -> Vec<u8> + Sync,
) -> Run {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, Vec<u16>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                let (next, body) = (&next, &body);
                scope.spawn(move || {
                    let mut stream = Stream::connect(target);
                    let (mut times, mut codes) = (Vec::new(), Vec::new());
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= requests {
                            break;
                        }
                        let body = body(n);
                        let sent = Instant::now();
                        let code = stream.request("POST", "/items", content_type, &body);
                        times.push(sent.elapsed());
                        codes.push(code);
                    }
                    (times, codes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let mut times: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    times.sort();
    let codes = results.into_iter().flat_map(|r| r.1).collect();
    Run { times, codes, elapsed }
}

struct Run {
    times: Vec<Duration>,
    codes: Vec<u16>,
    elapsed: Duration,
}

impl Run {
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.times.len() as f64 * q).ceil() as usize).clamp(1, self.times.len()) - 1;
        self.times[i]
    }
    fn count(&self, code: u16) -> usize {
        self.codes.iter().filter(|&&c| c == code).count()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn single(n: usize) -> Vec<u8> {
    format!("{{\"id\":\"s{n}\",\"payload\":\"reading {n}\"}}").into_bytes()
}

fn batch(prefix: &'static str) -> impl Fn(usize) -> Vec<u8> + Sync {
    move |n| {
        let mut body = String::with_capacity(BATCH * 40);
        for i in 0..BATCH {
            body.push_str(&format!("{{\"id\":\"{prefix}{n}-{i}\",\"payload\":\"reading {i}\"}}\n"));
        }
        body.into_bytes()
    }
}

/// The group-commit ceiling: the same rows through the library, no HTTP.
fn ceiling(rows: usize, per_push: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = InboxConfig {
        capacity: 100_000_000,
        ..InboxConfig::new(dir.path().join("inbox.db"))
    };
    let intake = Intake::open(config, None).unwrap();
    let pushes = rows / per_push;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= pushes {
                    break;
                }
                let items = (0..per_push)
                    .map(|i| JsonItem {
                        id: Some(format!("{n}-{i}")),
                        priority: None,
                        payload: b"reading".to_vec(),
                    })
                    .collect();
                intake.push(items).unwrap();
            });
        }
    });
    rows as f64 / started.elapsed().as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn main() {
    let requests = env_number("LOTE_BENCH_ITEMS", 20_000);
    let batches = requests / 10;
    println!(
        "ingest bench: inbox synchronous=full, noop handler draining, {CONNECTIONS} closed-loop connections, 2 cores"
    );

    let raw_single = ceiling(requests, 1);
    let raw_batch = ceiling(batches * BATCH, BATCH);
    println!("raw group commit (Intake, no HTTP):   1 item/push {raw_single:>9.0} rows/s   {BATCH} items/push {raw_batch:>9.0} rows/s");

    let port = free_port();
    let daemon = start_daemon(&format!("127.0.0.1:{port}"), "  capacity: 100000000\n", NOOP);
    let tcp = Target::Tcp(format!("127.0.0.1:{port}"));
    let run = load(&tcp, requests, "application/json", single);
    let rate = run.count(202) as f64 / run.elapsed.as_secs_f64();
    println!(
        "TCP, single-item POSTs:   {:>7} x 202  {rate:>9.0} items/s  p50 {}  p99 {}  ({:.2}x the raw ceiling)",
        run.count(202),
        ms(run.quantile(0.5)),
        ms(run.quantile(0.99)),
        rate / raw_single
    );
    println!(
        "  target >= 5000 items/s: {}; p99 <= 25 ms: {}",
        verdict(rate >= 5000.0),
        verdict(run.quantile(0.99) <= Duration::from_millis(25))
    );
    let run = load(&tcp, batches, "application/x-ndjson", batch("b"));
    let rate = (run.count(202) * BATCH) as f64 / run.elapsed.as_secs_f64();
    println!(
        "TCP, NDJSON batches of {BATCH}: {:>5} x 202  {rate:>9.0} items/s  p50 {}  p99 {}  ({:.2}x the raw ceiling)",
        run.count(202),
        ms(run.quantile(0.5)),
        ms(run.quantile(0.99)),
        rate / raw_batch
    );
    println!("  target >= 50000 items/s: {}", verdict(rate >= 50_000.0));

    // 256 connections open at once, each having sent one request.
    let streams: Vec<Stream> = (0..256)
        .map(|n| {
            let mut s = Stream::connect(&tcp);
            s.request("POST", "/items", "application/json", &single(10_000_000 + n));
            s
        })
        .collect();
    let rss = daemon.rss_kib();
    println!(
        "RSS with 256 connections open: {:.1} MB  target <= 40 MB: {}",
        rss as f64 / 1024.0,
        verdict(rss <= 40 * 1024)
    );
    drop(streams);

    if Command::new("hey").arg("-h").output().is_ok() {
        let out = Command::new("hey")
            .args([
                "-n",
                &requests.to_string(),
                "-c",
                "32",
                "-m",
                "POST",
                "-T",
                "application/json",
            ])
            .args(["-d", "{\"payload\":\"reading\"}"])
            .arg(format!("http://127.0.0.1:{port}/items"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("hey -n {requests} -c 32 (single-item POSTs, ids made by lote):");
        for line in text.lines().filter(|l| {
            l.contains("Requests/sec")
                || l.contains("99%")
                || l.contains("50%")
                || l.contains("[202]")
                || l.contains("[503]")
        }) {
            println!("  {}", line.trim());
        }
    } else {
        println!("hey: not installed (apt-get install hey), its cross-check skipped");
    }
    drop(daemon);

    let socket = tempfile::tempdir().unwrap();
    let path = socket.path().join("ingest.sock");
    let daemon = start_daemon(&format!("unix:{}", path.display()), "  capacity: 100000000\n", NOOP);
    let run = load(&Target::Unix(path), requests, "application/json", single);
    let rate = run.count(202) as f64 / run.elapsed.as_secs_f64();
    println!(
        "Unix socket, single-item: {:>7} x 202  {rate:>9.0} items/s  p50 {}  p99 {}",
        run.count(202),
        ms(run.quantile(0.5)),
        ms(run.quantile(0.99))
    );
    drop(daemon);

    // A full inbox: 100 items, a handler that holds the first for a minute.
    let port = free_port();
    let daemon = start_daemon(
        &format!("127.0.0.1:{port}"),
        "  capacity: 100\n",
        "  kind: exec\n  command: [\"/bin/sleep\", \"60\"]\n",
    );
    let tcp = Target::Tcp(format!("127.0.0.1:{port}"));
    let fill = load(&tcp, 100, "application/json", |n| single(20_000_000 + n));
    assert_eq!(fill.count(202), 100, "the inbox takes its capacity");
    // One client: the time to answer; 32: the same with 32 clients and
    // the server sharing 2 cores (mostly waiting for a core).
    for connections in [1, CONNECTIONS] {
        let run = load_from(connections, &tcp, requests / 4, "application/json", |n| {
            single(30_000_000 + n)
        });
        println!(
            "full inbox, {connections:>2} connection(s): {:>6} x 503  {:>7.0}/s  p50 {}  p99 {}  target p99 <= 1 ms: {}",
            run.count(503),
            run.codes.len() as f64 / run.elapsed.as_secs_f64(),
            ms(run.quantile(0.5)),
            ms(run.quantile(0.99)),
            verdict(run.quantile(0.99) <= Duration::from_millis(1))
        );
    }
    drop(daemon);
}
