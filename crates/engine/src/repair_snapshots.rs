//! `repair snapshots`: rewrite snapshots that need blobs which are gone or
//! damaged, leaving out exactly the files (and directory listings) that
//! cannot be restored, and saying which.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::check::{Judged, judge_pack, listed_entries};
use crate::index::Index;
use crate::objects::{Kind, is_damage, list_names};
use crate::pack::BlobKind;
use crate::salvage::{Damaged, Salvaged, salvage};
use crate::session::Session;
use crate::sink::{BlobSink, Step};
use crate::tree::{Node, Tree};
use crate::{Id, IdSet, Repository, Result, Snapshot};

#[derive(Clone, Debug, Default)]
pub struct RepairSnapshotsOptions {
    pub dry_run: bool,
    /// Remove each damaged snapshot once its repaired copy is saved.
    pub forget: bool,
    /// Read every pack first, so damaged blobs count as lost, not only
    /// missing ones.
    pub read_data: bool,
}

#[derive(Debug, Serialize)]
pub struct RepairedSnapshot {
    pub id: Id,
    /// The repaired copy (none in a dry run, unless an earlier repair saved it).
    pub repaired: Option<Id>,
    /// The copy was saved by an earlier repair, which left the original.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub earlier: bool,
    /// Paths left out: files whose data is lost, directories whose listing is.
    pub lost: Vec<String>,
}

/// What a repair did: the snapshots it saved again, and what it took out
/// of the index.
#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub snapshots: Vec<RepairedSnapshot>,
    pub index: Salvaged,
}

pub async fn repair_snapshots(repo: Arc<Repository>, opts: &RepairSnapshotsOptions) -> Result<RepairReport> {
    // Snapshots first, the index after: a backup saves its index before its
    // snapshot, so an index read later knows every blob of the snapshots
    // listed. Read the other way round, a snapshot that a concurrent backup
    // saved in between would look as if its data were lost, and be "repaired"
    // into one without its files.
    let snaps = repo.snapshots().await?;
    repo.reset_index().await;
    let index = repo.index().await?;
    let damaged = damaged_blobs(&repo, &index, opts.read_data).await?;
    let session = if opts.dry_run { None } else { Some(Session::start(repo.clone(), "repair snapshots").await?) };
    let mut result = run(&repo, snaps, &index, &damaged, opts, session.as_ref())
        .await
        .map(|snapshots| RepairReport { snapshots, index: Salvaged::default() });
    if let (Some(s), Ok(report)) = (&session, &mut result) {
        // The snapshots first: a crash in between leaves them repaired
        // and the index as it was, which the next repair takes out.
        match salvage(&repo, &damaged, s).await {
            Ok(done) => report.index = done,
            Err(e) => result = Err(e),
        }
    }
    if let Some(s) = session {
        s.end().await?;
    }
    repo.reset_index().await;
    result
}

/// Packs missing from storage, and with `read_data` unreadable packs and
/// blobs that fail to read back. A pack whose trailer is damaged holds its
/// blobs where the index files say: those that read back whole are copied
/// out with the rest of a damaged pack's.
async fn damaged_blobs(repo: &Repository, index: &Index, read_data: bool) -> Result<Damaged> {
    let stored: IdSet = list_names(repo.operator(), Kind::Pack).await?.iter().filter_map(|n| n.parse().ok()).collect();
    let mut bad_packs: IdSet = index.packs().map(|(p, _)| p).filter(|p| !stored.contains(p)).collect();
    let mut damaged = Damaged::default();
    if read_data {
        let mut trailers = IdSet::default();
        for (pack, _) in index.packs().filter(|(p, _)| stored.contains(p)) {
            match judge_pack(repo, &pack, None).await {
                Ok(Judged::Trailer(_)) => _ = trailers.insert(pack),
                judged => damaged.judged(pack, judged, &mut bad_packs)?,
            }
        }
        let listed = listed_entries(repo, &trailers).await?;
        for pack in trailers {
            match listed.get(&pack) {
                Some(entries) => {
                    damaged.holding.insert(pack);
                    damaged.judged(pack, judge_pack(repo, &pack, Some(entries.clone())).await, &mut bad_packs)?;
                }
                None => _ = bad_packs.insert(pack),
            }
        }
    }
    damaged.packs = bad_packs;
    Ok(damaged)
}

impl Damaged {
    /// Take in how `pack` was judged: its damaged blobs, or the pack as unreadable.
    fn judged(&mut self, pack: Id, judged: Result<Judged>, bad_packs: &mut IdSet) -> Result<()> {
        match judged {
            Ok(Judged::Blobs(bad)) if bad.is_empty() => {}
            Ok(Judged::Blobs(bad)) => {
                self.holding.insert(pack);
                self.blobs.extend(bad.into_iter().map(|(b, _)| b));
            }
            Ok(Judged::Trailer(_)) => _ = bad_packs.insert(pack),
            // An outage is no damage: what it hides is not lost.
            Err(e) if is_damage(&e) => _ = bad_packs.insert(pack),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

async fn run(
    repo: &Repository,
    snaps: Vec<Snapshot>,
    index: &Index,
    damaged: &Damaged,
    opts: &RepairSnapshotsOptions,
    session: Option<&Session>,
) -> Result<Vec<RepairedSnapshot>> {
    let sink = if opts.dry_run { None } else { Some(BlobSink::new(repo).await?) };
    let mut fixer = Fixer { repo, index, damaged, sink, lost_files: (0, 0) };
    // The copies earlier repairs saved, by original and tree: a repair run
    // again while an original is kept saves no second copy of it.
    let earlier: HashMap<(Id, Id), Id> =
        snaps.iter().filter(|s| s.tags.iter().any(|t| t == "repaired")).filter_map(|s| Some(((s.parent?, s.tree), s.id))).collect();
    let mut out = Vec::new();
    for snap in snaps {
        let mut lost = Vec::new();
        fixer.lost_files = (0, 0);
        let tree = fixer.tree(snap.tree, String::new(), &mut lost).await?;
        if lost.is_empty() {
            continue;
        }
        if let Some(&copy) = earlier.get(&(snap.id, tree)) {
            out.push(RepairedSnapshot { id: snap.id, repaired: Some(copy), earlier: true, lost });
            continue;
        }
        let mut repaired = None;
        if let (Some(sink), Some(session)) = (fixer.sink.as_mut(), session) {
            sink.flush().await?;
            let mut tags = snap.tags.clone();
            tags.push("repaired".into());
            // Not `original`: a copy off site that lost files no longer stands
            // for its source's snapshot, which the next copy carries again whole.
            let mut copy = Snapshot { id: Id::default(), tree, tags, parent: Some(snap.id), name: None, original: None, ..snap.clone() };
            // What the copy holds: the files left out are not in its totals
            // (those of a lost directory listing cannot be known).
            if let Some(summary) = copy.summary.as_mut() {
                summary.total_files_processed = summary.total_files_processed.saturating_sub(fixer.lost_files.0);
                summary.total_bytes_processed = summary.total_bytes_processed.saturating_sub(fixer.lost_files.1);
            }
            crate::backup::commit(repo, session, &mut copy).await?;
            repaired = Some(copy.id);
            if opts.forget {
                repo.delete(&Kind::Snapshot.path(&snap.id)).await?;
            }
        }
        out.push(RepairedSnapshot { id: snap.id, repaired, earlier: false, lost });
    }
    if opts.forget && !opts.dry_run {
        forget_repaired_before(repo, &out).await?;
    }
    Ok(out)
}

/// Forget each original an earlier repair saved a copy of, unless this run
/// found the copy damaged too (its tree's pack lost since): then the
/// original may hold what the copy lost.
async fn forget_repaired_before(repo: &Repository, out: &[RepairedSnapshot]) -> Result<()> {
    let damaged: IdSet = out.iter().map(|r| r.id).collect();
    for r in out.iter().filter(|r| r.earlier) {
        if r.repaired.is_some_and(|copy| !damaged.contains(&copy)) {
            repo.delete(&Kind::Snapshot.path(&r.id)).await?;
        }
    }
    Ok(())
}

struct Fixer<'a> {
    repo: &'a Repository,
    index: &'a Index,
    damaged: &'a Damaged,
    sink: Option<BlobSink<'a>>,
    /// Files the snapshot being repaired loses, and their bytes.
    lost_files: (u64, u64),
}

impl Fixer<'_> {
    fn lost(&self, id: &Id) -> bool {
        self.damaged.blobs.contains(id) || self.index.pack_of(id).is_none_or(|p| self.damaged.packs.contains(&p))
    }

    /// The repaired tree's id. A tree that stays the same keeps its id,
    /// unless only a marked pack holds it: then it is stored again, so that
    /// the new snapshot depends on nothing a prune is about to delete.
    fn tree<'s>(&'s mut self, id: Id, path: String, lost: &'s mut Vec<String>) -> Step<'s, Id> {
        Box::pin(async move {
            let t = match self.lost(&id) {
                true => None,
                false => match self.repo.load_tree(&id).await {
                    Ok(t) => Some(t),
                    Err(e) if is_damage(&e) => None,
                    Err(e) => return Err(e),
                },
            };
            let Some(t) = t else {
                lost.push(format!("{}/ (the directory listing)", path));
                return self.store(&Tree { nodes: Vec::new() }).await;
            };
            let before = lost.len();
            let mut nodes: Vec<Node> = Vec::with_capacity(t.nodes.len());
            for mut node in t.nodes {
                let p = format!("{path}/{}", node.name);
                if node.content.iter().any(|b| self.lost(b)) {
                    lost.push(p);
                    self.lost_files = (self.lost_files.0 + 1, self.lost_files.1 + node.size);
                    continue;
                }
                self.keep_blobs(&node.content).await?;
                if let Some(sub) = node.subtree {
                    node.subtree = Some(self.tree(sub, p, lost).await?);
                }
                nodes.push(node);
            }
            let held = self.sink.as_ref().is_none_or(|s| s.holds(&id));
            if lost.len() == before && held {
                return Ok(id);
            }
            self.store(&Tree { nodes }).await
        })
    }

    /// Data blobs that only a marked pack holds are stored again.
    async fn keep_blobs(&mut self, ids: &[Id]) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else { return Ok(()) };
        for id in ids {
            if !sink.holds(id) {
                let plain = self.repo.load_blob(id).await?;
                sink.put(BlobKind::Data, &plain).await?;
            }
        }
        Ok(())
    }

    async fn store(&mut self, tree: &Tree) -> Result<Id> {
        match self.sink.as_mut() {
            Some(sink) => sink.put(BlobKind::Tree, &tree.encode()).await,
            None => Ok(self.repo.crypto().blob_id(&tree.encode())),
        }
    }
}
