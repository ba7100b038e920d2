//! A fleet on Redis Streams (SPEC §3.14) through the real binary, against a
//! real redis-server each test starts on a free loopback port
//! (`--appendonly yes --appendfsync always --save ''`, in a temp dir):
//! instances sharing a stream, one SIGKILLed and taken over, a restarted
//! instance resuming its own entries, a poison entry dead-lettered after
//! `max_deliveries`, redis-server restarted under running instances, a long
//! item not stolen while it runs, 20 random SIGKILLs losing nothing. Without
//! redis-server the tests fail and say how to install it (CI does: .ci/run).

use std::collections::HashSet;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

mod common;
#[path = "common/fleet.rs"]
mod fleet;
use common::{text, Setup};
use fleet::{done_union, wait_for, work, Instance, RedisServer};

const EXEC_CAT: &str =
    "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"cat >/dev/null\"]\n  timeout: 1s\n  \
                        retry: {attempts: 1}\nsession:\n  threads: 2\nqueue:\n  capacity: 16\n\
                        metrics:\n  every: 200ms\n  textfile: lote.prom\n";

#[test]
fn three_instances_share_the_work_and_take_over_a_killed_ones_entries() {
    let redis = RedisServer::start();
    let claim = "  claim_after: 2s\n  reclaim_every: 500ms\n";
    let mut fleet: Vec<Instance> = (0..3)
        .map(|k| Instance::new(&redis, &format!("box-{k}"), claim, EXEC_CAT))
        .collect();
    for i in &mut fleet {
        i.start();
    }
    let ids = work(3000, "job-");
    redis.publish("lote:work", &ids);
    // Mid-run: box-0 has done some and holds some.
    wait_for(
        "box-0 to finish 200 items",
        Duration::from_secs(60),
        &[&fleet[0]],
        || fleet[0].outcomes().len() >= 200,
    );
    fleet[0].sigkill();
    let killed_at = Instant::now();
    let stranded = redis.pending_of("lote:work", "box-0");
    assert!(stranded > 0, "box-0 held nothing when killed: the test proves nothing");
    let refs: Vec<&Instance> = fleet.iter().collect();
    // claim_after + reclaim_every + 1 s.
    wait_for(
        "the killed instance's entries to be taken over",
        Duration::from_millis(2000 + 500 + 1000),
        &refs,
        || redis.pending_of("lote:work", "box-0") == 0,
    );
    eprintln!(
        "{stranded} entries of box-0 taken over {}ms after its kill",
        killed_at.elapsed().as_millis()
    );
    wait_for("every entry done and acked", Duration::from_secs(60), &refs, || {
        done_union(&fleet).len() == ids.len() && redis.pending("lote:work") == 0
    });
    let want: HashSet<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(done_union(&fleet), want);
    // The survivors' metrics: what they took over, acked, and 0 pending.
    let metric = |i: &Instance, name: &str| -> u64 {
        let text = std::fs::read_to_string(i.setup.path("state/lote.prom")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    wait_for("the metrics to show the end", Duration::from_secs(5), &refs, || {
        fleet[1..]
            .iter()
            .all(|i| metric(i, "lote_redis_pending") == 0 && metric(i, "lote_redis_acked_total") > 0)
    });
    let reclaimed: u64 = fleet[1..].iter().map(|i| metric(i, "lote_redis_reclaimed_total")).sum();
    assert!(
        reclaimed >= stranded as u64,
        "reclaimed {reclaimed} < stranded {stranded}"
    );
    let acked: u64 = fleet.iter().map(|i| metric(i, "lote_redis_acked_total")).sum();
    assert!(acked >= 3000 - 300, "acked {acked}");
    common::promtool_check_metrics(&fleet[1].setup.path("state/lote.prom"));
    assert!(
        fleet[1].log().contains("took over") || fleet[2].log().contains("took over"),
        "nobody said it took over entries"
    );
}

#[test]
fn a_restarted_instance_resumes_its_own_pending_entries_at_once() {
    let redis = RedisServer::start();
    // claim_after is long: only the resume can explain a quick finish.
    let slow = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"sleep 0.1; cat >/dev/null\"]\n  \
                timeout: 5s\n  retry: {attempts: 1}\nsession:\n  threads: 1\nqueue:\n  capacity: 4\n";
    let mut one = Instance::new(&redis, "box-r", "  claim_after: 10m\n", slow);
    one.start();
    let ids = work(40, "r-");
    redis.publish("lote:work", &ids);
    wait_for("a few outcomes", Duration::from_secs(30), &[&one], || {
        one.outcomes().len() >= 3
    });
    one.sigkill();
    let held = redis.pending_of("lote:work", "box-r");
    assert!(held > 0, "it held nothing when killed");
    one.start();
    let restarted = Instant::now();
    wait_for(
        "the restarted instance to finish",
        Duration::from_secs(30),
        &[&one],
        || redis.pending("lote:work") == 0 && one.outcomes().len() == ids.len(),
    );
    assert!(one.log().contains("redis_stream"), "{}", one.log());
    eprintln!(
        "{held} held entries resumed; all done {}ms after the restart",
        restarted.elapsed().as_millis()
    );
}

#[test]
fn a_poison_entry_ends_in_the_dead_stream_after_max_deliveries_and_the_rest_runs() {
    let redis = RedisServer::start();
    // The poison crashes the instance that runs it (its handler kills lote).
    let crash = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \
                 \"p=$(cat); if [ \\\"$p\\\" = poison ]; then kill -9 $PPID; sleep 5; fi; \
                 if [ \\\"$p\\\" = fail ]; then exit 3; fi\"]\n  timeout: 5s\n  retry: {attempts: 1}\n\
                 session:\n  threads: 1\n";
    let mut one = Instance::new(&redis, "box-p", "  claim_after: 10m\n  max_deliveries: 3\n", crash);
    redis.publish("lote:work", &[("bad".into(), "poison".into())]);
    let mut starts = 0;
    let started = Instant::now();
    while redis.entries("lote:work:dead").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letter:\n{}",
            one.log()
        );
        if one.exited() {
            starts += 1;
            assert!(starts <= 5, "started {starts} times:\n{}", one.log());
            one.start();
        }
        thread::sleep(Duration::from_millis(25));
    }
    // Crashed on deliveries 1, 2 and 3; the 4th is dead-lettered.
    assert_eq!(starts, 4, "{}", one.log());
    let mut rest = work(50, "ok-");
    rest.push(("failing".into(), "fail".into()));
    redis.publish("lote:work", &rest);
    wait_for("the rest done", Duration::from_secs(30), &[&one], || {
        one.outcomes().iter().filter(|(_, s)| s == "done").count() == 50 && redis.pending("lote:work") == 0
    });
    let dead = redis.entries("lote:work:dead");
    let poison = dead.iter().find(|e| e["id"] == "bad").expect("poison in :dead");
    assert_eq!(poison["deliveries"], "4");
    assert!(poison["reason"].contains("max_deliveries 3"), "{poison:?}");
    assert_eq!(poison["payload"], "poison");
    // A failing handler: dead-lettered on its first delivery, with its error.
    let failing = dead
        .iter()
        .find(|e| e["id"] == "failing")
        .expect("failed item in :dead");
    assert_eq!(failing["deliveries"], "1");
    assert!(failing["reason"].contains('3'), "{failing:?}");
    let local: Vec<(String, String)> = one.outcomes().into_iter().filter(|(_, s)| s == "failed").collect();
    assert_eq!(local.len(), 2, "both in the local dead letters too: {local:?}");
}

#[test]
fn instances_reconnect_after_redis_server_restarts_and_finish() {
    let mut redis = RedisServer::start();
    let mut fleet: Vec<Instance> = (0..2)
        .map(|k| {
            Instance::new(
                &redis,
                &format!("box-{k}"),
                "  claim_after: 3s\n  reclaim_every: 500ms\n",
                EXEC_CAT,
            )
        })
        .collect();
    for i in &mut fleet {
        i.start();
    }
    let ids = work(1500, "d-");
    redis.publish("lote:work", &ids);
    wait_for("some progress", Duration::from_secs(60), &[], || {
        done_union(&fleet).len() >= 300
    });
    redis.crash_and_restart(Duration::from_millis(1500));
    let refs: Vec<&Instance> = fleet.iter().collect();
    wait_for(
        "every entry done after the restart",
        Duration::from_secs(120),
        &refs,
        || done_union(&fleet).len() == ids.len() && redis.pending("lote:work") == 0,
    );
    assert!(
        fleet.iter().any(|i| i.log().contains("reconnected to redis")),
        "{}",
        fleet[0].log()
    );
    for i in &mut fleet {
        assert!(!i.exited(), "an instance ended:\n{}", i.log());
    }
}

#[test]
fn a_long_item_is_not_taken_over_while_it_runs() {
    let redis = RedisServer::start();
    // The long item runs 4 claim_afters; without renewals the other
    // instance would take it over after one.
    let long = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \
                \"p=$(cat); if [ \\\"$p\\\" = long ]; then sleep 4; fi; echo \\\"$p\\\"\"]\n  retry: {attempts: 1}\n\
                session:\n  threads: 1\n";
    let claim = "  claim_after: 1s\n  reclaim_every: 200ms\n";
    let mut a = Instance::new(&redis, "box-a", claim, long);
    let mut b = Instance::new(&redis, "box-b", claim, long);
    a.start();
    redis.publish("lote:work", &[("long-1".into(), "long".into())]);
    wait_for("box-a to take the long item", Duration::from_secs(10), &[&a], || {
        redis.pending_of("lote:work", "box-a") == 1
    });
    b.start();
    // While it runs, box-a holds it and it was delivered once: neither box-b
    // nor box-a's own XAUTOCLAIM took it (either would count a delivery).
    wait_for("the long item done", Duration::from_secs(20), &[&a, &b], || {
        for (consumer, deliveries) in redis.pending_rows("lote:work") {
            assert_eq!(
                (consumer.as_str(), deliveries),
                ("box-a", 1),
                "the long item was claimed again"
            );
        }
        a.outcomes().len() == 1 && redis.pending("lote:work") == 0
    });
    // b had 3 s with the item pending; it took none.
    assert!(b.outcomes().is_empty(), "box-b ran the long item too:\n{}", b.log());
    assert!(!b.log().contains("took over"), "{}", b.log());
}

#[test]
fn check_refuses_a_claim_after_shorter_than_every_try_and_a_password_in_the_url() {
    let setup = Setup::new();
    let handler = "handler:\n  kind: noop\n  timeout: 10s\n  retry: {attempts: 3}\n";
    setup.config(&format!(
        "source:\n  kind: redis_stream\n  url: redis://127.0.0.1:1/0\n  consumer: c\n  claim_after: 30s\n{handler}"
    ));
    let out = setup.run(&["check", "-c", "config.yaml"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("source.claim_after") && said.contains("30s"), "{said}");
    setup.config(&format!(
        "source:\n  kind: redis_stream\n  url: redis://:hunter2@127.0.0.1:1/0\n  consumer: c\n{handler}"
    ));
    let out = setup.run(&["check", "-c", "config.yaml"]);
    let said = text(&out);
    assert!(said.contains("password_file") && !said.contains("hunter2"), "{said}");
    // A password file: the effective config names it, never its content.
    std::fs::write(setup.path("pw"), "hunter2\n").unwrap();
    let pw: PathBuf = setup.path("pw");
    setup.config(&format!(
        "source:\n  kind: redis_stream\n  url: redis://127.0.0.1:1/0\n  consumer: c\n  password_file: {}\n{handler}",
        pw.display()
    ));
    let out = setup.run(&["check", "-c", "config.yaml"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&pw.display().to_string()) && !said.contains("hunter2"),
        "{said}"
    );
}

#[test]
fn random_sigkills_of_random_instances_lose_nothing_under_exactly_once() {
    let redis = RedisServer::start();
    let handler = "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"cat >/dev/null\"]\n  timeout: 500ms\n  \
                   retry: {attempts: 1}\n  qos: exactly_once\nsession:\n  threads: 2\nqueue:\n  capacity: 16\n";
    // Every kill re-delivers what the killed instance held (queued ones
    // too): 20 kills in 5 s would take innocent entries past the default
    // max_deliveries, which is not what this test is about.
    let claim = "  claim_after: 1s\n  reclaim_every: 300ms\n  max_deliveries: 1000\n";
    let mut fleet: Vec<Instance> = (0..3)
        .map(|k| Instance::new(&redis, &format!("box-{k}"), claim, handler))
        .collect();
    for i in &mut fleet {
        i.start();
    }
    let ids = work(2000, "f-");
    redis.publish("lote:work", &ids);
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100 + fastrand::u64(..250)));
        let k = fastrand::usize(..fleet.len());
        fleet[k].sigkill();
        fleet[k].start();
    }
    let refs: Vec<&Instance> = fleet.iter().collect();
    wait_for("every entry done and acked", Duration::from_secs(60), &refs, || {
        done_union(&fleet).len() == ids.len() && redis.pending("lote:work") == 0
    });
    // Nothing failed or dead-lettered on the way (one record per id and
    // instance is the SQLite sink's primary key).
    for i in &fleet {
        let outcomes = i.outcomes();
        assert!(
            outcomes.iter().all(|(_, s)| s == "done"),
            "{}: {outcomes:?}",
            i.consumer
        );
    }
    assert!(redis.entries("lote:work:dead").is_empty());
}
