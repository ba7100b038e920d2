//! `lines`: a file, or standard input; one item per line (SPEC §3.6).
//!
//! The input is read lazily through a buffer, a pull's worth of lines at a
//! time, so a multi-gigabyte file costs no more memory than its longest line
//! (bounded by `max_bytes`). Empty lines are skipped but still counted, so a
//! line's number is its line number in the file (1-based).
//!
//! - `text`: the payload is the line without its `\n` (or `\r\n`); the id is
//!   the line number.
//! - `ndjson`: each line is `{"id": string|number, "priority": int,
//!   "payload": any}`. A string payload becomes its bytes, any other JSON
//!   value its compact JSON text; a missing (or null) `id` is the line
//!   number, a missing (or null) `priority` the default; other fields are
//!   ignored. Blank lines are skipped.
//!
//! A UTF-8 byte-order mark at the start of the input is dropped.
//!
//! # Invariants
//!
//! - Each non-empty line becomes exactly one item. A line that cannot be an
//!   item (not a JSON object with the right field types, longer than
//!   `max_bytes`) becomes a *defective* item whose id is its line number: it
//!   fails without running and is dead-lettered with the reason, and the
//!   lines after it are read as usual.
//! - A line longer than `max_bytes` is never held in memory: the bytes past
//!   the limit are counted and dropped as they are read.
//! - A file cannot remember what is done. `ack` does nothing and
//!   [`Source::needs_resume`] is true: the session asks the sink which
//!   pulled ids are already done and skips them, so a rerun over the same
//!   file resumes where the last one stopped. The sink's records are the
//!   memory.
//! - Resuming is tied to the file ([`LinesSource::tie_resume`], which the
//!   daemon calls): the identity of the file the sink's records came from
//!   is kept beside the sink, and a file that is not that one is refused
//!   before anything runs, with a message that says how to go on. Without
//!   resume (`--no-resume`) every line runs, and the records are tied to
//!   this file from then on. When the sink may still hold another file's
//!   records, that holds only once the pass has read to the end of the file
//!   with every item's outcome saved (acknowledged); until then the identity
//!   is recorded as unfinished, and a resuming run refuses it.
//! - A sink with records but no recorded identity (an upgrade from a version
//!   without it) cannot be checked: the run resumes with a warning that says
//!   so, and records the file's identity from then on.
//! - Items given back are kept in memory and served before new lines, so a
//!   stopped session's items come back within the same run; across runs the
//!   sink-based resume covers them.
//! - Reading may block (a quiet pipe on stdin). It happens under its own
//!   lock, which only `pull` takes, so a worker giving items back is never
//!   held up by it; and a pull that already has items does not wait for
//!   more input than is buffered. (A blocked read of stdin is not interrupted
//!   by a stop: it returns with the next line or the end of input.)

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file_identity::{Compared, FileIdentity};
use super::{missing_source, Pull, ReturnReason, Run, Source, SourceAt, SourceError, SourceKind};
use crate::item::{Item, JsonItem, Outcome, DEFAULT_PRIORITY};
use crate::sink::TableAck;
use crate::spec::effective::{self, bytes, map, spelled};
use crate::spec::{self, absolute, format_duration, ByteSize, Check};
use crate::sync::Mutex;

/// How lines are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinesFormat {
    /// Each line is the payload; the id is the line number.
    #[default]
    Text,
    /// Each line is a JSON object `{"id", "priority", "payload"}`; missing
    /// `id` → the line number, missing `priority` → the default.
    Ndjson,
}

/// A lines source's settings (config section `source:` with `kind: lines`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinesConfig {
    /// The file; `None` reads standard input (`path: "-"`).
    pub path: Option<PathBuf>,
    pub format: LinesFormat,
    /// Longer lines fail as defective and go to the dead-letter sink.
    /// Default 1 MiB.
    pub max_bytes: usize,
}

impl LinesConfig {
    /// Text lines from the file at `path`, at most 1 MiB each.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LinesConfig {
            path: Some(path.into()),
            format: LinesFormat::Text,
            max_bytes: 1024 * 1024,
        }
    }

    /// Text lines from standard input (`path: "-"`), at most 1 MiB each.
    pub fn stdin() -> Self {
        LinesConfig {
            path: None,
            ..LinesConfig::new("-")
        }
    }
}

/// The read buffer's size: large enough that a pull's worth of short lines
/// is one read(2).
const BUFFER: usize = 64 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A file of lines (or standard input) as a source.
pub struct LinesSource {
    config: LinesConfig,
    /// The file's path, or "standard input", for messages.
    input_name: String,
    /// The input and where it is. Only `pull` locks it (the producer thread),
    /// and holds it while reading, which may block on a pipe.
    reader: Mutex<Reader>,
    /// Items given back, served before new lines. Locked for a queue
    /// operation only, by `pull` and `give_back`.
    returned: Mutex<VecDeque<Item>>,
    /// The file (another handle on the one being read) and what it was at
    /// open, for [`LinesSource::tie_resume`]; `None` for standard input.
    measured: Option<(File, FileIdentity)>,
    /// Whether done ids are skipped ([`Source::needs_resume`]). Default true.
    resume: bool,
    /// A `--no-resume` pass recorded as unfinished, to record as finished
    /// once it is; `None` when there is nothing to record.
    pass: Option<UnfinishedPass>,
}

/// A `--no-resume` pass over a file while the sink may still hold another
/// file's records (see `file_identity`, "A pass not yet finished").
struct UnfinishedPass {
    identity_file: PathBuf,
    /// The file's identity as it is recorded once the pass is finished.
    finished: FileIdentity,
    /// Locked by `pull` (producer thread, under the reader lock: order
    /// reader → progress) and by `ack` (writer thread), for a few counter
    /// updates; and once, while the finished identity is written.
    progress: Mutex<PassProgress>,
}

#[derive(Default)]
struct PassProgress {
    /// Items read from the file whose outcomes are not acknowledged yet.
    /// Items given back stay counted (they are not re-counted when pulled
    /// again) until their outcome is saved.
    unsaved: u64,
    /// The reader met the end of the file.
    read_to_end: bool,
    /// The finished identity was written (or writing it failed, logged).
    recorded: bool,
}

impl UnfinishedPass {
    /// Records the pass as finished once it has read to the end and nothing
    /// read is unsaved. Called with the progress lock held.
    fn finish_if_done(&self, progress: &mut PassProgress, input_name: &str) {
        if progress.recorded || !progress.read_to_end || progress.unsaved > 0 {
            return;
        }
        progress.recorded = true;
        let shown = self.identity_file.display();
        let written = serde_json::to_vec_pretty(&self.finished)
            .map_err(io::Error::other)
            .and_then(|json| crate::fsutil::write_atomically(&self.identity_file, &json));
        match written {
            Ok(()) => log::info!(
                "lines source {input_name}: the --no-resume pass reached the end of the file with every outcome \
                 saved; recorded in {shown}, later runs resume over this file"
            ),
            Err(e) => log::error!(
                "lines source {input_name}: the --no-resume pass is finished, but recording so in {shown} failed \
                 ({e}); a later run without --no-resume will refuse to resume until a --no-resume run finishes"
            ),
        }
    }
}

struct Reader {
    input: BufReader<Box<dyn Read + Send>>,
    /// The number of the last line read (0 before the first).
    line: u64,
    at_end: bool,
    /// A read error met while a pull already had items: those are handed
    /// over, and the next pull reports the error.
    error: Option<SourceError>,
    /// The current line, reused from line to line.
    buf: Vec<u8>,
}

/// What the next line turned out to be.
enum Next {
    Item(Item),
    /// An empty line (or a blank one in NDJSON): skipped, but counted.
    Blank,
    End,
}

impl LinesSource {
    /// Opens the file (or takes standard input). Nothing is read until the
    /// first pull.
    pub fn open(config: LinesConfig) -> Result<Self, SourceError> {
        let mut measured = None;
        let (input_name, input): (String, Box<dyn Read + Send>) = match &config.path {
            None => ("standard input".to_string(), Box::new(io::stdin())),
            Some(path) => {
                let name = path.display().to_string();
                let fail = |e: io::Error| SourceError::new(format!("lines source {name}: opening"), e);
                let file = File::open(path).map_err(fail)?;
                if file.metadata().map_err(fail)?.is_dir() {
                    return Err(SourceError::new(
                        format!("lines source {name}: opening"),
                        "it is a directory; a lines source reads one file (a spool source takes a directory)",
                    ));
                }
                let again = file.try_clone().map_err(fail)?;
                let identity = FileIdentity::of(&again, &name).map_err(fail)?;
                measured = Some((again, identity));
                (name, Box::new(file))
            }
        };
        Ok(LinesSource {
            config,
            input_name,
            reader: Mutex::new(Reader {
                input: BufReader::with_capacity(BUFFER, input),
                line: 0,
                at_end: false,
                error: None,
                buf: Vec::new(),
            }),
            returned: Mutex::new(VecDeque::new()),
            measured,
            resume: true,
            pass: None,
        })
    }

    /// Ties resuming to the file. `identity_file` keeps the identity of the
    /// file the sink's records came from (see `file_identity`); `records`:
    /// whether the sink has any records yet (if not, what is recorded there
    /// is stale and is replaced).
    ///
    /// With `resume`, a file that is not the recorded one is refused, with a
    /// message that says how to go on: its lines would be skipped by number
    /// as if done. (Starting over instead cannot be made safe: ids are line
    /// numbers, so after an interrupted rerun the old file's records could
    /// not be told from the new one's.) So is a file whose `--no-resume`
    /// pass did not finish. Records without a recorded identity (an upgrade)
    /// are resumed with a warning. Without `resume`, every line runs; the
    /// pass is recorded as unfinished until it is, unless the sink's records
    /// are all this file's already (none, or the recorded file is this one).
    /// Either way the identity of this file is then recorded. Standard input
    /// has no identity: only `resume` applies.
    pub fn tie_resume(mut self, identity_file: &Path, resume: bool, records: bool) -> Result<Self, SourceError> {
        self.resume = resume;
        let Some((file, now)) = &self.measured else {
            return Ok(self);
        };
        let shown = identity_file.display();
        let fail = |doing: &str, e: &dyn std::fmt::Display| {
            SourceError::new(
                format!("lines source {}: {doing} {shown}", self.input_name),
                e.to_string(),
            )
        };
        let recorded = match std::fs::read(identity_file) {
            Ok(bytes) if records => match serde_json::from_slice::<FileIdentity>(&bytes) {
                Ok(recorded) => Some(recorded),
                Err(e) => {
                    log::warn!(
                        "{shown} is unreadable ({e}); taking {} as the file the records came from",
                        self.input_name
                    );
                    None
                }
            },
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if records && resume {
                    log::warn!(
                        "lines source {}: the sink has records but there is no {shown} (they were written by a \
                         version of lote that did not record their file), so this file could not be verified as \
                         the one they came from; resuming over it, and its identity is recorded from now on. If it \
                         is another file, stop and run once with --no-resume",
                        self.input_name
                    );
                }
                None
            }
            Err(e) => return Err(fail("reading", &e)),
        };
        // Whether every record in the sink is this file's already.
        let mut records_are_this_files = !records;
        if let Some(recorded) = &recorded {
            let compared = recorded.compare(file, now).map_err(|e| fail("comparing with", &e))?;
            if resume {
                match &compared {
                    Compared::Same => {}
                    Compared::SameContentMoved => log::info!(
                        "lines source {}: the same content as the file the records came from, under another \
                         inode (copied or restored); resuming",
                        self.input_name
                    ),
                    Compared::Different(how) => {
                        return Err(SourceError::new(
                            format!("lines source {}", self.input_name),
                            format!(
                                "this is not the file the sink's records came from ({how}; recorded in {shown}: \
                                 {} bytes, inode {}), so resuming would skip its lines by number as if they were \
                                 done. To run every line of it, run once with --no-resume (the records are tied to \
                                 this file from then on); to resume anyway, delete {shown}",
                                recorded.size, recorded.inode
                            ),
                        ));
                    }
                }
                if recorded.pass_unfinished {
                    return Err(SourceError::new(
                        format!("lines source {}", self.input_name),
                        format!(
                            "a --no-resume run over this file did not finish (recorded in {shown}): the sink still \
                             holds the previous file's records under the numbers of the lines not run again yet, \
                             so resuming would skip those lines as if they were done. Run with --no-resume again \
                             (every line runs; later runs resume once it has reached the end of the file with \
                             every outcome saved); to resume anyway, delete {shown}"
                        ),
                    ));
                }
            }
            records_are_this_files = !recorded.pass_unfinished && !matches!(compared, Compared::Different(_));
        }
        let mut record = now.clone();
        if !resume {
            log::info!(
                "lines source {}: --no-resume: every line runs, done or not; the sink's records are tied to this \
                 file from now on{}",
                self.input_name,
                if records_are_this_files {
                    ""
                } else {
                    " (recorded as unfinished until every line has its outcome saved)"
                }
            );
            if !records_are_this_files {
                record.pass_unfinished = true;
                self.pass = Some(UnfinishedPass {
                    identity_file: identity_file.to_path_buf(),
                    finished: now.clone(),
                    progress: Mutex::new(PassProgress::default()),
                });
            }
        }
        let json = serde_json::to_vec_pretty(&record).map_err(|e| fail("recording", &e))?;
        crate::fsutil::write_atomically(identity_file, &json).map_err(|e| fail("recording", &e))?;
        Ok(self)
    }

    /// Reads the next line and makes it an item.
    fn next(&self, reader: &mut Reader) -> io::Result<Next> {
        let max = self.config.max_bytes;
        let Reader { input, line, buf, .. } = reader;
        // One byte more than the limit, for a `\r` before the `\n`.
        let Some(mut len) = read_line(input, buf, max.saturating_add(1))? else {
            return Ok(Next::End);
        };
        *line += 1;
        let n = *line;
        if n == 1 && buf.starts_with(BOM) {
            buf.drain(..BOM.len());
            len -= BOM.len() as u64;
        }
        if len > max as u64 {
            return Ok(Next::Item(Item::defective(
                n.to_string(),
                Vec::new(),
                format!("line {n} is {len} bytes, over max_bytes {max}"),
            )));
        }
        buf.truncate(len as usize);
        Ok(match self.config.format {
            LinesFormat::Text if buf.is_empty() => Next::Blank,
            LinesFormat::Text => Next::Item(Item::new(n.to_string(), buf.as_slice())),
            LinesFormat::Ndjson if buf.iter().all(u8::is_ascii_whitespace) => Next::Blank,
            LinesFormat::Ndjson => Next::Item(ndjson_item(n, buf)),
        })
    }
}

impl Source for LinesSource {
    fn describe(&self) -> String {
        match &self.config.path {
            Some(path) => format!("lines {}", path.display()),
            None => "lines stdin".to_string(),
        }
    }

    /// Items given back first, then up to `max` new lines; `Exhausted` at
    /// the end of the input.
    fn pull(&self, max: usize) -> Result<Pull, SourceError> {
        let max = max.max(1);
        let mut items: Vec<Item> = {
            let mut returned = self.returned.lock();
            let n = max.min(returned.len());
            returned.drain(..n).collect()
        };
        let mut reader = self.reader.lock();
        if let Some(error) = reader.error.take() {
            if items.is_empty() {
                return Err(error);
            }
            reader.error = Some(error);
        }
        let from_returned = items.len();
        while items.len() < max && !reader.at_end && reader.error.is_none() {
            // With something to hand over, do not wait on a slow pipe.
            if !items.is_empty() && reader.input.buffer().is_empty() {
                break;
            }
            match self.next(&mut reader) {
                Ok(Next::Item(item)) => items.push(item),
                Ok(Next::Blank) => {}
                Ok(Next::End) => reader.at_end = true,
                Err(e) => {
                    let error = SourceError::new(
                        format!("lines source {}: reading line {}", self.input_name, reader.line + 1),
                        e,
                    );
                    if items.is_empty() {
                        return Err(error);
                    }
                    reader.error = Some(error);
                }
            }
        }
        if let Some(pass) = &self.pass {
            let mut progress = pass.progress.lock();
            progress.unsaved += (items.len() - from_returned) as u64;
            progress.read_to_end = reader.at_end;
            pass.finish_if_done(&mut progress, &self.input_name);
        }
        Ok(if items.is_empty() {
            Pull::Exhausted
        } else {
            Pull::Items(items)
        })
    }

    fn give_back(&self, items: Vec<Item>, _reason: ReturnReason) -> Result<(), SourceError> {
        self.returned.lock().extend(items);
        Ok(())
    }

    /// The sink's records are what a rerun consults; a `--no-resume` pass
    /// only counts what is saved, to record when it is finished.
    fn ack(&self, outcomes: &[Outcome]) -> Result<(), SourceError> {
        if let Some(pass) = &self.pass {
            let mut progress = pass.progress.lock();
            progress.unsaved = progress.unsaved.saturating_sub(outcomes.len() as u64);
            pass.finish_if_done(&mut progress, &self.input_name);
        }
        Ok(())
    }

    fn requeue(&self, items: Vec<Item>) -> Result<(), SourceError> {
        Err(SourceError::new(
            format!("requeueing {} item(s) into {}", items.len(), self.describe()),
            "a file of lines cannot take items back; requeue into a spool, sqlite or inbox source instead",
        ))
    }

    /// True unless resuming was turned off (`--no-resume`).
    fn needs_resume(&self) -> bool {
        self.resume
    }
}

/// Reads one line into `buf` without its `\n`, keeping at most `keep` bytes
/// of it and counting (and dropping) the rest. Returns the line's length
/// without its `\n` or `\r\n` (which may exceed `keep`), or `None` at the
/// end of the input.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, keep: usize) -> io::Result<Option<u64>> {
    buf.clear();
    let (mut len, mut any, mut ends_in_cr) = (0u64, false, false);
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            // End of input; a last line without `\n` still counts.
            return Ok(any.then(|| len - u64::from(ends_in_cr)));
        }
        any = true;
        let (chunk, used, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = keep.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        len += chunk.len() as u64;
        if let Some(&last) = chunk.last() {
            ends_in_cr = last == b'\r';
        }
        input.consume(used);
        if complete {
            return Ok(Some(len - u64::from(ends_in_cr)));
        }
    }
}

/// One NDJSON line as an item, or as a defective item saying what is wrong.
fn ndjson_item(line: u64, raw: &[u8]) -> Item {
    match JsonItem::parse(raw) {
        Ok(item) => Item::new(item.id.unwrap_or_else(|| line.to_string()), item.payload)
            .with_priority(item.priority.unwrap_or(DEFAULT_PRIORITY)),
        Err(why) => Item::defective(
            line.to_string(),
            raw,
            format!("line {line} is not a JSON object with id/priority/payload: {why}"),
        ),
    }
}

/// `source: {kind: lines}` — one item per line of a file or of stdin.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesKeys {
    #[serde(rename = "kind", default)]
    _kind: serde::de::IgnoredAny,
    /// The file, or `"-"` (quoted) for standard input. Required.
    pub path: Option<PathBuf>,
    /// `text` (the line is the payload, the id its number) or `ndjson`
    /// (`{"id", "priority", "payload"}` per line). Default `ndjson` for a
    /// path ending `.ndjson` or `.jsonl`, `text` otherwise.
    pub format: Option<LinesFormat>,
    /// Longer lines are dead-lettered. Default 1MiB.
    pub max_bytes: Option<ByteSize>,
}

impl SourceKind for LinesConfig {
    const NAME: &'static str = "lines";
    type Keys = LinesKeys;

    fn build(l: LinesKeys, at: &SourceAt, check: &Check) -> spec::Result<Self> {
        let Some(path) = l.path else {
            return check.err(
                "source.path",
                "is missing; expected a file of items, one per line, or \"-\" for standard input",
            );
        };
        check.path("source.path", &path)?;
        let path = if path.as_os_str() == "-" {
            if let Some(every) = at.every {
                return Err(check.doc.error_at(
                    "source.path",
                    &["source.path", "session.every"],
                    format!(
                        "is \"-\" (standard input), which can be read only once, but `session.every` ({}) \
                         starts a session on a period; expected a file, or no `every`",
                        format_duration(every)
                    ),
                ));
            }
            None
        } else {
            Some(absolute(at.state_dir, &path))
        };
        let d = LinesConfig::stdin();
        let max_bytes = match l.max_bytes {
            None => d.max_bytes,
            Some(b) => check.usize_bytes("source.max_bytes", b.0)?,
        };
        if max_bytes == 0 {
            return check.err(
                "source.max_bytes",
                "is 0, so no line could be processed; expected a size like 1MiB",
            );
        }
        let format = l.format.unwrap_or_else(|| default_format(path.as_deref()));
        Ok(LinesConfig {
            path,
            format,
            max_bytes,
        })
    }

    fn effective(&self) -> serde_yaml::Value {
        map([
            ("kind", Self::NAME.into()),
            ("path", self.path.as_deref().map_or_else(|| "-".into(), effective::path)),
            ("format", spelled(&self.format)),
            ("max_bytes", bytes(self.max_bytes as u64)),
        ])
    }

    fn on_disk(&self, check: &mut Check) -> spec::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if path.is_dir() {
            return check.err(
                "source.path",
                format!(
                    "{} is a directory; expected a file of lines (a spool source takes a directory)",
                    path.display()
                ),
            );
        }
        if !path.exists() {
            check
                .warnings
                .push(missing_source(path, "expected a file of items, one per line"));
        }
        Ok(())
    }

    fn streams(&self) -> bool {
        false
    }

    fn resumes_from_sink(&self) -> bool {
        true
    }

    fn open(&self, _stream: bool) -> Result<Arc<dyn Source>, String> {
        let source = LinesSource::open(self.clone()).map_err(|e| format!("opening the lines source: {e}"))?;
        Ok(Arc::new(source))
    }

    fn open_for_run(&self, run: &Run) -> Result<(Arc<dyn Source>, Option<TableAck>), String> {
        let failed = |e: &dyn std::fmt::Display| format!("opening the lines source: {e}");
        if !run.resume && run.exactly_once {
            return Err(
                "--no-resume would run items whose outcome is durable again, which handler.qos: exactly_once rules \
                 out; drop --no-resume, or set qos: at_least_once for this run"
                    .into(),
            );
        }
        // The config refuses a sink without a file for a lines source
        // (`done_records_survive`); this is the backstop for the library.
        let Some(sink) = run.sink_path else {
            return Err(
                "a lines source resumes from the sink's file, and this sink writes none; expected sink.kind: \
                 sqlite or jsonl"
                    .into(),
            );
        };
        let mut identity_file = sink.as_os_str().to_owned();
        identity_file.push(".lines-file");
        let source = LinesSource::open(self.clone()).map_err(|e| failed(&e))?;
        let source = source
            .tie_resume(Path::new(&identity_file), run.resume, sink.exists())
            .map_err(|e| failed(&e))?;
        Ok((Arc::new(source), None))
    }
}

/// SPEC §3.6: a lines source reads NDJSON when its path ends `.ndjson` or
/// `.jsonl` and `format:` is not given; text otherwise (stdin included).
fn default_format(path: Option<&Path>) -> LinesFormat {
    use std::os::unix::ffi::OsStrExt;
    match path.map(|p| p.as_os_str().as_bytes()) {
        Some(p) if p.ends_with(b".ndjson") || p.ends_with(b".jsonl") => LinesFormat::Ndjson,
        _ => LinesFormat::Text,
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
