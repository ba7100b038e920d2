//! Renders lote(8) from the clap definition in `lote::cli`, so the man page
//! says what `lote --help` says, and one page per subcommand beside it
//! (lote-run(8), lote-check(8), lote-status(8), lote-dead-letter(8),
//! lote-dead-letter-list(8), lote-dead-letter-requeue(8)), which lote(8)
//! refers to for their options.
//!
//! ```sh
//! cargo run --release --example manpage                 # → target/man/lote.8 (+ subcommands)
//! cargo run --release --example manpage -- OUT/lote.8   # anywhere else
//! man -l target/man/lote.8
//! ```
//!
//! The .deb ships them as /usr/share/man/man8/*.8.gz (cargo-deb gzips assets
//! under usr/share/man).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/man/lote.8"));
    let dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // `help` as a subcommand would get a page of its own that says nothing.
    let mut cli = lote::cli::Cli::command().disable_help_subcommand(true);
    // Fills in the names the subcommand pages use (`lote-run`, …).
    cli.build();
    write_page(&cli, &out)?;
    for sub in cli.get_subcommands() {
        write_subcommand_pages(sub, dir)?;
    }
    Ok(())
}

fn write_subcommand_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    write_page(cmd, &dir.join(format!("{name}.8")))?;
    for sub in cmd.get_subcommands() {
        write_subcommand_pages(sub, dir)?;
    }
    Ok(())
}

/// Section 8: lote is a daemon an administrator runs under systemd.
fn write_page(cmd: &clap::Command, path: &Path) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).section("8").render(&mut page)?;
    std::fs::write(path, page)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
