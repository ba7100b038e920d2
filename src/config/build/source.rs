//! Stage two for `source:`: the kind's own build (see `source/kind.rs`).

use std::path::Path;
use std::time::Duration;

use crate::config::{SinkSpec, SourceSpec};
use crate::source::{SourceAt, SourceKeys};
use crate::spec::{Check, Result};

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
