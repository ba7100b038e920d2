//! Scenario 1: sustained, paced load through the real daemon.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::common::daemon::{free_port, Daemon, Stream, Target};
use crate::{ms, verdict, Latencies};

const CONNECTIONS: usize = 64;
const PRIORITIES: [i32; 3] = [1, 2, 5];

pub fn run(secs: usize, rate: usize, synchronous: &str) {
    let total = secs * rate;
    println!(
        "== 1. sustained {rate} items/s for {secs} s through the daemon (inbox synchronous: {synchronous}, noop, sqlite sink), paced, {CONNECTIONS} connections =="
    );
    let port = free_port();
    let mut daemon = Daemon::start(&format!(
        "log: error\nsession:\n  threads: 4\n  chunk: 100\n\
         source:\n  kind: inbox\n  capacity: 100000000\n  synchronous: {synchronous}\n\
         handler:\n  kind: noop\n\
         sink:\n  kind: sqlite\n  path: outcomes.db\n  batch: 1000\n\
         http:\n  listen: \"127.0.0.1:{port}\"\n  max_connections: 256\n"
    ));
    let pid = daemon.child.id();
    let target = Target::Tcp(format!("127.0.0.1:{port}"));
    let period = Duration::from_secs_f64(1.0 / rate as f64);

    // The daemon's threads and memory, every 200 ms, while the load runs.
    let sampling = AtomicBool::new(true);
    let (peak_threads, peak_rss) = (AtomicUsize::new(0), AtomicUsize::new(0));

    let start_delay = Duration::from_millis(100);
    let (daemon_cpu0, own_cpu0) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
    let t0 = Instant::now() + start_delay;
    let sys0 = SystemTime::now() + start_delay;
    let (codes, lag) = thread::scope(|scope| {
        scope.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
                    let field = |name: &str| -> usize {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                            .unwrap_or(0)
                    };
                    peak_threads.fetch_max(field("Threads:"), Ordering::Relaxed);
                    peak_rss.fetch_max(field("VmRSS:"), Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let target = &target;
                scope.spawn(move || {
                    let mut stream = Stream::connect(target);
                    let mut codes = BTreeMap::<u16, usize>::new();
                    let mut lag = Duration::ZERO;
                    for n in (c..total).step_by(CONNECTIONS) {
                        let due = t0 + period * n as u32;
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        } else {
                            lag = lag.max(now - due);
                        }
                        let body = format!(
                            "{{\"id\":\"s{n}\",\"priority\":{},\"payload\":\"reading {n}\"}}",
                            PRIORITIES[n % PRIORITIES.len()]
                        );
                        *codes
                            .entry(stream.request("POST", "/items", "application/json", body.as_bytes()))
                            .or_default() += 1;
                    }
                    (codes, lag)
                })
            })
            .collect();
        let mut codes = BTreeMap::<u16, usize>::new();
        let mut lag = Duration::ZERO;
        for sender in senders {
            let (c, l) = sender.join().unwrap();
            for (code, count) in c {
                *codes.entry(code).or_default() += count;
            }
            lag = lag.max(l);
        }
        sampling.store(false, Ordering::Relaxed);
        (codes, lag)
    });
    let posting = t0.elapsed();
    let accepted = codes.get(&202).copied().unwrap_or(0);

    // Every accepted item's outcome in the sink, then SIGTERM.
    let db = daemon.state().join("outcomes.db");
    let count = || -> usize {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM outcomes", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as usize)
            .unwrap_or(0)
    };
    let waiting = Instant::now();
    while count() < accepted && waiting.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(100));
    }
    let daemon_cpu = cpu_seconds(&pid.to_string()) - daemon_cpu0;
    let own_cpu = cpu_seconds("self") - own_cpu0;
    let stopped = daemon.terminate(Duration::from_secs(10));
    let exit = daemon.child.try_wait().ok().flatten();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut select = conn.prepare("SELECT id, status, finished_at FROM outcomes").unwrap();
    let rows: Vec<(String, String, String)> = select
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut all = Vec::with_capacity(rows.len());
    let mut by_priority: BTreeMap<i32, Vec<Duration>> = BTreeMap::new();
    let windows = 6;
    let mut by_window: Vec<Vec<Duration>> = vec![Vec::new(); windows];
    let mut not_done = 0;
    let mut last_finished = sys0;
    let mut per_second = vec![0usize; secs + 1];
    for (id, status, finished) in &rows {
        let n: usize = id[1..].parse().unwrap();
        let finished = humantime::parse_rfc3339(finished).unwrap();
        last_finished = last_finished.max(finished);
        let second = finished.duration_since(sys0).unwrap_or_default().as_secs() as usize;
        if second >= per_second.len() {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
        let due = sys0 + period * n as u32;
        let latency = finished.duration_since(due).unwrap_or(Duration::ZERO);
        if status != "done" {
            not_done += 1;
        }
        all.push(latency);
        by_priority
            .entry(PRIORITIES[n % PRIORITIES.len()])
            .or_default()
            .push(latency);
        by_window[n * windows / total].push(latency);
    }
    let all = Latencies::new(all);
    let posts: usize = codes.values().sum();
    println!(
        "posted {posts} in {:.2} s: {:.0} requests/s (answers {codes:?}); the generator's worst lag behind its schedule {}",
        posting.as_secs_f64(),
        posts as f64 / posting.as_secs_f64(),
        ms(lag)
    );
    println!(
        "outcomes in the sink: {} of {accepted} accepted ({} not done); processed {:.0} items/s (due of the first → finished of the last)",
        rows.len(),
        not_done,
        rows.len() as f64 / last_finished.duration_since(sys0).unwrap_or(posting).as_secs_f64()
    );
    println!("finished per second since t0: {per_second:?}");
    println!("end to end (due → finished_at):   {}", all.summary());
    for (priority, times) in by_priority {
        println!(
            "  priority {priority}:                     {}",
            Latencies::new(times).summary()
        );
    }
    for (w, times) in by_window.into_iter().enumerate() {
        let from = secs as f64 * w as f64 / windows as f64;
        let to = secs as f64 * (w + 1) as f64 / windows as f64;
        println!(
            "  due {from:>5.1}–{to:<5.1} s:              {}",
            Latencies::new(times).summary()
        );
    }
    println!(
        "CPU time: the daemon {daemon_cpu:.1} s = {:.0} µs per item (one core's worth: {:.0} items/s); this load generator {own_cpu:.1} s = {:.0} µs per item",
        daemon_cpu * 1e6 / accepted.max(1) as f64,
        accepted as f64 / daemon_cpu.max(0.01),
        own_cpu * 1e6 / accepted.max(1) as f64
    );
    println!(
        "daemon: peak {} threads, peak RSS {:.1} MB; SIGTERM → exit in {} ({:?})",
        peak_threads.load(Ordering::Relaxed),
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0,
        stopped.map_or("MORE THAN 10 s".to_string(), ms),
        exit
    );
    println!(
        "target p99 < 100 ms: {}; every accepted item has an outcome: {}; stopped within 10 s: {}",
        verdict(all.quantile(0.99) < Duration::from_millis(100)),
        verdict(rows.len() == accepted && not_done == 0),
        verdict(stopped.is_some())
    );
    println!();
    // What is not a matter of speed fails the run (CI): a lost item, a hang.
    assert!(
        rows.len() == accepted && not_done == 0,
        "every accepted item has a done outcome"
    );
    assert!(stopped.is_some(), "the daemon ends within 10 s of SIGTERM");
}

/// User + system CPU time of a process so far (`self` or a pid), from
/// /proc/<pid>/stat, in seconds (clock ticks of 10 ms).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 here.
    (ticks(11) + ticks(12)) as f64 / 100.0
}
