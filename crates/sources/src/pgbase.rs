//! PostgreSQL, physical: a base backup of the whole cluster, streamed from
//! `pg_basebackup` as one tar (no copy on disk), with the WAL it needs to
//! become consistent fetched into it (`-X fetch`), so every base backup
//! restores on its own; the archived WAL (`tresor pg wal-push`) carries it
//! forward to any later point.
//!
//! The consistency point, recorded once the stream has ended: the system
//! identifier, the WAL segment size, the start and end LSN and the timeline.

use std::collections::BTreeMap;

use tresor_engine::SourceInfo;

use crate::command::{Stderr, spawn_output_and_stderr};
use crate::pgwal::{lsn_segno, segment_name};
use crate::postgres::Postgres;
use crate::{Result, Source, Stream};

pub const KIND: &str = "pg-base";

pub struct PgBase {
    pg: Postgres,
    point: BTreeMap<String, serde_json::Value>,
    stderr: Option<Stderr>,
}

impl PgBase {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]` (a database in the URL is ignored).
    pub fn parse(url: &str) -> Result<PgBase> {
        Ok(PgBase { pg: Postgres::parse_cluster(url)?, point: BTreeMap::new(), stderr: None })
    }
}

/// What `pg_basebackup --verbose` says about the WAL range of the backup.
fn wal_range(said: &str) -> (Option<&str>, Option<&str>, Option<u32>) {
    let after = |key: &str| said.lines().find_map(|l| l.split_once(key).map(|(_, r)| r.trim()));
    let start = after("write-ahead log start point:");
    let (start_lsn, timeline) = match start.and_then(|s| s.split_once(" on timeline ")) {
        Some((lsn, tli)) => (Some(lsn), tli.trim().parse().ok()),
        None => (start, None),
    };
    (start_lsn, after("write-ahead log end point:"), timeline)
}

impl Source for PgBase {
    fn open(&mut self) -> Result<Stream> {
        let facts = self.pg.query(
            "postgres",
            "SELECT system_identifier || '|' || (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size') FROM pg_control_system()",
        )?;
        let (system_id, seg_size) = facts.split_once('|').unwrap_or((&facts, ""));
        let system_id: u64 = system_id.parse().map_err(|_| self.pg.fail(format!("unexpected system identifier {system_id:?}")))?;
        let seg_size: u64 = seg_size.parse().map_err(|_| self.pg.fail(format!("unexpected WAL segment size {seg_size:?}")))?;
        self.point.insert("system_id".into(), system_id.to_string().into());
        self.point.insert("wal_segment_size".into(), seg_size.into());
        let mut cmd = self.pg.server_program("pg_basebackup");
        cmd.args(["-D", "-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast", "--verbose"]);
        let (reader, stderr) = spawn_output_and_stderr(format!("pg_basebackup of {}", self.pg.cluster_url()), cmd)?;
        self.stderr = Some(stderr);
        Ok(Stream { name: "base.tar".into(), reader })
    }

    fn info(&self) -> SourceInfo {
        let mut point = self.point.clone();
        let said = self.stderr.as_ref().map(Stderr::text).unwrap_or_default();
        let (start, end, timeline) = wal_range(&said);
        let seg_size = point.get("wal_segment_size").and_then(|v| v.as_u64()).unwrap_or(16 << 20);
        if let (Some(start), Some(tli)) = (start, timeline) {
            point.insert("start_lsn".into(), start.into());
            point.insert("timeline".into(), tli.into());
            if let Some(segno) = lsn_segno(start, seg_size) {
                point.insert("start_wal".into(), segment_name(tli, segno, seg_size).into());
            }
        }
        if let Some(end) = end {
            point.insert("end_lsn".into(), end.into());
        }
        SourceInfo { kind: KIND.into(), url: Some(self.pg.cluster_url()), consistency: point }
    }
}

/// A base backup's tar unpacked into `dir` (by `tar`, which knows every
/// member type PostgreSQL writes).
pub fn unpack_into(dir: &std::path::Path) -> Box<dyn crate::Target> {
    let mut cmd = std::process::Command::new("tar");
    cmd.args(["-x", "-f", "-", "-C"]).arg(dir);
    Box::new(crate::command::CommandTarget::program(format!("unpacking into {}", dir.display()), cmd))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wal_range_is_read_from_pg_basebackups_words() {
        let said = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                    pg_basebackup: checkpoint completed\n\
                    pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                    pg_basebackup: write-ahead log end point: 0/2000100\n\
                    pg_basebackup: base backup completed\n";
        assert_eq!(super::wal_range(said), (Some("0/2000028"), Some("0/2000100"), Some(1)));
        assert_eq!(super::wal_range(""), (None, None, None));
    }
}
