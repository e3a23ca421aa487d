//! The index: which pack holds each blob.
//!
//! Index files are immutable; a repository's index is the union of all of
//! them. A new index file may name older ones it supersedes (prune writes
//! such files); readers then ignore the superseded ones.

use crate::id::{IdMap, IdSet};
use crate::pack::{BlobKind, ENTRY_LEN, PackEntry};
use crate::{Error, Id, Result};

/// A blob's place, kept compact: this struct is the bulk of the engine's
/// memory on large repositories (see docs/ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub kind: BlobKind,
    pub flags: u8,
    /// Reachability mark for prune; sits in what would be padding.
    pub used: bool,
}

#[derive(Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_sizes: Vec<u64>,
    /// Entries each pack holds, duplicates of blobs stored elsewhere included.
    pack_entries: Vec<u32>,
    pack_nums: IdMap<u32>,
    blobs: IdMap<BlobLoc>,
}

impl Index {
    pub fn add_pack(&mut self, pack: Id, size: u64, entries: &[PackEntry]) {
        let num = *self.pack_nums.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            self.pack_sizes.push(size);
            self.pack_entries.push(0);
            (self.packs.len() - 1) as u32
        });
        self.pack_entries[num as usize] += entries.len() as u32;
        for e in entries {
            self.blobs.entry(e.id).or_insert(BlobLoc {
                pack: num,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                kind: e.kind,
                flags: e.flags,
                used: false,
            });
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &Id) -> Option<(Id, PackEntry)> {
        let l = self.blobs.get(id)?;
        Some((
            self.packs[l.pack as usize],
            PackEntry { kind: l.kind, flags: l.flags, id: *id, offset: l.offset, length: l.length, raw_length: l.raw_length },
        ))
    }

    pub fn pack_of(&self, id: &Id) -> Option<Id> {
        self.blobs.get(id).map(|l| self.packs[l.pack as usize])
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn packs(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        self.packs.iter().copied().zip(self.pack_sizes.iter().copied())
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_nums.contains_key(id)
    }

    /// Mark a blob reachable; whether it already was, `None` if unknown.
    pub fn mark_used(&mut self, id: &Id) -> Option<bool> {
        let l = self.blobs.get_mut(id)?;
        Some(std::mem::replace(&mut l.used, true))
    }

    /// Per pack, in [`Index::packs`] order: entries stored and the bytes of
    /// the reachable blobs this index locates there.
    pub fn pack_usage(&self) -> Vec<PackUsage> {
        let mut out: Vec<PackUsage> = self.pack_entries.iter().map(|&n| PackUsage { entries: n, ..Default::default() }).collect();
        for l in self.blobs.values().filter(|l| l.used) {
            let u = &mut out[l.pack as usize];
            u.used_blobs += 1;
            u.used_bytes += u64::from(l.length);
        }
        out
    }

    /// The reachable blobs located in the given packs.
    pub fn used_in(&self, packs: &IdSet) -> IdMap<Vec<PackEntry>> {
        let mut out: IdMap<Vec<PackEntry>> = IdMap::default();
        for (id, l) in self.blobs.iter().filter(|(_, l)| l.used) {
            let pack = self.packs[l.pack as usize];
            if packs.contains(&pack) {
                let e = PackEntry { kind: l.kind, flags: l.flags, id: *id, offset: l.offset, length: l.length, raw_length: l.raw_length };
                out.entry(pack).or_default().push(e);
            }
        }
        out
    }

    pub fn blobs(&self) -> impl Iterator<Item = (Id, Id, PackEntry)> + '_ {
        self.blobs.keys().map(|id| {
            let (pack, e) = self.get(id).expect("present");
            (*id, pack, e)
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PackUsage {
    pub entries: u32,
    pub used_blobs: u32,
    pub used_bytes: u64,
}

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
        let mut r = Reader { b, pos: 0, id: file_id };
        if r.u32()? != INDEX_VERSION {
            return Err(Error::corrupt("index", file_id, "unknown index version"));
        }
        let n = r.u32()? as usize;
        let supersedes = (0..n).map(|_| r.id()).collect::<Result<_>>()?;
        let n = r.u32()? as usize;
        let mut packs = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let id = r.id()?;
            let size = u64::from(r.u32()?) | (u64::from(r.u32()?) << 32);
            let count = r.u32()? as usize;
            let raw = r.take(count.checked_mul(ENTRY_LEN).ok_or_else(|| r.bad())?)?;
            let entries = raw.chunks_exact(ENTRY_LEN).map(|c| PackEntry::decode(c).ok_or_else(|| r.bad())).collect::<Result<_>>()?;
            packs.push(IndexedPack { id, size, entries });
        }
        if r.pos != b.len() {
            return Err(r.bad());
        }
        Ok(IndexFile { supersedes, packs })
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

/// Build the repository index from index files, skipping superseded ones
/// and the packs in `without`.
pub fn merge(files: &[(Id, IndexFile)], without: &IdSet) -> Index {
    let superseded: IdSet = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let mut index = Index::default();
    for (id, f) in files {
        if superseded.contains(id) {
            continue;
        }
        for p in f.packs.iter().filter(|p| !without.contains(&p.id)) {
            index.add_pack(p.id, p.size, &p.entries);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
