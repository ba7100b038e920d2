//! What the tests that drive the real binary share: a temp dir with a
//! config in it, the `lote` command run there, and a readable dump of a
//! finished command. Each test file adds its own methods to [`Setup`] in an
//! `impl` block of its own; not every file uses every item here.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

pub const LOTE: &str = env!("CARGO_BIN_EXE_lote");

/// A temp dir holding `config.yaml`, `state/` and whatever a test puts there.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `config.yaml` with `state_dir` in the temp dir.
    pub fn config(&self, body: &str) -> PathBuf {
        let path = self.path("config.yaml");
        let text = format!("state_dir: {}\nlog: info\n{body}", self.path("state").display());
        fs::write(&path, text).unwrap();
        path
    }

    /// `lote <args>` in the temp dir, without the caller's RUST_LOG.
    pub fn lote(&self, args: &[&str]) -> Command {
        let mut command = Command::new(LOTE);
        command.args(args).current_dir(self.dir.path()).env_remove("RUST_LOG");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.lote(args).output().unwrap()
    }
}

/// A finished command's exit status, stdout and stderr, for assertions.
pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `promtool check metrics` on the Prometheus text in `file`, when promtool
/// is on PATH: it must accept it with no lint problem. Without promtool it
/// says so on stderr (the caller's own format check then stands alone).
pub fn promtool_check_metrics(file: &std::path::Path) {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let out = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(fs::File::open(file).unwrap())
                .output()
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = fs::read_to_string(file).unwrap_or_default();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{said}\n--- text ---\n{text}"
            );
            assert!(said.trim().is_empty(), "promtool found lint problems:\n{said}");
        }
        _ => eprintln!(
            "\n*** promtool is not on PATH: the Prometheus text was not checked by it. \
             Install it (apt-get install -y --no-install-recommends prometheus) for the real check. ***\n"
        ),
    }
}
