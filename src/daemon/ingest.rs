//! The daemon behind the HTTP listener (`http:`): [`Gate`] answers the
//! listener's [`Backend`] calls from what the threads share — the running
//! source's intake for `POST /items`, the live status for `GET /status` and
//! `GET /metrics`, and readiness for `GET /readyz`.
//!
//! The listener is started once, after the parts are built (a bind that
//! fails is a start error: exit 1 before `READY=1`), drains at the first
//! stop (new requests get 503, those in flight are answered), and is
//! stopped once the sessions are over, before the intake closes and the
//! writer drains: every 202 it sent is on disk by then. A reload applies
//! to the intake behind it (a new inbox is used at once); a changed `http:`
//! section needs a restart, and a reload says so.

use std::sync::Arc;
use std::time::Duration;

use crate::ingest::{Accepted, Backend, HttpConfig, Listener, Refusal};
use crate::item::JsonItem;
use crate::source::Refused;

use super::state::Shared;
use super::DaemonError;

/// How long the oldest outcome may wait to be made durable before the
/// writer counts as unhealthy for `GET /readyz`.
const WRITER_STALLED: Duration = Duration::from_secs(60);

/// See the module documentation.
pub(super) struct Gate {
    pub(super) shared: Arc<Shared>,
}

impl Backend for Gate {
    fn accept(&self, items: Vec<JsonItem>) -> Result<Accepted, Refusal> {
        if self.shared.stop.is_stopping() {
            return Err(Refusal::Draining);
        }
        let Some(intake) = self.shared.inputs.lock().intake.clone() else {
            return Err(Refusal::NoInbox(
                "this lote's source is not an inbox: POST /items needs `source: {kind: inbox}`".into(),
            ));
        };
        match intake.push(items) {
            Ok(admitted) => Ok(Accepted {
                accepted: admitted.accepted,
                duplicates: admitted.duplicates,
                ids: admitted.ids,
            }),
            Err(Refused::Full {
                unfinished,
                capacity,
                new,
            }) => Err(Refusal::Full(format!(
                "{unfinished} of {capacity} items unfinished, {new} more do not fit; try again later"
            ))),
            Err(refused @ Refused::TooLarge { .. }) => Err(Refusal::TooLarge(refused.to_string())),
            Err(Refused::Closed) => Err(Refusal::Draining),
            Err(Refused::Failed(why)) => Err(Refusal::Failed(why)),
        }
    }

    fn status(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(&self.shared.capture()).unwrap_or_default();
        json.push(b'\n');
        json
    }

    fn metrics(&self) -> String {
        let status = self.shared.capture();
        self.shared.metrics_text(&status)
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.stop.is_stopping() {
            return Err("lote is stopping".into());
        }
        let (intake, writer) = {
            let inputs = self.shared.inputs.lock();
            (inputs.intake.clone(), inputs.writer.clone())
        };
        if let Some(intake) = intake {
            let depth = intake.depth()?;
            if depth >= intake.capacity() {
                return Err(format!("the inbox is full ({depth} of {} items)", intake.capacity()));
            }
        }
        if let Some(age) = writer.and_then(|w| w.metrics().oldest_unflushed_age()) {
            if age > WRITER_STALLED {
                return Err(format!(
                    "the writer has not made an outcome durable for {}s (see the log)",
                    age.as_secs()
                ));
            }
        }
        Ok(())
    }
}

/// Starts the listener of `config`, with its token read now.
pub(super) fn start(config: &HttpConfig, shared: &Arc<Shared>) -> Result<Listener, DaemonError> {
    let token = config.read_token().map_err(DaemonError::Build)?;
    let gate = Arc::new(Gate {
        shared: Arc::clone(shared),
    });
    Listener::start(config, token, gate).map_err(|e| DaemonError::Build(format!("starting the http listener: {e}")))
}
