//! Renders lote(8) and one page per subcommand (lote-run(8), lote-check(8),
//! lote-status(8), lote-dead-letter(8), lote-dead-letter-list(8),
//! lote-dead-letter-requeue(8)) from the clap definition in `src/cli.rs`, so
//! the man pages say what `--help` says and every build has them: a plain
//! `cargo deb` finds them without another step.
//!
//! They are written to `target/<profile>/man/` (the profile's directory, found
//! from `OUT_DIR`) twice: `lote.8` to read (`man -l target/release/man/lote.8`)
//! and `lote.8.gz`, which the package metadata in Cargo.toml ships
//! (`target/release/man/*.8.gz`). cargo-deb gzips man pages only when they
//! come from outside the target directory, and Debian policy wants them
//! compressed (lintian: uncompressed-manual-page), so the build does it: best
//! compression, no name and no timestamp in the header (reproducible).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

// The command line's definition, compiled here on its own: it needs only
// clap and std.
#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> io::Result<()> {
    println!("cargo::rerun-if-changed=src/cli.rs");
    println!("cargo::rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/lote-<hash>/out.
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out");
    let dir = profile_dir.join("man");
    std::fs::create_dir_all(&dir)?;
    // `help` as a subcommand would get a page of its own that says nothing.
    let mut command = cli::Cli::command().disable_help_subcommand(true);
    // Fills in the names the subcommand pages use (`lote-run`, …).
    command.build();
    write_page(&command, &dir.join("lote.8"))?;
    for sub in command.get_subcommands() {
        write_subcommand_pages(sub, &dir)?;
    }
    Ok(())
}

fn write_subcommand_pages(command: &clap::Command, dir: &Path) -> io::Result<()> {
    if command.is_hide_set() {
        return Ok(());
    }
    let name = command.get_display_name().unwrap_or_else(|| command.get_name());
    write_page(command, &dir.join(format!("{name}.8")))?;
    for sub in command.get_subcommands() {
        write_subcommand_pages(sub, dir)?;
    }
    Ok(())
}

/// Section 8: lote is a daemon an administrator runs under systemd. Written
/// plain and gzipped, each only when its bytes changed, so an unchanged page
/// keeps its mtime.
fn write_page(command: &clap::Command, path: &Path) -> io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).section("8").render(&mut page)?;
    // GzBuilder writes mtime 0 and no file name unless told otherwise.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(&page)?;
    let gzipped = gz.finish()?;
    let mut gz_path = path.as_os_str().to_owned();
    gz_path.push(".gz");
    write_if_changed(path, &page)?;
    write_if_changed(Path::new(&gz_path), &gzipped)
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes)?;
    }
    Ok(())
}
