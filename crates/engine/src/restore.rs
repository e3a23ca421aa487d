//! Restore: the backup pipeline backwards.
//!
//! First the snapshot's trees are walked and every directory, link and empty
//! file is created. Then each needed pack is fetched once, in parallel, with
//! one ranged read, and its blobs are decrypted and written at their offsets
//! in every file that uses them. Metadata goes last, so writing a file's
//! content cannot disturb its times, and directories are finished deepest
//! first.
//!
//! A file that exists in the target is replaced, kept or compared as the
//! `Overwrite` mode says; with `delete`, what the snapshot lacks goes.

mod existing;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::fsmeta;
use crate::pack::{PackEntry, open_blob_into};
use crate::repo::pack_path;
use crate::tree::{Node, NodeKind};
use crate::walk::{PathFilter, walk};
use crate::{Error, Id, IdMap, Repository, Result, Snapshot};
pub use existing::Overwrite;
use existing::{Decision, Existing};

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

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, Node)>,
    hardlinks: Vec<(PathBuf, PathBuf)>,
    files: Vec<FilePlan>,
    errors: Vec<String>,
    /// Every path the restore took, for `delete`.
    taken: HashSet<PathBuf>,
    skipped: u64,
    bytes_skipped: u64,
}

pub async fn restore(repo: Arc<Repository>, snap: &Snapshot, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let includes = PathFilter::new(&opts.includes)?;
    let excludes = PathFilter::new(&opts.excludes)?;
    let root = match &opts.subfolder {
        Some(folder) => crate::walk::folder(&repo, snap.tree, folder).await?,
        None => snap.tree,
    };
    std::fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let existing = Existing::new(&repo, opts.overwrite);
    let mut plan = make_plan(&repo, root, &opts.target, &includes, &excludes, &existing).await?;
    let taken = std::mem::take(&mut plan.taken);
    let (skipped, bytes_skipped) = (plan.skipped, plan.bytes_skipped);
    let index = repo.index().await?;
    let mut by_pack: IdMap<Vec<(PackEntry, Targets)>> = IdMap::default();
    let mut blob_slot: IdMap<(Id, usize)> = IdMap::default();
    let mut errors = plan.errors;
    for (fi, f) in plan.files.iter().enumerate() {
        // Without every blob the offsets of the later ones are unknown, so
        // such a file is reported and left alone rather than written wrong.
        if let Some(missing) = f.node.content.iter().find(|id| !index.contains(id)) {
            errors.push(format!("{}: {}", f.path.display(), Error::MissingBlob(*missing)));
            f.remaining.store(0, Relaxed);
            f.failed.store(true, Relaxed);
            let _ = std::fs::remove_file(&f.path);
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
    let shared = Arc::new(Writer {
        files: plan.files,
        errors: Mutex::new(errors),
        bytes: AtomicU64::new(0),
        owner: fsmeta::is_root(),
        progress: opts.progress.clone(),
    });
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    futures::stream::iter(fetch_ranges(by_pack))
        .map(|(pack, blobs)| {
            let (repo, shared) = (repo.clone(), shared.clone());
            async move {
                let start = blobs.iter().map(|(e, _)| u64::from(e.offset)).min().unwrap_or(0);
                let end = blobs.iter().map(|(e, _)| u64::from(e.offset) + u64::from(e.length)).max().unwrap_or(0);
                let bytes = repo.read_range_parts(&pack_path(&pack), start..end).await?;
                tokio::task::spawn_blocking(move || shared.write_pack(&repo, start, &bytes, blobs))
                    .await
                    .map_err(|e| Error::Invalid(format!("restore thread failed: {e}")))
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    let shared = Arc::into_inner(shared).expect("all writers finished");
    let mut summary = finish(shared, plan.dirs, plan.links, plan.hardlinks);
    summary.total_files += skipped;
    summary.files_skipped = skipped;
    summary.bytes_skipped = bytes_skipped;
    if opts.delete {
        let (deleted, errors) = existing::delete_extra(&opts.target, &taken, &includes, &excludes);
        summary.files_deleted = deleted;
        summary.errors.extend(errors);
    }
    Ok(summary)
}

/// Longest span one fetch reads: it bounds restore memory to a few of these
/// in flight, however large packs are.
const MAX_FETCH: u64 = 8 << 20;

/// Split each pack's blobs, in offset order, into runs of at most
/// `MAX_FETCH` bytes; each run is one ranged read.
fn fetch_ranges(by_pack: IdMap<Vec<(PackEntry, Targets)>>) -> Vec<(Id, Vec<(PackEntry, Targets)>)> {
    let mut out = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|(e, _)| e.offset);
        let mut run: Vec<(PackEntry, Targets)> = Vec::new();
        for b in blobs {
            let start = run.first().map_or(u64::from(b.0.offset), |(e, _)| u64::from(e.offset));
            if !run.is_empty() && u64::from(b.0.offset) + u64::from(b.0.length) - start > MAX_FETCH {
                out.push((pack, std::mem::take(&mut run)));
            }
            run.push(b);
        }
        if !run.is_empty() {
            out.push((pack, run));
        }
    }
    out
}

fn finish(w: Writer, mut dirs: Vec<(PathBuf, Node)>, links: Vec<(PathBuf, Node)>, hardlinks: Vec<(PathBuf, PathBuf)>) -> RestoreSummary {
    for f in &w.files {
        if f.remaining.load(Relaxed) > 0 {
            w.fail(f, "not all of its content could be restored");
        }
    }
    let mut links_made = 0u64;
    for (link, original) in &hardlinks {
        let _ = std::fs::remove_file(link);
        match std::fs::hard_link(original, link) {
            Ok(()) => links_made += 1,
            Err(e) => w.error(link, e),
        }
    }
    for (path, node) in &links {
        if let Err(e) = fsmeta::apply(path, node, w.owner) {
            w.error(path, e);
        }
    }
    // Deepest first: finishing a directory must not touch a parent already done.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, node) in &dirs {
        if let Err(e) = fsmeta::apply(path, node, w.owner) {
            w.error(path, e);
        }
    }
    RestoreSummary {
        total_files: (w.files.len() + hardlinks.len()) as u64,
        files_restored: w.files.iter().filter(|f| !f.failed.load(Relaxed)).count() as u64 + links_made,
        dirs_restored: dirs.len() as u64,
        bytes_restored: w.bytes.load(Relaxed),
        errors: w.errors.into_inner().expect("not poisoned"),
        ..RestoreSummary::default()
    }
}

/// Should `path` be restored? Included paths bring their whole subtree and
/// the directories above them.
fn wanted(path: &Path, node: &Node, includes: &PathFilter, excludes: &PathFilter) -> (bool, bool) {
    if excludes.matches(path) {
        return (false, false);
    }
    if includes.is_empty() || path.ancestors().any(|a| includes.matches(a)) {
        return (true, true);
    }
    // Not (yet) included: descend into directories looking for matches.
    (false, node.is_dir())
}

async fn make_plan(
    repo: &Repository,
    root: Id,
    target: &Path,
    includes: &PathFilter,
    excludes: &PathFilter,
    existing: &Existing,
) -> Result<Plan> {
    let mut plan = Plan {
        dirs: Vec::new(),
        links: Vec::new(),
        hardlinks: Vec::new(),
        files: Vec::new(),
        errors: Vec::new(),
        taken: HashSet::new(),
        skipped: 0,
        bytes_skipped: 0,
    };
    let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(repo, root, Path::new("/"), &mut |path, node| {
        let (take, descend) = wanted(path, node, includes, excludes);
        if !take {
            return Ok(descend);
        }
        let dest = target.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        plan.taken.insert(dest.clone());
        if let Err(e) = create(&mut plan, &mut first_link, &dest, node, existing) {
            plan.errors.push(format!("{}: {e}", dest.display()));
        }
        Ok(descend)
    })
    .await?;
    Ok(plan)
}

fn create(
    plan: &mut Plan,
    first_link: &mut HashMap<(u64, u64), PathBuf>,
    dest: &Path,
    node: &Node,
    existing: &Existing,
) -> std::io::Result<()> {
    match node.kind {
        NodeKind::Dir => {
            match std::fs::create_dir(dest) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            plan.dirs.push((dest.to_path_buf(), node.clone()));
        }
        NodeKind::File => {
            if node.links > 1 && node.inode != 0 {
                if let Some(original) = first_link.get(&(node.device, node.inode)) {
                    plan.hardlinks.push((dest.to_path_buf(), original.clone()));
                    return Ok(());
                }
                first_link.insert((node.device, node.inode), dest.to_path_buf());
            }
            match existing.decide(dest, node) {
                Decision::Write => {}
                decision => {
                    if decision == Decision::KeepContent {
                        fsmeta::apply(dest, node, fsmeta::is_root())?;
                    }
                    plan.skipped += 1;
                    plan.bytes_skipped += node.size;
                    return Ok(());
                }
            }
            let chunks = node.content.len();
            if chunks != 1 {
                // Truncate, then extend: blobs that are all zeros are never
                // written, so holes stay holes and sparse files stay sparse.
                let f = std::fs::File::create(dest)?;
                f.set_len(node.size)?;
            }
            plan.files.push(FilePlan {
                path: dest.to_path_buf(),
                node: node.clone(),
                remaining: AtomicU32::new(chunks as u32),
                failed: AtomicBool::new(false),
                create_on_write: chunks == 1,
            });
            if chunks == 0 {
                let f = plan.files.last().expect("just pushed");
                fsmeta::apply(&f.path, &f.node, fsmeta::is_root())?;
            }
        }
        NodeKind::Symlink => {
            let _ = std::fs::remove_file(dest);
            std::os::unix::fs::symlink(node.os_link_target().unwrap_or_default(), dest)?;
            plan.links.push((dest.to_path_buf(), node.clone()));
        }
        _ => {
            let _ = std::fs::remove_file(dest);
            fsmeta::make_special(dest, node)?;
            plan.links.push((dest.to_path_buf(), node.clone()));
        }
    }
    Ok(())
}

/// Whether `data` is all zeros, compared against a zero page with `memcmp`
/// (vectorised), not byte by byte: restore checks every byte it writes.
fn is_zeros(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

thread_local! {
    /// Buffers reused across blobs: plaintext, compressed form, glued blob.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

struct Writer {
    files: Vec<FilePlan>,
    errors: Mutex<Vec<String>>,
    bytes: AtomicU64,
    owner: bool,
    progress: Option<Arc<crate::backup::Progress>>,
}

impl Writer {
    fn error(&self, path: &Path, e: impl std::fmt::Display) {
        self.errors.lock().expect("not poisoned").push(format!("{}: {e}", path.display()));
    }

    /// A file that will not be restored whole: its first error is reported,
    /// so a full disk says so once per file, not once per chunk.
    fn fail(&self, f: &FilePlan, e: impl std::fmt::Display) {
        if !f.failed.swap(true, Relaxed) {
            self.error(&f.path, e);
        }
    }

    fn write_pack(&self, repo: &Repository, base: u64, bytes: &opendal::Buffer, blobs: Vec<(PackEntry, Targets)>) {
        BUFFERS.with(|b| {
            let (plain, scratch, glued) = &mut *b.borrow_mut();
            self.write_blobs(repo, base, bytes, blobs, [plain, scratch, glued]);
        });
    }

    /// `bufs`: plaintext, compressed form, and a blob glued from pieces.
    fn write_blobs(
        &self,
        repo: &Repository,
        base: u64,
        bytes: &opendal::Buffer,
        blobs: Vec<(PackEntry, Targets)>,
        bufs: [&mut Vec<u8>; 3],
    ) {
        let [plain, scratch, glued] = bufs;
        for (entry, targets) in blobs {
            let (at, len) = ((u64::from(entry.offset) - base) as usize, entry.length as usize);
            // Borrowed when the blob lies in one piece of the fetched buffer,
            // else glued into a reused buffer: no allocation per blob.
            let single;
            let sealed: Option<&[u8]> = if at + len > bytes.len() {
                None
            } else {
                let part = bytes.slice(at..at + len);
                if bytes::Buf::chunk(&part).len() == len {
                    single = part.to_bytes();
                    Some(&single)
                } else {
                    glued.clear();
                    for piece in part {
                        glued.extend_from_slice(&piece);
                    }
                    Some(glued.as_slice())
                }
            };
            let opened = sealed
                .ok_or_else(|| Error::corrupt("pack", entry.id, "short read"))
                .and_then(|s| open_blob_into(repo.crypto(), &entry, s, plain, scratch));
            match opened {
                Ok(()) => {}
                Err(e) => {
                    for (fi, _) in &targets {
                        self.fail(&self.files[*fi], &e);
                    }
                    continue;
                }
            }
            let plain: &[u8] = plain;
            let zeros = is_zeros(plain);
            for (fi, offset) in targets {
                let f = &self.files[fi];
                if let Err(e) = self.write_blob(f, offset, plain, zeros) {
                    self.fail(f, e);
                    continue;
                }
                self.bytes.fetch_add(plain.len() as u64, Relaxed);
                if let Some(p) = &self.progress {
                    p.bytes.fetch_add(plain.len() as u64, Relaxed);
                }
                if f.remaining.fetch_sub(1, Relaxed) == 1
                    && let Err(e) = fsmeta::apply(&f.path, &f.node, self.owner)
                {
                    self.fail(f, e);
                }
            }
        }
    }

    fn write_blob(&self, f: &FilePlan, offset: u64, data: &[u8], zeros: bool) -> std::io::Result<()> {
        if f.create_on_write {
            return std::fs::write(&f.path, data);
        }
        if zeros {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new().write(true).open(&f.path)?;
        // Zero runs inside a blob are skipped too: the file was extended to
        // its full size, so they read back as zeros and stay holes on disk.
        const BLOCK: usize = 64 * 1024;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            if !is_zeros(block) {
                file.write_all_at(block, offset + (i * BLOCK) as u64)?;
            }
        }
        Ok(())
    }
}
