//! What a prune sees: the index files, the marks, and which blobs the
//! snapshots reach.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::index::{Index, IndexFile};
use crate::objects::{Kind, unless_gone};
use crate::repo::Mark;
use crate::{Error, Id, IdMap, IdSet, Repository, Result};

/// Trees fetched at once while reaching: enough to hide storage latency,
/// few enough that a directory of a million entries is held once.
const PARALLEL_TREES: usize = 16;

/// What reaching needs of a tree: the references, not names or metadata.
#[derive(serde::Deserialize)]
struct TreeRefs {
    nodes: Vec<NodeRefs>,
}

#[derive(serde::Deserialize)]
struct NodeRefs {
    #[serde(default)]
    content: Vec<Id>,
    #[serde(default)]
    subtree: Option<Id>,
}

/// The index file that lists each pack, by the index's pack number, and
/// each live index file's storage time, by the file's place: no map keyed
/// by file ids beside them (docs/ARCHITECTURE.md §9). The index numbers
/// packs in the order files list them, so a file's packs are mostly one
/// run of numbers: a run is 8 bytes where a table by pack number took 4
/// bytes a pack (a quarter of a byte a blob at 16 blobs a pack).
#[derive(Default)]
pub(super) struct PackFiles {
    files: Vec<Id>,
    /// Storage time of each file in `files`; `None` for one a concurrent
    /// prune removed before its time was read.
    times: Vec<Option<DateTime<Utc>>>,
    /// Runs of pack numbers (first number, place in `files`), by first
    /// number: a run ends where the next begins, the last at `next`;
    /// [`PackFiles::NONE`] as the place for numbers no file lists first.
    runs: Vec<(u32, u32)>,
    /// The pack numbers below it are in `runs`.
    next: u32,
    /// Further (pack number, place) pairs, sorted, for a pack more than one
    /// live file lists (a prune that died before its superseding file was
    /// stored leaves such pairs): each of those files must be rewritten when
    /// the pack goes, or one would still list a deleted pack.
    also: Vec<(u32, u32)>,
}

impl PackFiles {
    const NONE: u32 = u32::MAX;

    /// The live index file `file`, stored at `time`, lists the packs
    /// numbered `packs` in the index.
    fn add(&mut self, file: Id, time: Option<DateTime<Utc>>, packs: impl IntoIterator<Item = u32>) {
        let f = self.files.len() as u32;
        self.files.push(file);
        self.times.push(time);
        let before = self.also.len();
        for n in packs {
            if n >= self.next {
                if n > self.next {
                    self.runs.push((self.next, Self::NONE));
                }
                if self.runs.last().is_none_or(|&(_, p)| p != f) {
                    self.runs.push((n, f));
                }
                self.next = n + 1;
            } else if self.first(n) != Some(f) {
                self.also.push((n, f));
            }
        }
        if self.also.len() > before {
            self.also.sort_unstable();
        }
    }

    /// The place of the first file that lists pack number `n`.
    fn first(&self, n: u32) -> Option<u32> {
        if n >= self.next {
            return None;
        }
        let run = self.runs.partition_point(|&(start, _)| start <= n) - 1;
        Some(self.runs[run].1).filter(|&f| f != Self::NONE)
    }

    /// The places of the files that list `pack`.
    fn places(&self, index: &Index, pack: &Id) -> impl Iterator<Item = usize> + '_ {
        let n = index.pack_num(pack);
        let first = n.and_then(|n| self.first(n)).map(|f| f as usize);
        let more = n.map_or(&[][..], |n| {
            let from = self.also.partition_point(|&(m, _)| m < n);
            &self.also[from..from + self.also[from..].partition_point(|&(m, _)| m == n)]
        });
        first.into_iter().chain(more.iter().map(|&(_, f)| f as usize))
    }

    /// When the newest index file that lists `pack` was stored.
    pub fn time(&self, index: &Index, pack: &Id) -> Option<DateTime<Utc>> {
        self.places(index, pack).filter_map(|f| self.times[f]).max()
    }

    pub fn contains(&self, index: &Index, pack: &Id) -> bool {
        self.places(index, pack).next().is_some()
    }

    /// Every pack a live index file lists, with each file that lists it.
    pub fn iter<'a>(&'a self, index: &'a Index) -> impl Iterator<Item = (Id, Id)> + 'a {
        let ends = self.runs.iter().skip(1).map(|&(start, _)| start).chain([self.next]);
        let first = self.runs.iter().zip(ends).filter(|((_, f), _)| *f != Self::NONE);
        let first = first.flat_map(move |(&(start, f), end)| (start..end).map(move |n| (index.pack_id(n), self.files[f as usize])));
        first.chain(self.also.iter().map(|&(n, f)| (index.pack_id(n), self.files[f as usize])))
    }
}

pub(super) struct View {
    /// Index-file packs first, then marked packs: a blob stored in both is
    /// located in the index file's pack.
    pub index: Index,
    /// The index file that lists each indexed pack, and when each live
    /// index file was stored.
    pub pack_file: PackFiles,
    /// Index files already superseded (left behind by a crash).
    pub stale_files: Vec<Id>,
    /// Empty files whose superseded files are all gone: their work is done.
    pub spent_files: Vec<Id>,
    pub marks: Vec<Mark>,
    /// The mark that lists each marked pack not in an index file.
    pub mark_of: IdMap<Id>,
    pub snapshots: IdSet,
    /// While set, the packs holding blobs that become reachable are noted
    /// in `newly_used`: a sweep rescues a marked pack a late snapshot needs.
    pub track: bool,
    pub newly_used: IdSet,
}

impl View {
    /// Snapshots are listed before the index is read: a snapshot is stored
    /// after its index files, so each one listed finds its blobs.
    pub async fn load(repo: &Repository) -> Result<(View, Vec<Id>)> {
        let snapshots = repo.list_ids(Kind::Snapshot).await?;
        let (index, files) = repo.load_index(&IdSet::default()).await?;
        let superseded: IdSet = files.iter().flat_map(|f| f.supersedes.iter().copied()).collect();
        let mut view = View {
            index,
            pack_file: PackFiles::default(),
            stale_files: Vec::new(),
            spent_files: Vec::new(),
            marks: repo.load_marks().await?,
            mark_of: IdMap::default(),
            snapshots: IdSet::default(),
            track: false,
            newly_used: IdSet::default(),
        };
        let present: IdSet = files.iter().map(|f| f.id).collect();
        for f in files {
            if superseded.contains(&f.id) {
                view.stale_files.push(f.id);
                continue;
            }
            if f.packs.is_empty() && !f.supersedes.iter().any(|s| present.contains(s)) {
                view.spent_files.push(f.id);
                continue;
            }
            view.pack_file.add(f.id, None, f.packs.iter().map(|&(n, _)| n));
        }
        view.pack_file.times = file_times(repo, &view.pack_file.files).await?;
        for m in &view.marks {
            for p in &m.file.packs {
                if view.pack_file.contains(&view.index, &p.id) {
                    continue;
                }
                view.index.add_pack(p.id, p.size, &p.entries);
                view.mark_of.insert(p.id, m.id);
            }
        }
        view.index.seal();
        Ok((view, snapshots))
    }

    fn add_file(&mut self, id: Id, f: &IndexFile) {
        let nums: Vec<u32> = f.packs.iter().map(|p| self.index.add_pack(p.id, p.size, &p.entries)).collect();
        self.pack_file.add(id, Some(Utc::now()), nums);
    }

    /// Index files that appeared since the view was loaded (written by
    /// writers that finished meanwhile); their packs join the view, and the
    /// index is sealed again (with the marked packs added before).
    pub async fn add_new_files(&mut self, repo: &Repository, own: &IdSet) -> Result<IdSet> {
        let mut packs = IdSet::default();
        let known: IdSet = self.pack_file.files.iter().chain(&self.stale_files).chain(&self.spent_files).chain(own).copied().collect();
        for id in repo.list_ids(Kind::Index).await? {
            if known.contains(&id) {
                continue;
            }
            // One gone was superseded and removed by a concurrent prune,
            // whose own file lists the same packs.
            let Some(plain) = unless_gone(repo.load_file(Kind::Index, &id).await)? else { continue };
            let f = IndexFile::decode(&id, &plain)?;
            packs.extend(f.packs.iter().map(|p| p.id));
            self.add_file(id, &f);
        }
        self.index.seal();
        Ok(packs)
    }

    /// Mark every blob `snapshot` reaches, walking only trees not reached
    /// before. A blob no index or mark lists stops the prune: deleting
    /// anything on a wrong picture of the repository is how data is lost.
    pub async fn reach(&mut self, repo: &Repository, snapshot: &Id, root: Id) -> Result<()> {
        let missing = |blob: &Id| {
            Error::Invalid(format!(
                "snapshot {} needs blob {} that no index lists; nothing was deleted (run `tresor check`, then `tresor repair index`, or forget it if `tresor repair snapshots` replaced it)",
                snapshot.short(),
                blob.short()
            ))
        };
        let mut queue = Vec::new();
        match self.use_blob(&root) {
            None => return Err(missing(&root)),
            Some(false) => queue.push(root),
            Some(true) => {}
        }
        while !queue.is_empty() {
            let batch: Vec<Id> = queue.drain(queue.len().saturating_sub(PARALLEL_TREES)..).collect();
            let places: Vec<_> = batch.iter().map(|id| self.index.get(id).expect("marked, so indexed")).collect();
            let trees: Vec<TreeRefs> = futures::stream::iter(places)
                .map(|(pack, e)| async move {
                    let read = repo
                        .load_blob_at(pack, e)
                        .await
                        .and_then(|bytes| serde_json::from_slice::<TreeRefs>(&bytes).map_err(|err| Error::corrupt("tree", e.id, err)));
                    read.map_err(|err| unreadable(snapshot, &e.id, err))
                })
                .buffered(PARALLEL_TREES)
                .try_collect()
                .await?;
            for node in trees.iter().flat_map(|t| &t.nodes) {
                for blob in &node.content {
                    self.use_blob(blob).ok_or_else(|| missing(blob))?;
                }
                if let Some(sub) = node.subtree {
                    match self.use_blob(&sub) {
                        None => return Err(missing(&sub)),
                        Some(false) => queue.push(sub),
                        Some(true) => {}
                    }
                }
            }
        }
        self.snapshots.insert(*snapshot);
        Ok(())
    }

    fn use_blob(&mut self, id: &Id) -> Option<bool> {
        let was = self.index.mark_used(id)?;
        if self.track && !was {
            self.newly_used.insert(self.index.pack_of(id).expect("just marked"));
        }
        Some(was)
    }

    /// Walk the listed snapshots not walked yet; one forgotten meanwhile
    /// needs nothing.
    pub async fn reach_snapshots(&mut self, repo: &Repository, ids: Vec<Id>) -> Result<usize> {
        let mut walked = 0;
        for id in ids {
            if self.snapshots.contains(&id) {
                continue;
            }
            let Some(snap) = unless_gone(repo.load_snapshot(&id).await)? else { continue };
            self.reach(repo, &id, snap.tree).await?;
            walked += 1;
        }
        Ok(walked)
    }
}

/// A tree of `snapshot` that cannot be read: what lies below it is
/// unknown, so nothing may be deleted, and the way out is named.
fn unreadable(snapshot: &Id, tree: &Id, err: Error) -> Error {
    if !crate::objects::is_damage(&err) {
        return err;
    }
    let why = format!(
        "its tree {} cannot be read ({err}); nothing was deleted (run `tresor check --read-data`, then `tresor repair snapshots --read-data`)",
        tree.short()
    );
    Error::corrupt("snapshot", snapshot.short(), why)
}

/// Storage times of index files, in their order; one a concurrent prune
/// removed meanwhile has none (its packs are then simply not protected as
/// recent).
async fn file_times(repo: &Repository, files: &[Id]) -> Result<Vec<Option<DateTime<Utc>>>> {
    futures::stream::iter(files)
        .map(|id| async move { unless_gone(repo.stored_time(&Kind::Index.path(id)).await) })
        .buffered(16)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack two live files list (left by a prune that died before its
    /// superseding file) goes with both files, and is as recent as the
    /// newer one.
    #[test]
    fn a_pack_two_files_list_belongs_to_both() {
        let mut index = Index::default();
        let (p1, p2, p3) = (Id([1; 32]), Id([2; 32]), Id([3; 32]));
        let n1 = index.add_pack(p1, 10, std::iter::empty::<crate::pack::PackEntry>());
        let n2 = index.add_pack(p2, 10, std::iter::empty::<crate::pack::PackEntry>());
        let (a, b) = (Id([10; 32]), Id([11; 32]));
        let t = |s| DateTime::from_timestamp(s, 0);
        let mut files = PackFiles::default();
        files.add(a, t(100), [n1, n2, n2]);
        files.add(b, t(200), [n2]);
        assert_eq!(files.iter(&index).collect::<Vec<_>>(), vec![(p1, a), (p2, a), (p2, b)]);
        assert_eq!(files.time(&index, &p1), t(100));
        assert_eq!(files.time(&index, &p2), t(200));
        assert!(files.contains(&index, &p2));
        assert!(!files.contains(&index, &p3));
    }

    /// Runs of numbers with gaps (packs only a skipped file lists), a pack
    /// listed again later, and one of a gap listed first by a later file:
    /// each pack maps to exactly the files that list it.
    #[test]
    fn runs_map_every_pack_to_its_files() {
        let mut index = Index::default();
        let packs: Vec<Id> = (1..=9).map(|i| Id([i; 32])).collect();
        let nums: Vec<u32> = packs.iter().map(|p| index.add_pack(*p, 10, std::iter::empty::<crate::pack::PackEntry>())).collect();
        let (a, b, c) = (Id([10; 32]), Id([11; 32]), Id([12; 32]));
        let mut files = PackFiles::default();
        files.add(a, None, [nums[0], nums[1], nums[2]]);
        // nums[3] and nums[4]: a superseded file's, skipped.
        files.add(b, None, [nums[5], nums[1], nums[6]]);
        files.add(c, None, [nums[3], nums[7]]);
        let mut got: Vec<(Id, Id)> = files.iter(&index).collect();
        got.sort();
        let mut want =
            vec![(packs[0], a), (packs[1], a), (packs[1], b), (packs[2], a), (packs[3], c), (packs[5], b), (packs[6], b), (packs[7], c)];
        want.sort();
        assert_eq!(got, want);
        for (i, p) in packs.iter().enumerate() {
            assert_eq!(files.contains(&index, p), ![4, 8].contains(&i), "pack {i}");
        }
    }
}
