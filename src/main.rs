//! The `lote` binary: the CLI of SPEC §3.8, thin over the library. Parsing
//! and exit codes live here; everything else is `lote::daemon` and friends.
//!
//! Exit codes: 0 done (or stopped by a signal), 1 fatal error (config, I/O),
//! 2 usage, 3 some items failed (dead-lettered), 4 stopped by the deadline
//! with items left.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use lote::config::{Config, SinkSpec};
use lote::daemon::{self, RunOptions};
use lote::sink::{JsonlSink, Record, Sink, SqliteSink};
use lote::status::Status;

/// lote moves work items from a source (a spool directory, a file of lines, a
/// SQLite table), through worker threads and a handler (a command, an HTTP
/// call), and persists every outcome to SQLite or JSONL. It stops cleanly on
/// a signal or a deadline without losing an item.
#[derive(Parser, Debug)]
#[command(name = "lote", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    },
    /// Validate the config and print the effective config, defaults filled in.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the running (or last) daemon's status from <state_dir>/status.json.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the status file's JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// List or requeue items that failed for good.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
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
struct ConfigArg {
    /// The config file [default: /etc/lote/config.yaml if it exists, else ./config.yaml]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    path: Option<PathBuf>,
}

impl ConfigArg {
    fn resolve(&self) -> PathBuf {
        if let Some(path) = &self.path {
            return path.clone();
        }
        let system = Path::new("/etc/lote/config.yaml");
        if system.exists() {
            system.to_path_buf()
        } else {
            PathBuf::from("config.yaml")
        }
    }

    fn load(&self) -> Result<(PathBuf, Config), String> {
        let path = self.resolve();
        Config::load(&path)
            .map(|config| (path, config))
            .map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("lote: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<u8, String> {
    match command {
        Command::Run { config, once } => {
            let (path, loaded) = config.load()?;
            init_logging(&loaded.log);
            log::info!("lote {} starting with {}", env!("CARGO_PKG_VERSION"), path.display());
            for warning in &loaded.warnings {
                log::warn!("{}: {warning}", path.display());
            }
            let end = daemon::run(
                RunOptions {
                    config_path: path,
                    once,
                },
                loaded,
            )
            .map_err(|e| e.to_string())?;
            log::info!("lote stopping: {end:?}");
            Ok(end.exit_code() as u8)
        }
        Command::Check { config } => {
            let (path, loaded) = config.load()?;
            print!("{}", loaded.effective_yaml());
            for warning in &loaded.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            eprintln!("{}: ok", path.display());
            Ok(0)
        }
        Command::Status { config, json } => {
            let (_, loaded) = config.load()?;
            let file = loaded.state_dir.join("status.json");
            let status = Status::read(&file)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| format!("printing the status: {e}"))?
                );
            } else {
                println!("{status}");
            }
            Ok(0)
        }
        Command::DeadLetter(DeadLetterCommand::List { config, json }) => {
            let (_, loaded) = config.load()?;
            let Some(spec) = &loaded.dead_letter else {
                return Err("this config has no dead_letter sink".into());
            };
            let records = dead_letters(spec)?;
            for record in &records {
                if json {
                    println!("{}", serde_json::to_string(record).map_err(|e| e.to_string())?);
                } else {
                    println!(
                        "{}\tattempts={}\t{}\t{}",
                        record.id,
                        record.attempts,
                        record.finished_at,
                        record.error.as_deref().unwrap_or("")
                    );
                }
            }
            eprintln!("{} dead letter(s)", records.len());
            Ok(0)
        }
        Command::DeadLetter(DeadLetterCommand::Requeue { config, ids, all }) => {
            let (_, loaded) = config.load()?;
            let requeued = daemon::requeue_dead_letters(&loaded, if all { None } else { Some(&ids) })
                .map_err(|e| e.to_string())?;
            for id in &requeued.unknown {
                eprintln!("not a dead letter: {id}");
            }
            println!("requeued {} item(s)", requeued.requeued.len());
            Ok(if requeued.unknown.is_empty() { 0 } else { 1 })
        }
    }
}

/// Reads dead letters without taking the sink over: safe while lote runs.
fn dead_letters(spec: &SinkSpec) -> Result<Vec<Record>, String> {
    let records = match spec {
        SinkSpec::Jsonl(config) => JsonlSink::read_records(config).map_err(|e| e.to_string())?,
        SinkSpec::Sqlite(config) => {
            let mut sink = SqliteSink::open(config.clone()).map_err(|e| e.to_string())?;
            sink.records().map_err(|e| e.to_string())?
        }
    };
    Ok(lote::dead_letter::latest_per_id(records))
}

/// `log:` from the config, unless RUST_LOG says otherwise. Under systemd
/// (journald adds its own timestamps) lines carry none.
fn init_logging(level: &str) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(daemon::level_filter(level));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        builder.format_timestamp(None);
    }
    builder.init();
}
