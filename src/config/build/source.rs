//! Stage two for `source:`: the kind's own build (see `source/kind.rs`).

use std::path::Path;
use std::time::Duration;

use crate::config::{PolicySpec, SinkSpec, SourceSpec};
use crate::source::{SourceAt, SourceKeys};
use crate::spec::{format_duration, Check, Result};

impl Check<'_> {
    pub(super) fn source(
        &self,
        raw: Option<SourceKeys>,
        state_dir: &Path,
        every: Option<Duration>,
        sink: &SinkSpec,
    ) -> Result<SourceSpec> {
        let Some(raw) = raw else {
            return Err(self.doc.whole("`source:` is missing").with_key("source"));
        };
        SourceSpec::build(raw, &SourceAt { state_dir, every, sink }, self)
    }
}

impl Check<'_> {
    /// A redis_stream source's `claim_after` must outlast every try of an
    /// item (handler.timeout × retry.attempts): else another instance could
    /// take over an entry whose claim this one failed to renew while its
    /// handler still runs. (The renewer makes that rare; this makes it
    /// impossible while Redis is reachable.)
    pub(super) fn claim_outlasts_calls(&mut self, source: &SourceSpec, policy: &PolicySpec) -> Result<()> {
        let SourceSpec::RedisStream(redis) = source else {
            return Ok(());
        };
        let attempts = policy.retry.attempts.max(1);
        let Some(timeout) = policy.timeout else {
            self.warnings.push(format!(
                "source.claim_after: handler.timeout is not set, so an item may run longer than claim_after ({}); \
                 its claim is renewed while this instance lives, but set handler.timeout to bound it",
                format_duration(redis.claim_after)
            ));
            return Ok(());
        };
        let all_tries = timeout.saturating_mul(attempts);
        if redis.claim_after <= all_tries {
            return self.err(
                "source.claim_after",
                format!(
                    "is {}, not longer than handler.timeout {} x retry.attempts {attempts} = {}: an item still \
                     running here could be taken over by another instance; expected more than {}",
                    format_duration(redis.claim_after),
                    format_duration(timeout),
                    format_duration(all_tries),
                    format_duration(all_tries)
                ),
            );
        }
        Ok(())
    }
}
