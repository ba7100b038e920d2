//! `source: {kind: redis_stream}` in the config: its keys, checks and
//! effective print.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml::Value;

use super::RedisStreamSource;
use crate::redis_conn::Target;
use crate::sink::TableAck;
use crate::source::{Run, Source, SourceAt, SourceKind};
use crate::spec::effective::{dur, map, path};
use crate::spec::{self, absolute, Check, Dur, MAX_DURATION};

/// Defaults (SPEC §3.14 and the reference config.yaml).
pub const DEFAULT_STREAM: &str = "lote:work";
pub const DEFAULT_GROUP: &str = "lote";
pub const DEFAULT_CLAIM_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_DELIVERIES: u64 = 5;
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
pub const DEFAULT_RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// The shortest `claim_after`, `block` and `reclaim_every` accepted.
const SHORTEST: Duration = Duration::from_millis(100);

/// `source: {kind: redis_stream}` — one share of a Redis stream read by a
/// fleet of instances in one consumer group.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamKeys {
    #[serde(rename = "kind", default)]
    _kind: IgnoredAny,
    /// redis://HOST:PORT/DB, rediss:// for TLS. No password in it.
    pub url: Option<String>,
    /// The work stream. Default lote:work.
    pub stream: Option<String>,
    /// The consumer group all instances share. Default lote.
    pub group: Option<String>,
    /// This instance's name in the group, stable across restarts. Default:
    /// the host name.
    pub consumer: Option<String>,
    /// An entry pending this long on a consumer that stopped renewing it is
    /// taken over. Default 60s.
    pub claim_after: Option<Dur>,
    /// Deliveries after which an entry is dead-lettered. Default 5.
    pub max_deliveries: Option<u64>,
    /// The password (or the ACL user's), first line of this file.
    pub password_file: Option<PathBuf>,
    /// How long an idle read waits in Redis for new entries. Default 1s.
    pub block: Option<Dur>,
    /// How often to look for entries to take over. Default 5s.
    pub reclaim_every: Option<Dur>,
}

/// The checked `source: {kind: redis_stream}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStreamConfig {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub claim_after: Duration,
    pub max_deliveries: u64,
    /// Absolute.
    pub password_file: Option<PathBuf>,
    pub block: Duration,
    pub reclaim_every: Duration,
}

impl RedisStreamConfig {
    /// A config with the defaults, for `url` and `consumer`.
    pub fn new(url: impl Into<String>, consumer: impl Into<String>) -> Self {
        RedisStreamConfig {
            url: url.into(),
            stream: DEFAULT_STREAM.into(),
            group: DEFAULT_GROUP.into(),
            consumer: consumer.into(),
            claim_after: DEFAULT_CLAIM_AFTER,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            password_file: None,
            block: DEFAULT_BLOCK,
            reclaim_every: DEFAULT_RECLAIM_EVERY,
        }
    }

    /// Where redis-server is.
    pub fn target(&self) -> Result<Target, String> {
        Target::parse(&self.url, self.password_file.clone())
    }
}

/// This host's name: the default consumer.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A stream, group or consumer name ([`crate::redis_conn::check_name`]).
fn name(check: &Check, key: &str, value: String) -> spec::Result<String> {
    crate::redis_conn::check_name(&value).or_else(|why| check.err(key, why))?;
    Ok(value)
}

fn at_least(check: &Check, key: &str, value: Duration, min: Duration) -> spec::Result<Duration> {
    if value < min {
        return check.err(key, format!("is {value:?}, below {min:?}; expected e.g. 1s"));
    }
    check.at_most(key, value, MAX_DURATION)
}

impl SourceKind for RedisStreamConfig {
    const NAME: &'static str = "redis_stream";
    type Keys = RedisStreamKeys;

    fn build(k: RedisStreamKeys, at: &SourceAt, check: &Check) -> spec::Result<Self> {
        let Some(url) = k.url else {
            return check.err(
                "source.url",
                "is missing; expected where redis-server is, e.g. redis://127.0.0.1:6379/0",
            );
        };
        let password_file = match k.password_file {
            Some(file) => {
                check.path("source.password_file", &file)?;
                Some(absolute(at.state_dir, &file))
            }
            None => None,
        };
        Target::parse(&url, None).or_else(|why| check.err("source.url", why))?;
        let consumer = match k.consumer {
            Some(c) => c,
            None => match host_name() {
                Some(host) => host,
                None => {
                    return check.err(
                        "source.consumer",
                        "is missing and the host name cannot be read; give each instance a stable name",
                    )
                }
            },
        };
        let max_deliveries = k.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES);
        check.count("source.max_deliveries", max_deliveries, 1..=1000)?;
        Ok(RedisStreamConfig {
            url,
            stream: name(
                check,
                "source.stream",
                k.stream.unwrap_or_else(|| DEFAULT_STREAM.into()),
            )?,
            group: name(check, "source.group", k.group.unwrap_or_else(|| DEFAULT_GROUP.into()))?,
            consumer: name(check, "source.consumer", consumer)?,
            claim_after: at_least(
                check,
                "source.claim_after",
                k.claim_after.map_or(DEFAULT_CLAIM_AFTER, |d| d.0),
                SHORTEST,
            )?,
            max_deliveries,
            password_file,
            block: at_least(check, "source.block", k.block.map_or(DEFAULT_BLOCK, |d| d.0), SHORTEST)?
                .min(Duration::from_secs(60)),
            reclaim_every: at_least(
                check,
                "source.reclaim_every",
                k.reclaim_every.map_or(DEFAULT_RECLAIM_EVERY, |d| d.0),
                SHORTEST,
            )?,
        })
    }

    fn effective(&self) -> Value {
        map([
            ("kind", Self::NAME.into()),
            ("url", self.url.clone().into()),
            ("stream", self.stream.clone().into()),
            ("group", self.group.clone().into()),
            ("consumer", self.consumer.clone().into()),
            ("claim_after", dur(self.claim_after)),
            ("max_deliveries", self.max_deliveries.into()),
            ("password_file", self.password_file.as_deref().map_or(Value::Null, path)),
            ("block", dur(self.block)),
            ("reclaim_every", dur(self.reclaim_every)),
        ])
    }

    fn on_disk(&self, check: &mut Check) -> spec::Result<()> {
        let target = self.target().or_else(|why| check.err("source.url", why))?;
        target
            .password()
            .or_else(|why| check.err("source.password_file", why))?;
        Ok(())
    }

    fn open(&self, stream: bool) -> Result<Arc<dyn Source>, String> {
        let source = RedisStreamSource::open_without_renewer(self.clone(), stream)
            .map_err(|e| format!("opening the redis_stream source: {e}"))?;
        Ok(Arc::new(source))
    }

    fn open_for_run(&self, run: &Run) -> Result<(Arc<dyn Source>, Option<TableAck>), String> {
        let source = RedisStreamSource::open(self.clone(), run.stream)
            .map_err(|e| format!("opening the redis_stream source: {e}"))?;
        Ok((Arc::new(source), None))
    }
}
