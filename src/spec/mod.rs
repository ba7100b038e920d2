//! What every part of the config needs, below the engine: the config's
//! value types ([`Dur`], [`ByteSize`], [`Argv`]), the located error
//! ([`ConfigError`], [`Doc`]), the generic checks and bounds ([`Check`],
//! `MAX_*`) and the effective-print helpers ([`effective`]).
//!
//! It imports nothing of lote but std, serde and serde_yaml, so a source's,
//! handler's or sink's own file can read and check its section of the
//! config without importing `config` (which sits above the engine).

pub mod check;
pub mod effective;
mod error;
mod value;

pub use check::{absolute, Check, Result};
pub use check::{
    MAX_BUSY_TIMEOUT, MAX_BYTES, MAX_CAPACITY, MAX_DURATION, MAX_ITEMS, MAX_OUTCOMES, MAX_ROTATE_BYTES, MAX_THREADS,
    MAX_TRIES,
};
pub use error::{did_you_mean, levenshtein, locate, second_document, ConfigError, Doc};
pub use value::{format_bytes, format_duration, parse_bytes, parse_duration, Argv, ByteSize, Dur, ARGV_EXPECTED};
