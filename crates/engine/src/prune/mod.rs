//! `prune`: delete the data no snapshot needs while backups keep running.
//!
//! No lock is taken. A prune *marks* packs (writes `marks/<id>` listing them
//! and drops them from the index), and a later phase *sweeps* a mark (deletes
//! its packs) only once no writer session that started before the mark is
//! alive and every snapshot written meanwhile has been walked. The protocol
//! and why it is safe: docs/ARCHITECTURE.md §7.

mod sweep;
#[cfg(test)]
mod tests;
mod view;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::index::{IndexFile, IndexedPack, index_files};
use crate::objects::{Kind, is_not_found, unless_gone};
use crate::pack::{BlobKind, ENTRY_LEN, FOOTER_LEN, PackEntry, PackWriter};
use crate::session::{Session, SessionInfo, sessions};
use crate::{Error, Id, IdMap, IdSet, Repository, Result};
use view::View;

/// Object stores stamp whole seconds: a session that started this close
/// after a mark is treated as older than it.
const SLOP: chrono::Duration = chrono::Duration::seconds(2);

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack once more than this share of its blob bytes is unused.
    pub max_unused: f64,
    /// How long a mark (and an unindexed pack) must age, by the storage's
    /// clock, before its packs may go.
    pub grace: Duration,
    pub dry_run: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub used_blobs: usize,
    /// Bytes of unused blobs in indexed packs, before this prune.
    pub unused_bytes: u64,
    pub marked_packs: usize,
    pub marked_bytes: u64,
    pub repacked_packs: usize,
    /// Bytes of still-used blobs copied out of repacked packs.
    pub repacked_bytes: u64,
    /// Marked packs put back in the index because a snapshot needs them.
    pub rescued_packs: usize,
    pub deleted_packs: usize,
    pub deleted_bytes: u64,
    /// Packs Object Lock still protects; a later prune deletes them.
    pub locked_packs: usize,
    pub orphan_packs_deleted: usize,
    /// Marks not swept yet, and why.
    pub waiting: Vec<String>,
    pub index_files_written: usize,
    pub index_files_removed: usize,
    /// A local store's temporary files a cut-short write left (count, bytes).
    pub stale_temporaries: (u64, u64),
}

pub async fn prune(repo: Arc<Repository>, opts: &PruneOptions) -> Result<PruneReport> {
    if repo.config().append_only && !opts.dry_run {
        return Err(Error::AppendOnly("prune".into()));
    }
    if opts.dry_run {
        let live = sessions(&repo).await?;
        let (mut view, snapshots) = View::load(&repo).await?;
        let mut report = PruneReport { dry_run: true, ..Default::default() };
        plan(&repo, &mut view, snapshots, opts, &live, &mut report).await?;
        return Ok(report);
    }
    // First: on a full disk they may be the space its heartbeat needs.
    let stale = sweep_temporaries(&repo);
    let session = Session::start(repo.clone(), "prune").await?;
    // An object a concurrent prune removed after this one listed it (a pack
    // it repacked, an index file it superseded) invalidates this run's
    // picture: start over with a fresh one. Every step is safe to repeat.
    let mut result = run(&repo, opts, &session).await;
    for _ in 0..3 {
        match &result {
            Err(e) if is_not_found(e) => {
                tracing::info!("prune starts over: {e}");
                result = run(&repo, opts, &session).await;
            }
            _ => break,
        }
    }
    let ended = session.end().await;
    repo.reset_index().await;
    let report = result?;
    ended?;
    Ok(PruneReport { stale_temporaries: stale, ..report })
}

/// How old a local store's temporary file must be to be taken for
/// abandoned: a write renames its own within seconds.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// Remove the temporary files of a local repository (`.tmp/`, where each
/// object is written before it is renamed into place) older than
/// [`STALE_TEMPORARY`]: a write a full disk or a kill cut short leaves its
/// file there, space nothing uses, which nothing else removes. How many,
/// and their bytes.
fn sweep_temporaries(repo: &Repository) -> (u64, u64) {
    let Some(root) = repo.location().local_path() else { return (0, 0) };
    let Ok(entries) = std::fs::read_dir(root.join(".tmp")) else { return (0, 0) };
    let mut swept = (0, 0);
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        let old = md.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > STALE_TEMPORARY);
        if md.is_file() && old && std::fs::remove_file(e.path()).is_ok() {
            swept = (swept.0 + 1, swept.1 + md.len());
        }
    }
    swept
}

/// What this run wrote to the index.
#[derive(Default)]
struct Written {
    files: IdSet,
    packs: IdSet,
}

/// What this run decided about the packs.
#[derive(Default)]
struct Plan {
    mark: IdSet,
    repack: IdSet,
    /// Marked packs a snapshot needs after all.
    rescue: IdSet,
}

async fn run(repo: &Repository, opts: &PruneOptions, session: &Session) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let now = session.storage_now().await?;
    let live = live_sessions(repo, session, now).await?;
    let (mut view, snapshots) = View::load(repo).await?;
    let plan = plan(repo, &mut view, snapshots, opts, &live, &mut report).await?;
    let written = rewrite(repo, &view, &plan, session, &mut report).await?;
    sweep::sweep(repo, &mut view, opts, session, &plan, &written, &mut report).await?;
    Ok(report)
}

/// Sessions other than ours whose last heartbeat is recent enough.
async fn live_sessions(repo: &Repository, ours: &Session, now: DateTime<Utc>) -> Result<Vec<SessionInfo>> {
    let timeout = chrono::Duration::seconds(repo.config().session_timeout_secs as i64);
    Ok(sessions(repo).await?.into_iter().filter(|s| s.id != ours.id() && !s.ended && now - s.last_beat < timeout).collect())
}

/// Reach every snapshot, then choose what to mark, repack and rescue.
async fn plan(
    repo: &Repository,
    view: &mut View,
    snapshots: Vec<Id>,
    opts: &PruneOptions,
    live: &[SessionInfo],
    report: &mut PruneReport,
) -> Result<Plan> {
    report.snapshots = view.reach_snapshots(repo, snapshots).await?;
    report.blobs = view.index.blob_count();
    report.used_blobs = view.index.used_blob_count();
    // Packs indexed after the oldest live writer started may be its work in
    // progress: leave them to a later prune rather than make others re-store.
    let protect_from = live.iter().map(|s| s.started).min().map(|t| t - SLOP);
    let overhead = (4 + repo.crypto().aead().overhead() + FOOTER_LEN) as u64;
    let mut plan = Plan::default();
    for ((pack, size), usage) in view.index.packs().zip(view.index.pack_usage()) {
        if view.mark_of.contains_key(&pack) {
            if usage.used {
                plan.rescue.insert(pack);
            }
            continue;
        }
        report.packs += 1;
        let area = size.saturating_sub(overhead + u64::from(usage.entries) * ENTRY_LEN as u64);
        let unused = area.saturating_sub(usage.used_bytes);
        report.unused_bytes += unused;
        if view.pack_file.time(&view.index, &pack).zip(protect_from).is_some_and(|(t, from)| t >= from) {
            continue;
        }
        if !usage.used {
            plan.mark.insert(pack);
            report.marked_bytes += size;
        } else if area > 0 && unused as f64 / area as f64 > opts.max_unused {
            plan.repack.insert(pack);
            report.marked_bytes += size;
            report.repacked_bytes += usage.used_bytes;
        }
    }
    report.marked_packs = plan.mark.len() + plan.repack.len();
    report.repacked_packs = plan.repack.len();
    report.rescued_packs = plan.rescue.len();
    Ok(plan)
}

/// Copy the used blobs out of the packs to repack, into new packs.
pub(crate) async fn repack(repo: &Repository, mut used: Vec<(Id, Vec<PackEntry>)>, session: &Session) -> Result<Vec<IndexedPack>> {
    let mut writers: [Option<PackWriter>; 2] = [None, None];
    let mut out = Vec::new();
    used.sort_by_key(|a| a.0);
    for (pack, entries) in &used {
        let bytes = repo.read(&Kind::Pack.path(pack)).await?;
        for e in entries {
            let sealed = bytes
                .get(e.offset as usize..(e.offset + e.length) as usize)
                .ok_or_else(|| Error::corrupt("pack", pack, "it is shorter than the index says"))?;
            let slot = &mut writers[usize::from(e.kind == BlobKind::Tree)];
            let target = repo.config().pack_target(e.kind);
            slot.get_or_insert_with(|| PackWriter::new(e.kind, target)).add_sealed(e, sealed);
            if slot.as_ref().is_some_and(|w| w.len() >= target) {
                let w = slot.take().expect("present");
                out.push(repo.save_pack(w.finish(repo.crypto())).await?);
            }
        }
        session.check_lease().await?;
    }
    for w in writers.into_iter().flatten() {
        out.push(repo.save_pack(w.finish(repo.crypto())).await?);
    }
    Ok(out)
}

/// Apply the plan to the index: new packs and the mark first, then index
/// files without the marked packs, then one file superseding the old ones,
/// and only then their deletion. A crash leaves duplicates or nothing new.
async fn rewrite(repo: &Repository, view: &View, plan: &Plan, session: &Session, report: &mut PruneReport) -> Result<Written> {
    let mut own = Written::default();
    if plan.mark.is_empty()
        && plan.repack.is_empty()
        && plan.rescue.is_empty()
        && view.stale_files.is_empty()
        && view.spent_files.is_empty()
    {
        return Ok(own);
    }
    let going = |p: &Id| plan.mark.contains(p) || plan.repack.contains(p);
    let affected: IdSet = view.pack_file.iter(&view.index).filter(|(p, _)| going(p)).map(|(_, f)| f).collect();
    let (mut marked, mut kept) = (Vec::new(), Vec::new());
    // The index holds blob keys, not ids: the full entries of the blobs to
    // copy come from the index files, filtered by the reachability marks.
    let mut used: IdMap<Vec<PackEntry>> = IdMap::default();
    // A pack two affected files list is marked or kept once.
    let mut listed = IdSet::default();
    for file in &affected {
        // A concurrent prune superseded and removed it: its packs are in
        // that prune's files, and stay unmarked by this one.
        let Some(plain) = unless_gone(repo.load_file(Kind::Index, file).await)? else { continue };
        for p in IndexFile::decode(file, &plain)?.packs {
            if !listed.insert(p.id) {
                continue;
            }
            if plan.repack.contains(&p.id) {
                used.entry(p.id).or_insert_with(|| p.entries.iter().filter(|e| view.index.used_in_pack(&e.id, &p.id)).copied().collect());
            }
            if going(&p.id) { marked.push(p) } else { kept.push(p) }
        }
    }
    let mut pieces: Vec<IndexedPack> = repack(repo, used.into_iter().collect(), session).await?;
    for m in &view.marks {
        pieces.extend(m.file.packs.iter().filter(|p| plan.rescue.contains(&p.id)).cloned());
    }
    pieces.extend(kept);
    if !marked.is_empty() {
        repo.save_file(Kind::Mark, &IndexFile { supersedes: Vec::new(), packs: marked }.encode()).await?;
    }
    own.packs.extend(pieces.iter().map(|p| p.id));
    for file in index_files(pieces) {
        own.files.insert(repo.save_index(&file).await?);
        report.index_files_written += 1;
    }
    let old: Vec<Id> = affected.iter().copied().chain(view.stale_files.iter().copied()).collect();
    if !old.is_empty() {
        own.files.insert(repo.save_index(&IndexFile { supersedes: old.clone(), packs: Vec::new() }).await?);
        report.index_files_written += 1;
    }
    for id in old.iter().chain(&view.spent_files) {
        if repo.delete_unless_locked(&Kind::Index.path(id)).await? {
            report.index_files_removed += 1;
        }
    }
    Ok(own)
}
