//! Verify a restore against its snapshot: every entry is where the
//! snapshot puts it, of its kind (a link pointing where the snapshot's
//! does), with its permission bits (and, run as root, its owner); every
//! restored file is read back
//! from disk, cut where the snapshot's blobs end (their plaintext lengths,
//! from the index) and each piece's keyed id compared with the snapshot's
//! content list. What reached the disk is checked, not what the restore
//! meant to write. Cutting by the blobs rather than with this repository's
//! chunker verifies a snapshot `copy` brought from a repository of another
//! chunker key as well: it keeps the source's cuts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::Crypto;
use crate::walk::Walker;
use crate::{Id, Node, NodeKind, Repository, Result};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct VerifyReport {
    /// Entries checked: files, directories, links and special files.
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Restored entries that differ from the snapshot, and how.
    pub mismatched: Vec<String>,
    /// Restored directories whose tree in the snapshot is damaged: what
    /// they hold was not verified.
    pub unread: Vec<String>,
}

/// A restored file's path, its blobs with their plain lengths, its size.
type Expected = (PathBuf, Vec<(Id, usize)>, u64);

/// Files handed to a reading thread at a time: the walk goes on while they
/// are read, and holds no more than two such batches, whatever the size of
/// the snapshot.
const BATCH: usize = 512;

/// Check every regular file of the snapshot tree `tree` (the root, or the
/// folder a `SNAPSHOT:PATH` restore took) under `target`, laid out as
/// `restore` writes it.
pub async fn verify_restored(repo: &Repository, tree: crate::Id, target: &Path) -> Result<VerifyReport> {
    let index = repo.index().await?;
    let crypto = repo.crypto().clone();
    let mut report = VerifyReport::default();
    let mut reading: Option<Reading> = None;
    let mut batch = Vec::new();
    let mut walker = Walker::new(repo);
    let modes = keeps_modes(target);
    let attrs = Attrs { owner: crate::fsmeta::is_root() && modes, modes };
    walker.enter(tree, Path::new("/")).await?;
    while let Some((path, n)) = walker.next_node()? {
        let restored = target.join(path.strip_prefix("/").unwrap_or(&path));
        report.entries += 1;
        if let Some(sub) = n.subtree
            && let Some(lost) = walker.descend(sub, &path).await?
        {
            report.unread.push(format!("{}: its contents were not verified: {}", restored.display(), lost.error));
        }
        if let Err(why) = check_entry(&restored, &n, attrs) {
            report.mismatched.push(format!("{}: {why}", restored.display()));
        } else if n.kind == NodeKind::File {
            let blobs = n.content.iter().map(|id| (*id, index.get(id).map_or(0, |(_, e)| e.raw_length as usize))).collect();
            batch.push((restored, blobs, n.size));
        }
        if batch.len() == BATCH {
            report.add(joined(reading.replace(check_batch(std::mem::take(&mut batch), &crypto))).await?);
        }
    }
    report.add(joined(reading.replace(check_batch(batch, &crypto))).await?);
    report.add(joined(reading).await?);
    Ok(report)
}

type Reading = tokio::task::JoinHandle<VerifyReport>;

fn check_batch(files: Vec<Expected>, crypto: &Arc<Crypto>) -> Reading {
    let crypto = crypto.clone();
    tokio::task::spawn_blocking(move || check_files(files, &crypto))
}

/// What the batch read before found; nothing when there was none.
async fn joined(reading: Option<Reading>) -> Result<VerifyReport> {
    match reading {
        Some(r) => r.await.map_err(|e| crate::Error::Invalid(format!("verify thread failed: {e}"))),
        None => Ok(VerifyReport::default()),
    }
}

impl VerifyReport {
    fn add(&mut self, other: VerifyReport) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.mismatched.extend(other.mismatched);
    }
}

fn check_files(files: Vec<Expected>, crypto: &Crypto) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut buf = Vec::new();
    for (path, want, size) in files {
        report.files += 1;
        match check_file(&path, &want, size, crypto, &mut buf) {
            Ok(()) => report.bytes += size,
            Err(why) => report.mismatched.push(format!("{}: {why}", path.display())),
        }
    }
    report
}

/// One restored entry against its node: there, of its kind, a link to the
/// same target, the same permission bits and (`owner`) owner. What a link
/// and a special file hold beyond that is not theirs to compare.
/// Which of an entry's attributes the target can be held to.
#[derive(Clone, Copy)]
struct Attrs {
    /// Run as root, on a file system that keeps owners: the restore set
    /// every owner.
    owner: bool,
    /// The file system keeps permission bits (FAT, exFAT and SMB mounts
    /// show the mount's, and its owner, whatever a restore sets).
    modes: bool,
}

/// Whether the file system `target` is on keeps permission bits.
fn keeps_modes(target: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const NONE: [i64; 5] = [0x4d44, 0x2011_bab0, 0xff53_4d42, 0xfe53_4d42, 0x517b];
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_bytes()) else { return true };
    // SAFETY: statfs writes only into the zeroed struct given, and the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return true;
    }
    !NONE.contains(&(st.f_type as i64))
}

fn check_entry(path: &Path, n: &Node, attrs: Attrs) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let kind = crate::fsmeta::kind_of(&md);
    if kind != n.kind {
        return Err(format!("{} on disk, the snapshot has {}", kind_name(kind), kind_name(n.kind)));
    }
    if kind == NodeKind::Symlink {
        let (is, want) = (std::fs::read_link(path).map_err(|e| e.to_string())?, n.os_link_target().unwrap_or_default());
        return match is.as_os_str() == want {
            true => Ok(()),
            false => Err(format!("a link to {}, the snapshot's points to {}", is.display(), Path::new(&want).display())),
        };
    }
    if attrs.modes && md.mode() & 0o777 != n.mode & 0o777 {
        return Err(format!("mode {:04o}, the snapshot has {:04o}", md.mode() & 0o7777, n.mode & 0o7777));
    }
    if attrs.owner && (md.uid(), md.gid()) != (n.uid, n.gid) {
        return Err(format!("owner {}:{}, the snapshot has {}:{}", md.uid(), md.gid(), n.uid, n.gid));
    }
    Ok(())
}

fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "a file",
        NodeKind::Dir => "a directory",
        NodeKind::Symlink => "a symbolic link",
        NodeKind::Dev => "a block device",
        NodeKind::Chardev => "a character device",
        NodeKind::Fifo => "a fifo",
        NodeKind::Socket => "a socket",
    }
}

/// One restored file against its blobs: its length, then each piece's id.
fn check_file(path: &Path, want: &[(Id, usize)], size: u64, crypto: &Crypto, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let n = f.metadata().map_err(|e| e.to_string())?.len();
    if n != size {
        return Err(format!("{n} bytes, the snapshot has {size}"));
    }
    let differs = || "content differs from the snapshot".to_string();
    if want.iter().map(|(_, len)| *len as u64).sum::<u64>() != size {
        return Err(differs());
    }
    for (id, len) in want {
        buf.resize(*len, 0);
        f.read_exact(buf).map_err(|e| e.to_string())?;
        if crypto.blob_id(buf) != *id {
            return Err(differs());
        }
    }
    Ok(())
}
