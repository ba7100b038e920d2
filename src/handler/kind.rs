//! What a handler kind provides, and the registry that turns the
//! one-line-per-kind list in `handler/mod.rs` ([`handler_kinds!`]) into
//! [`super::HandlerSpec`], [`super::HandlerKeys`] and their dispatch. Adding
//! a kind: its own file with its keys (declared with [`handler_keys!`]) and
//! an `impl HandlerKind`, one line in `handler/mod.rs`, and its keys in the
//! reference `config.yaml`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Value;

use super::node::Nodes;
use super::Handler;
use crate::policy::PolicyKeys;
use crate::spec::{self, Check};

/// One handler kind: how its `handler:` section is read, checked, printed
/// and started. Implemented by the kind's config type.
pub trait HandlerKind: Sized {
    /// The `kind:` that selects it.
    const NAME: &'static str;
    /// The section's keys as written (declared with [`handler_keys!`],
    /// which adds `kind` and the policy keys every handler has).
    type Keys: serde::de::DeserializeOwned + Default + std::fmt::Debug + WithPolicy;

    /// Defaults applied, every value checked (errors name `at.key(..)`).
    fn build(keys: Self::Keys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self>;
    /// Its section of the effective config (`lote check`), `kind` first;
    /// the policy keys follow.
    fn effective(&self) -> Value;
    /// What `lote run` calls items with. `lote check` starts it too and
    /// drops it, so what would refuse to start is a config error.
    /// A composite starts its children into `nodes` (their counters).
    fn start(&self, nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String>;
    /// A composite's children for `lote check`'s tree, each a line at `depth`.
    fn tree(&self, _depth: usize, _out: &mut Vec<String>) {}
    /// Things that start but are probably not meant (an expired
    /// certificate), for `lote check` and the daemon's log. Default none.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A handler section's policy keys, whatever its kind (`handler_keys!`
/// implements it).
pub trait WithPolicy {
    fn policy(&self) -> &PolicyKeys;
}

/// What a handler section's build sees besides its keys.
pub struct HandlerAt<'a> {
    /// Relative paths resolve against it.
    pub state_dir: &'a Path,
    /// The node's `timeout`, already checked.
    pub timeout: Option<Duration>,
    /// The node's dotted path: `handler`, `handler.branches.sales`, …
    pub path: &'a str,
    /// Under `qos: exactly_once`, the file where composites record which
    /// parts answered ([`super::progress::Progress`]); else `None`.
    pub progress: Option<&'a Path>,
}

impl HandlerAt<'_> {
    /// The dotted name of the node's key `rest` (`handler.url`).
    pub fn key(&self, rest: &str) -> String {
        format!("{}.{rest}", self.path)
    }
}

/// A handler kind's keys: the struct, with `kind:` accepted and the policy
/// keys read into `policy`; unknown keys refused, every error at its line.
macro_rules! handler_keys {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub policy: $crate::policy::PolicyKeys,
        }

        impl $crate::handler::WithPolicy for $name {
            fn policy(&self) -> &$crate::policy::PolicyKeys {
                &self.policy
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Keys {
                    #[serde(default)]
                    #[allow(dead_code)]
                    kind: serde::de::IgnoredAny,
                    // Every key may be left out (a kind's own check says
                    // which it needs, with its own words).
                    $($(#[$fmeta])* #[serde(default)] $field: $ty,)*
                    /// `at_most_once`, `at_least_once` (default), `exactly_once`.
                    qos: Option<$crate::policy::Qos>,
                    /// Per-call (per-attempt) deadline. Default none (http: 30s).
                    timeout: Option<$crate::spec::Dur>,
                    /// Retries of retryable failures. Default 3 attempts, 1s
                    /// back-off doubling to at most 1m, ±20 % jitter.
                    retry: Option<$crate::policy::RetryKeys>,
                    /// Circuit breaker. Default none.
                    breaker: Option<$crate::policy::BreakerKeys>,
                    /// Many items per call (SPEC §3.12). Default: one per call.
                    batch: Option<$crate::policy::BatchKeys>,
                    /// `cooperative` (default) or `walk_away`.
                    timeout_mode: Option<$crate::policy::TimeoutMode>,
                    /// Walk-away: most abandoned calls at once. Default 8.
                    max_abandoned: Option<u64>,
                    bulkhead: Option<$crate::policy::BulkheadKeys>,
                    fallback: Option<$crate::policy::FallbackKeys>,
                    cache: Option<$crate::policy::CacheKeys>,
                    /// A parallel branch only: a failure gives null.
                    optional: Option<bool>,
                }
                let k = <Keys as serde::Deserialize>::deserialize(deserializer)?;
                Ok($name {
                    $($field: k.$field,)*
                    policy: $crate::policy::PolicyKeys {
                        qos: k.qos,
                        timeout: k.timeout,
                        retry: k.retry,
                        breaker: k.breaker,
                        batch: k.batch,
                        timeout_mode: k.timeout_mode,
                        max_abandoned: k.max_abandoned,
                        bulkhead: k.bulkhead,
                        fallback: k.fallback,
                        cache: k.cache,
                        optional: k.optional,
                    },
                })
            }
        }
    };
}
pub(crate) use handler_keys;

/// The registry: one `Variant(ConfigType)` per kind, in the order `lote
/// check` lists them. Generates [`super::HandlerSpec`] (what the config
/// holds), [`super::HandlerKeys`] (a section as written) and [`super::KINDS`].
macro_rules! handler_kinds {
    ($($Variant:ident($Config:ty)),* $(,)?) => {
        /// A handler as the config holds it: one kind's checked config.
        #[derive(Clone, Debug, PartialEq)]
        pub enum HandlerSpec {
            $($Variant($Config),)*
        }

        /// A `handler:` section as written, read as the kind its `kind:` names.
        #[derive(Debug)]
        pub enum HandlerKeys {
            $($Variant(<$Config as HandlerKind>::Keys),)*
        }

        /// Every handler kind's `kind:` name.
        pub const KINDS: &[&str] = &[$(<$Config as HandlerKind>::NAME,)*];

        impl HandlerKeys {
            /// Reads a section as kind `name` (one of [`KINDS`]).
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
                $(if name == <$Config as HandlerKind>::NAME {
                    return <<$Config as HandlerKind>::Keys as serde::Deserialize>::deserialize(d)
                        .map(HandlerKeys::$Variant);
                })*
                Err(serde::de::Error::custom(format!("unknown handler kind `{name}`")))
            }

            /// The policy keys every kind has.
            pub fn policy(&self) -> &$crate::policy::PolicyKeys {
                match self {
                    $(HandlerKeys::$Variant(k) => WithPolicy::policy(k),)*
                }
            }
        }

        impl HandlerSpec {
            /// Checks a section into its kind's config.
            pub fn build(keys: HandlerKeys, at: &HandlerAt, check: &mut $crate::spec::Check) -> $crate::spec::Result<Self> {
                match keys {
                    $(HandlerKeys::$Variant(k) => <$Config as HandlerKind>::build(k, at, check).map(HandlerSpec::$Variant),)*
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(HandlerSpec::$Variant(_) => <$Config as HandlerKind>::NAME,)*
                }
            }

            pub fn effective(&self) -> serde_yaml::Value {
                match self {
                    $(HandlerSpec::$Variant(c) => HandlerKind::effective(c),)*
                }
            }

            pub fn start(&self, nodes: &mut $crate::handler::node::Nodes) -> Result<std::sync::Arc<dyn Handler>, String> {
                match self {
                    $(HandlerSpec::$Variant(c) => HandlerKind::start(c, nodes),)*
                }
            }

            pub fn tree(&self, depth: usize, out: &mut Vec<String>) {
                match self {
                    $(HandlerSpec::$Variant(c) => HandlerKind::tree(c, depth, out),)*
                }
            }

            pub fn warnings(&self) -> Vec<String> {
                match self {
                    $(HandlerSpec::$Variant(c) => HandlerKind::warnings(c),)*
                }
            }
        }
    };
}
pub(crate) use handler_kinds;
