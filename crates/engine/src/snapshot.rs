//! Snapshots: the root of one backup.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::Id;

/// What was backed up: `files`, `stdin`, or a data source (`redis`, …) with
/// its consistency point (replication offset, LSN, revision).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct SourceInfo {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consistency: BTreeMap<String, serde_json::Value>,
}

/// Totals of one backup, named as restic names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Bytes of new blobs before compression.
    pub data_added: u64,
    /// Bytes of new blobs as stored (compressed and encrypted).
    pub data_added_packed: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub total_duration: f64,
    pub backup_start: Option<DateTime<FixedOffset>>,
    pub backup_end: Option<DateTime<FixedOffset>>,
}

/// A file that could not be read, recorded in the snapshot it is missing from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileError {
    pub path: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Filled in when loaded; the id is the file name, not part of the content.
    #[serde(skip)]
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    pub tree: Id,
    pub paths: Vec<String>,
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A named snapshot is one piece of a continuous archive (a WAL
    /// segment): stored under an id derived from its name, found by name,
    /// never `latest`, and kept or dropped with its chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: SourceInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// For a copy made by `tresor copy`: the snapshot it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The evidence log's head when the snapshot was saved (§12d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Head>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    pub program_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FileError>,
}

impl Snapshot {
    /// Whether the backup went on without some of its source: files it
    /// could not read (`errors`), or what the source was refused
    /// (`source.consistency.refused`, e.g. the resource types a Kubernetes
    /// API refused). Retention prefers a whole snapshot to a partial one.
    pub fn is_partial(&self) -> bool {
        !self.errors.is_empty() || self.source.consistency.contains_key("refused")
    }

    /// As `tresor snapshots --json` lists it: the stored fields, its id and short id.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["id"] = serde_json::json!(self.id);
        v["short_id"] = serde_json::json!(self.id.short());
        v
    }
}

/// Where the evidence log stood (FORMAT.md §12d): its newest entry's number
/// and plaintext hash, as a snapshot records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Id,
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot for rule tests: only what selection and retention read.
    pub(crate) fn sample(time: &str, host: &str, paths: &[&str], tags: &[&str]) -> Snapshot {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Snapshot {
            id: Id::random(),
            time: DateTime::parse_from_rfc3339(time).expect("an RFC 3339 time"),
            tree: Id::default(),
            paths: strings(paths),
            hostname: host.into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            tags: strings(tags),
            name: None,
            source: SourceInfo::default(),
            parent: None,
            original: None,
            evidence: None,
            excludes: Vec::new(),
            program_version: String::new(),
            summary: None,
            errors: Vec::new(),
        }
    }
}
