//! Composite handlers (SPEC §3.13, seed 004), for the library: several
//! calls per item, each a [`Handler`] of its own (a kind, a closure, or
//! another composite).
//!
//! - [`Parallel`]: named branches at once, on scoped threads (none outlives
//!   the call), merged into one JSON object in branch order.
//! - [`Sequence`]: step n's output is step n+1's payload; the item's output
//!   is the last step's.
//! - [`FanOut`]: a JSON array in the payload split into elements, one call
//!   per element with at most `max_parallel` at once, outputs merged back
//!   into a JSON array in input order.
//!
//! # Invariants
//!
//! - **Outputs as JSON.** An output that parses as JSON is embedded as that
//!   JSON text, unchanged; anything else as a JSON string.
//! - **Failures.** A required branch, a step, or (with `fail`) an element
//!   that fails fails the item: fatally if any such failure was fatal
//!   (retrying cannot fix it), else retryably, with the longest Retry-After
//!   hint among them; the message names the branch, step or element. An
//!   optional branch that fails gives `null` and a warning.
//! - **Stopping.** Every branch and element gets the call's deadline and
//!   stop handle: a stop or a hurry reaches all of them at once. A panic in
//!   one is that branch's failure (fatal), not the worker's.
//! - **Keys.** A fan-out element is called as its own item, id
//!   `<item id>/<index>`, so a downstream that deduplicates by
//!   `Idempotency-Key` tells the elements apart. Branches and steps share the
//!   item's id (they go to different places).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use serde_json::value::RawValue;

mod kinds;
pub use kinds::{FanOutConfig, ParallelConfig, SequenceConfig};

use super::progress::NodeProgress;
use super::{CallContext, Failure, FailureKind, Handler};
use crate::item::Item;

/// One named branch of a [`Parallel`].
#[derive(Clone)]
pub struct Branch {
    pub name: String,
    pub handler: Arc<dyn Handler>,
    /// A failure gives `null` and a warning instead of failing the item.
    pub optional: bool,
}

impl Branch {
    /// A required branch.
    pub fn new(name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        Branch {
            name: name.into(),
            handler,
            optional: false,
        }
    }

    /// The same branch, optional.
    pub fn optional(self) -> Self {
        Branch { optional: true, ..self }
    }
}

/// Where one branch's answer comes from in one call.
enum Branched<'scope, 'b> {
    /// Recorded before (partial progress).
    Answered(Result<String, Failure>),
    /// Called on the calling thread.
    Here(&'b Branch),
    /// Called on a scoped thread of its own.
    There(thread::ScopedJoinHandle<'scope, Result<String, Failure>>),
}

/// Runs every branch at once; the output is `{"<name>": <output>, …}`.
pub struct Parallel {
    branches: Vec<Branch>,
    /// Answers already given, per item (`qos: exactly_once`).
    progress: Option<NodeProgress>,
}

impl Parallel {
    /// Branches in the order their keys appear in the output. Names must be
    /// unique and there must be at least one.
    pub fn new(branches: Vec<Branch>) -> Result<Self, String> {
        if branches.is_empty() {
            return Err("parallel: no branches; give at least one".to_string());
        }
        for (i, branch) in branches.iter().enumerate() {
            if branches[..i].iter().any(|b| b.name == branch.name) {
                return Err(format!("parallel: branch name {:?} appears twice", branch.name));
            }
        }
        Ok(Parallel {
            branches,
            progress: None,
        })
    }

    /// The same node, recording each branch's answer in `progress` so that
    /// a retry of a failed item calls only the branches that did not answer.
    pub fn with_progress(self, progress: NodeProgress) -> Self {
        Parallel {
            progress: Some(progress),
            ..self
        }
    }
}

impl Handler for Parallel {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let progress = self.progress.as_ref();
        let recalled: Vec<Option<String>> = self
            .branches
            .iter()
            .map(|b| progress.and_then(|p| p.store.recall(&item.id, &p.node, &b.name)))
            .collect();
        let call = |branch: &Branch| {
            let result = guarded(branch.handler.as_ref(), ctx, item);
            if let (Some(p), Ok(output)) = (progress, &result) {
                p.store.record(&item.id, &p.node, &branch.name, output);
            }
            result
        };
        // The first branch to call runs on the calling thread once the
        // others are started (the results are read in branch order, so it
        // runs before any join): one thread start less per item (a start
        // costs tens of µs on a small box).
        let inline = recalled.iter().position(Option::is_none);
        let results = thread::scope(|scope| {
            let running: Vec<_> = self
                .branches
                .iter()
                .zip(&recalled)
                .enumerate()
                .map(|(i, (branch, recalled))| match recalled {
                    Some(output) => Ok(Branched::Answered(Ok(output.clone()))),
                    None if Some(i) == inline => Ok(Branched::Here(branch)),
                    None => thread::Builder::new()
                        .name("lote-branch".to_string())
                        .spawn_scoped(scope, move || call(branch))
                        .map(Branched::There),
                })
                .collect();
            running
                .into_iter()
                .map(|spawned| match spawned {
                    Ok(Branched::Answered(result)) => result,
                    Ok(Branched::Here(branch)) => call(branch),
                    Ok(Branched::There(handle)) => handle
                        .join()
                        .unwrap_or_else(|_| Err(Failure::fatal("the branch's thread panicked"))),
                    Err(e) => Err(Failure::retryable(format!("cannot start a thread for it: {e}"))),
                })
                .collect::<Vec<_>>()
        });
        let mut failures = Failures::default();
        let mut merged = Vec::with_capacity(self.branches.len());
        for (branch, result) in self.branches.iter().zip(results) {
            let value = match result {
                Ok(output) => as_json(&output),
                Err(failure) if branch.optional => {
                    log::warn!(
                        "item {}: optional branch {} failed ({failure}); its value is null",
                        item.id,
                        branch.name
                    );
                    "null".to_string()
                }
                Err(failure) => {
                    failures.add(format!("branch {}", branch.name), failure);
                    continue;
                }
            };
            merged.push((branch.name.as_str(), value));
        }
        failures.into_result()?;
        if let Some(p) = progress {
            p.store.forget(&item.id, &p.node);
        }
        let mut out = String::from("{");
        for (i, (name, value)) in merged.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(name));
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Ok(out)
    }

    fn kill_running(&self) {
        for branch in &self.branches {
            branch.handler.kill_running();
        }
    }
}

/// Runs the steps one after the other, each on the previous one's output.
pub struct Sequence {
    steps: Vec<Arc<dyn Handler>>,
}

impl Sequence {
    /// At least one step.
    pub fn new(steps: Vec<Arc<dyn Handler>>) -> Result<Self, String> {
        if steps.is_empty() {
            return Err("sequence: no steps; give at least one".to_string());
        }
        Ok(Sequence { steps })
    }
}

impl Handler for Sequence {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let mut current = item.clone();
        let mut output = String::new();
        for (n, step) in self.steps.iter().enumerate() {
            if n > 0 && ctx.should_stop() {
                return Err(Failure::retryable(format!("cut short before step {}", n + 1)));
            }
            output = guarded(step.as_ref(), ctx, &current).map_err(|failure| Failure {
                message: format!("step {}: {}", n + 1, failure.message),
                ..failure
            })?;
            current = Item {
                payload: output.clone().into_bytes(),
                ..current
            };
        }
        Ok(output)
    }

    fn kill_running(&self) {
        for step in &self.steps {
            step.kill_running();
        }
    }
}

/// What a fan-out does with an element that failed (`on_element_failure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnElementFailure {
    /// The item fails (retryable if every failed element's failure was).
    #[default]
    Fail,
    /// `null` in its place, with a warning.
    Null,
    /// Left out of the output, with a warning.
    Drop,
}

/// Splits a JSON array in the payload and calls `each` per element.
pub struct FanOut {
    /// JSON pointer to the array ("" = the payload itself).
    split: String,
    each: Arc<dyn Handler>,
    max_parallel: usize,
    on_element_failure: OnElementFailure,
    /// More elements than this: the item fails for good, with the count.
    max_elements: usize,
    /// Answers already given, per item (`qos: exactly_once`).
    progress: Option<NodeProgress>,
}

impl FanOut {
    /// `split` is a JSON pointer (`""` or starting with `/`); `max_parallel`
    /// and `max_elements` are at least 1.
    pub fn new(
        split: impl Into<String>,
        each: Arc<dyn Handler>,
        max_parallel: usize,
        on_element_failure: OnElementFailure,
        max_elements: usize,
    ) -> Result<Self, String> {
        let split = split.into();
        if !(split.is_empty() || split.starts_with('/')) {
            return Err(format!(
                "fan_out: split {split:?} is not a JSON pointer; expected \"\" (the payload) or a path like /items"
            ));
        }
        if max_parallel == 0 || max_elements == 0 {
            return Err("fan_out: max_parallel and max_elements must be at least 1".to_string());
        }
        Ok(FanOut {
            split,
            each,
            max_parallel,
            on_element_failure,
            max_elements,
            progress: None,
        })
    }

    /// The same node, recording each element's answer in `progress` so that
    /// a retry of a failed item calls only the elements that did not answer.
    pub fn with_progress(self, progress: NodeProgress) -> Self {
        FanOut {
            progress: Some(progress),
            ..self
        }
    }

    /// The elements of the array at `split`, each as its own item.
    fn elements(&self, item: &Item) -> Result<Vec<Item>, Failure> {
        let not_processable = |why: String| Failure::fatal(format!("fan_out: {why}"));
        let payload: serde_json::Value = serde_json::from_slice(&item.payload)
            .map_err(|e| not_processable(format!("the payload is not JSON: {e}")))?;
        let array = payload
            .pointer(&self.split)
            .ok_or_else(|| not_processable(format!("the payload has nothing at {:?}", self.split)))?
            .as_array()
            .ok_or_else(|| not_processable(format!("{:?} in the payload is not an array", self.split)))?;
        if array.len() > self.max_elements {
            return Err(not_processable(format!(
                "{} elements, more than max_elements ({})",
                array.len(),
                self.max_elements
            )));
        }
        Ok(array
            .iter()
            .enumerate()
            .map(|(index, element)| {
                let payload = match element {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Item::new(format!("{}/{index}", item.id), payload).with_priority(item.priority)
            })
            .collect())
    }
}

impl Handler for FanOut {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        let elements = self.elements(item)?;
        let progress = self.progress.as_ref();
        let mut results: Vec<Option<Result<String, Failure>>> = (0..elements.len())
            .map(|i| {
                progress
                    .and_then(|p| p.store.recall(&item.id, &p.node, &i.to_string()))
                    .map(Ok)
            })
            .collect();
        let to_call: Vec<usize> = (0..elements.len()).filter(|&i| results[i].is_none()).collect();
        let next = AtomicUsize::new(0);
        let done = thread::scope(|scope| {
            let workers: Vec<_> = (0..self.max_parallel.min(to_call.len()))
                .map(|_| {
                    thread::Builder::new()
                        .name("lote-element".to_string())
                        .spawn_scoped(scope, || {
                            let mut mine = Vec::new();
                            while let Some(&index) = to_call.get(next.fetch_add(1, Ordering::Relaxed)) {
                                let element = &elements[index];
                                let element_ctx =
                                    CallContext::new(element, ctx.attempt(), ctx.deadline(), ctx.stop_handle());
                                let result = guarded(self.each.as_ref(), &element_ctx, element);
                                if let (Some(p), Ok(output)) = (progress, &result) {
                                    p.store.record(&item.id, &p.node, &index.to_string(), output);
                                }
                                mine.push((index, result));
                            }
                            mine
                        })
                })
                .collect();
            let mut done = Vec::new();
            for worker in workers {
                match worker {
                    Ok(handle) => done.extend(handle.join().unwrap_or_default()),
                    Err(e) => log::warn!("fan_out: cannot start an element thread ({e}); the others go on"),
                }
            }
            done
        });
        for (index, result) in done {
            results[index] = Some(result);
        }
        let mut failures = Failures::default();
        let mut out = Vec::with_capacity(results.len());
        for (index, result) in results.into_iter().enumerate() {
            // None: no thread could be started to call it.
            let result = result.unwrap_or_else(|| Err(Failure::retryable("no thread could call it")));
            match (result, self.on_element_failure) {
                (Ok(output), _) => out.push(as_json(&output)),
                (Err(failure), OnElementFailure::Fail) => failures.add(format!("element {index}"), failure),
                (Err(failure), OnElementFailure::Null) => {
                    log::warn!(
                        "item {}: element {index} failed ({failure}); null in its place",
                        item.id
                    );
                    out.push("null".to_string());
                }
                (Err(failure), OnElementFailure::Drop) => {
                    log::warn!("item {}: element {index} failed ({failure}); left out", item.id);
                }
            }
        }
        failures.into_result()?;
        if let Some(p) = progress {
            p.store.forget(&item.id, &p.node);
        }
        Ok(format!("[{}]", out.join(",")))
    }

    fn kill_running(&self) {
        self.each.kill_running();
    }
}

/// A call with its panic caught as a fatal failure.
fn guarded(handler: &dyn Handler, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
    catch_unwind(AssertUnwindSafe(|| handler.handle(ctx, item))).unwrap_or_else(|_| Err(Failure::fatal("it panicked")))
}

/// The failures that fail an item, merged into one.
#[derive(Default)]
struct Failures {
    messages: Vec<String>,
    fatal: bool,
    retry_after: Option<std::time::Duration>,
}

impl Failures {
    fn add(&mut self, part: String, failure: Failure) {
        self.fatal |= failure.kind == FailureKind::Fatal;
        self.retry_after = self.retry_after.max(failure.retry_after);
        self.messages.push(format!("{part}: {}", failure.message));
    }

    fn into_result(self) -> Result<(), Failure> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let message = self.messages.join("; ");
        Err(if self.fatal {
            Failure::fatal(message)
        } else {
            let failure = Failure::retryable(message);
            match self.retry_after {
                Some(after) => failure.with_retry_after(after),
                None => failure,
            }
        })
    }
}

/// `output` as JSON text: itself if it parses as JSON, else a JSON string.
fn as_json(output: &str) -> String {
    let trimmed = output.trim();
    match serde_json::from_str::<&RawValue>(trimmed) {
        Ok(raw) => raw.get().to_string(),
        Err(_) => json_string(output),
    }
}

fn json_string(text: &str) -> String {
    // A str always serializes.
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests;
