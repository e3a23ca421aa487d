//! Point-in-time recovery's rules over a repository's snapshots: which
//! `pg-base` and `pg-wal` snapshots form one cluster's chain, which WAL
//! forgetting a base backup leaves unneeded, which base backup a recovery
//! starts from, which segments it will read, and what `pg verify` reports.
//! Pure functions: the binary lists the snapshots and acts on the answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use tresor_engine::{Id, IdSet, Snapshot};

use crate::PG_BASE;
use crate::pgwal::{self, ArchivedSegment, Fork, Gap, KIND as PG_WAL, RecoveryEnd, Span, WalFile, WalKind};
use crate::walarchive::NotArchived;

/// Why a point-in-time rule refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no base backup {spec}")]
    NoSuchBase {
        spec: String,
        #[source]
        source: tresor_engine::Error,
    },
    #[error("cannot read LSN {0:?} (use X/Y)")]
    BadLsn(String),
    /// `oldest_end` as the target is given: a time, or an LSN.
    #[error("no base backup was complete before the target; the oldest ended at {oldest_end}")]
    NoBaseBefore { oldest_end: String },
    #[error("the repository holds no base backup (tresor pg backup)")]
    NoBase,
    #[error("the repository holds no base backup of cluster {0}")]
    NoCluster(String),
    #[error("the repository holds {} clusters ({}): choose one with --system-id", .0.len(), .0.join(", "))]
    SeveralClusters(Vec<String>),
    #[error("{0:?} is not a WAL file name")]
    NotWalName(String),
    /// A segment's header does not match its name (pgwal::check_segment).
    #[error("{0}")]
    BadSegment(String),
    #[error("{file} belongs to the cluster with system identifier {segment}, not to this one ({control})")]
    OtherCluster { file: String, segment: u64, control: u64 },
    #[error("cannot read global/pg_control: run in the data directory or give --pgdata")]
    NoControl,
    #[error("{0} is archived already with different content; the archive keeps the copy it has")]
    Conflict(String),
    /// The base backup's archive check (walarchive::archive_verdict).
    #[error(
        "base backup {base} is saved, but the WAL segment holding its end ({segment}) is not in the repository: {why}; until it is, the base backup recovers to its end and no further"
    )]
    EndNotArchived { base: String, segment: String, why: NotArchived },
    #[error("the archive holds no history of timeline {0} ({0:08X}.history): PostgreSQL cannot recover onto it")]
    NoHistory(u32),
    /// `on`: the timelines of the base backups that were complete before the target.
    #[error(
        "no base backup complete before the target can recover onto timeline {target}: they are on timeline {on}, which it did not branch off after their end"
    )]
    NoBaseOnTimeline { target: u32, on: String },
    #[error(
        "base backup {base} is on timeline {timeline}, which timeline {target} did not branch off after its end: it cannot recover onto timeline {target}"
    )]
    OffTimeline { base: String, timeline: u32, target: u32 },
}

impl Error {
    /// Whether trying again later may succeed: none of these changes with
    /// time (the archive or the request must change first).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::NoSuchBase { source, .. } => source.is_temporary(),
            _ => false,
        }
    }
}

/// A string the snapshot's source recorded under `key`.
pub fn point<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.source.consistency.get(key).and_then(|v| v.as_str())
}

/// A number the snapshot's source recorded under `key`, if it fits a u32.
pub fn point_u32(s: &Snapshot, key: &str) -> Option<u32> {
    s.source.consistency.get(key).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
}

/// The WAL segment size a snapshot recorded, if any.
pub fn recorded_seg_size(s: &Snapshot) -> Option<u64> {
    s.source.consistency.get("wal_segment_size").and_then(|v| v.as_u64())
}

/// The segment size of the cluster a snapshot belongs to: PostgreSQL's
/// default (16 MiB) when it recorded none.
pub fn seg_size(s: &Snapshot) -> u64 {
    recorded_seg_size(s).unwrap_or(16 << 20)
}

/// One cluster's chain: its base backups (in the order listed, oldest
/// first) and archived WAL.
#[derive(Default)]
pub struct Chain<'a> {
    pub bases: Vec<&'a Snapshot>,
    pub wal: Vec<(WalFile, &'a Snapshot)>,
}

impl Chain<'_> {
    /// The cluster's segment size, from its first base backup, else its
    /// first WAL file.
    pub fn seg_size(&self) -> u64 {
        self.bases.first().copied().or(self.wal.first().map(|(_, s)| *s)).map_or(16 << 20, seg_size)
    }

    /// The first segment the oldest of these base backups needs.
    fn oldest_start(&self, bases: &[&Snapshot]) -> Option<u64> {
        let size = self.seg_size();
        bases.iter().filter_map(|b| WalFile::parse(point(b, "start_wal")?)).map(|w| w.segno(size)).min()
    }

    /// Its archived WAL files' names, parsed.
    pub fn files(&self) -> Vec<WalFile> {
        self.wal.iter().map(|(w, _)| w.clone()).collect()
    }
}

/// The chains of the clusters in `snaps`, by system identifier. Snapshots
/// of other kinds, and those without a system identifier or (WAL) a file
/// name, belong to none.
pub fn chains(snaps: &[Snapshot]) -> BTreeMap<String, Chain<'_>> {
    let mut out: BTreeMap<String, Chain> = BTreeMap::new();
    for s in snaps {
        let Some(system_id) = point(s, "system_id") else { continue };
        match s.source.kind.as_str() {
            PG_BASE => out.entry(system_id.into()).or_default().bases.push(s),
            PG_WAL => {
                if let Some(w) = point(s, "file").and_then(WalFile::parse) {
                    out.entry(system_id.into()).or_default().wal.push((w, s));
                }
            }
            _ => {}
        }
    }
    out
}

/// The archived WAL that continues the base backups among `selected`: every
/// piece in `all` of their clusters' archives (by system identifier), which
/// a copy of those base backups takes along, whatever selected them, so a
/// recovery from the copy replays as far as one from the original.
pub fn continuing_wal<'a>(selected: &[Snapshot], all: &'a [Snapshot]) -> Vec<&'a Snapshot> {
    let clusters: BTreeSet<&str> = selected.iter().filter(|s| s.source.kind == PG_BASE).filter_map(|s| point(s, "system_id")).collect();
    all.iter().filter(|s| s.source.kind == PG_WAL && point(s, "system_id").is_some_and(|id| clusters.contains(id))).collect()
}

/// The chain a recovery works on: the cluster asked for, or the only one.
pub fn chain_of<'c, 'a>(all: &'c BTreeMap<String, Chain<'a>>, system_id: Option<&str>) -> Result<&'c Chain<'a>, Error> {
    match (system_id, all.len()) {
        (Some(id), _) => all.get(id).ok_or_else(|| Error::NoCluster(id.into())),
        (None, 1) => Ok(all.values().next().expect("one")),
        (None, 0) => Err(Error::NoBase),
        (None, _) => Err(Error::SeveralClusters(all.keys().cloned().collect())),
    }
}

/// WAL that forgetting `removed` leaves no base backup needing: per
/// cluster that loses a base backup, the files before the oldest base
/// backup that stays. Held files stay.
pub fn wal_to_forget(all: &[Snapshot], removed: &IdSet, held: &HashMap<Id, String>) -> Vec<Snapshot> {
    let mut out = Vec::new();
    for chain in chains(all).values() {
        if !chain.bases.iter().any(|b| removed.contains(&b.id)) {
            continue;
        }
        let staying: Vec<&Snapshot> = chain.bases.iter().copied().filter(|b| !removed.contains(&b.id)).collect();
        let files = chain.files();
        let gone: Vec<&WalFile> = pgwal::unneeded(&files, chain.oldest_start(&staying), chain.seg_size());
        for (w, s) in &chain.wal {
            if gone.contains(&w) && !removed.contains(&s.id) && !held.contains_key(&s.id) {
                out.push((*s).clone());
            }
        }
    }
    out
}

/// Archived WAL among `removed` that a base backup staying needs (a
/// segment from its start on, or a timeline history): each such WAL
/// snapshot and the oldest base backup that stays in its cluster. Removing
/// one by id punched a hole in the chain no recovery past it crosses.
pub fn wal_still_needed<'a>(all: &'a [Snapshot], removed: &IdSet) -> Vec<(&'a Snapshot, &'a Snapshot)> {
    let mut out = Vec::new();
    for chain in chains(all).values() {
        let staying: Vec<&Snapshot> = chain.bases.iter().copied().filter(|b| !removed.contains(&b.id)).collect();
        let Some(oldest) = chain.oldest_start(&staying) else { continue };
        let Some(base) = staying
            .iter()
            .copied()
            .find(|b| point(b, "start_wal").and_then(WalFile::parse).is_some_and(|w| w.segno(chain.seg_size()) == oldest))
        else {
            continue;
        };
        let files = chain.files();
        let unneeded = pgwal::unneeded(&files, Some(oldest), chain.seg_size());
        for (w, s) in &chain.wal {
            if removed.contains(&s.id) && !unneeded.contains(&w) {
                out.push((*s, base));
            }
        }
    }
    out
}

/// When a base backup was complete: its recorded end, else its start.
pub fn base_end(b: &Snapshot) -> DateTime<FixedOffset> {
    b.summary.as_ref().and_then(|s| s.backup_end).unwrap_or(b.time)
}

/// Where a recovery stops (one of `pg restore`'s `--time`, `--lsn`,
/// `--immediate`, `--latest`, `--name`, `--xid`).
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    Time(DateTime<FixedOffset>),
    /// As given (`X/Y`), read when a rule needs it.
    Lsn(String),
    /// As soon as the base backup is consistent.
    Immediate,
    /// Through all archived WAL.
    Latest,
    /// At a restore point (`pg_create_restore_point`): where it lies is
    /// not recorded, so the newest base backup is taken, as pgBackRest does.
    Name(String),
    /// After a transaction's commit: likewise.
    Xid(String),
}

/// The timeline a recovery follows, as far as choosing its base backup
/// goes: `None` for `current` (the base backup's own, whichever it is),
/// else the timeline's number and its history file's forks.
pub type OnTimeline<'h> = Option<(u32, &'h [Fork])>;

/// The timeline `--target-timeline` names: `latest` is the newest the
/// archive knows (a history file's, or a base backup's), as PostgreSQL
/// takes the newest history file; `current` none (see [`OnTimeline`]).
pub fn target_timeline(chain: &Chain, given: &str) -> Option<u32> {
    match given {
        "current" => None,
        "latest" => {
            let histories = chain.wal.iter().filter(|(w, _)| w.kind == WalKind::History).map(|(w, _)| w.timeline);
            Some(histories.chain(chain.bases.iter().filter_map(|b| point_u32(b, "timeline"))).max().unwrap_or(1))
        }
        n => n.parse().ok(),
    }
}

/// The ancestors on a timeline's history (`forks`) that went on after it
/// branched off them: (the ancestor, the LSN it branched at), where the
/// archive holds the ancestor's segments past that point. A recovery onto
/// the branch (`latest` follows the newest) leaves that WAL out: the
/// branch of a test restore that archived here, taken for production's.
pub fn ancestors_gone_on(chain: &Chain, forks: &[pgwal::Fork]) -> Vec<(u32, u64)> {
    let size = chain.seg_size();
    let past = |f: &pgwal::Fork| {
        // A segment of the ancestor that ends past the switch holds WAL the branch does not.
        chain.wal.iter().any(|(w, _)| w.kind == WalKind::Segment && w.timeline == f.parent && (w.segno(size) + 1) * size > f.switch_lsn)
    };
    forks.iter().filter(|f| past(f)).map(|f| (f.parent, f.switch_lsn)).collect()
}

/// The history file a recovery onto `timeline` reads, if it has one (1
/// has none); an error when the archive lacks it and `needed` (a timeline
/// named: PostgreSQL refuses to start without it).
pub fn history_file(chain: &Chain, timeline: u32, needed: bool) -> Result<Option<String>, Error> {
    let name = format!("{timeline:08X}.history");
    match chain.wal.iter().any(|(w, _)| w.name == name) {
        true => Ok(Some(name)),
        false if timeline > 1 && needed => Err(Error::NoHistory(timeline)),
        false => Ok(None),
    }
}

/// Whether base backup `b` can start a recovery onto `on`; one that does
/// not say its timeline or end is taken at its word.
fn on_timeline(b: &Snapshot, on: OnTimeline) -> bool {
    let (Some((target, forks)), Some(tli), Some(end)) = (on, point_u32(b, "timeline"), point(b, "end_lsn").and_then(pgwal::parse_lsn))
    else {
        return true;
    };
    pgwal::on_history_of(target, forks, tli, end)
}

/// The base backup to start from: the one `spec` names, or the newest
/// (last of `bases`) that was complete before the recovery target and
/// lies on the target timeline's history before it branched off.
pub fn choose_base<'a>(bases: &[&'a Snapshot], spec: Option<&str>, stop: &Stop, on: OnTimeline) -> Result<&'a Snapshot, Error> {
    if let Some(spec) = spec {
        let chosen = tresor_engine::select::select(bases.iter().map(|b| (*b).clone()).collect(), spec, &Default::default())
            .map_err(|source| Error::NoSuchBase { spec: spec.into(), source })?;
        let b = bases.iter().find(|b| b.id == chosen.id).expect("selected from these");
        return match (on_timeline(b, on), on, point_u32(b, "timeline")) {
            (false, Some((target, _)), Some(timeline)) => Err(Error::OffTimeline { base: b.id.short(), timeline, target }),
            _ => Ok(*b),
        };
    }
    let lsn = match stop {
        Stop::Lsn(l) => Some(pgwal::parse_lsn(l).ok_or_else(|| Error::BadLsn(l.clone()))?),
        _ => None,
    };
    let before = |b: &&&Snapshot| match (stop, lsn) {
        (Stop::Time(t), _) => base_end(b) <= *t,
        (_, Some(l)) => point(b, "end_lsn").and_then(pgwal::parse_lsn).is_some_and(|e| e <= l),
        _ => true,
    };
    if let Some(found) = bases.iter().rev().filter(before).find(|b| on_timeline(b, on)) {
        return Ok(*found);
    }
    let on_which: BTreeSet<String> = bases.iter().filter(before).filter_map(|b| point_u32(b, "timeline")).map(|t| t.to_string()).collect();
    if let (Some((target, _)), false) = (on, on_which.is_empty()) {
        return Err(Error::NoBaseOnTimeline { target, on: on_which.into_iter().collect::<Vec<_>>().join(", ") });
    }
    Err(match bases.first() {
        Some(b) => {
            let lsn = point(b, "end_lsn").filter(|_| lsn.is_some());
            Error::NoBaseBefore { oldest_end: lsn.map_or_else(|| base_end(b).to_rfc3339(), |l| format!("LSN {l}")) }
        }
        None => Error::NoBase,
    })
}

/// What a recovery will read, as the archive was when the restore began:
/// the plan `pg restore` hands its WAL prefetcher (serialised into the
/// spool as it is).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub system_id: u64,
    pub window: usize,
    pub segments: Vec<String>,
    /// The timeline history files archived.
    pub history: Vec<String>,
    /// Per timeline, the highest segment archived.
    pub last_segment: BTreeMap<u32, u64>,
    pub seg_size: u64,
}

/// PostgreSQL asks for the segment where recovery stops a second time,
/// when it ends recovery: so many of the last planned segments are kept
/// for that once handed out.
pub const KEPT: usize = 2;

impl Plan {
    /// Where `name` stands in the plan, and whether it is one of the last
    /// [`KEPT`].
    pub fn place(&self, name: &str) -> (Option<usize>, bool) {
        let index = self.segments.iter().position(|s| s == name);
        (index, index.is_some_and(|i| i + KEPT >= self.segments.len()))
    }

    /// How many planned segments from `next` on to start fetching now,
    /// with `held` in the spool and `running` fetches under way: the
    /// window bounds the spool, `parallel` the fetches at once.
    pub fn to_start(&self, next: usize, held: usize, running: usize, parallel: usize) -> usize {
        let left = self.segments.len().saturating_sub(next);
        left.min(self.window.saturating_sub(held + running)).min(parallel.saturating_sub(running))
    }

    /// Whether the archive (as planned) lacks `wal`: answered without
    /// opening the repository.
    pub fn lacks(&self, wal: &WalFile) -> bool {
        match wal.kind {
            WalKind::History => !self.history.contains(&wal.name),
            WalKind::Segment => self.last_segment.get(&wal.timeline).is_none_or(|last| wal.segno(self.seg_size) > *last),
            WalKind::Partial | WalKind::BackupHistory => false,
        }
    }
}

/// The segments a recovery from `base` to `stop` will read
/// (pgwal::recovery_chain), with `window` segments to fetch ahead; `None`
/// when the base backup does not say where its WAL starts.
pub fn recovery_plan(chain: &Chain, base: &Snapshot, stop: &Stop, window: usize) -> Option<Plan> {
    let size = chain.seg_size();
    let start = WalFile::parse(point(base, "start_wal")?)?;
    let end = match stop {
        Stop::Time(t) => RecoveryEnd::AfterCommit(t.timestamp_micros()),
        Stop::Lsn(l) => RecoveryEnd::Segment(pgwal::lsn_segno(l, size)?),
        Stop::Immediate => {
            RecoveryEnd::Segment(point(base, "end_lsn").and_then(|l| pgwal::lsn_segno(l, size)).unwrap_or(start.segno(size)))
        }
        Stop::Latest | Stop::Name(_) | Stop::Xid(_) => RecoveryEnd::Latest,
    };
    let archived: Vec<ArchivedSegment> = chain
        .wal
        .iter()
        .map(|(w, s)| ArchivedSegment {
            file: w.clone(),
            last_commit_micros: point(s, "last_commit").and_then(|c| DateTime::parse_from_rfc3339(c).ok()).map(|c| c.timestamp_micros()),
        })
        .collect();
    let mut last_segment = BTreeMap::new();
    for (w, _) in chain.wal.iter().filter(|(w, _)| w.kind == WalKind::Segment) {
        let last = last_segment.entry(w.timeline).or_insert(0);
        *last = w.segno(size).max(*last);
    }
    Some(Plan {
        system_id: point(base, "system_id")?.parse().ok()?,
        window,
        segments: pgwal::recovery_chain(&archived, start.timeline, start.segno(size), end, size),
        history: chain.wal.iter().filter(|(w, _)| w.kind == WalKind::History).map(|(w, _)| w.name.clone()).collect(),
        last_segment,
        seg_size: size,
    })
}

/// The segment holding a base backup's end, which the archive must hold
/// for any recovery past it (its archive check waits for it).
pub fn end_segment(b: &Snapshot) -> Option<String> {
    let size = seg_size(b);
    Some(pgwal::segment_name(point_u32(b, "timeline")?, pgwal::lsn_segno(point(b, "end_lsn")?, size)?, size))
}

/// What keeps a chain from recovering across it.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// Segments missing between archived ones.
    Gap(Gap),
    /// A base backup whose end the archived WAL of its timeline does not
    /// reach: it recovers no further than its end.
    StartsAfter { base: Id, timeline: u32, first: u64, end: u64, seg_size: u64 },
    /// A base backup whose end segment the archived WAL of its timeline
    /// does not hold (`last`: where it ends, if it holds any): the archive
    /// stopped before it, or never ran; it recovers no further than its end.
    EndsBefore { base: Id, timeline: u32, last: Option<u64>, end: u64, seg_size: u64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Gap(gap) => {
                let s = if gap.count == 1 { "" } else { "s" };
                write!(f, "gap on timeline {}: {} … {} ({} segment{s} missing)", gap.timeline, gap.first, gap.last, gap.count)
            }
            Problem::StartsAfter { base, timeline, first, end, seg_size } => write!(
                f,
                "base backup {}: the archived WAL starts at {}, after its end {}: it recovers no further than its end",
                base.short(),
                pgwal::segment_name(*timeline, *first, *seg_size),
                pgwal::segment_name(*timeline, *end, *seg_size)
            ),
            Problem::EndsBefore { base, timeline, last, end, seg_size } => {
                let end = pgwal::segment_name(*timeline, *end, *seg_size);
                match last {
                    Some(last) => write!(
                        f,
                        "base backup {}: the archived WAL of timeline {timeline} ends at {}, before its end {end}: it recovers no further than its end",
                        base.short(),
                        pgwal::segment_name(*timeline, *last, *seg_size)
                    ),
                    None => write!(
                        f,
                        "base backup {}: the archive holds no WAL of its timeline {timeline}, not even its end {end}: it recovers no further than its end",
                        base.short()
                    ),
                }
            }
        }
    }
}

/// `pg verify`'s findings on one chain: the archived range per timeline
/// and its problems, gaps first.
pub fn verify(chain: &Chain) -> (BTreeMap<u32, Span>, Vec<Problem>) {
    let size = chain.seg_size();
    let (ranges, gaps) = pgwal::gaps(&chain.files(), size);
    let mut problems: Vec<Problem> = gaps.into_iter().map(Problem::Gap).collect();
    for b in &chain.bases {
        let (Some(end), Some(tli)) = (point(b, "end_lsn").and_then(|e| pgwal::lsn_segno(e, size)), point_u32(b, "timeline")) else {
            continue;
        };
        match ranges.get(&tli) {
            Some(r) if r.first > end + 1 => {
                problems.push(Problem::StartsAfter { base: b.id, timeline: tli, first: r.first, end, seg_size: size })
            }
            Some(r) if r.last < end => {
                problems.push(Problem::EndsBefore { base: b.id, timeline: tli, last: Some(r.last), end, seg_size: size })
            }
            None => problems.push(Problem::EndsBefore { base: b.id, timeline: tli, last: None, end, seg_size: size }),
            Some(_) => {}
        }
    }
    (ranges, problems)
}

#[cfg(test)]
pub(crate) mod tests;
