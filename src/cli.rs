//! The command line of SPEC §3.8, as clap types. They live in the library,
//! not in `src/main.rs`, so that `build.rs` can render lote(8)
//! from the same definition the binary parses (`Cli::command()`): the man
//! page cannot drift from `--help`. The binary (`src/main.rs`) matches on
//! [`Command`] and maps results to exit codes.
//!
//! `build.rs` includes this file as a module of its own to render the man
//! pages, so it uses nothing of the crate but clap and std
//! (`ConfigArg::load` lives in `config::arg`).
//!
//! Exit codes: 0 done (or stopped by a signal), 1 fatal error (config, I/O),
//! 2 usage, 3 some items failed (dead-lettered), 4 stopped by the deadline
//! with items left.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The config file used when `-c` is not given and it exists.
pub const SYSTEM_CONFIG: &str = "/etc/lote/config.yaml";

/// What `lote --help` and lote(8) show after the options: the parts of the
/// interface that are not flags (exit codes, signals, files).
const AFTER_HELP: &str = "\
Exit codes of `run --once`: 0 complete with no item failed (or stopped gracefully by a signal), \
1 fatal error (config, I/O), 2 usage, 3 some items failed (dead-lettered), \
4 stopped by the deadline with items left (run again to finish them).

Signals: SIGTERM/SIGINT stop gracefully (workers finish the item in hand, queued items go back \
to the source, outcomes are drained); a second one hurries (exec children are killed). \
SIGHUP re-reads the config at the next session boundary. SIGUSR1 logs a status line.

Files: /etc/lote/config.yaml (the default config), <state_dir>/status.json (read by `lote status`), \
<sink path>.lines-file (which file a lines source's records came from; delete it to resume over another). \
Under systemd: lote.service, lote@NAME.service (/etc/lote/NAME.yaml), \
lote-once@NAME.timer (`run --once` on a calendar).";

/// lote moves work items from a source (a spool directory, a file of lines, a
/// SQLite table), through worker threads and a handler (a command, an HTTP
/// call), and persists every outcome to SQLite or JSONL. It stops cleanly on
/// a signal or a deadline without losing an item.
#[derive(Parser, Debug)]
#[command(name = "lote", version, about, long_about = None, propagate_version = true, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run sessions: one with --once, else one per `session.every`, else one
    /// continuous session that polls the source. SIGTERM/SIGINT stop
    /// gracefully (twice: hurry), SIGHUP reloads the config, SIGUSR1 logs a
    /// status line.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Run one session, then exit (cron / timer mode). Exit code 0 done,
        /// 3 items failed, 4 deadline reached with items left.
        #[arg(long)]
        once: bool,
        /// With a lines source, skip the lines the sink's records say are
        /// done (the default). A file that is not the one those records came
        /// from is refused before anything runs, with what to do.
        #[arg(long, overrides_with = "no_resume")]
        resume: bool,
        /// With a lines source, run every line, done or not; the sink's
        /// records are tied to this file from then on (for a file replaced
        /// by a new one at each run). Refused with qos: exactly_once. Other
        /// sources remember what they finished and ignore it.
        #[arg(long = "no-resume", overrides_with = "resume")]
        no_resume: bool,
    },
    /// Validate the config and print the effective config, defaults filled in.
    /// Changes nothing on disk. Exit 0 if valid, 1 with file:line:column on
    /// stderr if not.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Print nothing when the config is valid (no effective config, no
        /// warnings: `lote run` logs those at start); errors still go to
        /// stderr with exit 1. What the systemd units run before start and
        /// reload, so the journal does not get the whole config each time.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show the running (or last) daemon's status from <state_dir>/status.json.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the status file's JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Put items from stdin into the inbox (source.kind: inbox), whether
    /// or not the daemon runs. One item per line; blank lines are skipped.
    /// Prints what it accepted. Exit 0 when every item is durable, 75 when
    /// the inbox is full (the items accepted before stay; it says how
    /// many), 1 on an error (a malformed line: the items before it stay).
    Push {
        #[command(flatten)]
        config: ConfigArg,
        /// `text`: each line is one item's payload (lote makes its id);
        /// `ndjson`: each line is {"id", "priority", "payload"} (id and
        /// priority optional).
        #[arg(long, value_enum, default_value_t = PushFormat::Text)]
        format: PushFormat,
    },
    /// List or requeue items that failed for good.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
}

/// How `lote push` reads its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PushFormat {
    Text,
    Ndjson,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// List the dead letters: id, attempts, error.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON record per line, payload included.
        #[arg(long)]
        json: bool,
    },
    /// Hand dead letters back to the source as pending items and remove them
    /// from the dead-letter sink.
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
        /// The id of a dead letter to requeue (repeat for more).
        #[arg(long = "id", value_name = "ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Requeue every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// The config file [default: /etc/lote/config.yaml if it exists, else ./config.yaml]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

impl ConfigArg {
    /// The file to read: `-c FILE`, else [`SYSTEM_CONFIG`] if it exists,
    /// else `./config.yaml`.
    pub fn resolve(&self) -> PathBuf {
        if let Some(path) = &self.path {
            return path.clone();
        }
        let system = Path::new(SYSTEM_CONFIG);
        if system.exists() {
            system.to_path_buf()
        } else {
            PathBuf::from("config.yaml")
        }
    }
}
