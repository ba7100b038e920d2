//! The JSONL sink on real files (SPEC §3.6): records, torn tails, rotation,
//! the done index, dead letters and `remove`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, UNIX_EPOCH};

use lote::sink::{JsonlConfig, JsonlSink, Record, Role, Sink, SinkErrorKind};
use lote::{Item, Outcome, Status};
use proptest::prelude::*;

/// Warnings from every test of this binary; each test picks its own by the
/// temporary directory in their text.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            WARNINGS.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// A temporary directory, with warnings captured.
fn scratch() -> tempfile::TempDir {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
    tempfile::tempdir().unwrap()
}

fn warnings_about(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(dir))
        .cloned()
        .collect()
}

fn outcome(id: &str, status: Status) -> Outcome {
    let started_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    Outcome {
        item: Item::new(id, format!("payload of {id}")),
        status,
        attempts: 2,
        output: (status == Status::Done).then(|| format!("output of {id}")),
        error: (status == Status::Failed).then(|| format!("error of {id}")),
        started_at,
        finished_at: started_at + Duration::from_millis(250),
        duration: Duration::from_millis(250),
    }
}

fn done(ids: &[&str]) -> Vec<Outcome> {
    ids.iter().map(|id| outcome(id, Status::Done)).collect()
}

fn failed(ids: &[&str]) -> Vec<Outcome> {
    ids.iter().map(|id| outcome(id, Status::Failed)).collect()
}

fn open(path: &Path) -> JsonlSink {
    JsonlSink::open(JsonlConfig::new(path, Role::Outcomes)).unwrap()
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn done_ids(sink: &JsonlSink, ids: &[&str]) -> HashSet<String> {
    sink.lookup().unwrap().done_ids(ids).unwrap()
}

fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn rotated(path: &Path, k: usize) -> PathBuf {
    PathBuf::from(format!("{}.{k}", path.display()))
}

/// One line of the outcomes file, newline included: every test id has the
/// same length, so every line too.
fn line_len(id: &str, status: Status) -> u64 {
    serde_json::to_string(&Record::new(&outcome(id, status), Role::Outcomes))
        .unwrap()
        .len() as u64
        + 1
}

#[test]
fn write_then_records_round_trips_every_field() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let mut sink = open(&path);
    let batch = vec![outcome("a", Status::Done), outcome("b", Status::Failed)];
    sink.write(&batch).unwrap();

    let expected: Vec<Record> = batch.iter().map(|o| Record::new(o, Role::Outcomes)).collect();
    assert_eq!(sink.records().unwrap(), expected);
    assert_eq!(sink.describe(), format!("jsonl {}", path.display()));
    assert_eq!(sink.path(), path);
    drop(sink); // one writer per file: close it before reopening
    assert_eq!(open(&path).records().unwrap(), expected);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.starts_with(r#"{"id":"a","status":"done","attempts":2,"output":"output of a","error":null,"started_at":"2023-11-14T22:13:20.123Z","finished_at":"2023-11-14T22:13:20.373Z","duration_ms":250}"#), "{text}");
    assert!(warnings_about(dir.path()).is_empty());
}

#[test]
fn skipped_outcomes_are_not_written() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let mut sink = open(&path);
    sink.write(&done(&["a"])).unwrap();
    sink.write(&[outcome("a", Status::Skipped)]).unwrap();
    sink.write(&[outcome("a", Status::Skipped), outcome("b", Status::Failed)])
        .unwrap();

    assert_eq!(ids(&sink.records().unwrap()), ["a", "b"]);
    assert_eq!(sink.records().unwrap()[0].output.as_deref(), Some("output of a"));
    assert_eq!(done_ids(&sink, &["a", "b"]), set(&["a"]));
}

#[test]
fn open_cuts_a_half_written_last_line() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    open(&path).write(&done(&["a", "b"])).unwrap();
    let whole = fs::metadata(&path).unwrap().len();
    let torn = br#"{"id":"torn","status":"do"#;
    append(&path, torn);

    let mut sink = open(&path);
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    let warnings = warnings_about(dir.path());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!("cut {} bytes", torn.len())),
        "{warnings:?}"
    );

    sink.write(&done(&["c"])).unwrap();
    assert_eq!(ids(&sink.records().unwrap()), ["a", "b", "c"]);
    assert!(done_ids(&sink, &["torn"]).is_empty());
    drop(sink); // one writer per file: close it before reopening
    assert_eq!(ids(&open(&path).records().unwrap()), ["a", "b", "c"]);
    assert!(!fs::read_to_string(&path).unwrap().contains("torn"));
    assert_eq!(
        warnings_about(dir.path()).len(),
        1,
        "reopening a clean file warns about nothing"
    );
}

#[test]
fn open_cuts_a_garbage_last_line_that_ends_with_a_newline() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    open(&path).write(&done(&["a"])).unwrap();
    let whole = fs::metadata(&path).unwrap().len();
    // What a power cut can leave: zeros where the data never arrived.
    let garbage = b"\0\0\0\0{\"id\":\"garbage\",\"status\":\"done\"}\n";
    append(&path, garbage);

    let mut sink = open(&path);
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    let warnings = warnings_about(dir.path());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!("cut {} bytes", garbage.len())),
        "{warnings:?}"
    );

    sink.write(&done(&["b"])).unwrap();
    assert_eq!(ids(&sink.records().unwrap()), ["a", "b"]);
    assert!(done_ids(&sink, &["garbage"]).is_empty());
}

#[test]
fn a_garbage_line_in_the_middle_is_skipped_with_a_warning() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    open(&path).write(&done(&["a"])).unwrap();
    let b = serde_json::to_string(&Record::new(&outcome("b", Status::Done), Role::Outcomes)).unwrap();
    append(&path, format!("not a record\n{b}\n").as_bytes());
    let mut sink = open(&path);
    sink.write(&done(&["c"])).unwrap();

    assert_eq!(ids(&sink.records().unwrap()), ["a", "b", "c"]);
    let warnings = warnings_about(dir.path());
    assert!(
        !warnings.is_empty() && warnings.iter().all(|w| w.contains("line 2 is not a record")),
        "{warnings:?}"
    );
    // Not data, but not ours to delete either.
    assert!(fs::read_to_string(&path).unwrap().contains("not a record\n"));
    drop(sink); // one writer per file: close it before reopening
    assert_eq!(done_ids(&open(&path), &["a", "b", "c"]), set(&["a", "b", "c"]));
}

#[test]
fn rotation_keeps_keep_files_and_never_splits_a_batch() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let line = line_len("b0-0", Status::Done);
    let config = JsonlConfig {
        rotate_bytes: Some(4 * line),
        keep_files: 2,
        ..JsonlConfig::new(&path, Role::Outcomes)
    };
    let mut sink = JsonlSink::open(config.clone()).unwrap();
    // Three lines a batch: every second batch takes the file past 4 lines.
    let batches: Vec<Vec<String>> = (0..7).map(|b| (0..3).map(|i| format!("b{b}-{i}")).collect()).collect();
    for batch in &batches {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        sink.write(&done(&batch)).unwrap();
    }

    // b0 b1 → path.1 → path.2 → deleted; b2 b3 → path.2; b4 b5 → path.1; b6 active.
    let mut files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| !name.to_string_lossy().ends_with(".lock"))
        .collect();
    files.sort();
    assert_eq!(files, ["outcomes.jsonl", "outcomes.jsonl.1", "outcomes.jsonl.2"]);
    for (file, first, last) in [
        (rotated(&path, 2), 2, 3),
        (rotated(&path, 1), 4, 5),
        (path.clone(), 6, 6),
    ] {
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.ends_with('\n'), "{}", file.display());
        let expected: Vec<String> = (first..=last).flat_map(|b| batches[b].clone()).collect();
        let found: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().id)
            .collect();
        assert_eq!(found, expected, "{}", file.display());
    }

    let kept: Vec<String> = batches[2..].concat();
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    assert_eq!(ids(&sink.records().unwrap()), kept);
    // The deleted file took its ids out of the index, as a restart would.
    let all: Vec<String> = batches.concat();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(done_ids(&sink, &all), set(&kept));
    drop(sink); // one writer per file: close it before reopening
    let reopened = JsonlSink::open(config).unwrap();
    assert_eq!(done_ids(&reopened, &all), set(&kept));
    assert!(warnings_about(dir.path()).is_empty());
}

#[test]
fn keep_files_zero_deletes_the_file_it_rotates() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let config = JsonlConfig {
        rotate_bytes: Some(1),
        keep_files: 0,
        ..JsonlConfig::new(&path, Role::Outcomes)
    };
    let mut sink = JsonlSink::open(config).unwrap();
    sink.write(&done(&["a"])).unwrap();

    let files = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".lock"));
    assert_eq!(files.count(), 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert!(sink.records().unwrap().is_empty());
    assert!(done_ids(&sink, &["a"]).is_empty());
    sink.write(&done(&["b"])).unwrap();
    assert!(!rotated(&path, 1).exists());
}

#[test]
fn a_failed_rotation_keeps_the_batch_and_is_tried_again() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let config = JsonlConfig {
        rotate_bytes: Some(1),
        keep_files: 1,
        ..JsonlConfig::new(&path, Role::Outcomes)
    };
    let mut sink = JsonlSink::open(config).unwrap();
    // A directory that is not empty cannot be replaced by a file.
    fs::create_dir_all(rotated(&path, 1).join("blocker")).unwrap();
    sink.write(&done(&["a"])).unwrap();
    sink.write(&done(&["b"])).unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap().lines().count(),
        2,
        "both batches stay in the active file"
    );
    let warnings = warnings_about(dir.path());
    assert!(
        warnings.len() == 2 && warnings.iter().all(|w| w.contains("cannot rotate")),
        "{warnings:?}"
    );

    fs::remove_dir_all(rotated(&path, 1)).unwrap();
    sink.write(&done(&["c"])).unwrap();
    assert_eq!(fs::read_to_string(rotated(&path, 1)).unwrap().lines().count(), 3);
    assert_eq!(ids(&sink.records().unwrap()), ["a", "b", "c"]);
    assert_eq!(done_ids(&sink, &["a", "b", "c"]), set(&["a", "b", "c"]));
}

#[test]
fn failed_then_done_is_done() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let mut sink = open(&path);
    let lookup = sink.lookup().unwrap();
    sink.write(&failed(&["a"])).unwrap();
    assert!(lookup.done_ids(&["a"]).unwrap().is_empty());
    sink.write(&done(&["a"])).unwrap();
    assert_eq!(
        lookup.done_ids(&["a", "b"]).unwrap(),
        set(&["a"]),
        "a lookup handed out earlier sees later writes"
    );
    drop(sink); // one writer per file: close it before reopening
    assert_eq!(done_ids(&open(&path), &["a"]), set(&["a"]));
}

#[test]
fn done_then_failed_is_not_done_the_last_line_wins() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let mut sink = open(&path);
    sink.write(&done(&["a", "b"])).unwrap();
    sink.write(&failed(&["a"])).unwrap();
    assert_eq!(done_ids(&sink, &["a", "b"]), set(&["b"]));
    drop(sink); // one writer per file: close it before reopening
    assert_eq!(done_ids(&open(&path), &["a", "b"]), set(&["b"]));
}

#[test]
fn the_done_index_survives_reopen_and_includes_rotated_files() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let config = JsonlConfig {
        // Failed lines are two bytes longer than done ones: every batch of two rotates.
        rotate_bytes: Some(2 * line_len("a", Status::Done)),
        keep_files: 3,
        ..JsonlConfig::new(&path, Role::Outcomes)
    };
    let mut sink = JsonlSink::open(config.clone()).unwrap();
    sink.write(&failed(&["a", "b"])).unwrap(); // path.3 in the end
    sink.write(&done(&["a", "c"])).unwrap(); // path.2
    sink.write(&done(&["d", "e"])).unwrap(); // path.1
    sink.write(&done(&["f"])).unwrap(); // active
    let mut files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| !name.to_string_lossy().ends_with(".lock"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "outcomes.jsonl",
            "outcomes.jsonl.1",
            "outcomes.jsonl.2",
            "outcomes.jsonl.3"
        ]
    );

    let all = ["a", "b", "c", "d", "e", "f"];
    let live = done_ids(&sink, &all);
    drop(sink); // one writer per file: close it before reopening
    let reopened = JsonlSink::open(config).unwrap();
    assert_eq!(done_ids(&reopened, &all), set(&["a", "c", "d", "e", "f"]));
    assert_eq!(live, done_ids(&reopened, &all));
}

#[test]
fn dead_letters_round_trip_a_binary_payload_and_are_never_done() {
    let dir = scratch();
    let path = dir.path().join("dead.jsonl");
    let item = Item::new("bin", vec![0xff, 0x00, 0xfe, b'\n']).with_priority(7);
    let letter = Outcome {
        item: item.clone(),
        ..outcome("bin", Status::Failed)
    };
    let mut sink = JsonlSink::open(JsonlConfig::new(&path, Role::DeadLetter)).unwrap();
    sink.write(&[letter, outcome("text", Status::Failed)]).unwrap();
    drop(sink);

    let mut sink = JsonlSink::open(JsonlConfig::new(&path, Role::DeadLetter)).unwrap();
    let records = sink.records().unwrap();
    assert_eq!(ids(&records), ["bin", "text"]);
    assert_eq!((records[0].payload.as_deref(), records[0].priority), (None, Some(7)));
    assert_eq!(records[0].payload_base64.as_deref(), Some("/wD+Cg=="));
    assert_eq!(records[0].to_item(), Some(item));
    assert_eq!(records[1].payload.as_deref(), Some("payload of text"));
    assert!(done_ids(&sink, &["bin", "text"]).is_empty());
    sink.write(&done(&["text"])).unwrap();
    assert!(
        done_ids(&sink, &["text"]).is_empty(),
        "a dead-letter sink answers nothing is done"
    );
}

#[test]
fn remove_deletes_only_the_named_ids_across_files() {
    let dir = scratch();
    let path = dir.path().join("outcomes.jsonl");
    let config = JsonlConfig {
        rotate_bytes: Some(3 * line_len("a", Status::Done)),
        keep_files: 2,
        ..JsonlConfig::new(&path, Role::Outcomes)
    };
    let mut sink = JsonlSink::open(config.clone()).unwrap();
    sink.write(&failed(&["a", "b", "c"])).unwrap(); // path.1
    sink.write(&done(&["a", "d"])).unwrap(); // active
    let rotated_before = fs::read(rotated(&path, 1)).unwrap();

    assert_eq!(sink.remove(&["a".into(), "d".into(), "missing".into()]).unwrap(), 3);
    assert_eq!(ids(&sink.records().unwrap()), ["b", "c"]);
    assert!(done_ids(&sink, &["a", "d"]).is_empty());
    assert!(fs::read(rotated(&path, 1)).unwrap().len() < rotated_before.len());
    assert_eq!(sink.remove(&["a".into()]).unwrap(), 0);
    assert!(!dir.path().join("outcomes.jsonl.tmp").exists());

    sink.write(&done(&["e"])).unwrap();
    assert_eq!(ids(&sink.records().unwrap()), ["b", "c", "e"]);
    assert_eq!(
        fs::read_to_string(&path).unwrap().lines().count(),
        1,
        "the write went to the new active file"
    );
    drop(sink); // one writer per file: close it before reopening
    let mut reopened = JsonlSink::open(config).unwrap();
    assert_eq!(ids(&reopened.records().unwrap()), ["b", "c", "e"]);
    assert_eq!(done_ids(&reopened, &["a", "b", "c", "d", "e"]), set(&["e"]));
    assert!(warnings_about(dir.path()).is_empty());
}

#[test]
fn open_creates_missing_parent_directories() {
    let dir = scratch();
    let path = dir.path().join("state/deep/outcomes.jsonl");
    open(&path).write(&done(&["a"])).unwrap();
    assert_eq!(ids(&open(&path).records().unwrap()), ["a"]);
}

#[test]
fn open_names_the_directory_it_cannot_create() {
    let dir = scratch();
    let blocker = dir.path().join("a-file");
    fs::write(&blocker, b"").unwrap();
    let error = JsonlSink::open(JsonlConfig::new(blocker.join("state/outcomes.jsonl"), Role::Outcomes)).unwrap_err();
    assert_eq!(error.path, blocker.join("state"));
    assert!(
        error.to_string().contains("cannot create the sink's directory"),
        "{error}"
    );
}

#[test]
fn a_failed_append_is_an_io_error() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let mut sink = JsonlSink::open(JsonlConfig::new(full, Role::DeadLetter)).unwrap();
    let error = sink.write(&failed(&["a"])).unwrap_err();
    assert_eq!(error.kind, SinkErrorKind::Io);
    assert!(error.to_string().contains("/dev/full"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the batches and the rotation, the live index, the index
    /// after a restart, and the kept records (last line wins) agree.
    #[test]
    fn the_index_agrees_with_the_kept_records(
        batches in prop::collection::vec(prop::collection::vec((0..6u8, 0..3u8), 1..5), 1..10),
        rotate_lines in prop::option::of(1..8u64),
        keep_files in 0..3usize,
    ) {
        let dir = scratch();
        let path = dir.path().join("outcomes.jsonl");
        let config = JsonlConfig {
            rotate_bytes: rotate_lines.map(|n| n * line_len("0", Status::Done)),
            keep_files,
            ..JsonlConfig::new(&path, Role::Outcomes)
        };
        let mut sink = JsonlSink::open(config.clone()).unwrap();
        for batch in &batches {
            let batch: Vec<Outcome> = batch
                .iter()
                .map(|&(id, status)| outcome(&id.to_string(), [Status::Done, Status::Failed, Status::Skipped][status as usize]))
                .collect();
            sink.write(&batch).unwrap();
        }

        let mut expected = HashSet::new();
        for record in sink.records().unwrap() {
            if record.is_done() { expected.insert(record.id.clone()); } else { expected.remove(&record.id); }
        }
        let all = ["0", "1", "2", "3", "4", "5"];
        prop_assert_eq!(done_ids(&sink, &all), expected.clone());
        drop(sink); // one writer per file: close it before reopening
        prop_assert_eq!(done_ids(&JsonlSink::open(config).unwrap(), &all), expected);
        for k in 0..=keep_files {
            let file = if k == 0 { path.clone() } else { rotated(&path, k) };
            if let Ok(bytes) = fs::read(&file) {
                prop_assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
            }
        }
        prop_assert!(!rotated(&path, keep_files + 1).exists());
        prop_assert!(warnings_about(dir.path()).is_empty());
    }
}

#[test]
fn a_second_writer_on_the_same_file_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = JsonlConfig::new(dir.path().join("outcomes.jsonl"), Role::Outcomes);
    let first = JsonlSink::open(config.clone()).unwrap();
    let error = JsonlSink::open(config.clone()).expect_err("refused").to_string();
    assert!(error.contains("another writer"), "{error}");
    drop(first);
    JsonlSink::open(config).expect("free again");
}
