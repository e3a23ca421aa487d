//! The rules of `tresor pg wal-push` and `wal-fetch` (PostgreSQL's
//! `archive_command` and `restore_command`): which names are WAL, which
//! ready files a push takes along, whether a pushed file is new, the same
//! as the archived one or in conflict with it, what its snapshot records,
//! and which segments a fetch brings ahead. The binary reads and writes
//! the files and the repository.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tresor_engine::Snapshot;

use crate::pgwal::{self, WalFile, WalKind};
use crate::pitr::{Error, point};
use crate::walrecord;

/// A WAL file name as PostgreSQL hands it over (`%f`).
pub fn parse_name(name: &str) -> Result<WalFile, Error> {
    WalFile::parse(name).ok_or_else(|| Error::NotWalName(name.into()))
}

/// The WAL file at `path` (`%p`), by its file name.
pub fn parse_path(path: &Path) -> Result<WalFile, Error> {
    parse_name(&path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
}

/// Of the entries of `pg_wal/archive_status`, the WAL files marked ready
/// other than `except`: at most `limit`, oldest (lowest name) first.
pub fn ready(status_entries: impl IntoIterator<Item = String>, except: &str, limit: usize) -> Vec<String> {
    let mut names: Vec<String> = status_entries
        .into_iter()
        .filter_map(|e| e.strip_suffix(".ready").map(str::to_string))
        .filter(|n| n != except && WalFile::parse(n).is_some())
        .collect();
    names.sort();
    names.truncate(limit);
    names
}

/// Whose WAL a pushed file is.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Identity {
    pub system_id: u64,
    /// From a segment's header; history files carry none.
    pub seg_size: Option<u64>,
}

/// Who a file to push belongs to: a segment's header must match its name
/// and the cluster of the data directory (`control`, when readable); a
/// history file is the data directory's cluster's, so needs it.
pub fn identify(wal: &WalFile, data: &[u8], control: Option<u64>) -> Result<Identity, Error> {
    match wal.kind {
        WalKind::Segment | WalKind::Partial => {
            let h = pgwal::check_segment(wal, data).map_err(Error::BadSegment)?;
            if let Some(c) = control.filter(|&c| c != h.system_id) {
                return Err(Error::OtherCluster { file: wal.name.clone(), segment: h.system_id, control: c });
            }
            Ok(Identity { system_id: h.system_id, seg_size: Some(h.seg_size) })
        }
        WalKind::History | WalKind::BackupHistory => Ok(Identity { system_id: control.ok_or(Error::NoControl)?, seg_size: None }),
    }
}

/// A push against what the archive holds under the file's name.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Push {
    /// Not archived yet: store it.
    New,
    /// Archived with the same content (PostgreSQL retries after a crash):
    /// success without storing.
    Identical,
}

/// Whether a file with BLAKE3 `hash` is new to the archive, given the
/// snapshot already stored under its name; a different stored content is
/// a conflict, and the archive keeps what it has.
pub fn compare(wal: &WalFile, existing: Option<&Snapshot>, hash: &str) -> Result<Push, Error> {
    match existing {
        None => Ok(Push::New),
        Some(s) if point(s, "blake3") == Some(hash) => Ok(Push::Identical),
        Some(_) => Err(Error::Conflict(wal.name.clone())),
    }
}

/// What a pushed file's snapshot records (FORMAT.md §12): its cluster,
/// name, timeline, BLAKE3 and segment size, and for a whole segment what
/// its records say (walrecord), so the RPO of the archive is known without
/// reading WAL again: where its valid WAL ends, whether it ends in a
/// switch, its newest commit.
pub fn recorded_point(wal: &WalFile, who: Identity, hash: &str, data: &[u8]) -> BTreeMap<String, Value> {
    let mut point = BTreeMap::new();
    point.insert("system_id".to_string(), who.system_id.to_string().into());
    point.insert("file".to_string(), wal.name.clone().into());
    point.insert("timeline".to_string(), wal.timeline.into());
    point.insert("blake3".to_string(), hash.into());
    let Some(s) = who.seg_size else { return point };
    point.insert("wal_segment_size".to_string(), s.into());
    if wal.kind == WalKind::Segment {
        let r = walrecord::read_segment(data, wal.segno(s) * s);
        point.insert("end_lsn".into(), format!("{:X}/{:X}", r.end_lsn >> 32, r.end_lsn as u32).into());
        point.insert("switched".into(), r.switched.into());
        point.insert("commits".into(), r.commits.into());
        if let Some(t) = r.last_commit_unix_micros.and_then(chrono::DateTime::from_timestamp_micros) {
            point.insert("last_commit".into(), t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        }
    }
    point
}

/// The `count` segments after `wal` on its timeline: what a fetch without
/// a prefetcher brings ahead.
pub fn following(wal: &WalFile, seg_size: u64, count: usize) -> Vec<String> {
    let first = wal.segno(seg_size) + 1;
    (first..first + count as u64).map(|s| pgwal::segment_name(wal.timeline, s, seg_size)).collect()
}

/// Whether a fetch that took a file from a spool of `spooled` files, kept
/// `window` deep by itself, refills it: once it is below half.
pub fn running_low(spooled: usize, window: usize) -> bool {
    spooled < window.div_ceil(2)
}

/// How a fetch that failed for an archived file (storage that did not
/// answer, damage, a failed write) ends, so that PostgreSQL never takes it
/// for the end of the archive: a standby asks again later, as for a file
/// not archived yet; any other recovery would end at the file before and
/// promote without the WAL after it, so it is stopped instead, to go on
/// when the server is started again.
pub fn failed_fetch_exit(standby: bool) -> u8 {
    if standby { NOT_ARCHIVED_YET } else { STOP_RECOVERY }
}

/// A restore_command's exit for a file the archive does not hold.
pub const NOT_ARCHIVED_YET: u8 = 1;
/// PostgreSQL stops recovery (FATAL) on a restore_command's exit above
/// 125; 126 and 127 it reports as the shell's "not executable" and "not
/// found", so neither.
pub const STOP_RECOVERY: u8 = 200;

/// Why the WAL segment holding a base backup's end did not reach the
/// archive (its archive check, as pgBackRest's archive-check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotArchived {
    /// `archive_mode = off`: nothing will come, so there is no wait.
    ArchiveOff,
    /// The server's archive_command fails (`pg_stat_archiver`).
    Failing { secs: u64, failed_count: u64, last_failed_wal: String },
    /// The server reports no failure: it archives somewhere else, or late.
    Silent { secs: u64, last_archived_wal: Option<String> },
    /// The server did not answer the question.
    NoAnswer { secs: u64, error: String },
}

impl std::fmt::Display for NotArchived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotArchived::ArchiveOff => write!(f, "the cluster's archive_mode is off, so it archives no WAL"),
            NotArchived::Failing { secs, failed_count, last_failed_wal } => write!(
                f,
                "not within {secs} s: the cluster's archive_command fails (pg_stat_archiver: failed_count {failed_count}, last_failed_wal {last_failed_wal})"
            ),
            NotArchived::Silent { secs, last_archived_wal } => write!(
                f,
                "not within {secs} s, and the cluster reports no failing archive_command (last_archived_wal {}): does it archive into another repository?",
                last_archived_wal.as_deref().unwrap_or("none")
            ),
            NotArchived::NoAnswer { secs, error } => write!(f, "not within {secs} s, and the cluster did not say why: {error}"),
        }
    }
}

/// While a base backup waits for the segment holding its end to reach
/// the archive: whether to give up now, and why. `server` is what the
/// cluster said about its archiver (or why it did not), `waited` whether
/// the wait (`secs`) is over. With archiving off nothing will come, so it
/// gives up at once; a failing archive_command may recover (a full disk
/// freed), so only the wait's end decides that.
pub fn archive_verdict(server: Result<&pgwal::Archiver, String>, waited: bool, secs: u64) -> Option<NotArchived> {
    match (server, waited) {
        (Ok(a), _) if !a.archiving => Some(NotArchived::ArchiveOff),
        (_, false) => None,
        (Ok(a), true) => Some(match (&a.last_failed_wal, a.failing) {
            (Some(wal), true) => NotArchived::Failing { secs, failed_count: a.failed_count, last_failed_wal: wal.clone() },
            _ => NotArchived::Silent { secs, last_archived_wal: a.last_archived_wal.clone() },
        }),
        (Err(error), true) => Some(NotArchived::NoAnswer { secs, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_fetch_stops_a_recovery_and_a_standby_asks_again() {
        assert_eq!(failed_fetch_exit(true), 1);
        assert_eq!(failed_fetch_exit(false), 200);
    }

    const MB16: u64 = 16 << 20;

    fn wal(name: &str) -> WalFile {
        WalFile::parse(name).unwrap()
    }

    /// A whole segment of cluster `system_id` holding only its long page
    /// header.
    fn segment(segno: u64, system_id: u64) -> Vec<u8> {
        let mut d = vec![0u8; MB16 as usize];
        d[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        d[2..4].copy_from_slice(&2u16.to_le_bytes());
        d[8..16].copy_from_slice(&(segno * MB16).to_le_bytes());
        d[24..32].copy_from_slice(&system_id.to_le_bytes());
        d[32..36].copy_from_slice(&(MB16 as u32).to_le_bytes());
        d
    }

    #[test]
    fn names_that_are_not_wal_are_refused_by_name() {
        assert_eq!(parse_name("000000010000000000000003").unwrap().timeline, 1);
        assert_eq!(parse_name("RECOVERYXLOG").unwrap_err().to_string(), r#""RECOVERYXLOG" is not a WAL file name"#);
        assert_eq!(parse_path(Path::new("pg_wal/00000002.history")).unwrap().kind, WalKind::History);
        assert_eq!(parse_path(Path::new("pg_wal/x.tmp")).unwrap_err().to_string(), r#""x.tmp" is not a WAL file name"#);
        assert_eq!(parse_path(Path::new("/")).unwrap_err().to_string(), r#""" is not a WAL file name"#);
    }

    #[test]
    fn a_push_takes_along_the_oldest_other_ready_files() {
        let entries = [
            "000000010000000000000005.ready",
            "000000010000000000000003.ready",
            "000000010000000000000002.done",
            "000000010000000000000004.ready",
            "00000002.history.ready",
            "junk.ready",
            "000000010000000000000006.ready",
        ]
        .map(String::from);
        assert_eq!(
            ready(entries.clone(), "000000010000000000000004", 3),
            ["000000010000000000000003", "000000010000000000000005", "000000010000000000000006"]
        );
        assert_eq!(ready(entries.clone(), "", 10).last().map(String::as_str), Some("00000002.history"));
        assert!(ready(entries, "", 0).is_empty());
    }

    #[test]
    fn a_pushed_file_must_be_the_clusters_own() {
        let f = wal("000000010000000000000005");
        assert_eq!(identify(&f, &segment(5, 42), Some(42)).unwrap(), Identity { system_id: 42, seg_size: Some(MB16) });
        assert_eq!(identify(&f, &segment(5, 42), None).unwrap().system_id, 42, "without pg_control the header says whose it is");
        assert_eq!(
            identify(&f, &segment(5, 42), Some(43)).unwrap_err().to_string(),
            "000000010000000000000005 belongs to the cluster with system identifier 42, not to this one (43)"
        );
        assert_eq!(
            identify(&f, &segment(6, 42), Some(42)).unwrap_err().to_string(),
            "000000010000000000000005 holds WAL from 0/6000000, not from its own position"
        );
        let history = wal("00000002.history");
        assert_eq!(
            identify(&history, b"1\t0/3000000\tno recovery target\n", Some(42)).unwrap(),
            Identity { system_id: 42, seg_size: None }
        );
        assert_eq!(
            identify(&history, b"", None).unwrap_err().to_string(),
            "cannot read global/pg_control: run in the data directory or give --pgdata"
        );
        assert!(!identify(&history, b"", None).unwrap_err().is_temporary());
    }

    #[test]
    fn an_archived_file_is_never_replaced() {
        let f = wal("000000010000000000000005");
        let mut stored = crate::pitr::tests::snap(1, pgwal::KIND, json!({"blake3": "aa"}));
        assert_eq!(compare(&f, None, "aa").unwrap(), Push::New);
        assert_eq!(compare(&f, Some(&stored), "aa").unwrap(), Push::Identical);
        assert_eq!(
            compare(&f, Some(&stored), "bb").unwrap_err().to_string(),
            "000000010000000000000005 is archived already with different content; the archive keeps the copy it has"
        );
        stored.source.consistency.clear();
        assert!(compare(&f, Some(&stored), "aa").is_err(), "a stored file without its BLAKE3 is not the same file");
    }

    #[test]
    fn a_pushed_file_records_its_cluster_and_what_its_records_say() {
        let f = wal("000000010000000000000005");
        let data = segment(5, 42);
        let who = Identity { system_id: 42, seg_size: Some(MB16) };
        let point = recorded_point(&f, who, "aa", &data);
        let r = walrecord::read_segment(&data, 5 * MB16);
        assert_eq!(
            serde_json::to_value(&point).unwrap(),
            json!({"system_id": "42", "file": f.name, "timeline": 1, "blake3": "aa", "wal_segment_size": MB16,
                   "end_lsn": format!("{:X}/{:X}", r.end_lsn >> 32, r.end_lsn as u32), "switched": r.switched, "commits": r.commits})
        );
        let partial = wal("000000010000000000000005.partial");
        assert_eq!(
            point_keys(&recorded_point(&partial, who, "aa", &data)),
            ["blake3", "file", "system_id", "timeline", "wal_segment_size"]
        );
        let history = recorded_point(&wal("00000002.history"), Identity { system_id: 42, seg_size: None }, "aa", b"");
        assert_eq!(point_keys(&history), ["blake3", "file", "system_id", "timeline"]);
        assert_eq!(history["timeline"], json!(2));
    }

    fn point_keys(point: &BTreeMap<String, Value>) -> Vec<&str> {
        point.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_fetch_brings_the_following_segments_of_its_timeline() {
        assert_eq!(
            following(&wal("0000000200000000000000FE"), MB16, 3),
            ["0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]
        );
        assert_eq!(following(&wal("000000010000000000000003"), 1 << 30, 2), ["000000010000000100000000", "000000010000000100000001"]);
        assert!(following(&wal("000000010000000000000003"), MB16, 0).is_empty());
        assert!(running_low(3, 8) && !running_low(4, 8) && !running_low(0, 0));
    }

    #[test]
    fn a_base_backup_gives_up_waiting_for_its_end_at_once_without_archiving_else_when_the_wait_is_over() {
        let on = pgwal::Archiver {
            archiving: true,
            failed_count: 5,
            last_failed_wal: Some("000000010000000000000003".into()),
            last_archived_wal: Some("000000010000000000000002".into()),
            failing: true,
        };
        let off = pgwal::Archiver { archiving: false, ..on.clone() };
        assert_eq!(archive_verdict(Ok(&off), false, 60), Some(NotArchived::ArchiveOff));
        assert_eq!(archive_verdict(Ok(&on), false, 60), None, "a failing archive_command may recover within the wait");
        assert_eq!(archive_verdict(Err("timeout".into()), false, 60), None);
        let failing = archive_verdict(Ok(&on), true, 60).unwrap();
        assert_eq!(
            failing.to_string(),
            "not within 60 s: the cluster's archive_command fails (pg_stat_archiver: failed_count 5, last_failed_wal 000000010000000000000003)"
        );
        let recovered = pgwal::Archiver { failing: false, ..on.clone() };
        assert_eq!(
            archive_verdict(Ok(&recovered), true, 60).unwrap().to_string(),
            "not within 60 s, and the cluster reports no failing archive_command (last_archived_wal 000000010000000000000002): does it archive into another repository?"
        );
        assert_eq!(
            archive_verdict(Err("connection refused".into()), true, 2).unwrap().to_string(),
            "not within 2 s, and the cluster did not say why: connection refused"
        );
        assert_eq!(NotArchived::ArchiveOff.to_string(), "the cluster's archive_mode is off, so it archives no WAL");
    }
}
