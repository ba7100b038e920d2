//! Hearing files arrive in `<dir>/` with inotify, so that an idle spool is
//! not polled: a thread blocks in `read(2)` on the inotify descriptor and
//! rings the source's [`Doorbell`] when an entry is renamed in
//! (`IN_MOVED_TO`) or closed after writing (`IN_CLOSE_WRITE`). Dot-names
//! (a producer's file in progress, lote's own) do not ring.
//!
//! When the watch cannot be set up (no inotify, `max_user_watches`
//! reached, a network file system, where other hosts' writes raise no
//! event) or ends (the directory removed, a read error), the bell goes
//! deaf and the producer polls every `poll_every`, as before inotify.
//!
//! The thread waits in `poll(2)` on the inotify descriptor and on a pipe
//! that dropping the [`Watch`] writes to, so it always ends, whatever the
//! kernel's event queue holds.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::statfs::statfs;

use crate::source::Doorbell;

/// The watch on one spool directory; dropping it ends its thread.
pub(super) struct Watch {
    inotify: Arc<Inotify>,
    wd: WatchDescriptor,
    /// Set before the watch is removed on drop, so the thread's last event
    /// (`IN_IGNORED`) is not taken for the directory going away.
    closing: Arc<AtomicBool>,
    /// Written to (or closed) on drop: ends the thread's `poll`.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// File systems where a write from another host raises no inotify event
/// (NFS, SMB/CIFS, SMB2, 9p, Ceph, AFS, Coda, NCP, FUSE): their magic
/// numbers (statfs(2)).
const REMOTE: [i64; 9] = [
    0x6969,      // NFS
    0x517b,      // SMB
    0xff53_4d42, // CIFS
    0xfe53_4d42, // SMB2
    0x0102_1997, // 9p
    0x00c3_6400, // Ceph
    0x5346_414f, // AFS
    0x7375_7245, // Coda
    0x564c,      // NCP
];
const FUSE: i64 = 0x6573_5546;

impl Watch {
    /// Watches `dir` (the configured path: a symlink in it is followed, as
    /// when it was opened) and rings `bell` on arrivals.
    pub(super) fn start(dir: &Path, bell: Arc<Doorbell>) -> io::Result<Watch> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?);
        // IN_CREATE: a file linked in (link(2), O_TMPFILE + linkat) raises
        // nothing else.
        let mask = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let wd = inotify.add_watch(dir, mask)?;
        // `fs_type_t` is i64 here, i32 on some 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        let kind = statfs(dir).ok().map(|fs| fs.filesystem_type().0 as i64);
        if let Some(remote) = kind.filter(|kind| REMOTE.contains(kind) || *kind == FUSE) {
            let _ = inotify.rm_watch(wd);
            return Err(io::Error::other(format!(
                "it is on a network or FUSE file system (type {remote:#x}), where files written by other hosts raise no event"
            )));
        }
        let (wait, wake) = nix::unistd::pipe()?;
        let closing = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("lote-spool-watch".into()).spawn({
            let (inotify, closing, dir) = (Arc::clone(&inotify), Arc::clone(&closing), dir.to_path_buf());
            move || listen(&inotify, &wait, &bell, &closing, &dir)
        })?;
        Ok(Watch {
            inotify,
            wd,
            closing,
            wake: Some(wake),
            thread: Some(thread),
        })
    }
}

/// The watch thread: rings on each batch of events with an arrival, until
/// the watch is removed.
fn listen(inotify: &Inotify, wait: &OwnedFd, bell: &Doorbell, closing: &AtomicBool, dir: &Path) {
    loop {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(wait.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                log::warn!(
                    "spool {}: waiting for inotify events failed ({e}); polling every poll_every from now on",
                    dir.display()
                );
                bell.go_deaf();
                return;
            }
        }
        // The pipe: readable (a byte) or hung up (the write end closed).
        if fds[1].revents().is_some_and(|r| !r.is_empty()) || closing.load(Ordering::Acquire) {
            return;
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => {
                log::warn!(
                    "spool {}: reading inotify events failed ({e}); polling every poll_every from now on",
                    dir.display()
                );
                bell.go_deaf();
                return;
            }
        };
        let mut arrived = false;
        for event in &events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                if !closing.load(Ordering::Acquire) {
                    log::warn!(
                        "spool {}: the directory is no longer watched (removed?); polling every poll_every from now on",
                        dir.display()
                    );
                    bell.go_deaf();
                }
                return;
            }
            // An overflow lost events: any of them may have been an arrival.
            arrived |= event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                || event
                    .name
                    .as_ref()
                    .is_some_and(|name| name.as_bytes().first() != Some(&b'.'));
        }
        if arrived {
            bell.ring();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.inotify.rm_watch(self.wd);
        // Closing the write end hangs up the pipe: the thread's poll returns.
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
