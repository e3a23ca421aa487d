//! Warm standbys (a source's `standby:` in the plan): how far a PostgreSQL
//! standby that replays the WAL archive through `tresor pg wal-fetch` is
//! behind that archive, and what its failover records.
//!
//! The lag is the age of the oldest archived commit the standby has not
//! replayed, zero when its replay has reached the end of the archive. Each
//! archived segment records its newest commit (FORMAT.md §12), so the age is
//! that of the oldest unreplayed segment that holds a commit, by that
//! segment's newest commit. The oldest, not the newest: a standby stuck
//! before a gap while the primary keeps archiving must look ever staler.
//! Segments past a gap count, as they never get replayed; a standby server
//! that does not answer counts as replayed to its base backup's end.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tresor_sources::pgwal::{self, WalFile, WalKind};

use crate::plan::Plan;
use crate::walrpo::{newest_base, secs, time};

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
    /// The WAL position the standby had replayed when it was promoted (`X/Y`).
    pub lsn: String,
    /// The end of the unbroken archive it was to reach (`X/Y`).
    pub archive_end_lsn: String,
    /// The newest commit it had replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<DateTime<Utc>>,
    /// Segments missing from the archive after its unbroken part.
    pub gap_segments: u64,
    /// Promoted despite a gap (`--force`).
    pub forced: bool,
    /// Who ran it: `user@host`.
    pub author: String,
}

/// One standby's figures at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyPoint {
    /// The oldest archived commit it has not replayed (by its segment's newest).
    pub oldest_unreplayed: Option<DateTime<Utc>>,
    /// Archived segments it has not replayed.
    pub waiting_segments: u64,
    /// The replay position it counted from.
    pub replayed_lsn: u64,
}

impl StandbyPoint {
    /// Seconds since the oldest archived commit it has not replayed (0: none).
    pub fn lag(&self, now: DateTime<Utc>) -> f64 {
        self.oldest_unreplayed.map_or(0.0, |t| secs(t, now))
    }
}

/// `source`'s standby against its repository's listing (`snapshots --all
/// --json`), given how far it has replayed (None: unknown).
pub fn point(source: &str, snaps: &[Value], replayed: Option<u64>) -> Option<StandbyPoint> {
    let base = newest_base(source, snaps)?;
    let facts = &base["source"]["consistency"];
    let system_id = facts["system_id"].as_str()?;
    let size = facts["wal_segment_size"].as_u64().unwrap_or(16 << 20);
    let start = WalFile::parse(facts["start_wal"].as_str()?)?;
    let base_end = facts["end_lsn"].as_str().and_then(pgwal::parse_lsn)?;
    let replayed = replayed.unwrap_or(base_end);
    let mut p = StandbyPoint { oldest_unreplayed: None, waiting_segments: 0, replayed_lsn: replayed };
    for x in snaps.iter().filter(|x| x["source"]["kind"] == "pg-wal" && x["source"]["consistency"]["system_id"] == system_id) {
        let seg = &x["source"]["consistency"];
        let Some(w) = seg["file"].as_str().and_then(WalFile::parse) else { continue };
        if w.kind != WalKind::Segment || w.timeline != start.timeline || w.segno(size) < start.segno(size) {
            continue;
        }
        // A segment archived before its records were read ends, for all we know, where the segment does.
        let end = seg["end_lsn"].as_str().and_then(pgwal::parse_lsn).unwrap_or((w.segno(size) + 1) * size);
        if end <= replayed {
            continue;
        }
        p.waiting_segments += 1;
        if let Some(t) = time(&seg["last_commit"]) {
            p.oldest_unreplayed = Some(p.oldest_unreplayed.map_or(t, |o| o.min(t)));
        }
    }
    Some(p)
}

/// The `pgbase://` sources with a standby whose repository is `repo`.
fn standby_sources<'a>(plan: &'a Plan, repo: &'a str) -> impl Iterator<Item = (&'a str, Option<String>)> {
    crate::walrpo::pg_sources(plan, repo).filter_map(|s| Some((s.name.as_str(), s.standby.as_ref()?.server.clone())))
}

/// Every standby's point, from the repositories' listings and the standby
/// servers (asked off the async threads: psql).
pub async fn points(plan: &Plan, listings: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, StandbyPoint> {
    let mut out = BTreeMap::new();
    for (repo, snaps) in listings {
        for (name, server) in standby_sources(plan, repo) {
            let replayed = match server {
                Some(url) => tokio::task::spawn_blocking(move || pgwal::replay_position(&url)).await.ok().and_then(Result::ok),
                None => None,
            };
            if let Some(p) = point(name, snaps, replayed.and_then(|r| r.lsn)) {
                out.insert(name.to_string(), p);
            }
        }
    }
    out
}

/// Whether a standby's data directory is still to be made: missing or empty.
pub fn unmade(target: &Path) -> bool {
    std::fs::read_dir(target).map_or(true, |mut d| d.next().is_none())
}

/// Make each standby of the plan not made yet, as `exe standby refresh
/// NAME --plan FILE` (the command an operator runs); each one made or why
/// not, by source.
pub async fn make_unmade(plan: &Plan, plan_file: &Path, exe: &Path) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    for s in plan.sources.iter().filter(|s| s.standby.as_ref().is_some_and(|b| unmade(&b.target))) {
        let ran = tokio::process::Command::new(exe)
            .args(["--quiet", "standby", "refresh", &s.name, "--plan"])
            .arg(plan_file)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let result = match ran {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("failed").to_string()),
            Err(e) => Err(format!("cannot run {}: {e}", exe.display())),
        };
        out.push((s.name.clone(), result));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wal(file: &str, end: &str, commit: Option<&str>) -> Value {
        json!({"time": "2026-11-30T10:10:00Z", "source": {"kind": "pg-wal", "consistency": {"system_id": "7", "file": file, "end_lsn": end, "last_commit": commit}}})
    }

    fn listing() -> Vec<Value> {
        vec![
            json!({"time": "2026-11-30T10:00:00Z", "tags": ["source=db"],
                   "source": {"kind": "pg-base", "consistency": {"system_id": "7", "wal_segment_size": 16777216,
                   "start_wal": "000000010000000000000002", "end_lsn": "0/2000100"}}}),
            wal("000000010000000000000002", "0/3000000", None),
            wal("000000010000000000000003", "0/4000000", Some("2026-11-30T10:01:00Z")),
            wal("000000010000000000000004", "0/5000000", Some("2026-11-30T10:02:00Z")),
            // After a gap (5 and 6 missing): never replayed.
            wal("000000010000000000000007", "0/8000000", Some("2026-11-30T10:09:00Z")),
        ]
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_unreplayed_commit_and_zero_at_the_archives_end() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:10:00Z").unwrap().with_timezone(&Utc);
        let at = |lsn: Option<u64>| point("db", &listing(), lsn).map(|p| (p.lag(now), p.waiting_segments));
        assert_eq!(at(None), Some((540.0, 4)), "an unknown position counts from the base backup's end");
        assert_eq!(at(Some(0x3000000)), Some((540.0, 3)), "segment 2 holds no commit");
        assert_eq!(at(Some(0x4000000)), Some((480.0, 2)));
        assert_eq!(at(Some(0x5000000)), Some((60.0, 1)), "stuck before the gap, the segment after it waits");
        assert_eq!(at(Some(0x8000000)), Some((0.0, 0)));
        assert_eq!(point("other", &listing(), None), None);
    }
}
