//! The index: which pack holds each blob.
//!
//! Index files are immutable; a repository's index is the union of all of
//! them. A new index file may name older ones it supersedes (prune writes
//! such files); readers then ignore the superseded ones.

mod budget;
mod compact;

pub use budget::{MemoryEstimate, WORKING_SET};
pub use compact::{BlobKey, BlobLoc, Index, PackUsage};

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
}
