//! The achieved RPO of a `pgbase://` source whose cluster archives WAL
//! through `tresor pg wal-push`: the age of the oldest commit not yet
//! archived. The archive's side comes from the snapshot listing alone
//! (what `wal-push` recorded of each segment: its end and newest commit,
//! FORMAT.md §12), the server's from one query when it answers.
//!
//! The chain starts at the newest base backup's first segment and runs
//! unbroken through the archived segments of its timeline (those inside
//! the base backup count as present: it holds them). Zero when the server
//! has committed nothing after the chain's newest commit (with
//! `track_commit_timestamp`) or, without that, has written no WAL past the
//! chain's end; else the age of the chain's newest commit; with the server
//! unreachable, that age too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tresor_engine::Snapshot;
use tresor_sources::PG_BASE;
use tresor_sources::pgwal::{self, KIND as PG_WAL, ServerPosition, WalFile, WalKind};
use tresor_sources::pitr;

use crate::plan::{Plan, SourceSpec, Span};

/// What the archive holds of one source's cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The newest segment the chain reaches unbroken (None: only the base backup).
    pub newest_segment: Option<String>,
    /// Just after the chain's last valid record.
    pub end_lsn: u64,
    /// The newest commit in the chain, else the base backup's end.
    pub newest_commit: DateTime<Utc>,
    /// When the chain's newest segment (else the base backup) was stored.
    pub archived_at: DateTime<Utc>,
    /// Segments missing between the chain's end and the newest archived one.
    pub gap_segments: u64,
}

/// One source's WAL figures at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct WalPoint {
    pub chain: Chain,
    /// The server answered and has nothing unarchived.
    pub caught_up: bool,
}

impl WalPoint {
    /// Seconds since the oldest commit not yet archived (zero when none).
    pub fn rpo(&self, now: DateTime<Utc>) -> f64 {
        if self.caught_up { 0.0 } else { secs(self.chain.newest_commit, now) }
    }

    /// How far the archive is behind: zero when caught up, else the age of
    /// the newest archived segment.
    pub fn lag(&self, now: DateTime<Utc>) -> f64 {
        if self.caught_up { 0.0 } else { secs(self.chain.archived_at, now) }
    }

    /// The point once the archive could not be read (storage down, the
    /// chain gone): what was archived stays known, but not that the
    /// server's commits since then reached it, so the RPO and lag grow
    /// from the chain as last seen instead of standing at zero.
    pub fn unconfirmed(&mut self) {
        self.caught_up = false;
    }
}

pub(crate) fn secs(t: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0)
}

pub(crate) fn time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

/// The pg-base and pg-wal snapshots of a repository's listing
/// (`snapshots --all --json`), typed for [`pitr`]'s rules.
pub(crate) fn pg_snapshots(listing: &[Value]) -> Vec<Snapshot> {
    let typed = |x: &Value| {
        let mut s: Snapshot = serde_json::from_value(x.clone()).ok()?;
        s.id = serde_json::from_value(x["id"].clone()).ok()?;
        Some(s)
    };
    listing.iter().filter(|x| x["source"]["kind"] == PG_BASE || x["source"]["kind"] == PG_WAL).filter_map(typed).collect()
}

/// The WAL archive from a source's newest base backup: that backup, its
/// segment size, first segment and end, and the archived segments of its
/// cluster (pitr::chains) on its timeline, by number.
pub(crate) struct Archive<'a> {
    pub base: &'a Snapshot,
    pub size: u64,
    pub start: WalFile,
    pub end_lsn: u64,
    pub segments: BTreeMap<u64, &'a Snapshot>,
}

/// The archive of `source` among `snaps` (from [`pg_snapshots`]); None
/// without a base backup that says where its WAL starts and ends.
pub(crate) fn archive<'a>(source: &str, snaps: &'a [Snapshot]) -> Option<Archive<'a>> {
    let tag = format!("source={source}");
    let base = snaps.iter().filter(|s| s.source.kind == PG_BASE && s.tags.contains(&tag)).max_by_key(|s| s.time)?;
    let size = pitr::seg_size(base);
    let start = WalFile::parse(pitr::point(base, "start_wal")?)?;
    let end_lsn = pitr::point(base, "end_lsn").and_then(pgwal::parse_lsn)?;
    let chain = pitr::chains(snaps).remove(pitr::point(base, "system_id")?)?;
    let segments = chain
        .wal
        .into_iter()
        .filter(|(w, _)| w.kind == WalKind::Segment && w.timeline == start.timeline)
        .map(|(w, s)| (w.segno(size), s))
        .collect();
    Some(Archive { base, size, start, end_lsn, segments })
}

/// When a snapshot's source recorded `key` as a time.
pub(crate) fn time_of(s: &Snapshot, key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(pitr::point(s, key)?).ok().map(|t| t.with_timezone(&Utc))
}

/// The chain of `source` in its repository's listing (`snapshots --all --json`).
pub fn chain(source: &str, listing: &[Value]) -> Option<Chain> {
    let snaps = pg_snapshots(listing);
    let Archive { base, size, start, end_lsn: base_end_lsn, segments } = archive(source, &snaps)?;
    // A cluster that archives no WAL through tresor has only its base backups' RPO.
    if segments.is_empty() {
        return None;
    }
    let base_end_seg = base_end_lsn / size;
    let mut next = start.segno(size);
    while segments.contains_key(&next) || next <= base_end_seg {
        next += 1;
    }
    let base_time = pitr::base_end(base).with_timezone(&Utc);
    let mut c = Chain {
        newest_segment: None,
        end_lsn: base_end_lsn,
        newest_commit: base_time,
        archived_at: base_time,
        gap_segments: segments
            .keys()
            .next_back()
            .filter(|&&hi| hi >= next)
            .map_or(0, |hi| hi - next + 1 - (segments.range(next..).count() as u64)),
    };
    for (_, s) in segments.range(start.segno(size)..next) {
        c.newest_segment = pitr::point(s, "file").map(String::from);
        // A segment archived before its records were read says nothing of its end: the chain ends before it.
        c.end_lsn = pitr::point(s, "end_lsn").and_then(pgwal::parse_lsn).unwrap_or(c.end_lsn);
        if let Some(t) = time_of(s, "last_commit") {
            c.newest_commit = c.newest_commit.max(t);
        }
        c.archived_at = s.time.with_timezone(&Utc);
    }
    Some(c)
}

/// The chain against what the server says (None: it did not answer).
pub fn point(chain: Chain, server: Option<&ServerPosition>) -> WalPoint {
    let caught_up = match server {
        None => false,
        Some(ServerPosition { last_commit_unix_micros: Some(t), .. }) => *t <= chain.newest_commit.timestamp_micros(),
        Some(s) => s.current_lsn <= chain.end_lsn,
    };
    WalPoint { chain, caught_up }
}

/// The `pgbase://` sources whose repository is `repo`.
pub fn pg_sources<'a>(plan: &'a Plan, repo: &'a str) -> impl Iterator<Item = &'a SourceSpec> {
    plan.sources.iter().filter(move |s| s.url.starts_with("pgbase://") && plan.repository_of(s).is_some_and(|(n, _)| n == repo))
}

/// Every WAL-archiving source's point, from the repositories' listings and
/// their servers (asked off the async threads: psql).
pub async fn points(plan: &Plan, listings: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, WalPoint> {
    let mut out = BTreeMap::new();
    for (repo, snaps) in listings {
        for s in pg_sources(plan, repo) {
            let Some(chain) = chain(&s.name, snaps) else { continue };
            let url = s.url.clone();
            let server = tokio::task::spawn_blocking(move || pgwal::server_position(url.expose())).await.ok().and_then(Result::ok);
            out.insert(s.name.clone(), point(chain, server.as_ref()));
        }
    }
    out
}

/// Whether a source's WAL archive keeps its class's RPO when its base
/// backups alone do not (`plan check`): None when it archives no WAL
/// through tresor, else why not, if not.
pub fn archive_covers(s: &SourceSpec, rpo: Span) -> Option<Result<(), String>> {
    let w = s.wal_archive.as_ref()?;
    if !s.url.starts_with("pgbase://") {
        return Some(Err("wal_archive: is for pgbase:// sources, whose cluster archives WAL through tresor pg wal-push".into()));
    }
    Some(match w.archive_timeout {
        None => Err("its WAL archive counts only with a known archive_timeout: give wal_archive.archive_timeout, or check with --connect to ask the server".into()),
        Some(t) if t.secs() == 0 => {
            Err("the cluster's archive_timeout is off (0), so a commit can wait unarchived until its WAL segment fills".into())
        }
        Some(t) if t.0 > rpo.0 => Err(format!("the cluster's archive_timeout {t} lets a commit wait that long unarchived, longer than the RPO {rpo}")),
        Some(_) => Ok(()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;
    use tresor_engine::{Id, Summary};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A snapshot of `kind` recording `point`, taken at `time`.
    pub(crate) fn snapshot(time: &str, tags: &[&str], kind: &str, point: Value) -> Snapshot {
        let stored = json!({"time": time, "tree": Id::default(), "paths": [], "hostname": "db", "username": "postgres", "tags": tags,
                            "source": {"kind": kind, "consistency": point}, "program_version": "test"});
        Snapshot { id: Id::random(), ..serde_json::from_value(stored).unwrap() }
    }

    /// A WAL segment of cluster 7 as `snapshots --all --json` lists it.
    pub(crate) fn wal(file: &str, end: &str, commit: Option<&str>, time: &str) -> Value {
        snapshot(time, &[], PG_WAL, json!({"system_id": "7", "file": file, "end_lsn": end, "last_commit": commit})).to_json()
    }

    /// A base backup of `source=db` on cluster 7 from segment 2, as listed.
    pub(crate) fn base(time: &str, backup_end: Option<&str>) -> Value {
        let point =
            json!({"system_id": "7", "wal_segment_size": 16777216, "start_wal": "000000010000000000000002", "end_lsn": "0/2000100"});
        let mut b = snapshot(time, &["source=db"], PG_BASE, point);
        let backup_end = backup_end.map(|t| DateTime::parse_from_rfc3339(t).unwrap());
        b.summary = backup_end.map(|t| Summary { backup_end: Some(t), ..Summary::default() });
        b.to_json()
    }

    fn listing() -> Vec<Value> {
        vec![
            base("2026-11-30T10:00:00Z", Some("2026-11-30T10:00:05Z")),
            wal("000000010000000000000002", "0/3000000", None, "2026-11-30T10:00:06Z"),
            wal("000000010000000000000003", "0/4000000", Some("2026-11-30T10:01:00.5Z"), "2026-11-30T10:02:00Z"),
            wal("000000010000000000000004", "0/4000A28", Some("2026-11-30T10:02:30Z"), "2026-11-30T10:03:00Z"),
            wal("000000010000000000000007", "0/8000000", Some("2026-11-30T10:09:00Z"), "2026-11-30T10:10:00Z"),
        ]
    }

    #[test]
    fn the_chain_runs_unbroken_from_the_newest_base_backup() {
        let c = chain("db", &listing()).unwrap();
        assert_eq!(c.newest_segment.as_deref(), Some("000000010000000000000004"));
        assert_eq!(c.end_lsn, 0x4000A28);
        assert_eq!(c.newest_commit, at("2026-11-30T10:02:30Z"));
        assert_eq!(c.archived_at, at("2026-11-30T10:03:00Z"));
        assert_eq!(c.gap_segments, 2, "segments 5 and 6 are missing before 7");
        assert_eq!(chain("other", &listing()), None);
        let bases_only: Vec<Value> = listing().into_iter().filter(|x| x["source"]["kind"] == "pg-base").collect();
        assert_eq!(chain("db", &bases_only), None, "no WAL archived: the base backups' RPO only");
        let mut other = listing();
        let mut stranger = wal("000000010000000000000005", "0/6000000", None, "2026-11-30T10:04:00Z");
        stranger["source"]["consistency"]["system_id"] = "8".into();
        other.push(stranger);
        assert_eq!(chain("db", &other), Some(c), "another cluster's segment is no part of the chain");
    }

    #[test]
    fn zero_when_the_server_has_nothing_unarchived_else_the_newest_commits_age() {
        let now = at("2026-11-30T10:05:00Z");
        let c = chain("db", &listing()).unwrap();
        let pos = |lsn: u64, commit: Option<&str>| ServerPosition {
            current_lsn: lsn,
            last_commit_unix_micros: commit.map(|t| at(t).timestamp_micros()),
            archive_timeout: 60,
            archiving: true,
        };
        assert_eq!(point(c.clone(), Some(&pos(0x4000A28, None))).rpo(now), 0.0);
        assert_eq!(point(c.clone(), Some(&pos(0x4000A30, None))).rpo(now), 150.0);
        assert_eq!(point(c.clone(), Some(&pos(0x4000A30, None))).lag(now), 120.0);
        // With commit timestamps, WAL past the end that holds no commit does not count.
        assert_eq!(point(c.clone(), Some(&pos(0x4000A30, Some("2026-11-30T10:02:30Z")))).rpo(now), 0.0);
        assert_eq!(point(c.clone(), Some(&pos(0x4000A30, Some("2026-11-30T10:04:00Z")))).rpo(now), 150.0);
        assert_eq!(point(c.clone(), None).rpo(now), 150.0, "an unreachable server: the newest archived commit's age");
        let mut unread = point(c, Some(&pos(0x4000A28, None)));
        unread.unconfirmed();
        assert_eq!((unread.rpo(now), unread.lag(now)), (150.0, 120.0), "an archive that could not be read is never caught up");
    }
}
