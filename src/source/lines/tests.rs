use super::*;

fn lines(input: &[u8], keep: usize) -> Vec<(Vec<u8>, u64)> {
    // A tiny buffer, so lines cross buffer boundaries.
    let mut input = BufReader::with_capacity(3, input);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while let Some(len) = read_line(&mut input, &mut buf, keep).unwrap() {
        out.push((buf.clone(), len));
    }
    out
}

#[test]
fn read_line_strips_newlines_and_counts_what_it_drops() {
    assert_eq!(
        lines(b"ab\r\n\ncdefgh\nlast", 4),
        vec![
            (b"ab\r".to_vec(), 2),
            (b"".to_vec(), 0),
            (b"cdef".to_vec(), 6),
            (b"last".to_vec(), 4)
        ]
    );
    assert_eq!(lines(b"", 4), vec![]);
    assert_eq!(lines(b"\n", 4), vec![(b"".to_vec(), 0)]);
}

fn saved(items: &[Item]) -> Vec<Outcome> {
    let now = std::time::SystemTime::now();
    items
        .iter()
        .map(|item| Outcome {
            item: item.clone(),
            status: crate::item::Status::Done,
            attempts: 1,
            output: None,
            error: None,
            started_at: now,
            finished_at: now,
            duration: std::time::Duration::ZERO,
        })
        .collect()
}

#[test]
fn a_no_resume_pass_is_finished_only_at_the_end_with_every_outcome_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (input, identity) = (dir.path().join("input"), dir.path().join("sink.lines-file"));
    std::fs::write(&input, "a\nb\nc\nd\n").unwrap();
    let unfinished = || {
        let bytes = std::fs::read(&identity).unwrap();
        serde_json::from_slice::<FileIdentity>(&bytes).unwrap().pass_unfinished
    };
    let source = LinesSource::open(LinesConfig::new(&input))
        .unwrap()
        .tie_resume(&identity, false, true)
        .unwrap();
    assert!(unfinished(), "recorded as unfinished before anything ran");
    let Pull::Items(first) = source.pull(2).unwrap() else {
        panic!()
    };
    source.ack(&saved(&first)).unwrap();
    let Pull::Items(rest) = source.pull(10).unwrap() else {
        panic!()
    };
    assert!(matches!(source.pull(10).unwrap(), Pull::Exhausted));
    // At the end, but one outcome could not be saved: given back.
    source.ack(&saved(&rest[..1])).unwrap();
    source.give_back(rest[1..].to_vec(), ReturnReason::FlushFailed).unwrap();
    assert!(unfinished(), "finished with an outcome unsaved");
    let Pull::Items(again) = source.pull(10).unwrap() else {
        panic!()
    };
    assert_eq!(again.len(), 1);
    source.ack(&saved(&again)).unwrap();
    assert!(!unfinished(), "every line read and saved: finished");

    // A resuming run over it now resumes; over an unfinished one, not.
    assert!(LinesSource::open(LinesConfig::new(&input))
        .unwrap()
        .tie_resume(&identity, true, true)
        .is_ok());
    std::fs::write(&input, "other\n").unwrap();
    let source = LinesSource::open(LinesConfig::new(&input))
        .unwrap()
        .tie_resume(&identity, false, true)
        .unwrap();
    drop(source);
    let refused = LinesSource::open(LinesConfig::new(&input))
        .unwrap()
        .tie_resume(&identity, true, true)
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("--no-resume again"), "{refused}");
}

#[test]
fn ndjson_fields_have_their_types_checked() {
    let item = ndjson_item(3, br#"{"id": 7, "priority": 2, "payload": {"a": [1, 2]}}"#);
    assert_eq!(
        (item.id.as_str(), item.priority, item.payload.as_slice()),
        ("7", 2, &br#"{"a":[1,2]}"#[..])
    );
    assert!(item.defect.is_none());
    let item = ndjson_item(4, br#"{"payload": "text"}"#);
    assert_eq!(
        (item.id.as_str(), item.priority, item.payload.as_slice()),
        ("4", DEFAULT_PRIORITY, &b"text"[..])
    );
    for (raw, why) in [
        (
            &br#"{"id": true, "payload": 1}"#[..],
            "\"id\" must be a string or a number, not a boolean",
        ),
        (
            br#"{"priority": "high", "payload": 1}"#,
            "\"priority\" must be an integer, not a string",
        ),
        (
            br#"{"priority": 1.5, "payload": 1}"#,
            "must be a 32-bit integer, not 1.5",
        ),
        (br#"{"id": "x"}"#, "no \"payload\""),
        (br#"[1]"#, "it is an array"),
        (b"{oops", "key must be a string"),
    ] {
        let item = ndjson_item(9, raw);
        let defect = item.defect.as_deref().unwrap();
        assert!(defect.starts_with("line 9 is not a JSON object"), "{defect}");
        assert!(defect.contains(why), "{defect} lacks {why}");
        assert_eq!((item.id.as_str(), item.payload.as_slice()), ("9", raw));
    }
}
