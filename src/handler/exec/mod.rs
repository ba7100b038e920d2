//! `exec`: runs a command per item (argv, never a shell string) with the
//! payload on stdin (SPEC §3.6).
//!
//! # Invariants
//!
//! - **No shell.** `command[0]` is resolved once, in [`ExecHandler::new`], to an
//!   absolute path (through PATH when it has no `/`); each call runs that file
//!   with `command[1..]` as its arguments. Nothing is ever parsed by a shell
//!   (SPEC §3.10); a user who wants one writes `["sh", "-c", "…"]` themselves.
//! - **What the child gets.** stdin: the payload, written as the pipe takes it
//!   by the call's `poll` loop (which reads stdout and stderr in the same
//!   loop) and then closed (an empty payload is `/dev/null`), so a child that
//!   reads slowly, or not at all, cannot deadlock lote. Environment: lote's own, then
//!   `config.env`, then `LOTE_ITEM_ID`, `LOTE_ATTEMPT`, `LOTE_PRIORITY` (lote's
//!   three win). Working directory: `config.workdir`, else lote's.
//! - **What lote keeps.** stdout: the first `output_limit` bytes become the
//!   output (lossy UTF-8); the rest is read and thrown away, so the child never
//!   blocks on a full pipe. stderr: the last [`STDERR_KEEP`] bytes, for the
//!   failure message.
//! - **Exit mapping.** 0 → done with the output. `N` in `fatal_exit_codes` →
//!   `Failure::fatal("exit code N: <stderr tail>")`. Any other `N` →
//!   `Failure::retryable("exit code N: <stderr tail>")`. Killed by a signal `S`
//!   → `Failure::retryable("killed by signal S: <stderr tail>")`. (Without
//!   stderr the `: …` part is left out.) Past the call's deadline →
//!   `Failure::timed_out` ("timed out after Nms"); lote in a hurry or closed by
//!   [`ExecHandler::kill_all_running`] → `"cut short: lote is stopping"`.
//!   A child that cannot be started → retryable: a missing program is the
//!   box's fault, not the item's, and the breaker should see it.
//! - **One process group per call.** The child leads a new process group
//!   (`process_group(0)`), so its descendants can be signalled together. What
//!   signals the group, and when:
//!   1. the call's deadline passes, or lote hurries (a second SIGTERM):
//!      SIGTERM, then SIGKILL once `kill_grace` has passed or the child has
//!      exited, whichever is first (so a grandchild that ignores SIGTERM still
//!      dies);
//!   2. the child exits on its own: SIGKILL to whatever it left behind in its
//!      group — a call's processes end with the call;
//!   3. [`ExecHandler::kill_all_running`] (the daemon, on its way out): SIGKILL
//!      to every running group, and no new child starts.
//! - **No stray signals.** A group is signalled only while its leader is not
//!   yet reaped (a zombie at worst), and the pgid is the leader's pid, which
//!   the kernel cannot hand to another process until the leader is reaped. The
//!   exit is observed with `waitid(WNOWAIT)`, which does not reap; the leader
//!   is reaped only after its group's last signal and after it has left the
//!   registry of running groups, under the registry's lock.
//!
//! # What this does not cover
//!
//! A descendant that leaves the group (`setsid`, `setpgid`) is beyond the
//! group signals; if it keeps stdout or stderr open, the call waits at most
//! [`PIPE_DRAIN`] for it and returns what was read by then. If lote itself is
//! SIGKILLed, its children are re-parented and run on: `PR_SET_PDEATHSIG`
//! would need an `unsafe` `pre_exec` hook, which this crate forbids. Both gaps
//! are closed by the systemd units' `KillMode=mixed` (every unit in
//! `packaging/systemd`): a stop sends SIGTERM to lote alone, so it finishes
//! the items in hand and ends its own groups, and once lote has exited (or
//! `TimeoutStopSec` has passed) systemd SIGKILLs whatever is left in the
//! service's cgroup, escaped descendants included.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

mod group;
mod kind;
mod pump;

use group::{Groups, Running};
use pump::{Cut, Pump};

use super::batch::{parse_reply, request_body};
use super::{BatchHandler, BatchReply, CallContext, Failure, Handler};
use crate::item::Item;
use crate::sync::Mutex;

/// Bytes of stderr kept (the tail) for a failure message.
pub const STDERR_KEEP: usize = 4 * 1024;

/// How long a call waits, once the child's group is dead, for stdout and
/// stderr to reach end-of-file. Only a descendant that escaped the group can
/// hold them open longer; the call does not wait for it.
pub const PIPE_DRAIN: Duration = Duration::from_millis(250);

/// The message of a call cut short by a hurry or by `kill_all_running`.
const CUT_SHORT: &str = "cut short: lote is stopping";

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

impl Default for ExecConfig {
    /// No command (it must be set), no fatal codes, 64 KiB of output, 5 s of
    /// grace, no extra environment, lote's working directory.
    fn default() -> Self {
        ExecConfig {
            command: Vec::new(),
            fatal_exit_codes: Vec::new(),
            output_limit: 64 * 1024,
            kill_grace: Duration::from_secs(5),
            env: Vec::new(),
            workdir: None,
        }
    }
}

impl ExecConfig {
    /// The defaults, running `command` (program first).
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecConfig {
            command: command.into_iter().map(Into::into).collect(),
            ..ExecConfig::default()
        }
    }
}

/// Runs [`ExecConfig::command`] once per item. One value serves every worker.
#[derive(Debug)]
pub struct ExecHandler {
    config: ExecConfig,
    /// `command[0]` resolved to an absolute path when the handler was built,
    /// so `workdir` cannot change which file runs.
    program: PathBuf,
    /// The process groups (= leader pids) of the children running now.
    /// Protects: membership, which is what makes a pgid safe to signal (see the
    /// module invariants), and `closed`. Held only for set operations and
    /// `killpg` calls, never across a spawn or a wait.
    groups: Mutex<Groups>,
}

impl ExecHandler {
    /// Checks `config` and resolves the program. The error says what is wrong
    /// and what to do about it.
    pub fn new(config: ExecConfig) -> Result<Self, String> {
        let Some(program) = config.command.first() else {
            return Err(
                "exec handler: `command` is empty; give the program and its arguments as a list, \
                 e.g. [\"/usr/local/bin/resize\", \"--width\", \"800\"]"
                    .to_string(),
            );
        };
        if program.is_empty() {
            return Err("exec handler: `command[0]` is empty; give the program to run".to_string());
        }
        if let Some(arg) = config.command.iter().find(|arg| arg.contains('\0')) {
            return Err(format!("exec handler: command argument {arg:?} contains a NUL byte"));
        }
        for (key, value) in &config.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(format!(
                    "exec handler: env name {key:?} is not valid; names must be non-empty, without `=` or NUL"
                ));
            }
            if value.contains('\0') {
                return Err(format!("exec handler: env {key} has a NUL byte in its value"));
            }
        }
        if let Some(dir) = &config.workdir {
            if !dir.is_dir() {
                return Err(format!(
                    "exec handler: workdir {} is not a directory; create it or fix `workdir`",
                    dir.display()
                ));
            }
        }
        let program = resolve_program(program)?;
        Ok(ExecHandler {
            config,
            program,
            groups: Mutex::new(Groups::default()),
        })
    }

    /// The settings this handler runs with.
    pub fn config(&self) -> &ExecConfig {
        &self.config
    }

    /// The absolute path of the program each call runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts the child and registers its group. The returned guard kills and
    /// reaps the child if the call ends (or panics) before `finish`.
    fn spawn(&self, call: &ChildCall<'_>) -> Result<Running<'_>, Failure> {
        let mut command = Command::new(&self.program);
        command
            // `ps` shows the program as the user wrote it.
            .arg0(&self.config.command[0])
            .args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .envs(call.env.iter().map(|(k, v)| (k, v)))
            .stdin(if call.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &self.config.workdir {
            command.current_dir(dir);
        }
        let child = command
            .spawn()
            .map_err(|e| Failure::retryable(format!("cannot start {}: {e}", self.program.display())))?;
        let pgid = Pid::from_raw(child.id() as i32);
        let closed = {
            let mut groups = self.groups.lock();
            groups.running.insert(pgid.as_raw());
            groups.closed
        };
        let running = Running {
            handler: self,
            child,
            pgid,
            reaped: false,
        };
        if closed {
            // `kill_all_running` ran while we were spawning; `running` drops
            // here, which kills and reaps the child.
            return Err(Failure::retryable(CUT_SHORT));
        }
        Ok(running)
    }
}

/// What one child gets: its stdin, lote's variables, how much stdout to keep.
struct ChildCall<'a> {
    stdin: &'a [u8],
    env: Vec<(&'static str, String)>,
    read_limit: usize,
}

impl ExecHandler {
    /// Runs the program once for `call`: its stdout (the first
    /// `read_limit` bytes) on exit 0, else the failure the exit maps to.
    fn run(&self, ctx: &CallContext<'_>, call: ChildCall<'_>) -> Result<Vec<u8>, Failure> {
        if ctx.is_cancelled() || self.is_closed() {
            return Err(Failure::retryable(CUT_SHORT));
        }
        if ctx.expired() {
            return Err(Failure::timed_out(Duration::ZERO));
        }
        let started = Instant::now();
        let mut running = self.spawn(&call)?;
        let mut pump = Pump::new(&mut running.child, call.stdin, call.read_limit)
            .map_err(|e| Failure::retryable(format!("cannot set up the child's pipes: {e}")))?;
        let cut = pump.run(running.pgid, ctx, started, self.config.kill_grace);
        // SIGKILL to the group: the leader if it outlived the grace, or
        // whatever it left behind.
        let status = running.finish();

        if let Some(cut) = cut {
            return Err(match cut {
                Cut::Deadline(after) => Failure::timed_out(after),
                Cut::Hurry => Failure::retryable(CUT_SHORT),
            });
        }
        let status =
            status.map_err(|e| Failure::retryable(format!("cannot wait for {}: {e}", self.program.display())))?;
        if status.success() {
            return Ok(pump.out);
        }
        let tail = pump.err_tail();
        let tail = String::from_utf8_lossy(&tail);
        let tail = tail.trim();
        let with_tail = |head: String| {
            if tail.is_empty() {
                head
            } else {
                format!("{head}: {tail}")
            }
        };
        match (status.code(), status.signal()) {
            (Some(code), _) if self.config.fatal_exit_codes.contains(&code) => {
                Err(Failure::fatal(with_tail(format!("exit code {code}"))))
            }
            (Some(code), _) => Err(Failure::retryable(with_tail(format!("exit code {code}")))),
            (None, Some(_)) if self.is_closed() => Err(Failure::retryable(CUT_SHORT)),
            (None, Some(signal)) => {
                let name = Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.as_str().to_string());
                Err(Failure::retryable(with_tail(format!("killed by signal {name}"))))
            }
            (None, None) => Err(Failure::retryable(with_tail(format!("ended with {status}")))),
        }
    }
}

impl Handler for ExecHandler {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        if item.id.contains('\0') {
            return Err(Failure::fatal(
                "item id contains a NUL byte; it cannot be passed in LOTE_ITEM_ID",
            ));
        }
        let call = ChildCall {
            stdin: &item.payload,
            env: vec![
                ("LOTE_ITEM_ID", item.id.clone()),
                ("LOTE_ATTEMPT", ctx.attempt().to_string()),
                ("LOTE_PRIORITY", ctx.priority().to_string()),
            ],
            read_limit: self.config.output_limit,
        };
        let out = self.run(ctx, call)?;
        Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn kill_running(&self) {
        self.kill_all_running();
    }

    fn as_batch(&self) -> Option<&dyn BatchHandler> {
        Some(self)
    }
}

/// Bytes of a reply line besides the item's output: its id, `ok`, quoting.
const REPLY_LINE_EXTRA: usize = 256;

/// The batch call (SPEC §3.12): the batch's NDJSON on stdin; exit 0 with an
/// empty stdout is all done, with NDJSON lines per item; a non-zero exit
/// fails the whole batch as it would one item. The child gets
/// `LOTE_BATCH_KEY`, `LOTE_BATCH_SIZE`, `LOTE_ATTEMPT` and `LOTE_PRIORITY`
/// (the most urgent item's), no `LOTE_ITEM_ID`.
impl BatchHandler for ExecHandler {
    fn handle_batch(&self, ctx: &CallContext<'_>, items: &[Item]) -> Result<BatchReply, Failure> {
        let stdin = request_body(items);
        let per_line = self.config.output_limit.saturating_add(REPLY_LINE_EXTRA);
        let call = ChildCall {
            stdin: &stdin,
            env: vec![
                ("LOTE_BATCH_KEY", ctx.idempotency_key().to_string()),
                ("LOTE_BATCH_SIZE", items.len().to_string()),
                ("LOTE_ATTEMPT", ctx.attempt().to_string()),
                ("LOTE_PRIORITY", ctx.priority().to_string()),
            ],
            read_limit: per_line.saturating_mul(items.len()),
        };
        parse_reply(&self.run(ctx, call)?)
    }
}

/// `program` as an absolute path to an executable file, or an error saying
/// what to do.
fn resolve_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = std::path::absolute(program)
            .map_err(|e| format!("exec handler: program {program}: cannot make the path absolute: {e}"))?;
        return check_executable(&path).map(|()| path).map_err(|why| {
            format!("exec handler: program {program} {why}; check `command[0]` or install the program")
        });
    }
    let Some(search) = std::env::var_os("PATH") else {
        return Err(format!(
            "exec handler: program {program} cannot be looked up: PATH is not set; give its full path"
        ));
    };
    std::env::split_paths(&search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| check_executable(candidate).is_ok())
        .ok_or_else(|| {
            format!(
                "exec handler: program {program} is not in PATH ({}); install it or give its full path",
                search.to_string_lossy()
            )
        })
}

fn check_executable(path: &Path) -> Result<(), &'static str> {
    let meta = std::fs::metadata(path).map_err(|_| "does not exist")?;
    if !meta.is_file() {
        return Err("is not a regular file");
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (chmod +x it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_through_path_or_fail_clearly() {
        assert!(resolve_program("sh").unwrap().is_absolute());
        let err = resolve_program("lote-no-such-program").unwrap_err();
        assert!(err.contains("lote-no-such-program") && err.contains("PATH"), "{err}");
        let err = resolve_program("/nonexistent/prog").unwrap_err();
        assert!(err.contains("/nonexistent/prog does not exist"), "{err}");
        let err = resolve_program("/").unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
