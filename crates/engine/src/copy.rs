//! `copy`: replicate snapshots into another repository (off-site), with its
//! own key and backend.
//!
//! Blob ids are keyed hashes, so the same bytes have different ids in the
//! two repositories: trees are rewritten bottom-up with the target's ids,
//! and chunk boundaries are kept as they are. What the target already holds
//! is found without transferring it: the trees of a snapshot copied earlier
//! and of its copy have the same shape, and walking both side by side maps
//! every source id to its target id. Only blobs the target lacks travel.

use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use futures::StreamExt;
use serde::Serialize;

use crate::objects::{Kind, is_damage, unless_gone, vanished};
use crate::pack::BlobKind;
use crate::salvage::{Damaged, salvage};
use crate::session::Session;
use crate::sink::{BlobSink, Step};
use crate::tree::Tree;
use crate::{Error, Id, IdMap, IdSet, Repository, Result, Snapshot};

#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    pub dry_run: bool,
    /// Read back every pack written and authenticate each blob in it.
    pub verify: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub dry_run: bool,
    /// `source id -> target id` of each snapshot copied.
    pub copied: Vec<(Id, Id)>,
    /// Selected source snapshots the source forgot, and a prune swept
    /// data of, while they were copied: skipped.
    pub forgotten: Vec<Id>,
    /// Selected source snapshots with a tree or blob damaged or gone in the
    /// source, and the first such damage met: not copied (a copy holds
    /// whole snapshots only), the others copied all the same.
    pub damaged: Vec<(Id, String)>,
    /// Source snapshots the target already has.
    pub present: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub blobs_reused: u64,
    pub packs_written: usize,
    pub packs_verified: usize,
    /// The newest selected source snapshot the target did not have before
    /// this run, and how far it is ahead of the newest one it had.
    pub newest_missing: Option<DateTime<FixedOffset>>,
    pub lag_seconds: Option<i64>,
    /// Evidence entries carried to the target.
    pub evidence_copied: usize,
    /// Holds placed on copies whose originals are held in the source.
    pub holds_carried: usize,
    /// Evidence entries damaged in the source (number, damage), not carried.
    pub evidence_damaged: Vec<(u64, String)>,
}

/// Replication state of selected source snapshots against a target.
pub struct Pending {
    pub missing: Vec<Snapshot>,
    /// Pairs of (source, target) already replicated.
    pub pairs: Vec<(Snapshot, Snapshot)>,
}

pub async fn pending(selected: Vec<Snapshot>, dst: &Repository) -> Result<Pending> {
    let held = dst.snapshots().await?;
    // A copy that `repair snapshots` saved again without what it lost (and
    // kept) no longer stands for its original either.
    let repaired: IdSet = held.iter().filter(|s| s.tags.iter().any(|t| t == "repaired")).filter_map(|s| s.parent).collect();
    let copies: IdMap<Snapshot> = held.into_iter().filter(|s| !repaired.contains(&s.id)).filter_map(|s| Some((s.original?, s))).collect();
    let mut out = Pending { missing: Vec::new(), pairs: Vec::new() };
    for s in selected {
        match copies.get(&s.id) {
            Some(c) => out.pairs.push((s, c.clone())),
            None => out.missing.push(s),
        }
    }
    Ok(out)
}

/// How far the target is behind: seconds from the newest replicated
/// snapshot to the newest missing one (from the oldest missing one to now,
/// when nothing was replicated yet).
pub fn lag(p: &Pending) -> Option<(DateTime<FixedOffset>, i64)> {
    let newest_missing = p.missing.iter().map(|s| s.time).max()?;
    let secs = match p.pairs.iter().map(|(s, _)| s.time).max() {
        Some(replicated) => (newest_missing - replicated).num_seconds(),
        // Nothing replicated yet: everything since the oldest is at risk.
        None => (chrono::Utc::now().fixed_offset() - p.missing.iter().map(|s| s.time).min()?).num_seconds(),
    };
    Some((newest_missing, secs.max(0)))
}

pub async fn copy(src: Arc<Repository>, dst: Arc<Repository>, selected: Vec<Snapshot>, opts: &CopyOptions) -> Result<CopyReport> {
    let state = pending(selected, &dst).await.map_err(Error::in_target)?;
    let mut report = CopyReport { dry_run: opts.dry_run, present: state.pairs.len(), ..Default::default() };
    if let Some((t, secs)) = lag(&state) {
        report.newest_missing = Some(t);
        report.lag_seconds = Some(secs);
    }
    if !opts.dry_run {
        copy_evidence(&src, &dst, &mut report).await?;
    }
    if opts.dry_run {
        report.copied = state.missing.iter().map(|s| (s.id, Id::default())).collect();
        return Ok(report);
    }
    let mut pairs: Vec<(Id, Id)> = state.pairs.iter().map(|(s, d)| (s.id, d.id)).collect();
    if !state.missing.is_empty() {
        let session = Session::start(dst.clone(), "copy").await.map_err(Error::in_target)?;
        let result = run(&src, &dst, state, opts, &session, &mut report).await;
        let ended = session.end().await;
        dst.reset_index().await;
        result?;
        ended.map_err(Error::in_target)?;
    }
    pairs.extend(report.copied.iter().copied());
    report.holds_carried = carry_holds(&src, &dst, &pairs).await?;
    Ok(report)
}

/// Place a hold on each copy whose original is held in the source and
/// that holds none yet: a legal hold binds every copy of the data (the
/// off-site copy's own retention removed a held snapshot's copy). A hold
/// released in the source stays on the copies, whose release is asked of
/// their own repository. How many were placed.
async fn carry_holds(src: &Repository, dst: &Repository, pairs: &[(Id, Id)]) -> Result<usize> {
    let held = crate::holds::holds(src).await?;
    if held.is_empty() {
        return Ok(0);
    }
    let there: IdSet = crate::holds::holds(dst).await.map_err(Error::in_target)?.iter().map(|h| h.snapshot).collect();
    let mut placed = 0;
    for (original, copy) in pairs.iter().filter(|(_, copy)| !there.contains(copy)) {
        if let Some(h) = held.iter().find(|h| h.snapshot == *original) {
            let reason = format!("{} (held in the source repository by {} on {})", h.reason, h.by, h.time.format("%Y-%m-%d"));
            crate::holds::hold(dst, *copy, &reason).await.map_err(Error::in_target)?;
            placed += 1;
        }
    }
    Ok(placed)
}

/// Carry the evidence entries the target lacks, re-sealed with its key
/// under the same names (their chain is of plaintext hashes, so it holds
/// in both). First, so copied snapshots find the heads they name. An entry
/// damaged in the source is named and not carried: evidence is never
/// deleted, so one damaged entry must not stop every copy for good.
async fn copy_evidence(src: &Repository, dst: &Repository, report: &mut CopyReport) -> Result<()> {
    let have: std::collections::BTreeSet<(u64, Id)> = crate::evidence::names(dst).await.map_err(Error::in_target)?.into_iter().collect();
    for (seq, hash) in crate::evidence::names(src).await? {
        if have.contains(&(seq, hash)) {
            continue;
        }
        match crate::evidence::load_plain(src, seq, &hash).await {
            Ok(plain) => {
                crate::evidence::store(dst, &plain).await.map_err(Error::in_target)?;
                report.evidence_copied += 1;
            }
            Err(Error::Corrupt { reason, .. }) => report.evidence_damaged.push((seq, reason)),
            Err(e) if is_damage(&e) => report.evidence_damaged.push((seq, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn run(
    src: &Repository,
    dst: &Repository,
    state: Pending,
    opts: &CopyOptions,
    session: &Session,
    report: &mut CopyReport,
) -> Result<()> {
    let mut c = Copier {
        src,
        dst,
        sink: BlobSink::new(dst).await.map_err(Error::in_target)?,
        map: IdMap::default(),
        reused: 0,
        source_damaged: false,
    };
    for (s, d) in &state.pairs {
        c.learn(s.tree, d.tree).await?;
    }
    for snap in state.missing {
        c.source_damaged = false;
        let tree = match c.tree(snap.tree).await {
            // Copy holds no session in the source (§7.3a): a snapshot
            // forgotten there meanwhile may lose its data to a prune.
            // Damage in one snapshot must not hold back the newer ones.
            Err(e) if c.source_damaged => {
                match vanished(&e) && unless_gone(src.stored_time(&Kind::Snapshot.path(&snap.id)).await)?.is_none() {
                    true => report.forgotten.push(snap.id),
                    false => report.damaged.push((snap.id, e.to_string())),
                }
                continue;
            }
            tree => tree?,
        };
        c.sink.flush().await.map_err(Error::in_target)?;
        // Every pack before these read back: a bad one ends the copy.
        if opts.verify {
            verify(dst, &c.sink.written[report.packs_verified..], session, report).await.map_err(Error::in_target)?;
        }
        let mut copy = Snapshot { id: Id::default(), tree, original: Some(snap.id), parent: None, ..snap.clone() };
        crate::backup::commit(dst, session, &mut copy).await.map_err(Error::in_target)?;
        report.copied.push((snap.id, copy.id));
    }
    report.blobs_copied = c.sink.stored;
    report.bytes_copied = c.sink.stored_bytes;
    report.packs_written = c.sink.written.len();
    report.blobs_reused = c.reused + c.sink.present;
    if opts.verify {
        verify(dst, &c.sink.written[report.packs_verified..], session, report).await.map_err(Error::in_target)?;
    }
    Ok(())
}

/// Read back the packs just written to the target, before the snapshot
/// that needs them is saved. What does not read back is taken out of the
/// target's index (`salvage`), so that the next copy uploads it again
/// instead of deduplicating against it, and the copy fails naming it.
async fn verify(dst: &Repository, packs: &[Id], session: &Session, report: &mut CopyReport) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    // Each blob is judged by its pack's trailer (opened and hashed). The
    // index is not loaded again for it, once per snapshot copied: the index
    // files written beside were sealed from the same entries.
    //
    // A damaged pack leaves the index whole: the source still has all its
    // blobs, and copying the readable ones within the target would write
    // through the same storage that just damaged them.
    let mut damaged = Damaged::default();
    let mut first = None;
    for pack in packs {
        match crate::check::verify_pack(dst, pack).await {
            Ok(bad) if bad.is_empty() => report.packs_verified += 1,
            Ok(bad) => {
                first.get_or_insert((*pack, bad[0].1.clone()));
                damaged.packs.insert(*pack);
            }
            Err(e) if is_damage(&e) => {
                first.get_or_insert((*pack, e.to_string()));
                damaged.packs.insert(*pack);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((pack, why)) = first else { return Ok(()) };
    salvage(dst, &damaged, session).await?;
    let next = "it is out of the target's index now, and the next copy uploads what it held again";
    Err(Error::corrupt("pack", pack, format!("it did not read back from the target ({why}); {next}")))
}

struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    sink: BlobSink<'a>,
    /// Source id to target id, for blobs and trees known to be in the target.
    map: IdMap<Id>,
    reused: u64,
    /// Whether a read of the source met damage (not the target's failure).
    source_damaged: bool,
}

impl Copier<'_> {
    /// Walk a replicated pair side by side and learn which target id each
    /// source id has. Only ids the target's index lists are trusted.
    fn learn(&mut self, s: Id, d: Id) -> Step<'_, ()> {
        Box::pin(async move {
            if self.map.contains_key(&s) {
                return Ok(());
            }
            let (st, dt) = match (self.src.load_tree(&s).await, self.dst.load_tree(&d).await) {
                (Ok(st), Ok(dt)) => (st, dt),
                // Learning only saves transfer: a damaged tree teaches nothing.
                (Err(e), _) | (_, Err(e)) if is_damage(&e) => return Ok(()),
                (Err(e), _) => return Err(e),
                (_, Err(e)) => return Err(e.in_target()),
            };
            if self.sink.holds(&d) {
                self.map.insert(s, d);
            }
            if st.nodes.len() != dt.nodes.len() {
                return Ok(());
            }
            for (a, b) in st.nodes.iter().zip(&dt.nodes) {
                if a.content.len() == b.content.len() {
                    for (x, y) in a.content.iter().zip(&b.content).filter(|(_, y)| self.sink.holds(y)) {
                        self.map.insert(*x, *y);
                    }
                }
                if let (Some(x), Some(y)) = (a.subtree, b.subtree) {
                    self.learn(x, y).await?;
                }
            }
            Ok(())
        })
    }

    /// The target id of a source tree, storing in the target what it lacks.
    fn tree(&mut self, id: Id) -> Step<'_, Id> {
        Box::pin(async move {
            if let Some(d) = self.map.get(&id) {
                self.reused += 1;
                return Ok(*d);
            }
            let mut t: Tree = self.read_source(self.src.load_tree(&id).await)?;
            for node in &mut t.nodes {
                if let Some(sub) = node.subtree {
                    node.subtree = Some(self.tree(sub).await?);
                }
                if !node.content.is_empty() {
                    node.content = self.contents(&node.content).await?;
                }
            }
            let new = self.sink.put(BlobKind::Tree, &t.encode()).await.map_err(Error::in_target)?;
            self.map.insert(id, new);
            Ok(new)
        })
    }

    /// `r`, a read of the source, noting whether it met damage there.
    fn read_source<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.source_damaged |= is_damage(e);
        }
        r
    }

    async fn contents(&mut self, ids: &[Id]) -> Result<Vec<Id>> {
        let mut wanted: Vec<Id> = ids.iter().filter(|i| !self.map.contains_key(i)).copied().collect();
        wanted.sort();
        wanted.dedup();
        self.reused += (ids.len() - wanted.len()) as u64;
        let src = self.src;
        let mut fetched =
            futures::stream::iter(wanted).map(|id| async move { Ok::<_, Error>((id, src.load_blob(&id).await?)) }).buffered(8);
        while let Some(r) = fetched.next().await {
            let (id, plain) = self.read_source(r)?;
            let new = self.sink.put(BlobKind::Data, &plain).await.map_err(Error::in_target)?;
            self.map.insert(id, new);
        }
        Ok(ids.iter().map(|i| self.map[i]).collect())
    }
}

#[cfg(test)]
mod tests;
