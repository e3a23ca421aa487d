//! The in-memory index: one 36-byte slot per blob in a sorted array.
//!
//! A slot keys its blob by the first 16 bytes of the id. Ids are BLAKE3
//! keyed with a repository secret, so two different blobs share a 128-bit
//! prefix with probability n²/2¹²⁹ (1.5·10⁻²³ at 10⁸ blobs), and nobody
//! without the key can make them; docs/ARCHITECTURE.md §"Index memory"
//! weighs that against hardware error rates. Every read still verifies the
//! full id of what it decrypts.

use std::borrow::Borrow;

use hashbrown::HashTable;

use crate::Id;
use crate::id::IdMap;
use crate::pack::{BlobKind, PackEntry};

/// The part of a blob id the index keys by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobKey(pub [u8; 16]);

impl BlobKey {
    pub fn of(id: &Id) -> BlobKey {
        BlobKey(id.0[..16].try_into().expect("16 bytes"))
    }
}

/// Blobs by the index's key.
pub type KeySet = std::collections::HashSet<BlobKey, crate::IdBuildHasher>;

/// A blob's place.
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

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: BlobKey,
    loc: BlobLoc,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 36);

/// Which pack holds each blob. Slots are appended unsorted by
/// [`Index::add_pack`] and sorted by [`Index::seal`]; lookups binary-search
/// the sorted part and scan the rest, so an index is always correct and is
/// fast once sealed. Of duplicates, the blob in the pack added first wins.
#[derive(Default)]
pub struct Index {
    packs: Vec<Id>,
    /// A pack's size; [`BIG_PACK`] for one of 4 GiB or more, whose size is
    /// in `big_pack_sizes`. Packs stay below 4 GiB (docs/FORMAT.md, their
    /// offsets are u32), but an index file may say otherwise and `check`
    /// must compare what it says.
    pack_sizes: Vec<u32>,
    big_pack_sizes: IdMap<u64>,
    /// Entries each pack holds, duplicates of blobs stored elsewhere included.
    pack_entries: Vec<u32>,
    /// Pack numbers, hashed and compared through the ids in `packs`: a
    /// bucket is the number and a control byte, 5 bytes where a map keyed by
    /// the id's first 8 bytes took 17 (at the 16 blobs a default pack holds,
    /// about 1.5 bytes a blob less).
    pack_nums: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots `..sorted` are sorted by key and unique.
    sorted: usize,
}

impl Index {
    pub fn add_pack<E: Borrow<PackEntry>>(&mut self, pack: Id, size: u64, entries: impl IntoIterator<Item = E>) -> u32 {
        let num = match self.pack_num(&pack) {
            Some(n) => n,
            None => {
                self.packs.push(pack);
                self.pack_sizes.push(u32::try_from(size).unwrap_or(BIG_PACK));
                if size >= u64::from(BIG_PACK) {
                    self.big_pack_sizes.insert(pack, size);
                }
                self.pack_entries.push(0);
                let n = (self.packs.len() - 1) as u32;
                self.number(n);
                n
            }
        };
        let before = self.slots.len();
        self.slots.extend(entries.into_iter().map(|e| {
            let e = e.borrow();
            Slot {
                key: BlobKey::of(&e.id),
                loc: BlobLoc {
                    pack: num,
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                    kind: e.kind,
                    flags: e.flags,
                    used: false,
                },
            }
        }));
        self.pack_entries[num as usize] += (self.slots.len() - before) as u32;
        num
    }

    /// Sort the slots and drop duplicates (keeping the earliest pack's, and
    /// any reachability mark): lookups are binary searches from here on.
    pub fn seal(&mut self) {
        if self.sorted == self.slots.len() {
            return;
        }
        // Pack numbers follow the order packs were added in, so ordering
        // equal keys by pack puts the one added first in front.
        self.slots.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.loc.pack.cmp(&b.loc.pack)));
        self.slots.dedup_by(|later, first| {
            let same = later.key == first.key;
            if same {
                first.loc.used |= later.loc.used;
            }
            same
        });
        self.slots.shrink_to_fit();
        self.sorted = self.slots.len();
    }

    fn find(&self, id: &Id) -> Option<usize> {
        let key = BlobKey::of(id);
        match self.slots[..self.sorted].binary_search_by(|s| s.key.cmp(&key)) {
            Ok(i) => Some(i),
            Err(_) => self.slots[self.sorted..].iter().position(|s| s.key == key).map(|i| i + self.sorted),
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    /// Where `id` is stored. The entry carries the id asked for: reading it
    /// back verifies that id against what the pack holds.
    pub fn get(&self, id: &Id) -> Option<(Id, PackEntry)> {
        let l = self.slots[self.find(id)?].loc;
        Some((
            self.packs[l.pack as usize],
            PackEntry { kind: l.kind, flags: l.flags, id: *id, offset: l.offset, length: l.length, raw_length: l.raw_length },
        ))
    }

    pub fn pack_of(&self, id: &Id) -> Option<Id> {
        self.find(id).map(|i| self.packs[self.slots[i].loc.pack as usize])
    }

    /// Blobs indexed (after [`Index::seal`]: distinct blobs).
    pub fn blob_count(&self) -> usize {
        self.slots.len()
    }

    pub fn packs(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        (0..self.packs.len() as u32).map(|n| (self.packs[n as usize], self.pack_size(n)))
    }

    /// The size the index files give pack number `num`.
    pub fn pack_size(&self, num: u32) -> u64 {
        match self.pack_sizes[num as usize] {
            BIG_PACK => self.big_pack_sizes[&self.packs[num as usize]],
            size => u64::from(size),
        }
    }

    /// The id of pack number `num`.
    pub fn pack_id(&self, num: u32) -> Id {
        self.packs[num as usize]
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_num(id).is_some()
    }

    /// A pack's number: its place in [`Index::packs`].
    pub fn pack_num(&self, id: &Id) -> Option<u32> {
        self.pack_nums.find(pack_hash(id), |&n| self.packs[n as usize] == *id).copied()
    }

    /// Enter pack number `n`, not yet in the table.
    fn number(&mut self, n: u32) {
        let packs = &self.packs;
        self.pack_nums.insert_unique(pack_hash(&packs[n as usize]), n, |&m| pack_hash(&packs[m as usize]));
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Mark a blob reachable; whether it already was, `None` if unknown.
    pub fn mark_used(&mut self, id: &Id) -> Option<bool> {
        let i = self.find(id)?;
        Some(std::mem::replace(&mut self.slots[i].loc.used, true))
    }

    /// Whether `id` is marked reachable and located in `pack`: the blobs a
    /// repack of `pack` must keep.
    pub fn used_in_pack(&self, id: &Id, pack: &Id) -> bool {
        self.find(id).is_some_and(|i| self.slots[i].loc.used && self.packs[self.slots[i].loc.pack as usize] == *pack)
    }

    /// Per pack, in [`Index::packs`] order: entries stored and the bytes of
    /// the reachable blobs this index locates there. Built from 4 bytes a
    /// pack (a quarter of a byte a blob at the 16 a default pack holds), not
    /// a struct of counts per pack.
    pub fn pack_usage(&self) -> impl Iterator<Item = PackUsage> + '_ {
        let mut bytes = vec![0u32; self.packs.len()];
        for l in self.slots.iter().map(|s| &s.loc).filter(|l| l.used) {
            // A pack's blobs do not overlap and it stays below 4 GiB, so
            // only an index file that lies saturates; `max(1)` keeps a
            // (malformed) empty used blob counted as used.
            let b = &mut bytes[l.pack as usize];
            *b = b.saturating_add(l.length.max(1));
        }
        self.pack_entries.iter().zip(bytes).map(|(&entries, b)| PackUsage { entries, used: b > 0, used_bytes: u64::from(b) })
    }

    /// Blobs marked reachable.
    pub fn used_blob_count(&self) -> usize {
        self.slots.iter().filter(|s| s.loc.used).count()
    }

    /// Every blob: its key, its pack and its place there.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobKey, Id, BlobLoc)> + '_ {
        self.slots.iter().map(|s| (s.key, self.packs[s.loc.pack as usize], s.loc))
    }

    /// Keep the packs `keep` says, with `entries` as their entry counts,
    /// numbered anew; each old number's new one (`u32::MAX` for a pack gone).
    pub(super) fn retain_packs(&mut self, keep: &[bool], entries: &[u32]) -> Vec<u32> {
        let mut renum = vec![u32::MAX; self.packs.len()];
        let mut next = 0usize;
        for (old, &k) in keep.iter().enumerate() {
            if k {
                renum[old] = next as u32;
                self.packs[next] = self.packs[old];
                self.pack_sizes[next] = self.pack_sizes[old];
                self.pack_entries[next] = entries[old];
                next += 1;
            }
        }
        self.packs.truncate(next);
        self.pack_sizes.truncate(next);
        self.pack_entries.truncate(next);
        // Cleared, not replaced: a new map beside the old one would be, for
        // a moment, a second map of every pack.
        self.pack_nums.clear();
        for n in 0..next {
            self.number(n as u32);
        }
        let mut big = std::mem::take(&mut self.big_pack_sizes);
        big.retain(|id, _| self.has_pack(id));
        self.big_pack_sizes = big;
        let sorted = self.sorted;
        let mut kept_sorted = 0;
        let mut i = 0;
        self.slots.retain_mut(|s| {
            let n = renum[s.loc.pack as usize];
            let keep = n != u32::MAX;
            s.loc.pack = n;
            kept_sorted += usize::from(keep && i < sorted);
            i += 1;
            keep
        });
        self.sorted = kept_sorted;
        renum
    }
}

/// A pack id's hash: its first 8 bytes, already random (a keyed BLAKE3).
fn pack_hash(id: &Id) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// What `pack_sizes` holds for a pack of 4 GiB or more.
const BIG_PACK: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, Default)]
pub struct PackUsage {
    pub entries: u32,
    /// Whether any blob located there is reachable.
    pub used: bool,
    pub used_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: Id, offset: u32) -> PackEntry {
        PackEntry { kind: BlobKind::Data, flags: 0, id, offset, length: 10, raw_length: 7 }
    }

    /// An id whose first 16 bytes are `prefix` and last byte `tail`.
    fn id(prefix: u8, tail: u8) -> Id {
        let mut b = [prefix; 32];
        b[31] = tail;
        Id(b)
    }

    #[test]
    fn lookups_before_and_after_sealing() {
        let mut idx = Index::default();
        let ids: Vec<Id> = (0..200u8).rev().map(|i| id(i, i)).collect();
        idx.add_pack(Id([1; 32]), 100, ids[..100].iter().enumerate().map(|(n, i)| entry(*i, n as u32)));
        idx.add_pack(Id([2; 32]), 200, ids[100..].iter().enumerate().map(|(n, i)| entry(*i, n as u32)));
        let check = |idx: &Index| {
            for (n, i) in ids.iter().enumerate() {
                let (pack, e) = idx.get(i).expect("indexed");
                assert_eq!((pack, e.offset, e.id), (Id([1 + (n / 100) as u8; 32]), (n % 100) as u32, *i));
            }
            assert!(!idx.contains(&id(250, 250)));
        };
        check(&idx);
        idx.seal();
        check(&idx);
        assert_eq!(idx.blob_count(), 200);
        assert_eq!(idx.packs().collect::<Vec<_>>(), vec![(Id([1; 32]), 100), (Id([2; 32]), 200)]);
    }

    #[test]
    fn absent_ids_and_prefix_neighbours() {
        let mut idx = Index::default();
        idx.add_pack(Id([1; 32]), 1, [entry(id(5, 0), 0), entry(id(7, 0), 1)]);
        idx.seal();
        for absent in [id(4, 0), id(6, 0), id(8, 0), Id([0; 32]), Id([255; 32])] {
            assert!(!idx.contains(&absent));
            assert_eq!(idx.get(&absent), None);
            assert_eq!(idx.pack_of(&absent), None);
        }
        // The ids differ past the 16 bytes the index keys by: a neighbour
        // one bit away in the key is another blob, one past it the same.
        let mut near = id(5, 0);
        near.0[15] ^= 1;
        assert!(!idx.contains(&near));
        assert_eq!(idx.get(&id(5, 9)).map(|(_, e)| (e.offset, e.id)), Some((0, id(5, 9))));
    }

    #[test]
    fn duplicates_across_packs_keep_the_first_and_its_mark() {
        let mut idx = Index::default();
        idx.add_pack(Id([1; 32]), 1, [entry(id(3, 0), 11)]);
        idx.add_pack(Id([2; 32]), 1, [entry(id(3, 0), 22), entry(id(4, 0), 33)]);
        assert_eq!(idx.mark_used(&id(3, 0)), Some(false));
        assert_eq!(idx.mark_used(&id(3, 0)), Some(true));
        idx.add_pack(Id([3; 32]), 1, [entry(id(3, 0), 44)]);
        idx.seal();
        assert_eq!(idx.blob_count(), 2);
        assert_eq!(idx.get(&id(3, 0)).map(|(p, e)| (p, e.offset)), Some((Id([1; 32]), 11)));
        assert_eq!(idx.mark_used(&id(3, 0)), Some(true));
        assert!(idx.used_in_pack(&id(3, 0), &Id([1; 32])));
        assert!(!idx.used_in_pack(&id(3, 0), &Id([2; 32])));
        assert!(!idx.used_in_pack(&id(4, 0), &Id([2; 32])));
        assert_eq!(
            idx.pack_usage().map(|u| (u.entries, u.used, u.used_bytes)).collect::<Vec<_>>(),
            vec![(1, true, 10), (2, false, 0), (1, false, 0)]
        );
        assert_eq!(idx.used_blob_count(), 1);
    }

    /// Packs whose ids share their first 8 bytes keep their own numbers,
    /// before and after the numbers close up.
    #[test]
    fn packs_sharing_a_prefix_stay_apart() {
        let mut idx = Index::default();
        let pack = |tail: u8| {
            let mut p = [7u8; 32];
            p[31] = tail;
            Id(p)
        };
        idx.add_pack(pack(1), 10, [entry(id(1, 0), 1)]);
        idx.add_pack(pack(2), 20, [entry(id(2, 0), 2)]);
        idx.add_pack(pack(3), 30, [entry(id(3, 0), 3)]);
        idx.add_pack(pack(2), 20, [entry(id(4, 0), 4)]);
        assert_eq!((idx.pack_num(&pack(1)), idx.pack_num(&pack(2)), idx.pack_num(&pack(3))), (Some(0), Some(1), Some(2)));
        assert_eq!(idx.pack_num(&pack(4)), None);
        idx.retain_packs(&[false, true, true], &[0, 2, 1]);
        idx.seal();
        assert_eq!((idx.pack_num(&pack(1)), idx.pack_num(&pack(2)), idx.pack_num(&pack(3))), (None, Some(0), Some(1)));
        assert_eq!(idx.pack_of(&id(4, 0)), Some(pack(2)));
        assert_eq!(idx.pack_of(&id(3, 0)), Some(pack(3)));
    }

    /// A size of 4 GiB or more (a damaged index file's) is kept whole for
    /// `check` to report, through the numbers closing up.
    #[test]
    fn pack_sizes_past_u32_are_kept_whole() {
        let mut idx = Index::default();
        let sizes = [u64::from(u32::MAX) - 1, u64::from(u32::MAX), 5 << 32, 7];
        for (n, &size) in sizes.iter().enumerate() {
            idx.add_pack(Id([n as u8 + 1; 32]), size, [entry(id(n as u8, 0), 0)]);
        }
        let sized = |s: &[u64]| s.iter().enumerate().map(|(n, &s)| (Id([n as u8 + 1; 32]), s)).collect::<Vec<_>>();
        assert_eq!(idx.packs().collect::<Vec<_>>(), sized(&sizes));
        idx.retain_packs(&[true, false, true, true], &[1, 0, 1, 1]);
        let kept = [(Id([1; 32]), sizes[0]), (Id([3; 32]), 5 << 32), (Id([4; 32]), 7)];
        assert_eq!(idx.packs().collect::<Vec<_>>(), kept);
        assert_eq!(idx.big_pack_sizes.len(), 1);
    }

    #[test]
    fn retained_packs_close_up() {
        let mut idx = Index::default();
        idx.add_pack(Id([1; 32]), 1, [entry(id(3, 0), 1)]);
        idx.add_pack(Id([2; 32]), 2, [entry(id(3, 0), 2), entry(id(4, 0), 3)]);
        idx.add_pack(Id([3; 32]), 3, [entry(id(5, 0), 4)]);
        idx.retain_packs(&[false, true, true], &[0, 2, 1]);
        idx.seal();
        assert_eq!(idx.packs().collect::<Vec<_>>(), vec![(Id([2; 32]), 2), (Id([3; 32]), 3)]);
        assert!(!idx.has_pack(&Id([1; 32])));
        assert_eq!(idx.get(&id(3, 0)).map(|(p, e)| (p, e.offset)), Some((Id([2; 32]), 2)));
        assert_eq!(idx.pack_of(&id(5, 0)), Some(Id([3; 32])));
        assert_eq!(idx.blob_count(), 3);
    }
}
