//! Batch calls (SPEC §3.12): one call for many items, and the NDJSON
//! protocol the `http` and `exec` kinds speak for it.
//!
//! # The protocol
//!
//! - **Request**: one line per item, `{"id": …, "priority": …, "payload": …}`,
//!   in the order the items left the queue. The payload is a JSON string of
//!   the item's bytes as they are (lote never reinterprets a payload: one
//!   that holds JSON arrives as that text, for the receiver to parse); a
//!   payload that is not UTF-8 goes as `"payload_base64"` instead.
//! - **Key**: [`batch_key`], the same for the same set of ids whatever their
//!   order, so a retried batch is recognisable downstream
//!   (`Idempotency-Key`). A retry that re-sends fewer items has a new key.
//! - **Reply**: an empty body means every item is done. Otherwise one line
//!   per item, `{"id", "ok": true|false, "retryable": true|false, "error",
//!   "output"}`; `retryable` defaults to true (a failure the receiver did not
//!   classify is tried again, within the retry policy, rather than dropped),
//!   `output` may be any JSON (a string is kept as it is, anything else as
//!   its JSON text). An item the reply does not name is a retryable failure.
//!   A line that is not such an object fails the whole call, retryably: the
//!   receiver is broken, and the breaker should hear of it. A line naming an
//!   id not in the batch is ignored with a warning. Two items of one batch
//!   with the same id get the same result.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{CallContext, Failure, Handler};
use crate::item::Item;

/// Takes many items in one call. Called from worker threads with no lock
/// held; one value serves every worker.
pub trait BatchHandler: Send + Sync {
    /// Runs one call for `items` (never empty). `Err`: the whole call failed
    /// (every item fails alike, retryable or not); `Ok`: the items' own
    /// results.
    fn handle_batch(&self, ctx: &CallContext<'_>, items: &[Item]) -> Result<BatchReply, Failure>;
}

impl<F> BatchHandler for F
where
    F: Fn(&CallContext<'_>, &[Item]) -> Result<BatchReply, Failure> + Send + Sync,
{
    fn handle_batch(&self, ctx: &CallContext<'_>, items: &[Item]) -> Result<BatchReply, Failure> {
        self(ctx, items)
    }
}

/// What a batch call said about its items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchReply {
    /// Every item done, with an empty output.
    AllDone,
    /// One result per item named; an item not named is a retryable failure.
    Each(Vec<ItemReply>),
}

/// One item's result in a [`BatchReply::Each`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemReply {
    pub id: String,
    /// The output, or why it failed.
    pub result: Result<String, Failure>,
}

impl BatchReply {
    /// Each item's result, in `items`' order. An item the reply does not name
    /// gets a retryable failure; a named id not in `items` is logged.
    pub fn results(self, items: &[Item]) -> Vec<Result<String, Failure>> {
        let replies = match self {
            BatchReply::AllDone => return items.iter().map(|_| Ok(String::new())).collect(),
            BatchReply::Each(replies) => replies,
        };
        let mut by_id: HashMap<String, Result<String, Failure>> =
            replies.into_iter().map(|r| (r.id, r.result)).collect();
        let results = items
            .iter()
            .map(|item| match by_id.get(&item.id) {
                Some(result) => result.clone(),
                None => Err(Failure::retryable("the batch reply did not name this item")),
            })
            .collect();
        by_id.retain(|id, _| !items.iter().any(|item| &item.id == id));
        if let Some(stray) = by_id.keys().next() {
            log::warn!(
                "a batch reply named {} id(s) that were not in the batch (e.g. {stray:?}); ignored",
                by_id.len()
            );
        }
        results
    }
}

/// The idempotency key of a batch: `batch-` and 32 hex digits of the
/// SHA-256 of its ids, sorted and newline-separated. The same set of ids
/// gives the same key.
pub fn batch_key(items: &[Item]) -> String {
    let mut ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
    ids.sort_unstable();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for id in ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finish();
    let mut key = String::with_capacity(38);
    key.push_str("batch-");
    push_hex(&mut key, &digest.as_ref()[..16]);
    key
}

/// Appends `bytes` as lowercase hex, two digits each, with no allocation
/// (the batch key; the cache's payload-hash key, on every call).
pub(super) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// The request body: one NDJSON line per item.
pub(crate) fn request_body(items: &[Item]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        id: &'a str,
        priority: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_base64: Option<String>,
    }
    let size: usize = items.iter().map(|item| item.payload.len() + item.id.len() + 48).sum();
    let mut body = Vec::with_capacity(size);
    for item in items {
        let (payload, payload_base64) = match std::str::from_utf8(&item.payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&item.payload)),
            ),
        };
        let line = Line {
            id: &item.id,
            priority: item.priority,
            payload,
            payload_base64,
        };
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_writer(&mut body, &line).expect("a batch line serializes");
        body.push(b'\n');
    }
    body
}

/// A reply body (an http 2xx body, an exec child's stdout) as a
/// [`BatchReply`]; a malformed line is a retryable failure of the call.
pub(crate) fn parse_reply(body: &[u8]) -> Result<BatchReply, Failure> {
    #[derive(Deserialize)]
    struct Line<'a> {
        id: String,
        ok: bool,
        retryable: Option<bool>,
        error: Option<String>,
        #[serde(borrow)]
        output: Option<&'a RawValue>,
    }
    let mut replies = Vec::new();
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(line).map_err(|e| {
            Failure::retryable(format!(
                "batch reply line {} is not {{\"id\", \"ok\", …}}: {e}",
                index + 1
            ))
        })?;
        let result = if line.ok {
            Ok(match line.output {
                None => String::new(),
                Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                    Ok(text) => text,
                    Err(_) if raw.get() == "null" => String::new(),
                    Err(_) => raw.get().to_string(),
                },
            })
        } else {
            let error = line
                .error
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| "the batch receiver said not ok, without an error".to_string());
            Err(match line.retryable {
                Some(false) => Failure::fatal(error),
                _ => Failure::retryable(error),
            })
        };
        replies.push(ItemReply { id: line.id, result });
    }
    Ok(if replies.is_empty() {
        BatchReply::AllDone
    } else {
        BatchReply::Each(replies)
    })
}

/// A batch closure as a [`Handler`]: [`batch_fn`].
pub struct BatchFn<F>(pub F);

/// Makes a handler of a batch closure, for a session with `batch` set. It
/// also serves a one-item call, as a batch of one.
pub fn batch_fn<F>(f: F) -> BatchFn<F>
where
    F: Fn(&CallContext<'_>, &[Item]) -> Result<BatchReply, Failure> + Send + Sync,
{
    BatchFn(f)
}

impl<F> Handler for BatchFn<F>
where
    F: Fn(&CallContext<'_>, &[Item]) -> Result<BatchReply, Failure> + Send + Sync,
{
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let items = std::slice::from_ref(item);
        let reply = (self.0)(ctx, items)?;
        reply.results(items).pop().expect("one result per item")
    }

    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(ids: &[&str]) -> Vec<Item> {
        ids.iter().map(|id| Item::new(*id, format!("p-{id}"))).collect()
    }

    #[test]
    fn the_key_depends_on_the_set_of_ids_only() {
        let mut hex = String::from("x");
        push_hex(&mut hex, &[0x00, 0xab, 0x7f, 0x10]);
        assert_eq!(hex, "x00ab7f10");
        let a = batch_key(&items(&["1", "2", "3"]));
        assert_eq!(a, batch_key(&items(&["3", "1", "2"])));
        assert_ne!(a, batch_key(&items(&["1", "2"])));
        // Not fooled by ids that run together.
        assert_ne!(batch_key(&items(&["1", "23"])), batch_key(&items(&["12", "3"])));
        assert_eq!(a.len(), 38);
        assert!(a.starts_with("batch-"));
    }

    #[test]
    fn the_request_is_one_line_per_item_and_binary_goes_base64() {
        let mut batch = items(&["a", "b"]);
        batch[1] = Item::new("b", vec![0xff, 0x00]).with_priority(2);
        let body = String::from_utf8(request_body(&batch)).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["id"], "a");
        assert_eq!(first["payload"], "p-a");
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["priority"], 2);
        assert_eq!(second["payload_base64"], "/wA=");
        assert!(second.get("payload").is_none());
    }

    #[test]
    fn replies_give_each_item_its_result() {
        assert_eq!(parse_reply(b"").unwrap(), BatchReply::AllDone);
        assert_eq!(parse_reply(b" \n\n").unwrap(), BatchReply::AllDone);
        let body = br#"{"id":"a","ok":true,"output":"fine"}
{"id":"b","ok":false,"retryable":false,"error":"bad reading"}
{"id":"c","ok":false,"error":"busy"}
{"id":"d","ok":true,"output":{"n":1}}
{"id":"zz","ok":true}
"#;
        let results = parse_reply(body).unwrap().results(&items(&["a", "b", "c", "d", "e"]));
        assert_eq!(results[0], Ok("fine".to_string()));
        assert_eq!(results[1], Err(Failure::fatal("bad reading")));
        assert_eq!(results[2], Err(Failure::retryable("busy")));
        assert_eq!(results[3], Ok(r#"{"n":1}"#.to_string()));
        assert!(results[4].as_ref().unwrap_err().is_retryable());
        let bad = parse_reply(b"{\"id\":\"a\",\"ok\":true}\nnot json\n").unwrap_err();
        assert!(bad.is_retryable() && bad.message.contains("line 2"), "{bad:?}");
        let missing_ok = parse_reply(b"{\"id\":\"a\"}").unwrap_err();
        assert!(missing_ok.message.contains("ok"), "{missing_ok:?}");
    }

    #[test]
    fn a_batch_closure_also_serves_one_item() {
        let handler = batch_fn(|_ctx: &CallContext<'_>, items: &[Item]| {
            Ok(BatchReply::Each(
                items
                    .iter()
                    .map(|item| ItemReply {
                        id: item.id.clone(),
                        result: Ok(format!("seen {}", item.id)),
                    })
                    .collect(),
            ))
        });
        let stop = crate::stop::StopHandle::new();
        let item = Item::new("x", "p");
        let ctx = CallContext::new(&item, 1, None, &stop);
        assert_eq!(handler.handle(&ctx, &item), Ok("seen x".to_string()));
        assert!(handler.as_batch().is_some());
    }
}
