//! The process groups of the running children: which pgids are ours to
//! signal (the module invariants), the guard that kills and reaps a child
//! however its call ends, and closing the handler on the way out.

use std::collections::HashSet;
use std::io;
use std::process::{Child, ExitStatus};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::ExecHandler;

#[derive(Debug, Default)]
pub(super) struct Groups {
    pub(super) running: HashSet<i32>,
    /// Set by `kill_all_running`: no new child may start.
    pub(super) closed: bool,
}

impl ExecHandler {
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

    pub(super) fn is_closed(&self) -> bool {
        self.groups.lock().closed
    }
}

/// A spawned child whose group is registered as running.
pub(super) struct Running<'h> {
    pub(super) handler: &'h ExecHandler,
    pub(super) child: Child,
    pub(super) pgid: Pid,
    pub(super) reaped: bool,
}

impl Running<'_> {
    /// SIGKILLs the group, leaves the registry, then reaps the leader — in
    /// that order, so no signal can reach a recycled pid.
    pub(super) fn finish(&mut self) -> io::Result<ExitStatus> {
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

/// True once `pgid`'s leader has exited, seen without reaping it (WNOWAIT:
/// its pid, the pgid, is not recycled before `Running::finish`).
pub(super) fn leader_exited(pgid: Pid) -> bool {
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
