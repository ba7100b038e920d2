//! The `lote` binary. For now it prints its version and help; the daemon's
//! commands (`run`, `check`, `status`, `push`, `dead-letter`) come with the
//! daemon. The engine is usable today as a library (see README.md).

use clap::Parser;

/// lote moves work items from a source, through worker threads and a
/// handler, to durable outcomes. This build ships the engine as a library;
/// the daemon commands are not part of it yet.
#[derive(Parser, Debug)]
#[command(name = "lote", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "lote {}: the engine is available as a library (cargo run --release --example demo); \
         the daemon commands are not in this build. See --help.",
        env!("CARGO_PKG_VERSION")
    );
}
