//! Which file a lines source's records came from.
//!
//! A lines source resumes by line number: the sink's `done` records of ids
//! `1`…`N` make a rerun skip lines `1`…`N`. That is right only over the same
//! file. So the daemon keeps, beside the sink (`<sink>.lines-file`), the
//! identity of the file the records came from, and a lines source compares
//! the file it opened with it before resuming.
//!
//! # What "the same file" means
//!
//! Content decides: the file is the one the records came from when it is at
//! least as long as it was, and its first [`WINDOW`] bytes and the
//! [`WINDOW`] bytes before its recorded end hash as they did (FNV-1a, 64
//! bits: this tells files apart, it does not resist forgery). A file that
//! was only appended to is the same file. Device and inode are recorded and
//! reported, but do not decide: device numbers change across reboots on
//! some filesystems, and a file restored from a backup or synced again with
//! the same content has a new inode, yet the records are still its own.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many bytes at the head, and before the recorded end, are hashed.
pub const WINDOW: u64 = 64 * 1024;

/// What is recorded of a file (the JSON of `<sink>.lines-file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// The path it was opened by, for messages.
    pub path: String,
    pub device: u64,
    pub inode: u64,
    /// Its length in bytes when it was opened.
    pub size: u64,
    /// FNV-1a of bytes `0 .. min(size, WINDOW)`, in hex.
    pub head: String,
    /// FNV-1a of bytes `size - min(size, WINDOW) .. size`, in hex.
    pub tail: String,
    /// True while a `--no-resume` pass over this file has not finished: the
    /// sink may still hold another file's `done` records under the line
    /// numbers not yet run, so resuming is not safe. Absent (false) in a
    /// record of a finished pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_unfinished: bool,
}

/// How an opened file compares with a recorded identity.
#[derive(Debug, PartialEq, Eq)]
pub enum Compared {
    /// The same file, perhaps appended to.
    Same,
    /// The same content under another device/inode (copied, restored).
    SameContentMoved,
    /// Another file; the text says how it differs.
    Different(String),
}

impl FileIdentity {
    /// Measures `file` (opened by `path`) as it is now. Reads at most two
    /// windows, without moving the file's read position.
    pub fn of(file: &File, path: &str) -> io::Result<Self> {
        let meta = file.metadata()?;
        let size = meta.len();
        let window = size.min(WINDOW);
        Ok(FileIdentity {
            path: path.to_string(),
            device: meta.dev(),
            inode: meta.ino(),
            size,
            head: hash_range(file, 0, window)?,
            tail: hash_range(file, size - window, window)?,
            pass_unfinished: false,
        })
    }

    /// Compares `file`, as measured in `now`, with this recorded identity.
    pub fn compare(&self, file: &File, now: &FileIdentity) -> io::Result<Compared> {
        if now.size < self.size {
            return Ok(Compared::Different(format!(
                "it is {} bytes, shorter than the {} bytes recorded",
                now.size, self.size
            )));
        }
        let window = self.size.min(WINDOW);
        if hash_range(file, 0, window)? != self.head {
            return Ok(Compared::Different(format!("its first {window} bytes differ")));
        }
        if hash_range(file, self.size - window, window)? != self.tail {
            return Ok(Compared::Different(format!(
                "its {window} bytes before offset {} differ",
                self.size
            )));
        }
        Ok(if (now.device, now.inode) == (self.device, self.inode) {
            Compared::Same
        } else {
            Compared::SameContentMoved
        })
    }
}

/// FNV-1a (64 bits) of `len` bytes of `file` from `offset`, in hex.
fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<String> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in buf {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{hash:016x}"))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::Write;

    fn identity(path: &std::path::Path) -> (File, FileIdentity) {
        let file = File::open(path).unwrap();
        let id = FileIdentity::of(&file, "f").unwrap();
        (file, id)
    }

    #[test]
    fn appended_is_same_and_rewritten_is_different() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let lines: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &lines).unwrap();
        let (_, recorded) = identity(&path);
        assert!(recorded.size > 2 * WINDOW);

        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        let (file, now) = identity(&path);
        assert_eq!(recorded.compare(&file, &now).unwrap(), Compared::Same);

        // Same head, another middle: the window before the recorded end tells.
        let changed = lines.replace("line 19990\n", "LINE 19990\n");
        std::fs::write(dir.path().join("g"), &changed).unwrap();
        let (file, now) = identity(&dir.path().join("g"));
        assert!(matches!(recorded.compare(&file, &now).unwrap(), Compared::Different(_)));

        std::fs::write(dir.path().join("h"), &lines).unwrap();
        let (file, now) = identity(&dir.path().join("h"));
        assert_eq!(recorded.compare(&file, &now).unwrap(), Compared::SameContentMoved);

        std::fs::write(&path, "today 1\n").unwrap();
        let (file, now) = identity(&path);
        assert!(matches!(recorded.compare(&file, &now).unwrap(), Compared::Different(_)));
    }
}
