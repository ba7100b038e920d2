//! The http handler's batch call (SPEC §3.12): one POST of NDJSON for many
//! items, the reply read as per-item results (protocol in `handler/batch.rs`).

use super::send::Outgoing;
use super::HttpHandler;
use crate::handler::batch::{parse_reply, request_body};
use crate::handler::{BatchHandler, BatchReply, CallContext, Failure};
use crate::item::Item;

/// The request's content type.
const NDJSON: &str = "application/x-ndjson";

/// Bytes of a reply line besides the item's output: its id, `ok`, quoting.
const REPLY_LINE_EXTRA: usize = 256;

impl BatchHandler for HttpHandler {
    fn handle_batch(&self, ctx: &CallContext<'_>, items: &[Item]) -> Result<BatchReply, Failure> {
        let body = request_body(items);
        let per_line = self.config.output_limit.saturating_add(REPLY_LINE_EXTRA);
        let reply = self.exchange(
            ctx,
            Outgoing {
                body: &body,
                key: ctx.idempotency_key(),
                content_type: Some(NDJSON),
                read_limit: per_line.saturating_mul(items.len()),
            },
        )?;
        parse_reply(&reply)
    }
}
