//! Warm standbys (a source's `standby:` in the plan): how far each is
//! behind its source, and what its failover records.
//!
//! A PostgreSQL standby replays the WAL archive through `tresor pg
//! wal-fetch`. Its lag is the age of the oldest archived commit it has not
//! replayed, zero when its replay has reached the end of the archive. Each
//! archived segment records its newest commit (FORMAT.md §12), so the age is
//! that of the oldest unreplayed segment that holds a commit, by that
//! segment's newest commit. The oldest, not the newest: a standby stuck
//! before a gap while the primary keeps archiving must look ever staler.
//! Segments past a gap count, as they never get replayed; a standby server
//! that does not answer counts as replayed to its base backup's end.
//!
//! A directory, claim or Redis standby is a copy of one snapshot, refreshed
//! from the newest ([`Held`] says which it holds). Its lag is the age of the
//! oldest snapshot newer than the one it holds; holding the newest, zero
//! while that snapshot is within the class's RPO and past it the snapshot's
//! age: a standby of a source that stopped backing up is as stale as its
//! source, and says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tresor_sources::{pgwal, pitr};

use crate::plan::{Plan, SecretUrl, SourceSpec, Standby};
use crate::walrpo::{Archive, archive, pg_snapshots, secs, time, time_of};

/// The evidence entry kind of a [`Failover`].
pub const FAILOVER: &str = "failover";

/// One failover, as the evidence log keeps it (like a drill's protocol entry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failover {
    pub source: String,
    /// When `tresor failover` started.
    pub started: DateTime<Utc>,
    /// From the start to a promoted server that accepts writes.
    pub seconds: f64,
    /// PostgreSQL: the WAL position the standby had replayed when it was promoted (`X/Y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// PostgreSQL: the end of the unbroken archive it was to reach (`X/Y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_end_lsn: Option<String>,
    /// A directory or Redis standby: the snapshot it holds, made current by the failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// That snapshot's time: the point the standby took over at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<DateTime<Utc>>,
    /// The newest commit it had replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<DateTime<Utc>>,
    /// Segments missing from the archive after its unbroken part.
    #[serde(default)]
    pub gap_segments: u64,
    /// Promoted despite a gap (`--force`).
    pub forced: bool,
    /// Who ran it: `user@host`.
    pub author: String,
}

/// One standby's figures at a moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StandbyPoint {
    /// The oldest data it lacks: an archived commit it has not replayed
    /// (by its segment's newest), a snapshot newer than the one it holds.
    pub oldest_missing: Option<DateTime<Utc>>,
    /// Archived segments it has not replayed, or snapshots newer than the one it holds.
    pub waiting: u64,
    /// PostgreSQL: the replay position it counted from.
    pub replayed_lsn: u64,
    /// A copy that holds its source's newest snapshot: that snapshot's time
    /// and the class's RPO in seconds.
    pub newest_held: Option<(DateTime<Utc>, u64)>,
}

impl StandbyPoint {
    /// Seconds since the oldest data it lacks; holding the newest snapshot,
    /// 0 within the RPO and that snapshot's age past it.
    pub fn lag(&self, now: DateTime<Utc>) -> f64 {
        match (self.oldest_missing, self.newest_held) {
            (Some(t), _) => secs(t, now),
            (None, Some((t, rpo))) if secs(t, now) > rpo as f64 => secs(t, now),
            _ => 0.0,
        }
    }
}

/// `source`'s standby against its repository's listing (`snapshots --all
/// --json`), given how far it has replayed (None: unknown).
pub fn point(source: &str, listing: &[Value], replayed: Option<u64>) -> Option<StandbyPoint> {
    let snaps = pg_snapshots(listing);
    let Archive { size, start, end_lsn, segments, .. } = archive(source, &snaps)?;
    let replayed = replayed.unwrap_or(end_lsn);
    let mut p = StandbyPoint { replayed_lsn: replayed, ..StandbyPoint::default() };
    for (segno, s) in segments.range(start.segno(size)..) {
        // A segment archived before its records were read ends, for all we know, where the segment does.
        let end = pitr::point(s, "end_lsn").and_then(pgwal::parse_lsn).unwrap_or((segno + 1) * size);
        if end <= replayed {
            continue;
        }
        p.waiting += 1;
        if let Some(t) = time_of(s, "last_commit") {
            p.oldest_missing = Some(p.oldest_missing.map_or(t, |o| o.min(t)));
        }
    }
    Some(p)
}

/// What a source's standby is, by the source's URL and the standby's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyKind {
    /// A data directory that a PostgreSQL server keeps replaying from the WAL archive.
    Postgres,
    /// A directory refreshed from the newest snapshot (a path or `pvc://` source).
    Directory,
    /// A claim (`pvc://NAMESPACE/CLAIM?secret=NAME`) refreshed from the
    /// newest snapshot by a Job in its namespace (a path or `pvc://` source).
    Claim,
    /// A Redis instance reloaded from the newest snapshot.
    Redis,
}

impl StandbyKind {
    /// None: the source's kind has no standby.
    pub fn of(source_url: &SecretUrl, target: &SecretUrl) -> Option<StandbyKind> {
        let copy = match target.scheme() == Some("pvc") {
            true => StandbyKind::Claim,
            false => StandbyKind::Directory,
        };
        match source_url.scheme() {
            Some("pgbase") => Some(StandbyKind::Postgres),
            Some("redis" | "rediss") => Some(StandbyKind::Redis),
            Some("pvc") => Some(copy),
            None if !source_url.starts_with("command:") => Some(copy),
            _ => None,
        }
    }

    /// How `standby status` names it.
    pub fn name(self) -> &'static str {
        match self {
            StandbyKind::Postgres => "postgres",
            StandbyKind::Directory => "directory",
            StandbyKind::Claim => "claim",
            StandbyKind::Redis => "redis",
        }
    }
}

/// Which snapshot a directory, claim or Redis standby holds, kept beside it
/// (a directory's) or in the local cache (a claim's, a Redis instance's): written after
/// each refresh, and marked `refreshing` while one runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Held {
    /// The snapshot it holds completely (none yet: never refreshed to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<DateTime<Utc>>,
    /// When it was refreshed to that snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<DateTime<Utc>>,
    /// A refresh to this snapshot started and has not ended (killed, or running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshing: Option<String>,
}

/// Where the record of what `source`'s standby holds lives: beside a
/// directory (`.NAME.tresor-standby.json`), for a claim or a Redis instance
/// in the local cache (`standby/SOURCE.json`). None: a PostgreSQL standby
/// (its server knows), or no cache.
pub fn held_file(source: &str, kind: StandbyKind, target: &Path) -> Option<PathBuf> {
    match kind {
        StandbyKind::Postgres => None,
        StandbyKind::Directory => {
            let name = target.file_name()?.to_string_lossy();
            Some(target.with_file_name(format!(".{name}.tresor-standby.json")))
        }
        StandbyKind::Claim | StandbyKind::Redis => {
            Some(tresor_engine::cache::Cache::default_root()?.join("standby").join(format!("{source}.json")))
        }
    }
}

/// What the standby holds, as last recorded (default: nothing).
pub fn held(source: &str, kind: StandbyKind, target: &Path) -> Held {
    let text = held_file(source, kind, target).and_then(|f| std::fs::read(f).ok());
    text.and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default()
}

/// Record what the standby holds: written aside and renamed, so a refresh
/// killed while writing it leaves the last record whole.
pub fn record_held(source: &str, kind: StandbyKind, target: &Path, held: &Held) -> std::io::Result<()> {
    let Some(file) = held_file(source, kind, target) else { return Ok(()) };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let next = file.with_extension("next");
    std::fs::write(&next, serde_json::to_vec(held).unwrap_or_default())?;
    std::fs::rename(next, file)
}

/// Why a source's `standby:` cannot be kept (`scheme`: the source's kind,
/// as `plan check` names it), or None.
pub fn refused(source_url: &SecretUrl, standby: &Standby, scheme: &str) -> Option<String> {
    let target = &standby.target;
    let to_service = target.scheme().is_some();
    match StandbyKind::of(source_url, target) {
        None => Some(format!("standby: is for pgbase://, redis://, pvc:// and path sources, not {scheme}")),
        Some(StandbyKind::Redis) if !target.starts_with("redis://") => {
            Some("the standby of a redis:// source is a Redis instance: target: redis://HOST:PORT".into())
        }
        Some(StandbyKind::Postgres) if to_service => Some(format!("the standby of a {scheme} source is a directory: target: /PATH")),
        Some(StandbyKind::Directory) if to_service => Some(
            "the standby of a path or pvc:// source is a directory or a claim: target: /PATH or pvc://NAMESPACE/CLAIM?secret=NAME".into(),
        ),
        Some(StandbyKind::Directory | StandbyKind::Claim | StandbyKind::Redis) if standby.server.is_some() => {
            Some("standby.server is for pgbase:// sources (the PostgreSQL server to promote)".into())
        }
        // Parsed as shown: its errors quote it.
        Some(StandbyKind::Claim) => tresor_sources::k8s_standby::StandbyClaim::parse(&target.to_string()).err(),
        _ => None,
    }
}

/// The snapshots of `source` in its repository's listing (its own backups,
/// archive pieces left out), oldest first.
pub fn own_snapshots<'a>(source: &str, snaps: &'a [Value]) -> Vec<&'a Value> {
    let tag = format!("source={source}");
    let mut own: Vec<&Value> = snaps
        .iter()
        .filter(|x| x["source"]["kind"] != "pg-wal" && x["tags"].as_array().is_some_and(|t| t.iter().any(|v| v == tag.as_str())))
        .collect();
    own.sort_by_key(|x| time(&x["time"]));
    own
}

/// A directory, claim or Redis standby that holds `held`, against its source's
/// snapshots (oldest first) and its class's RPO. None: no snapshot yet.
pub fn copy_point(own: &[&Value], held: &Held, rpo_secs: u64) -> Option<StandbyPoint> {
    let newest = own.last()?;
    let at = held.snapshot.as_deref().and_then(|id| own.iter().position(|x| x["id"] == id));
    let newer = &own[at.map_or(0, |i| i + 1)..];
    Some(StandbyPoint {
        oldest_missing: newer.first().and_then(|x| time(&x["time"])),
        waiting: newer.len() as u64,
        replayed_lsn: 0,
        newest_held: newer.is_empty().then(|| time(&newest["time"]).map(|t| (t, rpo_secs))).flatten(),
    })
}

/// The sources with a standby whose repository is `repo`.
fn standby_sources<'a>(plan: &'a Plan, repo: &'a str) -> impl Iterator<Item = &'a SourceSpec> {
    plan.sources.iter().filter(move |s| s.standby.is_some() && plan.repository_of(s).is_some_and(|(n, _)| n == repo))
}

/// Whether repository `repo` backs up a source with a standby.
pub fn wanted(plan: &Plan, repo: &str) -> bool {
    standby_sources(plan, repo).next().is_some()
}

/// One standby's point: a PostgreSQL standby's from its server (asked off
/// the async threads: psql), a copy's from what it holds.
pub async fn point_of(plan: &Plan, s: &SourceSpec, snaps: &[Value]) -> Option<StandbyPoint> {
    match StandbyKind::of(&s.url, &s.standby.as_ref()?.target)? {
        StandbyKind::Postgres => {
            let replayed = match s.standby.as_ref()?.server.clone() {
                Some(url) => tokio::task::spawn_blocking(move || pgwal::replay_position(url.expose())).await.ok().and_then(Result::ok),
                None => None,
            };
            point(&s.name, snaps, replayed.and_then(|r| r.lsn))
        }
        kind @ (StandbyKind::Directory | StandbyKind::Claim | StandbyKind::Redis) => {
            let rpo = plan.classes.get(&s.class).map_or(0, |c| c.rpo.secs());
            copy_point(&own_snapshots(&s.name, snaps), &held(&s.name, kind, s.standby.as_ref()?.directory()), rpo)
        }
    }
}

/// Every standby's point, from the repositories' listings.
pub async fn points(plan: &Plan, listings: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, StandbyPoint> {
    let mut out = BTreeMap::new();
    for (repo, snaps) in listings {
        for s in standby_sources(plan, repo) {
            if let Some(p) = point_of(plan, s, snaps).await {
                out.insert(s.name.clone(), p);
            }
        }
    }
    out
}

/// Whether a data directory is still to be made: missing or empty. One
/// that cannot be read is neither: it may hold a cluster.
pub fn unmade(target: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(target) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// How long the daemon waits before it tries a failed standby job again:
/// doubling from the first retry's wait, at most the class's RPO (the
/// longest the standby may be behind), never less than the first wait.
pub fn backoff(first: std::time::Duration, attempt: u32, rpo: std::time::Duration) -> std::time::Duration {
    first.saturating_mul(2u32.saturating_pow(attempt)).min(rpo.max(first))
}

/// The RPO of `source`'s class (none known: no limit).
pub fn rpo(plan: &Plan, source: &str) -> std::time::Duration {
    let class = plan.sources.iter().find(|s| s.name == source).and_then(|s| plan.classes.get(&s.class));
    class.map_or(std::time::Duration::MAX, |c| c.rpo.0)
}

/// How a standby job names its standby: a directory, or a service or claim (`to`).
pub fn restore_spec(standby: &Standby, kind: StandbyKind) -> crate::model::RestoreSpec {
    let target = &standby.target;
    match kind {
        StandbyKind::Claim | StandbyKind::Redis => crate::model::RestoreSpec { to: Some(target.clone()), ..Default::default() },
        // A directory's path holds no credentials.
        StandbyKind::Postgres | StandbyKind::Directory => {
            crate::model::RestoreSpec { target: Some(target.expose().to_string()), ..Default::default() }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wal(file: &str, end: &str, commit: Option<&str>) -> Value {
        crate::walrpo::tests::wal(file, end, commit, "2026-11-30T10:10:00Z")
    }

    fn listing() -> Vec<Value> {
        vec![
            crate::walrpo::tests::base("2026-11-30T10:00:00Z", None),
            wal("000000010000000000000002", "0/3000000", None),
            wal("000000010000000000000003", "0/4000000", Some("2026-11-30T10:01:00Z")),
            wal("000000010000000000000004", "0/5000000", Some("2026-11-30T10:02:00Z")),
            // After a gap (5 and 6 missing): never replayed.
            wal("000000010000000000000007", "0/8000000", Some("2026-11-30T10:09:00Z")),
        ]
    }

    #[test]
    fn a_data_directory_is_unmade_only_when_missing_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unmade(&dir.path().join("new")).unwrap());
        assert!(unmade(dir.path()).unwrap());
        std::fs::write(dir.path().join("PG_VERSION"), "15").unwrap();
        assert!(!unmade(dir.path()).unwrap());
        let e = unmade(&dir.path().join("PG_VERSION/data")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory, "an unreadable path is not an empty one");
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_unreplayed_commit_and_zero_at_the_archives_end() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:10:00Z").unwrap().with_timezone(&Utc);
        let at = |lsn: Option<u64>| point("db", &listing(), lsn).map(|p| (p.lag(now), p.waiting));
        assert_eq!(at(None), Some((540.0, 4)), "an unknown position counts from the base backup's end");
        assert_eq!(at(Some(0x3000000)), Some((540.0, 3)), "segment 2 holds no commit");
        assert_eq!(at(Some(0x4000000)), Some((480.0, 2)));
        assert_eq!(at(Some(0x5000000)), Some((60.0, 1)), "stuck before the gap, the segment after it waits");
        assert_eq!(at(Some(0x8000000)), Some((0.0, 0)));
        assert_eq!(point("other", &listing(), None), None);
    }

    #[test]
    fn a_copy_lags_by_the_oldest_snapshot_it_lacks_and_by_its_newest_once_past_the_rpo() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let snaps = [("a", "2026-11-30T10:00:00Z"), ("b", "2026-11-30T11:00:00Z"), ("c", "2026-11-30T12:00:00Z")]
            .map(|(id, t)| json!({"id": id, "time": t, "tags": ["source=files"], "source": {"kind": "files"}}));
        let own = own_snapshots("files", &snaps);
        let holding = |id: Option<&str>| Held { snapshot: id.map(String::from), ..Held::default() };
        let lag = |id: Option<&str>, now: &str| copy_point(&own, &holding(id), 3600).map(|p| (p.lag(at(now)), p.waiting));
        assert_eq!(lag(Some("c"), "2026-11-30T12:30:00Z"), Some((0.0, 0)), "the newest, within the RPO");
        assert_eq!(lag(Some("c"), "2026-11-30T13:30:00Z"), Some((5400.0, 0)), "the newest, past the RPO: its age");
        assert_eq!(lag(Some("c"), "2026-11-30T14:30:00Z"), Some((9000.0, 0)), "and growing");
        assert_eq!(lag(Some("a"), "2026-11-30T12:30:00Z"), Some((5400.0, 2)), "b waits since 11:00");
        assert_eq!(lag(None, "2026-11-30T12:30:00Z"), Some((9000.0, 3)), "nothing held: all wait");
        assert_eq!(copy_point(&own_snapshots("other", &snaps), &holding(None), 3600), None);
        let secs = std::time::Duration::from_secs;
        let waits: Vec<u64> = (0..5).map(|n| backoff(secs(60), n, secs(300)).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 300, 300]);
    }
}
