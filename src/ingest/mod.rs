//! The HTTP listener of local ingest (SPEC §3.11): `POST /items`,
//! `GET /status`, `GET /metrics`, `GET /healthz`, `GET /readyz` over
//! loopback TCP or a Unix socket, in front of a [`Backend`] (the daemon's
//! inbox and status) that this module knows only through the trait.
//!
//! - `config.rs`: the `http:` section ([`HttpKeys`] → [`HttpConfig`]).
//! - `http.rs`: one connection's HTTP/1.x: heads (httparse), bodies
//!   (Content-Length or chunked, bounded), answers.
//! - `serve.rs`: the endpoints, the token check, the listener's own metrics.
//! - `server.rs`: [`Listener`]: binding, the accept thread, admission, one
//!   thread per connection, drain and stop.
//!
//! # Invariants
//!
//! - At most `max_connections` connections are open; the next one is
//!   answered 503 + Retry-After by the accept thread and closed. No queue
//!   of connections or requests exists anywhere: the kernel's listen
//!   backlog is the only wait.
//! - A 202 is written only after [`Backend::accept`] returned `Ok`: every
//!   item of the request is durable. Any other answer promises nothing.
//! - A request's head and body must arrive within `read_timeout` of its
//!   first byte; an answer must be taken within `write_timeout`. Each
//!   connection has its own thread, so a slow client delays only itself.
//! - A body is never read past `max_body` (413), a head never past 16 KiB.
//! - A backend call that panics is answered 500; the connection thread and
//!   the server live on.
//! - Every 503 carries `Retry-After` (whole seconds, at least 1).
//!
//! # Why not tiny_http
//!
//! tiny_http 0.12's accept thread hands every connection to a task pool that
//! starts a thread whenever none is idle (no upper bound), and every request
//! to an unbounded `VecDeque` the application pops: it cannot refuse at
//! accept time, so a bound would have to sit behind its unbounded parts. It
//! sets no read or write timeouts, and its accept loop ends for good on the
//! first accept error (EMFILE under a connection flood stops the server).
//! A server of our own over std's listeners is ~600 lines with httparse (in
//! the tree already, through ureq) doing the parsing.

mod config;
mod http;
mod serve;
mod server;

#[cfg(test)]
mod tests;

pub use config::{HttpConfig, HttpKeys, Listen, MAX_CONNECTIONS};
pub use server::Listener;

use crate::item::JsonItem;

/// What the listener stands in front of: the daemon's inbox and status.
/// Called from the connection threads, concurrently.
pub trait Backend: Send + Sync + 'static {
    /// Makes all `items` durable in the inbox, or none (blocks until committed).
    fn accept(&self, items: Vec<JsonItem>) -> Result<Accepted, Refusal>;
    /// The live status document (JSON bytes).
    fn status(&self) -> Vec<u8>;
    /// Prometheus text of everything but the listener's own metrics.
    fn metrics(&self) -> String;
    /// Ok while accepting (not full, writer healthy, not draining); Err(why) otherwise.
    fn ready(&self) -> Result<(), String>;
}

/// What [`Backend::accept`] made durable: the 202's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Items newly in the inbox.
    pub accepted: usize,
    /// Items whose id was already pending or done: acknowledged, not queued again.
    pub duplicates: usize,
    /// Every item's id (given or made), in the request's order.
    pub ids: Vec<String>,
}

/// Why [`Backend::accept`] took none of the items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The inbox is at capacity → 503 + Retry-After.
    Full(String),
    /// One item is larger than the inbox's max_bytes → 413; the String says which and the limit.
    TooLarge(String),
    /// The daemon is stopping → 503 + Retry-After.
    Draining,
    /// The daemon's source is not an inbox: nothing takes items here → 404.
    NoInbox(String),
    /// Anything else (I/O) → 500 with the text.
    Failed(String),
}
