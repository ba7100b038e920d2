//! The JSONL sink: one JSON object per line ([`Record`]), appended and
//! fsynced once per batch, rotated by size (SPEC §3.6).
//!
//! # Files
//!
//! Batches go to the active file, `path`. Once it has reached
//! `rotate_bytes` (checked after each batch), it becomes `path.1`, `path.1`
//! becomes `path.2`, and so on up to `path.<keep_files>`; the file that would
//! become `path.<keep_files + 1>` is deleted, and its records with it.
//!
//! # Invariants
//!
//! - When `write` returns `Ok`, every line of the batch is in the active file
//!   and fsynced (`sync_data`), and the file's name is durable: the directory
//!   is fsynced whenever the active file is opened or created.
//! - A batch is one `write_all` of complete lines. If that or the fsync
//!   fails, the file is cut back to its length before the batch, so a failed
//!   batch leaves no lines to be read later. If even the cut fails, the sink
//!   appends nothing more until a later `write` has made it.
//! - A crash during a write can leave a prefix of the batch: whole lines
//!   (records of items that were never acknowledged; they run again, and the
//!   last line for an id wins) and a last line that is incomplete or garbage
//!   (zeros, after a power cut). `open` cuts that last line off, fsyncs, and
//!   warns: it is never read as data. Lines that do not parse elsewhere are
//!   warned about and skipped, never read as data, and kept by `remove`.
//! - Rotation happens only between batches, after the fsync: a batch is never
//!   split across files, and every rotated file ends with a complete line.
//! - The done index holds only fsynced records: `write` updates it after
//!   `sync_data` returned. It mirrors the kept files: an id is in it exactly
//!   when its last line in `path.<keep_files>` … `path.1`, `path` says
//!   `done`. When rotation deletes a file, the ids whose last record was in it
//!   leave the index, as they would after a restart.
//! - One sink per file: `open` takes an incomplete last line for the trace of
//!   a crash, which for a file that another writer is appending to would be a
//!   batch in flight. So `open` first takes an exclusive lock on
//!   `<path>.lock` (flock) and refuses if another sink holds it.
//!
//! # Memory
//!
//! Once a lookup has been asked for (exactly-once, resume), the id of every
//! done item in the kept files is held in memory, with its file's number: about 85 bytes per 12-byte id and 105
//! per 36-byte UUID, so roughly 100 MB per million done items (measured with
//! a million ids in a `HashMap<Box<str>, u64>`, as here). `rotate_bytes` and
//! `keep_files` bound it. The dead-letter role keeps no index.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use log::warn;

use super::{
    encode_json_line, sink_keys, DoneLookup, Place, Record, Role, Sink, SinkError, SinkKind, TableAck, WriterKeys,
};
use crate::fsutil::{open_lock_file, parent_dir, sync_dir_at};
use crate::item::{Outcome, Status};
use crate::spec::effective::{self, bytes, map};
use crate::spec::{self, absolute, format_bytes, ByteSize, Check, MAX_ROTATE_BYTES, MAX_TRIES};

/// Where a JSONL sink writes and how it rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonlConfig {
    /// The active file. Rotated files are named after it: `path.1` (the
    /// newest) to `path.<keep_files>` (the oldest).
    pub path: PathBuf,
    /// Outcomes, or dead letters (payload kept; no done index).
    pub role: Role,
    /// Rotate once the active file has reached this many bytes. Checked after
    /// each batch, so a file exceeds it by at most one batch. `None`: never
    /// rotate. Default 64 MiB.
    pub rotate_bytes: Option<u64>,
    /// How many rotated files to keep; older ones are deleted with their
    /// records. 0 deletes the active file when it rotates. Default 5.
    pub keep_files: usize,
}

impl JsonlConfig {
    pub const DEFAULT_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_KEEP_FILES: usize = 5;

    /// A config with the default rotation (64 MiB, 5 files kept).
    pub fn new(path: impl Into<PathBuf>, role: Role) -> Self {
        JsonlConfig {
            path: path.into(),
            role,
            rotate_bytes: Some(Self::DEFAULT_ROTATE_BYTES),
            keep_files: Self::DEFAULT_KEEP_FILES,
        }
    }
}

sink_keys! {
    /// `sink: {kind: jsonl}` — one JSON object per line, fsynced per batch.
    JsonlKeys {
        /// The file. Default `outcomes.jsonl` (sink), `dead-letter.jsonl` (dead_letter).
        path: Option<PathBuf>,
        /// Rotate the file at this size; 0 = never. Default 64MiB.
        rotate_bytes: Option<ByteSize>,
        /// Rotated files kept (`path.1` … `path.N`). Default 5.
        keep_files: Option<usize>,
    }
}

impl SinkKind for JsonlConfig {
    const NAME: &'static str = "jsonl";
    type Keys = JsonlKeys;

    fn build(j: JsonlKeys, at: &Place, check: &Check) -> spec::Result<(Self, WriterKeys)> {
        let path = j
            .path
            .unwrap_or_else(|| at.default_path("outcomes.jsonl", "dead-letter.jsonl").into());
        check.path(&at.key("path"), &path)?;
        let d = JsonlConfig::new(absolute(at.state_dir, &path), at.role);
        if let Some(rotate) = j.rotate_bytes {
            check.bytes_at_most(&at.key("rotate_bytes"), rotate.0, MAX_ROTATE_BYTES)?;
        }
        let keep_files = j.keep_files.unwrap_or(d.keep_files);
        check.count(&at.key("keep_files"), keep_files as u64, 0..=MAX_TRIES)?;
        let config = JsonlConfig {
            rotate_bytes: j.rotate_bytes.map_or(d.rotate_bytes, |b| (b.0 > 0).then_some(b.0)),
            keep_files,
            ..d
        };
        Ok((config, j.writer))
    }

    fn effective(&self) -> serde_yaml::Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", effective::path(&self.path)),
            ("rotate_bytes", bytes(self.rotate_bytes.unwrap_or(0))),
            ("keep_files", self.keep_files.into()),
        ])
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn open(&self, _table_ack: Option<TableAck>) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(JsonlSink::open(self.clone()).map_err(|e| e.to_string())?))
    }

    fn records(&self) -> Result<Vec<Record>, String> {
        JsonlSink::read_records(self).map_err(|e| e.to_string())
    }

    /// Done lookups (exactly-once, a lines source's resume) read the sink's
    /// `done` records. A rotating JSONL sink deletes its oldest file, and the
    /// records in it, so those items would silently run again: refused. (An
    /// index of done ids that survives rotation would grow without bound, in
    /// memory and on disk, which is what rotation was asked to prevent; the
    /// SQLite sink keeps them on disk behind its primary key.)
    fn done_records_survive(&self, check: &Check, why: &str) -> spec::Result<()> {
        let Some(bytes) = self.rotate_bytes else {
            return Ok(());
        };
        Err(check.doc.error_at(
            "sink.rotate_bytes",
            &["sink.rotate_bytes", "sink.keep_files", "sink.kind"],
            format!(
                "is {} (64MiB when not set), so the JSONL sink rotates and deletes its oldest file (beyond \
                 keep_files: {}) with the done records in it, and with {why} the items recorded there would \
                 silently run again; expected `sink.rotate_bytes: 0` (never rotate: the file, and the done \
                 index held in memory, grow with every item) or `sink.kind: sqlite` (done ids stay on disk)",
                format_bytes(bytes),
                self.keep_files
            ),
        ))
    }
}

/// A sink that appends records to a JSONL file (see the module invariants).
pub struct JsonlSink {
    config: JsonlConfig,
    /// The active file. `None` after a rotation that could not open its
    /// successor, or a `remove` that replaced it: the next `write` opens it.
    /// A file not open here holds whole batches only.
    active: Option<Active>,
    /// The number of the active file; `path.k` is number `segment - k`. It
    /// grows by one per rotation, so the index can tell which ids a deleted
    /// file took with it.
    segment: u64,
    /// The done ids, shared with lookups. Built by the first `lookup` (only
    /// exactly-once and resuming sessions ask), never for dead letters: a
    /// sink nobody asks does not pay ~100 bytes and a hash insert per item.
    /// `lookup` runs on the thread that owns the sink, before the sink is
    /// handed to the writer thread, so no write races the first load.
    index: OnceLock<Arc<DoneIndex>>,
    /// `<path>.lock`, locked exclusively for the sink's life: one writer per
    /// file, in this process or any other (rotation renames the active file,
    /// so the lock lives beside it). Released when the sink is dropped.
    _lock: File,
}

/// Takes the exclusive lock on `<path>.lock`, or says who holds it.
fn lock_exclusively(path: &Path) -> Result<File, SinkError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = File::open(parent_dir(&lock_path))
        .and_then(|dir| open_lock_file(&dir, lock_path.file_name().unwrap_or_default()))
        .map_err(|e| SinkError::io(&lock_path, format!("cannot open the lock file: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SinkError::io(
            path,
            format!(
                "another writer has this file open ({} is locked): stop the other lote process first; \
                 one JSONL file takes one writer",
                lock_path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(SinkError::io(&lock_path, format!("cannot lock the lock file: {e}")))
        }
    }
}

impl JsonlSink {
    /// Opens (or creates) the active file and its directory and cuts a torn
    /// last line. The done index is built by the first `lookup`.
    pub fn open(config: JsonlConfig) -> Result<Self, SinkError> {
        create_dir(parent_dir(&config.path))?;
        // Before the tail repair: another writer's batch in flight looks
        // exactly like a torn tail.
        let lock = lock_exclusively(&config.path)?;
        repair_tail(&config.path)?;
        let active = Active::open(&config.path)?;
        let segment = config.keep_files as u64 + 1;
        Ok(JsonlSink {
            config,
            active: Some(active),
            segment,
            index: OnceLock::new(),
            _lock: lock,
        })
    }

    /// Every complete record in `config`'s files, oldest first, without
    /// opening a sink: no lock is taken and nothing is repaired, so it is
    /// safe while a writer appends (a batch in flight is simply not read).
    /// For `lote dead-letter list` while the daemon runs.
    pub fn read_records(config: &JsonlConfig) -> Result<Vec<Record>, SinkError> {
        let mut records = Vec::new();
        let rotated = (1..=config.keep_files).rev().map(|k| rotated(&config.path, k));
        for file in rotated.chain([config.path.clone()]) {
            for_each_line(&file, None, false, |_, record| {
                records.extend(record);
                Ok(())
            })
            .map_err(|e| SinkError::io(&file, format!("cannot read records: {e}")))?;
        }
        Ok(records)
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The kept rotated files, oldest first.
    fn rotated_files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (1..=self.config.keep_files)
            .rev()
            .map(|k| rotated(&self.config.path, k))
    }

    /// Moves the active file to `path.1` (shifting the older ones), or
    /// deletes it when no rotated files are kept, and starts a new one.
    fn rotate(&mut self) -> Result<(), SinkError> {
        let path = &self.config.path;
        let keep = self.config.keep_files;
        // Files beyond `keep_files` can only be left by a larger setting.
        for k in keep + 1.. {
            match fs::remove_file(rotated(path, k)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(SinkError::io(&rotated(path, k), format!("cannot delete: {e}"))),
            }
        }
        for k in (1..keep).rev() {
            rename_if_present(&rotated(path, k), &rotated(path, k + 1))?;
        }
        let gone = if keep == 0 {
            fs::remove_file(path)
        } else {
            fs::rename(path, rotated(path, 1))
        };
        gone.map_err(|e| SinkError::io(path, format!("cannot rotate: {e}")))?;

        // The handle now points at `path.1` (or at nothing): never append to it.
        self.active = None;
        self.segment += 1;
        if let Some(index) = self.index.get() {
            index.forget_segments_before(self.segment - keep as u64);
        }
        // Opening fsyncs the directory: the renames and the new name are
        // durable before anything is appended to the new file.
        self.active = Some(Active::open(path)?);
        Ok(())
    }

    /// Rewrites `file` (its first `limit` bytes) without the lines of `ids`.
    /// Returns how many lines went; a file without any is left untouched.
    fn remove_from(file: &Path, limit: Option<u64>, ids: &HashSet<&str>) -> Result<usize, SinkError> {
        let error = |e: io::Error| SinkError::io(file, format!("cannot remove records: {e}"));
        let mut matching = 0;
        for_each_line(file, limit, true, |_, record| {
            matching += usize::from(record.is_some_and(|r| ids.contains(r.id.as_str())));
            Ok(())
        })
        .map_err(error)?;
        if matching == 0 {
            return Ok(0);
        }
        let temp = with_suffix(file, ".tmp");
        let rewrite = || -> io::Result<()> {
            let mut out = BufWriter::new(File::create(&temp)?);
            for_each_line(file, limit, false, |line, record| match record {
                Some(r) if ids.contains(r.id.as_str()) => Ok(()),
                _ => out.write_all(line),
            })?;
            let out = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            out.set_permissions(fs::metadata(file)?.permissions())?;
            out.sync_all()?;
            fs::rename(&temp, file)
        };
        rewrite().map_err(|e| {
            let _ = fs::remove_file(&temp);
            error(e)
        })?;
        Ok(matching)
    }
}

impl Sink for JsonlSink {
    fn describe(&self) -> String {
        format!("jsonl {}", self.config.path.display())
    }

    fn write(&mut self, outcomes: &[Outcome]) -> Result<(), SinkError> {
        let written = || outcomes.iter().filter(|o| o.status != Status::Skipped);
        let mut batch = Vec::new();
        for outcome in written() {
            encode_json_line(outcome, self.config.role, &mut batch)
                .map_err(|e| SinkError::io(&self.config.path, format!("cannot encode {}: {e}", outcome.id())))?;
        }
        if batch.is_empty() {
            return Ok(());
        }

        let active = match self.active.take() {
            Some(active) => active,
            None => Active::open(&self.config.path)?,
        };
        let active = self.active.insert(active);
        active.append(&self.config.path, &batch)?;
        if let Some(index) = self.index.get() {
            index.apply(written(), self.segment);
        }

        if self.config.rotate_bytes.is_some_and(|limit| active.len >= limit) {
            // The batch is durable whatever happens here; the rotation is
            // tried again after the next batch.
            if let Err(e) = self.rotate() {
                warn!("{e}");
            }
        }
        Ok(())
    }

    fn lookup(&self) -> Result<Box<dyn DoneLookup>, SinkError> {
        if self.config.role == Role::DeadLetter {
            return Ok(Box::new(JsonlLookup { index: None }));
        }
        if self.index.get().is_none() {
            let loaded = Arc::new(DoneIndex::load(&self.config, self.segment)?);
            // Only the owner calls this (`&self` of a non-`Sync` sink), so
            // nothing can have set it since the check.
            let _ = self.index.set(loaded);
        }
        Ok(Box::new(JsonlLookup {
            index: self.index.get().cloned(),
        }))
    }

    fn records(&mut self) -> Result<Vec<Record>, SinkError> {
        let mut records = Vec::new();
        let files: Vec<_> = self.rotated_files().map(|file| (file, None)).collect();
        let active = (self.config.path.clone(), self.active.as_ref().map(|a| a.len));
        for (file, limit) in files.into_iter().chain([active]) {
            for_each_line(&file, limit, true, |_, record| {
                records.extend(record);
                Ok(())
            })
            .map_err(|e| SinkError::io(&file, format!("cannot read records: {e}")))?;
        }
        Ok(records)
    }

    fn remove(&mut self, ids: &[String]) -> Result<usize, SinkError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        // Forgotten first: should a file below fail, "not done" is the safe
        // answer (the item may run again), "done" would skip it for good.
        if let Some(index) = self.index.get() {
            index.forget(&ids);
        }
        let mut removed = 0;
        for file in self.rotated_files().collect::<Vec<_>>() {
            removed += Self::remove_from(&file, None, &ids)?;
        }
        let path = self.config.path.clone();
        let from_active = Self::remove_from(&path, self.active.as_ref().map(|a| a.len), &ids)?;
        if from_active > 0 {
            // The handle points at the replaced file; the next write opens
            // the new one.
            self.active = None;
            removed += from_active;
        }
        if removed > 0 {
            sync_dir_at(parent_dir(&path))
                .map_err(|e| SinkError::io(&path, format!("cannot fsync the directory: {e}")))?;
        }
        Ok(removed)
    }
}

impl fmt::Debug for JsonlSink {
    // The index can hold millions of ids: show its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlSink")
            .field("config", &self.config)
            .field("active", &self.active)
            .field("segment", &self.segment)
            .field("done_ids", &self.index.get().map(|index| index.read().len()))
            .finish()
    }
}

/// The ids whose last record in the kept files is `done`, each with the
/// number of the file that holds that record (see `JsonlSink::segment`).
struct DoneIndex {
    /// Written by the sink only (after an fsync, or before a `remove`), read
    /// by lookups on other threads. Held for map operations only, never
    /// across I/O.
    ids: RwLock<HashMap<Box<str>, u64>>,
}

impl DoneIndex {
    /// Reads the kept files, oldest first: the last line for an id wins.
    fn load(config: &JsonlConfig, active_segment: u64) -> Result<Self, SinkError> {
        let mut ids = HashMap::new();
        for k in (0..=config.keep_files).rev() {
            let (file, segment) = match k {
                0 => (config.path.clone(), active_segment),
                k => (rotated(&config.path, k), active_segment - k as u64),
            };
            for_each_line(&file, None, true, |_, record| {
                if let Some(record) = record {
                    if record.is_done() {
                        ids.insert(record.id.into_boxed_str(), segment);
                    } else {
                        ids.remove(record.id.as_str());
                    }
                }
                Ok(())
            })
            .map_err(|e| SinkError::io(&file, format!("cannot read records: {e}")))?;
        }
        Ok(DoneIndex { ids: RwLock::new(ids) })
    }

    // Poisoning is ignored: only map operations run under the lock, and
    // each leaves the map whole.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, u64>> {
        self.ids.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, u64>> {
        self.ids.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a batch just fsynced into file number `segment`.
    fn apply<'a>(&self, outcomes: impl Iterator<Item = &'a Outcome>, segment: u64) {
        let mut ids = self.write();
        for outcome in outcomes {
            if outcome.status == Status::Done {
                ids.insert(outcome.id().into(), segment);
            } else {
                ids.remove(outcome.id());
            }
        }
    }

    /// Drops the ids whose last record was in a file numbered below `first_kept`.
    fn forget_segments_before(&self, first_kept: u64) {
        self.write().retain(|_, segment| *segment >= first_kept);
    }

    fn forget(&self, ids: &HashSet<&str>) {
        let mut done = self.write();
        for id in ids {
            done.remove(*id);
        }
    }
}

/// The `DoneLookup` of a JSONL sink. For dead letters (`index: None`) it
/// answers that nothing is done: a dead letter is never a done record.
struct JsonlLookup {
    index: Option<Arc<DoneIndex>>,
}

impl DoneLookup for JsonlLookup {
    fn done_ids(&self, ids: &[&str]) -> Result<HashSet<String>, SinkError> {
        let Some(index) = &self.index else {
            return Ok(HashSet::new());
        };
        let done = index.read();
        Ok(ids
            .iter()
            .filter(|id| done.contains_key(**id))
            .map(|id| id.to_string())
            .collect())
    }
}

/// At most this many unreadable lines are warned about one by one, per file
/// read; the rest are counted in one line.
const MAX_LINE_WARNINGS: u64 = 10;

/// Calls `each` with every line of the first `limit` bytes of `file` (all of
/// it if `None`) and its record, `None` if the line does not parse or lacks
/// its newline. Warns about those if `warn` is set. A missing file is empty.
fn for_each_line(
    file: &Path,
    limit: Option<u64>,
    warn: bool,
    mut each: impl FnMut(&[u8], Option<Record>) -> io::Result<()>,
) -> io::Result<()> {
    let opened = match File::open(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // Bounded by the length now, so a file that grows (or a device that
    // never ends) cannot keep us reading.
    let limit = match limit {
        Some(limit) => limit,
        None => opened.metadata()?.len(),
    };
    let mut reader = BufReader::new(opened.take(limit));
    let mut line = Vec::new();
    let (mut number, mut unreadable) = (0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        let record = line.strip_suffix(b"\n").and_then(parse);
        if record.is_none() {
            unreadable += 1;
            if warn && unreadable <= MAX_LINE_WARNINGS {
                warn!("{}: line {number} is not a record; skipped", file.display());
            }
        }
        each(&line, record)?;
    }
    if warn && unreadable > MAX_LINE_WARNINGS {
        let more = unreadable - MAX_LINE_WARNINGS;
        warn!("{}: {more} more lines are not records; skipped", file.display());
    }
    Ok(())
}

fn parse(line: &[u8]) -> Option<Record> {
    serde_json::from_slice(line).ok()
}

/// Cuts the last line of `file` if it lacks its newline or does not parse.
fn repair_tail(file: &Path) -> Result<(), SinkError> {
    let error = |e: io::Error| SinkError::io(file, format!("cannot check or cut the last line: {e}"));
    let mut opened = match OpenOptions::new().read(true).write(true).open(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(e)),
    };
    let len = opened.metadata().map_err(error)?.len();
    let keep = complete_len(&mut opened, len).map_err(error)?;
    if keep < len {
        opened.set_len(keep).and_then(|()| opened.sync_all()).map_err(error)?;
        warn!(
            "{}: cut {} bytes off the end: an incomplete or unreadable last line, left by a crash during a write",
            file.display(),
            len - keep
        );
    }
    Ok(())
}

/// The length of the first `len` bytes of `file` without a torn last line.
fn complete_len(file: &mut File, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let last_line = last_newline_before(file, len - 1)?.map_or(0, |at| at + 1);
    if read_at(file, len - 1, 1)? != b"\n" {
        return Ok(last_line);
    }
    let line = read_at(file, last_line, len - 1 - last_line)?;
    Ok(if parse(&line).is_some() { len } else { last_line })
}

/// Where the last `\n` before byte `end` is, reading backwards.
fn last_newline_before(file: &mut File, mut end: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = read_at(file, start, end - start)?;
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    Ok(None)
}

fn read_at(file: &mut File, at: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "line too long"))?;
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// The active file, open for appending.
#[derive(Debug)]
struct Active {
    file: File,
    /// How many bytes hold whole, fsynced batches.
    len: u64,
    /// True after a failed batch could not be cut back: the bytes beyond
    /// `len` must go before anything is appended.
    dirty: bool,
}

impl Active {
    /// Opens `path` for appending (creating it if needed) and fsyncs its
    /// directory, so that its name survives a power cut even if an earlier
    /// attempt created the file and failed before the fsync.
    fn open(path: &Path) -> Result<Self, SinkError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| SinkError::io(path, format!("cannot open for appending: {e}")))?;
        sync_dir_at(parent_dir(path)).map_err(|e| SinkError::io(path, format!("cannot fsync the directory: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| SinkError::io(path, format!("cannot read the length: {e}")))?
            .len();
        Ok(Active {
            file,
            len,
            dirty: false,
        })
    }

    /// Appends `batch` (whole lines) and fsyncs it; all or nothing.
    fn append(&mut self, path: &Path, batch: &[u8]) -> Result<(), SinkError> {
        if self.dirty {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| {
                    SinkError::io(
                        path,
                        format!("cannot cut off what a failed write left after byte {}: {e}", self.len),
                    )
                })?;
            self.dirty = false;
        }
        if let Err(e) = self.file.write_all(batch).and_then(|()| self.file.sync_data()) {
            // Take back whatever part of the batch reached the file, so that
            // it is neither read as data nor glued to the next batch.
            if let Err(cut) = self.file.set_len(self.len) {
                warn!(
                    "{}: cannot cut off a failed write ({cut}); tried again before the next one",
                    path.display()
                );
                self.dirty = true;
            }
            return Err(SinkError::io(
                path,
                format!("cannot append a batch of {} bytes: {e}", batch.len()),
            ));
        }
        self.len += batch.len() as u64;
        Ok(())
    }
}

/// Creates `dir` and its missing ancestors, each name made durable.
fn create_dir(dir: &Path) -> Result<(), SinkError> {
    if dir.is_dir() {
        return Ok(());
    }
    let error = |e: io::Error| SinkError::io(dir, format!("cannot create the sink's directory: {e}"));
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    fs::create_dir_all(dir).map_err(error)?;
    for created in missing.into_iter().rev() {
        sync_dir_at(parent_dir(created)).map_err(error)?;
    }
    Ok(())
}

fn rename_if_present(from: &Path, to: &Path) -> Result<(), SinkError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(SinkError::io(from, format!("cannot rename to {}: {e}", to.display())))
        }
        _ => Ok(()),
    }
}

/// `path.k`, the k-th newest rotated file.
fn rotated(path: &Path, k: usize) -> PathBuf {
    with_suffix(path, &format!(".{k}"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

#[cfg(all(test, not(loom)))]
mod tests;
