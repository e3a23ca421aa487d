//! Restore: the backup pipeline backwards.
//!
//! The snapshot's trees are walked and every directory, link and file is
//! created; every few thousand files (a batch), the packs their content
//! needs are fetched, in parallel, in bounded ranges, and the blobs are
//! decrypted and written at their offsets in every file that uses them
//! (restore/write.rs). Metadata goes last, so writing a file's content
//! cannot disturb its times: a file's when its last blob is written, a
//! directory's once the walk has left it and its batch is written, deepest
//! first. A batch is written while the walk fills the next, and no more
//! are held, so memory does not grow with the number of files in the
//! snapshot (`delete` keeps the names taken in the directories the walk is
//! inside, no more).
//!
//! A file that exists in the target is replaced, kept or compared as the
//! `Overwrite` mode says; with `delete`, what the snapshot lacks goes from
//! each directory as the walk leaves it, never through a link.

mod beneath;
mod dirfd;
mod existing;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use serde::Serialize;

use crate::fsmeta;
use crate::index::Index;
use crate::pack::PackEntry;
use crate::tree::{Node, NodeKind};
use crate::walk::{PathFilter, Walker};
use crate::{Error, Id, IdMap, Repository, Result, Snapshot};
pub use existing::Overwrite;
use existing::{Decision, Existing, Walked};
use write::Writer;

#[derive(Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Restore this folder of the snapshot (restic's `SNAPSHOT:PATH`) as the target's content.
    pub subfolder: Option<String>,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    pub overwrite: Overwrite,
    /// Remove what the target holds and the snapshot does not, within what is restored.
    pub delete: bool,
    pub progress: Option<Arc<crate::backup::Progress>>,
}

/// Counts named as restic's restore summary names them; `dirs_restored`
/// and `errors` are tresor's own.
#[derive(Debug, Default, Serialize)]
pub struct RestoreSummary {
    /// Files the snapshot has within what was selected.
    pub total_files: u64,
    /// Files written completely.
    pub files_restored: u64,
    /// Files left as they were (`Overwrite`).
    pub files_skipped: u64,
    /// Entries removed from the target (`delete`).
    pub files_deleted: u64,
    pub dirs_restored: u64,
    pub bytes_restored: u64,
    pub bytes_skipped: u64,
    pub errors: Vec<String>,
    /// Entries the includes and excludes selected: none, with a filter
    /// given, is a restore of nothing the user asked for.
    #[serde(skip)]
    pub selected: u64,
}

struct FilePlan {
    path: PathBuf,
    node: Node,
    remaining: AtomicU32,
    /// Some of it could not be written: it does not count as restored.
    failed: AtomicBool,
    /// Single-chunk files are created by their only write, saving an open.
    create_on_write: bool,
}

/// Where one blob goes: file number and offset.
type Targets = Vec<(usize, u64)>;

/// Entries walked before their content is written: what one batch holds
/// (about 1 KiB each) is all restore keeps of the snapshot's files.
const BATCH_ENTRIES: usize = 4096;

/// Chunks a batch may need before it is written, for batches of large files.
const BATCH_CHUNKS: usize = 16384;

/// What the walk created and has not finished yet.
#[derive(Default)]
struct Batch {
    files: Vec<FilePlan>,
    chunks: usize,
    entries: usize,
    links: Vec<(PathBuf, Node)>,
    hardlinks: Vec<(PathBuf, PathBuf)>,
    /// Directories created, in walk order; those the walk is still inside
    /// stay for a later batch.
    dirs: Vec<(PathBuf, Node)>,
}

impl Batch {
    fn full(&self) -> bool {
        self.entries >= BATCH_ENTRIES || self.chunks >= BATCH_CHUNKS
    }
}

/// A directory of the snapshot, or one above an included path, that could
/// not be made. The walk meets all that lies below a path together, so it
/// still walks there, making nothing, to count what is not restored: a
/// full disk is not one error but every entry it kept out.
struct Blocked {
    at: PathBuf,
    error: std::io::Error,
    /// Entries the walk met below it that would have been restored.
    below: u64,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if self.below > 0 {
            let entries = if self.below == 1 { "entry" } else { "entries" };
            write!(f, "; {} {entries} below it not restored", self.below)?;
        }
        Ok(())
    }
}

/// Restore-wide state beside the batch.
struct Restorer<'a> {
    repo: &'a Arc<Repository>,
    includes: PathFilter,
    excludes: PathFilter,
    existing: Existing,
    writer: Arc<Writer>,
    batch: Batch,
    /// The deepest directory known to exist (below the target, it and each
    /// above it a directory, not a link): the last one made or found, or the
    /// last one entries were created in; at first the target.
    made: PathBuf,
    /// The directory the walk is inside and could not make (a file stands
    /// there, or the disk is full): what it meets below is neither tried
    /// nor reported entry by entry, but counted, and reported with it once
    /// the walk leaves it (`leave`).
    blocked: Option<Blocked>,
    /// The first path of every multiply-linked inode to hold the snapshot's
    /// content (written, or found equal): later paths written link to it.
    first_link: HashMap<(u64, u64), PathBuf>,
    /// For `delete` only: the directories the walk is inside, outermost first.
    walked: Option<Vec<Walked>>,
    /// What `delete` could not remove.
    delete_errors: Vec<String>,
    /// The batch before, being written while the walk goes on.
    writing: Option<tokio::task::JoinHandle<Result<[u64; 3]>>>,
    summary: RestoreSummary,
}

pub async fn restore(repo: Arc<Repository>, snap: &Snapshot, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let root = match &opts.subfolder {
        Some(folder) => crate::walk::folder(&repo, snap.tree, folder).await?,
        None => snap.tree,
    };
    std::fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let beneath = beneath::Beneath::open(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let mut r = Restorer {
        repo: &repo,
        includes: PathFilter::new(&opts.includes)?,
        excludes: PathFilter::new(&opts.excludes)?,
        existing: Existing::new(&repo, opts.overwrite),
        writer: Arc::new(Writer::new(fsmeta::is_root(), opts.progress.clone(), beneath)),
        batch: Batch::default(),
        made: opts.target.clone(),
        blocked: None,
        first_link: HashMap::new(),
        walked: opts.delete.then(|| vec![Walked::new(&opts.target)]),
        delete_errors: Vec::new(),
        writing: None,
        summary: RestoreSummary::default(),
    };
    let mut walker = Walker::new(&repo);
    walker.enter(root, Path::new("/")).await?;
    while let Some((path, node)) = walker.next_node()? {
        let dest = opts.target.join(path.strip_prefix("/").unwrap_or(&path));
        r.leave(&opts.target, dest.parent());
        if r.visit(&path, &dest, &node)?
            && let Some(sub) = node.subtree
        {
            // A damaged directory loses what is below it, not the rest of
            // the snapshot; `--delete` leaves what that directory holds.
            match walker.descend(sub, &path).await? {
                None => r.enter(&dest),
                Some(lost) => {
                    r.passed_over(&dest);
                    r.writer.error(&dest, format!("its contents were not restored: {}", lost.error));
                }
            }
        }
        if r.batch.full() {
            r.flush(Some(&dest)).await?;
        }
    }
    r.leave(&opts.target, None);
    r.flush(None).await?;
    r.wait().await?;
    let Restorer { writer, mut summary, delete_errors, .. } = r;
    let writer = Arc::into_inner(writer).expect("all writers finished");
    let more = writer.full_beyond_named();
    summary.bytes_restored = writer.bytes.into_inner();
    summary.errors = writer.errors.into_inner().expect("not poisoned");
    summary.errors.extend(more);
    summary.errors.extend(delete_errors);
    Ok(summary)
}

impl Restorer<'_> {
    /// Create what `path` names, if it is restored; whether to descend.
    fn visit(&mut self, path: &Path, dest: &Path, node: &Node) -> Result<bool> {
        let (take, descend) = wanted(path, node, &self.includes, &self.excludes);
        if !take {
            return Ok(descend);
        }
        self.summary.selected += 1;
        // `made`, and so each directory above it, exists: most entries need
        // no look at the target before they are created.
        if self.blocked.is_none()
            && let Some(parent) = dest.parent()
            && !self.made.starts_with(parent)
        {
            match self.make_parents(parent) {
                Ok(()) => self.made = parent.to_path_buf(),
                Err((at, error)) => self.blocked = Some(Blocked { at, error, below: 0 }),
            }
        }
        if self.skip_blocked(node) {
            return Ok(descend);
        }
        if let Some(here) = self.walked.as_mut().and_then(|w| w.last_mut())
            && let Some(name) = dest.file_name()
        {
            here.taken.insert(name.to_os_string());
        }
        self.batch.entries += 1;
        if let Err(error) = self.create(dest, node) {
            if node.kind == NodeKind::Dir {
                self.blocked = Some(Blocked { at: dest.to_path_buf(), error, below: 0 });
                return Ok(descend);
            }
            self.writer.error(dest, error);
            return Ok(false);
        }
        Ok(descend)
    }

    /// Whether the walk is below a directory it could not make (`leave`
    /// ends that): then `node` is not restored, only counted, a file in
    /// the summary's total too.
    fn skip_blocked(&mut self, node: &Node) -> bool {
        let Some(blocked) = &mut self.blocked else { return false };
        blocked.below += 1;
        self.summary.total_files += u64::from(node.kind == NodeKind::File);
        true
    }

    /// Make `dir` and the directories above it that the walk did not
    /// restore (an included path's), each as the walk makes a directory
    /// (`make_dir`), from the deepest one `made` shows exists: following a
    /// link there would restore outside the target. What stopped it, where.
    fn make_parents(&self, dir: &Path) -> std::result::Result<(), (PathBuf, std::io::Error)> {
        let known = self.made.components().zip(dir.components()).take_while(|(a, b)| a == b).count();
        let mut at = PathBuf::new();
        for (i, component) in dir.components().enumerate() {
            at.push(component);
            if i >= known {
                self.writer.beneath.make_dir(&at).map_err(|e| (at.clone(), e))?;
            }
        }
        Ok(())
    }

    /// For `delete`: the walk goes into the directory `dest`.
    fn enter(&mut self, dest: &Path) {
        let Some(walked) = &mut self.walked else { return };
        if let (Some(here), Some(name)) = (walked.last_mut(), dest.file_name()) {
            here.entered.insert(name.to_os_string());
        }
        walked.push(Walked::new(dest));
    }

    /// For `delete`: the walk cannot go into the directory `dest` (its tree
    /// is damaged), so what the target holds there is not known to be
    /// extra: it stays, as if the walk had been there.
    fn passed_over(&mut self, dest: &Path) {
        if let Some(here) = self.walked.as_mut().and_then(|w| w.last_mut())
            && let Some(name) = dest.file_name()
        {
            here.entered.insert(name.to_os_string());
        }
    }

    /// The walk is now in `dir` (`None`: done), so it has left every
    /// directory deeper than that: a directory it could not make is
    /// reported, with what it kept out. For `delete`, remove what those
    /// directories hold and the snapshot lacks, before their metadata is
    /// set, which their batch does once the walk has left them.
    fn leave(&mut self, target: &Path, dir: Option<&Path>) {
        if let Some(blocked) = self.blocked.take_if(|b| dir.is_none_or(|d| !d.starts_with(&b.at))) {
            self.writer.error(&blocked.at, &blocked);
        }
        let Some(walked) = &mut self.walked else { return };
        while walked.last().is_some_and(|w| dir.is_none_or(|d| d != w.dir)) {
            let (deleted, errors) = existing::delete_extra(target, walked, &self.includes, &self.excludes);
            walked.pop();
            self.summary.files_deleted += deleted;
            self.delete_errors.extend(errors);
        }
    }

    /// Hand the batch to a task that writes its content, then finishes its
    /// files, links and the directories the walk has left (`inside` is where
    /// it is now; `None` at the end). The walk goes on meanwhile; the batch
    /// before must be done first, so at most two are held.
    async fn flush(&mut self, inside: Option<&Path>) -> Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        let (done, open) = batch.dirs.into_iter().partition(|(d, _)| inside.is_none_or(|i| !i.starts_with(d)));
        (batch.dirs, self.batch.dirs) = (done, open);
        // Planned once the batch before is written, with the newest index:
        // that batch may have found packs moved, and then let go of the
        // index it had, so one index is held (`Repository::relocated`).
        self.wait().await?;
        let index = self.repo.index().await?;
        let by_pack = self.blobs_by_pack(&batch.files, &index);
        let (repo, writer) = (self.repo.clone(), self.writer.clone());
        self.writing = Some(tokio::spawn(async move {
            let files = Arc::new(std::mem::take(&mut batch.files));
            writer.fetch_and_write(&repo, &files, by_pack, index).await?;
            Ok(finish(&writer, &files, batch))
        }));
        Ok(())
    }

    /// Wait for the batch being written, and count it.
    async fn wait(&mut self) -> Result<()> {
        if let Some(task) = self.writing.take() {
            let [files, restored, dirs] = task.await.map_err(|e| Error::Invalid(format!("restore task failed: {e}")))??;
            self.summary.total_files += files;
            self.summary.files_restored += restored;
            self.summary.dirs_restored += dirs;
        }
        Ok(())
    }

    /// The blobs the files need, by pack, each with every place it goes. A
    /// file with a blob the index lacks is reported and left alone: the
    /// offsets of its later blobs are unknown, so it would be written wrong.
    fn blobs_by_pack(&self, files: &[FilePlan], index: &Index) -> IdMap<Vec<(PackEntry, Targets)>> {
        let mut by_pack: IdMap<Vec<(PackEntry, Targets)>> = IdMap::default();
        let mut blob_slot: IdMap<(Id, usize)> = IdMap::default();
        for (fi, f) in files.iter().enumerate() {
            if let Some(missing) = f.node.content.iter().find(|id| !index.contains(id)) {
                self.writer.error(&f.path, Error::MissingBlob(*missing));
                f.remaining.store(0, Relaxed);
                f.failed.store(true, Relaxed);
                let _ = self.writer.beneath.remove(&f.path);
                continue;
            }
            let mut offset = 0u64;
            for id in &f.node.content {
                let (pack, entry) = index.get(id).expect("checked above");
                let list = by_pack.entry(pack).or_default();
                let slot = *blob_slot.entry(*id).or_insert_with(|| {
                    list.push((entry, Vec::new()));
                    (pack, list.len() - 1)
                });
                by_pack.get_mut(&slot.0).expect("pack planned")[slot.1].1.push((fi, offset));
                offset += u64::from(entry.raw_length);
            }
        }
        by_pack
    }

    fn create(&mut self, dest: &Path, node: &Node) -> std::io::Result<()> {
        let (batch, beneath) = (&mut self.batch, &self.writer.beneath);
        match node.kind {
            NodeKind::Dir => {
                beneath.make_dir(dest)?;
                self.made = dest.to_path_buf();
                batch.dirs.push((dest.to_path_buf(), node.clone()));
            }
            NodeKind::File => {
                // Every path of a multiply-linked file obeys `--overwrite`; one
                // written is linked to the first path holding the snapshot's content.
                let inode = (node.links > 1 && node.inode != 0).then_some((node.device, node.inode));
                let decision = self.existing.decide(dest, node);
                if decision != Decision::Write {
                    if decision == Decision::KeepContent {
                        beneath.apply(dest, node, self.writer.owner)?;
                        if let Some(inode) = inode {
                            self.first_link.entry(inode).or_insert_with(|| dest.to_path_buf());
                        }
                    }
                    self.summary.total_files += 1;
                    self.summary.files_skipped += 1;
                    self.summary.bytes_skipped += node.size;
                    return Ok(());
                }
                if let Some(inode) = inode {
                    if let Some(original) = self.first_link.get(&inode) {
                        batch.hardlinks.push((dest.to_path_buf(), original.clone()));
                        return Ok(());
                    }
                    self.first_link.insert(inode, dest.to_path_buf());
                }
                let chunks = node.content.len();
                if chunks != 1 {
                    // Truncate, then extend: blobs that are all zeros are never
                    // written, so holes stay holes and sparse files stay sparse.
                    beneath.create_file(dest)?.set_len(node.size)?;
                }
                batch.chunks += chunks;
                batch.files.push(FilePlan {
                    path: dest.to_path_buf(),
                    node: node.clone(),
                    remaining: AtomicU32::new(chunks as u32),
                    failed: AtomicBool::new(false),
                    create_on_write: chunks == 1,
                });
                if chunks == 0 {
                    let f = batch.files.last().expect("just pushed");
                    beneath.apply(&f.path, &f.node, self.writer.owner)?;
                }
            }
            NodeKind::Symlink => {
                beneath.symlink(&node.os_link_target().unwrap_or_default(), dest)?;
                batch.links.push((dest.to_path_buf(), node.clone()));
            }
            _ => {
                beneath.make_special(dest, node)?;
                batch.links.push((dest.to_path_buf(), node.clone()));
            }
        }
        Ok(())
    }
}

/// Finish a written batch: files not written whole fail, then hard links,
/// link metadata, and its directories deepest first (finishing a directory
/// must not touch a parent already done). Files, restored files and
/// directories, counted.
fn finish(w: &Writer, files: &[FilePlan], mut batch: Batch) -> [u64; 3] {
    for f in files {
        if f.remaining.load(Relaxed) > 0 {
            w.fail(f, "not all of its content could be restored");
        }
    }
    let mut restored = files.iter().filter(|f| !f.failed.load(Relaxed)).count() as u64;
    for (link, original) in &batch.hardlinks {
        match w.beneath.hard_link(original, link) {
            Ok(()) => restored += 1,
            Err(e) => w.error(link, e),
        }
    }
    for (path, node) in &batch.links {
        if let Err(e) = w.beneath.apply(path, node, w.owner) {
            w.error(path, e);
        }
    }
    batch.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, node) in &batch.dirs {
        if let Err(e) = w.beneath.apply(path, node, w.owner) {
            w.error(path, e);
        }
    }
    [(files.len() + batch.hardlinks.len()) as u64, restored, batch.dirs.len() as u64]
}

/// Is `e` the repository's damage, not a failure to reach it: a tree
/// blob no index lists, whose pack storage lacks, or that fails to open.
/// Should `path` be restored? Included paths bring their whole subtree and
/// the directories above them.
pub fn wanted(path: &Path, node: &Node, includes: &PathFilter, excludes: &PathFilter) -> (bool, bool) {
    if excludes.matches(path) {
        return (false, false);
    }
    if included(path, includes) {
        return (true, true);
    }
    // Not (yet) included: descend into directories looking for matches.
    (false, node.is_dir())
}

/// Whether `delete` may remove what the target holds at `path` (as the
/// snapshot would name it) when the snapshot lacks it: only what the
/// filters select, as `wanted` does, so neither `path` nor any directory
/// above it may be excluded, as the walk goes into no excluded directory.
/// The root is no entry of the snapshot: an exclude matching it alone
/// excludes nothing there.
pub fn deletable(path: &Path, includes: &PathFilter, excludes: &PathFilter) -> bool {
    let mut entries = path.ancestors().take_while(|a| a.parent().is_some());
    !entries.any(|a| excludes.matches(a)) && included(path, includes)
}

/// An include names `path` or a directory above it (or there is none).
fn included(path: &Path, includes: &PathFilter) -> bool {
    includes.is_empty() || path.ancestors().any(|a| includes.matches(a))
}

#[cfg(test)]
pub(crate) mod tests;
