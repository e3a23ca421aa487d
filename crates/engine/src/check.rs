//! `check`: prove the repository is whole, and name what is not.
//!
//! Structure is always checked (every index file opens, every indexed pack
//! exists with its size, every snapshot opens and every tree and blob it
//! references is indexed). With `read_data` the packs themselves are read:
//! trailers must match the index and every blob must decrypt to its id.
//! Each problem names the snapshots and files it damages.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use futures::StreamExt;
use serde::Serialize;

use crate::index::{Index, IndexBuilder, IndexFile};
use crate::objects::{Kind, each_with_size, is_damage, is_not_found, unless_gone};
use crate::pack::{PackEntry, open_blob, read_trailer};
use crate::walk::walk;
use crate::{Error, Id, IdMap, IdSet, Repository, Result};

#[derive(Debug, Default, Clone)]
pub struct CheckOptions {
    /// The packs whose data is read and verified.
    pub read_data: ReadData,
    /// Packs read and verified besides, wherever they fall: those an earlier
    /// check found damaged, which must not go unread until they are dealt
    /// with while the slices move on (one no index lists any more is not read).
    pub also_read: IdSet,
}

/// Which packs a check reads whole: those whose id, read as a number,
/// falls in `from..to` of the id space. Pack ids are random, so that is
/// the same share of the packs; and a pack stays in its slice, so the
/// slices `1/n` … `n/n` of successive checks read every pack once.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ReadData {
    from: f64,
    to: f64,
}

impl ReadData {
    pub const NONE: ReadData = ReadData { from: 0.0, to: 0.0 };
    pub const ALL: ReadData = ReadData { from: 0.0, to: 1.0 };

    /// The first `fraction` (0..=1) of the packs, the same ones every time.
    pub fn fraction(fraction: f64) -> ReadData {
        ReadData::window(0.0, fraction)
    }

    /// A `fraction` (0..=1) of the packs from `start` (0..1) on, wrapping
    /// past the last: with a random start, another share each time, as
    /// restic's percentage reads (the same share every time left most of a
    /// repository unread by a daily 1 % check).
    pub fn window(start: f64, fraction: f64) -> ReadData {
        let from = start.clamp(0.0, 1.0);
        ReadData { from, to: from + fraction.clamp(0.0, 1.0) }
    }

    /// Slice `n` of `of` (`1 ≤ n ≤ of`).
    pub fn slice(n: u32, of: u32) -> ReadData {
        let of = of.max(1);
        let n = n.clamp(1, of);
        ReadData { from: f64::from(n - 1) / f64::from(of), to: f64::from(n) / f64::from(of) }
    }

    pub fn any(&self) -> bool {
        self.to > self.from
    }

    fn wants(&self, pack: &Id) -> bool {
        // In [0, 1): every pack falls in exactly one of the slices.
        let v = f64::from(u32::from_le_bytes(pack.0[..4].try_into().expect("4 bytes"))) / (f64::from(u32::MAX) + 1.0);
        (self.from <= v && v < self.to) || v + 1.0 < self.to
    }
}

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Problem {
    /// The damaged object, e.g. `pack 1a2b…`.
    pub object: String,
    pub error: String,
    /// Short ids of the snapshots that lose data through it.
    pub snapshots: Vec<String>,
    /// Paths (in their snapshots) that cannot be restored fully.
    pub files: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub packs_read: usize,
    pub unindexed_packs: Vec<String>,
    pub problems: Vec<Problem>,
    /// The stored packs found damaged, unreadable or at another size, by
    /// their full ids (sorted): what a later check reads again.
    pub damaged_packs: Vec<Id>,
    /// Index files that do not open: the blobs they list pass for lost
    /// until `repair index` rebuilds the index from the packs.
    pub damaged_index_files: Vec<Id>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How often `check` runs when it found problems and the index files or
/// marks changed meanwhile.
const RUNS: usize = 3;

/// Readers hold no session, so a prune or backup may change the repository
/// while `check` reads it. A prune rewrites index files or marks before it
/// deletes anything, a backup adds index files: problems found while those
/// changed are checked again against what storage holds then, so a
/// concurrent command is not taken for damage. A pack's bytes never change,
/// so a run after the first reads again only the packs the run before found
/// damaged or could not read: check speaks for the packs there were when it
/// began.
pub async fn check(repo: &Repository, opts: CheckOptions) -> Result<CheckReport> {
    repo.ensure_memory().await?;
    let first = survey(repo).await?;
    settle(repo, &opts, first).await
}

/// Judge `first`, and survey and judge again while problems were found and
/// the index files or marks changed since the survey.
async fn settle(repo: &Repository, opts: &CheckOptions, first: Survey) -> Result<CheckReport> {
    let (mut surveyed, mut only, mut run) = (first, None, 1);
    loop {
        let (report, built_from, bad) = judge(repo, opts, surveyed, only.as_ref()).await?;
        if report.ok() || run == RUNS || repo.index_and_marks().await? == built_from {
            return Ok(report);
        }
        only = Some(bad);
        run += 1;
        surveyed = survey(repo).await?;
    }
}

/// What a check run judges: the snapshots, then the index and the packs
/// storage holds, listed in that order.
struct Survey {
    report: CheckReport,
    snapshots: Vec<Id>,
    index: std::sync::Arc<Index>,
    stored: Stored,
    /// The index files and marks the index was built from.
    built_from: Vec<Id>,
}

async fn survey(repo: &Repository) -> Result<Survey> {
    let mut report = CheckReport::default();
    // Snapshots first: each is stored after the index files it needs, so a
    // backup committed meanwhile finds its blobs in the index loaded next.
    let snapshots = repo.list_ids(Kind::Snapshot).await?;
    let (index, stored, built_from) = load_index(repo, &mut report).await?;
    report.blobs = index.blob_count();
    report.unindexed_packs = stored.unindexed.clone();
    Ok(Survey { report, snapshots, index, stored, built_from })
}

/// Judge a survey, reading (of the selected packs) only those in `only`
/// if given; the index files and marks it judged against, and the packs
/// it found damaged or could not read.
async fn judge(repo: &Repository, opts: &CheckOptions, survey: Survey, only: Option<&IdSet>) -> Result<(CheckReport, Vec<Id>, IdSet)> {
    let Survey { mut report, snapshots, index, stored, built_from } = survey;
    // Packs that cannot be read at all, and packs with some damaged blobs.
    let mut bad_packs = missing_or_resized(&index, &stored, &mut report);
    let mut read = Read::default();
    if opts.read_data.any() || !opts.also_read.is_empty() {
        let judged = read_packs(repo, &index, &stored, opts, only, &mut report).await;
        read = read_judged(repo, &index, &stored, judged, &mut bad_packs).await?;
    }
    let Read { damaged, partly_bad, swept } = read;
    // A pack that cannot be read at all takes all its blobs with it; one
    // that can has been judged blob by blob above.
    let unreadable: IdMap<String> = bad_packs.iter().cloned().collect();
    check_snapshots(repo, snapshots, &mut report, &Damage { blobs: damaged, packs: unreadable }).await?;
    // Every damaged pack is a problem, even one no snapshot uses.
    for (pack, why) in bad_packs.iter().chain(&partly_bad).filter(|(p, _)| !swept.contains(p)) {
        let object = format!("pack {}", pack.short());
        if !report.problems.iter().any(|p| p.object == object) {
            report.problems.push(Problem { object, error: why.clone(), snapshots: vec![], files: vec![] });
        }
    }
    let bad: IdSet = bad_packs.iter().chain(&partly_bad).map(|(p, _)| *p).collect();
    // Those storage holds: a missing pack cannot be read again, and every check finds it missing.
    let held = |p: &Id| index.pack_num(p).is_some_and(|n| stored.size(&index, n as usize, p).is_some());
    report.damaged_packs = bad.iter().filter(|p| !swept.contains(p) && held(p)).copied().collect();
    report.damaged_packs.sort_unstable();
    Ok((report, built_from, bad))
}

/// What reading the packs found besides the packs that cannot be read at all.
#[derive(Default)]
struct Read {
    /// Damaged blobs: the pack they are in, and why.
    damaged: HashMap<Id, (String, String)>,
    /// Packs read blob by blob that hold damage, with the first problem.
    partly_bad: Vec<(Id, String)>,
    /// Marked packs a prune swept since the listing: no damage by
    /// themselves, only for a snapshot that needs a blob found only there.
    swept: IdSet,
}

/// Sort the packs read into `Read` and `bad_packs`; a pack whose trailer
/// is damaged is read again blob by blob as the index files list it, so
/// that the trailer takes no blob along that still reads back whole.
async fn read_judged(
    repo: &Repository,
    index: &Index,
    stored: &Stored,
    judged: Vec<(Id, Result<Judged>)>,
    bad_packs: &mut Vec<(Id, String)>,
) -> Result<Read> {
    let mut read = Read::default();
    let mut trailers: Vec<(Id, Error)> = Vec::new();
    let blobs = |pack: Id, bad: Vec<DamagedBlob>, problem: Option<String>, read: &mut Read| {
        if let Some(why) = problem.or_else(|| bad.first().map(|(_, why)| why.clone())) {
            read.partly_bad.push((pack, why));
        }
        for (blob, why) in bad {
            read.damaged.insert(blob, (format!("pack {}", pack.short()), why));
        }
    };
    for (pack, result) in judged {
        match result {
            // Storage that does not answer says nothing about the data:
            // no check may report an outage as damage.
            Err(e) if !is_damage(&e) => return Err(e),
            Err(e) => {
                if is_not_found(&e) && stored.is_marked(index, &pack) {
                    read.swept.insert(pack);
                }
                bad_packs.push((pack, e.to_string()));
            }
            Ok(Judged::Trailer(e)) => trailers.push((pack, e)),
            Ok(Judged::Blobs(bad)) => blobs(pack, bad, None, &mut read),
        }
    }
    let listed = listed_entries(repo, &trailers.iter().map(|(p, _)| *p).collect()).await?;
    for (pack, trailer) in trailers {
        let Some(entries) = listed.get(&pack) else {
            bad_packs.push((pack, trailer.to_string()));
            continue;
        };
        match judge_pack(repo, &pack, Some(entries.clone())).await {
            Err(e) if !is_damage(&e) => return Err(e),
            Err(_) | Ok(Judged::Trailer(_)) => bad_packs.push((pack, trailer.to_string())),
            Ok(Judged::Blobs(bad)) => {
                let whole = entries.len() - bad.len();
                let problem = format!("{trailer}; {whole} of its blobs read back whole where the index says");
                blobs(pack, bad, Some(problem), &mut read);
            }
        }
    }
    Ok(read)
}

/// The index of the intact index files and the marked packs storage still
/// holds, set as the repository's; the packs storage holds; the index files
/// and marks it was built from. A damaged index file is a problem in
/// `report`; one deleted after the listing was superseded by a prune, and
/// the files are listed again.
async fn load_index(repo: &Repository, report: &mut CheckReport) -> Result<(std::sync::Arc<Index>, Stored, Vec<Id>)> {
    let mut attempts = 0;
    let (builder, mut built_from) = loop {
        match index_files(repo).await? {
            Some((builder, ids, problems)) => {
                for (id, problem) in problems {
                    report.damaged_index_files.push(id);
                    report.problems.push(problem);
                }
                break (builder, ids);
            }
            None if attempts < 5 => attempts += 1,
            None => return Err(Error::Invalid("the index files kept changing while they were read".into())),
        }
    };
    // Judge everything else against the index files that are intact, so a
    // damaged index shows up as the blobs it made unreachable.
    let (mut index, _) = builder.finish(&IdSet::default());
    // Marked packs still serve readers until a prune sweeps them; one already
    // swept is no problem unless a snapshot needs it, which the walk shows.
    let marks = repo.load_marks().await?;
    built_from.extend(marks.iter().map(|m| m.id));
    built_from.sort_unstable();
    let marked: IdSet = marks.iter().flat_map(|m| m.file.packs.iter().map(|p| p.id)).filter(|p| !index.has_pack(p)).collect();
    let stored = Stored::list(repo, &index, &marked).await?;
    for m in &marks {
        for p in m.file.packs.iter().filter(|p| stored.marked.contains_key(&p.id)) {
            index.add_pack(p.id, p.size, &p.entries);
        }
    }
    drop(marks);
    index.seal();
    let index = std::sync::Arc::new(index);
    repo.set_index(index.clone()).await;
    Ok((index, stored, built_from))
}

/// The index files as listed, each added to a builder one at a time and
/// dropped (docs/ARCHITECTURE.md, "Index memory"), with their ids and a
/// problem for each damaged one, which adds nothing; `None` when one was
/// deleted after the listing.
async fn index_files(repo: &Repository) -> Result<Option<(IndexBuilder, Vec<Id>, Vec<(Id, Problem)>)>> {
    let ids = repo.list_ids(Kind::Index).await?;
    let (mut builder, mut problems) = (IndexBuilder::default(), Vec::new());
    for id in &ids {
        let added = match repo.load_file_uncached(Kind::Index, id).await {
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if !is_damage(&e) => return Err(e),
            loaded => loaded.and_then(|plain| builder.add_file(*id, &plain)),
        };
        if let Err(e) = added {
            problems
                .push((*id, Problem { object: format!("index {}", id.short()), error: e.to_string(), snapshots: vec![], files: vec![] }));
        }
    }
    Ok(Some((builder, ids, problems)))
}

/// The indexed packs storage lacks or holds at another size than the
/// index says, each with why; counts the packs in `report`.
fn missing_or_resized(index: &Index, stored: &Stored, report: &mut CheckReport) -> Vec<(Id, String)> {
    let mut bad_packs = Vec::new();
    for (n, (pack, size)) in index.packs().enumerate() {
        report.packs += 1;
        match stored.size(index, n, &pack) {
            None => bad_packs.push((pack, "it is missing from storage".into())),
            Some(s) if s != size => bad_packs.push((pack, format!("it is {s} bytes, the index says {size}"))),
            _ => {}
        }
    }
    bad_packs
}

/// Read the stored packs `opts` selects (of them only those in `only`, if
/// given), four at a time: each pack's damaged blobs, or why it cannot be
/// read at all.
async fn read_packs(
    repo: &Repository,
    index: &Index,
    stored: &Stored,
    opts: &CheckOptions,
    only: Option<&IdSet>,
    report: &mut CheckReport,
) -> Vec<(Id, Result<Judged>)> {
    let selected: Vec<Id> = index
        .packs()
        .enumerate()
        .filter(|(n, (p, _))| stored.size(index, *n, p).is_some() && (opts.read_data.wants(p) || opts.also_read.contains(p)))
        .map(|(_, (p, _))| p)
        .collect();
    report.packs_read = selected.len();
    let read = selected.into_iter().filter(|p| only.is_none_or(|o| o.contains(p)));
    futures::stream::iter(read).map(|p| async move { (p, judge_pack(repo, &p, None).await) }).buffer_unordered(4).collect().await
}

/// The packs storage holds, by pack number: each listed pack is compared
/// with the index as the listing streams, so what stays is a byte a pack
/// and the few that differ, not a size per pack.
struct Stored {
    /// Whether storage holds each pack the index files list, by number.
    present: Vec<bool>,
    /// Stored size of each listed pack the index gives another size.
    resized: HashMap<u32, u64>,
    /// Stored size of each marked pack (not in an index file) storage holds.
    marked: IdMap<u64>,
    /// Packs neither an index file nor a mark lists.
    unindexed: Vec<String>,
}

impl Stored {
    async fn list(repo: &Repository, index: &Index, marked: &IdSet) -> Result<Stored> {
        let mut s =
            Stored { present: vec![false; index.pack_count()], resized: HashMap::new(), marked: IdMap::default(), unindexed: Vec::new() };
        each_with_size(repo.operator(), Kind::Pack, |name, size| {
            let Ok(pack) = name.parse::<Id>() else { return };
            match index.pack_num(&pack) {
                Some(n) => {
                    s.present[n as usize] = true;
                    if size != index.pack_size(n) {
                        s.resized.insert(n, size);
                    }
                }
                None if marked.contains(&pack) => _ = s.marked.insert(pack, size),
                None => s.unindexed.push(name.to_string()),
            }
        })
        .await?;
        Ok(s)
    }

    /// Whether `pack` is in `index` by a mark only (they come after the
    /// index files' packs).
    fn is_marked(&self, index: &Index, pack: &Id) -> bool {
        index.pack_num(pack).is_some_and(|n| n as usize >= self.present.len())
    }

    /// The stored size of pack `n` of `index` (the marked ones come after
    /// the index files'), `None` if storage lacks it.
    fn size(&self, index: &Index, n: usize, pack: &Id) -> Option<u64> {
        match self.present.get(n) {
            Some(false) => None,
            Some(true) => Some(self.resized.get(&(n as u32)).copied().unwrap_or_else(|| index.pack_size(n as u32))),
            None => self.marked.get(pack).copied(),
        }
    }
}

/// A blob found damaged, with the reason.
pub(crate) type DamagedBlob = (Id, String);

/// How a pack read whole was judged.
pub(crate) enum Judged {
    /// Its blobs, as its trailer or the index files list them: those
    /// damaged, with the reason.
    Blobs(Vec<DamagedBlob>),
    /// Its trailer cannot be used: the blobs are still where the index
    /// files say ([`listed_entries`]), each sealed on its own.
    Trailer(Error),
}

/// Read a whole pack and judge every blob in it, as `listed` lists them or
/// else as its trailer does: `Err` when the pack cannot be read at all.
pub(crate) async fn judge_pack(repo: &Repository, pack: &Id, listed: Option<Vec<PackEntry>>) -> Result<Judged> {
    let bytes = repo.read(&Kind::Pack.path(pack)).await?;
    // Entries from the trailer are compared with the index; those from the
    // index files are the index's, and the index may not load (a repair of
    // it asks).
    let (entries, index) = match listed {
        Some(entries) => (entries, None),
        None => match read_trailer(repo.crypto(), pack, &bytes, bytes.len() as u64) {
            Ok(entries) => (entries, Some(repo.index().await?)),
            Err(e) if is_damage(&e) => return Ok(Judged::Trailer(e)),
            Err(e) => return Err(e),
        },
    };
    let crypto = repo.crypto().clone();
    let pack = *pack;
    tokio::task::spawn_blocking(move || {
        let judge = |e: &PackEntry| -> Result<()> {
            let sealed = bytes
                .get(e.offset as usize..e.offset as usize + e.length as usize)
                .ok_or_else(|| Error::corrupt("blob", e.id, "it lies past the end of its pack"))?;
            let plain = open_blob(&crypto, e, sealed)?;
            if crypto.blob_id(&plain) != e.id {
                return Err(Error::corrupt("blob", e.id, "its content does not hash to its id"));
            }
            if index.as_ref().and_then(|i| i.get(&e.id)).is_some_and(|(p, ie)| p == pack && ie != *e) {
                return Err(Error::corrupt("blob", e.id, "the pack trailer and the index disagree"));
            }
            Ok(())
        };
        Ok(Judged::Blobs(entries.iter().filter_map(|e| judge(e).err().map(|err| (e.id, err.to_string()))).collect()))
    })
    .await
    .map_err(|e| Error::Invalid(format!("check thread failed: {e}")))?
}

/// Read a whole pack and judge every blob in it by its trailer: `Err` when
/// the pack itself is unreadable, else the blobs that are damaged, with the
/// reason. For packs just written, which must read back whole.
pub(crate) async fn verify_pack(repo: &Repository, pack: &Id) -> Result<Vec<DamagedBlob>> {
    match judge_pack(repo, pack, None).await? {
        Judged::Blobs(bad) => Ok(bad),
        Judged::Trailer(e) => Err(e),
    }
}

/// The entries the index files and marks list for each of `packs`, read
/// in one pass (a file that does not open is passed over): where the
/// blobs of a pack with a damaged trailer are.
pub(crate) async fn listed_entries(repo: &Repository, packs: &IdSet) -> Result<IdMap<Vec<PackEntry>>> {
    let mut out: IdMap<Vec<PackEntry>> = IdMap::default();
    if packs.is_empty() {
        return Ok(out);
    }
    for id in repo.list_ids(Kind::Index).await? {
        let plain = match unless_gone(repo.load_file_uncached(Kind::Index, &id).await) {
            Ok(Some(plain)) => plain,
            Ok(None) => continue,
            Err(e) if is_damage(&e) => continue,
            Err(e) => return Err(e),
        };
        let Ok(file) = IndexFile::decode(&id, &plain) else { continue };
        for p in file.packs.into_iter().filter(|p| packs.contains(&p.id)) {
            out.entry(p.id).or_insert(p.entries);
        }
    }
    for m in repo.load_marks().await? {
        for p in m.file.packs.into_iter().filter(|p| packs.contains(&p.id)) {
            out.entry(p.id).or_insert(p.entries);
        }
    }
    Ok(out)
}

/// What is damaged: blobs found bad by reading, with the object and why,
/// and packs that cannot be read at all, which take all their blobs along.
struct Damage {
    blobs: HashMap<Id, (String, String)>,
    packs: IdMap<String>,
}

impl Damage {
    fn of(&self, index: &Index, id: &Id) -> Option<(String, String)> {
        self.blobs.get(id).cloned().or_else(|| {
            let pack = index.pack_of(id)?;
            Some((format!("pack {}", pack.short()), self.packs.get(&pack)?.clone()))
        })
    }
}

/// Walk the snapshots `ids`, but those forgotten since the listing.
async fn check_snapshots(repo: &Repository, ids: Vec<Id>, report: &mut CheckReport, damaged: &Damage) -> Result<()> {
    let index = repo.index().await?;
    let mut found: HashMap<String, Problem> = HashMap::new();
    for id in ids {
        let loaded = match unless_gone(repo.load_file_uncached(Kind::Snapshot, &id).await) {
            Ok(None) => continue,
            Ok(Some(bytes)) => crate::repo::parse_snapshot(&id, &bytes),
            Err(e) if is_damage(&e) => Err(e),
            Err(e) => return Err(e),
        };
        report.snapshots += 1;
        let snap = match loaded {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(Problem {
                    object: format!("snapshot {}", id.short()),
                    error: e.to_string(),
                    snapshots: vec![id.short()],
                    files: vec![],
                });
                continue;
            }
        };
        let mut note = |object: String, error: String, path: &Path| {
            let p = found.entry(object.clone()).or_insert_with(|| Problem { object, error, snapshots: vec![], files: vec![] });
            if !p.snapshots.contains(&snap.id.short()) {
                p.snapshots.push(snap.id.short());
            }
            p.files.push(format!("{}:{}", snap.id.short(), path.display()));
        };
        let blob_problem = |id: &Id, path: &Path| match damaged.of(&index, id) {
            Some((object, why)) => Some((object, why, path.to_path_buf())),
            None if !index.contains(id) => Some((format!("blob {}", id.short()), "it is not in any index".into(), path.to_path_buf())),
            None => None,
        };
        let mut pending = Vec::new();
        if let Some(p) = blob_problem(&snap.tree, Path::new("/")) {
            note(p.0, p.1, &p.2);
            continue;
        }
        let walked = walk(repo, snap.tree, Path::new("/"), &mut |path, node| {
            for b in node.content.iter().chain(node.subtree.iter()) {
                if let Some(p) = blob_problem(b, path) {
                    pending.push(p);
                }
            }
            Ok(node.subtree.is_none_or(|s| index.contains(&s) && damaged.of(&index, &s).is_none()))
        })
        .await;
        for p in pending {
            note(p.0, p.1, &p.2);
        }
        match walked {
            Ok(unread) => {
                unread.iter().for_each(|u| note(format!("tree {}", u.tree.short()), format!("it cannot be read: {}", u.error), &u.path))
            }
            Err(e) if is_damage(&e) => {
                note(format!("snapshot {}", snap.id.short()), format!("its trees cannot be read: {e}"), Path::new("/"))
            }
            Err(e) => return Err(e),
        }
    }
    let mut problems: Vec<Problem> = found.into_values().collect();
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    for p in &mut problems {
        p.files = p.files.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    }
    report.problems.extend(problems);
    Ok(())
}

#[cfg(test)]
mod tests;
