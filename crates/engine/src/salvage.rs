//! Take what is lost out of the index: the last step of `repair snapshots`,
//! and of a `copy --verify` that found a pack the target stored damaged.
//!
//! A blob that stays indexed after it was found damaged or gone is one the
//! next backup of the same data deduplicates against, and that backup
//! cannot be restored either. So the readable blobs of a pack holding a
//! damaged one are copied (sealed bytes unchanged) into new packs, and every
//! index file naming a pack that is gone, unreadable or damaged is replaced
//! by one without it: the new files first, then one file superseding the
//! old ones, then their deletion, as `repair index` and prune do, so that a
//! crash leaves the old index, both (duplicates are harmless) or the new
//! one. A damaged pack stays in storage, unindexed, until a prune deletes it
//! as an orphan; a quarantine record names its lost blobs meanwhile, so that
//! `repair index`, which reads every pack's trailer, leaves them out.

use serde::Serialize;

use crate::index::{IndexFile, IndexedPack, index_files};
use crate::objects::{Kind, unless_gone};
use crate::pack::PackEntry;
use crate::session::Session;
use crate::{Id, IdMap, IdSet, Repository, Result};

/// What a repair found lost.
#[derive(Default)]
pub(crate) struct Damaged {
    /// Blobs that fail to read back.
    pub blobs: IdSet,
    /// The packs holding those blobs, or with a damaged trailer; their
    /// other blobs read back whole.
    pub holding: IdSet,
    /// Packs missing from storage or unreadable, which take all their blobs.
    pub packs: IdSet,
}

impl Damaged {
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.packs.is_empty() && self.holding.is_empty()
    }
}

/// What the salvage changed.
#[derive(Debug, Default, Serialize)]
pub struct Salvaged {
    /// Index entries taken out: the lost blobs and those of lost packs.
    pub dropped_blobs: usize,
    /// Readable blobs copied out of damaged packs.
    pub copied_blobs: usize,
    pub index_files_replaced: usize,
}

pub(crate) async fn salvage(repo: &Repository, damaged: &Damaged, session: &Session) -> Result<Salvaged> {
    let mut out = Salvaged::default();
    if damaged.is_empty() {
        return Ok(out);
    }
    let (affected, packs) = affected_files(repo, damaged).await?;
    let mut kept = Vec::new();
    let mut lost = Vec::new();
    let mut readable: Vec<(Id, Vec<PackEntry>)> = Vec::new();
    for p in packs {
        if damaged.packs.contains(&p.id) {
            out.dropped_blobs += p.entries.len();
            lost.push(p);
        } else if damaged.holding.contains(&p.id) {
            let (bad, good): (Vec<PackEntry>, Vec<PackEntry>) = p.entries.into_iter().partition(|e| damaged.blobs.contains(&e.id));
            out.dropped_blobs += bad.len();
            out.copied_blobs += good.len();
            readable.push((p.id, good));
            if !bad.is_empty() {
                lost.push(IndexedPack { id: p.id, size: p.size, entries: bad });
            }
        } else {
            kept.push(p);
        }
    }
    let mut pieces = crate::prune::repack(repo, readable, session).await?;
    // Written through the storage that damaged the originals: read back
    // before anything is indexed, or the index would trade one damage for another.
    for piece in &pieces {
        if let Some((blob, why)) = crate::check::verify_pack(repo, &piece.id).await?.into_iter().next() {
            let copied = format!("its copy in pack {} did not read back ({why}); the index was left as it was", piece.id.short());
            return Err(crate::Error::corrupt("blob", blob, copied));
        }
    }
    // Recorded before the index changes, and only once the copies are
    // safe: `repair index` reads the damaged pack's trailer too, and would
    // list the lost blobs again for the next backup to deduplicate against.
    if !lost.is_empty() {
        repo.save_file(Kind::Quarantine, &IndexFile { supersedes: Vec::new(), packs: lost }.encode()).await?;
    }
    pieces.extend(kept);
    for file in index_files(pieces) {
        repo.save_index(&file).await?;
    }
    if !affected.is_empty() {
        repo.save_index(&IndexFile { supersedes: affected.clone(), packs: Vec::new() }).await?;
    }
    // Superseded files are ignored by every reader; deleting them only
    // saves space, which an append-only repository does not allow.
    for id in affected.iter().filter(|_| !repo.config().append_only) {
        repo.delete_unless_locked(&Kind::Index.path(id)).await?;
    }
    out.index_files_replaced = affected.len();
    repo.reset_index().await;
    tracing::info!(
        "lost blobs taken out of the index: {}; readable blobs of damaged packs copied: {}; index files replaced: {}",
        out.dropped_blobs,
        out.copied_blobs,
        out.index_files_replaced
    );
    Ok(out)
}

/// The index files, of those no other file supersedes, that name a lost or
/// damaged pack, and every pack they list (each once).
async fn affected_files(repo: &Repository, damaged: &Damaged) -> Result<(Vec<Id>, Vec<IndexedPack>)> {
    let hit = |p: &IndexedPack| damaged.packs.contains(&p.id) || damaged.holding.contains(&p.id);
    let mut superseded = IdSet::default();
    let mut files: IdMap<Vec<IndexedPack>> = IdMap::default();
    for id in repo.list_ids(Kind::Index).await? {
        // A concurrent prune superseded and removed it: its packs are in
        // that prune's files, which this listing may have missed; the next
        // repair finds them there.
        let Some(plain) = unless_gone(repo.load_file(Kind::Index, &id).await)? else { continue };
        let f = IndexFile::decode(&id, &plain)?;
        superseded.extend(f.supersedes);
        if f.packs.iter().any(hit) {
            files.insert(id, f.packs);
        }
    }
    let mut listed = IdSet::default();
    let mut affected = Vec::new();
    let mut packs = Vec::new();
    for (id, file_packs) in files.into_iter().filter(|(id, _)| !superseded.contains(id)) {
        affected.push(id);
        packs.extend(file_packs.into_iter().filter(|p| listed.insert(p.id)));
    }
    affected.sort();
    Ok((affected, packs))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tresor_storage::{FaultConfig, Location};

    use crate::Repository;
    use crate::backup::{BackupOptions, backup};
    use crate::repair_snapshots::{RepairSnapshotsOptions, repair_snapshots};
    use crate::repo::tests::{content, damaged, repo_opts, repository};

    /// The copies of a damaged pack's readable blobs are read back before
    /// the index changes: written through storage that damages them too,
    /// the repair fails, and the index still names the pack it had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_that_do_not_read_back_leave_the_index_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("repo");
        let repo = Arc::new(repository(&at).await);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // Chunks of one file share a pack: the damaged one's neighbours are copied.
        std::fs::write(data.join("b"), content("b", 6 << 20)).unwrap();
        let snap = backup(repo.clone(), BackupOptions { paths: vec![data.clone()], ..Default::default() }).await.unwrap();
        let b = crate::walk::find(&repo, snap.tree, data.join("b").to_str().unwrap()).await.unwrap().unwrap().content[0];
        let (pack, _) = repo.index().await.unwrap().get(&b).unwrap();
        damaged(&repo, &at, &b).await;

        let mut garbling = repo_opts();
        garbling.storage.faults = Some(FaultConfig::parse("garble=data/").unwrap());
        let garbling = Arc::new(Repository::open(&Location::Fs(at.clone()), &garbling).await.unwrap());
        let opts = RepairSnapshotsOptions { read_data: true, ..Default::default() };
        let err = repair_snapshots(garbling, &opts).await.unwrap_err().to_string();
        assert!(err.contains(" did not read back (") && err.ends_with("; the index was left as it was"), "{err}");
        let fresh = Repository::open(&Location::Fs(at), &repo_opts()).await.unwrap();
        assert_eq!(fresh.index().await.unwrap().get(&b).map(|(p, _)| p), Some(pack));
    }

    /// A pack whose trailer is damaged loses no blob: each is sealed on its
    /// own where the index says. Check names the pack and no file, `repair
    /// index` keeps its blobs indexed, and `repair snapshots --read-data`
    /// copies them out, after which every file reads back as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_trailer_takes_no_blob_along() {
        use crate::check::{CheckOptions, ReadData, check};
        use crate::objects::Kind;
        use crate::pack::FOOTER_LEN;

        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("repo");
        let repo = Arc::new(repository(&at).await);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let names = ["a", "b", "c", "d"];
        for n in names {
            std::fs::write(data.join(n), content(n, 300_000)).unwrap();
        }
        let snap = backup(repo.clone(), BackupOptions { paths: vec![data.clone()], ..Default::default() }).await.unwrap();
        let blobs = |n: &str| {
            let (repo, path) = (repo.clone(), data.join(n));
            async move { crate::walk::find(&repo, snap.tree, path.to_str().unwrap()).await.unwrap().unwrap().content }
        };
        let index = repo.index().await.unwrap();
        let (pack, _) = index.get(&blobs("a").await[0]).unwrap();
        let mut held = 0;
        for n in names {
            held += blobs(n).await.iter().filter(|b| index.pack_of(b) == Some(pack)).count();
        }
        let stored = at.join(Kind::Pack.path(&pack));
        let mut bytes = std::fs::read(&stored).unwrap();
        let n = bytes.len();
        bytes[n - FOOTER_LEN - 3] ^= 0x10;
        std::fs::write(&stored, bytes).unwrap();
        let (location, opts) = (Location::Fs(at.clone()), repo_opts());
        let fresh = || Repository::open(&location, &opts);
        let all = || CheckOptions { read_data: ReadData::ALL, ..Default::default() };

        let report = check(&fresh().await.unwrap(), all()).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let problem = &report.problems[0];
        assert_eq!(problem.object, format!("pack {}", pack.short()));
        let whole = format!("its trailer fails authentication; {held} of its blobs read back whole where the index says");
        assert!(problem.error.ends_with(&whole), "{problem:?}");
        assert!(problem.files.is_empty() && problem.snapshots.is_empty(), "{problem:?}");

        let rebuilt = crate::repair::repair_index(&fresh().await.unwrap(), false).await.unwrap();
        assert!(rebuilt.unreadable.is_empty(), "{rebuilt:?}");
        assert_eq!(rebuilt.listed_as_before, [format!("{}: {held} of {held} blobs", pack.short())]);

        let repair = RepairSnapshotsOptions { read_data: true, ..Default::default() };
        let repaired = repair_snapshots(Arc::new(fresh().await.unwrap()), &repair).await.unwrap();
        assert!(repaired.snapshots.is_empty(), "{:?}", repaired.snapshots);
        assert_eq!((repaired.index.dropped_blobs, repaired.index.copied_blobs), (0, held));
        let after = fresh().await.unwrap();
        for n in names {
            let mut restored = Vec::new();
            for b in blobs(n).await {
                assert_ne!(after.index().await.unwrap().pack_of(&b), Some(pack), "copied out of the damaged pack");
                restored.extend(after.load_blob(&b).await.unwrap());
            }
            assert!(restored == content(n, 300_000), "{n} reads back as it was");
        }
        let report = check(&after, all()).await.unwrap();
        assert!(report.ok(), "{:?}", report.problems);
    }
}
