//! The spool source against real directories (SPEC §3.6, §3.9, §3.10).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use lote::item::{Item, Outcome, Status, DEFAULT_PRIORITY};
use lote::source::spool::{OnDone, SpoolConfig, SpoolPriority, SpoolSource};
use lote::source::{Pull, ReturnReason, Source};

/// A spool on `dir` that takes files as soon as it sees them.
fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        stable_for: Duration::ZERO,
        ..SpoolConfig::new(dir)
    }
}

fn write(dir: &Path, name: &str, content: &str) {
    fs::write(dir.join(name), content).unwrap();
}

fn items(pull: Pull) -> Vec<Item> {
    match pull {
        Pull::Items(items) => items,
        other => panic!("items expected, got {other:?}"),
    }
}

fn ids(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

fn outcome(item: &Item, status: Status) -> Outcome {
    let now = SystemTime::now();
    Outcome {
        item: item.clone(),
        status,
        attempts: 1,
        output: None,
        error: (status == Status::Failed).then(|| "boom".to_string()),
        started_at: now,
        finished_at: now,
        duration: Duration::ZERO,
    }
}

/// The names in `dir` (files, links, directories; dot-entries included), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The regular files and links in `dir`, without lote's own entries.
fn pending(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| ![".claimed", "done", "failed", ".lote.lock"].contains(&n.as_str()))
        .collect()
}

#[test]
fn files_are_pulled_in_priority_then_name_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["b.json", "a.json", "10-x", "2_z", "2-y", "100-w", "7-"] {
        write(dir.path(), name, name);
    }
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let first = items(source.pull(4).unwrap());
    assert_eq!(ids(&first), vec!["2-y", "2_z", "7-", "10-x"]);
    assert_eq!(first[0].payload, b"2-y");
    assert_eq!(first[0].priority, 2);
    let rest = items(source.pull(10).unwrap());
    // "100-w" has priority 100, the default, so it sorts by name among the rest.
    assert_eq!(ids(&rest), vec!["100-w", "a.json", "b.json"]);
    assert!(rest.iter().all(|i| i.priority == DEFAULT_PRIORITY));
    assert_eq!(source.pull(10).unwrap(), Pull::Exhausted);
}

#[test]
fn a_json_field_gives_the_priority_and_a_bad_payload_gets_the_default() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", r#"{"urgency": 500}"#);
    write(dir.path(), "b", r#"{"urgency": 1, "data": [1, 2, {"urgency": 900}]}"#);
    write(dir.path(), "c", "not json at all");
    write(dir.path(), "d", r#"{"urgency": "high"}"#);
    let source = SpoolSource::open(SpoolConfig {
        priority: SpoolPriority::JsonField("urgency".into()),
        ..config(dir.path())
    })
    .unwrap();
    let pulled = items(source.pull(10).unwrap());
    assert_eq!(ids(&pulled), vec!["b", "c", "d", "a"]);
    assert_eq!(
        pulled.iter().map(|i| i.priority).collect::<Vec<_>>(),
        vec![1, 100, 100, 500]
    );
    assert!(pulled.iter().all(|i| i.defect.is_none()));
}

#[test]
fn fixed_priority_orders_by_name_alone() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "5-b", "");
    write(dir.path(), "a", "");
    let source = SpoolSource::open(SpoolConfig {
        priority: SpoolPriority::Fixed,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(ids(&items(source.pull(10).unwrap())), vec!["5-b", "a"]);
}

#[test]
fn acknowledged_files_move_to_done_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ok", "bad", "already"] {
        write(dir.path(), name, name);
    }
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let pulled = items(source.pull(10).unwrap());
    assert_eq!(pending(dir.path()), Vec::<String>::new());
    assert_eq!(names(&dir.path().join(".claimed")), vec!["already", "bad", "ok"]);
    let status = |id: &str| match id {
        "ok" => Status::Done,
        "bad" => Status::Failed,
        _ => Status::Skipped,
    };
    let outcomes: Vec<Outcome> = pulled.iter().map(|i| outcome(i, status(&i.id))).collect();
    source.ack(&outcomes).unwrap();
    assert_eq!(names(&dir.path().join("done")), vec!["already", "ok"]);
    assert_eq!(names(&dir.path().join("failed")), vec!["bad"]);
    assert_eq!(names(&dir.path().join(".claimed")), Vec::<String>::new());
    assert_eq!(fs::read(dir.path().join("done/ok")).unwrap(), b"ok");
    assert_eq!(source.pull(10).unwrap(), Pull::Exhausted);
}

#[test]
fn a_done_file_of_the_same_name_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x", "new");
    let source = SpoolSource::open(config(dir.path())).unwrap();
    write(&dir.path().join("done"), "x", "old");
    let pulled = items(source.pull(10).unwrap());
    source.ack(&[outcome(&pulled[0], Status::Done)]).unwrap();
    assert_eq!(fs::read(dir.path().join("done/x")).unwrap(), b"old");
    let done = names(&dir.path().join("done"));
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(done[1].starts_with("x.~") && done[1].ends_with('~'), "{done:?}");
    assert_eq!(fs::read(dir.path().join("done").join(&done[1])).unwrap(), b"new");
}

#[test]
fn delete_mode_deletes_done_files_and_keeps_failed_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok", "1");
    write(dir.path(), "bad", "2");
    let source = SpoolSource::open(SpoolConfig {
        on_done: OnDone::Delete,
        ..config(dir.path())
    })
    .unwrap();
    let pulled = items(source.pull(10).unwrap());
    let outcomes: Vec<Outcome> = pulled
        .iter()
        .map(|i| outcome(i, if i.id == "ok" { Status::Done } else { Status::Failed }))
        .collect();
    source.ack(&outcomes).unwrap();
    assert_eq!(names(&dir.path().join("done")), Vec::<String>::new());
    assert_eq!(names(&dir.path().join("failed")), vec!["bad"]);
    assert_eq!(names(&dir.path().join(".claimed")), Vec::<String>::new());
    assert_eq!(pending(dir.path()), Vec::<String>::new());
}

#[test]
fn a_given_back_file_is_pending_again_and_pulled_again() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "1-a", "a");
    write(dir.path(), "2-b", "b");
    // A real stable_for: a given-back file is known complete and need not wait.
    let source = SpoolSource::open(SpoolConfig {
        stable_for: Duration::from_millis(200),
        ..SpoolConfig::new(dir.path())
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let pulled = loop {
        match source.pull(10).unwrap() {
            Pull::Items(items) => break items,
            Pull::Idle => assert!(Instant::now() < deadline, "files never became stable"),
            Pull::Exhausted => panic!("exhausted with files waiting to be stable"),
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ids(&pulled), vec!["1-a", "2-b"]);
    source.give_back(pulled, ReturnReason::Stopped).unwrap();
    assert_eq!(pending(dir.path()), vec!["1-a", "2-b"]);
    assert_eq!(names(&dir.path().join(".claimed")), Vec::<String>::new());
    let again = items(source.pull(10).unwrap());
    assert_eq!(ids(&again), vec!["1-a", "2-b"]);
    assert_eq!(again[1].payload, b"b");
}

#[test]
fn symlinks_are_never_pulled_and_their_targets_never_touched() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, "do not read").unwrap();
    fs::create_dir(outside.path().join("subdir")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real", "inside");
    symlink(&secret, dir.path().join("to-outside")).unwrap();
    symlink(dir.path().join("real"), dir.path().join("to-inside")).unwrap();
    symlink("real", dir.path().join("relative-to-inside")).unwrap();
    symlink(outside.path().join("subdir"), dir.path().join("to-outside-dir")).unwrap();
    symlink(outside.path().join("nothing"), dir.path().join("dangling")).unwrap();
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let pulled = items(source.pull(100).unwrap());
    assert_eq!(ids(&pulled), vec!["real"]);
    source.ack(&[outcome(&pulled[0], Status::Done)]).unwrap();
    assert_eq!(source.pull(100).unwrap(), Pull::Exhausted);
    // The links are where they were, still links; the outside is untouched.
    let links = [
        "dangling",
        "relative-to-inside",
        "to-inside",
        "to-outside",
        "to-outside-dir",
    ];
    assert_eq!(pending(dir.path()), links);
    for link in links {
        assert!(fs::symlink_metadata(dir.path().join(link))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(fs::read(&secret).unwrap(), b"do not read");
    assert_eq!(names(outside.path()), vec!["secret", "subdir"]);
    assert_eq!(names(&dir.path().join("done")), vec!["real"]);
}

#[test]
fn a_symlinked_done_directory_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    symlink(outside.path(), dir.path().join("done")).unwrap();
    let error = SpoolSource::open(config(dir.path())).err().unwrap().to_string();
    assert!(error.contains("done") && error.contains("not a directory"), "{error}");
}

#[test]
fn dot_files_are_skipped_and_directories_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".in-progress.json", "half");
    write(dir.path(), "ready.json", "whole");
    fs::create_dir(dir.path().join("a-directory")).unwrap();
    write(&dir.path().join("a-directory"), "nested", "not an item");
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let pulled = items(source.pull(100).unwrap());
    assert_eq!(ids(&pulled), vec!["a-directory", "ready.json"]);
    let defect = pulled[0].defect.as_deref().unwrap();
    assert!(defect.starts_with("it is a directory"), "{defect}");
    assert_eq!(pulled[1].defect, None);
    source
        .ack(&[outcome(&pulled[0], Status::Failed), outcome(&pulled[1], Status::Done)])
        .unwrap();
    assert_eq!(
        fs::read(dir.path().join("failed/a-directory/nested")).unwrap(),
        b"not an item"
    );
    assert_eq!(source.pull(100).unwrap(), Pull::Exhausted);
    // The producer's rename makes the dot-file an item.
    fs::rename(
        dir.path().join(".in-progress.json"),
        dir.path().join("in-progress.json"),
    )
    .unwrap();
    let renamed = items(source.pull(100).unwrap());
    assert_eq!(ids(&renamed), vec!["in-progress.json"]);
    assert_eq!(renamed[0].payload, b"half");
}

#[test]
fn a_file_still_being_written_is_not_taken_until_it_stops_changing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("growing");
    let mut file = fs::File::create(&path).unwrap();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        thread::spawn(move || {
            let mut written = 0;
            let until = Instant::now() + Duration::from_millis(1200);
            while Instant::now() < until {
                file.write_all(b"0123456789").unwrap();
                written += 10;
                thread::sleep(Duration::from_millis(10));
            }
            // SeqCst: the test's reads of the flag pair with this store.
            writing.store(false, Ordering::SeqCst);
            written
        })
    };
    let source = SpoolSource::open(SpoolConfig {
        stable_for: Duration::from_millis(300),
        ..SpoolConfig::new(dir.path())
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pulls_while_writing = 0;
    let taken = loop {
        let still_writing = writing.load(Ordering::SeqCst);
        match source.pull(10).unwrap() {
            Pull::Items(items) => {
                assert!(!still_writing, "taken while still being written");
                break items;
            }
            // stream is false, yet an unstable file must not end the session.
            Pull::Idle => pulls_while_writing += usize::from(still_writing),
            Pull::Exhausted => panic!("exhausted while a file was waiting to be stable"),
        }
        assert!(Instant::now() < deadline, "the file was never taken");
        thread::sleep(Duration::from_millis(15));
    };
    let written = writer.join().unwrap();
    assert!(
        pulls_while_writing > 10,
        "only {pulls_while_writing} pulls while writing"
    );
    assert_eq!(ids(&taken), vec!["growing"]);
    assert_eq!(taken[0].payload.len(), written);
}

#[test]
fn an_oversized_file_is_a_defective_item_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "big", "0123456789A");
    write(dir.path(), "small", "0123456789");
    let source = SpoolSource::open(SpoolConfig {
        max_bytes: 10,
        ..config(dir.path())
    })
    .unwrap();
    let pulled = items(source.pull(10).unwrap());
    assert_eq!(ids(&pulled), vec!["big", "small"]);
    assert_eq!(pulled[0].defect.as_deref(), Some("file is 11 bytes, over max_bytes 10"));
    assert!(pulled[0].payload.is_empty());
    assert_eq!(pulled[1].defect, None);
    assert_eq!(pulled[1].payload, b"0123456789");
    // A defective item fails; its file goes to failed/ whole.
    source.ack(&[outcome(&pulled[0], Status::Failed)]).unwrap();
    assert_eq!(fs::read(dir.path().join("failed/big")).unwrap(), b"0123456789A");
}

#[test]
fn an_unreadable_file_is_a_defective_item() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "locked", "secret");
    fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read(dir.path().join("locked")).is_ok() {
        return; // running as root: permissions do not stop reads
    }
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let pulled = items(source.pull(10).unwrap());
    let defect = pulled[0].defect.as_deref().unwrap();
    assert!(
        defect.starts_with("cannot read") && defect.contains("locked"),
        "{defect}"
    );
}

#[test]
fn claims_left_by_a_crash_are_pending_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["1-a", "2-b", "3-c"] {
        write(dir.path(), name, name);
    }
    let first = SpoolSource::open(config(dir.path())).unwrap();
    assert_eq!(ids(&items(first.pull(2).unwrap())), vec!["1-a", "2-b"]);
    drop(first); // the "crash": claimed, never acknowledged
    assert_eq!(names(&dir.path().join(".claimed")), vec!["1-a", "2-b"]);
    assert_eq!(pending(dir.path()), vec!["3-c"]);

    // Reopened with a long stable_for: the repaired files are known to be
    // complete and are taken at once; the untouched one waits to be stable.
    let second = SpoolSource::open(SpoolConfig {
        stable_for: Duration::from_secs(60),
        ..SpoolConfig::new(dir.path())
    })
    .unwrap();
    assert_eq!(names(&dir.path().join(".claimed")), Vec::<String>::new());
    assert_eq!(pending(dir.path()), vec!["1-a", "2-b", "3-c"]);
    let again = items(second.pull(10).unwrap());
    assert_eq!(ids(&again), vec!["1-a", "2-b"]);
    assert_eq!(again[0].payload, b"1-a");
    assert_eq!(second.pull(10).unwrap(), Pull::Idle);
}

#[test]
fn a_second_source_does_not_take_the_claims_of_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b", "c"] {
        write(dir.path(), name, name);
    }
    let first = SpoolSource::open(config(dir.path())).unwrap();
    let mine = items(first.pull(2).unwrap());
    let second = SpoolSource::open(config(dir.path())).unwrap();
    assert_eq!(names(&dir.path().join(".claimed")), vec!["a", "b"]);
    assert_eq!(ids(&items(second.pull(10).unwrap())), vec!["c"]);
    assert_eq!(second.pull(10).unwrap(), Pull::Exhausted);
    first
        .ack(&[outcome(&mine[0], Status::Done), outcome(&mine[1], Status::Done)])
        .unwrap();
    assert_eq!(names(&dir.path().join("done")), vec!["a", "b"]);
}

#[test]
fn stream_false_waits_for_unstable_files_and_ends_on_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let batch = SpoolSource::open(SpoolConfig {
        stable_for: Duration::from_secs(60),
        ..SpoolConfig::new(dir.path())
    })
    .unwrap();
    assert_eq!(batch.pull(10).unwrap(), Pull::Exhausted);
    write(dir.path(), "fresh", "x");
    assert_eq!(batch.pull(10).unwrap(), Pull::Idle);
    assert_eq!(batch.pull(10).unwrap(), Pull::Idle);
    fs::remove_file(dir.path().join("fresh")).unwrap();
    assert_eq!(batch.pull(10).unwrap(), Pull::Exhausted);

    let stream = SpoolSource::open(SpoolConfig {
        stream: true,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(stream.pull(10).unwrap(), Pull::Idle);
    write(dir.path(), "later", "y");
    assert_eq!(ids(&items(stream.pull(10).unwrap())), vec!["later"]);
}

#[test]
fn requeue_writes_the_file_back_and_removes_its_failed_copy() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "5-job", "payload");
    let source = SpoolSource::open(config(dir.path())).unwrap();
    let pulled = items(source.pull(10).unwrap());
    source.ack(&[outcome(&pulled[0], Status::Failed)]).unwrap();
    assert_eq!(names(&dir.path().join("failed")), vec!["5-job"]);

    source.requeue(vec![Item::new("5-job", "payload, fixed")]).unwrap();
    assert_eq!(names(&dir.path().join("failed")), Vec::<String>::new());
    assert_eq!(pending(dir.path()), vec!["5-job"]);
    assert_eq!(fs::read(dir.path().join("5-job")).unwrap(), b"payload, fixed");
    let again = items(source.pull(10).unwrap());
    assert_eq!((again[0].id.as_str(), again[0].priority), ("5-job", 5));
    assert_eq!(again[0].payload, b"payload, fixed");

    // Names that would leave the directory, be ignored, or clobber a pending
    // or claimed file are refused before anything is written.
    write(dir.path(), "pending", "p");
    for bad in ["../escape", "a/b", ".hidden", "", "pending", "5-job"] {
        let error = source
            .requeue(vec![Item::new("fine", "f"), Item::new(bad, "x")])
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"))
            .to_string();
        assert!(error.contains("requeueing"), "{error}");
    }
    assert!(!dir.path().join("fine").exists());
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[test]
fn open_creates_its_directories_and_names_a_bad_path() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new/spool");
    let source = SpoolSource::open(config(&dir)).unwrap();
    assert_eq!(names(&dir), vec![".claimed", ".lote.lock", "done", "failed"]);
    assert_eq!(source.describe(), format!("spool {}", dir.display()));
    assert!(!source.needs_resume());

    let file = root.path().join("a-file");
    fs::write(&file, "").unwrap();
    let error = SpoolSource::open(config(&file)).err().unwrap().to_string();
    assert!(error.contains(&file.display().to_string()), "{error}");

    let dir = root.path().join("bad-done");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("done"), "").unwrap();
    let error = SpoolSource::open(config(&dir)).err().unwrap().to_string();
    assert!(error.contains(&dir.join("done").display().to_string()), "{error}");
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let config = SpoolConfig::new("/var/spool/lote");
    assert_eq!(config.on_done, OnDone::Move);
    assert_eq!(config.priority, SpoolPriority::FilenamePrefix);
    assert_eq!(config.stable_for, Duration::from_secs(1));
    assert_eq!(config.max_bytes, 16 * 1024 * 1024);
    assert!(!config.stream);
}

#[test]
fn two_sources_on_one_directory_never_pull_the_same_file() {
    const FILES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        write(dir.path(), &format!("{}-item-{i:04}", i % 7), &i.to_string());
    }
    let sources = [
        Arc::new(SpoolSource::open(config(dir.path())).unwrap()),
        Arc::new(SpoolSource::open(config(dir.path())).unwrap()),
    ];
    let workers: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(n, source)| {
            let source = source.clone();
            thread::spawn(move || {
                let mut taken = Vec::new();
                let mut round = 0usize;
                loop {
                    round += 1;
                    let batch = match source.pull(1 + (round * (n + 3)) % 9).unwrap() {
                        Pull::Items(items) => items,
                        Pull::Idle => continue,
                        Pull::Exhausted => return taken,
                    };
                    let outcomes: Vec<Outcome> = batch.iter().map(|i| outcome(i, Status::Done)).collect();
                    source.ack(&outcomes).unwrap();
                    taken.extend(batch.into_iter().map(|i| i.id));
                }
            })
        })
        .collect();
    let taken: Vec<Vec<String>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let mut all = HashSet::new();
    for id in taken.iter().flatten() {
        assert!(all.insert(id.clone()), "{id} was pulled twice");
    }
    assert_eq!(all.len(), FILES, "pulled {} of {FILES}", all.len());
    assert!(
        taken.iter().all(|t| !t.is_empty()),
        "one source took everything: no race tested"
    );
    assert_eq!(names(&dir.path().join("done")).len(), FILES);
    assert_eq!(pending(dir.path()), Vec::<String>::new());
    assert_eq!(names(&dir.path().join(".claimed")), Vec::<String>::new());
}

#[test]
fn a_done_directory_removed_while_running_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x", "x");
    let source = SpoolSource::open(config(dir.path())).unwrap();
    fs::remove_dir(dir.path().join("done")).unwrap();
    let pulled = items(source.pull(10).unwrap());
    source.ack(&[outcome(&pulled[0], Status::Done)]).unwrap();
    assert_eq!(fs::read(dir.path().join("done/x")).unwrap(), b"x");
    // A symlink in its place is refused: nothing moves through it.
    let outside = tempfile::tempdir().unwrap();
    fs::remove_dir_all(dir.path().join("done")).unwrap();
    symlink(outside.path(), dir.path().join("done")).unwrap();
    write(dir.path(), "y", "y");
    let pulled = items(source.pull(10).unwrap());
    let error = source
        .ack(&[outcome(&pulled[0], Status::Done)])
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a directory"), "{error}");
    assert_eq!(names(outside.path()), Vec::<String>::new());
    assert_eq!(names(&dir.path().join(".claimed")), vec!["y"]);
}

#[test]
fn a_given_back_file_keeps_its_name_and_a_pending_newcomer_of_it_is_moved_aside() {
    // A producer that reuses a name (latest.json) drops a new one while the
    // first is claimed. The give-back must not leave the first in .claimed/
    // forever (it would also keep the new one from ever being claimed), nor
    // give it a new id (under exactly_once its outcome may be durable already):
    // the newcomer, which never ran, is moved aside instead.
    let dir = tempfile::tempdir().unwrap();
    let source = SpoolSource::open(config(dir.path())).unwrap();
    write(dir.path(), "latest.json", "first");
    let first = items(source.pull(10).unwrap());
    assert_eq!(ids(&first), vec!["latest.json"]);
    write(dir.path(), "latest.json", "second");
    source.give_back(first, ReturnReason::FlushFailed).unwrap();
    assert_claimed_kept_its_name(dir.path());
    let mut payloads: Vec<Vec<u8>> = items(source.pull(10).unwrap()).into_iter().map(|i| i.payload).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn a_crashed_claim_keeps_its_name_and_a_pending_newcomer_of_it_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let source = SpoolSource::open(config(dir.path())).unwrap();
    write(dir.path(), "latest.json", "first");
    assert_eq!(items(source.pull(10).unwrap()).len(), 1);
    drop(source); // the "crash": claimed, never finished
    write(dir.path(), "latest.json", "second");
    let source = SpoolSource::open(config(dir.path())).unwrap();
    assert_claimed_kept_its_name(dir.path());
    let mut payloads: Vec<Vec<u8>> = items(source.pull(10).unwrap()).into_iter().map(|i| i.payload).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"first".to_vec(), b"second".to_vec()]);
}

/// latest.json ("first", claimed) is back under its own name; the newcomer
/// ("second") is beside it under a unique name; nothing is left claimed.
fn assert_claimed_kept_its_name(dir: &Path) {
    assert!(names(&dir.join(".claimed")).is_empty(), "left claimed");
    let pending = pending(dir);
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending[0], "latest.json", "{pending:?}");
    assert_eq!(fs::read(dir.join("latest.json")).unwrap(), b"first");
    assert!(pending[1].starts_with("latest.json.~"), "{pending:?}");
    assert_eq!(fs::read(dir.join(&pending[1])).unwrap(), b"second");
}
