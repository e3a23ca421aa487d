//! The index: which pack holds each blob.
//!
//! Index files are immutable; a repository's index is the union of all of
//! them. A new index file may name older ones it supersedes (prune writes
//! such files); readers then ignore the superseded ones.

mod budget;
mod compact;

pub use budget::{MemoryEstimate, WORKING_SET};
pub use compact::{BlobKey, BlobLoc, Index, KeySet, PackUsage};

use crate::id::IdSet;
use crate::pack::{ENTRY_LEN, PackEntry};
use crate::{Error, Id, Result};

/// One index file's content.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IndexFile {
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexedPack>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexedPack {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

const INDEX_VERSION: u32 = 1;

/// Packs stored between two index checkpoints: a writer killed between
/// them leaves at most this many unindexed packs behind, which the next
/// writer cannot reuse.
const CHECKPOINT_PACKS: usize = 32;

/// Blobs that close an index file: packs of small files hold thousands of
/// blobs each, an index file is held decoded, encoded and sealed at once
/// while it is written (about 150 bytes a blob), and a reader holds several
/// files decoded while it loads them. A backup's checkpoint closes at the
/// pack that reaches it; prune and `repair index` close a file before the
/// pack that would pass it (a pack that alone holds more gets its own).
const FILE_BLOBS: usize = 65_536;

/// Packs an index file written by prune or `repair index` names at most: at
/// 16 blobs to a pack (1 MiB chunks) as many blobs as [`FILE_BLOBS`].
const FILE_PACKS: usize = 4096;

/// The index files that name `packs`, in order, each within [`FILE_PACKS`]
/// and [`FILE_BLOBS`].
pub fn index_files(packs: impl IntoIterator<Item = IndexedPack>) -> Vec<IndexFile> {
    let mut files = Vec::new();
    let mut open = Unindexed::default();
    for pack in packs {
        if !open.is_empty() && (open.packs.len() >= FILE_PACKS || open.blobs + pack.entries.len() > FILE_BLOBS) {
            files.push(open.take());
        }
        open.push(pack);
    }
    if !open.is_empty() {
        files.push(open.take());
    }
    files
}

/// Packs a writer has stored and no index file names yet.
#[derive(Default)]
pub struct Unindexed {
    packs: Vec<IndexedPack>,
    blobs: usize,
}

impl Unindexed {
    pub fn push(&mut self, pack: IndexedPack) {
        self.blobs += pack.entries.len();
        self.packs.push(pack);
    }

    /// Whether an index file should name them now.
    pub fn due(&self) -> bool {
        self.packs.len() >= CHECKPOINT_PACKS || self.blobs >= FILE_BLOBS
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// The index file that names them all, leaving none.
    pub fn take(&mut self) -> IndexFile {
        self.blobs = 0;
        IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut self.packs) }
    }
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out = Vec::with_capacity(12 + self.supersedes.len() * 32 + self.packs.len() * 44 + blobs * ENTRY_LEN);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(p.id.as_bytes());
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
            for e in &p.entries {
                e.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(file_id: &Id, b: &[u8]) -> Result<IndexFile> {
        let raw = RawIndexFile::parse(file_id, b)?;
        let packs = raw.packs.iter().map(|p| IndexedPack { id: p.id, size: p.size, entries: p.entries().collect() }).collect();
        Ok(IndexFile { supersedes: raw.supersedes, packs })
    }
}

/// An index file checked but not decoded: its entries are read straight
/// from the file's bytes, so loading the index never holds them twice.
pub struct RawIndexFile<'a> {
    pub supersedes: Vec<Id>,
    pub packs: Vec<RawPack<'a>>,
}

pub struct RawPack<'a> {
    pub id: Id,
    pub size: u64,
    entries: &'a [u8],
}

impl RawPack<'_> {
    pub fn len(&self) -> usize {
        self.entries.len() / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = PackEntry> + '_ {
        self.entries.chunks_exact(ENTRY_LEN).map(|c| PackEntry::decode(c).expect("checked by parse"))
    }
}

impl<'a> RawIndexFile<'a> {
    pub fn parse(file_id: &'a Id, b: &'a [u8]) -> Result<RawIndexFile<'a>> {
        let mut r = Reader { b, pos: 0, id: file_id };
        if r.u32()? != INDEX_VERSION {
            return Err(Error::corrupt("index", file_id, "unknown index version"));
        }
        let n = r.u32()? as usize;
        let supersedes = (0..n).map(|_| r.id()).collect::<Result<_>>()?;
        let n = r.u32()? as usize;
        let mut packs = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let id = r.id()?;
            let size = u64::from(r.u32()?) | (u64::from(r.u32()?) << 32);
            let count = r.u32()? as usize;
            let entries = r.take(count.checked_mul(ENTRY_LEN).ok_or_else(|| r.bad())?)?;
            if entries.chunks_exact(ENTRY_LEN).any(|c| PackEntry::decode(c).is_none()) {
                return Err(r.bad());
            }
            packs.push(RawPack { id, size, entries });
        }
        if r.pos != b.len() {
            return Err(r.bad());
        }
        Ok(RawIndexFile { supersedes, packs })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    id: &'a Id,
}

impl<'a> Reader<'a> {
    fn bad(&self) -> Error {
        Error::corrupt("index", self.id, "it is malformed")
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| self.bad())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn id(&mut self) -> Result<Id> {
        Ok(Id::from_slice(self.take(32)?).expect("32 bytes"))
    }
}

/// What one index file holds, without its entries.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub id: Id,
    pub supersedes: Vec<Id>,
    /// Each pack listed that the index kept, by its number there, with the
    /// file's entry count for it: 8 bytes a pack where the id took 36.
    pub packs: Vec<(u32, u32)>,
}

/// Builds an [`Index`] from index files one at a time, each dropped once
/// added. Whether a file is superseded is known only when all are read, so
/// every file's entries go in and those of packs only superseded files list
/// come out in [`IndexBuilder::finish`], before duplicates are resolved.
#[derive(Default)]
pub struct IndexBuilder {
    index: Index,
    files: Vec<FileSummary>,
}

impl IndexBuilder {
    /// Add the index file `id` with plaintext `plain`; a malformed one adds
    /// nothing.
    pub fn add_file(&mut self, id: Id, plain: &[u8]) -> Result<()> {
        let raw = RawIndexFile::parse(&id, plain)?;
        let mut summary = FileSummary { id, supersedes: raw.supersedes, packs: Vec::with_capacity(raw.packs.len()) };
        for p in &raw.packs {
            let num = self.index.add_pack(p.id, p.size, p.entries());
            summary.packs.push((num, p.len() as u32));
        }
        self.files.push(summary);
        Ok(())
    }

    /// The index of the files no other file supersedes, without the packs
    /// in `without`, sealed; and what every file held.
    pub fn finish(self, without: &IdSet) -> (Index, Vec<FileSummary>) {
        let IndexBuilder { mut index, mut files } = self;
        let superseded: IdSet = files.iter().flat_map(|f| f.supersedes.iter().copied()).collect();
        // Nothing to take out, the usual case: every pack stays with the
        // entries `add_file` counted, and no per-pack table is built beside
        // the index (at 16 blobs a pack, 9 bytes a pack are half a byte a
        // blob of a loading peak).
        if superseded.is_empty() && without.is_empty() {
            index.seal();
            return (index, files);
        }
        let mut keep = vec![false; index.pack_count()];
        let mut entries = vec![0u32; index.pack_count()];
        let wanted = |num: u32| without.is_empty() || !without.contains(&index.pack_id(num));
        for f in files.iter().filter(|f| !superseded.contains(&f.id)) {
            for &(num, n) in f.packs.iter().filter(|(num, _)| wanted(*num)) {
                keep[num as usize] = true;
                entries[num as usize] += n;
            }
        }
        let renum = index.retain_packs(&keep, &entries);
        for f in &mut files {
            f.packs.retain_mut(|(num, _)| {
                *num = renum[*num as usize];
                *num != u32::MAX
            });
        }
        index.seal();
        (index, files)
    }
}

/// Build the repository index from decoded index files, skipping superseded
/// ones and the packs in `without`.
pub fn merge(files: &[(Id, IndexFile)], without: &IdSet) -> Index {
    let mut b = IndexBuilder::default();
    for (id, f) in files {
        b.add_file(*id, &f.encode()).expect("an encoded index file parses");
    }
    b.finish(without).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::BlobKind;

    #[test]
    fn encode_decode_and_supersede() {
        let e = PackEntry { kind: BlobKind::Tree, flags: 1, id: Id([9; 32]), offset: 0, length: 40, raw_length: 100 };
        let a = IndexFile { supersedes: vec![], packs: vec![IndexedPack { id: Id([1; 32]), size: 5 << 32, entries: vec![e] }] };
        let enc = a.encode();
        assert_eq!(IndexFile::decode(&Id([0; 32]), &enc).unwrap(), a);
        assert!(IndexFile::decode(&Id([0; 32]), &enc[..enc.len() - 1]).is_err());
        let b = IndexFile { supersedes: vec![Id([2; 32])], packs: vec![] };
        let idx = merge(&[(Id([2; 32]), a.clone()), (Id([3; 32]), b)], &IdSet::default());
        assert!(!idx.contains(&Id([9; 32])));
        let idx = merge(&[(Id([2; 32]), a.clone())], &IdSet::default());
        assert_eq!(idx.get(&Id([9; 32])).unwrap(), (Id([1; 32]), e));
        let idx = merge(&[(Id([2; 32]), a)], &[Id([1; 32])].into_iter().collect());
        assert!(!idx.contains(&Id([9; 32])));
        let idx = merge(&[(Id([2; 32]), IndexFile::default())], &IdSet::default());
        assert_eq!(idx.blob_count(), 0);
    }

    /// Pack `n` with `blobs` entries (all of one blob: only counts matter).
    fn blobs_in(n: u8, blobs: usize) -> IndexedPack {
        pack(n, 1, BlobKind::Data, &vec![(n, 0); blobs])
    }

    /// An index file is due every 32 packs, or sooner once the packs hold
    /// 65,536 blobs; taking it leaves nothing pending.
    #[test]
    fn an_index_checkpoint_is_due_by_packs_or_by_blobs() {
        let mut few = Unindexed::default();
        for n in 0..31 {
            few.push(blobs_in(n, 1));
        }
        assert!(!few.due());
        few.push(blobs_in(31, 1));
        assert!(few.due());
        assert_eq!(few.take().packs.len(), 32);
        assert!(few.is_empty() && !few.due());
        let mut many = Unindexed::default();
        many.push(blobs_in(1, 40_000));
        assert!(!many.due());
        many.push(blobs_in(2, 25_536));
        assert!(many.due());
        assert_eq!(many.take().packs.iter().map(|p| p.entries.len()).sum::<usize>(), 65_536);
        many.push(blobs_in(3, 1));
        assert!(!many.due(), "the count starts again");
    }

    /// Prune and repair split their packs by count and by blobs: no file
    /// passes either bound unless one pack alone does, and every pack is
    /// named once, in order.
    #[test]
    fn index_files_are_bounded_by_packs_and_by_blobs() {
        let shape = |files: &[IndexFile]| files.iter().map(|f| f.packs.iter().map(|p| p.id.0[0]).collect()).collect::<Vec<Vec<u8>>>();
        let many = index_files((0..=FILE_PACKS).map(|n| blobs_in(n as u8, 1)));
        assert_eq!(many.iter().map(|f| f.packs.len()).collect::<Vec<_>>(), [FILE_PACKS, 1]);
        let big = index_files([blobs_in(0, 30_000), blobs_in(1, 35_536), blobs_in(2, 1), blobs_in(3, 100_000), blobs_in(4, 1)]);
        assert_eq!(shape(&big), [vec![0, 1], vec![2], vec![3], vec![4]]);
        assert!(index_files(Vec::new()).is_empty());
    }

    /// A blob in a pack only a superseded file lists is found where the
    /// superseding file puts it, whichever file is read first.
    #[test]
    fn builder_drops_superseded_packs_in_any_order() {
        let blob = Id([9; 32]);
        let e = |offset| PackEntry { kind: BlobKind::Data, flags: 0, id: blob, offset, length: 4, raw_length: 4 };
        let old = IndexFile { supersedes: vec![], packs: vec![IndexedPack { id: Id([1; 32]), size: 10, entries: vec![e(1)] }] };
        let new = IndexFile { supersedes: vec![Id([2; 32])], packs: vec![IndexedPack { id: Id([4; 32]), size: 20, entries: vec![e(2)] }] };
        for order in [[(Id([2; 32]), &old), (Id([3; 32]), &new)], [(Id([3; 32]), &new), (Id([2; 32]), &old)]] {
            let mut b = IndexBuilder::default();
            for (id, f) in order {
                b.add_file(id, &f.encode()).unwrap();
            }
            let (idx, files) = b.finish(&IdSet::default());
            assert_eq!(idx.get(&blob).map(|(p, e)| (p, e.offset)), Some((Id([4; 32]), 2)));
            assert_eq!(idx.packs().collect::<Vec<_>>(), vec![(Id([4; 32]), 20)]);
            assert_eq!(idx.pack_usage().map(|u| u.entries).collect::<Vec<_>>(), vec![1]);
            assert_eq!(files.len(), 2);
        }
        let mut b = IndexBuilder::default();
        assert!(b.add_file(Id([5; 32]), &old.encode()[..20]).is_err());
        b.add_file(Id([2; 32]), &old.encode()).unwrap();
        assert_eq!(b.finish(&[Id([1; 32])].into_iter().collect()).0.blob_count(), 0);
    }

    fn pack(id: u8, size: u64, kind: BlobKind, blobs: &[(u8, u32)]) -> IndexedPack {
        let entries =
            blobs.iter().map(|&(b, offset)| PackEntry { kind, flags: 0, id: Id([b; 32]), offset, length: 8, raw_length: 9 }).collect();
        IndexedPack { id: Id([id; 32]), size, entries }
    }

    /// Three live files: data and tree packs, a blob stored in two packs,
    /// a pack of no entries, one of 4 GiB or more, and pack 1 listed by two
    /// files with the same entries (what a prune that died before its
    /// superseding file leaves).
    fn live_files() -> Vec<(Id, IndexFile)> {
        let (data, tree) = (BlobKind::Data, BlobKind::Tree);
        let file = |packs| IndexFile { supersedes: vec![], packs };
        let p1 = pack(1, 100, data, &[(11, 0), (12, 10), (13, 20)]);
        vec![
            (Id([101; 32]), file(vec![p1.clone(), pack(2, 200, tree, &[(21, 0), (22, 10)]), pack(3, 30, data, &[])])),
            (Id([102; 32]), file(vec![pack(4, 400, data, &[(12, 30), (14, 40)]), pack(5, 5 << 32, tree, &[(21, 50), (23, 60)])])),
            (Id([103; 32]), file(vec![pack(6, 600, tree, &[(22, 70), (24, 80)]), p1])),
        ]
    }

    /// Packs by their ids' byte, with their sizes.
    fn sized(packs: &[(u8, u64)]) -> Vec<(Id, u64)> {
        packs.iter().map(|&(p, size)| (Id([p; 32]), size)).collect()
    }

    /// Every blob the files name: 1x data, 2x trees, 99 none.
    const BLOBS: [u8; 9] = [11, 12, 13, 14, 21, 22, 23, 24, 99];

    /// Everything `finish` yields, by pack and blob ids: each blob's place,
    /// the packs, their usage, the blob count and each file's packs.
    type Outcome = (Vec<Option<(Id, PackEntry)>>, Vec<(Id, u64)>, Vec<(u32, bool, u64)>, usize, Vec<(Id, Vec<Id>, Vec<(Id, u32)>)>);

    fn builder(files: &[(Id, IndexFile)]) -> IndexBuilder {
        let mut b = IndexBuilder::default();
        for (id, f) in files {
            b.add_file(*id, &f.encode()).unwrap();
        }
        b
    }

    fn finished(files: &[(Id, IndexFile)], without: &IdSet) -> Outcome {
        let (mut idx, summaries) = builder(files).finish(without);
        // Marks make `pack_usage` count bytes: a blob of two packs counts
        // in the one that wins.
        for blob in [12, 22] {
            idx.mark_used(&Id([blob; 32]));
        }
        let summaries = summaries
            .into_iter()
            .map(|f| (f.id, f.supersedes, f.packs.iter().map(|&(n, count)| (idx.pack_id(n), count)).collect()))
            .collect();
        (
            BLOBS.iter().map(|&b| idx.get(&Id([b; 32]))).collect(),
            idx.packs().collect(),
            idx.pack_usage().map(|u| (u.entries, u.used, u.used_bytes)).collect(),
            idx.blob_count(),
            summaries,
        )
    }

    /// With nothing to drop, the path that renumbers packs (forced by a
    /// `without` naming a pack no file lists) yields what sealing the
    /// loaded index as it is yields.
    #[test]
    fn finish_renumbering_nothing_equals_sealing_as_loaded() {
        let files = live_files();
        let fast = finished(&files, &IdSet::default());
        let slow = finished(&files, &[Id([77; 32])].into_iter().collect());
        assert_eq!(slow, fast);
        // And what both yield is the files' content.
        let (data, tree) = (BlobKind::Data, BlobKind::Tree);
        let at = |p: u8, kind, b: u8, offset| Some((Id([p; 32]), pack(p, 0, kind, &[(b, offset)]).entries[0]));
        let places = vec![
            at(1, data, 11, 0),
            at(1, data, 12, 10),
            at(1, data, 13, 20),
            at(4, data, 14, 40),
            at(2, tree, 21, 0),
            at(2, tree, 22, 10),
            at(5, tree, 23, 60),
            at(6, tree, 24, 80),
            None,
        ];
        assert_eq!(fast.0, places);
        assert_eq!(fast.1, sized(&[(1, 100), (2, 200), (3, 30), (4, 400), (5, 5 << 32), (6, 600)]));
        assert_eq!(fast.2, vec![(6, true, 8), (2, true, 8), (0, false, 0), (2, false, 0), (2, false, 0), (2, false, 0)]);
        assert_eq!(fast.3, 8);
        let listed = |f: u8, packs: &[(u8, u32)]| (Id([f; 32]), vec![], packs.iter().map(|&(p, n)| (Id([p; 32]), n)).collect::<Vec<_>>());
        assert_eq!(fast.4, vec![listed(101, &[(1, 3), (2, 2), (3, 0)]), listed(102, &[(4, 2), (5, 2)]), listed(103, &[(6, 2), (1, 3)])]);
    }

    /// Dropping pack 2 (by `without`) and packs 4 and 5 (their only file
    /// superseded) closes the numbers up: each file's summary keeps the
    /// packs left, under their new numbers, and every lookup finds the pack
    /// that really holds the blob.
    #[test]
    fn finish_drops_packs_from_the_middle_and_renumbers() {
        let mut files = live_files();
        let successor = IndexFile { supersedes: vec![Id([102; 32])], packs: vec![pack(7, 700, BlobKind::Data, &[(14, 90)])] };
        files.push((Id([104; 32]), successor));
        let (idx, summaries) = builder(&files).finish(&[Id([2; 32])].into_iter().collect());
        assert_eq!(idx.packs().collect::<Vec<_>>(), sized(&[(1, 100), (3, 30), (6, 600), (7, 700)]));
        assert_eq!(idx.pack_usage().map(|u| u.entries).collect::<Vec<_>>(), vec![6, 0, 2, 1]);
        let nums = summaries.iter().map(|f| (f.id, f.packs.clone())).collect::<Vec<_>>();
        let expected = [(101, vec![(0, 3), (1, 0)]), (102, vec![]), (103, vec![(2, 2), (0, 3)]), (104, vec![(3, 1)])];
        assert_eq!(nums, expected.map(|(f, packs)| (Id([f; 32]), packs)));
        let places = BLOBS.iter().map(|&b| idx.get(&Id([b; 32])).map(|(p, e)| (p, e.offset))).collect::<Vec<_>>();
        let at = |p: u8, offset| Some((Id([p; 32]), offset));
        assert_eq!(places, vec![at(1, 0), at(1, 10), at(1, 20), at(7, 90), None, at(6, 70), None, at(6, 80), None]);
        assert_eq!(idx.blob_count(), 6);
        assert_eq!(idx.pack_num(&Id([7; 32])), Some(3));
        assert!(!idx.has_pack(&Id([2; 32])) && !idx.has_pack(&Id([5; 32])));
    }
}
