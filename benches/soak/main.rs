//! Seed 002's stress scenarios (issue 13), each printing its figures:
//!
//! 1. **Sustained load through the daemon.** The real `target/release/lote`
//!    (build it first) with an inbox, the noop handler and the SQLite sink
//!    in the same file; a paced generator posts single items at
//!    `LOTE_SOAK_RATE` (10 000) items/s for `LOTE_SOAK_SECS` (60) s over 64
//!    keep-alive connections, priorities 1, 2 and 5 in turn. Run once per
//!    inbox `synchronous` mode in `LOTE_SOAK_SYNC` (default `normal,full`). Item `n` is
//!    due at `t0 + n / rate`; its latency is from that due time (not from
//!    when the generator got to it, so a stall in the generator is counted,
//!    not hidden) to the `finished_at` its outcome has in the sink (ms
//!    precision). Then SIGTERM: the daemon must end within seconds, and
//!    every accepted item must have an outcome. Target: p99 < 100 ms.
//! 2. **One item fanned out to 120 elements**, `max_parallel: 8` (the
//!    library's `FanOut` in a `Session`), 200 such items: the process's
//!    threads and resident memory, sampled every 2 ms, stay flat.
//! 3. **One call in ten takes 5 s against a 1 s timeout**: a cooperative
//!    closure (it checks `ctx.should_stop()`) and a non-cooperative one
//!    under `WalkAway`; items arrive paced; the slow calls' cut times and
//!    the other items' latency beside the same run without slow calls.
//! 4. **A failure burst.** A real HTTP downstream on 127.0.0.1 answers 503
//!    for 2 s; the handler calls it through a `Breaker` with a `Fallback`
//!    around both: the breaker opens, the fallback answers, the breaker
//!    closes again once the downstream is back.
//!
//! Run: `cargo build --release && cargo bench --bench soak`
//! (`LOTE_SOAK_SECS=5` for a short run; `LOTE_SOAK_ONLY=2,3` picks scenarios).

use std::fs;
use std::time::{Duration, Instant};

#[path = "../common/mod.rs"]
mod common;
mod failure_burst;
mod fan_out;
mod paced;
mod sustained;
mod timeouts;

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Sorted durations and their quantiles.
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn new(mut times: Vec<Duration>) -> Self {
        times.sort();
        Latencies(times)
    }
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
    pub fn summary(&self) -> String {
        format!(
            "n {:>7}  p50 {:>9}  p99 {:>9}  max {:>9}",
            self.0.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.max())
        )
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn main() {
    let secs = env_number("LOTE_SOAK_SECS", 60);
    let rate = env_number("LOTE_SOAK_RATE", 10_000);
    let only = std::env::var("LOTE_SOAK_ONLY").unwrap_or_else(|_| "1,2,3,4".into());
    let wanted = |n: &str| only.split(',').any(|s| s.trim() == n);
    println!(
        "soak bench (seed 002's stress scenarios), 2 cores, load average at start {}",
        load()
    );
    println!();
    let started = Instant::now();
    if wanted("1") {
        let modes = std::env::var("LOTE_SOAK_SYNC").unwrap_or_else(|_| "normal,full".into());
        for synchronous in modes.split(',') {
            sustained::run(secs, rate, synchronous.trim());
        }
    }
    if wanted("2") {
        fan_out::run(200);
    }
    if wanted("3") {
        timeouts::run(300, 50);
    }
    if wanted("4") {
        failure_burst::run();
    }
    println!(
        "soak: {:.1} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        load()
    );
}
