//! The redis_stream sink (SPEC §3.14) through the real binary, against a
//! real redis-server each test starts on a free loopback port: the outcomes
//! of a run arrive in the stream with the record's fields; `MAXLEN ~` trims
//! it; with redis-server down nothing is acknowledged (the spool's files stay
//! where they are) and once it is back everything is written and
//! acknowledged; the password comes from `password_file`; dead letters in
//! a stream are listed and requeued; a fleet
//! reads one stream and writes its outcomes to another; `lote check` refuses
//! what this sink cannot do.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
#[path = "common/fleet.rs"]
mod fleet;
use common::{text, Setup};
use fleet::{wait_for, work, Instance, RedisServer};

/// The regular files directly in `dir`, by name.
fn files_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A config: `state/spool` → `handler` → the redis_stream sink `sink_extra`
/// on `lote:outcomes`.
fn spool_config(setup: &Setup, redis: &RedisServer, handler: &str, sink_extra: &str) {
    fs::create_dir_all(setup.path("state/spool")).unwrap();
    setup.config(&format!(
        "session:\n  threads: 2\n  poll_every: 100ms\nsource:\n  kind: spool\n  path: spool\n  stable_for: 0s\n\
         {handler}sink:\n  kind: redis_stream\n  url: {}\n  stream: lote:outcomes\n  flush_every: 50ms\n{sink_extra}",
        redis.url()
    ));
}

fn drop_items(setup: &Setup, items: &[(&str, &[u8])]) {
    for (name, payload) in items {
        let spool = setup.path("state/spool");
        fs::write(spool.join(format!(".{name}.tmp")), payload).unwrap();
        fs::rename(spool.join(format!(".{name}.tmp")), spool.join(name)).unwrap();
    }
}

/// The entries of `stream` by their `id` field (the last one wins).
fn by_id(redis: &RedisServer, stream: &str) -> HashMap<String, HashMap<String, String>> {
    redis
        .entries(stream)
        .into_iter()
        .map(|e| (e.get("id").cloned().unwrap_or_default(), e))
        .collect()
}

fn xlen(redis: &RedisServer, stream: &str) -> usize {
    redis::cmd("XLEN").arg(stream).query(&mut redis.conn()).unwrap()
}

const NOOP: &str = "handler:\n  kind: noop\n";

/// Upper-cases the payload; a payload starting `bad` fails for good.
const SHOUT: &str = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \
                     \"read -r l; case \\\"$l\\\" in bad*) echo \\\"no: $l\\\" >&2; exit 65;; *) echo \\\"$l\\\" | tr a-z A-Z;; esac\"]\n  \
                     fatal_exit_codes: [65]\n  retry: {attempts: 1}\n";

#[test]
fn the_outcomes_of_a_run_arrive_in_the_stream_with_the_records_fields() {
    let redis = RedisServer::start();
    let setup = Setup::new();
    spool_config(&setup, &redis, SHOUT, "");
    drop_items(&setup, &[("a", b"hello\n"), ("b", b"world\n"), ("c", b"bad input\n")]);

    // 3: an item failed for good (SPEC exit codes), the rest is done.
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let entries = by_id(&redis, "lote:outcomes");
    assert_eq!(entries.len(), 3, "{entries:?}");
    let keys = |id: &str| -> HashSet<&str> { entries[id].keys().map(String::as_str).collect() };
    let always = ["id", "status", "attempts", "started_at", "finished_at", "duration_ms"];
    for id in ["a", "b", "c"] {
        let e = &entries[id];
        assert!(always.iter().all(|k| keys(id).contains(k)), "{id}: {e:?}");
        // Outcomes keep no payload (dead letters do).
        assert!(!keys(id).contains("payload") && !keys(id).contains("priority"), "{e:?}");
        assert_eq!(e["attempts"], "1");
        for at in ["started_at", "finished_at"] {
            assert!(e[at].ends_with('Z') && e[at].len() == 24, "{at}: {e:?}");
        }
        assert!(e["duration_ms"].parse::<u64>().is_ok(), "{e:?}");
    }
    assert_eq!(
        (entries["a"]["status"].as_str(), entries["a"]["output"].trim()),
        ("done", "HELLO")
    );
    assert_eq!(entries["b"]["output"].trim(), "WORLD");
    assert_eq!(entries["c"]["status"], "failed");
    assert!(entries["c"]["error"].contains("65"), "{:?}", entries["c"]);

    // Written, then acknowledged: the spool's files moved on.
    assert_eq!(files_in(&setup.path("state/spool/done")), ["a", "b"]);
    assert_eq!(files_in(&setup.path("state/spool/failed")), ["c"]);
    assert!(files_in(&setup.path("state/spool")).is_empty());
}

#[test]
fn max_len_trims_the_stream_to_about_it() {
    let redis = RedisServer::start();
    let setup = Setup::new();
    spool_config(&setup, &redis, NOOP, "  max_len: 100\n  batch: 50\n");
    let names: Vec<String> = (0..1500).map(|i| format!("item{i:05}")).collect();
    let items: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    drop_items(&setup, &items);

    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files_in(&setup.path("state/spool/done")).len(), 1500);
    // `~` trims whole nodes (100 entries each by default): about max_len,
    // never below it, far from the 1500 written.
    let len = xlen(&redis, "lote:outcomes");
    assert!(
        (100..=250).contains(&len),
        "XLEN {len} after 1500 outcomes with max_len 100"
    );
}

#[test]
fn with_redis_down_a_run_acknowledges_nothing_and_the_next_one_writes_it_all() {
    let mut redis = RedisServer::start();
    let setup = Setup::new();
    spool_config(&setup, &redis, NOOP, "  max_retries: 1\n");
    drop_items(&setup, &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    redis.kill();

    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not saved"), "{}", text(&out));
    assert!(files_in(&setup.path("state/spool/done")).is_empty(), "{}", text(&out));
    assert_eq!(files_in(&setup.path("state/spool")), ["a", "b", "c"], "{}", text(&out));

    redis.spawn();
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files_in(&setup.path("state/spool/done")), ["a", "b", "c"]);
    let ids: HashSet<String> = by_id(&redis, "lote:outcomes").into_keys().collect();
    assert_eq!(ids, HashSet::from(["a".into(), "b".into(), "c".into()]));
}

#[test]
fn the_password_comes_from_password_file() {
    let redis = RedisServer::start_with_password("s3cret-pw");
    let setup = Setup::new();
    spool_config(&setup, &redis, NOOP, "  password_file: redis.pw\n  max_retries: 0\n");
    drop_items(&setup, &[("a", b"1")]);

    fs::write(setup.path("state/redis.pw"), "wrong\n").unwrap();
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files_in(&setup.path("state/spool")), ["a"], "{}", text(&out));
    assert!(
        !text(&out).contains("wrong") && !text(&out).contains("s3cret"),
        "{}",
        text(&out)
    );

    fs::write(setup.path("state/redis.pw"), "s3cret-pw\n").unwrap();
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(by_id(&redis, "lote:outcomes")["a"]["status"], "done");
}

/// A `lote run` daemon, SIGKILLed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_daemon_holds_its_outcomes_while_redis_is_down_and_writes_them_once_it_is_back() {
    let mut redis = RedisServer::start();
    let setup = Setup::new();
    spool_config(&setup, &redis, NOOP, "  max_retries: 1\n");
    redis.kill();
    let log = setup.path("lote.log");
    let _daemon = Daemon(
        setup
            .lote(&["run", "-c", "config.yaml"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || fs::read_to_string(&log).unwrap_or_default();
    let names: Vec<String> = (0..20).map(|i| format!("item{i:02}")).collect();
    let items: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    drop_items(&setup, &items);

    let started = Instant::now();
    while !log().contains("failed after 2 tries") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no flush failed\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_secs(1));
    assert!(
        files_in(&setup.path("state/spool/done")).is_empty(),
        "acknowledged with redis down\n{}",
        log()
    );

    redis.spawn();
    let started = Instant::now();
    while files_in(&setup.path("state/spool/done")).len() < names.len() {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not every item done 40 s after redis came back: done {:?}\n{}",
            files_in(&setup.path("state/spool/done")),
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let ids: HashSet<String> = by_id(&redis, "lote:outcomes").into_keys().collect();
    assert_eq!(ids, names.iter().cloned().collect::<HashSet<_>>(), "{}", log());
}

#[test]
fn dead_letters_in_a_stream_are_listed_and_requeued_with_their_payload() {
    let redis = RedisServer::start();
    let setup = Setup::new();
    let dead = format!(
        "dead_letter:\n  kind: redis_stream\n  url: {}\n  stream: lote:dead-letters\n",
        redis.url()
    );
    spool_config(&setup, &redis, SHOUT, &dead);
    drop_items(
        &setup,
        &[
            ("ok", b"fine\n"),
            ("bad1", b"bad one\n"),
            ("bad2", b"bad \xff\x00 bytes\n"),
        ],
    );
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let dead = by_id(&redis, "lote:dead-letters");
    assert_eq!(
        dead.keys().collect::<HashSet<_>>(),
        HashSet::from([&"bad1".into(), &"bad2".into()])
    );
    assert_eq!(dead["bad1"]["payload"], "bad one\n");
    assert!(dead["bad2"].contains_key("payload_base64"), "{:?}", dead["bad2"]);
    assert_eq!(dead["bad1"]["priority"].parse::<i32>().ok(), Some(100));

    let out = setup.run(&["dead-letter", "list", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("bad1") && listed.contains("bad2") && !listed.contains("ok\t"),
        "{listed}"
    );

    let out = setup.run(&["dead-letter", "requeue", "-c", "config.yaml", "--id", "bad2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        fs::read(setup.path("state/spool/bad2")).unwrap(),
        b"bad \xff\x00 bytes\n"
    );
    let left: Vec<String> = by_id(&redis, "lote:dead-letters").into_keys().collect();
    assert_eq!(left, ["bad1"]);
}

#[test]
fn a_fleet_reads_one_stream_and_writes_its_outcomes_to_another() {
    let redis = RedisServer::start();
    let work = work(600, "w");
    redis.publish("lote:work", &work);
    let sink = format!(
        "sink:\n  kind: redis_stream\n  url: {}\n  stream: lote:outcomes\n  flush_every: 50ms\n",
        redis.url()
    );
    let rest = "handler:\n  kind: noop\nsession:\n  threads: 2\nqueue:\n  capacity: 32\n";
    let mut fleet: Vec<Instance> = (0..2)
        .map(|k| Instance::with_sink(&redis, &format!("box-{k}"), "", &sink, rest))
        .collect();
    for instance in &mut fleet {
        instance.start();
    }
    let wanted: HashSet<String> = work.iter().map(|(id, _)| id.clone()).collect();
    let done = || -> HashSet<String> {
        by_id(&redis, "lote:outcomes")
            .into_iter()
            .filter(|(_, e)| e.get("status").is_some_and(|s| s == "done"))
            .map(|(id, _)| id)
            .collect()
    };
    let instances: Vec<&Instance> = fleet.iter().collect();
    wait_for(
        "every entry's outcome in lote:outcomes",
        Duration::from_secs(30),
        &instances,
        || done() == wanted,
    );
    // Written to the central stream, then acknowledged to the work stream.
    wait_for("nothing pending", Duration::from_secs(10), &instances, || {
        redis.pending("lote:work") == 0
    });
    // One entry per outcome: nothing was written twice in a run without faults.
    assert_eq!(redis.entries("lote:outcomes").len(), wanted.len());
}

fn check(setup: &Setup) -> Output {
    setup.run(&["check", "-c", "config.yaml"])
}

#[test]
fn check_refuses_what_the_redis_sink_cannot_do_and_prints_it_without_the_password() {
    let setup = Setup::new();
    let sink = "sink:\n  kind: redis_stream\n  url: redis://127.0.0.1:6379/0\n  stream: lote:outcomes\n";
    let spool = "source:\n  kind: spool\n  path: spool\nhandler:\n  kind: noop\n";
    let refused = |body: &str, key: &str, says: &str| {
        setup.config(body);
        let out = check(&setup);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(key) && said.contains(says),
            "expected `{key}` … `{says}` in\n{said}"
        );
    };

    refused(
        &format!("{spool}  qos: exactly_once\n{sink}"),
        "sink.kind",
        "exactly_once",
    );
    refused(
        &format!("source:\n  kind: lines\n  path: in.txt\nhandler:\n  kind: noop\n{sink}"),
        "sink.kind",
        "lines source",
    );
    refused(
        &format!("{spool}sink:\n  kind: redis_stream\n  url: redis://127.0.0.1:6379/0\n"),
        "sink.stream",
        "is missing",
    );
    refused(
        &format!("{spool}sink:\n  kind: redis_stream\n  stream: s\n"),
        "sink.url",
        "is missing",
    );
    refused(
        &format!("{spool}sink:\n  kind: redis_stream\n  url: redis://:hunter2@127.0.0.1/0\n  stream: s\n"),
        "sink.url",
        "password_file",
    );
    refused(&format!("{spool}{sink}  max_len: 0\n"), "sink.max_len", "");
    refused(
        &format!("{spool}{sink}dead_letter:\n  kind: redis_stream\n  url: redis://127.0.0.1:6379/0\n  stream: lote:outcomes\n"),
        "dead_letter.stream",
        "sink's stream too",
    );
    refused(
        &format!("{spool}{sink}  password_file: absent.pw\n"),
        "sink.password_file",
        "cannot read",
    );

    // An inbox has no sink file to live in: its own file in state_dir.
    setup.config(&format!("source:\n  kind: inbox\nhandler:\n  kind: noop\n{sink}"));
    let out = check(&setup);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("path: {}", setup.path("state/inbox.db").display())),
        "{printed}"
    );

    // Printed like every sink, the password file named, its secret never.
    fs::create_dir_all(setup.path("state")).unwrap();
    fs::write(setup.path("state/redis.pw"), "s3cret-pw\n").unwrap();
    setup.config(&format!("{spool}{sink}  max_len: 5000\n  password_file: redis.pw\n"));
    let out = check(&setup);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "sink:\n  kind: redis_stream\n  url: redis://127.0.0.1:6379/0\n  stream: lote:outcomes\n  max_len: 5000\n  \
         password_file: {}\n",
        setup.path("state/redis.pw").display()
    );
    assert!(printed.contains(&expected), "{printed}");
    assert!(!text(&out).contains("s3cret"), "{}", text(&out));
}
