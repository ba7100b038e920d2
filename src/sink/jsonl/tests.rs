use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::item::Item;

fn outcome(id: &str) -> Outcome {
    Outcome {
        item: Item::new(id, "payload"),
        status: Status::Done,
        attempts: 1,
        output: Some("ok".into()),
        error: None,
        started_at: UNIX_EPOCH,
        finished_at: UNIX_EPOCH,
        duration: Duration::ZERO,
    }
}

fn line(id: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Record::new(&outcome(id), Role::Outcomes)).unwrap();
    line.push(b'\n');
    line
}

#[test]
fn complete_len_keeps_whole_records_and_cuts_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = line("a");
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("empty", vec![], 0),
        ("an empty line", b"\n".to_vec(), 0),
        ("one record", a.clone(), a.len()),
        ("two records", [&a[..], &a[..]].concat(), 2 * a.len()),
        ("a half line", [&a[..], b"{\"id\":"].concat(), a.len()),
        ("a garbage line", [&a[..], b"garbage\n"].concat(), a.len()),
        ("an empty last line", [&a[..], b"\n"].concat(), a.len()),
        ("the first record without its newline", a[..a.len() - 1].to_vec(), 0),
        ("zeros over several chunks", [&a[..], &[0; 200_000]].concat(), a.len()),
        (
            "a long garbage line",
            [&a[..], &[b'x'; 200_000], b"\n"].concat(),
            a.len(),
        ),
    ];
    for (name, contents, expected) in cases {
        let file = dir.path().join("f");
        fs::write(&file, &contents).unwrap();
        let mut opened = File::open(&file).unwrap();
        assert_eq!(
            complete_len(&mut opened, contents.len() as u64).unwrap(),
            expected as u64,
            "{name}"
        );
    }
}

#[test]
fn what_a_failed_write_left_is_cut_before_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outcomes.jsonl");
    let mut sink = JsonlSink::open(JsonlConfig::new(&path, Role::Outcomes)).unwrap();
    sink.write(&[outcome("a")]).unwrap();
    // As if a write had failed half-way and the cut back failed too.
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"id\":\"half")
        .unwrap();
    sink.active.as_mut().unwrap().dirty = true;
    assert_eq!(sink.records().unwrap().len(), 1, "records stop at the last whole batch");

    sink.write(&[outcome("b")]).unwrap();
    assert_eq!(fs::read(&path).unwrap(), [line("a"), line("b")].concat());
}

#[test]
fn rotated_names_append_the_number() {
    assert_eq!(rotated(Path::new("state/out.jsonl"), 2), Path::new("state/out.jsonl.2"));
    assert_eq!(parent_dir(Path::new("out.jsonl")), Path::new("."));
}
