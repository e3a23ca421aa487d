//! Restore's fetching and writing: packs read in bounded ranges, blobs
//! opened into a fixed set of reused buffers and written into their files.
//!
//! Memory stays flat whatever the size of files or packs: at most
//! `fetches()` ranges of about `MAX_FETCH` are held at once, and at most
//! `writers()` blobs are opened at once, each into a buffer set taken from a
//! pool of that many (not one per blocking-pool thread, of which tokio may
//! run many), trimmed after a large blob.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::beneath::Beneath;
use super::{FilePlan, Targets};
use crate::fsmeta;
use crate::index::Index;
use crate::objects::{Kind, is_not_found};
use crate::pack::{PackEntry, open_blob_into};
use crate::repo::RELOCATIONS;
use crate::{Error, Id, IdMap, Repository, Result};

/// Longest span one fetch reads (a blob longer than this is read alone).
/// Small enough that the ranges in flight stay a few MiB; large enough that
/// a pack of 1 MiB chunks is still read in few requests.
const MAX_FETCH: u64 = 2 << 20;

/// Unneeded bytes a fetch reads through rather than split in two: a pack
/// partly needed (a filtered restore, one batch of many) is not read whole.
const MAX_GAP: u64 = 256 << 10;

/// A buffer grown past this by a large blob is given back afterwards, so a
/// few 8 MiB chunks do not keep 8 MiB per writer for the rest of the restore.
/// Buffers start at this capacity (address space; pages are touched only
/// as blobs fill them): grown by doubling from one blob's size, a buffer
/// would often pass it on an ordinary blob (1.1 MiB after 1.05), be given
/// back and fault in fresh pages again and again.
const KEEP_BUFFER: usize = 2 << 20;

/// Blobs opened at once: one per core.
pub(super) fn writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Ranges fetched at once: the writers' plus two, so storage latency is
/// hidden without holding many ranges waiting for a writer.
fn fetches() -> usize {
    writers() + 2
}

/// Buffers reused across blobs: plaintext, compressed form.
pub(super) struct Buffers {
    plain: Vec<u8>,
    scratch: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        let kept = || Vec::with_capacity(KEEP_BUFFER);
        Buffers { plain: kept(), scratch: kept() }
    }

    /// Give back what a large blob grew.
    fn trim(&mut self) {
        for b in [&mut self.plain, &mut self.scratch] {
            if b.capacity() > KEEP_BUFFER {
                *b = Vec::with_capacity(KEEP_BUFFER);
            }
        }
    }
}

/// Files a full disk kept out that are named one by one; the rest are
/// counted in one line (a restore into a full disk named 2,006 files).
const FULL_NAMED: u64 = 10;

pub(super) struct Writer {
    pub(super) errors: Mutex<Vec<String>>,
    /// Files a full disk kept out: how many were named, and the files and
    /// bytes of those only counted.
    full: Mutex<(u64, u64, u64)>,
    pub(super) bytes: AtomicU64,
    pub(super) owner: bool,
    /// Where every file is created and written, through no link.
    pub(super) beneath: Beneath,
    progress: Option<Arc<crate::backup::Progress>>,
    /// One buffer set per permit of `slots`.
    buffers: Mutex<Vec<Buffers>>,
    slots: Semaphore,
}

impl Writer {
    pub(super) fn new(owner: bool, progress: Option<Arc<crate::backup::Progress>>, beneath: Beneath) -> Writer {
        let n = writers();
        Writer {
            errors: Mutex::new(Vec::new()),
            full: Mutex::new((0, 0, 0)),
            bytes: AtomicU64::new(0),
            owner,
            beneath,
            progress,
            buffers: Mutex::new((0..n).map(|_| Buffers::new()).collect()),
            slots: Semaphore::new(n),
        }
    }

    pub(super) fn error(&self, path: &Path, e: impl std::fmt::Display) {
        self.errors.lock().expect("not poisoned").push(format!("{}: {e}", path.display()));
    }

    /// A file that will not be restored whole: its first error is reported,
    /// so a full disk says so once per file, not once per chunk.
    pub(super) fn fail(&self, f: &FilePlan, e: impl std::fmt::Display) {
        if !f.failed.swap(true, Relaxed) {
            self.error(&f.path, e);
        }
    }

    /// A write that failed: past the first few files a full disk (or a
    /// quota) kept out, a file is counted, not named.
    fn fail_write(&self, f: &FilePlan, e: std::io::Error) {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) && !f.failed.load(Relaxed) {
            let mut full = self.full.lock().expect("not poisoned");
            if full.0 >= FULL_NAMED {
                f.failed.store(true, Relaxed);
                *full = (full.0, full.1 + 1, full.2 + f.node.size);
                return;
            }
            full.0 += 1;
        }
        self.fail(f, e);
    }

    /// The line for the files a full disk kept out beyond those named.
    pub(super) fn full_beyond_named(&self) -> Option<String> {
        let (_, files, bytes) = *self.full.lock().expect("not poisoned");
        let s = if files == 1 { "" } else { "s" };
        let mib = bytes as f64 / f64::from(1 << 20);
        (files > 0).then(|| format!("… and {files} more file{s} ({mib:.1} MiB) not restored: the target is full"))
    }

    fn take_buffers(&self) -> Buffers {
        self.buffers.lock().expect("not poisoned").pop().expect("a buffer set for every permit")
    }

    fn put_buffers(&self, mut b: Buffers) {
        b.trim();
        self.buffers.lock().expect("not poisoned").push(b);
    }

    /// Fetch every range of `by_pack`, planned with `index`, and write its
    /// blobs into `files`. Restore holds no session, so a concurrent prune
    /// may sweep a pack meanwhile: its blobs are then read where a newer
    /// index puts them (`Repository::relocated`). A pack missing, not
    /// moved, fails the files that need it; the others are restored.
    pub(super) async fn fetch_and_write(
        self: &Arc<Self>,
        repo: &Arc<Repository>,
        files: &Arc<Vec<FilePlan>>,
        mut by_pack: IdMap<Vec<(PackEntry, Targets)>>,
        mut index: Arc<Index>,
    ) -> Result<()> {
        for _ in 0..=RELOCATIONS {
            let gone = self.fetch_runs(repo, files, by_pack).await?;
            if gone.is_empty() {
                return Ok(());
            }
            let Some(newer) = repo.relocated(index).await? else {
                for (pack, blobs) in gone {
                    let missing = Error::corrupt("pack", pack, "it is missing from storage");
                    blobs.iter().flat_map(|(_, targets)| targets).for_each(|(fi, _)| self.fail(&files[*fi], &missing));
                }
                return Ok(());
            };
            index = newer;
            by_pack = self.regroup(files, gone, &index);
        }
        Err(Error::Invalid(format!("restore: packs were moved {RELOCATIONS} times while they were read")))
    }

    /// Fetch every range of `by_pack` and write its blobs into `files`; the
    /// runs whose pack storage does not hold.
    async fn fetch_runs(
        self: &Arc<Self>,
        repo: &Arc<Repository>,
        files: &Arc<Vec<FilePlan>>,
        by_pack: IdMap<Vec<(PackEntry, Targets)>>,
    ) -> Result<Vec<Run>> {
        futures::stream::iter(fetch_ranges(by_pack, fetches()))
            .map(|(pack, blobs)| {
                let (repo, files, writer) = (repo.clone(), files.clone(), self.clone());
                async move {
                    let start = blobs.iter().map(|(e, _)| u64::from(e.offset)).min().unwrap_or(0);
                    let end = blobs.iter().map(|(e, _)| u64::from(e.offset) + u64::from(e.length)).max().unwrap_or(0);
                    let bytes = match repo.read_range_parts(&Kind::Pack.path(&pack), start..end).await {
                        Err(e) if is_not_found(&e) => return Ok(Some((pack, blobs))),
                        read => read?,
                    };
                    let _slot = writer.slots.acquire().await.expect("never closed");
                    let mut bufs = writer.take_buffers();
                    let w = writer.clone();
                    let bufs = tokio::task::spawn_blocking(move || {
                        w.write_blobs(&repo, &files, start, &bytes, blobs, &mut bufs);
                        bufs
                    })
                    .await
                    .map_err(|e| Error::Invalid(format!("restore thread failed: {e}")))?;
                    writer.put_buffers(bufs);
                    Ok::<_, Error>(None)
                }
            })
            .buffer_unordered(fetches())
            .try_filter_map(|gone| async move { Ok(gone) })
            .try_collect()
            .await
    }

    /// The blobs of runs whose pack is gone, by pack again in `index`; a
    /// blob it lacks (its snapshot was forgotten meanwhile) fails the
    /// files it goes to.
    fn regroup(&self, files: &[FilePlan], gone: Vec<Run>, index: &Index) -> IdMap<Vec<(PackEntry, Targets)>> {
        let mut by_pack: IdMap<Vec<(PackEntry, Targets)>> = IdMap::default();
        for (entry, targets) in gone.into_iter().flat_map(|(_, blobs)| blobs) {
            match index.get(&entry.id) {
                Some((pack, moved)) => by_pack.entry(pack).or_default().push((moved, targets)),
                None => targets.iter().for_each(|(fi, _)| self.fail(&files[*fi], Error::MissingBlob(entry.id))),
            }
        }
        by_pack
    }

    fn write_blobs(
        &self,
        repo: &Repository,
        files: &[FilePlan],
        base: u64,
        bytes: &opendal::Buffer,
        blobs: Vec<(PackEntry, Targets)>,
        bufs: &mut Buffers,
    ) {
        let Buffers { plain, scratch } = bufs;
        for (entry, targets) in blobs {
            let (at, len) = ((u64::from(entry.offset) - base) as usize, entry.length as usize);
            // Decrypted from the pieces of the fetched buffer it lies in:
            // nothing allocated or glued together per blob.
            let opened = if at + len > bytes.len() {
                Err(Error::corrupt("pack", entry.id, "short read"))
            } else {
                open_blob_into(repo.crypto(), &entry, bytes.slice(at..at + len), len, plain, scratch)
            };
            if let Err(e) = opened {
                for (fi, _) in &targets {
                    self.fail(&files[*fi], &e);
                }
                continue;
            }
            let plain: &[u8] = plain;
            let zeros = is_zeros(plain);
            for (fi, offset) in targets {
                let f = &files[fi];
                let file = match write_blob(&self.beneath, f, offset, plain, zeros) {
                    Ok(file) => file,
                    Err(e) => {
                        self.fail_write(f, e);
                        continue;
                    }
                };
                self.bytes.fetch_add(plain.len() as u64, Relaxed);
                if let Some(p) = &self.progress {
                    p.bytes.fetch_add(plain.len() as u64, Relaxed);
                }
                if f.remaining.fetch_sub(1, Relaxed) == 1 {
                    let applied = match &file {
                        Some(file) => fsmeta::apply_to_file(file, &f.node, self.owner),
                        None => self.beneath.apply(&f.path, &f.node, self.owner),
                    };
                    if let Err(e) = applied {
                        self.fail(f, e);
                    }
                }
            }
        }
    }
}

/// Write one blob where it goes in its file; the file, if it was opened,
/// so that the last blob's writer sets its metadata through it.
fn write_blob(beneath: &Beneath, f: &FilePlan, offset: u64, data: &[u8], zeros: bool) -> std::io::Result<Option<std::fs::File>> {
    if f.create_on_write {
        let mut file = beneath.create_file(&f.path)?;
        std::io::Write::write_all(&mut file, data)?;
        return Ok(Some(file));
    }
    if zeros {
        return Ok(None);
    }
    let file = beneath.open_file(&f.path)?;
    // Zero runs inside a blob are skipped too: the file was extended to
    // its full size, so they read back as zeros and stay holes on disk.
    const BLOCK: usize = 64 * 1024;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if !is_zeros(block) {
            file.write_all_at(block, offset + (i * BLOCK) as u64)?;
        }
    }
    Ok(Some(file))
}

/// Whether `data` is all zeros, compared against a zero page with `memcmp`
/// (vectorised), not byte by byte: restore checks every byte it writes.
fn is_zeros(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// One ranged read: a pack, and the blobs of it to read, in offset order.
type Run = (Id, Vec<(PackEntry, Targets)>);

/// Split each pack's blobs, in offset order, into runs of at most
/// `MAX_FETCH` bytes with no gap over `MAX_GAP`; each run is one ranged read.
///
/// The runs are dealt out `width` packs at a time, one run of each in turn,
/// so the runs in flight together come from different packs. A pack's runs
/// hold consecutive stretches of one file: taken in order, two writer
/// threads wrote the same file at once and queued on its inode lock (ext4
/// takes it for every write), the waiting thread spinning.
fn fetch_ranges(by_pack: IdMap<Vec<(PackEntry, Targets)>>, width: usize) -> Vec<Run> {
    let per_pack: Vec<_> = by_pack.into_iter().map(|(pack, blobs)| pack_runs(pack, blobs)).collect();
    let mut out = Vec::with_capacity(per_pack.iter().map(Vec::len).sum());
    let mut packs = per_pack.into_iter().peekable();
    while packs.peek().is_some() {
        let mut group: Vec<_> = packs.by_ref().take(width.max(1)).map(Vec::into_iter).collect();
        while !group.is_empty() {
            group.retain_mut(|runs| match runs.next() {
                Some(run) => {
                    out.push(run);
                    true
                }
                None => false,
            });
        }
    }
    out
}

/// One pack's runs, in offset order.
fn pack_runs(pack: Id, mut blobs: Vec<(PackEntry, Targets)>) -> Vec<Run> {
    blobs.sort_by_key(|(e, _)| e.offset);
    let mut out = Vec::new();
    let mut run: Vec<(PackEntry, Targets)> = Vec::new();
    let mut end = 0u64;
    for b in blobs {
        let (offset, length) = (u64::from(b.0.offset), u64::from(b.0.length));
        if let Some((first, _)) = run.first()
            && (offset + length - u64::from(first.offset) > MAX_FETCH || offset.saturating_sub(end) > MAX_GAP)
        {
            out.push((pack, std::mem::take(&mut run)));
        }
        end = end.max(offset + length);
        run.push(b);
    }
    if !run.is_empty() {
        out.push((pack, run));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::BlobKind;

    fn blob(n: u8, offset: u32, length: u32) -> (PackEntry, Targets) {
        let entry = PackEntry { kind: BlobKind::Data, flags: 0, id: Id([n; 32]), offset, length, raw_length: length };
        (entry, vec![(0, 0)])
    }

    fn spans(ranges: &[Run]) -> Vec<(u32, u32)> {
        let mut s: Vec<(u32, u32)> =
            ranges.iter().map(|(_, b)| (b[0].0.offset, b.last().map_or(0, |(e, _)| e.offset + e.length))).collect();
        s.sort();
        s
    }

    /// What bounds restore memory: no fetch spans more than `MAX_FETCH`
    /// unless it is one blob, and unneeded stretches are not read.
    #[test]
    fn fetches_are_bounded_and_skip_gaps() {
        const MIB: u32 = 1 << 20;
        let mut by_pack = IdMap::default();
        let mut blobs: Vec<_> = (0..10u8).map(|i| blob(i, u32::from(i) * MIB, MIB)).collect();
        // A blob larger than a fetch, alone; then one past a wide gap.
        blobs.push(blob(10, 10 * MIB, 8 * MIB));
        blobs.push(blob(11, 18 * MIB + (MAX_GAP as u32) + 1, 100));
        blobs.reverse();
        by_pack.insert(Id([1; 32]), blobs);
        let ranges = fetch_ranges(by_pack, 4);
        assert_eq!(
            spans(&ranges),
            vec![
                (0, 2 * MIB),
                (2 * MIB, 4 * MIB),
                (4 * MIB, 6 * MIB),
                (6 * MIB, 8 * MIB),
                (8 * MIB, 10 * MIB),
                (10 * MIB, 18 * MIB),
                (18 * MIB + MAX_GAP as u32 + 1, 18 * MIB + MAX_GAP as u32 + 101)
            ]
        );
        assert_eq!(ranges.iter().map(|(_, b)| b.len()).sum::<usize>(), 12);
    }

    /// Runs in flight together (`width` in a row) come from different
    /// packs, and each pack's runs still come in offset order.
    #[test]
    fn runs_in_flight_together_come_from_different_packs() {
        const MIB: u32 = 1 << 20;
        let mut by_pack = IdMap::default();
        for p in 0..8u8 {
            by_pack.insert(Id([p; 32]), (0..4u8).map(|i| blob(i, u32::from(i) * 2 * MIB, 2 * MIB)).collect());
        }
        let ranges = fetch_ranges(by_pack, 4);
        assert_eq!(ranges.len(), 32);
        for window in ranges.chunks(4) {
            let packs: std::collections::HashSet<_> = window.iter().map(|(p, _)| *p).collect();
            assert_eq!(packs.len(), 4, "a window of four runs names {} packs", packs.len());
        }
        for p in 0..8u8 {
            let offsets: Vec<u32> = ranges.iter().filter(|(id, _)| *id == Id([p; 32])).map(|(_, b)| b[0].0.offset).collect();
            assert_eq!(offsets, vec![0, 2 * MIB, 4 * MIB, 6 * MIB]);
        }
    }

    /// Buffers grown by a large blob are given back; ordinary ones kept.
    #[test]
    fn large_buffers_are_given_back() {
        let mut b = Buffers::new();
        let kept = b.scratch.as_ptr();
        b.plain.reserve(8 << 20);
        b.trim();
        assert_eq!((b.plain.capacity(), b.scratch.capacity(), b.scratch.as_ptr()), (KEEP_BUFFER, KEEP_BUFFER, kept));
    }
}
