//! File-system helpers shared by the sources, the sinks and the status
//! files: a directory fsync, a lock file, an atomic replace. A leaf: it
//! imports std and nix only.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::fsync;

/// fsyncs a directory, so the renames, creations and removals in it survive
/// a power cut.
///
/// EINVAL and EOPNOTSUPP are success: fsync(2) answers them for a file
/// that "does not support synchronization", which is how a file system
/// that cannot fsync a directory says so; there is nothing more to do on
/// it. Every other error (EIO above all: the kernel could not write the
/// directory out) is returned, because a caller that promises durability
/// must not promise it after that.
pub fn sync_dir(dir: impl AsFd) -> io::Result<()> {
    match fsync(dir) {
        Err(Errno::EINVAL | Errno::EOPNOTSUPP) => Ok(()),
        other => Ok(other?),
    }
}

/// [`sync_dir`] of the directory at `path`.
pub fn sync_dir_at(path: &Path) -> io::Result<()> {
    sync_dir(File::open(path)?)
}

/// The directory holding `file` (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Opens (creating it if missing) the regular file `name` in `dir` for
/// `flock`ing; refuses a symlink (never followed) and anything that is not
/// a regular file. The file's content is never read nor written: only its
/// lock matters.
pub fn open_lock_file(dir: impl AsFd, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o666)).map_err(|e| match e {
        Errno::ELOOP => io::Error::other("it is a symlink; remove it"),
        e => e.into(),
    })?;
    let kind = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(io::Error::other("it is not a regular file; remove it"));
    }
    Ok(File::from(fd))
}

/// Counts the temporary files of [`write_atomically`], so two threads of
/// one process writing the same file never share one. Relaxed: only
/// uniqueness matters, which `fetch_add` gives under any ordering.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces the file at `path` with `bytes` so that a reader sees either the
/// old content or the new, never a mix: writes `<path>.tmp-<pid>-<n>` in the
/// same directory, fsyncs it, renames it over `path`, then fsyncs the
/// directory so the rename survives a power cut. Creates the parent
/// directory if it is missing. On error the temporary file is removed.
///
/// The temporary name does not end in `.prom`, so node_exporter's textfile
/// collector never reads a half-written metrics file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, bytes, true)
}

/// [`write_atomically`] without the fsyncs: readers still see the old file or
/// the new, never a mix, but a power cut may leave the old one (or, on a file
/// system that does not order a rename after its data, an empty one). For
/// files rewritten every few seconds for readers only (`status.json`, the
/// metrics textfile): their fsyncs were most of an idle daemon's wake-ups.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, bytes, false)
}

fn write_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let dir = PathBuf::from(parent_dir(path));
    fs::create_dir_all(&dir)?;
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // The data is in place; a directory fsync that fails only weakens
    // durability, not atomicity (a lines source's resume point is written
    // again at its next record).
    if durable {
        let _ = sync_dir_at(&dir);
    }
    Ok(())
}

/// Whether `a` and `b` name the same file, through other spellings and
/// symlinks (a file that does not exist is compared by its path).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_is_a_regular_file_never_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let handle = File::open(dir.path()).unwrap();
        open_lock_file(&handle, "a.lock".as_ref()).unwrap();
        assert!(dir.path().join("a.lock").is_file());
        std::os::unix::fs::symlink(dir.path().join("a.lock"), dir.path().join("b.lock")).unwrap();
        let e = open_lock_file(&handle, "b.lock".as_ref()).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        fs::create_dir(dir.path().join("c.lock")).unwrap();
        assert!(open_lock_file(&handle, "c.lock".as_ref()).is_err());
    }

    #[test]
    fn a_directory_syncs_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir_at(dir.path()).unwrap();
        assert!(sync_dir_at(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn same_file_sees_through_other_spellings_and_links_of_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("one.db");
        std::fs::write(&db, "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join("sub/../one.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        assert!(same_file(&db, &dotted));
        assert!(same_file(&db, &link));
        let other = dir.path().join("two.db");
        std::fs::write(&other, "").unwrap();
        assert!(!same_file(&db, &other));
        // A file not there yet is compared as spelled.
        assert!(same_file(&dir.path().join("new.db"), &dir.path().join("new.db")));
        assert!(!same_file(
            &dir.path().join("new.db"),
            &dir.path().join("sub/../new.db")
        ));
    }
}
