//! A fleet on Redis Streams (issue 12): 3 lote instances × 2 threads, noop
//! handler, SQLite sink each, sharing one stream on a redis-server started
//! here on loopback, against a raw client loop in the same run: 3 threads,
//! each `XREADGROUP COUNT 64 >` then `XACK` of what it read, no work at
//! all. Target: ≥ 3 000 items/s aggregate on 2 cores, ≥ 0.5× the raw loop.
//!
//! Both runs start with the entries already in the stream and end when the
//! group has read every entry and has none pending (all acked): lote's
//! figure includes making every outcome durable before its XACK. The
//! instances run with `sink.flush_every: 100ms`, as the README advises for
//! a fleet (an entry is acked at most that long after its outcome; the
//! default 1s would add up to a second to the last partial batch).
//!
//! Run: `cargo build --release && cargo bench --bench redis`
//! (`LOTE_BENCH_ITEMS` overrides the 30 000 entries). Needs redis-server.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

const INSTANCES: usize = 3;

/// The processes this bench started, killed when it ends (a panic too).
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        // Newest first: the instances before their server.
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() {
    let n: usize = std::env::var("LOTE_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let lote = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/lote");
    assert!(lote.exists(), "{}: run `cargo build --release` first", lote.display());
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    let mut reaper = Reaper(vec![server]);
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).unwrap();
    let started = Instant::now();
    let mut conn = loop {
        match client.get_connection() {
            Ok(conn) => break conn,
            Err(_) if started.elapsed() < Duration::from_secs(10) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("redis-server did not come up: {e}"),
        }
    };

    // The raw loop.
    publish(&mut conn, "bench:raw", n);
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("bench:raw")
        .arg("g")
        .arg("0")
        .exec(&mut conn)
        .unwrap();
    let t = Instant::now();
    let readers: Vec<_> = (0..INSTANCES)
        .map(|k| {
            let client = client.clone();
            thread::spawn(move || raw_loop(client, k))
        })
        .collect();
    let read: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let raw = t.elapsed();
    assert_eq!(read, n);
    let raw_rate = n as f64 / raw.as_secs_f64();

    // The fleet: started first (group created), then the entries, timed
    // from the publish to the last XACK.
    let fleet: Vec<Child> = (0..INSTANCES)
        .map(|k| {
            let home = dir.path().join(format!("box-{k}"));
            std::fs::create_dir_all(&home).unwrap();
            let config = format!(
                "state_dir: {}\nlog: warn\nsource:\n  kind: redis_stream\n  url: {url}\n  consumer: box-{k}\n  \
                 claim_after: 60s\nhandler:\n  kind: noop\n  timeout: 5s\nsession:\n  threads: 2\n\
                 sink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 100ms\n",
                home.join("state").display()
            );
            std::fs::write(home.join("config.yaml"), config).unwrap();
            Command::new(&lote)
                .args(["run", "-c", "config.yaml"])
                .current_dir(&home)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    reaper.0.extend(fleet);
    let t = Instant::now();
    while group_state(&mut conn, "lote:work").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the instances did not create the group"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    publish(&mut conn, "lote:work", n);
    loop {
        if let Some((read, pending)) = group_state(&mut conn, "lote:work") {
            if read >= n as i64 && pending == 0 {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(300), "the fleet did not finish");
        thread::sleep(Duration::from_millis(5));
    }
    let fleet_time = t.elapsed();
    let fleet_rate = n as f64 / fleet_time.as_secs_f64();
    drop(reaper);

    println!("redis fleet, {n} entries, {INSTANCES} readers, loopback:");
    println!(
        "  raw XREADGROUP/XACK loop: {:>8.0} items/s ({:.2}s)",
        raw_rate,
        raw.as_secs_f64()
    );
    println!(
        "  lote {INSTANCES} x 2 threads noop: {:>8.0} items/s ({:.2}s)  target >= 3000 items/s",
        fleet_rate,
        fleet_time.as_secs_f64()
    );
    println!(
        "  ratio lote / raw:           {:>8.2}  target >= 0.5",
        fleet_rate / raw_rate
    );
}

fn publish(conn: &mut redis::Connection, stream: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("id")
                .arg(format!("job-{i}"))
                .arg("payload")
                .arg("x")
                .ignore();
        }
        pipe.exec(conn).unwrap();
    }
}

/// One raw consumer: read 64, ack them, until a read finds nothing.
fn raw_loop(client: redis::Client, k: usize) -> usize {
    let mut conn = client.get_connection().unwrap();
    let mut total = 0;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg(format!("raw-{k}"))
            .arg("COUNT")
            .arg(64)
            .arg("STREAMS")
            .arg("bench:raw")
            .arg(">")
            .query(&mut conn)
            .unwrap();
        let ids = entry_ids(reply);
        if ids.is_empty() {
            return total;
        }
        total += ids.len();
        redis::cmd("XACK")
            .arg("bench:raw")
            .arg("g")
            .arg(&ids)
            .exec(&mut conn)
            .unwrap();
    }
}

fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else { continue };
        let Value::Array(entries) = pair.remove(1) else {
            continue;
        };
        for entry in entries {
            if let Value::Array(mut parts) = entry {
                if let Value::BulkString(id) = parts.remove(0) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// (entries read, pending) of the group `lote`, once it exists.
fn group_state(conn: &mut redis::Connection, stream: &str) -> Option<(i64, i64)> {
    let reply: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(conn).ok()?;
    let Value::Array(groups) = reply else { return None };
    let Some(Value::Array(fields)) = groups.into_iter().next() else {
        return None;
    };
    let mut read = None;
    let mut pending = None;
    for kv in fields.chunks(2) {
        match (&kv[0], kv.get(1)) {
            (Value::BulkString(k), Some(Value::Int(v))) if k == b"entries-read" => read = Some(*v),
            // Nil until the group has read an entry.
            (Value::BulkString(k), Some(Value::Nil)) if k == b"entries-read" => read = Some(0),
            (Value::BulkString(k), Some(Value::Int(v))) if k == b"pending" => pending = Some(*v),
            _ => {}
        }
    }
    Some((read?, pending?))
}
