//! The effective config as YAML (`lote check`): every key with its value,
//! defaults filled in, paths absolute, in `config.yaml`'s layout. `null`
//! marks a key that is off (no deadline, no breaker, no textfile). Loading it
//! again gives an equal [`Config`].

use serde_yaml::Value;

use super::{Config, HttpConfig, SinkSpec};
use crate::spec::effective::{bytes, dur, map, opt_dur, path};

pub(super) fn to_yaml(c: &Config) -> String {
    let s = &c.session;
    let q = &s.queue;
    let top = map([
        ("state_dir", path(&c.state_dir)),
        ("log", Value::from(c.log.as_str())),
        (
            "session",
            map([
                ("threads", s.threads.into()),
                ("chunk", s.chunk.into()),
                ("chunk_wait", dur(s.chunk_wait)),
                ("max_items", s.max_items.into()),
                ("deadline", opt_dur(s.deadline)),
                ("every", opt_dur(c.every)),
                ("poll_every", dur(s.poll_interval)),
            ]),
        ),
        (
            "queue",
            map([
                ("capacity", q.capacity.into()),
                ("when_full", q.when_full.as_str().into()),
                ("block_timeout", opt_dur(q.block_timeout)),
            ]),
        ),
        ("source", c.source.effective()),
        ("handler", handler(c)),
        ("sink", sink(&c.sink, Some(c))),
        (
            "dead_letter",
            c.dead_letter
                .as_ref()
                .map_or_else(|| map([("kind", "none".into())]), |d| sink(d, None)),
        ),
        (
            "metrics",
            map([
                ("every", dur(c.metrics.every)),
                ("textfile", c.metrics.textfile.as_deref().map_or(Value::Null, path)),
                ("log_every", dur(c.metrics.log_every)),
            ]),
        ),
        ("http", c.http.as_ref().map_or(Value::Null, HttpConfig::effective)),
    ]);
    // Serializing a Value of strings, numbers and mappings cannot fail.
    serde_yaml::to_string(&top).unwrap_or_default()
}

fn handler(c: &Config) -> Value {
    let mut out = c.handler.effective();
    if let Value::Mapping(m) = &mut out {
        m.insert("qos".into(), c.session.qos.as_str().into());
        c.policy.effective_into(m, true);
        let batch = c.session.batch.as_ref().map_or(Value::Null, |b| {
            map([
                ("max_items", b.max_items.into()),
                ("max_bytes", bytes(b.max_bytes as u64)),
                ("max_wait", dur(b.max_wait)),
            ])
        });
        m.insert("batch".into(), batch);
    }
    out
}

/// A sink's keys; with the config, the writer's keys too (`sink:` only).
fn sink(spec: &SinkSpec, writer_of: Option<&Config>) -> Value {
    let mut out = spec.effective();
    if let (Some(c), Value::Mapping(m)) = (writer_of, &mut out) {
        let w = &c.writer;
        for (k, v) in [
            ("batch", Value::from(w.batch)),
            ("flush_every", dur(w.flush_every)),
            ("max_retries", w.max_retries.into()),
            ("drain_timeout", dur(w.drain_timeout)),
        ] {
            m.insert(k.into(), v);
        }
    }
    out
}
