//! Hearing files arrive in `<dir>/` with inotify, so that an idle spool is
//! not polled: a thread blocks in `read(2)` on the inotify descriptor and
//! rings the source's [`Doorbell`] when an entry is renamed in
//! (`IN_MOVED_TO`) or closed after writing (`IN_CLOSE_WRITE`). Dot-names
//! (a producer's file in progress, lote's own) do not ring.
//!
//! When the watch cannot be set up (no inotify, `max_user_watches`
//! reached) or ends (the directory removed, a read error), the bell goes
//! deaf and the producer polls every `poll_every`, as before inotify.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::source::Doorbell;

/// The watch on one spool directory; dropping it ends its thread.
pub(super) struct Watch {
    inotify: Arc<Inotify>,
    wd: WatchDescriptor,
    /// Set before the watch is removed on drop, so the thread's last event
    /// (`IN_IGNORED`) is not taken for the directory going away.
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Watches `dir` (the configured path: a symlink in it is followed, as
    /// when it was opened) and rings `bell` on arrivals.
    pub(super) fn start(dir: &Path, bell: Arc<Doorbell>) -> io::Result<Watch> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
        let mask = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let wd = inotify.add_watch(dir, mask)?;
        let closing = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("lote-spool-watch".into()).spawn({
            let (inotify, closing, dir) = (Arc::clone(&inotify), Arc::clone(&closing), dir.to_path_buf());
            move || listen(&inotify, &bell, &closing, &dir)
        })?;
        Ok(Watch {
            inotify,
            wd,
            closing,
            thread: Some(thread),
        })
    }
}

/// The watch thread: rings on each batch of events with an arrival, until
/// the watch is removed.
fn listen(inotify: &Inotify, bell: &Doorbell, closing: &AtomicBool, dir: &Path) {
    loop {
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR) => continue,
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
        // Removing the watch queues IN_IGNORED, which ends the thread's read.
        if self.inotify.rm_watch(self.wd).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
