//! What a restore does with what is already in its target: restic 0.17's
//! `--overwrite` modes for files that exist, and `--delete` for files the
//! snapshot does not have.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::dirfd::{Dir, Entry, not_found};
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
        // Another name of a file found equal may be outside the target:
        // giving it the snapshot's owner and mode would give them there too,
        // so such a file is written anew instead.
        if self.mode.keeps(&md, node) {
            Decision::Keep
        } else if self.mode == Overwrite::IfChanged && md.len() == node.size && md.nlink() == 1 && self.same_content(dest, node) {
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
    /// `dir`, once reached without a link (`reached`).
    opened: Option<Arc<Dir>>,
}

impl Walked {
    pub(super) fn new(dir: &Path) -> Walked {
        Walked { dir: dir.to_path_buf(), taken: HashSet::new(), entered: HashSet::new(), opened: None }
    }
}

/// The innermost directory the walk is inside (the last of `walked`,
/// outermost first, the target first), opened from the target (which may
/// itself be a link) one directory at a time, each relative to the one
/// above and never through a link; `None` where a link, or no directory,
/// is met. The walk passes through directories it does not restore,
/// looking for included paths, and leaves a link there as it is; what
/// lies beyond one is not the target's, so nothing there is read or
/// deleted. A directory opened stays open till the walk leaves it, as a
/// restore replaces a link with a directory and never the reverse; a link
/// is looked at again, as the walk may have replaced it since.
fn reached(walked: &mut [Walked]) -> Option<Arc<Dir>> {
    for i in 0..walked.len() {
        if walked[i].opened.is_none() {
            let dir = match i.checked_sub(1) {
                None => Dir::open(&walked[i].dir),
                Some(up) => walked[up].opened.as_ref()?.open_dir(walked[i].dir.file_name()?),
            };
            walked[i].opened = Some(Arc::new(dir.ok()?));
        }
    }
    walked.last()?.opened.clone()
}

/// Remove what lies in the directory the walk is leaving (the last of
/// `walked`) but did not take there, within what the filters select
/// (`deletable`): a path an include does not reach was not restored, so
/// it is not removed either, and nothing at or below a path an exclude
/// names is touched. A directory the walk went into is done when the walk
/// leaves it; one it took, or that no include reaches, is looked into, as
/// nothing below it was restored; an excluded one is not. All goes through
/// directory fds (`reached`, `Dir`): links are removed as links, never
/// followed. The number of entries removed, and what could not be removed.
pub(super) fn delete_extra(target: &Path, walked: &mut [Walked], includes: &PathFilter, excludes: &PathFilter) -> (u64, Vec<String>) {
    let (mut removed, mut errors) = (0u64, Vec::new());
    let Some(dir) = reached(walked) else { return (removed, errors) };
    let walked = walked.last().expect("reached");
    // What to look into: a directory open and the name there of one in it
    // (none: itself). Depth first, so only those above the deepest are open.
    let mut stack: Vec<(Arc<Dir>, Option<OsString>, PathBuf)> = vec![(dir, None, walked.dir.clone())];
    while let Some((holder, name, path)) = stack.pop() {
        let walked_here = name.is_none();
        let dir = match name {
            None => Ok(holder),
            Some(name) => holder.open_dir(&name).map(Arc::new),
        };
        let Some((dir, entries)) = listed(dir, &path, &mut errors) else { continue };
        for entry in entries {
            if walked_here && walked.entered.contains(&entry.name) {
                continue;
            }
            let path = path.join(&entry.name);
            let in_snapshot = Path::new("/").join(path.strip_prefix(target).unwrap_or(&path));
            if (walked_here && walked.taken.contains(&entry.name)) || !super::deletable(&in_snapshot, includes, excludes) {
                // What is looked into is never below an exclude: this entry alone may be.
                if entry.is_dir && !excludes.matches(&in_snapshot) {
                    stack.push((dir.clone(), Some(entry.name), path));
                }
                continue;
            }
            removed += remove(&dir, &entry, &path, &in_snapshot, excludes, &mut errors).0;
        }
    }
    (removed, errors)
}

/// What a directory to look into (`path`) holds: none when it went
/// meanwhile, and none with the reason among `errors` when it cannot be
/// read, for what the snapshot lacks there then stays.
fn listed(dir: io::Result<Arc<Dir>>, path: &Path, errors: &mut Vec<String>) -> Option<(Arc<Dir>, Vec<Entry>)> {
    match dir.and_then(|d| Ok((d.entries()?, d))) {
        Ok((entries, d)) => Some((d, entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            errors.push(format!("{}: cannot look into it to delete what the snapshot lacks: {e}", path.display()));
            None
        }
    }
}

/// Remove `entry` of `holder` (`path`, `in_snapshot` in the snapshot),
/// which `delete` may remove, and all below it but what an exclude names
/// there, which keeps the directories above it; a link goes as a link,
/// never followed, and what went meanwhile is gone. The entries removed,
/// a directory removed whole counting as one, and whether `entry` is gone.
fn remove(holder: &Dir, entry: &Entry, path: &Path, in_snapshot: &Path, excludes: &PathFilter, errors: &mut Vec<String>) -> (u64, bool) {
    let mut removed = 0;
    if entry.is_dir {
        let mut whole = true;
        if let Ok(dir) = holder.open_dir(&entry.name) {
            for below in dir.entries().unwrap_or_default() {
                let in_snapshot = in_snapshot.join(&below.name);
                if excludes.matches(&in_snapshot) {
                    whole = false;
                    continue;
                }
                let (n, gone) = remove(&dir, &below, &path.join(&below.name), &in_snapshot, excludes, errors);
                (removed, whole) = (removed + n, whole && gone);
            }
        }
        if !whole {
            return (removed, false);
        }
    }
    let gone = if entry.is_dir { holder.rmdir(&entry.name) } else { holder.unlink(&entry.name) };
    match gone.or_else(not_found) {
        Ok(()) => (1, true),
        Err(e) => {
            errors.push(format!("{}: cannot delete: {e}", path.display()));
            (removed, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn filter(patterns: &[&str]) -> PathFilter {
        PathFilter::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// The walk leaves the innermost of `walked`, as `Restorer::leave` does it.
    fn leave(target: &Path, walked: &mut Vec<Walked>, excludes: &[&str]) -> (u64, Vec<String>) {
        let done = delete_extra(target, walked, &filter(&[]), &filter(excludes));
        walked.pop();
        done
    }

    /// Every path below `root`, relative to it, sorted; a link is listed, never followed.
    fn inventory(root: &Path) -> Vec<String> {
        let (mut out, mut todo) = (Vec::new(), vec![root.to_path_buf()]);
        while let Some(dir) = todo.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    todo.push(path.clone());
                }
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    /// Files at `paths` below `root`, with the directories above them.
    fn files(root: &Path, paths: &[&str]) {
        for p in paths {
            fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            fs::write(root.join(p), p).unwrap();
        }
    }

    /// A directory the walk is inside, swapped for a link to outside the
    /// target before the walk leaves it: nothing beyond the link is listed
    /// or removed, neither when leaving a directory below it nor it.
    #[test]
    fn a_walked_directory_swapped_for_a_link_is_not_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let (target, outside) = (tmp.path().join("t"), tmp.path().join("outside"));
        fs::create_dir_all(target.join("a/b")).unwrap();
        files(&outside, &["b/x", "y"]);
        let mut walked: Vec<Walked> = ["", "a", "a/b"].iter().map(|d| Walked::new(&target.join(d))).collect();
        walked[0].entered.insert("a".into());
        walked[1].entered.insert("b".into());
        fs::remove_dir_all(target.join("a")).unwrap();
        symlink(&outside, target.join("a")).unwrap();
        for left in ["a/b", "a", ""] {
            assert_eq!(leave(&target, &mut walked, &[]), (0, vec![]), "leaving {left:?}");
        }
        assert_eq!(inventory(&outside), ["b", "b/x", "y"]);
        assert_eq!(inventory(&target), ["a"]);
    }

    /// A directory the snapshot lacks goes whole, counted as one, with a
    /// link in it to a directory outside the target removed as a link:
    /// what it points at stays, with or without excludes.
    #[test]
    fn a_link_in_a_directory_removed_whole_goes_as_a_link() {
        for excludes in [&[][..], &["*.keep"][..]] {
            let tmp = tempfile::tempdir().unwrap();
            let (target, outside) = (tmp.path().join("t"), tmp.path().join("outside"));
            files(&target, &["gone/f"]);
            files(&outside, &["v"]);
            symlink(&outside, target.join("gone/link")).unwrap();
            assert_eq!(leave(&target, &mut vec![Walked::new(&target)], excludes), (1, vec![]), "{excludes:?}");
            assert_eq!(inventory(&target), Vec::<String>::new(), "{excludes:?}");
            assert_eq!(fs::read(outside.join("v")).unwrap(), b"v", "{excludes:?}");
        }
    }

    /// Below a directory the snapshot lacks, what an exclude names (a file
    /// by name, a directory by path) stays with the directories above it;
    /// the rest goes, a directory emptied of it whole counted as one.
    #[test]
    fn what_an_exclude_names_below_a_removed_directory_stays_with_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        files(&target, &["old/b.conf", "old/deep/x.conf", "old/kept/z", "old/sub/a.conf", "old/sub/keep.log"]);
        assert_eq!(leave(&target, &mut vec![Walked::new(&target)], &["*.log", "/old/kept"]), (3, vec![]));
        assert_eq!(inventory(&target), ["old", "old/kept", "old/kept/z", "old/sub", "old/sub/keep.log"]);
    }

    /// A directory that cannot be looked into is reported, never passed
    /// over in silence: what the snapshot lacks there stays. One that went
    /// meanwhile is none.
    #[test]
    fn a_directory_that_cannot_be_looked_into_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d");
        let mut errors = Vec::new();
        assert!(listed(Err(io::Error::from(io::ErrorKind::PermissionDenied)), &path, &mut errors).is_none());
        assert!(listed(Err(io::Error::from(io::ErrorKind::NotFound)), &path, &mut errors).is_none());
        let denied = format!("{}: cannot look into it to delete what the snapshot lacks: permission denied", path.display());
        assert_eq!(errors, [denied]);
        files(&path, &["f"]);
        let (_, entries) = listed(Dir::open(&path).map(Arc::new), &path, &mut errors).unwrap();
        assert_eq!((entries.len(), errors.len()), (1, 1));
    }

    /// What cannot be removed is reported with its full path: a directory
    /// the snapshot lacks whose entry cannot go (read-only, which root
    /// overrides) as itself without excludes, as that entry with them; and,
    /// for root too, an entry found a directory where it was listed as a
    /// file, or a file where it was listed as a directory, as if swapped
    /// in between.
    #[test]
    fn what_cannot_be_removed_is_reported_with_its_full_path() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let t = target.display();
        if !crate::fsmeta::is_root() {
            let denied = "cannot delete: Permission denied (os error 13)";
            for (excludes, at) in [(&[][..], "gone"), (&["*.keep"][..], "gone/f")] {
                files(&target, &["gone/f"]);
                fs::set_permissions(target.join("gone"), fs::Permissions::from_mode(0o555)).unwrap();
                let done = leave(&target, &mut vec![Walked::new(&target)], excludes);
                fs::set_permissions(target.join("gone"), fs::Permissions::from_mode(0o755)).unwrap();
                assert_eq!(done, (0, vec![format!("{t}/{at}: {denied}")]), "{excludes:?}");
                assert_eq!(inventory(&target), ["gone", "gone/f"], "{excludes:?}");
                fs::remove_dir_all(target.join("gone")).unwrap();
            }
        }
        files(&target, &["d/f", "f"]);
        let holder = Dir::open(&target).unwrap();
        let swapped = |name: &str, is_dir, excludes: &[&str]| {
            let mut errors = Vec::new();
            let entry = Entry { name: name.into(), is_dir };
            let path = target.join(name);
            let done = remove(&holder, &entry, &path, &Path::new("/").join(name), &filter(excludes), &mut errors);
            (done, errors)
        };
        for excludes in [&[][..], &["*.keep"][..]] {
            let is_a_dir = format!("{t}/d: cannot delete: Is a directory (os error 21)");
            assert_eq!(swapped("d", false, excludes), ((0, false), vec![is_a_dir]), "{excludes:?}");
        }
        let not_a_dir = format!("{t}/f: cannot delete: Not a directory (os error 20)");
        assert_eq!(swapped("f", true, &["*.keep"]), ((0, false), vec![not_a_dir]));
        assert_eq!(inventory(&target), ["d", "d/f", "f"]);
    }
}
