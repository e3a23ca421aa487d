//! The job protocol's plain types: what a job is ([`JobSpec`]) and how it
//! ended ([`JobResult`]). The daemon writes a spec as JSON to a `tresor job
//! run` child's standard input and reads the result from the last line of
//! its standard output; secrets (a source URL's password, a repository
//! password) travel only in the spec, never on a command line.
//!
//! This module depends on no other module of the controller.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backup,
    Forget,
    Copy,
    Prune,
    Restore,
    Drill,
    /// A source's snapshots (without a source: all, archive pieces too).
    Snapshots,
    /// A cold-start rehearsal of the whole plan (`drills.rehearsal`).
    Rehearsal,
    /// A source's warm standby made current from its newest snapshot
    /// (`restore` names the standby: a directory, or a service as `to`).
    Standby,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Forget => "forget",
            Kind::Copy => "copy",
            Kind::Prune => "prune",
            Kind::Restore => "restore",
            Kind::Drill => "drill",
            Kind::Snapshots => "snapshots",
            Kind::Standby => "standby",
            Kind::Rehearsal => "rehearsal",
        }
    }
}

/// A repository and how to open it: a password file, or the password itself.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl std::fmt::Debug for RepositorySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositorySpec")
            .field("url", &redact(&self.url))
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Commands run around a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSpec {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout_secs: Option<u64>,
    /// A failing hook is a warning, not a failed backup.
    #[serde(default)]
    pub continue_on_error: bool,
}

/// What a backup reads: a source's URL (which may hold a password) or path.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceJob {
    pub name: String,
    pub class: String,
    pub url: String,
    /// Tags beyond `source=NAME` and `class=CLASS`.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub hooks: HooksSpec,
    /// A volume Job's pod (`pvc://` sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<tresor_sources::k8s_pod::PodSettings>,
    /// The daemon's id of this run: names what the job makes in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Which objects a `k8s://` source takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<tresor_sources::k8s::Filters>,
}

impl std::fmt::Debug for SourceJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceJob")
            .field("name", &self.name)
            .field("class", &self.class)
            .field("url", &"<not shown: it may hold a password>")
            .field("tags", &self.tags)
            .field("hooks", &self.hooks)
            .field("pod", &self.pod)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A retention rule per period: a count of snapshots, or a span (`30d`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    Count(u32),
    Within(String),
}

/// `forget`'s policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetSpec {
    pub last: Option<u32>,
    pub hourly: Option<Keep>,
    pub daily: Option<Keep>,
    pub weekly: Option<Keep>,
    pub monthly: Option<Keep>,
    pub yearly: Option<Keep>,
}

/// What a restore job restores, and where to.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// A snapshot id; default: the source's newest backup.
    pub snapshot: Option<String>,
    /// A service (`redis://…`, `postgres://…/DB`, `etcd-data:DIR`, `command:…`) …
    pub to: Option<String>,
    /// … or a directory for the raw files.
    pub target: Option<String>,
    #[serde(default)]
    pub flush: bool,
    /// Without a snapshot id: the newest backup of the source from one of
    /// these hosts, with one of these tag groups (`a,b`: both), of all
    /// these paths, as restic narrows `latest`.
    #[serde(default)]
    pub host: Vec<String>,
    #[serde(default)]
    pub tag: Vec<String>,
    #[serde(default)]
    pub path: Vec<String>,
    /// Read the restored files back against the snapshot's content hashes.
    #[serde(default)]
    pub verify: bool,
    /// Kubernetes objects: sent as a server-side dry run, into these
    /// namespaces (`FROM:TO`).
    #[serde(default)]
    pub server_dry_run: bool,
    #[serde(default)]
    pub namespace_mapping: Vec<String>,
    /// A PostgreSQL base backup as a data directory that recovers only to
    /// its own consistency point, with no WAL archive.
    #[serde(default)]
    pub base_backup: bool,
    /// A base backup recovered instead through the archived WAL to this
    /// moment (RFC 3339), or to the archive's end (`latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_to: Option<String>,
    /// With a target directory: remove files there that the snapshot lacks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
    /// Kubernetes objects: restored as a rehearsal beside production
    /// (`<ns>-dr`, workloads at 0, CronJobs suspended, Ingress hosts `dr-`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rehearsal: bool,
    /// Kubernetes objects: the source's transforms file (storage classes, registries, JSON patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transforms: Option<PathBuf>,
}

impl std::fmt::Debug for RestoreSpec {
    /// `to` may hold a service's password (a Redis standby's, a restore's): redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSpec")
            .field("snapshot", &self.snapshot)
            .field("to", &self.to.as_deref().map(redact))
            .field("target", &self.target)
            .field("flush", &self.flush)
            .field("host", &self.host)
            .field("tag", &self.tag)
            .field("path", &self.path)
            .field("verify", &self.verify)
            .field("server_dry_run", &self.server_dry_run)
            .field("namespace_mapping", &self.namespace_mapping)
            .field("base_backup", &self.base_backup)
            .field("recover_to", &self.recover_to)
            .field("delete", &self.delete)
            .field("rehearsal", &self.rehearsal)
            .field("transforms", &self.transforms)
            .finish()
    }
}

/// One job, complete: the child needs nothing else (no plan, no argv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub kind: Kind,
    /// The source's name (for `prune` and `stats`: the repository's).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceJob>,
    pub repository: RepositorySpec,
    /// `copy`'s target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<RepositorySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget: Option<ForgetSpec>,
    /// A drill or a rehearsal reads the plan (its checks, its scratch directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_file: Option<PathBuf>,
    /// How long a job may run; a Kubernetes volume backup waits this long for its Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Why a job failed: each failure has exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    SourceUnreachable,
    SourceAuth,
    SourceCorrupt,
    HookFailed,
    StorageFull,
    Repository,
    RepositoryMissing,
    WrongPassword,
    Timeout,
    Interrupted,
    Shutdown,
    Unknown,
    Error,
}

impl Reason {
    /// Every reason a metric is declared for, from the start.
    pub const ALL: [Reason; 12] = [
        Reason::SourceUnreachable,
        Reason::SourceAuth,
        Reason::SourceCorrupt,
        Reason::HookFailed,
        Reason::StorageFull,
        Reason::Repository,
        Reason::RepositoryMissing,
        Reason::WrongPassword,
        Reason::Timeout,
        Reason::Interrupted,
        Reason::Shutdown,
        Reason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SourceUnreachable => "source_unreachable",
            Reason::SourceAuth => "source_auth",
            Reason::SourceCorrupt => "source_corrupt",
            Reason::HookFailed => "hook_failed",
            Reason::StorageFull => "storage_full",
            Reason::Repository => "repository",
            Reason::RepositoryMissing => "repository_missing",
            Reason::WrongPassword => "wrong_password",
            Reason::Timeout => "timeout",
            Reason::Interrupted => "interrupted",
            Reason::Shutdown => "shutdown",
            Reason::Unknown => "unknown",
            Reason::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// How a job ended, as the child reports it (and as the daemon completes
/// it when the child could not: killed, timed out, cancelled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The failure may heal by itself: the daemon retries it.
    #[serde(default)]
    pub temporary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_processed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    #[serde(default)]
    pub duration_seconds: f64,
    /// For a copy: how far the off-site repository was behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// The kind's own summary: a backup's counts, a drill's reports, a
    /// snapshot list, a repository's statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// The end of what the job printed on standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl JobResult {
    pub fn failed(reason: Reason, temporary: bool, message: impl Into<String>) -> JobResult {
        JobResult { status: Status::Failed, reason: Some(reason), temporary, message: Some(message.into()), ..JobResult::succeeded() }
    }

    pub fn succeeded() -> JobResult {
        JobResult {
            status: Status::Succeeded,
            reason: None,
            temporary: false,
            message: None,
            snapshot: None,
            bytes_processed: None,
            bytes_added: None,
            duration_seconds: 0.0,
            lag_seconds: None,
            details: None,
            log: None,
        }
    }
}

/// One drill, as the test protocol records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    pub test_id: String,
    pub source: String,
    pub class: String,
    pub kind: String,
    pub started: DateTime<Utc>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Measured RTO: from the start to a validated restore.
    pub rto_seconds: f64,
    /// Achieved RPO: the restore point's age when the drill started.
    pub rpo_seconds: Option<f64>,
    pub rto_target: u64,
    pub rpo_target: u64,
    pub bytes: u64,
    pub passed: bool,
    pub checks: Vec<String>,
    pub reasons: Vec<String>,
    pub owner: Option<String>,
    /// The Alertmanager silence that covered the drill, or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<DrillSilence>,
    /// Which copy was restored.
    #[serde(default)]
    pub from: BackupCopy,
    /// The repository restored from: its name in the plan, or its URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The test plan's id for the class's drills (`drill.id`, e.g. `BT-DR-01`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// The kind of test (`drill.type`: `restore`, `validation`, `dr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_type: Option<String>,
    /// A drill of a whole application (`drill --app`): its sources' points,
    /// hooks and smoke checks; `source` is then the application's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<AppDrill>,
}

/// The evidence entry kind of an [`Annotation`].
pub const ANNOTATION: &str = "annotation";

/// A finding and a follow-up about one drill (lessons learned), kept as an
/// evidence entry of its own (kind `annotation`): appended, never an edit
/// of the protocol entry it is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Annotation {
    /// The protocol entry annotated (`DRILL-…`).
    pub test_id: String,
    /// That drill's test id in the plan (`BT-DR-01`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    pub source: String,
    pub time: DateTime<Utc>,
    /// Who wrote it: `user@host`.
    pub author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<String>,
}

/// The evidence entry kind of a cold-start rehearsal's protocol.
pub const REHEARSAL: &str = "rehearsal";

/// Where an entry was appended: the evidence logs it is in, and those it
/// is not in, with why (a site lost with its primary repository).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EvidenceRecord {
    /// The plan's repositories whose evidence log holds the entry.
    pub recorded_in: Vec<String>,
    pub not_recorded: Vec<NotRecorded>,
}

/// A repository whose evidence log an entry could not join.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotRecorded {
    /// Its name in the plan.
    pub repository: String,
    /// Why: the repository's open or append error (no password in it).
    pub reason: String,
}

/// A copy of a source's backups: where a drill restores from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupCopy {
    /// The repository the source backs up to.
    #[default]
    Primary,
    /// Another repository: the class's off-site one (`offsite:`, which `copy` fills), or any other.
    Offsite,
}

impl BackupCopy {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupCopy::Primary => "primary",
            BackupCopy::Offsite => "off-site",
        }
    }
}

/// A drill's Alertmanager silence, as its protocol keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillSilence {
    /// The silence's id; none: the drill's alerts were not silenced.
    pub id: Option<String>,
    /// The plan's matchers.
    pub matchers: Vec<String>,
    /// When it was made to end at the latest.
    pub until: Option<DateTime<Utc>>,
    /// It was expired when the drill ended.
    pub expired: bool,
    /// What went wrong making or expiring it.
    pub error: Option<String>,
}

/// One restore hook or smoke check of an application, as it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookOutcome {
    /// `pre`, `post`, `undo` (a scale-down taken back) or `check`.
    pub phase: String,
    /// `scale`, `command`, `http` or `sql`.
    pub kind: String,
    /// What it does, in a line.
    pub what: String,
    pub passed: bool,
    /// What it said: its result, or how it failed.
    pub detail: String,
    pub seconds: f64,
}

/// One source of an application restore: the restore point it reaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourcePoint {
    pub source: String,
    pub kind: String,
    pub snapshot: String,
    /// When the snapshot was taken.
    pub snapshot_time: DateTime<Utc>,
    /// The moment the source is back at: the snapshot's, or for a base
    /// backup recovered through the WAL, the time asked for.
    pub point: DateTime<Utc>,
    /// Recovered exactly to the time asked for (archived WAL).
    pub exact: bool,
    pub target: String,
    /// The snapshot's size (bytes it processed), for predictions.
    #[serde(default)]
    pub bytes: u64,
    /// What the restore said; empty in a dry run.
    pub result: String,
    /// The restore to run (it may hold a password: never shown).
    #[serde(skip)]
    pub spec: RestoreSpec,
}

/// What a drill of an application records beyond every drill's fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppDrill {
    /// Its sources, in the order they came back.
    pub sources: Vec<SourcePoint>,
    /// The spread between the sources' points.
    pub consistency_window_seconds: f64,
    pub hooks: Vec<HookOutcome>,
    pub smoke_checks: Vec<HookOutcome>,
}

/// A URL without its secrets: the password in its user part and the values
/// of credential-like query parameters (`token=`, `password=`,
/// `X-Amz-Signature=`, …) shown as `***`. The user part ends at the last `@`
/// before the path, as libpq reads it (a password may hold `?` or `#`).
pub fn redact(url: &str) -> String {
    let url = tresor_storage::without_password(url);
    let Some(s) = url.find("://").map(|s| s + 3) else { return url };
    match url[s..].split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query.split('&').map(redact_param).collect();
            format!("{}{path}?{}", &url[..s], params.join("&"))
        }
        None => url,
    }
}

/// `name=value`, its value `***` when the name says it is a credential. Not
/// `key` or `secret` alone: an etcd URL's `key` names a file, a `pvc://`
/// URL's `secret` a Kubernetes Secret.
fn redact_param(param: &str) -> String {
    const PARTS: [&str; 9] = ["password", "passwd", "token", "apikey", "api_key", "signature", "credential", "secret_key", "access_key"];
    const NAMES: [&str; 6] = ["pass", "pwd", "sig", "auth", "authorization", "client_secret"];
    match param.split_once('=') {
        Some((name, _)) => {
            let n = name.to_ascii_lowercase().replace('-', "_");
            if PARTS.iter().any(|p| n.contains(p)) || NAMES.contains(&n.as_str()) { format!("{name}=***") } else { param.to_string() }
        }
        None => param.to_string(),
    }
}
