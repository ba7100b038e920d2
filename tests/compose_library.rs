//! A property of the handler tree from the library (SPEC §3.13): any tree
//! of parallel, sequence and fan-out nodes over leaves that fail at random
//! (retryably or for good, decided by a seed) ends each item of a session
//! in exactly one outcome, and a parallel root's merged output has one key
//! per branch.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use lote::commit::MemoryCommitter;
use lote::handler::compose::{Branch, FanOut, OnElementFailure, Parallel, Sequence};
use lote::policy::{CallPolicy, RetryPolicy};
use lote::source::VecSource;
use lote::{CallContext, Failure, Handler, Item, Session, SessionConfig, Status};
use proptest::prelude::*;

/// A tree as generated: leaves fail with a chance in percent.
#[derive(Clone, Debug)]
enum Tree {
    Leaf { fail_percent: u8, fatal: bool },
    Parallel(Vec<(Tree, bool)>),
    Sequence(Vec<Tree>),
    FanOut(Box<Tree>, OnElementFailure),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = (0u8..60, any::<bool>()).prop_map(|(fail_percent, fatal)| Tree::Leaf { fail_percent, fatal });
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), any::<bool>()), 1..4).prop_map(Tree::Parallel),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Tree::Sequence),
            (
                inner,
                prop_oneof![
                    Just(OnElementFailure::Fail),
                    Just(OnElementFailure::Null),
                    Just(OnElementFailure::Drop)
                ]
            )
                .prop_map(|(each, on)| Tree::FanOut(Box::new(each), on)),
        ]
    })
}

/// Builds the handler; `n` numbers the leaves so each fails on its own.
fn build(tree: &Tree, seed: u64, n: &mut u64) -> Arc<dyn Handler> {
    match tree {
        Tree::Leaf { fail_percent, fatal } => {
            *n += 1;
            let (leaf, fail_percent, fatal) = (*n, u64::from(*fail_percent), *fatal);
            Arc::new(move |ctx: &CallContext<'_>, item: &Item| -> Result<String, Failure> {
                let mut h = DefaultHasher::new();
                (seed, leaf, &item.id, ctx.attempt()).hash(&mut h);
                if h.finish() % 100 < fail_percent {
                    return Err(if fatal {
                        Failure::fatal("leaf failed for good")
                    } else {
                        Failure::retryable("leaf failed")
                    });
                }
                // A JSON array, so a fan-out below always has one to split.
                Ok(format!("[{leaf},{}]", item.payload.len()))
            })
        }
        Tree::Parallel(branches) => {
            let branches = branches
                .iter()
                .enumerate()
                .map(|(i, (t, optional))| {
                    let b = Branch::new(format!("b{i}"), build(t, seed, n));
                    if *optional {
                        b.optional()
                    } else {
                        b
                    }
                })
                .collect();
            Arc::new(Parallel::new(branches).unwrap())
        }
        Tree::Sequence(steps) => Arc::new(Sequence::new(steps.iter().map(|t| build(t, seed, n)).collect()).unwrap()),
        Tree::FanOut(each, on) => Arc::new(FanOut::new("", build(each, seed, n), 2, *on, 100).unwrap()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_ends_each_item_in_exactly_one_outcome(tree in tree(), seed in any::<u64>(), items in 1usize..20) {
        let handler = build(&tree, seed, &mut 0);
        let payloads: Vec<Item> = (0..items).map(|i| Item::new(format!("i{i}"), "[1,2,3]")).collect();
        let source = Arc::new(VecSource::new(payloads));
        let committer = Arc::new(MemoryCommitter::acking(source.clone()));
        let policy = CallPolicy {
            retry: RetryPolicy { attempts: 2, backoff: Duration::from_millis(1), ..RetryPolicy::default() },
            ..CallPolicy::plain()
        };
        let config = SessionConfig { threads: 3, ..SessionConfig::default() };
        let summary = Session::new(config, source, handler, committer.clone()).policy(policy).run().unwrap();
        let outcomes = committer.outcomes();
        prop_assert_eq!(outcomes.len(), items);
        for i in 0..items {
            let id = format!("i{i}");
            prop_assert_eq!(outcomes.iter().filter(|o| o.item.id == id).count(), 1, "{}", id);
        }
        prop_assert_eq!(summary.counts.done + summary.counts.failed, items as u64);
        if let Tree::Parallel(branches) = &tree {
            for o in outcomes.iter().filter(|o| o.status == Status::Done) {
                let merged: serde_json::Value = serde_json::from_str(o.output.as_deref().unwrap()).unwrap();
                let keys: Vec<&String> = merged.as_object().unwrap().keys().collect();
                prop_assert_eq!(keys.len(), branches.len(), "{:?}", merged);
            }
        }
    }
}
