//! `exec`: runs a command per item (argv, never a shell string) with the
//! payload on stdin (SPEC §3.6).

use std::path::PathBuf;
use std::time::Duration;

/// An exec handler's settings (config section `handler:` with `kind: exec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// The program and its arguments; `command[0]` is looked up in PATH if it
    /// has no `/`. Never run through a shell.
    pub command: Vec<String>,
    /// Exit codes that fail the item for good (no retry).
    pub fatal_exit_codes: Vec<i32>,
    /// Most bytes of stdout kept as the output (the rest is read and
    /// discarded). Default 64 KiB.
    pub output_limit: usize,
    /// Between SIGTERM to the child's process group and SIGKILL. Default 5 s.
    pub kill_grace: Duration,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
    /// The child's working directory; `None` = lote's.
    pub workdir: Option<PathBuf>,
}
