//! Hearing items arrive with inotify, so that an idle stream source is not
//! polled: a thread blocks in `poll(2)` on the inotify descriptor and rings
//! the source's [`Doorbell`] when an event it listens for comes.
//!
//! - A spool ([`Watch::arrivals`]) watches its directory: an entry renamed
//!   in (`IN_MOVED_TO`), closed after writing (`IN_CLOSE_WRITE`) or linked
//!   in (`IN_CREATE`) rings. Dot-names (a producer's file in progress,
//!   lote's own) do not.
//! - The inbox ([`Watch::writes`]) watches its database's write-ahead log:
//!   every commit, by any process (`lote push`, another daemon's listener),
//!   writes to it (`IN_MODIFY`).
//!
//! When the watch cannot be set up (no inotify, `max_user_watches`
//! reached, a network file system, where other hosts' writes raise no
//! event) or ends (the path removed, a read error), the bell goes deaf and
//! the producer polls every `poll_every`, as before inotify.
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

/// The watch on one directory or file; dropping it ends its thread.
pub struct Watch {
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
    /// Watches the spool directory `dir` (the configured path: a symlink in
    /// it is followed, as when it was opened) and rings `bell` on arrivals.
    pub fn arrivals(dir: &Path, bell: Arc<Doorbell>) -> io::Result<Watch> {
        // IN_CREATE: a file linked in (link(2), O_TMPFILE + linkat) raises
        // nothing else.
        let mask = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        Watch::start(dir, mask, "spool", bell)
    }

    /// Watches the file `file` and rings `bell` whenever it is written.
    pub fn writes(file: &Path, bell: Arc<Doorbell>) -> io::Result<Watch> {
        let mask = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF;
        Watch::start(file, mask, "inbox", bell)
    }

    fn start(path: &Path, mask: AddWatchFlags, what: &'static str, bell: Arc<Doorbell>) -> io::Result<Watch> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?);
        let wd = inotify.add_watch(path, mask)?;
        // `fs_type_t` is i64 here, i32 on some 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        let kind = statfs(path).ok().map(|fs| fs.filesystem_type().0 as i64);
        if let Some(remote) = kind.filter(|kind| REMOTE.contains(kind) || *kind == FUSE) {
            let _ = inotify.rm_watch(wd);
            return Err(io::Error::other(format!(
                "it is on a network or FUSE file system (type {remote:#x}), where files written by other hosts raise no event"
            )));
        }
        let (wait, wake) = nix::unistd::pipe()?;
        let closing = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name(format!("lote-{what}-watch")).spawn({
            let (inotify, closing) = (Arc::clone(&inotify), Arc::clone(&closing));
            let place = format!("{what} {}", path.display());
            move || listen(&inotify, &wait, &bell, &closing, &place)
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
/// the watch is removed. `place` names the watch in logs ("spool /x").
fn listen(inotify: &Inotify, wait: &OwnedFd, bell: &Doorbell, closing: &AtomicBool, place: &str) {
    loop {
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(wait.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                log::warn!("{place}: waiting for inotify events failed ({e}); polling every poll_every from now on");
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
                log::warn!("{place}: reading inotify events failed ({e}); polling every poll_every from now on");
                bell.go_deaf();
                return;
            }
        };
        let mut arrived = false;
        for event in &events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                if !closing.load(Ordering::Acquire) {
                    log::warn!("{place}: it is no longer watched (removed?); polling every poll_every from now on");
                    bell.go_deaf();
                }
                return;
            }
            // An overflow lost events: any of them may have been an arrival.
            // A file's own watch has no names; a directory's dot-names are
            // files in progress.
            arrived |= event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                || event.mask.contains(AddWatchFlags::IN_MODIFY)
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
