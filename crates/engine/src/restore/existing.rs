//! What a restore does with what is already in its target: restic 0.17's
//! `--overwrite` modes for files that exist, and `--delete` for files the
//! snapshot does not have.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::chunker::Chunker;
use crate::tree::Node;
use crate::walk::PathFilter;
use crate::{Error, Repository};

/// When a file that exists in the target is replaced by the snapshot's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    #[default]
    Always,
    /// Only when its content differs (same size and mtime count as the same, as in restic).
    IfChanged,
    /// Only when the snapshot's mtime is newer.
    IfNewer,
    Never,
}

impl FromStr for Overwrite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Overwrite, Error> {
        match s {
            "always" => Ok(Overwrite::Always),
            "if-changed" => Ok(Overwrite::IfChanged),
            "if-newer" => Ok(Overwrite::IfNewer),
            "never" => Ok(Overwrite::Never),
            other => Err(Error::Invalid(format!("--overwrite takes always, if-changed, if-newer or never, not {other:?}"))),
        }
    }
}

impl Overwrite {
    /// Whether this mode leaves the regular file `md`, which the target
    /// holds where the snapshot has `node`, as it is, by size and mtime
    /// alone (`if-changed` may still find the content equal by reading it).
    /// `restore --preview` asks the same.
    pub fn keeps(self, md: &std::fs::Metadata, node: &Node) -> bool {
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        match self {
            Overwrite::Always => false,
            Overwrite::Never => true,
            Overwrite::IfNewer => node.mtime <= mtime,
            Overwrite::IfChanged => md.len() == node.size && mtime == node.mtime,
        }
    }
}

/// What to do with one file of the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Write,
    /// Leave the file as it is.
    Keep,
    /// Its content is the snapshot's: give it the snapshot's metadata only.
    KeepContent,
}

pub(super) struct Existing {
    pub(super) mode: Overwrite,
    chunker: Chunker,
    crypto: std::sync::Arc<crate::crypto::Crypto>,
}

impl Existing {
    pub(super) fn new(repo: &Repository, mode: Overwrite) -> Existing {
        Existing { mode, chunker: Chunker::new(repo.crypto().gear_seed(), repo.config().chunker), crypto: repo.crypto().clone() }
    }

    /// A file that is not there, or not a regular file, is always written.
    /// The content comparison reads the file through the repository's
    /// chunker: equal chunk ids mean equal content.
    pub(super) fn decide(&self, dest: &Path, node: &Node) -> Decision {
        // The default asks nothing of the target: no lstat per restored file.
        if self.mode == Overwrite::Always {
            return Decision::Write;
        }
        let Ok(md) = std::fs::symlink_metadata(dest) else { return Decision::Write };
        if !md.is_file() {
            return Decision::Write;
        }
        if self.mode.keeps(&md, node) {
            Decision::Keep
        } else if self.mode == Overwrite::IfChanged && md.len() == node.size && self.same_content(dest, node) {
            Decision::KeepContent
        } else {
            Decision::Write
        }
    }

    fn same_content(&self, path: &Path, node: &Node) -> bool {
        let Ok(file) = std::fs::File::open(path) else { return false };
        let (mut ids, mut buf) = (Vec::with_capacity(node.content.len()), Vec::new());
        let read = self.chunker.chunk_stream::<_, std::io::Error>(file, Some(node.size), &mut buf, |chunk| {
            ids.push(self.crypto.blob_id(chunk));
            Ok(())
        });
        matches!(read, Ok(n) if n == node.size) && ids == node.content
    }
}

/// A directory of the target the walk is inside, for `delete`: the names
/// it took there, and those of the directories it went into.
pub(super) struct Walked {
    pub(super) dir: PathBuf,
    pub(super) taken: HashSet<OsString>,
    pub(super) entered: HashSet<OsString>,
    /// Known to be a directory, not a link.
    real: bool,
}

impl Walked {
    pub(super) fn new(dir: &Path, real: bool) -> Walked {
        Walked { dir: dir.to_path_buf(), taken: HashSet::new(), entered: HashSet::new(), real }
    }
}

/// Whether the innermost directory the walk is inside (`walked`, outermost
/// first, the target first) may be listed for `delete`: it and each above
/// it below the target (which may itself be a link) is a directory, not a
/// link. The walk passes through directories it does not restore, looking
/// for included paths, and leaves a link there as it is; what lies beyond
/// one is not the target's, so nothing there is read or deleted. A
/// directory found is one for good, as a restore replaces a link with a
/// directory and never the reverse; a link is looked at again, as the walk
/// may have replaced it since.
pub(super) fn reached_without_links(walked: &mut [Walked]) -> bool {
    walked.iter_mut().skip(1).all(|w| {
        w.real = w.real || std::fs::symlink_metadata(&w.dir).is_ok_and(|m| m.is_dir());
        w.real
    })
}

/// Remove what lies in a directory the walk has left but did not take
/// there, within what the filters select (`deletable`): a path an include
/// does not reach was not restored, so it is not removed either, and
/// nothing at or below a path an exclude names is touched. A directory the
/// walk went into is done when the walk leaves it; one it took, or that no
/// include reaches, is looked into, as nothing below it was restored; an
/// excluded one is not. `walked.dir` must be reached through no link
/// (`reached_without_links`); below it, links are removed as links, never
/// followed. The number of entries removed, and what could not be removed.
pub(super) fn delete_extra(target: &Path, walked: &Walked, includes: &PathFilter, excludes: &PathFilter) -> (u64, Vec<String>) {
    let (mut removed, mut errors) = (0u64, Vec::new());
    let mut stack = vec![(walked.dir.clone(), true)];
    while let Some((dir, walked_here)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let (path, name) = (entry.path(), entry.file_name());
            if walked_here && walked.entered.contains(&name) {
                continue;
            }
            let in_snapshot = Path::new("/").join(path.strip_prefix(target).unwrap_or(&path));
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if (walked_here && walked.taken.contains(&name)) || !super::deletable(&in_snapshot, includes, excludes) {
                // What is looked into is never below an exclude: this entry alone may be.
                if is_dir && !excludes.matches(&in_snapshot) {
                    stack.push((path, false));
                }
                continue;
            }
            removed += remove(&path, is_dir, &in_snapshot, excludes, &mut errors).0;
        }
    }
    (removed, errors)
}

/// Remove `path` (`in_snapshot` in the snapshot), which `delete` may
/// remove, and all below it but what an exclude names there, which keeps
/// the directories above it. The entries removed, a directory removed
/// whole counting as one, and whether `path` is gone.
fn remove(path: &Path, is_dir: bool, in_snapshot: &Path, excludes: &PathFilter, errors: &mut Vec<String>) -> (u64, bool) {
    let mut removed = 0;
    // Without excludes, nothing below is kept: std removes it all, never following a link.
    if is_dir && !excludes.is_empty() {
        let mut whole = true;
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            let below = in_snapshot.join(entry.file_name());
            if excludes.matches(&below) {
                whole = false;
                continue;
            }
            let (n, gone) = remove(&entry.path(), entry.file_type().is_ok_and(|t| t.is_dir()), &below, excludes, errors);
            (removed, whole) = (removed + n, whole && gone);
        }
        if !whole {
            return (removed, false);
        }
    }
    let gone = match (is_dir, excludes.is_empty()) {
        (false, _) => std::fs::remove_file(path),
        (true, true) => std::fs::remove_dir_all(path),
        (true, false) => std::fs::remove_dir(path),
    };
    match gone {
        Ok(()) => (1, true),
        Err(e) => {
            errors.push(format!("{}: cannot delete: {e}", path.display()));
            (removed, false)
        }
    }
}
