//! Pumping one call's pipes from the calling thread with one `poll(2)`
//! loop: the payload into stdin, stdout and stderr out, the deadline and a
//! hurry watched between looks.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::group::leader_exited;
use super::{PIPE_DRAIN, STDERR_KEEP};
use crate::handler::CallContext;

/// Why a call cut its child short.
pub(super) enum Cut {
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
pub(super) struct Pump<'p> {
    stdin: Option<ChildStdin>,
    payload: &'p [u8],
    /// How much of `payload` went into stdin.
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The first `output_limit` bytes of stdout.
    pub(super) out: Vec<u8>,
    output_limit: usize,
    /// The end of stderr (trimmed to `STDERR_KEEP` in batches).
    err: Vec<u8>,
    /// Seen with `waitid(WNOWAIT)`: the leader exited, not yet reaped.
    exited: bool,
}

impl<'p> Pump<'p> {
    pub(super) fn new(child: &mut Child, payload: &'p [u8], output_limit: usize) -> io::Result<Self> {
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
    pub(super) fn run(&mut self, pgid: Pid, ctx: &CallContext<'_>, started: Instant, grace: Duration) -> Option<Cut> {
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
    pub(super) fn err_tail(&self) -> Vec<u8> {
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
}
