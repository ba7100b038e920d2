//! `handler: {kind: exec}` in the config: its keys, checks and effective print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_yaml::Value;

use super::{ExecConfig, ExecHandler};
use crate::handler::node::Nodes;
use crate::handler::{handler_keys, Handler, HandlerAt, HandlerKind};
use crate::spec::effective::{bytes, dur, map, pairs, path};
use crate::spec::{self, absolute, Argv, ByteSize, Check, Dur, MAX_DURATION};

handler_keys! {
    /// `handler: {kind: exec}` — runs a command per item, payload on stdin.
    ExecKeys {
        /// The program and its arguments, as a list. Required.
        command: Option<Argv>,
        /// Exit codes that fail an item for good (no retry). Default none.
        fatal_exit_codes: Option<Vec<i32>>,
        /// Most bytes of stdout kept as the output. Default 64KiB.
        output_limit: Option<ByteSize>,
        /// Between SIGTERM to the child's process group and SIGKILL. Default 5s.
        kill_grace: Option<Dur>,
        /// Extra environment variables. Default none.
        env: Option<BTreeMap<String, String>>,
        /// The child's working directory. Default: lote's.
        workdir: Option<PathBuf>,
    }
}

impl HandlerKind for ExecConfig {
    const NAME: &'static str = "exec";
    type Keys = ExecKeys;

    fn build(e: ExecKeys, at: &HandlerAt, check: &mut Check) -> spec::Result<Self> {
        let state_dir = at.state_dir;
        let d = ExecConfig::default();
        let Some(command) = e.command else {
            return check.err(
                &at.key("command"),
                format!(
                    "is missing; expected the program and its arguments: {}",
                    crate::spec::ARGV_EXPECTED
                ),
            );
        };
        let command = command.0;
        let Some(program) = command.first() else {
            return check.err(
                &at.key("command"),
                "is empty; expected the program and its arguments, e.g. [\"/usr/bin/foo\", \"--flag\"]",
            );
        };
        if program.is_empty() {
            return check.err(
                &at.key("command"),
                "starts with an empty program name; expected e.g. \"/usr/bin/foo\"",
            );
        }
        check_program(check, &at.key("command"), program)?;
        let fatal_exit_codes = e.fatal_exit_codes.unwrap_or(d.fatal_exit_codes);
        if let Some(bad) = fatal_exit_codes.iter().find(|c| !(1..=255).contains(*c)) {
            return check.err(
                &at.key("fatal_exit_codes"),
                format!("contains {bad}; expected exit codes from 1 to 255 (0 means success)"),
            );
        }
        let env: Vec<(String, String)> = e.env.map_or(d.env, |m| m.into_iter().collect());
        for (name, value) in &env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return check.err(
                    &at.key(&format!("env.{name}")),
                    "is not a valid environment variable; expected a name without `=` and values without NUL bytes",
                );
            }
        }
        Ok(ExecConfig {
            command,
            fatal_exit_codes,
            output_limit: match e.output_limit {
                None => d.output_limit,
                Some(b) => check.usize_bytes(&at.key("output_limit"), b.0)?,
            },
            kill_grace: check.at_most(
                &at.key("kill_grace"),
                e.kill_grace.map_or(d.kill_grace, |t| t.0),
                MAX_DURATION,
            )?,
            env,
            workdir: match e.workdir {
                Some(w) => {
                    check.path(&at.key("workdir"), &w)?;
                    Some(absolute(state_dir, &w))
                }
                None => None,
            },
        })
    }

    fn effective(&self) -> Value {
        map([
            ("kind", Self::NAME.into()),
            (
                "command",
                self.command.iter().map(|a| Value::from(a.as_str())).collect(),
            ),
            (
                "fatal_exit_codes",
                self.fatal_exit_codes.iter().map(|&code| Value::from(code)).collect(),
            ),
            ("output_limit", bytes(self.output_limit as u64)),
            ("kill_grace", dur(self.kill_grace)),
            ("env", pairs(&self.env)),
            ("workdir", self.workdir.as_deref().map_or(Value::Null, path)),
        ])
    }

    fn start(&self, _nodes: &mut Nodes) -> Result<Arc<dyn Handler>, String> {
        Ok(Arc::new(ExecHandler::new(self.clone())?))
    }
}

fn check_program(check: &Check, key: &str, program: &str) -> spec::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let path = Path::new(program);
    if path.is_absolute() && !executable(path) {
        return check.err(
            key,
            format!("the program {program} is not an executable file; expected the full path of a program"),
        );
    }
    // A bare name is looked up in PATH by the handler itself (see `handler`).
    Ok(())
}
