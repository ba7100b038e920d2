//! The Prometheus text exposition format (0.0.4) of a [`Status`] and the
//! live latency histograms: what `GET /metrics` serves and what the
//! node_exporter textfile holds (SPEC §3.7).
//!
//! # Invariants
//!
//! - **Every family has `# HELP` and `# TYPE`** before its samples, and its
//!   samples are contiguous; names are `lote_…` in base units (`_seconds`),
//!   counters end in `_total`. `promtool check metrics` accepts the output
//!   with no lint problems (tests/observability.rs checks it).
//! - **A stable set of series.** The histograms always list the same `le`
//!   bounds ([`BOUNDS`]) and `+Inf`; enum gauges (`lote_state`,
//!   `lote_breaker_state`) list every state, 1 for the current one.
//! - **What is absent is absent.** Queue series exist only while a session
//!   runs (its queue is the session's, and so are the queue's counters: they
//!   restart at 0 each session, which `rate()` reads as a counter reset);
//!   breaker and writer series only if the daemon has one.
//! - **Buckets err low.** A histogram bucket that straddles an `le` bound is
//!   not counted under it (see [`HistogramSnapshot::count_at_most`]), so a
//!   `_bucket` may miss values less than 6.25 % below its bound; `_count`
//!   and `_sum` are exact.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{DaemonState, NodeStatus, Status};
use crate::metrics::{HistogramSnapshot, Metrics, SizesSnapshot};
use crate::source::IntakeStats;

/// The breaker's states, as `lote_breaker_state{state=…}` lists them.
const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// The `le` bounds of every latency histogram, from a 100 µs queue wait to a
/// 5-minute exec call, with the label text Prometheus shows for each.
pub const BOUNDS: [(&str, Duration); 14] = [
    ("0.0001", Duration::from_micros(100)),
    ("0.0005", Duration::from_micros(500)),
    ("0.001", Duration::from_millis(1)),
    ("0.005", Duration::from_millis(5)),
    ("0.01", Duration::from_millis(10)),
    ("0.05", Duration::from_millis(50)),
    ("0.1", Duration::from_millis(100)),
    ("0.5", Duration::from_millis(500)),
    ("1", Duration::from_secs(1)),
    ("5", Duration::from_secs(5)),
    ("10", Duration::from_secs(10)),
    ("30", Duration::from_secs(30)),
    ("60", Duration::from_secs(60)),
    ("300", Duration::from_secs(300)),
];

/// The text exposition of `status`, with the latency histograms read from
/// `metrics` now.
pub fn render(status: &Status, metrics: &Metrics) -> String {
    let mut out = Exposition::default();

    out.gauge(
        "lote_up",
        "1 while the daemon runs; 0 once it has stopped.",
        u64::from(status.state != "stopped"),
    );
    out.family("lote_build_info", "gauge", "The lote version, as a label; always 1.");
    out.sample("lote_build_info", &[("version", &status.version)], "1");
    out.states(
        "lote_state",
        "The daemon's state: 1 for the current one, 0 for the others.",
        &DaemonState::ALL.map(DaemonState::as_str),
        &status.state,
    );
    if let Some(started) = seconds_since_epoch(&status.started_at) {
        out.gauge_f64(
            "lote_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch.",
            started,
        );
    }
    out.counter("lote_sessions_total", "Sessions started.", status.sessions);

    let c = &status.counters;
    out.counter("lote_items_pulled_total", "Items taken from the source.", c.pulled);
    out.counter("lote_items_queued_total", "Items queued for the workers.", c.queued);
    out.family(
        "lote_items_total",
        "counter",
        "Items that reached an outcome or went back to the source, by outcome.",
    );
    for (outcome, n) in [
        ("done", c.done),
        ("failed", c.failed),
        ("skipped", c.skipped),
        ("returned", c.returned),
    ] {
        out.sample("lote_items_total", &[("outcome", outcome)], &n.to_string());
    }
    out.counter(
        "lote_retries_total",
        "Handler calls retried (attempts after the first).",
        c.retries,
    );
    out.counter(
        "lote_retry_after_capped_total",
        "Retry-After hints longer than retry.max_retry_after, capped to it.",
        c.retry_after_capped,
    );
    out.counter("lote_handler_panics_total", "Handler calls that panicked.", c.panics);
    out.counter(
        "lote_handler_timeouts_total",
        "Handler calls that ran past their timeout.",
        c.timeouts,
    );
    out.counter(
        "lote_batch_calls_total",
        "Batch calls made (handler.batch), retries of a smaller batch included.",
        c.batch_calls,
    );
    out.counter(
        "lote_batch_items_total",
        "Items sent in batch calls (an item retried counts again).",
        c.batch_items,
    );
    out.counter(
        "lote_breaker_opens_total",
        "Times a circuit breaker opened or reopened.",
        c.breaker_opens,
    );
    out.counter(
        "lote_commit_errors_total",
        "Chunks of outcomes the committer refused.",
        c.commit_errors,
    );
    out.counter(
        "lote_source_errors_total",
        "Failed pulls, give-backs or acknowledgements at the source.",
        c.source_errors,
    );

    out.gauge("lote_workers", "Worker threads per session.", status.workers.threads);
    out.gauge(
        "lote_workers_busy",
        "Workers inside a handler call now.",
        status.workers.busy,
    );
    out.gauge(
        "lote_workers_waiting",
        "Workers sleeping now in a retry back-off or a breaker pause.",
        status.workers.waiting,
    );

    if let Some(b) = &status.breaker {
        out.states(
            "lote_breaker_state",
            "The circuit breaker's state: 1 for the current one, 0 for the others.",
            &BREAKER_STATES,
            &b.state,
        );
        out.gauge(
            "lote_breaker_consecutive_failures",
            "Failures in a row in the breaker's current closed period.",
            u64::from(b.consecutive_failures),
        );
    }

    if let Some(q) = &status.queue {
        out.gauge("lote_queue_depth", "Work items queued now.", q.len);
        out.gauge("lote_queue_capacity", "Most work items the queue holds.", q.capacity);
        out.gauge(
            "lote_queue_high_water",
            "Most work items queued at once in this session.",
            q.high_water,
        );
        out.counter(
            "lote_queue_dropped_total",
            "Items dropped by a drop_* full mode in this session.",
            q.dropped,
        );
        out.counter(
            "lote_queue_rejected_total",
            "Items refused by the reject full mode in this session.",
            q.rejected,
        );
        out.counter(
            "lote_queue_timed_out_total",
            "Items refused because a blocking push timed out, in this session.",
            q.timed_out,
        );
        out.counter(
            "lote_queue_high_water_warnings_total",
            "Times the queue rose to 80% of its capacity or more in this session.",
            q.high_water_warnings,
        );
    }

    if let Some(writer) = &status.writer {
        let w = &writer.counters;
        out.gauge(
            "lote_writer_depth",
            "Outcomes handed to the writer and not yet durable.",
            writer.depth,
        );
        out.counter(
            "lote_writer_enqueued_total",
            "Outcomes handed to the writer.",
            w.enqueued,
        );
        out.counter("lote_writer_persisted_total", "Outcomes made durable.", w.persisted);
        out.counter(
            "lote_writer_failed_total",
            "Outcomes whose flush failed for good (their items given back).",
            w.failed,
        );
        out.counter(
            "lote_writer_unsaved_total",
            "Outcomes given up on (failed flushes, drain out of time); their items run again.",
            w.unsaved,
        );
        out.counter(
            "lote_writer_given_back_total",
            "Items handed back to their source because their outcome is unsaved.",
            w.given_back,
        );
        out.counter("lote_writer_retries_total", "Flush retries.", w.retries);
        out.counter("lote_writer_batches_total", "Batches made durable.", w.batches);
        out.counter(
            "lote_writer_failed_flushes_total",
            "Batches whose flush failed for good.",
            w.failed_flushes,
        );
        out.counter(
            "lote_writer_ack_errors_total",
            "Durable batches whose acknowledgement to the source failed.",
            w.ack_errors,
        );
        out.gauge_f64(
            "lote_writer_last_flush_seconds",
            "How long the last successful flush took.",
            seconds(writer.last_flush_ms),
        );
        out.gauge_f64(
            "lote_writer_oldest_unflushed_seconds",
            "How long the oldest outcome not yet durable has waited; 0 when all are durable.",
            seconds(writer.oldest_unflushed_ms.unwrap_or(0.0)),
        );
    }

    if let Some(inbox) = &status.inbox {
        if let Some(depth) = inbox.depth {
            out.gauge(
                "lote_inbox_depth",
                "Unfinished items in the inbox (pending + running).",
                depth,
            );
        }
        out.gauge(
            "lote_inbox_capacity",
            "The inbox's capacity (source.capacity).",
            inbox.capacity,
        );
        out.gauge(
            "lote_inbox_accepting",
            "1 while a push would be taken (below capacity, not stopping); else 0.",
            u64::from(inbox.accepting),
        );
        out.counter(
            "lote_inbox_accepted_total",
            "Items made durable in the inbox by pushes (HTTP, lote push in this process).",
            inbox.accepted,
        );
        out.counter(
            "lote_inbox_duplicates_total",
            "Pushed items whose id was already in the inbox: acknowledged, not queued again.",
            inbox.duplicates,
        );
        out.counter(
            "lote_inbox_refused_full_total",
            "Pushes refused whole because the inbox was at capacity.",
            inbox.refused_full,
        );
        out.counter(
            "lote_inbox_commits_total",
            "Group commits of pushes (one transaction and one fsync each).",
            inbox.commits,
        );
    }

    if let Some(redis) = &status.redis {
        let counters = [
            (
                "lote_redis_claimed_total",
                "New stream entries this instance read (XREADGROUP >).",
                redis.claimed,
            ),
            (
                "lote_redis_resumed_total",
                "Own pending entries read again after a restart or reconnect.",
                redis.resumed,
            ),
            (
                "lote_redis_reclaimed_total",
                "Entries taken over from other consumers (XAUTOCLAIM).",
                redis.reclaimed,
            ),
            (
                "lote_redis_acked_total",
                "Entries acknowledged (XACK) once their outcomes were durable.",
                redis.acked,
            ),
            (
                "lote_redis_dead_lettered_total",
                "Entries added to <stream>:dead (failed or past max_deliveries).",
                redis.dead_lettered,
            ),
            (
                "lote_redis_reconnects_total",
                "Connections to redis-server made again after a loss.",
                redis.reconnects,
            ),
        ];
        for (name, help, value) in counters {
            out.counter(name, help, value);
        }
        out.gauge(
            "lote_redis_pending",
            "The consumer group's pending entries, all instances (XPENDING), at the last renewal round.",
            redis.pending,
        );
        out.gauge(
            "lote_redis_connected",
            "1 while the reading connection to redis-server is up; else 0.",
            u64::from(redis.connected),
        );
    }

    nodes(&mut out, &status.nodes);

    out.histogram(
        "lote_queue_wait_seconds",
        "Time from queued to taken by a worker.",
        &metrics.queue_wait.snapshot(),
    );
    out.histogram(
        "lote_handler_seconds",
        "Time of one handler call (one attempt).",
        &metrics.handler_time.snapshot(),
    );
    out.histogram(
        "lote_end_to_end_seconds",
        "Time from pulled to outcome, retries included.",
        &metrics.end_to_end.snapshot(),
    );
    out.sizes(
        "lote_batch_size",
        "Items per batch call (handler.batch).",
        &metrics.batch_size.snapshot(),
    );
    out.text
}

/// The inbox intake's two histograms (rows per group commit, time per
/// commit), appended to [`render`]'s text by a daemon with an inbox.
pub fn inbox_histograms(stats: &IntakeStats) -> String {
    let mut out = Exposition::default();
    out.sizes(
        "lote_inbox_commit_rows",
        "Rows per group commit of pushes.",
        &stats.batch_rows.snapshot(),
    );
    out.histogram(
        "lote_inbox_commit_seconds",
        "Time of one group commit of pushes, its fsync included.",
        &stats.commit_time.snapshot(),
    );
    out.text
}

/// The handler tree's per-node families, one sample per node labelled by
/// its path (`node="handler.branches.sales"`); a policy's family only for
/// the nodes that carry it, and only if one does.
fn nodes(out: &mut Exposition, nodes: &[NodeStatus]) {
    type Read = fn(&NodeStatus) -> Option<f64>;
    let families: [(&str, &str, &str, Read); 9] = [
        (
            "lote_node_calls_total",
            "counter",
            "Calls of a handler node's kind (each attempt is one).",
            |n| Some(n.calls as f64),
        ),
        (
            "lote_node_failures_total",
            "counter",
            "Failed calls of a handler node.",
            |n| Some(n.failures as f64),
        ),
        (
            "lote_node_seconds_total",
            "counter",
            "Seconds spent in a handler node's calls.",
            |n| Some(n.latency_sum_seconds),
        ),
        (
            "lote_node_seconds_p99",
            "gauge",
            "A handler node's p99 call time in seconds.",
            |n| Some(n.latency.p99_ms / 1000.0),
        ),
        (
            "lote_node_cache_hits_total",
            "counter",
            "Calls a node's cache answered.",
            |n| n.cache_hits.map(|v| v as f64),
        ),
        (
            "lote_node_cache_misses_total",
            "counter",
            "Calls a node's cache did not hold.",
            |n| n.cache_misses.map(|v| v as f64),
        ),
        (
            "lote_node_bulkhead_rejected_total",
            "counter",
            "Calls a node's bulkhead turned away (full), as retryable failures.",
            |n| n.bulkhead_rejected.map(|v| v as f64),
        ),
        (
            "lote_node_fallbacks_total",
            "counter",
            "Calls a node's fallback answered.",
            |n| n.fallbacks.map(|v| v as f64),
        ),
        (
            "lote_node_walked_away_total",
            "counter",
            "Calls abandoned at their deadline (timeout_mode: walk_away).",
            |n| n.walked_away.map(|v| v as f64),
        ),
    ];
    for (name, kind, help, read) in families {
        let samples: Vec<(&str, f64)> = nodes.iter().filter_map(|n| Some((n.path.as_str(), read(n)?))).collect();
        if samples.is_empty() {
            continue;
        }
        out.family(name, kind, help);
        for (path, value) in samples {
            out.sample(name, &[("node", path)], &float(value));
        }
    }
}

/// The text being built; one method per kind of family.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    /// The `# HELP` and `# TYPE` lines that open a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.line(format_args!("# HELP {name} {}", escape(help, false)));
        self.line(format_args!("# TYPE {name} {kind}"));
    }

    /// One sample; `value` is already formatted.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        if labels.is_empty() {
            self.line(format_args!("{name} {value}"));
        } else {
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value, true)))
                .collect();
            self.line(format_args!("{name}{{{}}} {value}", labels.join(",")));
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        self.family(name, "counter", help);
        self.sample(name, &[], &value.to_string());
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], &value.to_string());
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], &float(value));
    }

    /// The enum idiom: one series per state, 1 for `current`. A state this
    /// version does not know still gets its series.
    fn states(&mut self, name: &str, help: &str, states: &[&str], current: &str) {
        self.family(name, "gauge", help);
        for state in states {
            let value = if *state == current { "1" } else { "0" };
            self.sample(name, &[("state", state)], value);
        }
        if !states.contains(&current) {
            self.sample(name, &[("state", current)], "1");
        }
    }

    /// A histogram with the fixed [`BOUNDS`], from a snapshot.
    /// A histogram of counts ([`Sizes`]).
    fn sizes(&mut self, name: &str, help: &str, s: &SizesSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in &s.cumulative {
            self.sample(&bucket, &[("le", &bound.to_string())], &count.to_string());
        }
        self.sample(&bucket, &[("le", "+Inf")], &s.count.to_string());
        self.sample(&format!("{name}_sum"), &[], &s.sum.to_string());
        self.sample(&format!("{name}_count"), &[], &s.count.to_string());
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (label, bound) in BOUNDS {
            self.sample(&bucket, &[("le", label)], &h.count_at_most(bound).to_string());
        }
        // `count` is the sum of the snapshot's buckets, so +Inf and _count
        // agree and stay at or above every bounded bucket.
        self.sample(&bucket, &[("le", "+Inf")], &h.count.to_string());
        self.sample(&format!("{name}_sum"), &[], &float(h.sum.as_secs_f64()));
        self.sample(&format!("{name}_count"), &[], &h.count.to_string());
    }
}

/// Escapes HELP text (backslash, newline) or, with `quote`, a label value
/// (backslash, double quote, newline), as the format asks.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            ch => out.push(ch),
        }
    }
    out
}

/// A float as Prometheus parses it: `+Inf`, `-Inf` and `NaN` spelled its
/// way; everything else in Rust's shortest round-trip form (never exponent
/// notation, which Prometheus would also accept).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        v.to_string()
    }
}

/// Milliseconds (to the microsecond, as [`Status`] holds them) as seconds,
/// without the float noise of a plain division (`0.000459`, not
/// `0.00045900000000000004`).
fn seconds(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1_000_000.0
}

/// An RFC 3339 timestamp as seconds since the Unix epoch.
fn seconds_since_epoch(rfc3339: &str) -> Option<f64> {
    let at: SystemTime = humantime::parse_rfc3339(rfc3339).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd", true), "a\\\\b\\\"c\\nd");
        assert_eq!(escape("a\\b\"c\nd", false), "a\\\\b\"c\\nd");
        let mut out = Exposition::default();
        out.sample("x", &[("a", "1\"2"), ("b", "z")], "3");
        assert_eq!(out.text, "x{a=\"1\\\"2\",b=\"z\"} 3\n");
    }

    #[test]
    fn floats_are_spelled_as_prometheus_reads_them() {
        assert_eq!(float(0.0), "0");
        assert_eq!(float(0.0015), "0.0015");
        assert_eq!(float(1e-7), "0.0000001");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(seconds(0.459)), "0.000459");
        assert_eq!(float(seconds(1234.5)), "1.2345");
    }

    #[test]
    fn bounds_ascend_and_match_their_labels() {
        for pair in BOUNDS.windows(2) {
            assert!(pair[0].1 < pair[1].1);
        }
        for (label, bound) in BOUNDS {
            assert_eq!(label.parse::<f64>().unwrap(), bound.as_secs_f64(), "{label}");
        }
    }

    #[test]
    fn unknown_states_still_get_a_series() {
        let mut out = Exposition::default();
        out.states("s", "h", &["a", "b"], "c");
        assert!(
            out.text
                .ends_with("s{state=\"a\"} 0\ns{state=\"b\"} 0\ns{state=\"c\"} 1\n"),
            "{}",
            out.text
        );
    }

    #[test]
    fn start_time_parses_from_rfc3339() {
        assert_eq!(seconds_since_epoch("1970-01-01T00:01:40.500Z"), Some(100.5));
        assert_eq!(seconds_since_epoch("yesterday"), None);
    }
}
