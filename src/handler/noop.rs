//! `noop`: done at once, with an empty output. For dry runs and benchmarks.

use super::{CallContext, Failure, Handler};
use crate::item::Item;

/// A handler that does nothing and always succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Handler for Noop {
    fn handle(&self, _ctx: &CallContext<'_>, _item: &Item) -> Result<String, Failure> {
        Ok(String::new())
    }
}
