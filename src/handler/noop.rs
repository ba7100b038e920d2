//! `noop`: done at once, with an empty output. For dry runs and benchmarks.

use std::sync::Arc;

use super::node::Nodes;
use super::{handler_keys, BatchHandler, BatchReply, CallContext, Failure, Handler, HandlerAt, HandlerKind};
use crate::item::Item;
use crate::spec::{self, Check};

/// A handler that does nothing and always succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Handler for Noop {
    fn handle(&self, _ctx: &CallContext<'_>, _item: &Item) -> Result<String, Failure> {
        Ok(String::new())
    }

    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

impl BatchHandler for Noop {
    fn handle_batch(&self, _ctx: &CallContext<'_>, _items: &[Item]) -> Result<BatchReply, Failure> {
        Ok(BatchReply::AllDone)
    }
}

handler_keys! {
    /// `handler: {kind: noop}` — done at once; for dry runs.
    NoopKeys {}
}

/// The `noop` handler's config: nothing but its policy keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoopConfig;

impl HandlerKind for NoopConfig {
    const NAME: &'static str = "noop";
    type Keys = NoopKeys;

    fn build(_keys: NoopKeys, _at: &HandlerAt, _check: &mut Check) -> spec::Result<Self> {
        Ok(NoopConfig)
    }

    fn effective(&self) -> serde_yaml::Value {
        crate::spec::effective::map([("kind", Self::NAME.into())])
    }

    fn start(&self, _nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        Ok(Arc::new(Noop))
    }
}
