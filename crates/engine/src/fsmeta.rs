//! File metadata: reading it into nodes at backup, applying it at restore.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::tree::{Node, NodeKind, Xattr};

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Maps uids and gids to names, asking the system once per id.
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl NameCache {
    fn user(&mut self, uid: u32) -> String {
        self.users.entry(uid).or_insert_with(|| user_name(uid).unwrap_or_default()).clone()
    }
    fn group(&mut self, gid: u32) -> String {
        self.groups.entry(gid).or_insert_with(|| group_name(gid).unwrap_or_default()).clone()
    }
}

pub fn kind_of(md: &Metadata) -> NodeKind {
    let t = md.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_block_device() {
        NodeKind::Dev
    } else if t.is_char_device() {
        NodeKind::Chardev
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

/// What the walk saw of a file: its size, mtime and ctime (nanoseconds).
pub type Seen = (u64, i64, i64);

/// What the walk saw of `n`.
pub fn seen(n: &Node) -> Seen {
    (n.size, n.mtime, n.ctime)
}

/// Why a file read whole may be torn: its size or times moved between the
/// walk's look and the end of the read, so a writer was at it meanwhile. A
/// file of a pseudo file system (`/proc`) keeps its size and times while
/// what it reads changes, and is not taken for changed.
pub fn changed_while_read(seen: Seen, after: &Metadata) -> Option<String> {
    let now = (after.len(), ns(after.mtime(), after.mtime_nsec()), ns(after.ctime(), after.ctime_nsec()));
    match now {
        _ if now == seen => None,
        (size, ..) if size != seen.0 => {
            Some(format!("changed while it was read ({} bytes, then {size}); the snapshot holds what was read", seen.0))
        }
        _ => Some("modified while it was read; the snapshot holds what was read".into()),
    }
}

/// The node for one directory entry, without content or subtree.
pub fn node_from(name: &OsStr, md: &Metadata, names: &mut NameCache) -> Node {
    let mut n = Node {
        kind: kind_of(md),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        user: names.user(md.uid()),
        group: names.group(md.gid()),
        mtime: ns(md.mtime(), md.mtime_nsec()),
        atime: ns(md.atime(), md.atime_nsec()),
        ctime: ns(md.ctime(), md.ctime_nsec()),
        inode: md.ino(),
        device: md.dev(),
        links: md.nlink(),
        ..Node::default()
    };
    n.set_name(name);
    match n.kind {
        // Listing a directory moves its atime, so recording it would make
        // every backup see every directory as changed.
        NodeKind::Dir => n.atime = 0,
        NodeKind::File => n.size = md.size(),
        NodeKind::Dev | NodeKind::Chardev => n.rdev = md.rdev(),
        _ => {}
    }
    n
}

/// Extended attributes where the filesystem has them; none otherwise.
pub fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<Xattr> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(Xattr { name: name.to_string_lossy().into_owned(), value: B64.encode(value) })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Permissions, extended attributes and times, in that order (every change
/// moves mtime, so times go last), following a link at `path`: restore
/// passes a `/proc/self/fd` path, which names the inode a descriptor holds.
/// The owner is set before, through that descriptor (a chown clears setuid bits).
pub fn apply_by_path(path: &Path, node: &Node) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))?;
    set_xattrs(node, |name, value| xattr::set_deref(path, name, value));
    let c = cpath(path)?;
    // SAFETY: valid path and a two-element timespec array, as utimensat requires.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times(node).as_ptr(), 0) })
}

/// What `apply_by_path` and a chown do, through a file restore has open: no path is looked
/// up again, which is most of the metadata's cost for small files.
pub fn apply_to_file(file: &std::fs::File, node: &Node, restore_owner: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use xattr::FileExt;
    if restore_owner {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(node.mode))?;
    set_xattrs(node, |name, value| file.set_xattr(name, value));
    // SAFETY: an open descriptor and a two-element timespec array, as futimens requires.
    check(unsafe { libc::futimens(file.as_raw_fd(), times(node).as_ptr()) })
}

fn set_xattrs(node: &Node, mut set: impl FnMut(&str, &[u8]) -> io::Result<()>) {
    for x in &node.xattrs {
        if let Ok(v) = B64.decode(&x.value) {
            // Some filesystems refuse some namespaces (e.g. security.*):
            // that must not fail the restore of the file itself.
            let _ = set(&x.name, &v);
        }
    }
}

/// A node's atime and mtime as the kernel takes them; a node without an
/// atime (directories) gets its mtime.
pub(crate) fn times(node: &Node) -> [libc::timespec; 2] {
    let ts = |t: i64| libc::timespec { tv_sec: t.div_euclid(1_000_000_000), tv_nsec: t.rem_euclid(1_000_000_000) };
    let atime = if node.atime == 0 { node.mtime } else { node.atime };
    [ts(atime), ts(node.mtime)]
}

pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Open the regular file at `path` for backup, without moving its atime
/// where the kernel allows it (owner or root), so reading a file does not
/// change its node. A link put there since the walk looked is not followed
/// (a user swapping their file for a link to one they cannot read, for the
/// backup to store it under their name), and a fifo or device is refused
/// (a fifo would block the read). A regular file put there by a rename (as
/// editors and config writers save) is read, and `node` takes its metadata,
/// so the snapshot never pairs one file's content with another's owner and
/// mode; whether that happened is returned.
pub fn open_for_backup(path: &Path, node: &mut Node) -> io::Result<(std::fs::File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags | libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path),
        other => other,
    };
    let replaced = || io::Error::other("replaced while the backup ran by what is no regular file; not saved");
    let file = file.map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { replaced() } else { e })?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(replaced());
    }
    if (md.dev(), md.ino()) == (node.device, node.inode) {
        return Ok((file, false));
    }
    // Not even the old file's extended attributes: a capability must not
    // pass to content it was never given to.
    let (name, name_raw) = (std::mem::take(&mut node.name), node.name_raw.take());
    *node = Node { name, name_raw, ..node_from(OsStr::new(""), &md, &mut NameCache::default()) };
    Ok((file, true))
}

/// Create `path`, or truncate it, readable and writable by this user alone,
/// also when it was there with a wider mode: for files that hold secrets.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The uid and gid this process runs as.
pub fn process_ids() -> (u32, u32) {
    // SAFETY: getuid and getgid have no preconditions.
    unsafe { (libc::getuid(), libc::getgid()) }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out = std::ptr::null_mut();
    // SAFETY: the buffers outlive the call; `out` is checked before use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into `buf` and is NUL-terminated.
    Some(unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned())
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: as in `user_name`.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `user_name`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: as in `user_name`.
    Some(unsafe { CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn username() -> String {
    // SAFETY: getuid has no preconditions.
    user_name(unsafe { libc::getuid() }).or_else(|| std::env::var("USER").ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written to after the walk looked is changed, by size or by
    /// its times alone; one left alone is not.
    #[test]
    fn a_file_written_to_after_the_walk_looked_changed_while_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "0123456789").unwrap();
        let look = || node_from(OsStr::new("f"), &std::fs::symlink_metadata(&path).unwrap(), &mut NameCache::default());
        let (walked, md) = (seen(&look()), || std::fs::metadata(&path).unwrap());
        assert_eq!(changed_while_read(walked, &md()), None);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"more").unwrap();
        let said = changed_while_read(walked, &md());
        assert_eq!(said.as_deref(), Some("changed while it was read (10 bytes, then 14); the snapshot holds what was read"));
        let walked = seen(&look());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "abcdefghijklmn").unwrap();
        assert_eq!(changed_while_read(walked, &md()).as_deref(), Some("modified while it was read; the snapshot holds what was read"));
    }

    /// A link or a fifo put where the walk found a file is not read; a
    /// file renamed into its place is, with its own metadata.
    #[test]
    fn a_file_replaced_after_the_walk_looked_is_read_only_if_it_is_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, secret) = (dir.path().join("notes"), dir.path().join("secret"));
        std::fs::write(&path, "mine").unwrap();
        std::fs::write(&secret, "not mine").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let look = || node_from(OsStr::new("notes"), &std::fs::symlink_metadata(&path).unwrap(), &mut NameCache::default());
        let walked = look();
        let (file, replaced) = open_for_backup(&path, &mut walked.clone()).unwrap();
        assert_eq!((std::io::read_to_string(file).unwrap(), replaced), ("mine".to_string(), false));
        let said = "replaced while the backup ran by what is no regular file; not saved";
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert_eq!(open_for_backup(&path, &mut walked.clone()).unwrap_err().to_string(), said);
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path, alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(open_for_backup(&path, &mut walked.clone()).unwrap_err().to_string(), said);
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&secret, &path).unwrap();
        let mut node = walked.clone();
        let (file, replaced) = open_for_backup(&path, &mut node).unwrap();
        assert_eq!((std::io::read_to_string(file).unwrap(), replaced), ("not mine".to_string(), true));
        let md = std::fs::metadata(&secret).unwrap();
        assert_eq!((node.name.as_str(), node.mode, node.inode, node.size), ("notes", 0o600, md.ino(), 8));
    }
}
