use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::SystemTime;

use super::*;
use crate::item::JsonItem;
use crate::sink::{Role, Sink, SqliteConfig, SqliteSink};

fn config(dir: &tempfile::TempDir) -> InboxConfig {
    InboxConfig::new(dir.path().join("inbox.db"))
}

fn item(id: Option<&str>, priority: Option<i32>, payload: &str) -> JsonItem {
    JsonItem {
        id: id.map(str::to_string),
        priority,
        payload: payload.as_bytes().to_vec(),
    }
}

fn ids(pull: Pull) -> Vec<String> {
    match pull {
        Pull::Items(items) => items.into_iter().map(|i| i.id).collect(),
        other => panic!("items expected, got {other:?}"),
    }
}

fn done(item: Item, status: Status) -> Outcome {
    let now = SystemTime::now();
    match status {
        Status::Failed => Outcome::failed(item, 1, "bad".into(), now, Duration::ZERO),
        _ => Outcome::done(item, 1, "ok".into(), now, Duration::ZERO),
    }
}

fn rows(path: &Path) -> Vec<(String, String, bool)> {
    let conn = Connection::open(path).unwrap();
    let mut s = conn
        .prepare("SELECT id, status, payload IS NOT NULL FROM inbox ORDER BY seq")
        .unwrap();
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[test]
fn pushed_items_are_pulled_by_priority_then_arrival_and_duplicates_are_acknowledged_once() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(config(&dir), None).unwrap();
    let first = intake
        .push(vec![
            item(Some("a"), Some(5), "x"),
            item(Some("b"), None, "y"),
            item(None, Some(1), "z"),
        ])
        .unwrap();
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    assert_eq!(&first.ids[..2], ["a", "b"]);
    let made_up = first.ids[2].clone();
    assert!(!made_up.is_empty());
    let again = intake
        .push(vec![item(Some("a"), None, "other"), item(Some("c"), Some(5), "w")])
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (1, 1));
    assert_eq!(intake.depth().unwrap(), 4);

    let source = InboxSource::open(config(&dir)).unwrap();
    let Pull::Items(items) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    let order: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(order, [made_up.as_str(), "a", "c", "b"], "priority, then arrival");
    assert_eq!(items[1].payload, b"x", "a duplicate changes nothing");
    assert_eq!(items[3].priority, crate::item::DEFAULT_PRIORITY);
    assert_eq!(
        source.pull(10).unwrap(),
        Pull::Exhausted,
        "claimed rows are not pulled twice"
    );
    assert_eq!(intake.depth().unwrap(), 4, "running items are unfinished");
}

#[test]
fn a_push_past_capacity_is_refused_whole_and_room_comes_back_when_items_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = InboxConfig {
        capacity: 3,
        ..config(&dir)
    };
    let intake = Intake::open(config.clone(), None).unwrap();
    intake
        .push(vec![item(Some("a"), None, "1"), item(Some("b"), None, "2")])
        .unwrap();
    let refused = intake
        .push(vec![item(Some("c"), None, "3"), item(Some("d"), None, "4")])
        .unwrap_err();
    assert_eq!(
        refused,
        Refused::Full {
            unfinished: 2,
            capacity: 3,
            new: 2
        }
    );
    assert_eq!(rows(&config.path).len(), 2, "nothing of a refused push is kept");
    assert_eq!(intake.stats().refused_full.load(Ordering::Relaxed), 1);
    // Duplicates take no room.
    intake
        .push(vec![item(Some("a"), None, "1"), item(Some("c"), None, "3")])
        .unwrap();

    let source = InboxSource::open(config.clone()).unwrap();
    let Pull::Items(items) = source.pull(1).unwrap() else {
        panic!("items expected")
    };
    source.ack(&[done(items[0].clone(), Status::Done)]).unwrap();
    assert_eq!(intake.depth().unwrap(), 2);
    intake.push(vec![item(Some("d"), None, "4")]).unwrap();
    assert_eq!(intake.depth().unwrap(), 3);
}

#[test]
fn an_item_over_max_bytes_refuses_its_push() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(
        InboxConfig {
            max_bytes: 4,
            ..config(&dir)
        },
        None,
    )
    .unwrap();
    let refused = intake
        .push(vec![item(Some("a"), None, "1234"), item(Some("b"), None, "12345")])
        .unwrap_err();
    assert_eq!(
        refused,
        Refused::TooLarge {
            index: 1,
            len: 5,
            max_bytes: 4
        }
    );
    assert_eq!(
        refused.to_string(),
        "item 2 is 5 bytes, over the inbox's max_bytes of 4"
    );
    assert_eq!(intake.depth().unwrap(), 0);
}

#[test]
fn finished_items_drop_their_payload_stay_duplicates_and_failed_ones_can_be_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let intake = Intake::open(config.clone(), None).unwrap();
    intake
        .push(vec![item(Some("ok"), None, "1"), item(Some("bad"), None, "2")])
        .unwrap();
    let source = InboxSource::open(config.clone()).unwrap();
    let Pull::Items(items) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    source
        .ack(&[
            done(items[0].clone(), Status::Done),
            done(items[1].clone(), Status::Failed),
        ])
        .unwrap();
    assert_eq!(
        rows(&config.path),
        [
            ("ok".into(), "done".into(), false),
            ("bad".into(), "failed".into(), false)
        ]
    );
    let again = intake
        .push(vec![item(Some("ok"), None, "1"), item(Some("bad"), None, "2")])
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (1, 1));
    assert_eq!(ids(source.pull(10).unwrap()), ["bad"]);
}

#[test]
fn rows_a_crash_left_running_are_pending_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    Intake::open(config.clone(), None)
        .unwrap()
        .push(vec![item(Some("a"), None, "1"), item(Some("b"), None, "2")])
        .unwrap();
    let source = InboxSource::open(config.clone()).unwrap();
    assert_eq!(ids(source.pull(1).unwrap()), ["a"]);
    drop(source); // a crash: never acknowledged, never given back
    let source = InboxSource::open(config).unwrap();
    assert_eq!(ids(source.pull(10).unwrap()), ["a", "b"]);
}

#[test]
fn items_given_back_wait_a_moment_then_come_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    Intake::open(config.clone(), None)
        .unwrap()
        .push(vec![item(Some("a"), None, "1")])
        .unwrap();
    let source = InboxSource::open(config).unwrap();
    let Pull::Items(items) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    source.give_back(items, ReturnReason::BreakerOpen).unwrap();
    assert_eq!(source.pull(10).unwrap(), Pull::Idle, "paused, not spinning");
    std::thread::sleep(GIVEN_BACK_PAUSE + Duration::from_millis(50));
    assert_eq!(ids(source.pull(10).unwrap()), ["a"]);
}

#[test]
fn a_sqlite_sink_in_the_same_file_finishes_rows_in_its_own_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let intake = Intake::open(config.clone(), None).unwrap();
    intake
        .push(vec![item(Some("a"), None, "1"), item(Some("b"), None, "2")])
        .unwrap();
    let source = InboxSource::open(config.clone()).unwrap().acked_in_sink_transaction();
    let Pull::Items(items) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    let mut sink = SqliteSink::open(SqliteConfig::new(&config.path, Role::Outcomes))
        .unwrap()
        .with_table_ack(InboxSource::table_ack())
        .unwrap();
    sink.write(&[done(items[0].clone(), Status::Done)]).unwrap();
    source.ack(&[done(items[0].clone(), Status::Done)]).unwrap(); // does nothing
    assert_eq!(
        rows(&config.path),
        [("a".into(), "done".into(), false), ("b".into(), "running".into(), true)]
    );
    assert_eq!(intake.depth().unwrap(), 1);
}

#[test]
fn finished_ids_are_forgotten_after_the_dedupe_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = InboxConfig {
        dedupe_window: Duration::ZERO,
        ..config(&dir)
    };
    let intake = Intake::open(config.clone(), None).unwrap();
    intake.push(vec![item(Some("a"), None, "1")]).unwrap();
    let source = InboxSource::open(config.clone()).unwrap();
    let Pull::Items(items) = source.pull(10).unwrap() else {
        panic!("items expected")
    };
    source.ack(&[done(items[0].clone(), Status::Done)]).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    drop(source);
    let _source = InboxSource::open(config.clone()).unwrap(); // prunes at open
    assert!(rows(&config.path).is_empty());
    let again = intake.push(vec![item(Some("a"), None, "1")]).unwrap();
    assert_eq!(again.accepted, 1);
}

#[test]
fn concurrent_pushes_all_commit_and_each_answer_counts_its_own_items() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Arc::new(Intake::open(config(&dir), None).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let intake = Arc::clone(&intake);
            std::thread::spawn(move || {
                for r in 0..25 {
                    let items = (0..10)
                        .map(|i| item(Some(&format!("{t}-{r}-{i}")), None, "p"))
                        .collect();
                    let admitted = intake.push(items).unwrap();
                    assert_eq!((admitted.accepted, admitted.duplicates), (10, 0));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(intake.depth().unwrap(), 2000);
    let stats = intake.stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 200);
    let rows = stats.batch_rows.snapshot();
    assert_eq!(rows.sum, 2000);
    let commits = stats.commits.load(Ordering::Relaxed);
    assert_eq!(rows.count, commits);
    assert_eq!(stats.commit_time.snapshot().count, commits);
}

#[test]
fn a_push_from_another_connection_rings_a_waiting_stream_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = InboxConfig {
        stream: true,
        ..config(&dir)
    };
    let source = InboxSource::open(config.clone()).unwrap();
    assert_eq!(source.pull(10).unwrap(), Pull::Idle);
    let bell = source.doorbell().unwrap();
    assert!(bell.hears(), "the WAL is watched");
    let (woke, heard) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        bell.wait(Duration::from_secs(3600));
        let _ = woke.send(());
    });
    std::thread::sleep(Duration::from_millis(50));
    // Another process would do the same: its own connection, no bell.
    Intake::open(config, None)
        .unwrap()
        .push(vec![item(Some("a"), None, "1")])
        .unwrap();
    heard
        .recv_timeout(Duration::from_secs(10))
        .expect("the push rang the bell");
    waiter.join().unwrap();
    assert_eq!(ids(source.pull(10).unwrap()), ["a"]);
}

#[test]
fn closing_the_intake_refuses_later_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(config(&dir), None).unwrap();
    intake.close();
    assert_eq!(intake.push(vec![item(None, None, "x")]).unwrap_err(), Refused::Closed);
}

#[test]
fn a_requeue_beside_a_running_daemon_leaves_its_claims_and_makes_dead_letters_pending() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    Intake::open(config.clone(), None)
        .unwrap()
        .push(vec![item(Some("bad"), None, "1"), item(Some("busy"), None, "2")])
        .unwrap();
    let daemon = InboxSource::open(config.clone()).unwrap();
    let Pull::Items(items) = daemon.pull(10).unwrap() else {
        panic!("items expected")
    };
    daemon.ack(&[done(items[0].clone(), Status::Failed)]).unwrap();
    // `lote dead-letter requeue` while the daemon still runs "busy".
    let requeue = InboxSource::open_for_requeue(config.clone()).unwrap();
    requeue.requeue(vec![Item::new("bad", "1")]).unwrap();
    let mut rows = rows(&config.path);
    rows.sort();
    assert_eq!(
        rows,
        [
            ("bad".into(), "pending".into(), true),
            ("busy".into(), "running".into(), true)
        ]
    );
}
