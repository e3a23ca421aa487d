//! `repair index`: rebuild the index from the packs alone.
//!
//! Every pack ends with an encrypted trailer listing its blobs, so the
//! index is derived data. The rebuild writes the new index files, then one
//! small file that supersedes every old one, and only then deletes the old
//! files: a crash at any point leaves the old index, both (duplicates are
//! harmless), or the new one, never a partial one.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::index::{IndexFile, IndexedPack, index_files};
use crate::objects::{Kind, is_damage, list_with_size};
use crate::pack::{FOOTER_LEN, read_trailer};
use crate::{Id, Repository, Result};

/// The tail read first: enough for the trailer of any ordinary pack.
const TAIL: u64 = 256 * 1024;

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub packs: usize,
    pub blobs: usize,
    /// Packs whose trailer cannot be read: `pack id: reason`.
    pub unreadable: Vec<String>,
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

pub async fn repair_index(repo: &Repository, dry_run: bool) -> Result<RepairReport> {
    let old: Vec<Id> = repo.list_ids(Kind::Index).await?;
    let packs: Vec<(Id, u64)> =
        list_with_size(repo.operator(), Kind::Pack).await?.into_iter().filter_map(|(n, s)| Some((n.parse().ok()?, s))).collect();
    let read: Vec<(Id, Result<IndexedPack>)> = futures::stream::iter(packs)
        .map(|(id, size)| async move { (id, pack_entries(repo, &id, size).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut report = RepairReport::default();
    let mut good = Vec::new();
    for (id, r) in read {
        match r {
            Ok(p) => {
                report.blobs += p.entries.len();
                good.push(p);
            }
            Err(e) if is_damage(&e) => report.unreadable.push(format!("{}: {e}", id.short())),
            // Storage not answering (even after the retries) says nothing
            // about the pack: left out, its blobs would be in no index.
            Err(e) => return Err(e),
        }
    }
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
