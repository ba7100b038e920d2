//! The `lote` binary: the CLI of SPEC §3.8, thin over the library. The clap
//! types are `lote::cli` (shared with the man page generator,
//! `build.rs`); dispatch and exit codes live here; everything
//! else is `lote::daemon` and friends.
//!
//! Exit codes: 0 done (or stopped by a signal), 1 fatal error (config, I/O),
//! 2 usage, 3 some items failed (dead-lettered), 4 stopped by the deadline
//! with items left; `lote push`: 75 (EX_TEMPFAIL) when the inbox is full.

use std::process::ExitCode;

use clap::Parser;

use lote::cli::{Cli, Command, DeadLetterCommand};
use lote::daemon::{self, RunOptions};
use lote::status::Status;

/// `lote push`'s exit code for a full inbox (sysexits' EX_TEMPFAIL: try
/// again later).
const EX_TEMPFAIL: u8 = 75;

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
        Command::Run {
            config,
            once,
            resume: _,
            no_resume,
        } => {
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
                    resume: !no_resume,
                },
                loaded,
            )
            .map_err(|e| e.to_string())?;
            log::info!("lote stopping: {end:?}");
            Ok(end.exit_code() as u8)
        }
        Command::Check { config, quiet } => {
            let (path, loaded) = config.load()?;
            if quiet {
                return Ok(0);
            }
            print!("{}", loaded.effective_yaml());
            let tree = loaded.handler_tree();
            if tree.len() > 1 || loaded.policy.wraps() {
                eprintln!(
                    "{}: handler tree (outermost policy first: fallback, cache, retry, bulkhead, breaker, timeout):",
                    path.display()
                );
                for node in tree {
                    eprintln!("  {node}");
                }
            }
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
        Command::Push { config, format } => {
            let (_, loaded) = config.load()?;
            init_logging(&loaded.log);
            match lote::push::push(&loaded, std::io::stdin().lock(), format) {
                Ok(pushed) => {
                    println!("{pushed}");
                    Ok(0)
                }
                Err(e) => {
                    println!("{}", e.pushed);
                    eprintln!("lote: {}", e.message);
                    Ok(if e.full { EX_TEMPFAIL } else { 1 })
                }
            }
        }
        Command::DeadLetter(DeadLetterCommand::List { config, json }) => {
            let (_, loaded) = config.load()?;
            let records = daemon::dead_letters(&loaded).map_err(|e| e.to_string())?;
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

/// `log:` from the config, unless RUST_LOG says otherwise. Under systemd
/// (journald adds its own timestamps) lines carry none.
fn init_logging(level: &str) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(lote::config::level_filter(level));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        builder.format_timestamp(None);
    }
    builder.init();
}
