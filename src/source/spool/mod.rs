//! `spool`: a directory; one file = one item (SPEC §3.6).
//!
//! Producers drop files into a directory. lote takes each regular file as one
//! item (id = the file name, payload = its bytes) and, once the item's outcome
//! is durable, moves the file to `done/` (or deletes it) or, if it failed, to
//! `failed/`.
//!
//! ```text
//! <dir>/
//!   10-urgent.json    pending; taken in (priority, name) order
//!   reading-7.json    pending
//!   .reading-8.json   a producer's file in progress: dot-files are ignored
//!   .claimed/         taken by a running lote, outcome not durable yet
//!   done/             finished (on_done: move)
//!   failed/           dead-lettered, and every entry that is not an item
//!   .lote.lock        held (shared) by every open spool source on <dir>
//! ```
//!
//! # Writing into a spool
//!
//! Write the file under a dot-name in the same directory (`.reading-8.json`)
//! and `rename` it to its final name: the rename is atomic, so lote sees
//! either nothing or the whole file, and a file renamed in is taken as soon
//! as it has been seen unchanged for `stable_for`. A file written in place is
//! also taken only after `stable_for` without a change in size or mtime,
//! which protects a writer only as long as it never pauses longer than that.
//! Names must be unique among files in flight: a file is never claimed while
//! one of the same name is in `.claimed/`, and is never given back over a
//! pending file of the same name (it goes back beside it as
//! `<name>.~<unix seconds>.<nanoseconds>~`, a new id). Move files in with `rename`, never `link`:
//! a file with more than one hard link is refused unread.
//!
//! Only regular files with one link and a UTF-8 name are items. Anything
//! else that is not a dot-entry (a FIFO, a socket, a device, a directory, a
//! hard link, a name that is not UTF-8) is claimed without being opened and
//! becomes a defective item that says why: it is dead-lettered and moved to
//! `failed/`. A name that is not UTF-8 gets an id with each byte that is not
//! UTF-8 as `%XX` (`caf\xe9.json` → `caf%E9.json`): the dead letter and
//! `failed/` carry that id. (A directory lote may not move, a producer's
//! mode 0755 one, is logged once and left where it is.) Symlinks are
//! skipped, logged once, and left (SPEC §3.6).
//!
//! # Invariants
//!
//! - A file is in exactly one of `<dir>/`, `.claimed/`, `done/` and `failed/`
//!   at any time, and moves between them only by `rename` within one
//!   directory tree, which is atomic: a power cut leaves it on one side or the
//!   other, never on both or neither.
//! - Every move is `renameat2(RENAME_NOREPLACE)` between directory handles
//!   (`files.rs`): an existing entry is never replaced. A name already in
//!   `done/` or `failed/` stays; the newcomer is kept beside it as
//!   `<name>.~<unix seconds>.<nanoseconds>~` (logged).
//! - Claiming is the rename `<dir>/<name>` → `.claimed/<name>`. Of two pulls
//!   racing for a file (in this process or in another lote on the same
//!   directory) exactly one rename succeeds; the other finds the file gone and
//!   moves on. An item's bytes are read only after its claim, from `.claimed/`.
//! - A file leaves `.claimed/` for `done/` or `failed/` only in `ack`, that
//!   is once its outcome is durable; the directories involved are fsynced
//!   once per ack batch, so an acknowledged move survives a power cut. (A
//!   claim or a give-back is not fsynced: `<dir>/` and `.claimed/` both mean
//!   "pending" after a crash.)
//! - A crash leaves claimed files in `.claimed/`. `open` moves them back to
//!   `<dir>/`, where they run again (at-least-once; exactly-once skips those
//!   whose outcome is durable). It does so only while it holds `.lote.lock`
//!   exclusively, that is when no other spool source has the directory open:
//!   a live process's claims are never taken from under it. (Claims left by a
//!   dead process while another one lives stay until an `open` finds the
//!   directory to itself; that is logged.)
//! - Symlinks are never followed. `<dir>` is opened once (the configured
//!   path is the administrator's: a symlink in it is followed), and every
//!   name below it is resolved from that handle, one component at a time.
//!   Entries are examined with `lstat`; a file is opened with `O_NOFOLLOW`
//!   and read only after checking that the opened file is the very regular
//!   file examined (same device and inode) with one hard link, so a link
//!   swapped in at the last moment is refused, not read.
//! - The producers' group may remove an empty `done/` or `failed/` and put
//!   something else in its place. `.claimed/`, `done/` and `failed/` are
//!   handles opened with `O_DIRECTORY|O_NOFOLLOW` and re-verified (device
//!   and inode of the name) before each batch of moves: a missing one is
//!   created again, another real directory is used (it can only be inside
//!   `<dir>`), a symlink or a file is refused loudly: the moves into it fail
//!   (their files stay in `.claimed/`, and run again after a restart, which
//!   refuses to open until it is removed). Nothing is ever moved through it.
//! - A half-written file is never taken: it must pass `stable_for` unchanged,
//!   and if its size, mtime or inode differ between the scan and the claim it
//!   is put back and waits again.

mod files;
mod kind;
mod priority;
mod scan;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use files::{DirHandle, SubDir};
use scan::{Fingerprint, ScanState};

use super::watch::Watch;
use super::{Doorbell, Pull, ReturnReason, Source, SourceError};
use crate::fsutil::{open_lock_file, sync_dir};
use crate::item::{Item, Outcome, Status};
use crate::sync::Mutex;

/// What happens to a file once its outcome is durable and `done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDone {
    /// Move it to `<dir>/done/` (default).
    #[default]
    Move,
    /// Delete it.
    Delete,
}

/// Where an item's priority comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolPriority {
    /// A leading number in the file name followed by `-` or `_`
    /// (`1-reading.json` → 1); files without one get the default priority.
    #[default]
    FilenamePrefix,
    /// Every item gets the default priority.
    Fixed,
    /// An integer field of the file's JSON object (`{"priority": 2, …}`).
    JsonField(String),
}

/// A spool source's settings (config section `source:` with `kind: spool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory to take files from.
    pub dir: PathBuf,
    pub on_done: OnDone,
    pub priority: SpoolPriority,
    /// A file must be unchanged (size and mtime) this long before it is taken,
    /// so half-written files are skipped. Default 1 s.
    pub stable_for: Duration,
    /// Larger files are not processed: they fail as defective and go to the
    /// dead-letter sink. Default 16 MiB.
    pub max_bytes: u64,
    /// `true`: an empty directory means "nothing yet" (a daemon polls);
    /// `false`: it ends the session.
    pub stream: bool,
}

impl SpoolConfig {
    /// The defaults for `dir`: done files moved to `done/`, priority from a
    /// file-name prefix, `stable_for` 1 s, `max_bytes` 16 MiB, not a stream.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            on_done: OnDone::Move,
            priority: SpoolPriority::FilenamePrefix,
            stable_for: Duration::from_secs(1),
            max_bytes: 16 * 1024 * 1024,
            stream: false,
        }
    }
}

const CLAIMED: &str = ".claimed";
const DONE: &str = "done";
const FAILED: &str = "failed";
const LOCK: &str = ".lote.lock";

/// Names in `<dir>/` that are never items: lote's own subdirectories (the
/// dot-names are skipped anyway) and the `lost+found` of a file system root.
const RESERVED: [&str; 3] = [DONE, FAILED, "lost+found"];

/// Why an entry whose name is not UTF-8 is dead-lettered.
const NOT_UTF8: &str = "its name is not UTF-8: refused unread (the id shows each byte that is not UTF-8 as %XX)";

/// A pull serves the sorted candidates of its last scan for at most this
/// long before it scans again, so a newly arrived urgent file waits at most
/// this long, and a backlog of 100 000 files is not listed once per pull.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

/// How long items given back wait before they are offered again (their
/// moves back into `<dir>/` are heard as arrivals; see `give_back`).
const GIVEN_BACK_PAUSE: Duration = Duration::from_secs(1);

/// How many of a scan's most urgent candidates are kept for the next pulls.
const READY_MAX: usize = 1024;

/// How many scans one pull makes when every candidate it finds is taken by
/// another process first, before it answers `Idle` (poll again).
const SCANS_PER_PULL: usize = 4;

/// A spool directory as a source.
pub struct SpoolSource {
    config: SpoolConfig,
    /// `<dir>` itself, opened once: every name below it is resolved from
    /// this handle, never from a path.
    root: OwnedFd,
    claimed: SubDir,
    done: SubDir,
    failed: SubDir,
    /// What pulls keep between scans. Only `pull` locks it (the producer
    /// thread), across a scan and its claims; `give_back` and `ack` never do,
    /// so a long scan never holds up a worker or the writer.
    scan: Mutex<ScanState>,
    /// Entries this source itself put back into `<dir>/` (give-backs,
    /// requeues, crash repair) with their fingerprint: they are known to be
    /// complete, so the next scan takes them without waiting `stable_for`.
    /// Filled by `give_back`, `ack` and `requeue`, drained by the next scan;
    /// locked only for a map operation.
    complete: Mutex<HashMap<OsString, Fingerprint>>,
    /// Claimed entries whose name is not UTF-8, by item id (the escaped
    /// name). They keep their own name in `.claimed/`, so a give-back or a
    /// crash repair puts back exactly what was there; `ack` moves them to
    /// `failed/` under the id. Filled by `claim`, emptied by `ack` and
    /// `give_back`; locked only for a map operation.
    raw_names: Mutex<HashMap<String, OsString>>,
    /// `.lote.lock`, held shared for the source's life, so that another
    /// source's `open` knows not to repair `.claimed/` under us. Released
    /// when the source is dropped (or the process dies).
    _lock: File,
    /// Rung by `watch` when a file arrives, and by `pull` for a file not
    /// stable yet; the producer waits on it when the spool is idle.
    bell: Arc<Doorbell>,
    /// The inotify watch on `<dir>`; `None` (and `bell` deaf) when it could
    /// not be set up: the producer then polls.
    _watch: Option<Watch>,
}

impl SpoolSource {
    /// Opens the spool: creates `dir`, `done/`, `failed/` and `.claimed/` if
    /// missing, and moves files a crashed run left in `.claimed/` back to
    /// `dir` (when no other spool source has the directory open).
    pub fn open(config: SpoolConfig) -> Result<Self, SourceError> {
        let dir = config.dir.clone();
        let context = format!("spool {}", dir.display());
        let fail = |path: &Path, what: &str, e: &dyn fmt::Display| {
            SourceError::new(context.clone(), format!("{what} {}: {e}", path.display()))
        };
        fs::create_dir_all(&dir).map_err(|e| fail(&dir, "creating", &e))?;
        let root = files::open_root(&dir).map_err(|e| fail(&dir, "opening", &e))?;
        let [claimed, done, failed] = [CLAIMED, DONE, FAILED].map(|name| SubDir::open(&root, &dir, name));
        let (claimed, done, failed) = (
            claimed.map_err(|e| SourceError::new(context.clone(), e))?,
            done.map_err(|e| SourceError::new(context.clone(), e))?,
            failed.map_err(|e| SourceError::new(context.clone(), e))?,
        );
        let lock_path = dir.join(LOCK);
        let lock = open_lock_file(&root, LOCK.as_ref()).map_err(|e| fail(&lock_path, "opening the lock file", &e))?;
        let mut complete = HashMap::new();
        let claimed_now = claimed.get(&root).map_err(|e| SourceError::new(context.clone(), e))?;
        match lock.try_lock() {
            Ok(()) => {
                complete = repair_claims(&dir, &root, &claimed_now, &claimed.path)
                    .map_err(|(path, e)| fail(&path, "moving back", &e))?;
                // Another source may take the lock exclusively in between and
                // find nothing to repair: nothing of ours is claimed yet.
                lock.unlock().map_err(|e| fail(&lock_path, "unlocking", &e))?;
                lock.lock_shared().map_err(|e| fail(&lock_path, "locking", &e))?;
            }
            Err(fs::TryLockError::WouldBlock) => {
                // Another source has the directory: its claims are its own.
                // Waits only while another `open` repairs, a short moment.
                lock.lock_shared().map_err(|e| fail(&lock_path, "locking", &e))?;
                let left = files::names(&*claimed_now).map(|n| n.len()).unwrap_or(0);
                if left > 0 {
                    log::info!(
                        "spool {}: another lote has this directory open; the {left} file(s) in {} are left to it \
                         (claims of a crashed run are moved back by the next lote that opens the directory alone)",
                        dir.display(),
                        claimed.path.display()
                    );
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(fail(&lock_path, "locking", &e)),
        }
        let bell = Arc::new(Doorbell::new());
        // Only a stream (a continuous session) waits for arrivals; a batch
        // run or a requeue opens no watch.
        let watch = if config.stream {
            match Watch::arrivals(&dir, Arc::clone(&bell)) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    log::warn!(
                        "spool {}: cannot watch the directory with inotify ({e}); polling every poll_every",
                        dir.display()
                    );
                    bell.go_deaf();
                    None
                }
            }
        } else {
            bell.go_deaf();
            None
        };
        Ok(SpoolSource {
            bell,
            _watch: watch,
            config,
            root,
            claimed,
            done,
            failed,
            scan: Mutex::new(ScanState::default()),
            complete: Mutex::new(complete),
            raw_names: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    fn error(&self, what: impl fmt::Display, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SourceError {
        SourceError::new(format!("spool {}: {what}", self.config.dir.display()), e)
    }

    /// The name in `.claimed/` of the claimed item `id`.
    fn claimed_name(&self, id: &str) -> OsString {
        self.raw_names.lock().get(id).cloned().unwrap_or_else(|| id.into())
    }

    /// Moves a claimed entry back to `<dir>/` and marks it complete. It keeps
    /// its name (its id): if a pending entry of that name is there (a
    /// producer reusing the name), that one has never run and is moved aside
    /// as `<name>.~<secs>.<nanos>~`. Left in `.claimed/` the claimed one would
    /// never run again, and would keep the new one from being claimed.
    fn put_back(&self, id: &str) -> io::Result<()> {
        let name = self.claimed_name(id);
        let claimed = self.claimed.get(&self.root)?;
        let moved = files::move_back(&*claimed, &name, &self.root)?;
        log_moved_back(&self.config.dir, &self.claimed.path.join(&name), &moved);
        let back = moved.back;
        self.raw_names.lock().remove(id);
        if let Ok(stat) = files::lstat(&self.root, &back) {
            self.complete.lock().insert(back, Fingerprint::of(&stat));
        }
        Ok(())
    }

    /// Moves the claimed entry `name` (item `id`) into `to` under the id,
    /// or under a suffixed id if one is there: nothing is ever replaced.
    fn file_away(
        &self,
        claimed: &DirHandle,
        name: &OsStr,
        id: &str,
        to: &SubDir,
        handle: &DirHandle,
    ) -> io::Result<()> {
        let got = files::move_unique(claimed, name, handle, id.as_ref())?;
        if got != id {
            log::info!(
                "spool {}: {} exists already; {id} is kept beside it as {}",
                self.config.dir.display(),
                to.path.join(id).display(),
                to.path.join(&got).display()
            );
        }
        Ok(())
    }

    /// Writes one requeued item as a complete file: `.<name>.tmp`, fsync,
    /// rename to `<name>` (never over an existing one).
    fn write_item(&self, item: &Item) -> io::Result<()> {
        let name = OsStr::new(&item.id);
        let tmp = OsString::from(format!(".{}.tmp", item.id));
        // A leftover from a crash is removed first (the entry, not a target);
        // creating never follows a symlink planted at the temporary name.
        match files::remove(&self.root, &tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = files::create_new(&self.root, &tmp)?;
        file.write_all(&item.payload)?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = files::move_noreplace(&self.root, &tmp, &self.root, name) {
            let _ = files::remove(&self.root, &tmp);
            return Err(e);
        }
        let failed = self.failed.get(&self.root)?;
        match files::remove(&*failed, name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Ok(stat) = files::lstat(&self.root, name) {
            self.complete.lock().insert(name.to_owned(), Fingerprint::of(&stat));
        }
        Ok(())
    }
}

/// Where `ack` sends a claimed entry, by its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Destination {
    /// Done or skipped, `on_done: move`: to `done/`.
    Done,
    /// Done or skipped, `on_done: delete`: removed.
    Deleted,
    /// Dead-lettered: to `failed/`.
    Failed,
}

impl Destination {
    fn of(status: Status, on_done: OnDone) -> Self {
        match (status, on_done) {
            (Status::Done | Status::Skipped, OnDone::Move) => Destination::Done,
            (Status::Done | Status::Skipped, OnDone::Delete) => Destination::Deleted,
            (Status::Failed, _) => Destination::Failed,
        }
    }
}

/// The directories one ack batch changed besides `.claimed/`, to fsync
/// once at its end. `done/` and `failed/` are opened (and verified) at
/// their first use; an error is kept, so that every outcome bound there
/// fails alike.
#[derive(Default)]
struct Touched {
    done: Option<Result<Arc<DirHandle>, String>>,
    failed: Option<Result<Arc<DirHandle>, String>>,
}

/// The first error of a batch and how many there were.
#[derive(Default)]
struct FirstError {
    first: Option<(String, io::Error)>,
    count: usize,
}

impl FirstError {
    fn add(&mut self, what: impl Into<String>, e: io::Error) {
        self.count += 1;
        self.first.get_or_insert((what.into(), e));
    }
}

/// The handle in `slot`, opening `sub` at the first call.
fn handle_of(
    slot: &mut Option<Result<Arc<DirHandle>, String>>,
    sub: &SubDir,
    root: &OwnedFd,
) -> io::Result<Arc<DirHandle>> {
    slot.get_or_insert_with(|| sub.get(root).map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
}

impl SpoolSource {
    /// Sends the claimed entry `name` (item `id`) to `destination`, noting
    /// the directory it changed in `touched`.
    fn send(
        &self,
        claimed: &DirHandle,
        name: &OsStr,
        id: &str,
        destination: Destination,
        touched: &mut Touched,
    ) -> io::Result<()> {
        match destination {
            Destination::Done => {
                let to = handle_of(&mut touched.done, &self.done, &self.root)?;
                self.file_away(claimed, name, id, &self.done, &to)
            }
            Destination::Deleted => files::remove(claimed, name),
            Destination::Failed => {
                let to = handle_of(&mut touched.failed, &self.failed, &self.root)?;
                self.file_away(claimed, name, id, &self.failed, &to)
            }
        }
    }

    /// fsyncs `.claimed/` and every directory of `touched`, once.
    fn sync_touched(&self, claimed: &DirHandle, touched: Touched, errors: &mut FirstError) {
        let (done, failed) = (touched.done.and_then(Result::ok), touched.failed.and_then(Result::ok));
        let dirs = [
            (done.as_deref().map(AsFd::as_fd), self.done.path.as_path()),
            (failed.as_deref().map(AsFd::as_fd), self.failed.path.as_path()),
            (Some(claimed.as_fd()), self.claimed.path.as_path()),
        ];
        for (fd, path) in dirs {
            if let Some(Err(e)) = fd.map(sync_dir) {
                errors.add(format!("(fsync of {})", path.display()), e);
            }
        }
    }
}

impl Source for SpoolSource {
    fn describe(&self) -> String {
        format!("spool {}", self.config.dir.display())
    }

    /// Claims up to `max` stable files in (priority, name) order. With
    /// nothing to claim: `Idle` for a stream, or while files are there but
    /// not stable yet (they will be soon: a batch run must not end before
    /// them); otherwise `Exhausted`.
    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        self.pull_ready(max)
    }

    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        Some(Arc::clone(&self.bell))
    }

    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) -> Result<(), SourceError> {
        // The moves back into `<dir>/` are heard as arrivals: they offer the
        // items again after a second (as when the spool was polled), not at
        // once, or a breaker that skips would spin on a quiet spool.
        self.bell.hold(Instant::now() + GIVEN_BACK_PAUSE);
        let mut first_error = None;
        let mut still_claimed = Vec::new();
        for item in &items {
            let result = check_name(&item.id).and_then(|()| match self.put_back(&item.id) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::warn!(
                        "spool {}: {} was given back ({reason}) but is not in {}",
                        self.config.dir.display(),
                        item.id,
                        self.claimed.path.display()
                    );
                    Ok(())
                }
                other => other,
            });
            if let Err(e) = result {
                still_claimed.push(item.id.clone());
                first_error.get_or_insert((item.id.clone(), e));
            }
        }
        match first_error {
            None => Ok(()),
            Some((id, e)) => Err(self
                .error(
                    format!(
                        "giving back {} of {} item(s) ({reason}), first {id}",
                        still_claimed.len(),
                        items.len()
                    ),
                    e,
                )
                .with_still_claimed(still_claimed)),
        }
    }

    /// Moves acknowledged entries out of `.claimed/`: done and skipped ones
    /// to `done/` (or deletes them), failed ones to `failed/`, never over an
    /// existing entry; then fsyncs the directories touched, once for the
    /// batch.
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        let claimed = self
            .claimed
            .get(&self.root)
            .map_err(|e| self.error(format!("acknowledging {} outcome(s)", outcomes.len()), e))?;
        let mut touched = Touched::default();
        let mut errors = FirstError::default();
        for outcome in outcomes {
            let id = outcome.id();
            let name = self.claimed_name(id);
            let destination = Destination::of(outcome.status, self.config.on_done);
            match check_name(id).and_then(|()| self.send(&claimed, &name, id, destination, &mut touched)) {
                Ok(()) => {
                    self.raw_names.lock().remove(id);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.raw_names.lock().remove(id);
                    log::warn!(
                        "spool {}: {id} was acknowledged ({}) but is not in {} (acknowledged twice?)",
                        self.config.dir.display(),
                        outcome.status,
                        self.claimed.path.display()
                    )
                }
                Err(e) => errors.add(id, e),
            }
        }
        self.sync_touched(&claimed, touched, &mut errors);
        match errors.first {
            None => Ok(()),
            Some((what, e)) => Err(self.error(
                format!(
                    "acknowledging {} outcome(s): {} failed, first {what}",
                    outcomes.len(),
                    errors.count
                ),
                e,
            )),
        }
    }

    /// Writes each item back as a file in `<dir>/` (atomically: a dot-file,
    /// fsync, rename) and removes its copy from `failed/`. Refuses, before
    /// writing anything, names that are not plain file names and names of
    /// files pending or in flight.
    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        let claimed = self
            .claimed
            .get(&self.root)
            .map_err(|e| self.error(format!("requeueing {} item(s)", items.len()), e))?;
        for item in &items {
            let id = &item.id;
            let why = match check_name(id) {
                Err(e) => Some(e.to_string()),
                Ok(()) if id.starts_with('.') => Some("a dot-file would be ignored".to_string()),
                Ok(()) => {
                    let taken =
                        files::lstat(&self.root, id.as_ref()).is_ok() || files::lstat(&*claimed, id.as_ref()).is_ok();
                    taken.then(|| "a file of that name is already pending or in flight".to_string())
                }
            };
            if let Some(why) = why {
                return Err(self.error(format!("requeueing {id:?}"), why));
            }
        }
        for item in &items {
            self.write_item(item)
                .map_err(|e| self.error(format!("requeueing {} into {}", item.id, self.config.dir.display()), e))?;
        }
        let failed = self.failed.get(&self.root).map_err(|e| self.error("requeueing", e))?;
        for (fd, path) in [
            (self.root.as_fd(), &self.config.dir),
            (failed.as_fd(), &self.failed.path),
        ] {
            sync_dir(fd).map_err(|e| self.error(format!("requeueing: fsync of {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// Moves everything in `.claimed/` back to `<dir>/` (a crashed run's
/// claims) under their own names; a pending entry that has taken one's name
/// is moved aside as `<name>.~<secs>.<nanos>~`. Returns the moved entries'
/// fingerprints (they are complete).
fn repair_claims(
    dir: &Path,
    root: &OwnedFd,
    claimed: &DirHandle,
    claimed_path: &Path,
) -> Result<HashMap<OsString, Fingerprint>, (PathBuf, io::Error)> {
    let mut moved = HashMap::new();
    for name in files::names(claimed).map_err(|e| (claimed_path.to_path_buf(), e))? {
        // rename moves the entry itself, whatever it is; nothing is followed.
        let back = match files::move_back(claimed, &name, root) {
            Ok(back) => back,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err((claimed_path.join(&name), e)),
        };
        log_moved_back(dir, &claimed_path.join(&name), &back);
        let back = back.back;
        if let Ok(stat) = files::lstat(root, &back) {
            moved.insert(back, Fingerprint::of(&stat));
        }
    }
    if !moved.is_empty() {
        for (fd, path) in [(root.as_fd(), dir), (claimed.as_fd(), claimed_path)] {
            sync_dir(fd).map_err(|e| (path.to_path_buf(), e))?;
        }
        log::warn!(
            "spool {}: {} file(s) claimed by an earlier run that did not finish are pending again (they run again)",
            dir.display(),
            moved.len()
        );
    }
    Ok(moved)
}

/// Logs what [`files::move_back`] renamed to give `claimed` back to `dir`.
fn log_moved_back(dir: &Path, claimed: &Path, moved: &files::MovedBack) {
    for aside in &moved.aside {
        log::warn!(
            "spool {}: a new file has the name of {}, which keeps it; the new one is pending as {} (its new id)",
            dir.display(),
            claimed.display(),
            dir.join(aside).display()
        );
    }
    if let Some(why) = &moved.fallback {
        log::warn!(
            "spool {}: {why}, so {} is pending beside it as {} (its new id: under exactly_once it may run twice)",
            dir.display(),
            claimed.display(),
            dir.join(&moved.back).display()
        );
    }
}

/// An item id must be a plain file name: it names an entry in a directory,
/// so `..` or a `/` would reach outside the spool.
fn check_name(id: &str) -> io::Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{id:?} is not a plain file name"),
        ));
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("reading-1.json").is_ok());
    }
}
