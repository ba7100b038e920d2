//! Scanning `<dir>/` and claiming: which entries are stable, in which
//! order they are taken, and the claim itself (the rename into
//! `.claimed/`, then the read).

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::{Instant, SystemTime};

use super::files::{self, Kind, Stat};
use super::priority::{json_priority, prefix_priority};
use super::{SpoolPriority, SpoolSource, NOT_UTF8, READY_MAX, RESCAN_AFTER, RESERVED, SCANS_PER_PULL};
use crate::item::{Item, Priority, DEFAULT_PRIORITY};
use crate::source::{Pull, SourceError};

/// What identifies one version of an entry: if any of these change, it is
/// still being written (or was replaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    kind: Kind,
    len: u64,
    mtime: SystemTime,
    dev: u64,
    ino: u64,
}

impl Fingerprint {
    pub(super) fn of(stat: &Stat) -> Self {
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
pub(super) struct ScanState {
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
    /// When the first of them will be (if it stays unchanged).
    stable_at: Option<Instant>,
    generation: u64,
}

impl SpoolSource {
    /// Claims up to `max` stable files in (priority, name) order. With
    /// nothing to claim: `Idle` for a stream, or while files are there but
    /// not stable yet (they will be soon: a batch run must not end before
    /// them); otherwise `Exhausted`.
    pub(super) fn pull_ready(&self, max: usize) -> Result<Pull, SourceError> {
        let max = max.max(1);
        let mut state = self.scan.lock();
        let mut items = Vec::new();
        let mut scans = 0;
        loop {
            let expired = state.scanned_at.is_none_or(|at| at.elapsed() >= RESCAN_AFTER);
            if state.ready.is_empty() || expired {
                if scans == SCANS_PER_PULL {
                    // Others took every candidate we found (or one of the
                    // same name is in flight); look again soon, not when
                    // the next file arrives.
                    self.bell.ring_at(Instant::now() + RESCAN_AFTER);
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
        if let Some(at) = state.stable_at {
            // No event comes when a file becomes stable: wake for it.
            self.bell.ring_at(at);
        }
        Ok(if self.config.stream || state.unstable > 0 {
            Pull::Idle
        } else {
            Pull::Exhausted
        })
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
        let mut listing = files::list(&self.root).map_err(|e| self.error("listing the directory", e))?;
        let mut eligible = Vec::new();
        let mut unstable = 0;
        let mut stable_at = None;
        for entry in listing.iter() {
            let entry = entry.map_err(|e| self.error("listing the directory", io::Error::from(e)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name.as_bytes().first() == Some(&b'.') || RESERVED.iter().any(|r| name == *r) {
                continue;
            }
            let stat = match files::lstat(&self.root, name) {
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
            // Since when it is unchanged; `None`: known complete.
            let since = match state.seen.get_mut(&name) {
                Some(seen) if seen.fingerprint == fingerprint => {
                    seen.generation = generation;
                    (!seen.complete).then_some(seen.since)
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
                    Some(now)
                }
            };
            if let Some(since) = since.filter(|since| now.duration_since(*since) < self.config.stable_for) {
                unstable += 1;
                let at = since + self.config.stable_for;
                stable_at = Some(stable_at.map_or(at, |earliest: Instant| earliest.min(at)));
                continue;
            }
            let (id, utf8) = files::item_id(&name);
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
        state.stable_at = stable_at;
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
                match files::read_item(&self.root, name, stat, self.config.max_bytes) {
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
            self.raw_names.lock().contains_key(id) || (escaped && files::lstat(&*claimed, id.as_ref()).is_ok());
        if in_flight {
            log::debug!(
                "spool {}: {id} is already in flight; the new entry waits",
                dir.display()
            );
            return Ok(None);
        }
        match files::move_noreplace(&self.root, name, &*claimed, name) {
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
        let stat = match files::lstat(&*claimed, name) {
            Ok(stat) => stat,
            Err(e) => return Ok(defective(format!("cannot examine {}: {e}", at.display()))),
        };
        let now = Fingerprint::of(&stat);
        if stat.kind == Kind::File && candidate.fingerprint.kind == Kind::File && now != candidate.fingerprint {
            // Written to since the scan: still in progress. Back it goes, to
            // wait `stable_for` again (the next scan sees a new fingerprint).
            match files::move_noreplace(&*claimed, name, &self.root, name) {
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
        Ok(match files::read_item(&*claimed, name, &stat, max) {
            Ok(bytes) if bytes.len() as u64 > max => {
                defective(format!("file grew past max_bytes {max} while being read"))
            }
            Ok(bytes) => Some(Item::new(id.as_str(), bytes).with_priority(candidate.priority)),
            Err(e) => defective(format!("cannot read {}: {e}", at.display())),
        })
    }
}

/// Why an examined entry is not read but dead-lettered, or `None` for a
/// regular file with one link and a UTF-8 name.
fn refusal(stat: &Stat, utf8: bool) -> Option<String> {
    let why = match stat.kind {
        Kind::File if stat.nlink > 1 => Some(files::hard_links(stat.nlink)),
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
