//! `exec`: runs a command per item (argv, never a shell string) with the
//! payload on stdin (SPEC §3.6).
//!
//! # Invariants
//!
//! - **No shell.** `command[0]` is resolved once, in [`ExecHandler::new`], to an
//!   absolute path (through PATH when it has no `/`); each call runs that file
//!   with `command[1..]` as its arguments. Nothing is ever parsed by a shell
//!   (SPEC §3.10); a user who wants one writes `["sh", "-c", "…"]` themselves.
//! - **What the child gets.** stdin: the payload, written by its own thread and
//!   then closed (an empty payload is `/dev/null`), so a child that reads slowly,
//!   or not at all, cannot deadlock lote. Environment: lote's own, then
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
//! are closed by the systemd unit's `KillMode=control-group`, which kills the
//! whole cgroup when lote's service stops.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use super::{CallContext, Failure, Handler};
use crate::item::Item;
use crate::session::StopLevel;
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
        let (events_tx, events) = mpsc::channel();
        let helper_failed = |e: io::Error| Failure::retryable(format!("cannot start a helper thread: {e}"));

        if let Some(stdin) = running.child.stdin.take() {
            // A copy: the writer may outlive the call if the child's stdin is
            // held open by a process that escaped its group.
            let payload = item.payload.clone();
            spawn_named("lote-exec-stdin", move || feed_stdin(stdin, &payload)).map_err(helper_failed)?;
        }
        let stdout = running.child.stdout.take().expect("stdout is piped");
        let stdout = Capture::start(
            "lote-exec-stdout",
            stdout,
            Keep::Head(self.config.output_limit),
            &events_tx,
        )
        .map_err(helper_failed)?;
        let stderr = running.child.stderr.take().expect("stderr is piped");
        let stderr =
            Capture::start("lote-exec-stderr", stderr, Keep::Tail(STDERR_KEEP), &events_tx).map_err(helper_failed)?;
        let pid = running.pgid;
        let exit_tx = events_tx.clone();
        spawn_named("lote-exec-wait", move || wait_for_exit(pid, exit_tx)).map_err(helper_failed)?;
        // Wakes the wait below at once on a hurry; called at once if lote is
        // already hurrying. Unregistered when `_hurry` drops.
        let hurry_tx = events_tx.clone();
        let _hurry = ctx.stop_handle().on_change(move |level| {
            if level == StopLevel::Hurry {
                let _ = hurry_tx.send(Event::Hurry);
            }
        });
        // `events_tx` lives to the end of the call, so `events` never
        // disconnects: every wait below ends by an event or by its timeout.
        let mut waits = Waits {
            events,
            pipes_open: 2,
            leader_exited: false,
        };

        let cut = waits.run(ctx.deadline(), started);
        if cut.is_some() {
            let _ = killpg(running.pgid, Signal::SIGTERM);
            waits.grace(self.config.kill_grace);
        }
        // SIGKILL to the group: the leader if it outlived the grace, or
        // whatever it left behind.
        let status = running.finish();
        waits.drain(PIPE_DRAIN);
        drop(events_tx);

        if let Some(cut) = cut {
            return Err(match cut {
                Cut::Deadline(after) => Failure::timed_out(after),
                Cut::Hurry => Failure::retryable(CUT_SHORT),
            });
        }
        let status =
            status.map_err(|e| Failure::retryable(format!("cannot wait for {}: {e}", self.program.display())))?;
        if status.success() {
            let bytes = stdout.take();
            return Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
        }
        let tail = stderr.take();
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

/// What wakes a waiting call.
enum Event {
    /// The leader exited (observed without reaping it).
    LeaderExited,
    /// stdout or stderr reached end-of-file.
    PipeClosed,
    /// lote is in a hurry.
    Hurry,
}

/// Why a call cut its child short.
enum Cut {
    /// The deadline passed, this long after the spawn.
    Deadline(Duration),
    Hurry,
}

/// The call's side of the event channel, and what it has heard so far.
struct Waits {
    events: Receiver<Event>,
    pipes_open: u8,
    leader_exited: bool,
}

impl Waits {
    /// Waits for one event until `until` (`None`: with no time limit). Returns
    /// the event that ended the wait (`None` on timeout). Counts pipes closed.
    fn next(&mut self, until: Option<Instant>) -> Option<Event> {
        let event = match until {
            Some(until) => match self
                .events
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return None,
                // The call holds a sender, so this cannot happen; a timeout is
                // the safe reading.
                Err(RecvTimeoutError::Disconnected) => return None,
            },
            None => self.events.recv().ok()?,
        };
        match event {
            Event::LeaderExited => self.leader_exited = true,
            Event::PipeClosed => self.pipes_open -= 1,
            Event::Hurry => {}
        }
        Some(event)
    }

    /// The normal wait: until the leader exits (`None`), the deadline passes or
    /// lote hurries.
    fn run(&mut self, deadline: Option<Instant>, started: Instant) -> Option<Cut> {
        loop {
            match self.next(deadline) {
                Some(Event::LeaderExited) => return None,
                Some(Event::Hurry) => return Some(Cut::Hurry),
                Some(Event::PipeClosed) => {}
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Some(Cut::Deadline(started.elapsed()));
                }
                // `recv` failed without a deadline (impossible, see `next`):
                // treat like a deadline rather than spin.
                None if deadline.is_none() => return Some(Cut::Deadline(started.elapsed())),
                None => {}
            }
        }
    }

    /// After SIGTERM: until the leader exits or `grace` passes.
    fn grace(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        while !self.leader_exited && Instant::now() < until {
            self.next(Some(until));
        }
    }

    /// After the group is dead: until both pipes are closed or `limit` passes.
    fn drain(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.pipes_open > 0 && Instant::now() < until {
            self.next(Some(until));
        }
    }
}

/// Which bytes of a stream to keep.
#[derive(Clone, Copy)]
enum Keep {
    /// The first n.
    Head(usize),
    /// The last n.
    Tail(usize),
}

/// A pipe read to end-of-file by its own thread, keeping some of the bytes.
/// The buffer is shared rather than returned so the call can take what was
/// read even if the reader is still blocked on an escaped descendant.
struct Capture {
    keep: Keep,
    /// What was kept so far. Locked per chunk read, and by `take`.
    bytes: Mutex<Vec<u8>>,
}

impl Capture {
    fn start(
        name: &str,
        mut pipe: impl Read + Send + 'static,
        keep: Keep,
        events: &Sender<Event>,
    ) -> io::Result<Arc<Capture>> {
        let capture = Arc::new(Capture {
            keep,
            bytes: Mutex::new(Vec::new()),
        });
        let reader = Arc::clone(&capture);
        let events = events.clone();
        spawn_named(name, move || {
            let mut chunk = vec![0u8; 32 * 1024];
            // Bytes seen so far (the head limit counts these, not the buffer,
            // so a `take` does not reopen the head).
            let mut seen = 0usize;
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        reader.push(&chunk[..n], seen);
                        seen = seen.saturating_add(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = events.send(Event::PipeClosed);
        })?;
        Ok(capture)
    }

    fn push(&self, chunk: &[u8], seen: usize) {
        match self.keep {
            Keep::Head(limit) => {
                let room = limit.saturating_sub(seen).min(chunk.len());
                if room > 0 {
                    self.bytes.lock().extend_from_slice(&chunk[..room]);
                }
            }
            Keep::Tail(limit) => {
                let mut bytes = self.bytes.lock();
                bytes.extend_from_slice(chunk);
                // Trim in batches, not per chunk.
                if bytes.len() > 2 * limit {
                    let excess = bytes.len() - limit;
                    bytes.drain(..excess);
                }
            }
        }
    }

    fn take(&self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut *self.bytes.lock());
        if let Keep::Tail(limit) = self.keep {
            let excess = bytes.len().saturating_sub(limit);
            bytes.drain(..excess);
        }
        bytes
    }
}

/// Writes the payload and closes stdin. A child that exits without reading
/// it all is its own business (EPIPE is not an error here; std leaves
/// SIGPIPE ignored in lote).
fn feed_stdin(mut stdin: std::process::ChildStdin, payload: &[u8]) {
    if let Err(e) = stdin.write_all(payload) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            log::debug!("exec: writing the payload to the child's stdin failed: {e}");
        }
    }
}

/// Blocks until `pid` exits, without reaping it, then says so.
fn wait_for_exit(pid: Pid, events: Sender<Event>) {
    // WNOWAIT: the leader stays a zombie, so its pid (the pgid) is not
    // recycled before `Running::finish` has sent its last signal. Any result
    // but EINTR ends the wait: an exit, or an error that cannot happen for our
    // own unreaped child (ECHILD, EINVAL) — either way the call should go on.
    while let Err(Errno::EINTR) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
    let _ = events.send(Event::LeaderExited);
}

fn spawn_named(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    // Reused helper threads: four thread starts per call were the cost.
    super::helpers::run(name, body)
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
        let capture = Capture {
            keep: Keep::Head(5),
            bytes: Mutex::new(Vec::new()),
        };
        capture.push(b"abc", 0);
        capture.push(b"defg", 3);
        capture.push(b"hij", 7);
        assert_eq!(capture.take(), b"abcde");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let capture = Capture {
            keep: Keep::Tail(4),
            bytes: Mutex::new(Vec::new()),
        };
        for chunk in [&b"0123"[..], b"4567", b"89"] {
            capture.push(chunk, 0);
        }
        assert_eq!(capture.take(), b"6789");
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
