//! The lines source against real files (SPEC §3.6, §3.9).
//!
//! Standard input (`path: "-"`) is the same reader over another handle; it
//! cannot be fed from inside the test process, so the daemon's integration
//! tests cover it by running the binary with a pipe.

use std::fs;
use std::io::Write;
use std::path::Path;

use lote::item::{Item, DEFAULT_PRIORITY};
use lote::source::lines::{LinesConfig, LinesFormat, LinesSource};
use lote::source::{Pull, ReturnReason, Source};

fn file(dir: &Path, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join("input");
    fs::write(&path, content).unwrap();
    path
}

fn ndjson(path: &Path) -> LinesConfig {
    LinesConfig {
        format: LinesFormat::Ndjson,
        ..LinesConfig::new(path)
    }
}

fn items(pull: Pull) -> Vec<Item> {
    match pull {
        Pull::Items(items) => items,
        other => panic!("items expected, got {other:?}"),
    }
}

/// Everything the source yields, pulling `max` at a time.
fn drain(source: &LinesSource, max: usize) -> Vec<Item> {
    let mut all = Vec::new();
    loop {
        match source.pull(max).unwrap() {
            Pull::Items(items) => {
                assert!(!items.is_empty() && items.len() <= max);
                all.extend(items);
            }
            Pull::Idle => panic!("a file of lines is never idle"),
            Pull::Exhausted => return all,
        }
    }
}

fn ids(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

#[test]
fn text_lines_are_items_numbered_by_line_and_empty_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        b"first\n\nthird\r\n\n\nsixth \xff bytes\nlast without newline",
    );
    let source = LinesSource::open(LinesConfig::new(&path)).unwrap();
    let first = items(source.pull(2).unwrap());
    assert_eq!(ids(&first), vec!["1", "3"]);
    assert_eq!(first[1].payload, b"third");
    let rest = items(source.pull(10).unwrap());
    assert_eq!(ids(&rest), vec!["6", "7"]);
    assert_eq!(rest[0].payload, b"sixth \xff bytes");
    assert_eq!(rest[1].payload, b"last without newline");
    assert!(rest
        .iter()
        .all(|i| i.priority == DEFAULT_PRIORITY && i.defect.is_none()));
    assert_eq!(source.pull(10).unwrap(), Pull::Exhausted);
    assert_eq!(source.pull(10).unwrap(), Pull::Exhausted);
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), b"\xEF\xBB\xBF{\"payload\": \"x\"}\n");
    let source = LinesSource::open(ndjson(&path)).unwrap();
    let pulled = drain(&source, 10);
    assert_eq!(pulled[0].defect, None);
    assert_eq!(pulled[0].payload, b"x");
}

#[test]
fn ndjson_lines_carry_id_priority_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        br#"{"id": "reading-1", "priority": 2, "payload": "plain text"}
{"id": 42, "payload": {"temp": 21.5, "tags": ["a", "b"]}}

{"priority": -3, "payload": [1, 2, 3]}
   
{"payload": "no id", "extra": "ignored"}
{"id": null, "priority": null, "payload": null}
"#,
    );
    let source = LinesSource::open(ndjson(&path)).unwrap();
    let pulled = drain(&source, 3);
    assert!(pulled.iter().all(|i| i.defect.is_none()), "{pulled:?}");
    let summary: Vec<(&str, i32, &[u8])> = pulled
        .iter()
        .map(|i| (i.id.as_str(), i.priority, i.payload.as_slice()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("reading-1", 2, &b"plain text"[..]),
            ("42", DEFAULT_PRIORITY, br#"{"tags":["a","b"],"temp":21.5}"#),
            ("4", -3, b"[1,2,3]"),
            ("6", DEFAULT_PRIORITY, b"no id"),
            ("7", DEFAULT_PRIORITY, b"null"),
        ]
    );
}

#[test]
fn a_malformed_ndjson_line_is_defective_and_the_next_lines_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        br#"{"id": "a", "payload": "ok"}
{"id": "b", "payload": "unterminated
{"id": "c", "priority": "urgent", "payload": "x"}
["not", "an", "object"]
{"id": "e", "payload": "fine"}
"#,
    );
    let source = LinesSource::open(ndjson(&path)).unwrap();
    let pulled = drain(&source, 10);
    assert_eq!(ids(&pulled), vec!["a", "2", "3", "4", "e"]);
    assert_eq!(pulled[0].defect, None);
    assert_eq!(pulled[4].defect, None);
    assert_eq!(pulled[4].payload, b"fine");
    for (item, line, detail) in [
        (&pulled[1], 2, "EOF while parsing a string"),
        (&pulled[2], 3, "\"priority\" must be an integer, not a string"),
        (&pulled[3], 4, "it is an array"),
    ] {
        let defect = item.defect.as_deref().expect("defective");
        let prefix = format!("line {line} is not a JSON object with id/priority/payload: ");
        assert!(defect.starts_with(&prefix), "{defect}");
        assert!(defect.contains(detail), "{defect}");
    }
    // The raw line travels with the defect, for the dead-letter sink.
    assert_eq!(pulled[3].payload, br#"["not", "an", "object"]"#);
}

#[test]
fn an_over_long_line_is_defective_and_its_neighbours_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut content = b"short\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 200_000));
    content.extend(b"\nexactly10!\r\nafter\n");
    let path = file(dir.path(), &content);
    let source = LinesSource::open(LinesConfig {
        max_bytes: 10,
        ..LinesConfig::new(&path)
    })
    .unwrap();
    let pulled = drain(&source, 10);
    assert_eq!(ids(&pulled), vec!["1", "2", "3", "4"]);
    assert_eq!(
        pulled[1].defect.as_deref(),
        Some("line 2 is 200000 bytes, over max_bytes 10")
    );
    assert!(pulled[1].payload.is_empty());
    // Ten bytes before `\r\n` is within the limit.
    assert_eq!(pulled[2].defect, None);
    assert_eq!(pulled[2].payload, b"exactly10!");
    assert_eq!(pulled[3].payload, b"after");
}

#[test]
fn given_back_items_are_served_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), b"a\nb\nc\nd\n");
    let source = LinesSource::open(LinesConfig::new(&path)).unwrap();
    let first = items(source.pull(2).unwrap());
    assert_eq!(ids(&first), vec!["1", "2"]);
    source.give_back(first, ReturnReason::Stopped).unwrap();
    assert_eq!(ids(&items(source.pull(1).unwrap())), vec!["1"]);
    assert_eq!(ids(&items(source.pull(3).unwrap())), vec!["2", "3", "4"]);
    assert_eq!(source.pull(3).unwrap(), Pull::Exhausted);
    // Even after the end of the file.
    source
        .give_back(vec![Item::new("3", "c")], ReturnReason::QueueFull)
        .unwrap();
    assert_eq!(ids(&items(source.pull(3).unwrap())), vec!["3"]);
    assert_eq!(source.pull(3).unwrap(), Pull::Exhausted);
}

#[test]
fn a_large_file_is_read_a_pull_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let mut out = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    for i in 1..=50_000 {
        writeln!(out, "{{\"id\": \"r{i}\", \"payload\": {i}}}").unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let source = LinesSource::open(ndjson(&path)).unwrap();
    let pulled = drain(&source, 64);
    assert_eq!(pulled.len(), 50_000);
    assert_eq!(pulled[49_999].id, "r50000");
    assert_eq!(pulled[49_999].payload, b"50000");
}

#[test]
fn the_source_needs_resume_and_cannot_take_items_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), b"a\n");
    let source = LinesSource::open(LinesConfig::new(&path)).unwrap();
    assert!(source.needs_resume());
    assert_eq!(source.describe(), format!("lines {}", path.display()));
    let error = source.requeue(vec![Item::new("1", "a")]).err().unwrap().to_string();
    assert!(
        error.contains("cannot take items back") && error.contains("spool"),
        "{error}"
    );
    assert_eq!(
        LinesSource::open(LinesConfig::stdin()).unwrap().describe(),
        "lines stdin"
    );
}

#[test]
fn open_names_a_missing_file_or_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.ndjson");
    let error = LinesSource::open(LinesConfig::new(&missing)).err().unwrap().to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
    let error = LinesSource::open(LinesConfig::new(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("is a directory"), "{error}");
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let config = LinesConfig::new("/tmp/x");
    assert_eq!(config.format, LinesFormat::Text);
    assert_eq!(config.max_bytes, 1024 * 1024);
    assert_eq!(LinesConfig::stdin().path, None);
}
