//! The Redis side of the redis_stream source, one function per command or
//! reply: group setup, delivery counts, XAUTOCLAIM's reply, an entry as an
//! item, a dead letter's fields.

use std::collections::HashMap;

use redis::Value;

use super::RedisStreamConfig;
use crate::item::{Item, Outcome, Priority};
use crate::redis_conn::{Entry, Link, LinkError};

/// A dead letter on its way to `<stream>:dead`: the entry id and the fields.
pub(super) type DeadLetter = (String, Vec<(String, Vec<u8>)>);

/// The item of `entry` (delivered `n` times), and why it is poison if it is.
pub(super) fn entry_item(entry: &Entry, n: u64, max_deliveries: u64) -> (Item, Option<String>) {
    let id = match entry.field("id") {
        Some(id) => String::from_utf8_lossy(id).into_owned(),
        None => entry.id.clone(),
    };
    let payload = entry.field("payload").unwrap_or_default().to_vec();
    let priority: Result<Option<Priority>, String> = match entry.field("priority") {
        None => Ok(None),
        Some(p) => std::str::from_utf8(p)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "entry {}: priority `{}` is not a whole number",
                    entry.id,
                    String::from_utf8_lossy(p)
                )
            }),
    };
    let why = if n > max_deliveries {
        Some(format!(
            "entry {} was delivered {n} times, more than max_deliveries {max_deliveries}: \
             it was taken by instances that died or stalled on it",
            entry.id
        ))
    } else {
        priority.as_ref().err().cloned()
    };
    let item = match &why {
        Some(why) => Item::defective(id, payload, why.clone()),
        None => Item::new(id, payload),
    };
    let item = match priority {
        Ok(Some(p)) => item.with_priority(p),
        _ => item,
    };
    let poison = why.filter(|_| n > max_deliveries);
    (item, poison)
}

/// `XGROUP CREATE … 0 MKSTREAM`; an existing group is fine. From `0`, not
/// `$`: work published before the first instance ever started is work too
/// (with `$` it would be skipped without a trace).
pub(super) fn create_group(link: &mut Link, c: &RedisStreamConfig) -> Result<(), LinkError> {
    let created = link.run(|conn| {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&c.stream)
            .arg(&c.group)
            .arg("0")
            .arg("MKSTREAM")
            .exec(conn)
    });
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Ok(()) => {
            log::info!("created consumer group {} on stream {}", c.group, c.stream);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// How many times each of `entries` was delivered (XPENDING per id, one
/// pipeline).
pub(super) fn delivery_counts(
    link: &mut Link,
    c: &RedisStreamConfig,
    entries: &[Entry],
) -> Result<HashMap<String, u64>, LinkError> {
    if entries.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    for e in entries {
        pipe.cmd("XPENDING")
            .arg(&c.stream)
            .arg(&c.group)
            .arg(&e.id)
            .arg(&e.id)
            .arg(1);
    }
    let replies: Vec<Value> = link.run(|conn| pipe.query(conn))?;
    let mut counts = HashMap::new();
    for reply in replies {
        // [[id, consumer, idle ms, deliveries]] (empty: acked meanwhile).
        if let Value::Array(rows) = reply {
            for row in rows {
                if let Value::Array(f) = row {
                    if let (Some(Value::BulkString(id)), Some(Value::Int(n))) = (f.first(), f.get(3)) {
                        counts.insert(String::from_utf8_lossy(id).into_owned(), (*n).max(1) as u64);
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// XAUTOCLAIM's `[next, entries, deleted]`.
pub(super) fn autoclaim_reply(reply: Value) -> Result<(String, Vec<Entry>), String> {
    let Value::Array(mut parts) = reply else {
        return Err(format!("XAUTOCLAIM: expected an array, got {reply:?}"));
    };
    if parts.len() < 2 {
        return Err(format!("XAUTOCLAIM: expected [next, entries, …], got {parts:?}"));
    }
    let entries = crate::redis_conn::entry_list(parts.remove(1))?;
    let next = crate::redis_conn::text(parts.remove(0))?;
    Ok((next, entries))
}

/// A reply that did not parse: the connection is not trusted further.
pub(super) fn parse<T>(link: &mut Link, parsed: Result<T, String>) -> Result<T, LinkError> {
    parsed.map_err(|why| link.reset(&format!("an unexpected reply from redis: {why}")))
}

/// The fields of a `<stream>:dead` entry.
pub(super) fn dead_fields(
    o: &Outcome,
    entry: &str,
    deliveries: u64,
    reason: &str,
    c: &RedisStreamConfig,
) -> Vec<(String, Vec<u8>)> {
    vec![
        ("id".into(), o.item.id.clone().into_bytes()),
        ("entry".into(), entry.as_bytes().to_vec()),
        ("payload".into(), o.item.payload.clone()),
        ("priority".into(), o.item.priority.to_string().into_bytes()),
        ("reason".into(), reason.as_bytes().to_vec()),
        ("deliveries".into(), deliveries.to_string().into_bytes()),
        ("consumer".into(), c.consumer.as_bytes().to_vec()),
    ]
}
