//! Loading the config named on the command line. It lives here, not in
//! `src/cli.rs`, because `build.rs` compiles `cli.rs` alone (for the man
//! pages) and the config layer is not part of that.

use std::path::PathBuf;

use super::Config;
use crate::cli::ConfigArg;

impl ConfigArg {
    /// Reads and validates the config [`ConfigArg::resolve`] names; the
    /// error is the message to print.
    pub fn load(&self) -> Result<(PathBuf, Config), String> {
        let path = self.resolve();
        Config::load(&path)
            .map(|config| (path, config))
            .map_err(|e| e.to_string())
    }
}

/// The `log:` level as a filter (`info` for anything unknown; the config
/// validation has already refused unknown names). The binary's logging
/// starts from it, and a reload sets it again.
pub fn level_filter(level: &str) -> log::LevelFilter {
    level.parse().unwrap_or(log::LevelFilter::Info)
}
