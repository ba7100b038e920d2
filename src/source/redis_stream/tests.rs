//! Unit tests of what needs no server; the fleet itself is tested against a
//! real redis-server in tests/redis_stream.rs.

use super::*;

fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
    Entry {
        id: id.into(),
        fields: Some(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        ),
    }
}

#[test]
fn an_entry_gives_its_id_payload_and_priority_and_the_entry_id_when_it_has_no_id() {
    let (item, poison) = entry_item(
        &entry("5-0", &[("id", "job-1"), ("payload", "x"), ("priority", "2")]),
        1,
        5,
    );
    assert_eq!(
        (item.id.as_str(), &item.payload[..], item.priority),
        ("job-1", &b"x"[..], 2)
    );
    assert!(item.defect.is_none() && poison.is_none());
    let (item, _) = entry_item(&entry("6-0", &[("payload", "y")]), 1, 5);
    assert_eq!(
        (item.id.as_str(), item.priority),
        ("6-0", crate::item::DEFAULT_PRIORITY)
    );
}

#[test]
fn past_max_deliveries_an_entry_is_poison_and_a_bad_priority_is_a_defect() {
    let (item, poison) = entry_item(&entry("5-0", &[("id", "p")]), 6, 5);
    let why = poison.expect("poison");
    assert!(
        why.contains("delivered 6 times") && why.contains("max_deliveries 5"),
        "{why}"
    );
    assert_eq!(item.defect.as_deref(), Some(why.as_str()));
    let (_, poison) = entry_item(&entry("5-0", &[("id", "p")]), 5, 5);
    assert!(poison.is_none(), "the 5th delivery still runs");
    let (item, poison) = entry_item(&entry("7-0", &[("priority", "soon")]), 1, 5);
    assert!(poison.is_none());
    assert!(item.defect.unwrap().contains("priority `soon` is not a whole number"));
}

#[test]
fn the_renewer_runs_three_times_per_claim_after() {
    assert_eq!(renew::renew_every(Duration::from_secs(60)), Duration::from_secs(20));
    assert_eq!(renew::renew_every(Duration::from_millis(90)), Duration::from_millis(50));
}
