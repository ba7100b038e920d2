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
//!   failed/           dead-lettered
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
//! pending file of the same name.
//!
//! # Invariants
//!
//! - A file is in exactly one of `<dir>/`, `.claimed/`, `done/` and `failed/`
//!   at any time, and moves between them only by `rename` within one
//!   directory tree, which is atomic: a power cut leaves it on one side or the
//!   other, never on both or neither.
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
//! - Symlinks are never followed. Entries are examined with `lstat` and
//!   symlinks are skipped (logged once); a file is read only after checking
//!   that the opened file is the very regular file examined (same device and
//!   inode), so a link swapped in at the last moment is refused, not read.
//!   `.claimed/`, `done/` and `failed/` must be real directories. A symlink
//!   to a file outside the spool is never read, moved or deleted through.
//! - A half-written file is never taken: it must pass `stable_for` unchanged,
//!   and if its size, mtime or inode differ between the scan and the claim it
//!   is put back and waits again.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Priority, Status, DEFAULT_PRIORITY};
use crate::sync::Mutex;

/// What happens to a file once its outcome is durable and `done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDone {
    /// Move it to `<dir>/done/` (default).
    #[default]
    Move,
    /// Delete it.
    Delete,
}

/// Where an item's priority comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpoolPriority {
    /// A leading number in the file name followed by `-` or `_`
    /// (`1-reading.json` → 1); files without one get the default priority.
    #[default]
    FilenamePrefix,
    /// An integer field of the file's JSON object (`{"priority": 2, …}`).
    JsonField(String),
    /// Every item gets the default priority.
    Fixed,
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

/// A pull serves the sorted candidates of its last scan for at most this
/// long before it scans again, so a newly arrived urgent file waits at most
/// this long, and a backlog of 100 000 files is not listed once per pull.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

/// How many of a scan's most urgent candidates are kept for the next pulls.
const READY_MAX: usize = 1024;

/// How many scans one pull makes when every candidate it finds is taken by
/// another process first, before it answers `Idle` (poll again).
const SCANS_PER_PULL: usize = 4;

/// A spool directory as a source.
pub struct SpoolSource {
    config: SpoolConfig,
    claimed: PathBuf,
    done: PathBuf,
    failed: PathBuf,
    /// What pulls keep between scans. Only `pull` locks it (the producer
    /// thread), across a scan and its claims; `give_back` and `ack` never do,
    /// so a long scan never holds up a worker or the writer.
    scan: Mutex<ScanState>,
    /// Files this source itself put back into `<dir>/` (give-backs, requeues,
    /// crash repair) with their fingerprint: they are known to be complete, so
    /// the next scan takes them without waiting `stable_for`. Filled by
    /// `give_back`, `ack` and `requeue`, drained by the next scan; locked
    /// only for a map operation.
    complete: Mutex<HashMap<String, Fingerprint>>,
    /// `.lote.lock`, held shared for the source's life, so that another
    /// source's `open` knows not to repair `.claimed/` under us. Released
    /// when the source is dropped (or the process dies).
    _lock: File,
}

/// What identifies one version of a file: if any of these change, it is
/// still being written (or was replaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: SystemTime,
    dev: u64,
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &Metadata) -> Self {
        Fingerprint {
            len: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file seen in `<dir>/` by a scan.
struct Seen {
    fingerprint: Fingerprint,
    /// When this fingerprint was first seen.
    since: Instant,
    /// Known complete (put back by this source): no need to wait `stable_for`.
    complete: bool,
    /// The priority read from the file (`JsonField` only), so that a file is
    /// parsed once, not once per scan.
    priority: Option<Priority>,
    /// The scan that last saw it; entries not seen by the latest are dropped.
    generation: u64,
}

/// A file ready to be claimed.
struct Candidate {
    name: String,
    priority: Priority,
    fingerprint: Fingerprint,
}

#[derive(Default)]
struct ScanState {
    seen: HashMap<String, Seen>,
    /// Entries skipped with a warning (symlinks, non-UTF-8 names, special
    /// files), with the scan that last saw them: each is logged once.
    noted: HashMap<OsString, u64>,
    /// The most urgent candidates of the last scan, in (priority, name) order.
    ready: VecDeque<Candidate>,
    scanned_at: Option<Instant>,
    /// Files the last scan saw that are not stable yet.
    unstable: usize,
    generation: u64,
}

impl SpoolSource {
    /// Opens the spool: creates `dir`, `done/`, `failed/` and `.claimed/` if
    /// missing, and moves files a crashed run left in `.claimed/` back to
    /// `dir` (when no other spool source has the directory open).
    pub fn open(config: SpoolConfig) -> Result<Self, SourceError> {
        let dir = config.dir.clone();
        let fail = |path: &Path, what: &str, e: &dyn fmt::Display| {
            SourceError::new(
                format!("spool {}", dir.display()),
                format!("{what} {}: {e}", path.display()),
            )
        };
        fs::create_dir_all(&dir).map_err(|e| fail(&dir, "creating", &e))?;
        if !dir.is_dir() {
            return Err(fail(&dir, "opening", &"it is not a directory"));
        }
        let (claimed, done, failed) = (dir.join(CLAIMED), dir.join(DONE), dir.join(FAILED));
        for sub in [&claimed, &done, &failed] {
            match fs::symlink_metadata(sub) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(fail(
                        sub,
                        "checking",
                        &"it exists but is not a directory (symlinks are not followed); move it away",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(sub) {
                    Ok(()) => {}
                    // Another lote opening the same new spool made it first.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && fs::symlink_metadata(sub).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(fail(sub, "creating", &e)),
                },
                Err(e) => return Err(fail(sub, "checking", &e)),
            }
        }
        let lock_path = dir.join(LOCK);
        if fs::symlink_metadata(&lock_path).is_ok_and(|m| !m.is_file()) {
            return Err(fail(&lock_path, "checking", &"it is not a regular file; remove it"));
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| fail(&lock_path, "opening the lock file", &e))?;
        let mut complete = HashMap::new();
        match lock.try_lock() {
            Ok(()) => {
                complete = repair_claims(&dir, &claimed).map_err(|(path, e)| fail(&path, "moving back", &e))?;
                // Another source may take the lock exclusively in between and
                // find nothing to repair: nothing of ours is claimed yet.
                lock.unlock().map_err(|e| fail(&lock_path, "unlocking", &e))?;
                lock.lock_shared().map_err(|e| fail(&lock_path, "locking", &e))?;
            }
            Err(fs::TryLockError::WouldBlock) => {
                // Another source has the directory: its claims are its own.
                // Waits only while another `open` repairs, a short moment.
                lock.lock_shared().map_err(|e| fail(&lock_path, "locking", &e))?;
                let left = fs::read_dir(&claimed).map(|d| d.count()).unwrap_or(0);
                if left > 0 {
                    log::info!(
                        "spool {}: another lote has this directory open; the {left} file(s) in {} are left to it \
                         (claims of a crashed run are moved back by the next lote that opens the directory alone)",
                        dir.display(),
                        claimed.display()
                    );
                }
            }
            Err(fs::TryLockError::Error(e)) => return Err(fail(&lock_path, "locking", &e)),
        }
        Ok(SpoolSource {
            config,
            claimed,
            done,
            failed,
            scan: Mutex::new(ScanState::default()),
            complete: Mutex::new(complete),
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

    /// Lists `<dir>/`, updates what has been seen, and keeps the most urgent
    /// stable files as the candidates for the next claims.
    fn scan(&self, state: &mut ScanState) -> Result<(), SourceError> {
        state.generation += 1;
        let generation = state.generation;
        let now = Instant::now();
        for (name, fingerprint) in self.complete.lock().drain() {
            state.seen.insert(
                name,
                Seen {
                    fingerprint,
                    since: now,
                    complete: true,
                    priority: None,
                    generation,
                },
            );
        }
        let dir = &self.config.dir;
        let entries = fs::read_dir(dir).map_err(|e| self.error("listing the directory", e))?;
        let mut eligible = Vec::new();
        let mut unstable = 0;
        for entry in entries {
            let entry = entry.map_err(|e| self.error("listing the directory", e))?;
            let os_name = entry.file_name();
            if os_name.as_bytes().first() == Some(&b'.') {
                continue;
            }
            // On Unix, DirEntry::metadata does not follow symlinks (lstat).
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.error(format!("examining {}", entry.path().display()), e)),
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                continue;
            }
            let skip_why = if kind.is_symlink() {
                Some("is a symlink: skipped (symlinks are never followed)")
            } else if !kind.is_file() {
                Some("is not a regular file: skipped")
            } else if os_name.to_str().is_none() {
                Some("has a name that is not UTF-8 and cannot be an item id: skipped")
            } else {
                None
            };
            if let Some(why) = skip_why {
                if state.noted.insert(os_name, generation).is_none() {
                    log::warn!("spool {}: {} {why}", dir.display(), entry.path().display());
                }
                continue;
            }
            let Some(name) = os_name.to_str() else { continue };
            let fingerprint = Fingerprint::of(&meta);
            let stable = match state.seen.get_mut(name) {
                Some(seen) if seen.fingerprint == fingerprint => {
                    seen.generation = generation;
                    seen.complete || now.duration_since(seen.since) >= self.config.stable_for
                }
                _ => {
                    let seen = Seen {
                        fingerprint,
                        since: now,
                        complete: false,
                        priority: None,
                        generation,
                    };
                    state.seen.insert(name.to_owned(), seen);
                    self.config.stable_for.is_zero()
                }
            };
            if !stable {
                unstable += 1;
                continue;
            }
            let priority = self.priority_of(name, &meta, state);
            eligible.push(Candidate {
                name: name.to_owned(),
                priority,
                fingerprint,
            });
        }
        state.seen.retain(|_, seen| seen.generation == generation);
        state.noted.retain(|_, seen| *seen == generation);
        let order = |a: &Candidate, b: &Candidate| (a.priority, &a.name).cmp(&(b.priority, &b.name));
        if eligible.len() > READY_MAX {
            eligible.select_nth_unstable_by(READY_MAX - 1, order);
            eligible.truncate(READY_MAX);
        }
        eligible.sort_unstable_by(order);
        state.ready = eligible.into();
        state.unstable = unstable;
        state.scanned_at = Some(now);
        Ok(())
    }

    /// The priority of a stable file in `<dir>/`.
    fn priority_of(&self, name: &str, meta: &Metadata, state: &mut ScanState) -> Priority {
        let field = match &self.config.priority {
            SpoolPriority::Fixed => return DEFAULT_PRIORITY,
            SpoolPriority::FilenamePrefix => return prefix_priority(name),
            SpoolPriority::JsonField(field) => field,
        };
        if let Some(priority) = state.seen.get(name).and_then(|s| s.priority) {
            return priority;
        }
        let priority = if meta.len() > self.config.max_bytes {
            DEFAULT_PRIORITY
        } else {
            match read_checked(&self.config.dir.join(name), meta, self.config.max_bytes) {
                Ok(bytes) => json_priority(&bytes, field),
                Err(e) => {
                    log::debug!(
                        "spool {}: reading {name} for its priority: {e}",
                        self.config.dir.display()
                    );
                    DEFAULT_PRIORITY
                }
            }
        };
        if let Some(seen) = state.seen.get_mut(name) {
            seen.priority = Some(priority);
        }
        priority
    }

    /// Claims one candidate and reads it. `None`: it is gone (another pull
    /// took it), a file of that name is already in flight, or it changed
    /// since the scan (it was put back).
    fn claim(&self, candidate: &Candidate) -> Result<Option<Item>, SourceError> {
        let name = &candidate.name;
        let (from, to) = (self.config.dir.join(name), self.claimed.join(name));
        match fs::symlink_metadata(&to) {
            Ok(_) => {
                log::debug!(
                    "spool {}: {name} is already in flight; the new file waits",
                    self.config.dir.display()
                );
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.error(format!("checking {}", to.display()), e)),
        }
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(self.error(
                    format!("claiming {} (moving it to {})", from.display(), to.display()),
                    e,
                ))
            }
        }
        let defective =
            |why: String| Some(Item::defective(name.as_str(), Vec::new(), why).with_priority(candidate.priority));
        let meta = match fs::symlink_metadata(&to) {
            Ok(meta) => meta,
            Err(e) => return Ok(defective(format!("cannot examine {}: {e}", to.display()))),
        };
        if !meta.is_file() {
            return Ok(defective(format!(
                "{} was replaced by something that is not a regular file",
                to.display()
            )));
        }
        if Fingerprint::of(&meta) != candidate.fingerprint {
            // Written to since the scan: still in progress. Back it goes, to
            // wait `stable_for` again (the next scan sees a new fingerprint).
            if let Err(e) = fs::rename(&to, &from) {
                log::warn!(
                    "spool {}: {name} changed while being claimed and could not be put back ({e}); \
                     it stays in {} until the next start",
                    self.config.dir.display(),
                    self.claimed.display()
                );
            }
            return Ok(None);
        }
        let max = self.config.max_bytes;
        if meta.len() > max {
            return Ok(defective(format!("file is {} bytes, over max_bytes {max}", meta.len())));
        }
        Ok(match read_checked(&to, &meta, max) {
            Ok(bytes) if bytes.len() as u64 > max => {
                defective(format!("file grew past max_bytes {max} while being read"))
            }
            Ok(bytes) => Some(Item::new(name.as_str(), bytes).with_priority(candidate.priority)),
            Err(e) => defective(format!("cannot read {}: {e}", to.display())),
        })
    }

    /// Moves a claimed file back to `<dir>/` and marks it complete, unless a
    /// pending file of that name is there (then it stays claimed, logged).
    fn put_back(&self, name: &str) -> io::Result<()> {
        let (from, to) = (self.claimed.join(name), self.config.dir.join(name));
        if fs::symlink_metadata(&to).is_ok() {
            log::warn!(
                "spool {}: cannot give {name} back: a new file of that name is pending; the claimed one stays in {} \
                 until both are gone from {} and lote starts again",
                self.config.dir.display(),
                self.claimed.display(),
                self.config.dir.display()
            );
            return Ok(());
        }
        fs::rename(&from, &to)?;
        if let Ok(meta) = fs::symlink_metadata(&to) {
            self.complete.lock().insert(name.to_owned(), Fingerprint::of(&meta));
        }
        Ok(())
    }

    /// Writes one requeued item as a complete file: `.<name>.tmp`, fsync,
    /// rename to `<name>`.
    fn write_item(&self, item: &Item) -> io::Result<()> {
        let name = &item.id;
        let tmp = self.config.dir.join(format!(".{name}.tmp"));
        let to = self.config.dir.join(name);
        // create_new never follows a symlink planted at the temporary name; a
        // leftover from a crash is removed first (the entry, not a target).
        match fs::symlink_metadata(&tmp) {
            Ok(_) => fs::remove_file(&tmp)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(&item.payload)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &to)?;
        match fs::remove_file(self.failed.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Ok(meta) = fs::symlink_metadata(&to) {
            self.complete.lock().insert(name.clone(), Fingerprint::of(&meta));
        }
        Ok(())
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
        let max = max.max(1);
        let mut state = self.scan.lock();
        let mut items = Vec::new();
        let mut scans = 0;
        loop {
            let expired = state.scanned_at.is_none_or(|at| at.elapsed() >= RESCAN_AFTER);
            if state.ready.is_empty() || expired {
                if scans == SCANS_PER_PULL {
                    // Others took every candidate we found; poll again.
                    return Ok(Pull::Idle);
                }
                self.scan(&mut state)?;
                scans += 1;
                if state.ready.is_empty() {
                    break;
                }
            }
            while items.len() < max {
                let Some(candidate) = state.ready.pop_front() else {
                    break;
                };
                match self.claim(&candidate) {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => {}
                    Err(error) if items.is_empty() => {
                        state.ready.push_front(candidate);
                        return Err(error);
                    }
                    Err(error) => {
                        // Hand over what is claimed; the next pull meets the
                        // error again if it lasts.
                        log::warn!("{error}");
                        state.ready.push_front(candidate);
                        break;
                    }
                }
            }
            if !items.is_empty() {
                return Ok(Pull::Items(items));
            }
        }
        Ok(if self.config.stream || state.unstable > 0 {
            Pull::Idle
        } else {
            Pull::Exhausted
        })
    }

    fn give_back(&self, items: Vec<Item>, reason: ReturnReason) -> Result<(), SourceError> {
        let mut first_error = None;
        let mut failures = 0;
        for item in &items {
            let result = check_name(&item.id).and_then(|()| match self.put_back(&item.id) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::warn!(
                        "spool {}: {} was given back ({reason}) but is not in {}",
                        self.config.dir.display(),
                        item.id,
                        self.claimed.display()
                    );
                    Ok(())
                }
                other => other,
            });
            if let Err(e) = result {
                failures += 1;
                first_error.get_or_insert((item.id.clone(), e));
            }
        }
        match first_error {
            None => Ok(()),
            Some((id, e)) => Err(self.error(
                format!(
                    "giving back {failures} of {} item(s) ({reason}), first {id}",
                    items.len()
                ),
                e,
            )),
        }
    }

    /// Moves acknowledged files out of `.claimed/`: done and skipped ones to
    /// `done/` (or deletes them), failed ones to `failed/`; then fsyncs the
    /// directories touched, once for the batch.
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        let (mut to_done, mut to_failed, mut removed, mut returned) = (false, false, false, false);
        let mut first_error = None;
        let mut failures = 0;
        for outcome in outcomes {
            let name = outcome.id();
            let from = self.claimed.join(name);
            let result = check_name(name).and_then(|()| match (outcome.status, self.config.on_done) {
                (Status::Done | Status::Skipped, OnDone::Move) => {
                    to_done = true;
                    fs::rename(&from, self.done.join(name))
                }
                (Status::Done | Status::Skipped, OnDone::Delete) => {
                    removed = true;
                    fs::remove_file(&from)
                }
                (Status::Failed, _) => {
                    to_failed = true;
                    fs::rename(&from, self.failed.join(name))
                }
                (Status::Returned, _) => {
                    returned = true;
                    self.put_back(name)
                }
            });
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => log::warn!(
                    "spool {}: {name} was acknowledged ({}) but is not in {} (acknowledged twice?)",
                    self.config.dir.display(),
                    outcome.status,
                    self.claimed.display()
                ),
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert((name.to_owned(), e));
                }
            }
        }
        let touched = [
            (to_done, &self.done),
            (to_failed, &self.failed),
            (returned, &self.config.dir),
            (to_done || to_failed || removed || returned, &self.claimed),
        ];
        for (_, dir) in touched.iter().filter(|(touched, _)| *touched) {
            if let Err(e) = sync_dir(dir) {
                failures += 1;
                first_error.get_or_insert((format!("(fsync of {})", dir.display()), e));
            }
        }
        match first_error {
            None => Ok(()),
            Some((what, e)) => Err(self.error(
                format!(
                    "acknowledging {} outcome(s): {failures} failed, first {what}",
                    outcomes.len()
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
        for item in &items {
            let id = &item.id;
            let taken = fs::symlink_metadata(self.config.dir.join(id)).is_ok()
                || fs::symlink_metadata(self.claimed.join(id)).is_ok();
            let why = match check_name(id) {
                Err(e) => Some(e.to_string()),
                Ok(()) if id.starts_with('.') => Some("a dot-file would be ignored".to_string()),
                Ok(()) if taken => Some("a file of that name is already pending or in flight".to_string()),
                Ok(()) => None,
            };
            if let Some(why) = why {
                return Err(self.error(format!("requeueing {id:?}"), why));
            }
        }
        for item in &items {
            self.write_item(item)
                .map_err(|e| self.error(format!("requeueing {} into {}", item.id, self.config.dir.display()), e))?;
        }
        for dir in [&self.config.dir, &self.failed] {
            sync_dir(dir).map_err(|e| self.error(format!("requeueing: fsync of {}", dir.display()), e))?;
        }
        Ok(())
    }
}

/// Moves everything in `.claimed/` back to `dir` (a crashed run's claims),
/// except where a pending file of the same name is in the way; returns the
/// moved files' fingerprints (they are complete).
fn repair_claims(dir: &Path, claimed: &Path) -> Result<HashMap<String, Fingerprint>, (PathBuf, io::Error)> {
    let mut moved = HashMap::new();
    let mut blocked = 0;
    for entry in fs::read_dir(claimed).map_err(|e| (claimed.to_path_buf(), e))? {
        let entry = entry.map_err(|e| (claimed.to_path_buf(), e))?;
        let to = dir.join(entry.file_name());
        if fs::symlink_metadata(&to).is_ok() {
            blocked += 1;
            log::warn!(
                "spool {}: {} cannot be moved back: a pending file of that name is in the way",
                dir.display(),
                entry.path().display()
            );
            continue;
        }
        // rename moves the entry itself, whatever it is; nothing is followed.
        fs::rename(entry.path(), &to).map_err(|e| (entry.path(), e))?;
        if let (Some(name), Ok(meta)) = (entry.file_name().to_str(), fs::symlink_metadata(&to)) {
            moved.insert(name.to_owned(), Fingerprint::of(&meta));
        }
    }
    if !moved.is_empty() {
        for d in [dir, claimed] {
            sync_dir(d).map_err(|e| (d.to_path_buf(), e))?;
        }
        log::warn!(
            "spool {}: {} file(s) claimed by an earlier run that did not finish are pending again (they run again)",
            dir.display(),
            moved.len()
        );
    }
    if blocked > 0 {
        log::warn!(
            "spool {}: {blocked} claimed file(s) left in {}",
            dir.display(),
            claimed.display()
        );
    }
    Ok(moved)
}

/// Reads the regular file `path` that `expected` describes, at most
/// `limit + 1` bytes. Refuses if what was opened is not that file (a symlink
/// or another file swapped in since it was examined).
fn read_checked(path: &Path, expected: &Metadata, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.dev() != expected.dev() || meta.ino() != expected.ino() {
        return Err(io::Error::other(
            "the file was replaced since it was examined (symlinks are not followed)",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// fsyncs a directory, so the renames in it survive a power cut.
/// Filesystems that cannot fsync a directory say so with EINVAL; there is
/// nothing more to do on them.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e) if matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported) => Ok(()),
        other => other,
    }
}

/// An item id must be a plain file name: it is joined to directory paths,
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

/// Leading digits followed by `-` or `_` (`10-foo.json` → 10); a prefix too
/// large for a priority saturates (least urgent). Anything else: the default.
fn prefix_priority(name: &str) -> Priority {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !matches!(name.as_bytes().get(digits), Some(b'-' | b'_')) {
        return DEFAULT_PRIORITY;
    }
    name.as_bytes()[..digits].iter().fold(0 as Priority, |p, d| {
        p.saturating_mul(10).saturating_add(Priority::from(d - b'0'))
    })
}

/// The integer `field` of a JSON object; anything else (not JSON, not an
/// object, no such field, not an integer) gives the default priority: the
/// handler, not the ordering, is the place to reject a bad payload.
fn json_priority(bytes: &[u8], field: &str) -> Priority {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let found = FieldInteger(field).deserialize(&mut deserializer);
    match found.and_then(|p| deserializer.end().map(|()| p)) {
        Ok(Some(p)) => p.clamp(Priority::MIN as i64, Priority::MAX as i64) as Priority,
        _ => DEFAULT_PRIORITY,
    }
}

/// Reads one integer field of a JSON object and skips the rest without
/// building it: a 16 MiB payload is parsed in constant memory.
struct FieldInteger<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldInteger<'_> {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldInteger<'_> {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 && found.is_none() {
                found = map.next_value_seed(AnyInteger)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Any JSON value: `Some` for an integer, `None` for anything else.
struct AnyInteger;

impl<'de> DeserializeSeed<'de> for AnyInteger {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyInteger {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_filename_prefix_is_digits_then_a_dash_or_underscore() {
        assert_eq!(prefix_priority("10-foo.json"), 10);
        assert_eq!(prefix_priority("3_bar"), 3);
        assert_eq!(prefix_priority("007-x"), 7);
        assert_eq!(prefix_priority("foo.json"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("10foo"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("10"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("-5-x"), DEFAULT_PRIORITY);
        assert_eq!(prefix_priority("99999999999999-x"), Priority::MAX);
    }

    #[test]
    fn a_json_priority_is_an_integer_field_or_the_default() {
        assert_eq!(
            json_priority(br#"{"priority": 2, "data": [1, {"a": 3}]}"#, "priority"),
            2
        );
        assert_eq!(
            json_priority(br#"{"data": {"priority": 1}, "priority": -4}"#, "priority"),
            -4
        );
        assert_eq!(json_priority(br#"{"priority": 1e99}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"{"priority": "1"}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"{"other": 1}"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(br#"[1, 2]"#, "priority"), DEFAULT_PRIORITY);
        assert_eq!(json_priority(b"not json", "priority"), DEFAULT_PRIORITY);
        assert_eq!(
            json_priority(br#"{"priority": 1} trailing"#, "priority"),
            DEFAULT_PRIORITY
        );
        assert_eq!(
            json_priority(br#"{"priority": 99999999999}"#, "priority"),
            Priority::MAX
        );
    }

    #[test]
    fn ids_that_would_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("reading-1.json").is_ok());
    }
}
