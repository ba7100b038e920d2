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
//!   (`spool_fs`): an existing entry is never replaced. A name already in
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

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::spool_fs::{self, DirHandle, Kind, Stat, SubDir};
use super::{Pull, ReturnReason, Source, SourceError};
use crate::item::{Item, Outcome, Priority, Status, DEFAULT_PRIORITY};
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

/// Names in `<dir>/` that are never items: lote's own subdirectories (the
/// dot-names are skipped anyway) and the `lost+found` of a file system root.
const RESERVED: [&str; 3] = [DONE, FAILED, "lost+found"];

/// Why an entry whose name is not UTF-8 is dead-lettered.
const NOT_UTF8: &str = "its name is not UTF-8: refused unread (the id shows each byte that is not UTF-8 as %XX)";

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
}

/// What identifies one version of an entry: if any of these change, it is
/// still being written (or was replaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    kind: Kind,
    len: u64,
    mtime: SystemTime,
    dev: u64,
    ino: u64,
}

impl Fingerprint {
    fn of(stat: &Stat) -> Self {
        Fingerprint {
            kind: stat.kind,
            len: stat.len,
            mtime: stat.mtime,
            dev: stat.dev,
            ino: stat.ino,
        }
    }

    /// The same entry: for a file, unchanged too; for anything else (never
    /// read, and a directory's times change when it is moved), the same
    /// inode.
    fn same_entry(&self, other: &Fingerprint) -> bool {
        match self.kind {
            Kind::File => self == other,
            _ => (self.kind, self.dev, self.ino) == (other.kind, other.dev, other.ino),
        }
    }
}

/// An entry seen in `<dir>/` by a scan.
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

/// An entry ready to be claimed.
struct Candidate {
    /// Its name in `<dir>/`.
    name: OsString,
    /// The item id: the name, escaped if it is not UTF-8.
    id: String,
    priority: Priority,
    fingerprint: Fingerprint,
}

#[derive(Default)]
struct ScanState {
    seen: HashMap<OsString, Seen>,
    /// Symlinks skipped with a warning, with the scan that last saw them:
    /// each is logged once.
    noted: HashMap<OsString, u64>,
    /// Entries that could not be moved aside (a directory lote may not
    /// move), with their fingerprint and the scan that last saw them: each is
    /// logged once and skipped while it stays the same.
    stuck: HashMap<OsString, (Fingerprint, u64)>,
    /// The most urgent candidates of the last scan, in (priority, id) order.
    ready: VecDeque<Candidate>,
    scanned_at: Option<Instant>,
    /// Entries the last scan saw that are not stable yet.
    unstable: usize,
    generation: u64,
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
        let root = spool_fs::open_root(&dir).map_err(|e| fail(&dir, "opening", &e))?;
        let [claimed, done, failed] = [CLAIMED, DONE, FAILED].map(|name| SubDir::open(&root, &dir, name));
        let (claimed, done, failed) = (
            claimed.map_err(|e| SourceError::new(context.clone(), e))?,
            done.map_err(|e| SourceError::new(context.clone(), e))?,
            failed.map_err(|e| SourceError::new(context.clone(), e))?,
        );
        let lock_path = dir.join(LOCK);
        let lock = spool_fs::open_lock_file(&root, LOCK.as_ref())
            .map_err(|e| fail(&lock_path, "opening the lock file", &e))?;
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
                let left = spool_fs::names(&*claimed_now).map(|n| n.len()).unwrap_or(0);
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
        Ok(SpoolSource {
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

    /// Lists `<dir>/`, updates what has been seen, and keeps the most urgent
    /// stable entries as the candidates for the next claims.
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
        let mut listing = spool_fs::list(&self.root).map_err(|e| self.error("listing the directory", e))?;
        let mut eligible = Vec::new();
        let mut unstable = 0;
        for entry in listing.iter() {
            let entry = entry.map_err(|e| self.error("listing the directory", io::Error::from(e)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name.as_bytes().first() == Some(&b'.') || RESERVED.iter().any(|r| name == *r) {
                continue;
            }
            let stat = match spool_fs::lstat(&self.root, name) {
                Ok(stat) => stat,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.error(format!("examining {}", dir.join(name).display()), e)),
            };
            let name = name.to_owned();
            if stat.kind == Kind::Symlink {
                if state.noted.insert(name.clone(), generation).is_none() {
                    log::warn!(
                        "spool {}: {} is a symlink: skipped (symlinks are never followed)",
                        dir.display(),
                        dir.join(&name).display()
                    );
                }
                continue;
            }
            let fingerprint = Fingerprint::of(&stat);
            if let Some((stuck, seen_by)) = state.stuck.get_mut(&name) {
                if *stuck == fingerprint {
                    *seen_by = generation;
                    continue;
                }
            }
            let stable = match state.seen.get_mut(&name) {
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
                    state.seen.insert(name.clone(), seen);
                    self.config.stable_for.is_zero()
                }
            };
            if !stable {
                unstable += 1;
                continue;
            }
            let (id, utf8) = spool_fs::item_id(&name);
            let readable = utf8 && refusal(&stat, utf8).is_none();
            let priority = self.priority_of(&name, &id, readable.then_some(&stat), state);
            eligible.push(Candidate {
                name,
                id,
                priority,
                fingerprint,
            });
        }
        state.seen.retain(|_, seen| seen.generation == generation);
        state.noted.retain(|_, seen| *seen == generation);
        state.stuck.retain(|_, (_, seen)| *seen == generation);
        let order = |a: &Candidate, b: &Candidate| (a.priority, &a.id).cmp(&(b.priority, &b.id));
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

    /// The priority of a stable entry in `<dir>/`; `readable` is its `lstat`
    /// when it is a file lote may read (a `JsonField` is read from it).
    fn priority_of(&self, name: &OsStr, id: &str, readable: Option<&Stat>, state: &mut ScanState) -> Priority {
        let field = match &self.config.priority {
            SpoolPriority::Fixed => return DEFAULT_PRIORITY,
            SpoolPriority::FilenamePrefix => return prefix_priority(id),
            SpoolPriority::JsonField(field) => field,
        };
        if let Some(priority) = state.seen.get(name).and_then(|s| s.priority) {
            return priority;
        }
        let priority = match readable {
            Some(stat) if stat.len <= self.config.max_bytes => {
                match spool_fs::read_item(&self.root, name, stat, self.config.max_bytes) {
                    Ok(bytes) => json_priority(&bytes, field),
                    Err(e) => {
                        log::debug!(
                            "spool {}: reading {id} for its priority: {e}",
                            self.config.dir.display()
                        );
                        DEFAULT_PRIORITY
                    }
                }
            }
            _ => DEFAULT_PRIORITY,
        };
        if let Some(seen) = state.seen.get_mut(name) {
            seen.priority = Some(priority);
        }
        priority
    }

    /// Claims one candidate and reads it. `None`: it is gone (another pull
    /// took it), an entry of that id is already in flight, it changed since
    /// the scan (it was put back), or it cannot be moved (noted in `stuck`).
    /// An entry that is not a regular file with one link and a UTF-8 name is
    /// claimed without being opened and becomes a defective item that says
    /// why: it is dead-lettered and moved to `failed/`.
    fn claim(&self, candidate: &Candidate, state: &mut ScanState) -> Result<Option<Item>, SourceError> {
        let (name, id) = (&candidate.name, &candidate.id);
        let dir = &self.config.dir;
        let escaped = name.as_bytes() != id.as_bytes();
        let claimed = self
            .claimed
            .get(&self.root)
            .map_err(|e| self.error(format!("claiming {id}"), e))?;
        // An escaped id may equal another entry's name: never two in flight.
        let in_flight =
            self.raw_names.lock().contains_key(id) || (escaped && spool_fs::lstat(&*claimed, id.as_ref()).is_ok());
        if in_flight {
            log::debug!(
                "spool {}: {id} is already in flight; the new entry waits",
                dir.display()
            );
            return Ok(None);
        }
        match spool_fs::move_noreplace(&self.root, name, &*claimed, name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                log::debug!("spool {}: {id} is already in flight; the new file waits", dir.display());
                return Ok(None);
            }
            Err(e) if candidate.fingerprint.kind != Kind::File => {
                log::warn!(
                    "spool {}: {} is {} and cannot be moved to {} ({e}); it is skipped until it changes: remove it",
                    dir.display(),
                    dir.join(name).display(),
                    candidate.fingerprint.kind.described(),
                    self.failed.path.display()
                );
                state
                    .stuck
                    .insert(name.clone(), (candidate.fingerprint, state.generation));
                return Ok(None);
            }
            Err(e) => {
                return Err(self.error(
                    format!(
                        "claiming {} (moving it to {})",
                        dir.join(name).display(),
                        self.claimed.path.display()
                    ),
                    e,
                ))
            }
        }
        if escaped {
            self.raw_names.lock().insert(id.clone(), name.clone());
        }
        let at = self.claimed.path.join(name);
        let defective =
            |why: String| Some(Item::defective(id.as_str(), Vec::new(), why).with_priority(candidate.priority));
        let stat = match spool_fs::lstat(&*claimed, name) {
            Ok(stat) => stat,
            Err(e) => return Ok(defective(format!("cannot examine {}: {e}", at.display()))),
        };
        let now = Fingerprint::of(&stat);
        if stat.kind == Kind::File && candidate.fingerprint.kind == Kind::File && now != candidate.fingerprint {
            // Written to since the scan: still in progress. Back it goes, to
            // wait `stable_for` again (the next scan sees a new fingerprint).
            match spool_fs::move_noreplace(&*claimed, name, &self.root, name) {
                Ok(()) => {
                    self.raw_names.lock().remove(id);
                }
                Err(e) => log::warn!(
                    "spool {}: {id} changed while being claimed and could not be put back ({e}); \
                     it stays in {} until the next start",
                    dir.display(),
                    self.claimed.path.display()
                ),
            }
            return Ok(None);
        }
        if !candidate.fingerprint.same_entry(&now) {
            return Ok(defective(format!(
                "{} was replaced since it was examined; it is now {}",
                at.display(),
                stat.kind.described()
            )));
        }
        if let Some(why) = refusal(&stat, !escaped) {
            return Ok(defective(why));
        }
        let max = self.config.max_bytes;
        if stat.len > max {
            return Ok(defective(format!("file is {} bytes, over max_bytes {max}", stat.len)));
        }
        Ok(match spool_fs::read_item(&*claimed, name, &stat, max) {
            Ok(bytes) if bytes.len() as u64 > max => {
                defective(format!("file grew past max_bytes {max} while being read"))
            }
            Ok(bytes) => Some(Item::new(id.as_str(), bytes).with_priority(candidate.priority)),
            Err(e) => defective(format!("cannot read {}: {e}", at.display())),
        })
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
        let moved = spool_fs::move_back(&*claimed, &name, &self.root)?;
        log_moved_back(&self.config.dir, &self.claimed.path.join(&name), &moved);
        let back = moved.back;
        self.raw_names.lock().remove(id);
        if let Ok(stat) = spool_fs::lstat(&self.root, &back) {
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
        let got = spool_fs::move_unique(claimed, name, handle, id.as_ref())?;
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
        match spool_fs::remove(&self.root, &tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = spool_fs::create_new(&self.root, &tmp)?;
        file.write_all(&item.payload)?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = spool_fs::move_noreplace(&self.root, &tmp, &self.root, name) {
            let _ = spool_fs::remove(&self.root, &tmp);
            return Err(e);
        }
        let failed = self.failed.get(&self.root)?;
        match spool_fs::remove(&*failed, name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Ok(stat) = spool_fs::lstat(&self.root, name) {
            self.complete.lock().insert(name.to_owned(), Fingerprint::of(&stat));
        }
        Ok(())
    }
}

/// Why an examined entry is not read but dead-lettered, or `None` for a
/// regular file with one link and a UTF-8 name.
fn refusal(stat: &Stat, utf8: bool) -> Option<String> {
    let why = match stat.kind {
        Kind::File if stat.nlink > 1 => Some(spool_fs::hard_links(stat.nlink)),
        Kind::File => None,
        Kind::Dir => Some(
            "it is a directory: a spool takes regular files only (lote's own are .claimed, done and failed)"
                .to_string(),
        ),
        kind => Some(format!(
            "it is {}: a spool takes regular files only and never opens anything else",
            kind.described()
        )),
    };
    match (why, utf8) {
        (None, true) => None,
        (None, false) => Some(NOT_UTF8.to_string()),
        (Some(why), true) => Some(why),
        (Some(why), false) => Some(format!("{why}; {NOT_UTF8}")),
    }
}

/// One directory handle of an ack batch, opened (and verified) at its first
/// use; an error is kept, so that every outcome bound there fails alike.
fn handle_of(
    slot: &mut Option<Result<Arc<DirHandle>, String>>,
    sub: &SubDir,
    root: &OwnedFd,
) -> io::Result<Arc<DirHandle>> {
    slot.get_or_insert_with(|| sub.get(root).map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
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
                match self.claim(&candidate, &mut state) {
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
        let (mut done, mut failed) = (None, None);
        let mut returned = false;
        let mut first_error = None;
        let mut failures = 0;
        for outcome in outcomes {
            let id = outcome.id();
            let name = self.claimed_name(id);
            let result = check_name(id).and_then(|()| match (outcome.status, self.config.on_done) {
                (Status::Done | Status::Skipped, OnDone::Move) => {
                    let to = handle_of(&mut done, &self.done, &self.root)?;
                    self.file_away(&claimed, &name, id, &self.done, &to)
                }
                (Status::Done | Status::Skipped, OnDone::Delete) => spool_fs::remove(&*claimed, &name),
                (Status::Failed, _) => {
                    let to = handle_of(&mut failed, &self.failed, &self.root)?;
                    self.file_away(&claimed, &name, id, &self.failed, &to)
                }
                (Status::Returned, _) => {
                    returned = true;
                    self.put_back(id)
                }
            });
            match result {
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
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert((id.to_owned(), e));
                }
            }
        }
        let (done, failed) = (done.and_then(Result::ok), failed.and_then(Result::ok));
        let touched = [
            (done.as_deref(), self.done.path.as_path()),
            (failed.as_deref(), self.failed.path.as_path()),
            (Some(&*claimed), self.claimed.path.as_path()),
        ];
        let root = returned.then_some((self.root.as_fd(), self.config.dir.as_path()));
        let fds = touched
            .into_iter()
            .filter_map(|(handle, path)| Some((handle?.as_fd(), path)));
        for (fd, path) in fds.chain(root) {
            if let Err(e) = spool_fs::sync(fd) {
                failures += 1;
                first_error.get_or_insert((format!("(fsync of {})", path.display()), e));
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
                    let taken = spool_fs::lstat(&self.root, id.as_ref()).is_ok()
                        || spool_fs::lstat(&*claimed, id.as_ref()).is_ok();
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
            spool_fs::sync(fd).map_err(|e| self.error(format!("requeueing: fsync of {}", path.display()), e))?;
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
    for name in spool_fs::names(claimed).map_err(|e| (claimed_path.to_path_buf(), e))? {
        // rename moves the entry itself, whatever it is; nothing is followed.
        let back = match spool_fs::move_back(claimed, &name, root) {
            Ok(back) => back,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err((claimed_path.join(&name), e)),
        };
        log_moved_back(dir, &claimed_path.join(&name), &back);
        let back = back.back;
        if let Ok(stat) = spool_fs::lstat(root, &back) {
            moved.insert(back, Fingerprint::of(&stat));
        }
    }
    if !moved.is_empty() {
        for (fd, path) in [(root.as_fd(), dir), (claimed.as_fd(), claimed_path)] {
            spool_fs::sync(fd).map_err(|e| (path.to_path_buf(), e))?;
        }
        log::warn!(
            "spool {}: {} file(s) claimed by an earlier run that did not finish are pending again (they run again)",
            dir.display(),
            moved.len()
        );
    }
    Ok(moved)
}

/// Logs what [`spool_fs::move_back`] renamed to give `claimed` back to `dir`.
fn log_moved_back(dir: &Path, claimed: &Path, moved: &spool_fs::MovedBack) {
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
