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

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{CallContext, Failure, Handler};
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

#[derive(Debug, Default)]
struct Groups {
    running: HashSet<i32>,
    /// Set by `kill_all_running`: no new child may start.
    closed: bool,
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

    /// SIGKILLs the process group of every child running now, and closes the
    /// handler: from now on a call starts no child and fails at once with
    /// "cut short: lote is stopping" (retryable), as do the calls whose child
    /// this killed. For the daemon's way out, so no child outlives lote.
    /// Returns how many groups were signalled.
    pub fn kill_all_running(&self) -> usize {
        let mut groups = self.groups.lock();
        groups.closed = true;
        // Under the lock: a pgid in `running` belongs to an unreaped leader,
        // so it cannot name anyone else's group (module invariants).
        for &pgid in &groups.running {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        groups.running.len()
    }

    fn is_closed(&self) -> bool {
        self.groups.lock().closed
    }

    /// Starts the child and registers its group. The returned guard kills and
    /// reaps the child if the call ends (or panics) before `finish`.
    fn spawn(&self, ctx: &CallContext<'_>, item: &Item) -> Result<Running<'_>, Failure> {
        let mut command = Command::new(&self.program);
        command
            // `ps` shows the program as the user wrote it.
            .arg0(&self.config.command[0])
            .args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env("LOTE_ITEM_ID", &item.id)
            .env("LOTE_ATTEMPT", ctx.attempt().to_string())
            .env("LOTE_PRIORITY", ctx.priority().to_string())
            .stdin(if item.payload.is_empty() {
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

impl Handler for ExecHandler {
    fn handle(&self, ctx: &CallContext<'_>, item: &Item) -> Result<String, Failure> {
        if ctx.is_cancelled() || self.is_closed() {
            return Err(Failure::retryable(CUT_SHORT));
        }
        if ctx.expired() {
            return Err(Failure::timed_out(Duration::ZERO));
        }
        if item.id.contains('\0') {
            return Err(Failure::fatal(
                "item id contains a NUL byte; it cannot be passed in LOTE_ITEM_ID",
            ));
        }

        let started = Instant::now();
        let mut running = self.spawn(ctx, item)?;
        let mut pump = Pump::new(&mut running.child, &item.payload, self.config.output_limit)
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
            let bytes = pump.out;
            return Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
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

/// A spawned child whose group is registered as running.
struct Running<'h> {
    handler: &'h ExecHandler,
    child: Child,
    pgid: Pid,
    reaped: bool,
}

impl Running<'_> {
    /// SIGKILLs the group, leaves the registry, then reaps the leader — in
    /// that order, so no signal can reach a recycled pid.
    fn finish(&mut self) -> io::Result<ExitStatus> {
        // The leader is not reaped yet, so this pgid is still ours; a zombie
        // leader ignores the signal, its leftovers do not.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        self.handler.groups.lock().running.remove(&self.pgid.as_raw());
        self.reaped = true;
        // Blocks only until the SIGKILL lands (or returns the zombie's status).
        self.child.wait()
    }
}

impl Drop for Running<'_> {
    // An early return or a panic between spawn and `finish`: the child must
    // not outlive the call.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.finish();
        }
    }
}

/// Why a call cut its child short.
enum Cut {
    /// The deadline passed, this long after the spawn.
    Deadline(Duration),
    Hurry,
}

/// How long the pump sleeps at most between looks at the deadline, the hurry
/// flag and the leader's exit while the child runs.
const TICK: Duration = Duration::from_millis(20);

/// One call's pipes, pumped from the calling thread with `poll(2)` (what
/// std's `Command::output` does): the payload goes into stdin as the pipe
/// takes it, stdout and stderr are read as they come, so a child that writes
/// a lot while reading slowly cannot deadlock the call. One thread per call
/// and no helpers: measured, four helper threads per call cost more than the
/// child itself on 2 cores (benches/exec.rs).
struct Pump<'p> {
    stdin: Option<ChildStdin>,
    payload: &'p [u8],
    /// How much of `payload` went into stdin.
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The first `output_limit` bytes of stdout.
    out: Vec<u8>,
    output_limit: usize,
    /// The end of stderr (trimmed to `STDERR_KEEP` in batches).
    err: Vec<u8>,
    /// Seen with `waitid(WNOWAIT)`: the leader exited, not yet reaped.
    exited: bool,
}

impl<'p> Pump<'p> {
    fn new(child: &mut Child, payload: &'p [u8], output_limit: usize) -> io::Result<Self> {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if let Some(fd) = &stdin {
            set_nonblocking(fd)?;
        }
        if let Some(fd) = &stdout {
            set_nonblocking(fd)?;
        }
        if let Some(fd) = &stderr {
            set_nonblocking(fd)?;
        }
        Ok(Pump {
            stdin,
            payload,
            written: 0,
            stdout,
            stderr,
            out: Vec::new(),
            output_limit,
            err: Vec::new(),
            exited: false,
        })
    }

    fn pipes_closed(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Pumps until the leader has exited and its pipes are drained (`None`),
    /// or the call is cut short: on the deadline or a hurry the group gets
    /// SIGTERM, and the pump returns once the leader exits or `grace` passes.
    fn run(&mut self, pgid: Pid, ctx: &CallContext<'_>, started: Instant, grace: Duration) -> Option<Cut> {
        let mut cut = None;
        let mut grace_until: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        let mut exit_looks = 0u32;
        loop {
            if !self.exited && leader_exited(pgid) {
                self.exited = true;
                // Whatever it left in its group dies with it. The leader is
                // not reaped, so the pgid is still ours (module invariants).
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let now = Instant::now();
            if self.exited {
                // Drain what the group wrote; a descendant that escaped the
                // group and holds a pipe open gets `PIPE_DRAIN`, no more.
                let until = *drain_until.get_or_insert(now + PIPE_DRAIN);
                if self.pipes_closed() || now >= until {
                    return cut;
                }
            } else if cut.is_none() {
                let why = if ctx.is_cancelled() {
                    Some(Cut::Hurry)
                } else if ctx.deadline().is_some_and(|d| now >= d) {
                    Some(Cut::Deadline(started.elapsed()))
                } else {
                    None
                };
                if let Some(why) = why {
                    let _ = killpg(pgid, Signal::SIGTERM);
                    // None (SIGKILL never comes) only past the clock's
                    // end; validation bounds `kill_grace` far below it.
                    grace_until = now.checked_add(grace);
                    cut = Some(why);
                }
            } else if grace_until.is_some_and(|until| now >= until) {
                return cut; // `finish` sends the SIGKILL
            }
            let mut wait = TICK;
            if self.pipes_closed() && !self.exited {
                // The exit follows end-of-file within microseconds (the
                // kernel closes the files first): look again at once a few
                // times, then back off.
                exit_looks += 1;
                if exit_looks <= 16 {
                    std::thread::yield_now();
                    continue;
                }
                wait = Duration::from_micros(250 << (exit_looks - 16).min(6)).min(TICK);
            }
            for until in [ctx.deadline().filter(|_| cut.is_none()), grace_until, drain_until]
                .into_iter()
                .flatten()
            {
                wait = wait.min(until.saturating_duration_since(now));
            }
            self.poll_once(wait);
        }
    }

    /// One `poll` over the open pipes (or a sleep when none is open), then
    /// as much writing and reading as they allow without blocking.
    fn poll_once(&mut self, wait: Duration) {
        let timeout = PollTimeout::from(u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX));
        let (ready_in, ready_out, ready_err) = {
            let mut fds = Vec::with_capacity(3);
            let mut slots = [None; 3];
            if let Some(fd) = &self.stdin {
                slots[0] = Some(fds.len());
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
            }
            if let Some(fd) = &self.stdout {
                slots[1] = Some(fds.len());
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            if let Some(fd) = &self.stderr {
                slots[2] = Some(fds.len());
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            if fds.is_empty() {
                std::thread::sleep(wait);
                return;
            }
            if poll(&mut fds, timeout).is_err() {
                return; // EINTR: the caller looks at the clock and comes back
            }
            let ready = |slot: Option<usize>| slot.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()));
            (ready(slots[0]), ready(slots[1]), ready(slots[2]))
        };
        if ready_in {
            self.feed();
        }
        if ready_out {
            let (limit, out) = (self.output_limit, &mut self.out);
            if drain(&mut self.stdout, |chunk| keep_head(out, limit, chunk)) {
                self.stdout = None;
            }
        }
        if ready_err {
            let err = &mut self.err;
            if drain(&mut self.stderr, |chunk| keep_tail(err, STDERR_KEEP, chunk)) {
                self.stderr = None;
            }
        }
    }

    /// Writes what the pipe takes; closes stdin when the payload is in (or
    /// the child stopped reading: EPIPE is its own business).
    fn feed(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else { return };
        while self.written < self.payload.len() {
            match stdin.write(&self.payload[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::BrokenPipe {
                        log::debug!("exec: writing the payload to the child's stdin failed: {e}");
                    }
                    break;
                }
            }
        }
        self.stdin = None; // closing it is the child's end-of-file
    }

    /// The kept end of stderr.
    fn err_tail(&self) -> Vec<u8> {
        tail_of(&self.err, STDERR_KEEP).to_vec()
    }
}

/// Keeps the first `limit` bytes of a stream in `kept`; the rest is dropped.
fn keep_head(kept: &mut Vec<u8>, limit: usize, chunk: &[u8]) {
    let room = limit.saturating_sub(kept.len()).min(chunk.len());
    kept.extend_from_slice(&chunk[..room]);
}

/// Keeps (at least) the last `limit` bytes of a stream in `kept`, trimming
/// in batches rather than per chunk; `tail_of` cuts it to size.
fn keep_tail(kept: &mut Vec<u8>, limit: usize, chunk: &[u8]) {
    kept.extend_from_slice(chunk);
    if kept.len() > 2 * limit {
        let excess = kept.len() - limit;
        kept.drain(..excess);
    }
}

fn tail_of(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(limit)..]
}

/// Reads a non-blocking pipe until it would block, handing each chunk to
/// `keep`. True at end-of-file (or an error, read as end-of-file).
fn drain(pipe: &mut Option<impl Read>, mut keep: impl FnMut(&[u8])) -> bool {
    let Some(reader) = pipe.as_mut() else { return true };
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => keep(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// True once `pgid`'s leader has exited, seen without reaping it (WNOWAIT:
/// its pid, the pgid, is not recycled before `Running::finish`).
fn leader_exited(pgid: Pid) -> bool {
    loop {
        match waitid(
            Id::Pid(pgid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
        ) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            Err(Errno::EINTR) => {}
            // ECHILD/EINVAL cannot happen for our own unreaped child; if
            // they do, there is nothing to wait for.
            Err(_) => return true,
        }
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
    fn head_keeps_the_first_bytes_across_chunks() {
        let mut kept = Vec::new();
        for chunk in [&b"abc"[..], b"defg", b"hij"] {
            keep_head(&mut kept, 5, chunk);
        }
        assert_eq!(kept, b"abcde");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut kept = Vec::new();
        for chunk in [&b"0123"[..], b"4567", b"89"] {
            keep_tail(&mut kept, 4, chunk);
        }
        assert_eq!(tail_of(&kept, 4), b"6789");
    }

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
