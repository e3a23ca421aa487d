//! Directories by file descriptor, for `delete`: each directory below the
//! target is opened relative to the one holding it and never through a
//! link, and its entries are listed and removed through it, so what goes
//! is what was reached, however the paths are changed meanwhile (a
//! directory swapped for a link to outside the target between a check and
//! a removal by path would have the removal reach outside). The restore's
//! only unsafe code for it is here.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

/// An open directory.
pub(super) struct Dir(OwnedFd);

/// One entry of a directory.
pub(super) struct Entry {
    pub(super) name: OsString,
    /// Its own type is directory: a link to one is not.
    pub(super) is_dir: bool,
}

impl Dir {
    /// The directory `path`, following a link there: the target may be one.
    pub(super) fn open(path: &Path) -> io::Result<Dir> {
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
        Ok(Dir(file.into()))
    }

    /// The directory `name` in this one, never through a link: a link
    /// there fails (ELOOP), as does anything else but a directory (ENOTDIR).
    pub(super) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let name = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: an open fd and a NUL-terminated name, both alive for the call.
        let fd = unsafe { libc::openat(self.0.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned `fd`, which nothing else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// What the directory holds, but `.` and `..`.
    pub(super) fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut stream = Stream::new(&self.0)?;
        let mut entries = Vec::new();
        while let Some((name, d_type)) = stream.next_name()? {
            // A file system that does not tell the type asks for an lstat.
            let is_dir = if d_type == libc::DT_UNKNOWN { self.is_dir(&name) } else { d_type == libc::DT_DIR };
            entries.push(Entry { name: OsString::from_vec(name.into_bytes()), is_dir });
        }
        Ok(entries)
    }

    /// Remove the entry `name`, which is not a directory (a link goes as a link).
    pub(super) fn unlink(&self, name: &OsStr) -> io::Result<()> {
        self.unlink_at(name, 0)
    }

    /// Remove the empty directory `name`.
    pub(super) fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        self.unlink_at(name, libc::AT_REMOVEDIR)
    }

    fn unlink_at(&self, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: an open fd and a NUL-terminated name, both alive for the call.
        if unsafe { libc::unlinkat(self.0.as_raw_fd(), name.as_ptr(), flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `name`'s own type (not a link's target's) is directory.
    fn is_dir(&self, name: &CStr) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: an open fd, a NUL-terminated name and room for one stat, all alive for the call.
        let rc = unsafe { libc::fstatat(self.0.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        // SAFETY: fstatat filled `st` in, as it returned 0.
        rc == 0 && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// A directory stream on a duplicate of a directory's fd, closed when dropped.
struct Stream(NonNull<libc::DIR>);

impl Stream {
    fn new(fd: &OwnedFd) -> io::Result<Stream> {
        let dup = fd.try_clone()?;
        // SAFETY: `dup` is an open directory fd; on success the stream owns it.
        let Some(dir) = NonNull::new(unsafe { libc::fdopendir(dup.as_raw_fd()) }) else { return Err(io::Error::last_os_error()) };
        let _owned_by_the_stream = dup.into_raw_fd();
        // The duplicate shares the fd's position: where a listing before ended, it would see nothing.
        // SAFETY: an open stream.
        unsafe { libc::rewinddir(dir.as_ptr()) };
        Ok(Stream(dir))
    }

    /// The next entry's name and `d_type`, but `.` and `..`; `None` at the end.
    fn next_name(&mut self) -> io::Result<Option<(CString, u8)>> {
        loop {
            // SAFETY: errno is the thread's own; zeroed, the end is told from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: an open stream, which only this thread reads.
            let Some(entry) = NonNull::new(unsafe { libc::readdir(self.0.as_ptr()) }) else {
                let e = io::Error::last_os_error();
                return if e.raw_os_error() == Some(0) { Ok(None) } else { Err(e) };
            };
            // SAFETY: readdir's entry stays valid till the next call on the stream, and `d_name` is NUL-terminated.
            let (name, d_type) = unsafe { (CStr::from_ptr(entry.as_ref().d_name.as_ptr()), entry.as_ref().d_type) };
            if !matches!(name.to_bytes(), b"." | b"..") {
                return Ok(Some((name.to_owned(), d_type)));
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream is open, and closed only here.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

pub(super) fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// What is gone already is no error for a removal.
pub(super) fn not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}
