//! The sweep: delete the packs of marks no live writer can still depend on.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::view::View;
use super::{Plan, PruneOptions, PruneReport, SLOP, Written, live_sessions};
use crate::index::{IndexedPack, index_files};
use crate::objects::{Kind, each_name, is_not_found, unless_gone};
use crate::repo::Mark;
use crate::session::{self, Session, SessionInfo};
use crate::{Error, Id, IdSet, Repository, Result};

/// Why a mark may not be swept yet, if it may not.
fn waiting(mark: &Mark, live: &[SessionInfo], now: DateTime<Utc>, grace: chrono::Duration) -> Option<String> {
    if let Some(s) = live.iter().find(|s| s.started <= mark.time + SLOP) {
        return Some(format!(
            "mark {} waits for {} (pid {} on {}, started {}) which began before it",
            mark.id.short(),
            s.command,
            s.pid,
            s.host,
            s.started.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    let age = now - mark.time;
    (age < grace).then(|| format!("mark {} waits for its grace period ({}s left)", mark.id.short(), (grace - age).num_seconds()))
}

pub(super) async fn sweep(
    repo: &Repository,
    view: &mut View,
    opts: &PruneOptions,
    session: &Session,
    plan: &Plan,
    written: &Written,
    report: &mut PruneReport,
) -> Result<()> {
    let grace = chrono::Duration::from_std(opts.grace).map_err(|_| Error::Invalid("grace period too long".into()))?;
    // Sessions are listed after every mark of this run is stored: a writer
    // not seen here started after the marks and does not use their packs.
    let now = session.storage_now().await?;
    let live = live_sessions(repo, session, now).await?;
    let mut eligible = Vec::new();
    for mark in repo.load_marks().await? {
        match waiting(&mark, &live, now, grace) {
            Some(why) => report.waiting.push(why),
            None => eligible.push(mark),
        }
    }
    for m in &eligible {
        for p in &m.file.packs {
            if view.index.has_pack(&p.id) {
                continue;
            }
            view.index.add_pack(p.id, p.size, &p.entries);
            view.mark_of.insert(p.id, m.id);
        }
    }
    // Writers that finished since the view was loaded: their index files
    // and snapshots count before anything is deleted.
    let snapshots = repo.list_ids(Kind::Snapshot).await?;
    let indexed_late = view.add_new_files(repo, &written.files).await?;
    view.track = true;
    view.reach_snapshots(repo, snapshots).await?;
    let indexed = |p: &Id| {
        indexed_late.contains(p)
            || written.packs.contains(p)
            || (view.pack_file.contains(&view.index, p) && !plan.mark.contains(p) && !plan.repack.contains(p))
    };
    let mut rescue: Vec<IndexedPack> = Vec::new();
    let mut doomed: Vec<(usize, IndexedPack)> = Vec::new();
    for (i, m) in eligible.iter().enumerate() {
        for p in &m.file.packs {
            if indexed(&p.id) {
                continue;
            }
            if view.newly_used.contains(&p.id) {
                rescue.push(p.clone());
            } else {
                doomed.push((i, p.clone()));
            }
        }
    }
    if !rescue.is_empty() {
        report.rescued_packs += rescue.len();
        for file in index_files(rescue) {
            repo.save_index(&file).await?;
            report.index_files_written += 1;
        }
    }
    // A mark with a pack still locked stays, to be swept again later.
    let mut locked = vec![false; eligible.len()];
    for (i, p) in doomed {
        if delete_pack(repo, &p.id, now).await? {
            report.deleted_packs += 1;
            report.deleted_bytes += p.size;
        } else {
            report.locked_packs += 1;
            locked[i] = true;
        }
    }
    for (m, _) in eligible.iter().zip(locked).filter(|(_, l)| !l) {
        repo.delete_unless_locked(&Kind::Mark.path(&m.id)).await?;
    }
    orphans(repo, view, written, &live, now, grace, report).await?;
    dead_sessions(repo, now, grace).await
}

/// Delete a pack unless Object Lock still protects it; whether it is gone.
async fn delete_pack(repo: &Repository, pack: &Id, now: DateTime<Utc>) -> Result<bool> {
    let path = Kind::Pack.path(pack);
    if let Some(lock) = repo.config().object_lock_secs {
        match repo.stored_time(&path).await {
            Ok(t) if now - t < chrono::Duration::seconds(lock as i64) => return Ok(false),
            Err(e) if is_not_found(&e) => return Ok(true),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    repo.delete_unless_locked(&path).await
}

/// Packs no index or mark lists: left by killed writers, or damaged ones a
/// repair took out. One younger than the oldest live session may be a live
/// writer's, not yet indexed. Then the quarantine records left without a pack.
async fn orphans(
    repo: &Repository,
    view: &View,
    written: &Written,
    live: &[SessionInfo],
    now: DateTime<Utc>,
    grace: chrono::Duration,
    report: &mut PruneReport,
) -> Result<()> {
    let known = |p: &Id| view.index.has_pack(p) || written.packs.contains(p);
    // The records before the packs: a record is written once its packs are
    // stored, so the listing holds every stored pack of a record read
    // before it. A record read after could name a pack stored since the
    // listing, which would pass for gone.
    let records = repo.load_quarantine().await?;
    // Streamed: only the unknown packs are kept, not a listing of them all.
    let mut candidates: Vec<Id> = Vec::new();
    each_name(repo.operator(), Kind::Pack, |name| candidates.extend(name.parse().ok().filter(|p| !known(p)))).await?;
    let mut stored: IdSet = candidates.iter().copied().collect();
    if !candidates.is_empty() {
        for p in delete_orphans(repo, candidates, live, now, grace).await? {
            stored.remove(&p);
            report.orphan_packs_deleted += 1;
        }
    }
    // A quarantine record serves `repair index` while one of its packs is
    // stored; an indexed one is stored (the repair was killed before its
    // index files were written).
    for (id, record) in records {
        // Kept for `repair index` to refuse, which names it; deleting it
        // here would let the lost blobs back into the index unseen.
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}; kept");
                continue;
            }
        };
        if record.packs.iter().all(|p| !known(&p.id) && !stored.contains(&p.id)) {
            repo.delete_unless_locked(&Kind::Quarantine.path(&id)).await?;
        }
    }
    Ok(())
}

/// The orphans deleted of `candidates`: those older than every live
/// session and the grace period, and in no mark.
async fn delete_orphans(
    repo: &Repository,
    candidates: Vec<Id>,
    live: &[SessionInfo],
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Result<Vec<Id>> {
    // Marks written by a concurrent prune name packs this view never saw.
    let marked: IdSet = repo.load_marks().await?.iter().flat_map(|m| m.file.packs.iter().map(|p| p.id)).collect();
    let before = live.iter().map(|s| s.started).min().unwrap_or(now).min(now - grace) - SLOP;
    let times: Vec<(Id, Option<DateTime<Utc>>)> = futures::stream::iter(candidates.into_iter().filter(|p| !marked.contains(p)))
        .map(|p| async move { Ok::<_, Error>((p, unless_gone(repo.stored_time(&Kind::Pack.path(&p)).await)?)) })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut deleted = Vec::new();
    for (p, t) in times {
        if t.is_some_and(|t| t < before) && delete_pack(repo, &p, now).await? {
            deleted.push(p);
        }
    }
    Ok(deleted)
}

/// Heartbeats of sessions long dead (killed writers) are removed.
async fn dead_sessions(repo: &Repository, now: DateTime<Utc>, grace: chrono::Duration) -> Result<()> {
    let timeout = chrono::Duration::seconds(repo.config().session_timeout_secs as i64);
    for s in session::sessions(repo).await? {
        if s.ended || now - s.last_beat > timeout + grace {
            session::remove(repo, &s.id).await?;
        }
    }
    Ok(())
}
