//! `repair index`: rebuild the index from the packs alone.
//!
//! Every pack ends with an encrypted trailer listing its blobs, so the
//! index is derived data. The rebuild writes the new index files, then one
//! small file that supersedes every old one, and only then deletes the old
//! files: a crash at any point leaves the old index, both (duplicates are
//! harmless), or the new one, never a partial one. The blobs a repair
//! recorded lost (quarantine records, `salvage.rs`) are left out, though the
//! damaged pack's trailer still lists them.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::check::{Judged, judge_pack, listed_entries};
use crate::index::{IndexFile, IndexedPack, index_files};
use crate::objects::{Kind, is_damage, list_with_size};
use crate::pack::{FOOTER_LEN, PackEntry, read_trailer};
use crate::{Id, IdMap, IdSet, Repository, Result};

/// The tail read first: enough for the trailer of any ordinary pack.
const TAIL: u64 = 256 * 1024;

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub packs: usize,
    pub blobs: usize,
    /// Packs that cannot be read, or whose trailer cannot and no index
    /// file lists them: `pack id: reason`.
    pub unreadable: Vec<String>,
    /// Packs with a damaged trailer listed with the blobs the old index
    /// files gave them that read back whole: `pack id: n of m blobs`.
    /// `repair snapshots --read-data` copies those blobs out.
    pub listed_as_before: Vec<String>,
    /// Blobs a repair recorded lost, left out though their packs' trailers list them.
    pub lost_blobs_left_out: usize,
    /// Damaged packs left out whole: every other blob of theirs is in another pack.
    pub quarantined_packs: usize,
    pub index_files_written: usize,
    pub index_files_removed: usize,
}

async fn pack_entries(repo: &Repository, id: &Id, size: u64) -> Result<IndexedPack> {
    let path = Kind::Pack.path(id);
    let start = size.saturating_sub(TAIL);
    let mut tail = repo.read_range(&path, start..size).await?.to_vec();
    if tail.len() >= FOOTER_LEN {
        let n = tail.len();
        let tlen = u64::from(u32::from_le_bytes(tail[n - 12..n - 8].try_into().expect("4 bytes")));
        let need = tlen + FOOTER_LEN as u64;
        if need > tail.len() as u64 && need <= size {
            tail = repo.read_range(&path, size - need..size).await?.to_vec();
        }
    }
    let entries = read_trailer(repo.crypto(), id, &tail, size)?;
    Ok(IndexedPack { id: *id, size, entries })
}

/// A quarantine record that cannot be read may name blobs that must stay
/// out: the rebuild stops, and says how to go on without it.
fn unreadable_record(id: &Id, e: crate::Error) -> crate::Error {
    let path = Kind::Quarantine.path(id);
    crate::Error::Invalid(format!(
        "{e}, and may name blobs a repair found lost; nothing was changed (to rebuild the index without it, delete {path}, then run `tresor check --read-data`)"
    ))
}

/// Take the blobs quarantine records name out of their packs' listings; a
/// pack whose readable blobs all have copies in packs the index lists
/// (`indexed`: the repair that copied them got as far as indexing them) is
/// left out whole, else its readable blobs stay listed. A copy only stored
/// is a killed repair's, which a prune may be deleting as an orphan now.
fn leave_out_lost(packs: &mut Vec<IndexedPack>, records: IdMap<IndexFile>, indexed: &IdSet, report: &mut RepairReport) {
    let mut lost: IdMap<IdSet> = IdMap::default();
    for p in records.into_values().flat_map(|f| f.packs) {
        lost.entry(p.id).or_default().extend(p.entries.iter().map(|e| e.id));
    }
    let mut wanted = IdSet::default();
    for p in packs.iter_mut() {
        let Some(gone) = lost.get(&p.id) else { continue };
        let before = p.entries.len();
        p.entries.retain(|e| !gone.contains(&e.id));
        report.lost_blobs_left_out += before - p.entries.len();
        wanted.extend(p.entries.iter().map(|e| e.id));
    }
    let mut elsewhere = IdSet::default();
    for p in packs.iter().filter(|p| !lost.contains_key(&p.id) && indexed.contains(&p.id)) {
        elsewhere.extend(p.entries.iter().map(|e| e.id).filter(|id| wanted.contains(id)));
    }
    packs.retain(|p| {
        let whole_elsewhere = lost.contains_key(&p.id) && p.entries.iter().all(|e| elsewhere.contains(&e.id));
        report.quarantined_packs += usize::from(whole_elsewhere);
        !whole_elsewhere
    });
}

/// The packs the index files `files` list, of those that open: the index
/// being rebuilt may be damaged.
async fn indexed_packs(repo: &Repository, files: &[Id]) -> Result<IdSet> {
    let mut out = IdSet::default();
    for id in files {
        match repo.load_file_uncached(Kind::Index, id).await.and_then(|plain| IndexFile::decode(id, &plain)) {
            Ok(f) => out.extend(f.packs.iter().map(|p| p.id)),
            Err(e) if is_damage(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Packs whose trailer cannot be read keep the blobs the old index files
/// list for them that read back whole: each blob is sealed on its own, and
/// the trailer only repeats where they are. Left out, they would be in no
/// index, and every snapshot needing one would be lost.
async fn listed_as_before(
    repo: &Repository,
    damaged: Vec<(Id, u64, crate::Error)>,
    good: &mut Vec<IndexedPack>,
    report: &mut RepairReport,
) -> Result<()> {
    let listed = listed_entries(repo, &damaged.iter().map(|(p, _, _)| *p).collect()).await?;
    for (id, size, trailer) in damaged {
        let judged = match listed.get(&id) {
            Some(entries) => judge_pack(repo, &id, Some(entries.clone())).await,
            None => Ok(Judged::Trailer(trailer)),
        };
        match judged {
            Ok(Judged::Blobs(bad)) => {
                let lost: IdSet = bad.into_iter().map(|(b, _)| b).collect();
                let entries: Vec<PackEntry> = listed[&id].iter().filter(|e| !lost.contains(&e.id)).copied().collect();
                report.listed_as_before.push(format!("{}: {} of {} blobs", id.short(), entries.len(), listed[&id].len()));
                good.push(IndexedPack { id, size, entries });
            }
            Ok(Judged::Trailer(e)) => report.unreadable.push(format!("{}: {e}", id.short())),
            Err(e) if is_damage(&e) => report.unreadable.push(format!("{}: {e}", id.short())),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn repair_index(repo: &Repository, dry_run: bool) -> Result<RepairReport> {
    // Quarantine records before the packs are read and after: a prune may
    // delete a damaged pack and its record while the trailers are read (the
    // record read before still keeps the lost blobs out), and a repair may
    // record a pack read meanwhile (the one read after does).
    let before = repo.load_quarantine().await?;
    let old: Vec<Id> = repo.list_ids(Kind::Index).await?;
    let packs: Vec<(Id, u64)> =
        list_with_size(repo.operator(), Kind::Pack).await?.into_iter().filter_map(|(n, s)| Some((n.parse().ok()?, s))).collect();
    let read: Vec<(Id, u64, Result<IndexedPack>)> = futures::stream::iter(packs)
        .map(|(id, size)| async move { (id, size, pack_entries(repo, &id, size).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut report = RepairReport::default();
    let mut good = Vec::new();
    let mut damaged = Vec::new();
    for (id, size, r) in read {
        match r {
            Ok(p) => good.push(p),
            Err(e) if is_damage(&e) => damaged.push((id, size, e)),
            // Storage not answering (even after the retries) says nothing
            // about the pack: left out, its blobs would be in no index.
            Err(e) => return Err(e),
        }
    }
    listed_as_before(repo, damaged, &mut good, &mut report).await?;
    let mut records = IdMap::default();
    for (id, record) in before.into_iter().chain(repo.load_quarantine().await?) {
        records.insert(id, record.map_err(|e| unreadable_record(&id, e))?);
    }
    let indexed = if records.is_empty() { IdSet::default() } else { indexed_packs(repo, &old).await? };
    leave_out_lost(&mut good, records, &indexed, &mut report);
    report.blobs = good.iter().map(|p| p.entries.len()).sum();
    report.packs = good.len();
    if dry_run {
        return Ok(report);
    }
    good.sort_by_key(|p| p.id);
    let files: Vec<Id> =
        futures::stream::iter(index_files(good)).map(|file| async move { repo.save_index(&file).await }).buffered(4).try_collect().await?;
    repo.save_index(&IndexFile { supersedes: old.clone(), packs: Vec::new() }).await?;
    report.index_files_written = files.len() + 1;
    for id in &old {
        repo.delete(&Kind::Index.path(id)).await?;
        report.index_files_removed += 1;
    }
    repo.reset_index().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::BlobKind;

    fn pack(id: u8, blobs: &[u8]) -> IndexedPack {
        let entry = |b: &u8| PackEntry { kind: BlobKind::Data, flags: 0, id: Id([*b; 32]), offset: 0, length: 1, raw_length: 1 };
        IndexedPack { id: Id([id; 32]), size: 100, entries: blobs.iter().map(entry).collect() }
    }

    fn listed(packs: &[IndexedPack]) -> Vec<(u8, Vec<u8>)> {
        packs.iter().map(|p| (p.id.0[0], p.entries.iter().map(|e| e.id.0[0]).collect())).collect()
    }

    /// Pack 1 lost blob 11; its other blob, 12, was copied into pack 2.
    #[test]
    fn a_damaged_pack_whose_readable_blobs_were_copied_is_left_out_whole() {
        let mut packs = vec![pack(1, &[11, 12]), pack(2, &[12]), pack(3, &[13])];
        let mut report = RepairReport::default();
        let records = || [(Id([9; 32]), IndexFile { supersedes: Vec::new(), packs: vec![pack(1, &[11])] })].into_iter().collect();
        let indexed: IdSet = [1, 2, 3].map(|p| Id([p; 32])).into_iter().collect();
        leave_out_lost(&mut packs, records(), &indexed, &mut report);
        assert_eq!(listed(&packs), [(2, vec![12]), (3, vec![13])]);
        assert_eq!((report.lost_blobs_left_out, report.quarantined_packs), (1, 1));

        // Pack 2 stored but in no index file: a killed repair's copy, which
        // a prune may delete; pack 1 keeps blob 12.
        let mut packs = vec![pack(1, &[11, 12]), pack(2, &[12]), pack(3, &[13])];
        let mut report = RepairReport::default();
        let indexed: IdSet = [1, 3].map(|p| Id([p; 32])).into_iter().collect();
        leave_out_lost(&mut packs, records(), &indexed, &mut report);
        assert_eq!(listed(&packs), [(1, vec![12]), (2, vec![12]), (3, vec![13])]);
        assert_eq!((report.lost_blobs_left_out, report.quarantined_packs), (1, 0));
    }

    /// The copy of blob 12 is gone (the repair was killed before indexing
    /// it and a prune deleted it): pack 1 stays listed without blob 11.
    #[test]
    fn a_damaged_pack_keeps_the_readable_blobs_that_have_no_copy() {
        let mut packs = vec![pack(1, &[11, 12]), pack(3, &[13])];
        let mut report = RepairReport::default();
        let records =
            [(Id([9; 32]), IndexFile { supersedes: Vec::new(), packs: vec![pack(1, &[11]), pack(4, &[14])] })].into_iter().collect();
        leave_out_lost(&mut packs, records, &IdSet::default(), &mut report);
        assert_eq!(listed(&packs), [(1, vec![12]), (3, vec![13])]);
        assert_eq!((report.lost_blobs_left_out, report.quarantined_packs), (1, 0));
    }

    /// A prune deletes a pack a repair left out and its quarantine record
    /// after `repair index` read the pack's trailer: the record read before
    /// the trailers still keeps the lost blob out of the rebuilt index.
    #[tokio::test]
    async fn a_record_deleted_while_the_trailers_are_read_still_keeps_its_blobs_out() {
        use crate::repo::interleave::Interleave;
        use crate::repo::tests::repo_opts;
        use tresor_storage::Location;

        let dir = tempfile::tempdir().unwrap();
        let (repo, kept) = crate::restore::tests::forgotten_old_snapshot(dir.path()).await;
        let root = dir.path().join("repo");
        let (pack, lost) = repo.index().await.unwrap().get(&kept.tree).unwrap();
        let record = IndexFile { supersedes: Vec::new(), packs: vec![IndexedPack { id: pack, size: 1, entries: vec![lost] }] };
        let id = repo.save_file(Kind::Quarantine, &record.encode()).await.unwrap();
        let gone = [root.join(Kind::Pack.path(&pack)), root.join(Kind::Quarantine.path(&id))];
        let hook = Interleave::after_reading(
            &Kind::Pack.path(&pack),
            Box::new(move || Box::pin(async move { gone.iter().for_each(|p| std::fs::remove_file(p).unwrap()) })),
        );
        let repairing = Repository::open(&Location::Fs(root.clone()), &repo_opts()).await.unwrap().interleaved(&hook);
        let report = repair_index(&repairing, false).await.unwrap();
        assert!(hook.ran(), "the pack's trailer was read");
        assert_eq!(report.lost_blobs_left_out, 1, "{report:?}");
        let rebuilt = Repository::open(&Location::Fs(root), &repo_opts()).await.unwrap();
        assert_eq!(rebuilt.index().await.unwrap().get(&lost.id), None, "the lost blob is indexed again");
    }
}
