//! The spool's file-system calls, all made relative to directory handles.
//!
//! A producer shares the spool directory with lote (same group, mode 2770):
//! it can remove an empty `done/` or `failed/` and put a symlink in its
//! place, or hard-link a file it cannot read into the spool. A path such as
//! `<dir>/failed/outcomes.db` would follow that symlink; these calls never
//! resolve a path of more than one component:
//!
//! - Every directory is a handle opened once with `O_DIRECTORY|O_NOFOLLOW`;
//!   a subdirectory's handle is re-verified (device + inode of the name in
//!   `<dir>`) before each use and reopened when the name was replaced
//!   ([`SubDir::get`]).
//! - Every move is `renameat2(RENAME_NOREPLACE)` between two handles: it
//!   never follows a link, never replaces an existing entry.
//! - An item is opened with `O_NOFOLLOW|O_NONBLOCK` (a FIFO swapped in at the
//!   last moment cannot block the open) and read only if it is the regular
//!   file examined, with exactly one hard link.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::sync::Mutex;

/// What an entry is, from `lstat` (links are not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    /// "a FIFO", "a directory", … for messages.
    pub(super) fn described(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "of an unknown type",
        }
    }
}

/// The part of `lstat` the spool uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    pub kind: Kind,
    pub len: u64,
    pub mtime: SystemTime,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl Stat {
    fn of(st: &FileStat) -> Self {
        let kind = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFSOCK => Kind::Socket,
            SFlag::S_IFCHR => Kind::CharDevice,
            SFlag::S_IFBLK => Kind::BlockDevice,
            _ => Kind::Unknown,
        };
        let mtime = u64::try_from(st.st_mtime)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::new(secs, st.st_mtime_nsec.clamp(0, 999_999_999) as u32))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Stat {
            kind,
            len: u64::try_from(st.st_size).unwrap_or(0),
            mtime,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
        }
    }
}

/// `lstat` of `name` in `dir`.
pub(super) fn lstat(dir: impl AsFd, name: &OsStr) -> io::Result<Stat> {
    Ok(Stat::of(&fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?))
}

/// Opens the spool directory itself. The configured path is the
/// administrator's, so a symlink in it is followed; nothing below it is.
pub(super) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A listing of `dir` (a fresh handle, so its own read position).
pub(super) fn list(dir: impl AsFd) -> io::Result<Dir> {
    Ok(Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in `dir` except `.` and `..`.
pub(super) fn names(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut listing = list(dir)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Moves `from` in `from_dir` to `to` in `to_dir`, failing with
/// `AlreadyExists` if `to` exists: nothing is ever replaced, nothing followed.
pub(super) fn move_noreplace(from_dir: impl AsFd, from: &OsStr, to_dir: impl AsFd, to: &OsStr) -> io::Result<()> {
    Ok(renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE)?)
}

/// Moves `from` in `from_dir` into `to_dir` as `to` or, if that is taken,
/// as `<to>.~<unix seconds>.<nanoseconds>~`; returns the name it got. An
/// existing entry is never replaced.
pub(super) fn move_unique(from_dir: impl AsFd, from: &OsStr, to_dir: impl AsFd, to: &OsStr) -> io::Result<OsString> {
    let mut name = to.to_owned();
    for attempt in 0.. {
        match move_noreplace(from_dir.as_fd(), from, to_dir.as_fd(), &name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                name = unique_name(to, attempt);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} and {attempt} suffixed names are taken in the target directory; clean it up",
                        to.to_string_lossy()
                    ),
                ))
            }
            other => return other.map(|()| name),
        }
    }
    unreachable!("the loop returns")
}

/// Where [`move_back`] put a claimed entry.
pub(super) struct MovedBack {
    /// Its name in the spool directory: its own unless `fallback` is set.
    pub back: OsString,
    /// The new names of pending namesakes moved out of its way.
    pub aside: Vec<OsString>,
    /// Why it could not keep its name and went back beside a namesake.
    pub fallback: Option<String>,
}

/// Moves the claimed entry `name` back from `claimed` to `root` under its
/// own name (its id: under `exactly_once` its outcome may already be durable,
/// so it must not run again under another). A pending namesake there has
/// never run, so it is moved aside to `<name>.~<secs>.<nanos>~` first. If
/// the name is taken again each time (a producer racing), or the namesake
/// cannot be moved, the claimed entry goes back beside it under a unique
/// name instead. Nothing is ever replaced.
pub(super) fn move_back(claimed: impl AsFd, name: &OsStr, root: impl AsFd) -> io::Result<MovedBack> {
    let mut aside = Vec::new();
    let mut fallback = format!(
        "{} was taken again after {MOVE_BACK_TRIES} tries",
        name.to_string_lossy()
    );
    for _ in 0..MOVE_BACK_TRIES {
        match move_noreplace(claimed.as_fd(), name, root.as_fd(), name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => {
                return other.map(|()| MovedBack {
                    back: name.to_owned(),
                    aside,
                    fallback: None,
                })
            }
        }
        match move_aside(root.as_fd(), name) {
            Ok(to) => aside.push(to),
            // Gone since: the name may be free now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                fallback = format!("the pending {} cannot be moved aside: {e}", name.to_string_lossy());
                break;
            }
        }
    }
    let back = move_unique(claimed, name, root, name)?;
    let fallback = (back != name).then_some(fallback);
    Ok(MovedBack { back, aside, fallback })
}

/// How often [`move_back`] moves a namesake aside before giving up.
const MOVE_BACK_TRIES: u32 = 3;

/// Renames `name` in `dir` to `<name>.~<secs>.<nanos>~`; returns the new name.
fn move_aside(dir: impl AsFd, name: &OsStr) -> io::Result<OsString> {
    for attempt in 0..8 {
        let to = unique_name(name, attempt);
        match move_noreplace(dir.as_fd(), name, dir.as_fd(), &to) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => return other.map(|()| to),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("the suffixed names of {} are taken", name.to_string_lossy()),
    ))
}

/// `<name>.~<secs>.<nanos>~` (with `-<attempt>` after the first), cut to
/// fit the 255-byte limit of a file name (never inside a UTF-8 character).
fn unique_name(name: &OsStr, attempt: u32) -> OsString {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut suffix = format!(".~{}.{:09}", now.as_secs(), now.subsec_nanos());
    if attempt > 0 {
        let _ = write!(suffix, "-{attempt}");
    }
    suffix.push('~');
    let bytes = name.as_bytes();
    let mut keep = bytes.len().min(255 - suffix.len());
    // A UTF-8 continuation byte (10xxxxxx) is inside a character.
    while keep > 0 && keep < bytes.len() && bytes[keep] & 0xC0 == 0x80 {
        keep -= 1;
    }
    let mut unique = OsStr::from_bytes(&bytes[..keep]).to_owned();
    unique.push(suffix);
    unique
}

/// Removes the entry `name` in `dir` (a link itself, never its target).
pub(super) fn remove(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?)
}

/// Creates `name` in `dir` for writing; fails if anything has that name.
pub(super) fn create_new(dir: impl AsFd, name: &OsStr) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(File::from(openat(dir, name, flags, Mode::from_bits_truncate(0o666))?))
}

/// Reads the item `name` in `dir`, which `expected` describes, at most
/// `limit + 1` bytes. Refuses, without reading a byte, what is not that very
/// regular file (a link or another file swapped in since it was examined)
/// and a file with more than one hard link: another name of it may be a
/// file the producer could not read itself.
pub(super) fn read_item(dir: impl AsFd, name: &OsStr, expected: &Stat, limit: u64) -> io::Result<Vec<u8>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => io::Error::other("it was replaced by a symlink (symlinks are not followed)"),
        e => e.into(),
    })?;
    let stat = Stat::of(&fstat(&fd)?);
    if stat.kind != Kind::File || stat.dev != expected.dev || stat.ino != expected.ino {
        return Err(io::Error::other(
            "the file was replaced since it was examined (symlinks are not followed)",
        ));
    }
    if stat.nlink > 1 {
        return Err(io::Error::other(hard_links(stat.nlink)));
    }
    let mut bytes = Vec::with_capacity(stat.len.min(limit) as usize);
    File::from(fd).take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Why a file with `nlink` hard links is refused.
pub(super) fn hard_links(nlink: u64) -> String {
    format!(
        "it has {nlink} hard links: refused unread (another name of it may be a file outside the spool; \
         move files in with rename, not link)"
    )
}

/// The item id of an entry name: the name itself when it is UTF-8;
/// otherwise each byte that is not valid UTF-8 becomes `%XX` (so
/// `caf\xe9.json` is `caf%E9.json`), and `false` says the name was escaped.
pub(super) fn item_id(name: &OsStr) -> (String, bool) {
    if let Some(name) = name.to_str() {
        return (name.to_owned(), true);
    }
    let mut id = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        id.push_str(chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(id, "%{byte:02X}");
        }
    }
    (id, false)
}

/// A directory held open, with what identified it when opened.
pub(super) struct DirHandle {
    pub fd: OwnedFd,
    dev: u64,
    ino: u64,
}

impl AsFd for DirHandle {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One of the spool's own subdirectories (`.claimed`, `done`, `failed`).
pub(super) struct SubDir {
    name: &'static str,
    /// `<dir>/<name>`, for messages only: nothing is opened by this path.
    pub path: PathBuf,
    /// The directory in use. Replaced by `get` when `<dir>/<name>` no longer
    /// names it. Locked for one `fstatat` (and, after a replacement, a
    /// `mkdirat` and an `openat`), never across a move or a read.
    current: Mutex<Arc<DirHandle>>,
}

impl SubDir {
    /// Opens `<root>/<name>`, creating it if missing; refuses a symlink or
    /// anything else that is not a directory.
    pub(super) fn open(root: &OwnedFd, root_path: &Path, name: &'static str) -> io::Result<Self> {
        let path = root_path.join(name);
        let handle = open_subdir(root, name, &path)?;
        Ok(SubDir {
            name,
            path,
            current: Mutex::new(Arc::new(handle)),
        })
    }

    /// The directory, after checking that `<root>/<name>` still is the one
    /// held. If it was removed, it is created again; if another directory
    /// was put there, that one is used (everything is moved through handles,
    /// so a directory can only be inside the spool); if a symlink or a file
    /// was put there, nothing is moved through it: an error that says to
    /// remove it.
    pub(super) fn get(&self, root: &OwnedFd) -> io::Result<Arc<DirHandle>> {
        let mut current = self.current.lock();
        match fstatat(root, self.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev == current.dev && st.st_ino == current.ino => return Ok(current.clone()),
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let handle = open_subdir(root, self.name, &self.path)?;
        log::warn!(
            "spool: {} was removed or replaced while lote ran; lote now uses the directory that has that name \
             (created again if it was missing). Files moved into the old one stay wherever it went.",
            self.path.display()
        );
        *current = Arc::new(handle);
        Ok(current.clone())
    }
}

fn open_subdir(root: &OwnedFd, name: &str, path: &Path) -> io::Result<DirHandle> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let opened = match openat(root, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) => {
            match mkdirat(root, name, Mode::from_bits_truncate(0o777)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("creating {}: {e}", path.display()),
                    ))
                }
            }
            openat(root, name, flags, Mode::empty())
        }
        other => other,
    };
    let fd = opened.map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => io::Error::other(format!(
            "{} exists but is not a directory (symlinks are not followed): lote moves nothing through it; \
             move it away and lote creates the directory",
            path.display()
        )),
        e => io::Error::new(io::Error::from(e).kind(), format!("opening {}: {e}", path.display())),
    })?;
    let st = fstat(&fd)?;
    Ok(DirHandle {
        fd,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_utf8_gets_an_escaped_id() {
        assert_eq!(item_id(OsStr::new("plain.json")), ("plain.json".to_string(), true));
        let raw = OsStr::from_bytes(b"caf\xe9-\xff\xfe.json");
        assert_eq!(item_id(raw), ("caf%E9-%FF%FE.json".to_string(), false));
    }

    #[test]
    fn a_unique_name_fits_a_file_name() {
        let long = "é".repeat(127);
        let name = unique_name(long.as_ref(), 3);
        assert!(name.len() <= 255, "{}", name.len());
        let name = name.to_str().expect("cut between characters");
        assert!(name.ends_with("-3~"), "{name}");
        assert!(unique_name("x".as_ref(), 0).to_string_lossy().starts_with("x.~"));
    }
}
