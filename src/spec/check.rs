//! Stage two's generic checks: the bounds every value has (`MAX_*`), and
//! the refusals every section uses, each naming the key it refuses with the
//! key's line and column in the file.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Doc};
use super::value::{format_bytes, format_duration};

/// Stage two: defaults, checks, engine types.
pub struct Check<'a> {
    pub doc: &'a Doc<'a>,
    pub warnings: Vec<String>,
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

// The largest value of every number, size and duration (SPEC §3.9: nothing
// `lote check` accepts may make `lote run` panic, abort or hang). Each is
// far beyond what a box needs and far below what would overflow a clock,
// a counter or an allocation.

/// Every duration: a month is longer than any wait lote should sit in.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// `busy_timeout`: SQLite takes milliseconds in a 31-bit int (24.8 days).
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 24 * 3600);
/// Every byte size (items, lines, kept output): what one item may weigh in memory.
pub const MAX_BYTES: u64 = 1 << 30;
/// `sink.rotate_bytes`: one JSONL file.
pub const MAX_ROTATE_BYTES: u64 = 1 << 40;
/// `session.threads`.
pub const MAX_THREADS: usize = 1024;
/// `session.chunk`, `sink.batch`: outcomes held in memory at once.
pub const MAX_OUTCOMES: usize = 100_000;
/// `queue.capacity`.
pub const MAX_CAPACITY: usize = 1_000_000;
/// `session.max_items` (0 = no limit).
pub const MAX_ITEMS: u64 = 1_000_000_000_000;
/// `handler.retry.attempts`, `sink.max_retries`, `sink.keep_files`.
pub const MAX_TRIES: u64 = 1000;

impl Check<'_> {
    pub fn err<T>(&self, key: &str, message: impl Into<String>) -> Result<T> {
        Err(self.doc.error(key, message))
    }

    /// Refuses a duration above `max` with the allowed range.
    pub fn at_most(&self, key: &str, value: Duration, max: Duration) -> Result<Duration> {
        if value > max {
            return self.err(
                key,
                format!(
                    "is {}, longer than lote allows; expected a duration up to {}",
                    format_duration(value),
                    format_duration(max)
                ),
            );
        }
        Ok(value)
    }

    /// [`Check::at_most`] for an optional duration.
    pub fn opt_at_most(&self, key: &str, value: Option<Duration>, max: Duration) -> Result<Option<Duration>> {
        value.map(|v| self.at_most(key, v, max)).transpose()
    }

    /// Refuses a count outside `range` (every count fits a `u64`).
    pub fn count(&self, key: &str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<()> {
        if !range.contains(&value) {
            return self.err(
                key,
                format!(
                    "is {value}, out of range; expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
        }
        Ok(())
    }

    /// Refuses a byte size above `max` with the allowed range.
    pub fn bytes_at_most(&self, key: &str, value: u64, max: u64) -> Result<u64> {
        if value > max {
            return self.err(
                key,
                format!(
                    "is {}, larger than lote allows; expected a size up to {}",
                    format_bytes(value),
                    format_bytes(max)
                ),
            );
        }
        Ok(value)
    }

    /// A byte size that is held in memory: at most [`MAX_BYTES`].
    pub fn usize_bytes(&self, key: &str, n: u64) -> Result<usize> {
        self.bytes_at_most(key, n, MAX_BYTES)?;
        usize::try_from(n).or_else(|_| self.err(key, format!("{} is too large for this machine", format_bytes(n))))
    }

    /// Refuses an empty path or one with a NUL byte: neither names a file.
    pub fn path(&self, key: &str, path: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        if path.as_os_str().is_empty() {
            return self.err(key, "is empty; expected a path");
        }
        if path.as_os_str().as_bytes().contains(&0) {
            return self.err(
                key,
                "contains a NUL byte, which no path can hold; expected a path without one",
            );
        }
        Ok(())
    }

    /// A file lote writes: not a directory, and its directory exists or can
    /// be created.
    pub fn writable_file(&self, key: &str, file: &Path) -> Result<()> {
        if file.is_dir() {
            return Err(self.doc.error_at(
                key,
                &[key, "state_dir"],
                format!("{} is a directory; expected the path of a file", file.display()),
            ));
        }
        match file.parent() {
            Some(dir) => self.creatable_dir(key, &[key, "state_dir"], dir, Some(file)),
            None => Ok(()),
        }
    }

    /// `dir` is a directory, or the nearest existing directory above it is
    /// one lote may create it in (`access(2)`: writable and searchable).
    /// Looks only; `Config::create_dirs` creates.
    pub fn creatable_dir(&self, key: &str, places: &[&str], dir: &Path, for_file: Option<&Path>) -> Result<()> {
        use nix::unistd::{access, AccessFlags};
        let what = match for_file {
            Some(file) => format!("the directory {} for {}", dir.display(), file.display()),
            None => format!("the directory {}", dir.display()),
        };
        let fail = |why: String| {
            Err(self.doc.error_at(
                key,
                places,
                format!("cannot create {what}: {why}; expected a directory lote can create and write to"),
            ))
        };
        let mut at = dir;
        loop {
            match std::fs::metadata(at) {
                Ok(meta) if meta.is_dir() && at == dir => return Ok(()),
                Ok(meta) if meta.is_dir() => {
                    return match access(at, AccessFlags::W_OK | AccessFlags::X_OK) {
                        Ok(()) => Ok(()),
                        Err(e) => fail(format!("{} is not writable ({e})", at.display())),
                    }
                }
                Ok(_) => return fail(format!("{} is not a directory", at.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => return Ok(()),
                },
                Err(e) => return fail(format!("{}: {e}", at.display())),
            }
        }
    }
}

/// `path` against `base` unless absolute, with `.` components dropped and
/// `x/..` folded — unless `x` is a symlink, whose `..` only the kernel can
/// resolve. Folding a plain or missing directory gives the same file, and
/// the same path before and after `run` creates it: `../samples/x` under
/// `./state` is `./samples/x` on a fresh clone and after the first run
/// alike (a reload compares paths to tell whether a source changed).
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if out.parent().is_some()
                    && !std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
