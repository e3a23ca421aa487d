//! The job protocol's plain types: what a job is ([`JobSpec`]) and how it
//! ended ([`JobResult`]). The daemon writes a spec as JSON to a `tresor job
//! run` child's standard input and reads the result from the last line of
//! its standard output; secrets (a source URL's password, a repository
//! password) travel only in the spec, never on a command line.
//!
//! The fields that may hold a secret are [`SecretUrl`]s and
//! [`SecretString`]s, so the derived `Debug` of every type here shows none.
//!
//! This module depends on no other module of the controller but the leaf
//! `secret_url`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret_url::{SecretString, SecretUrl};

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
    /// A repository's integrity check, reading one slice of its packs.
    Check,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Backup,
        Kind::Forget,
        Kind::Copy,
        Kind::Prune,
        Kind::Restore,
        Kind::Drill,
        Kind::Snapshots,
        Kind::Rehearsal,
        Kind::Standby,
        Kind::Check,
    ];

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
            Kind::Check => "check",
        }
    }
}

/// What started a job, as the job history and the API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its schedule fell due.
    Schedule,
    /// A source's first backup, at the daemon's start (or its standby's first making current).
    First,
    /// A run missed while the daemon was down, or a copy not made before it stopped.
    CatchUp,
    /// A failed or interrupted job tried again.
    Retry,
    /// Asked for over the API.
    Api,
    /// A backup's follow-up: its off-site copy, or its standby made current.
    Backup,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [Trigger::Schedule, Trigger::First, Trigger::CatchUp, Trigger::Retry, Trigger::Api, Trigger::Backup];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::First => "first",
            Trigger::CatchUp => "catch-up",
            Trigger::Retry => "retry",
            Trigger::Api => "api",
            Trigger::Backup => "backup",
        }
    }
}

/// A repository and how to open it: a password file, or the password itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub url: SecretUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretString>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceJob {
    pub name: String,
    pub class: String,
    pub url: SecretUrl,
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
    /// A `pgbase://` source whose cluster archives its WAL into the
    /// repository (`wal_archive:`): its base backups wait for their end to
    /// be archived; others restore on their own and are not held to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archives_wal: bool,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// A snapshot id; default: the source's newest backup.
    pub snapshot: Option<String>,
    /// A service (`redis://…`, `postgres://…/DB`, `etcd-data:DIR`, `command:…`) …
    pub to: Option<SecretUrl>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// A drill of this application of the plan (`tresor drill --app`), not of a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
}

/// Which packs a `check` job reads whole: slice `slice` of `slices`, and
/// `packs` wherever they fall (`tresor check --read-data-subset
/// SLICE/SLICES --read-pack ID …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub slice: u32,
    pub slices: u32,
    /// The packs the previous check found damaged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<tresor_engine::Id>,
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
    /// Something the repository stores does not read back whole: a
    /// damaged or missing pack, index file, snapshot or blob (a check's
    /// finding among them). The repository was reached.
    RepositoryDamaged,
    RepositoryMissing,
    WrongPassword,
    Timeout,
    Interrupted,
    Shutdown,
    /// It ran to the end without some of what it was to do (exit 3): a
    /// backup whose snapshot lacks what could not be read, a restore
    /// without the objects the API refused.
    Partial,
    Unknown,
    Error,
}

impl Reason {
    /// Every reason a metric is declared for, from the start.
    pub const ALL: [Reason; 14] = [
        Reason::SourceUnreachable,
        Reason::SourceAuth,
        Reason::SourceCorrupt,
        Reason::HookFailed,
        Reason::StorageFull,
        Reason::Repository,
        Reason::RepositoryDamaged,
        Reason::RepositoryMissing,
        Reason::WrongPassword,
        Reason::Timeout,
        Reason::Interrupted,
        Reason::Shutdown,
        Reason::Partial,
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
            Reason::RepositoryDamaged => "repository_damaged",
            Reason::RepositoryMissing => "repository_missing",
            Reason::WrongPassword => "wrong_password",
            Reason::Timeout => "timeout",
            Reason::Interrupted => "interrupted",
            Reason::Shutdown => "shutdown",
            Reason::Partial => "partial",
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
    /// For a copy: the failure is in the target (off-site) repository,
    /// not in the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_target: bool,
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
            in_target: false,
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

impl DrillReport {
    /// The drill's figures once it ended `elapsed` after it started: its
    /// duration, and the age of the point it restored when it started. A
    /// point taken after the drill started (a backup beside it) is as new
    /// as the drill: no negative age.
    pub fn ended(&mut self, elapsed: std::time::Duration) {
        self.rto_seconds = elapsed.as_secs_f64();
        self.rpo_seconds = self.snapshot_time.map(|t| (self.started - t).num_milliseconds().max(0) as f64 / 1000.0);
    }

    /// The measured RTO: only a drill that passed ended in a validated
    /// restore; one that failed (finding no snapshot, say) measured none.
    pub fn measured_rto(&self) -> Option<f64> {
        self.passed.then_some(self.rto_seconds)
    }

    /// The achieved RPO, as [`DrillReport::measured_rto`]: of a drill that passed only.
    pub fn achieved_rpo(&self) -> Option<f64> {
        self.rpo_seconds.filter(|_| self.passed)
    }
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

impl SourcePoint {
    /// Restore into the service `to`, recorded by its shown form.
    pub fn aim_to(&mut self, to: SecretUrl) {
        self.target = to.to_string();
        self.spec.to = Some(to);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A job with a secret in each field that can hold one, each named `KIND-pw`.
    fn job() -> JobSpec {
        let repository = |url: &str, password: &str| RepositorySpec {
            url: url.into(),
            password_file: None,
            password: Some(password.to_string().into()),
        };
        JobSpec {
            kind: Kind::Restore,
            name: "cache".into(),
            source: Some(SourceJob {
                name: "cache".into(),
                class: "gold".into(),
                url: "redis://default:source-pw@cache:6379".into(),
                ..SourceJob::default()
            }),
            repository: repository("s3://key:repo-pw@bucket/prefix", "password-pw"),
            offsite: Some(repository("sftp://backup:offsite-pw@far/repo", "offpass-pw")),
            restore: Some(RestoreSpec {
                to: Some("postgres://app:to-pw@db:5432/shop?sslmode=require&password=query-pw".into()),
                recover_to: Some("2026-12-01T02:00:00+00:00".into()),
                ..RestoreSpec::default()
            }),
            forget: None,
            plan_file: None,
            timeout_secs: Some(60),
            check: None,
            application: None,
        }
    }

    /// A drill that restored a point taken a moment after it started (a
    /// backup running beside it) achieved an RPO of 0, never a negative one.
    #[test]
    fn a_drill_of_a_point_newer_than_itself_achieved_an_rpo_of_zero() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).expect("a time").to_utc();
        let mut r: DrillReport = serde_json::from_value(serde_json::json!({
            "test_id": "DRILL-20261207-194900-sample", "source": "sample", "class": "standard", "kind": "files",
            "started": "2026-12-07T19:49:00.403Z", "rto_seconds": 0.0, "rto_target": 60, "rpo_target": 60,
            "bytes": 0, "passed": false, "checks": [], "reasons": [], "owner": null,
        }))
        .expect("a drill report");
        r.snapshot_time = Some(at("2026-12-07T19:49:00.480Z"));
        r.ended(std::time::Duration::from_millis(1500));
        assert_eq!((r.rto_seconds, r.rpo_seconds), (1.5, Some(0.0)));
        r.snapshot_time = Some(at("2026-12-07T19:48:00.403Z"));
        r.ended(std::time::Duration::from_millis(1500));
        assert_eq!(r.rpo_seconds, Some(60.0));
    }

    #[test]
    fn a_job_travels_as_the_plain_strings_and_debug_shows_no_secret() {
        let json = "{\"kind\":\"restore\",\"name\":\"cache\",\
            \"source\":{\"name\":\"cache\",\"class\":\"gold\",\"url\":\"redis://default:source-pw@cache:6379\",\"tags\":[],\
            \"hooks\":{\"pre\":null,\"post\":null,\"timeout_secs\":null,\"continue_on_error\":false}},\
            \"repository\":{\"url\":\"s3://key:repo-pw@bucket/prefix\",\"password\":\"password-pw\"},\
            \"offsite\":{\"url\":\"sftp://backup:offsite-pw@far/repo\",\"password\":\"offpass-pw\"},\
            \"restore\":{\"snapshot\":null,\"to\":\"postgres://app:to-pw@db:5432/shop?sslmode=require&password=query-pw\",\
            \"target\":null,\"flush\":false,\"host\":[],\"tag\":[],\"path\":[],\"verify\":false,\"server_dry_run\":false,\
            \"namespace_mapping\":[],\"base_backup\":false,\"recover_to\":\"2026-12-01T02:00:00+00:00\"},\
            \"timeout_secs\":60}";
        assert_eq!(serde_json::to_string(&job()).unwrap(), json);
        assert_eq!(serde_json::from_str::<JobSpec>(json).unwrap(), job());
        for shown in [format!("{:?}", job()), format!("{:#?}", job())] {
            for secret in ["source", "repo", "password", "offsite", "offpass", "to", "query"].map(|s| format!("{s}-pw")) {
                assert!(!shown.contains(&secret), "{secret} in {shown}");
            }
            // What is no secret still shows: where the job goes, and to when.
            for part in
                ["redis://default:***@cache:6379", "postgres://app:***@db:5432/shop?sslmode=require&password=***", "2026-12-01T02:00:00"]
            {
                assert!(shown.contains(part), "{part} not in {shown}");
            }
        }
    }
}
