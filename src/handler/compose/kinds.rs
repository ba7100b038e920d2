//! The composites as handler kinds of the config (SPEC §3.13): `parallel`,
//! `sequence` and `fan_out`, each holding child nodes read by
//! `handler::node` with their own policies.

use std::path::PathBuf;
use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use super::{Branch, FanOut, OnElementFailure, Parallel, Sequence};
use crate::handler::node::{build_node, NodeSpec, Nodes};
use crate::handler::progress::{self, NodeProgress};
use crate::handler::{handler_keys, Handler, HandlerAt, HandlerKind};
use crate::spec::effective::{map, spelled};
use crate::spec::{self, Check, MAX_CAPACITY, MAX_THREADS};

/// Default bound on a fan-out's elements: more is dead-lettered.
const MAX_ELEMENTS: u64 = 10_000;
/// Default calls of a fan-out's `each` at once.
const FAN_OUT_PARALLEL: u64 = 4;

handler_keys! {
    /// `handler: {kind: parallel, branches: {name: {kind: …}, …}}`.
    ParallelKeys {
        branches: Option<Mapping>,
    }
}

handler_keys! {
    /// `handler: {kind: sequence, steps: [{kind: …}, …]}`.
    SequenceKeys {
        steps: Option<Vec<Value>>,
    }
}

handler_keys! {
    /// `handler: {kind: fan_out, split: /items, each: {kind: …}}`.
    FanOutKeys {
        split: Option<String>,
        max_parallel: Option<u64>,
        max_elements: Option<u64>,
        on_element_failure: ElementFailureKey,
        each: Option<Value>,
    }
}

/// `on_element_failure` as written. Its own type because YAML reads an
/// unquoted `null` as no value: `on_element_failure: null` must mean the
/// `null` policy, not the default `fail`.
#[derive(Debug, Default)]
pub enum ElementFailureKey {
    #[default]
    Unset,
    Set(OnElementFailure),
}

impl<'de> serde::Deserialize<'de> for ElementFailureKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["fail", "null", "drop"];
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("null") => Ok(ElementFailureKey::Set(OnElementFailure::Null)),
            Some("fail") => Ok(ElementFailureKey::Set(OnElementFailure::Fail)),
            Some("drop") => Ok(ElementFailureKey::Set(OnElementFailure::Drop)),
            Some(other) => Err(serde::de::Error::unknown_variant(other, NAMES)),
        }
    }
}

/// `kind: parallel`: named branches at once, merged into one JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelConfig {
    pub branches: Vec<(String, NodeSpec)>,
    /// Under `qos: exactly_once`: where the branches' answers are recorded.
    pub progress: Option<Progress>,
}

/// `kind: sequence`: each step's output is the next step's payload.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceConfig {
    pub steps: Vec<NodeSpec>,
}

/// `kind: fan_out`: one call of `each` per element of a JSON array.
#[derive(Clone, Debug, PartialEq)]
pub struct FanOutConfig {
    pub split: String,
    pub max_parallel: usize,
    pub max_elements: usize,
    pub on_element_failure: OnElementFailure,
    pub each: Box<NodeSpec>,
    /// Under `qos: exactly_once`: where the elements' answers are recorded.
    pub progress: Option<Progress>,
}

/// Where a composite records its parts' answers: the file and its node path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub file: PathBuf,
    pub node: String,
}

impl Progress {
    fn of(at: &HandlerAt) -> Option<Progress> {
        at.progress.map(|file| Progress {
            file: file.to_path_buf(),
            node: at.path.to_string(),
        })
    }

    fn start(&self) -> NodeProgress {
        NodeProgress {
            store: Arc::new(progress::Progress::new(&self.file)),
            node: self.node.clone(),
        }
    }
}

impl HandlerKind for ParallelConfig {
    const NAME: &'static str = "parallel";
    type Keys = ParallelKeys;

    fn build(keys: ParallelKeys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self> {
        let expected = "expected named branches, e.g. `branches: {sales: {kind: http, url: …}}`";
        let Some(written) = keys.branches.filter(|b| !b.is_empty()) else {
            return check.err(&at.key("branches"), format!("is missing or empty; {expected}"));
        };
        let mut branches = Vec::with_capacity(written.len());
        for (name, value) in &written {
            let Some(name) = name.as_str().filter(|n| !n.is_empty() && !n.contains('.')) else {
                return check.err(
                    &at.key("branches"),
                    format!("has a branch named {name:?}; expected names of letters, digits and _"),
                );
            };
            let path = at.key(&format!("branches.{name}"));
            branches.push((name.to_string(), build_node(check, value, &path, at, true)?));
        }
        Ok(ParallelConfig {
            branches,
            progress: Progress::of(at),
        })
    }

    fn effective(&self) -> Value {
        let branches: Mapping = self
            .branches
            .iter()
            .map(|(name, node)| (Value::from(name.as_str()), node.effective()))
            .collect();
        map([("kind", Self::NAME.into()), ("branches", Value::Mapping(branches))])
    }

    fn start(&self, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        let mut branches = Vec::with_capacity(self.branches.len());
        for (name, node) in &self.branches {
            let branch = Branch::new(name.as_str(), node.start(nodes)?);
            branches.push(if node.optional { branch.optional() } else { branch });
        }
        let parallel = Parallel::new(branches)?;
        Ok(Arc::new(match &self.progress {
            Some(p) => parallel.with_progress(p.start()),
            None => parallel,
        }))
    }

    fn tree(&self, depth: usize, out: &mut Vec<String>) {
        for (_, node) in &self.branches {
            node.tree(depth, out);
        }
    }
}

impl HandlerKind for SequenceConfig {
    const NAME: &'static str = "sequence";
    type Keys = SequenceKeys;

    fn build(keys: SequenceKeys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self> {
        let Some(written) = keys.steps.filter(|s| !s.is_empty()) else {
            return check.err(
                &at.key("steps"),
                "is missing or empty; expected a list of handlers, e.g. `steps: [{kind: exec, …}, {kind: http, …}]`",
            );
        };
        let mut steps = Vec::with_capacity(written.len());
        for (i, value) in written.iter().enumerate() {
            let path = at.key(&format!("steps.{i}"));
            steps.push(build_node(check, value, &path, at, false)?);
        }
        Ok(SequenceConfig { steps })
    }

    fn effective(&self) -> Value {
        let steps = self.steps.iter().map(NodeSpec::effective).collect();
        map([("kind", Self::NAME.into()), ("steps", Value::Sequence(steps))])
    }

    fn start(&self, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        let steps = self.steps.iter().map(|s| s.start(nodes)).collect::<Result<_, _>>()?;
        Ok(Arc::new(Sequence::new(steps)?))
    }

    fn tree(&self, depth: usize, out: &mut Vec<String>) {
        for node in &self.steps {
            node.tree(depth, out);
        }
    }
}

impl HandlerKind for FanOutConfig {
    const NAME: &'static str = "fan_out";
    type Keys = FanOutKeys;

    fn build(keys: FanOutKeys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self> {
        let split = keys.split.unwrap_or_default();
        if !(split.is_empty() || split.starts_with('/')) {
            return check.err(
                &at.key("split"),
                format!("`{split}` is not a JSON pointer; expected \"\" (the payload itself) or a path like /items"),
            );
        }
        let max_parallel = keys.max_parallel.unwrap_or(FAN_OUT_PARALLEL);
        check.count(&at.key("max_parallel"), max_parallel, 1..=MAX_THREADS as u64)?;
        let max_elements = keys.max_elements.unwrap_or(MAX_ELEMENTS);
        check.count(&at.key("max_elements"), max_elements, 1..=MAX_CAPACITY as u64)?;
        let Some(each) = keys.each else {
            return check.err(
                &at.key("each"),
                "is missing; expected the handler to call per element, e.g. `each: {kind: http, url: …}`",
            );
        };
        let each = build_node(check, &each, &at.key("each"), at, false)?;
        Ok(FanOutConfig {
            split,
            max_parallel: max_parallel as usize,
            max_elements: max_elements as usize,
            on_element_failure: match keys.on_element_failure {
                ElementFailureKey::Unset => OnElementFailure::default(),
                ElementFailureKey::Set(policy) => policy,
            },
            each: Box::new(each),
            progress: Progress::of(at),
        })
    }

    fn effective(&self) -> Value {
        map([
            ("kind", Self::NAME.into()),
            ("split", self.split.as_str().into()),
            ("max_parallel", self.max_parallel.into()),
            ("max_elements", self.max_elements.into()),
            ("on_element_failure", spelled(&self.on_element_failure)),
            ("each", self.each.effective()),
        ])
    }

    fn start(&self, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        let each = self.each.start(nodes)?;
        let fan_out = FanOut::new(
            self.split.clone(),
            each,
            self.max_parallel,
            self.on_element_failure,
            self.max_elements,
        )?;
        Ok(Arc::new(match &self.progress {
            Some(p) => fan_out.with_progress(p.start()),
            None => fan_out,
        }))
    }

    fn tree(&self, depth: usize, out: &mut Vec<String>) {
        self.each.tree(depth, out);
    }
}
