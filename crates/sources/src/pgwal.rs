//! PostgreSQL's write-ahead log as files: the names the archiver hands out,
//! the checks a segment must pass before it is archived, and the arithmetic
//! behind gap detection and chain-aware retention.
//!
//! A segment is named `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment
//! number split at `0x1_0000_0000 / segment size`); beside segments the
//! archiver also ships `TTTTTTTT.history` (timeline switches),
//! `…SEGMENT.OFFSET.backup` (backup history) and `…SEGMENT.partial`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The kind of a WAL file's snapshot (FORMAT.md §12).
pub const KIND: &str = "pg-wal";

/// Where a WAL file lives in the repository: one named snapshot per file,
/// keyed by the cluster's system identifier.
pub fn snapshot_name(system_id: u64, file: &str) -> String {
    format!("pg-wal/{system_id}/{file}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalKind {
    Segment,
    Partial,
    BackupHistory,
    History,
}

/// A parsed archive file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalFile {
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
    /// `(log, seg)` from the name; for history files `(0, 0)`.
    pub log: u32,
    pub seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

impl WalFile {
    pub fn parse(name: &str) -> Option<WalFile> {
        // WAL names are ASCII; slicing at fixed byte offsets relies on it.
        if !name.is_ascii() {
            return None;
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return Some(WalFile { name: name.into(), kind: WalKind::History, timeline: hex8(tli)?, log: 0, seg: 0 });
        }
        let (seg_name, kind) = match name.get(24..) {
            Some("") => (name, WalKind::Segment),
            Some(".partial") => (&name[..24], WalKind::Partial),
            Some(rest) if rest.len() == 16 && rest.ends_with(".backup") && hex8(&rest[1..9]).is_some() => {
                (&name[..24], WalKind::BackupHistory)
            }
            _ => return None,
        };
        Some(WalFile {
            name: name.into(),
            kind,
            timeline: hex8(&seg_name[..8])?,
            log: hex8(&seg_name[8..16])?,
            seg: hex8(&seg_name[16..24])?,
        })
    }

    /// The segment number, given the cluster's segment size.
    pub fn segno(&self, seg_size: u64) -> u64 {
        u64::from(self.log) * segments_per_log(seg_size) + u64::from(self.seg)
    }
}

fn segments_per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size.max(1)
}

/// The name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per = segments_per_log(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The segment holding `lsn` (`X/Y` as PostgreSQL prints it).
pub fn lsn_segno(lsn: &str, seg_size: u64) -> Option<u64> {
    Some(parse_lsn(lsn)? / seg_size.max(1))
}

pub fn parse_lsn(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The system identifier of the cluster in `pgdata` (the first eight bytes
/// of `global/pg_control`).
pub fn system_id(pgdata: &Path) -> std::io::Result<u64> {
    let bytes = std::fs::read(pgdata.join("global/pg_control"))?;
    let first: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| std::io::Error::other("pg_control is too short"))?;
    Ok(u64::from_le_bytes(first))
}

/// What the first page of a segment says about it.
#[derive(Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub system_id: u64,
    pub seg_size: u64,
}

const XLP_LONG_HEADER: u16 = 0x0002;

/// Check a segment's long page header against its name and length: the
/// right size, the address its name implies, and a system identifier. A
/// file that fails is not WAL of this cluster, whatever its name says.
pub fn check_segment(file: &WalFile, data: &[u8]) -> Result<SegmentHeader, String> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let (Some(info), Some(pageaddr), Some(system_id), Some(seg_size)) = (u16_at(2), u64_at(8), u64_at(24), u32_at(32)) else {
        return Err(format!("{} is too short to be a WAL segment ({} bytes)", file.name, data.len()));
    };
    if info & XLP_LONG_HEADER == 0 {
        return Err(format!("{} does not start with a WAL segment header", file.name));
    }
    let seg_size = u64::from(seg_size);
    if !seg_size.is_power_of_two() || seg_size < 1 << 20 {
        return Err(format!("{} names an impossible segment size {seg_size}", file.name));
    }
    if file.kind == WalKind::Segment && data.len() as u64 != seg_size {
        return Err(format!("{} has {} bytes, not the {seg_size} of a whole segment", file.name, data.len()));
    }
    let expected = file.segno(seg_size) * seg_size;
    if pageaddr != expected {
        return Err(format!("{} holds WAL from {:X}/{:X}, not from its own position", file.name, pageaddr >> 32, pageaddr as u32));
    }
    Ok(SegmentHeader { system_id, seg_size })
}

/// What a running cluster says about its WAL, for the archive's RPO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPosition {
    /// `pg_current_wal_lsn()`: how far it has written WAL.
    pub current_lsn: u64,
    /// Its newest commit (`pg_last_committed_xact()`, microseconds since
    /// the Unix epoch) when it tracks commit timestamps.
    pub last_commit_unix_micros: Option<i64>,
    /// `archive_timeout` in seconds (0: off).
    pub archive_timeout: u64,
    /// `archive_mode` is not `off`.
    pub archiving: bool,
}

/// Ask the cluster behind `pgbase://USER@HOST:PORT` where its WAL stands.
pub fn server_position(url: &str) -> crate::Result<ServerPosition> {
    let rest = url.strip_prefix("pgbase://").unwrap_or(url);
    let pg = crate::postgres::Postgres::parse_cluster(&format!("postgres://{rest}"))?;
    // pg_last_committed_xact() fails without track_commit_timestamp, so it is asked only with it.
    let said = pg.query(
        "postgres",
        "SELECT pg_current_wal_lsn() || '|' || (SELECT setting FROM pg_settings WHERE name = 'archive_timeout') || '|' \
         || (SELECT setting FROM pg_settings WHERE name = 'archive_mode') || '|' \
         || coalesce(CASE WHEN current_setting('track_commit_timestamp')::bool \
            THEN (SELECT (extract(epoch FROM timestamp) * 1000000)::bigint::text FROM pg_last_committed_xact()) END, '')",
    )?;
    let parts: Vec<&str> = said.trim().split('|').collect();
    let bad = || pg.fail(format!("unexpected answer about the WAL position: {said:?}"));
    let [lsn, timeout, mode, commit] = parts[..] else { return Err(bad()) };
    Ok(ServerPosition {
        current_lsn: parse_lsn(lsn).ok_or_else(bad)?,
        last_commit_unix_micros: if commit.is_empty() { None } else { Some(commit.parse().map_err(|_| bad())?) },
        archive_timeout: timeout.parse().map_err(|_| bad())?,
        archiving: mode != "off",
    })
}

/// What a running cluster's archiver says (`archive_mode`, `pg_stat_archiver`),
/// for a base backup's archive check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archiver {
    /// `archive_mode` is not `off`.
    pub archiving: bool,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_archived_wal: Option<String>,
    /// Its newest attempt failed (`last_failed_time` after `last_archived_time`).
    pub failing: bool,
}

/// Ask the cluster behind `pgbase://USER@HOST:PORT` how its archiver fares.
pub fn archiver(url: &str) -> crate::Result<Archiver> {
    let rest = url.strip_prefix("pgbase://").unwrap_or(url);
    let pg = crate::postgres::Postgres::parse_cluster(&format!("postgres://{rest}"))?;
    let said = pg.query(
        "postgres",
        "SELECT current_setting('archive_mode') || '|' || failed_count || '|' || coalesce(last_failed_wal, '') || '|' \
         || coalesce(last_archived_wal, '') || '|' \
         || (last_failed_time IS NOT NULL AND last_failed_time > coalesce(last_archived_time, '-infinity')) FROM pg_stat_archiver",
    )?;
    let bad = || pg.fail(format!("unexpected answer about the archiver: {said:?}"));
    let [mode, failed, last_failed, last_archived, failing] = said.trim().split('|').collect::<Vec<_>>()[..] else { return Err(bad()) };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Archiver {
        archiving: mode != "off",
        failed_count: failed.parse().map_err(|_| bad())?,
        last_failed_wal: some(last_failed),
        last_archived_wal: some(last_archived),
        failing: failing == "t" || failing == "true",
    })
}

/// What a standby server says about its replay, for its lag and its failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPosition {
    /// `pg_last_wal_replay_lsn()`: the end of the last record replayed (None: nothing replayed yet).
    pub lsn: Option<u64>,
    /// Still a standby (`pg_is_in_recovery()`), not promoted.
    pub in_recovery: bool,
    /// The newest commit replayed (`pg_last_xact_replay_timestamp()`, microseconds since the Unix epoch).
    pub last_commit_unix_micros: Option<i64>,
}

/// Ask the standby server at `postgres://USER@HOST:PORT` how far it has replayed.
pub fn replay_position(url: &str) -> crate::Result<ReplayPosition> {
    let pg = crate::postgres::Postgres::parse_cluster(url)?;
    let said = pg.query(
        "postgres",
        "SELECT coalesce(pg_last_wal_replay_lsn()::text, '') || '|' || pg_is_in_recovery() || '|' \
         || coalesce((extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint::text, '')",
    )?;
    let bad = || pg.fail(format!("unexpected answer about the replay position: {said:?}"));
    let [lsn, recovery, commit] = said.trim().split('|').collect::<Vec<_>>()[..] else { return Err(bad()) };
    Ok(ReplayPosition {
        lsn: if lsn.is_empty() { None } else { Some(parse_lsn(lsn).ok_or_else(bad)?) },
        in_recovery: recovery == "t" || recovery == "true",
        last_commit_unix_micros: if commit.is_empty() { None } else { Some(commit.parse().map_err(|_| bad())?) },
    })
}

/// Promote the standby server at `postgres://USER@HOST:PORT` and wait (up
/// to `wait_secs`) until it accepts writes: `pg_promote`'s answer.
pub fn promote(url: &str, wait_secs: u32) -> crate::Result<bool> {
    let pg = crate::postgres::Postgres::parse_cluster(url)?;
    Ok(pg.query("postgres", &format!("SELECT pg_promote(true, {wait_secs})"))?.trim() == "t")
}

/// Missing segments of one timeline: `(first missing, last missing)`.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub count: u64,
}

/// The archived segments of one timeline: lowest, highest, how many.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Span {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

/// Per timeline, the segments present between the lowest and highest one
/// archived, and every run of missing ones in between.
pub fn gaps(files: &[WalFile], seg_size: u64) -> (BTreeMap<u32, Span>, Vec<Gap>) {
    let mut per_tli: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.kind == WalKind::Segment) {
        per_tli.entry(f.timeline).or_default().insert(f.segno(seg_size));
    }
    let mut ranges = BTreeMap::new();
    let mut out = Vec::new();
    for (tli, segs) in per_tli {
        let (lo, hi) = (*segs.first().expect("non-empty"), *segs.last().expect("non-empty"));
        ranges.insert(tli, Span { first: lo, last: hi, count: segs.len() as u64 });
        let mut prev = lo;
        for &s in segs.iter().skip(1) {
            if s > prev + 1 {
                out.push(Gap {
                    timeline: tli,
                    first: segment_name(tli, prev + 1, seg_size),
                    last: segment_name(tli, s - 1, seg_size),
                    count: s - prev - 1,
                });
            }
            prev = s;
        }
    }
    (ranges, out)
}

/// The WAL files no remaining base backup needs: those before the oldest
/// base backup's first segment. Timeline history is always kept; with no
/// base backup left, everything is (the chain is not cut blind).
pub fn unneeded(files: &[WalFile], oldest_base_start: Option<u64>, seg_size: u64) -> Vec<&WalFile> {
    let Some(start) = oldest_base_start else {
        return Vec::new();
    };
    files.iter().filter(|f| f.kind != WalKind::History && f.segno(seg_size) < start).collect()
}

/// One line of a timeline history file (`TTTTTTTT.history`): timeline
/// `parent` ended at `switch_lsn`, where the next one in the file branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    pub parent: u32,
    pub switch_lsn: u64,
}

/// The forks a timeline history file lists, oldest first (PostgreSQL's
/// `readTimeLineHistory`: `parentTLI<TAB>X/Y<TAB>reason`; blank lines and
/// `#` comments skipped). `None` for a line it cannot read: a history
/// misread would send a recovery down the wrong timeline.
pub fn parse_history(text: &str) -> Option<Vec<Fork>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let parent = fields.next()?.parse().ok()?;
        let switch_lsn = parse_lsn(fields.next()?)?;
        out.push(Fork { parent, switch_lsn });
    }
    Some(out)
}

/// Where timeline `target` may be recovered onto from a base backup on
/// timeline `tli` that ended at `end_lsn`, given `target`'s history: on
/// `target` itself, or on an ancestor the backup ended on before `target`'s
/// line branched off it (else the recovery reads another timeline's WAL
/// under the backup's checkpoint, and PostgreSQL cannot find it).
pub fn on_history_of(target: u32, history: &[Fork], tli: u32, end_lsn: u64) -> bool {
    tli == target || history.iter().any(|f| f.parent == tli && end_lsn <= f.switch_lsn)
}

/// An archived segment as a recovery plan sees it: its name and, when its
/// records were read at push time, the time of its newest commit.
#[derive(Clone, Debug)]
pub struct ArchivedSegment {
    pub file: WalFile,
    pub last_commit_micros: Option<i64>,
}

/// Where a recovery stops reading WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryEnd {
    /// Through this segment (the one holding a target LSN or a backup's end).
    Segment(u64),
    /// Through the first segment with a commit after this moment (Unix
    /// microseconds): recovery stops at that commit.
    AfterCommit(i64),
    /// Through the end of the archived WAL.
    Latest,
}

/// The segments a recovery from segment `start` on `timeline` reads, in
/// order: the archived ones from `start` on, without a gap (a gap ends any
/// recovery), up to `end` and one more (PostgreSQL decodes WAL ahead of
/// replay, into the segment after the one where it stops). Later
/// timelines are not followed: their segments are named only once
/// PostgreSQL chooses the timeline.
pub fn recovery_chain(archived: &[ArchivedSegment], timeline: u32, start: u64, end: RecoveryEnd, seg_size: u64) -> Vec<String> {
    let mut on_tli: Vec<&ArchivedSegment> = archived
        .iter()
        .filter(|a| a.file.kind == WalKind::Segment && a.file.timeline == timeline && a.file.segno(seg_size) >= start)
        .collect();
    on_tli.sort_by_key(|a| a.file.segno(seg_size));
    let mut out = Vec::new();
    let mut stopped = false;
    for (want, a) in (start..).zip(on_tli) {
        let segno = a.file.segno(seg_size);
        if segno != want {
            break;
        }
        out.push(a.file.name.clone());
        if stopped {
            break;
        }
        stopped = match end {
            RecoveryEnd::Segment(s) => segno >= s,
            RecoveryEnd::AfterCommit(t) => a.last_commit_micros.is_some_and(|c| c > t),
            RecoveryEnd::Latest => false,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn names_parse_and_number_as_postgres_does() {
        let f = WalFile::parse("0000000200000001000000FF").unwrap();
        assert_eq!((f.kind, f.timeline, f.segno(MB16)), (WalKind::Segment, 2, 256 + 255));
        assert_eq!(segment_name(2, 512, MB16), "000000020000000200000000");
        assert_eq!(WalFile::parse("00000003.history").unwrap().kind, WalKind::History);
        assert_eq!(WalFile::parse("000000010000000000000002.00000028.backup").unwrap().kind, WalKind::BackupHistory);
        assert_eq!(WalFile::parse("000000010000000000000002.partial").unwrap().segno(MB16), 2);
        for bad in ["RECOVERYXLOG", "00000001000000000000000G", "0000000100000000000000021", "x.history"] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
        assert_eq!(lsn_segno("1/3000028", MB16), Some(256 + 3));
    }

    fn segment(segno: u64, system_id: u64) -> Vec<u8> {
        let mut d = vec![0u8; MB16 as usize];
        d[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        d[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        d[8..16].copy_from_slice(&(segno * MB16).to_le_bytes());
        d[24..32].copy_from_slice(&system_id.to_le_bytes());
        d[32..36].copy_from_slice(&(MB16 as u32).to_le_bytes());
        d
    }

    #[test]
    fn segments_are_checked_against_their_names() {
        let f = WalFile::parse("000000010000000000000005").unwrap();
        assert_eq!(check_segment(&f, &segment(5, 42)), Ok(SegmentHeader { system_id: 42, seg_size: MB16 }));
        assert_eq!(
            check_segment(&f, &segment(6, 42)),
            Err("000000010000000000000005 holds WAL from 0/6000000, not from its own position".into())
        );
        let mut short = segment(5, 42);
        short.truncate(1000);
        assert_eq!(check_segment(&f, &short), Err("000000010000000000000005 has 1000 bytes, not the 16777216 of a whole segment".into()));
        assert_eq!(check_segment(&f, &[0u8; 10]), Err("000000010000000000000005 is too short to be a WAL segment (10 bytes)".into()));
    }

    #[test]
    fn gaps_and_retention_follow_the_chain() {
        let files: Vec<WalFile> = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000007", "00000002.history"]
            .iter()
            .map(|n| WalFile::parse(n).unwrap())
            .collect();
        let (ranges, found) = gaps(&files, MB16);
        assert_eq!(ranges[&1], Span { first: 3, last: 7, count: 3 });
        assert_eq!(
            found,
            vec![Gap { timeline: 1, first: "000000010000000000000005".into(), last: "000000010000000000000006".into(), count: 2 }]
        );
        let gone: Vec<&str> = unneeded(&files, Some(4), MB16).iter().map(|f| f.name.as_str()).collect();
        assert_eq!(gone, ["000000010000000000000003"]);
        assert!(unneeded(&files, None, MB16).is_empty());
    }

    #[test]
    fn a_recovery_reads_the_chain_from_its_start_to_its_end() {
        let seg = |n: &str, commit: Option<i64>| ArchivedSegment { file: WalFile::parse(n).unwrap(), last_commit_micros: commit };
        let archived = vec![
            seg("000000010000000000000002", Some(100)),
            seg("000000010000000000000003", None),
            seg("000000010000000000000004", Some(300)),
            seg("000000010000000000000005", Some(400)),
            seg("000000010000000000000007", Some(700)),
            seg("000000020000000000000005", Some(500)),
            seg("00000002.history", None),
        ];
        let names = |end| recovery_chain(&archived, 1, 3, end, MB16);
        assert_eq!(
            names(RecoveryEnd::AfterCommit(250)),
            ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"],
            "through the segment of the first commit after 250, and the one after it"
        );
        assert_eq!(names(RecoveryEnd::Segment(3)), ["000000010000000000000003", "000000010000000000000004"]);
        assert_eq!(
            names(RecoveryEnd::Latest),
            ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"],
            "the gap at 6 ends the chain"
        );
        assert_eq!(names(RecoveryEnd::AfterCommit(900)), names(RecoveryEnd::Latest));
        assert!(recovery_chain(&archived, 1, 6, RecoveryEnd::Latest, MB16).is_empty(), "the first segment is missing");
    }

    #[test]
    fn a_history_file_names_the_forks_a_base_backup_may_recover_across() {
        let text = "1\t0/3000000\tno recovery target specified\n\n# a comment\n2\t0/50000A0\tbefore 2026-12-08\n";
        let forks = parse_history(text).unwrap();
        assert_eq!(forks, [Fork { parent: 1, switch_lsn: 0x300_0000 }, Fork { parent: 2, switch_lsn: 0x500_00A0 }]);
        assert_eq!(parse_history("1\tnot-an-lsn\treason\n"), None, "a line misread is no history");
        assert_eq!(parse_history("").unwrap(), []);
        assert!(on_history_of(3, &forks, 3, u64::MAX), "the target timeline itself");
        assert!(on_history_of(3, &forks, 1, 0x300_0000), "an ancestor, ended at the switch point");
        assert!(!on_history_of(3, &forks, 1, 0x300_0001), "an ancestor past the switch point: another timeline's WAL");
        assert!(on_history_of(3, &forks, 2, 0x400_0000));
        assert!(!on_history_of(1, &[], 2, 0), "a later timeline is no ancestor");
        assert!(!on_history_of(3, &forks, 4, 0));
    }
}
