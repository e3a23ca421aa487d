//! Everything restore creates, removes or gives metadata to, reached from
//! the target's directory by descriptor and never through a symbolic link.
//!
//! A restore by path followed every directory on the way: a user owning a
//! directory the target already held could swap a directory below it for a
//! link to `/etc` while a root restore ran, and the files (and, at the end,
//! the directory's owner and mode) went there. Here each operation looks up
//! the directory holding its entry below the target (`openat2` with
//! `RESOLVE_NO_SYMLINKS`, or one `openat(O_NOFOLLOW)` per component where
//! the kernel lacks it) and works on the entry's name in that directory;
//! metadata goes through a descriptor of the entry itself. A link found on
//! the way fails that entry, and nothing is written through it.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::dirfd::c_name;
use crate::fsmeta::{self, check};
use crate::tree::{Node, NodeKind};

/// Whether `openat2` answered ENOSYS or EPERM once (an old kernel, or a
/// seccomp filter that predates it): the component walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The target directory, open, and its path (what every restored path starts with).
pub(super) struct Beneath {
    root: OwnedFd,
    target: PathBuf,
}

/// The directory holding an entry, and the entry's name in it.
struct At {
    dir: OwnedFd,
    name: CString,
}

impl Beneath {
    /// The target `target`, following a link there: the user named it.
    pub(super) fn open(target: &Path) -> io::Result<Beneath> {
        // O_PATH: a target its user may enter and write but not list (0300) is one still.
        let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).open(target)?;
        Ok(Beneath { root: dir.into(), target: target.to_path_buf() })
    }

    /// Make the directory `path`, or keep the one there. A link there is
    /// replaced, so nothing is restored through it into wherever it points;
    /// anything else is the target's own (a file is not removed to make
    /// room) and an error.
    pub(super) fn make_dir(&self, path: &Path) -> io::Result<()> {
        let at = self.at(path)?;
        match at.mkdir() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match at.kind()? {
                libc::S_IFLNK => {
                    at.unlink()?;
                    at.mkdir()
                }
                libc::S_IFDIR => Ok(()),
                _ => Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory, so nothing is restored into it")),
            },
            made => made,
        }
    }

    /// Create the regular file `path` anew. Whatever the target holds there
    /// is replaced, never written through: a hard link to a file outside
    /// the target keeps its content, a read-only file needs no write
    /// access, a symbolic link is not followed, and no extended attribute
    /// of the old file stays.
    pub(super) fn create_file(&self, path: &Path) -> io::Result<File> {
        let at = self.at(path)?;
        let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        match at.open(create) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match at.unlink() {
                Ok(()) => at.open(create),
                // A directory an earlier restore made read-only (its
                // snapshot's mode) keeps its names from a user who is not
                // root: the file is rewritten in place, unless another name
                // shares it.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => match at.stat() {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1 => {
                        at.open(libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW)
                    }
                    _ => Err(e),
                },
                Err(e) => Err(e),
            },
            opened => opened,
        }
    }

    /// The regular file `path`, which this restore created, for writing.
    pub(super) fn open_file(&self, path: &Path) -> io::Result<File> {
        self.at(path)?.open(libc::O_WRONLY | libc::O_NOFOLLOW)
    }

    /// Remove what `path` names, a link as a link (not a directory).
    pub(super) fn remove(&self, path: &Path) -> io::Result<()> {
        self.at(path)?.unlink()
    }

    /// The symbolic link `path` to `to`, in place of whatever is there.
    pub(super) fn symlink(&self, to: &OsStr, path: &Path) -> io::Result<()> {
        let at = self.at(path)?;
        let _ = at.unlink();
        let to = c_name(to)?;
        // SAFETY: an open directory and NUL-terminated names, alive for the call.
        check(unsafe { libc::symlinkat(to.as_ptr(), at.dir.as_raw_fd(), at.name.as_ptr()) })
    }

    /// The device, fifo or socket `path`, in place of whatever is there.
    pub(super) fn make_special(&self, path: &Path, node: &Node) -> io::Result<()> {
        let at = self.at(path)?;
        let _ = at.unlink();
        let (kind, dev) = match node.kind {
            NodeKind::Dev => (libc::S_IFBLK, node.rdev),
            NodeKind::Chardev => (libc::S_IFCHR, node.rdev),
            NodeKind::Fifo => (libc::S_IFIFO, 0),
            NodeKind::Socket => (libc::S_IFSOCK, 0),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a special file")),
        };
        // SAFETY: an open directory and a NUL-terminated name, alive for the call.
        check(unsafe { libc::mknodat(at.dir.as_raw_fd(), at.name.as_ptr(), kind | (node.mode & 0o7777), dev as libc::dev_t) })
    }

    /// `link` as another name of `original`, in place of whatever is there.
    pub(super) fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        let (from, to) = (self.at(original)?, self.at(link)?);
        let _ = to.unlink();
        // SAFETY: open directories and NUL-terminated names, alive for the call; flags 0 follows no link.
        check(unsafe { libc::linkat(from.dir.as_raw_fd(), from.name.as_ptr(), to.dir.as_raw_fd(), to.name.as_ptr(), 0) })
    }

    /// Give `path` the snapshot's metadata: a link by its name in its
    /// directory; a directory or a file through a descriptor of its own, as
    /// restore sets a written file's; anything else (and a file this user
    /// may not read) through an `O_PATH` descriptor, so no device is opened,
    /// which `/proc/self/fd` names, or where there is no `/proc` (a chroot,
    /// a rescue system) by its name in its directory. Each checked to be of
    /// the node's kind.
    pub(super) fn apply(&self, path: &Path, node: &Node, owner: bool) -> io::Result<()> {
        if path == self.target {
            let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(&self.target)?;
            return fsmeta::apply_to_file(&dir, node, owner);
        }
        let at = self.at(path)?;
        if node.kind == NodeKind::Symlink {
            return at.apply_to_link(node, owner);
        }
        if matches!(node.kind, NodeKind::Dir | NodeKind::File) {
            let dir = if node.kind == NodeKind::Dir { libc::O_DIRECTORY } else { 0 };
            match at.open(libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | dir) {
                Ok(f) => return of_kind(&f, node).and_then(|()| fsmeta::apply_to_file(&f, node, owner)),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Err(replaced()),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        let held = at.open(libc::O_PATH | libc::O_NOFOLLOW)?;
        of_kind(&held, node)?;
        if owner {
            // SAFETY: an open descriptor and an empty NUL-terminated name, alive for the call.
            check(unsafe { libc::fchownat(held.as_raw_fd(), c"".as_ptr(), node.uid, node.gid, libc::AT_EMPTY_PATH) })?;
        }
        match fsmeta::apply_by_path(Path::new(&format!("/proc/self/fd/{}", held.as_raw_fd())), node) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists() => at.apply_by_name(node),
            applied => applied,
        }
    }

    /// The directory holding `path`, reached from the target through no
    /// link, and the last name of `path`.
    fn at(&self, path: &Path) -> io::Result<At> {
        let rel = path.strip_prefix(&self.target).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not below the target"))?;
        let name = rel.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = if parent.as_os_str().is_empty() { self.root.try_clone()? } else { self.lookup(parent)? };
        Ok(At { dir, name: c_name(name)? })
    }

    /// The directory `rel` below the target, through no link.
    fn lookup(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.lookup_by(rel, !NO_OPENAT2.load(Relaxed))
    }

    fn lookup_by(&self, rel: &Path, openat2: bool) -> io::Result<OwnedFd> {
        if openat2 {
            match openat2_beneath(&self.root, rel) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => NO_OPENAT2.store(true, Relaxed),
                found => return found.map_err(linked),
            }
        }
        let mut dir = self.root.try_clone()?;
        for c in rel.components() {
            let Component::Normal(name) = c else { return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain name")) };
            let name = c_name(name)?;
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: an open directory and a NUL-terminated name, alive for the call.
            let next = owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) });
            // With O_PATH a link is not ELOOP but "not a directory".
            dir = match next {
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && (At { dir, name }).kind().ok() == Some(libc::S_IFLNK) => {
                    return Err(linked(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                next => next?,
            };
        }
        Ok(dir)
    }
}

impl At {
    fn mkdir(&self) -> io::Result<()> {
        // SAFETY: an open directory and a NUL-terminated name, alive for the call.
        check(unsafe { libc::mkdirat(self.dir.as_raw_fd(), self.name.as_ptr(), 0o777) })
    }

    fn unlink(&self) -> io::Result<()> {
        // SAFETY: an open directory and a NUL-terminated name, alive for the call.
        check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) })
    }

    fn open(&self, flags: libc::c_int) -> io::Result<File> {
        // SAFETY: an open directory and a NUL-terminated name, alive for the call.
        owned(unsafe { libc::openat(self.dir.as_raw_fd(), self.name.as_ptr(), flags | libc::O_CLOEXEC, 0o600) }).map(File::from)
    }

    /// The entry's own status, a link's not its target's.
    fn stat(&self) -> io::Result<libc::stat> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: an open directory, a NUL-terminated name and room for one stat, alive for the call.
        check(unsafe { libc::fstatat(self.dir.as_raw_fd(), self.name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
        // SAFETY: fstatat filled `st` in, as it returned 0.
        Ok(unsafe { st.assume_init() })
    }

    fn kind(&self) -> io::Result<libc::mode_t> {
        Ok(self.stat()?.st_mode & libc::S_IFMT)
    }

    /// Mode and times by the entry's name, where no `/proc` names its
    /// descriptor: its kind was checked through one just before.
    fn apply_by_name(&self, node: &Node) -> io::Result<()> {
        let (dir, name) = (self.dir.as_raw_fd(), self.name.as_ptr());
        // SAFETY: an open directory and a NUL-terminated name, alive for the call.
        check(unsafe { libc::fchmodat(dir, name, node.mode & 0o7777, 0) })?;
        // SAFETY: an open directory, a NUL-terminated name and two timespecs, alive for the call.
        check(unsafe { libc::utimensat(dir, name, fsmeta::times(node).as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// A link's owner and times (its mode means nothing on Linux).
    fn apply_to_link(&self, node: &Node, owner: bool) -> io::Result<()> {
        let (dir, name) = (self.dir.as_raw_fd(), self.name.as_ptr());
        if owner {
            // SAFETY: an open directory and a NUL-terminated name, alive for the call.
            check(unsafe { libc::fchownat(dir, name, node.uid, node.gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        }
        // SAFETY: an open directory, a NUL-terminated name and two timespecs, alive for the call.
        check(unsafe { libc::utimensat(dir, name, fsmeta::times(node).as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }
}

/// The directory `rel` below `root` by `openat2`, which fails with ELOOP at
/// any link on the way and never leaves `root`.
fn openat2_beneath(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let path = c_name(rel.as_os_str())?;
    // SAFETY: `open_how` is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: an open directory, a NUL-terminated path and an `open_how` of the size passed, alive for the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), path.as_ptr(), &how as *const libc::open_how, size_of::<libc::open_how>())
    };
    owned(fd as libc::c_int)
}

/// A link where a directory was looked for: said as such, not as ELOOP's
/// "Too many levels of symbolic links".
fn linked(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::other("a directory above it is a symbolic link, and nothing is restored through one"),
        _ => e,
    }
}

fn replaced() -> io::Error {
    io::Error::other("replaced while the restore ran: its metadata is not set")
}

/// Whether the open `file` is of the node's kind.
fn of_kind(file: &File, node: &Node) -> io::Result<()> {
    match file.metadata()?.mode() & libc::S_IFMT == mode_kind(node.kind) {
        true => Ok(()),
        false => Err(replaced()),
    }
}

fn mode_kind(kind: NodeKind) -> libc::mode_t {
    match kind {
        NodeKind::Dir => libc::S_IFDIR,
        NodeKind::Symlink => libc::S_IFLNK,
        NodeKind::Dev => libc::S_IFBLK,
        NodeKind::Chardev => libc::S_IFCHR,
        NodeKind::Fifo => libc::S_IFIFO,
        NodeKind::Socket => libc::S_IFSOCK,
        NodeKind::File => libc::S_IFREG,
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call just returned `fd`, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The file there is replaced, not written through: its other link
    /// keeps the old content, its read-only mode asks for no write
    /// permission.
    #[test]
    fn a_file_is_created_anew_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (path, other) = (dir.path().join("f"), dir.path().join("link"));
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::hard_link(&path, &other).unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        std::io::Write::write_all(&mut beneath.create_file(&path).unwrap(), b"new").unwrap();
        assert_eq!((std::fs::read(&path).unwrap(), std::fs::read(&other).unwrap()), (b"new".to_vec(), b"old".to_vec()));
    }

    /// A directory of the target swapped for a link to outside it after
    /// the restore made it (a user owning the directory above can): no
    /// file, directory, link or metadata goes through it, by either way of
    /// looking the directory up.
    #[test]
    fn nothing_goes_through_a_directory_swapped_for_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (target, outside) = (dir.path().join("target"), dir.path().join("outside"));
        std::fs::create_dir_all(target.join("home/docs")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        let beneath = Beneath::open(&target).unwrap();
        std::fs::rename(target.join("home/docs"), target.join("home/docs.old")).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("home/docs")).unwrap();
        let file = target.join("home/docs/f");
        let dir_node = Node { kind: NodeKind::Dir, mode: 0o777, ..Node::default() };
        let said = "a directory above it is a symbolic link, and nothing is restored through one";
        for openat2 in [true, false] {
            assert_eq!(beneath.lookup_by(Path::new("home/docs"), openat2).unwrap_err().to_string(), said);
        }
        assert_eq!(beneath.create_file(&file).unwrap_err().to_string(), said);
        assert_eq!(beneath.make_dir(&target.join("home/docs/sub")).unwrap_err().to_string(), said);
        assert_eq!(beneath.symlink(OsStr::new("/etc"), &target.join("home/docs/l")).unwrap_err().to_string(), said);
        assert_eq!(beneath.apply(&target.join("home/docs/sub"), &dir_node, false).unwrap_err().to_string(), said);
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was made outside the target");
        // The link itself, given a directory's metadata, is not followed either.
        assert_eq!(
            beneath.apply(&target.join("home/docs"), &dir_node, false).unwrap_err().to_string(),
            "replaced while the restore ran: its metadata is not set"
        );
        assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777, 0o755);
        // A link where a directory is made is replaced by the directory.
        beneath.make_dir(&target.join("home/docs")).unwrap();
        assert!(std::fs::symlink_metadata(target.join("home/docs")).unwrap().is_dir());
    }

    /// Metadata through a descriptor reaches the entry itself, a fifo as well as a directory.
    #[test]
    fn metadata_is_set_through_a_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        let (fifo, sub) = (dir.path().join("fifo"), dir.path().join("sub"));
        let node = |kind, mode| Node { kind, mode, mtime: 1_000_000_000_123, ..Node::default() };
        beneath.make_special(&fifo, &node(NodeKind::Fifo, 0o600)).unwrap();
        beneath.make_dir(&sub).unwrap();
        beneath.apply(&fifo, &node(NodeKind::Fifo, 0o640), false).unwrap();
        beneath.apply(&sub, &node(NodeKind::Dir, 0o705), false).unwrap();
        for (path, mode) in [(&fifo, 0o640), (&sub, 0o705)] {
            let md = std::fs::symlink_metadata(path).unwrap();
            assert_eq!((md.permissions().mode() & 0o7777, md.mtime(), md.mtime_nsec()), (mode, 1000, 123));
        }
        // Where no /proc names a descriptor: by the name in its directory.
        beneath.at(&fifo).unwrap().apply_by_name(&Node { mtime: 2_000_000_000_456, ..node(NodeKind::Fifo, 0o604) }).unwrap();
        let md = std::fs::symlink_metadata(&fifo).unwrap();
        assert_eq!((md.permissions().mode() & 0o7777, md.mtime(), md.mtime_nsec()), (0o604, 2000, 456));
    }

    /// Restore sets a file's metadata through the file it has open when it
    /// can, by path otherwise: both must leave the same mode (setuid kept
    /// past the owner change), extended attributes and times to the
    /// nanosecond.
    #[test]
    fn metadata_set_through_an_open_file_is_that_set_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = fsmeta::process_ids();
        let node = Node {
            kind: NodeKind::File,
            mode: 0o4751,
            uid,
            gid,
            mtime: 1_600_000_000_123_456_789,
            atime: 1_500_000_000_000_000_001,
            xattrs: vec![crate::tree::Xattr {
                name: "user.tresor".into(),
                value: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"kept"),
            }],
            ..Node::default()
        };
        for (name, through_file) in [("by-path", false), ("by-file", true)] {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).unwrap();
            if through_file {
                fsmeta::apply_to_file(&file, &node, fsmeta::is_root()).unwrap();
            } else {
                Beneath::open(dir.path()).unwrap().apply(&path, &node, fsmeta::is_root()).unwrap();
            }
            drop(file);
            let md = std::fs::symlink_metadata(&path).unwrap();
            let got = (
                md.mode() & 0o7777,
                (md.uid(), md.gid()),
                md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                md.atime() * 1_000_000_000 + md.atime_nsec(),
            );
            assert_eq!(got, (0o4751, (uid, gid), node.mtime, node.atime), "{name}");
            assert_eq!(xattr::get(&path, "user.tresor").unwrap().as_deref(), Some(&b"kept"[..]), "{name}");
        }
    }
}
