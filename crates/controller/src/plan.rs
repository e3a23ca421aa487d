//! The backup plan (`tresor.yaml`): repositories, data classes with their
//! RPO/RTO targets and retention, and the sources assigned to them with
//! schedules and hooks. `examples/tresor.yaml` documents every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::Error;

pub mod diff;
mod retention;
pub use retention::{Keep, Retention};

pub use crate::secret_url::SecretUrl;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub repositories: BTreeMap<String, Repository>,
    pub classes: BTreeMap<String, Class>,
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub daemon: DaemonSettings,
    #[serde(default)]
    pub notifications: Vec<Webhook>,
    #[serde(default)]
    pub drills: DrillSettings,
    /// Sources that come back together, in order, between restore hooks (`tresor restore-app`).
    #[serde(default)]
    pub applications: Vec<Application>,
}

/// Where drills restore to.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillSettings {
    /// Scratch space for restored data (default: the system's temporary directory).
    pub scratch_dir: Option<PathBuf>,
    /// The platform's RTO: a cold-start rehearsal (`tresor dr rehearse`) brings every source back within it.
    pub platform_rto: Option<Span>,
    /// Alerts silenced in Alertmanager while a drill runs.
    pub silence: Option<SilenceSettings>,
    /// The daemon's cold-start rehearsals of the whole platform (`tresor dr rehearse`).
    pub rehearsal: Option<RehearsalSpec>,
}

/// `drills.rehearsal`: when the daemon rehearses a cold start, from which
/// copy, and the test plan's entry for it (as a class's [`DrillSpec`] names its drills).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RehearsalSpec {
    /// A cron expression of five fields, or `@yearly` (and the other `@` names).
    pub schedule: String,
    /// What `dr rehearse --from` takes: a repository of the plan, `primary`
    /// (each source's own) or `offsite` (each class's off-site repository).
    pub from: String,
    pub owner: Option<String>,
    /// The test's id in the test plan (`BT-DR-01`), named in each protocol entry.
    pub id: Option<String>,
    /// What kind of test the rehearsals are, for the test plan (default `dr`).
    #[serde(rename = "type", default = "TestType::dr")]
    pub test_type: TestType,
}

/// `drills.silence`: what a drill silences while it runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceSettings {
    /// Alertmanager's URL (`http://alertmanager:9093`).
    pub alertmanager: SecretUrl,
    /// Matchers as Alertmanager writes them (`alertname=~"Backup.*"`,
    /// `source={source}`); `{source}` and `{class}` stand for the drilled source's.
    pub matchers: Vec<String>,
    /// Added to the drill's expected time (its longest passed drill, else its class's RTO); default 10m.
    pub margin: Option<Span>,
    /// Sent as `Authorization: Bearer …`.
    pub token_file: Option<PathBuf>,
}

/// A class's restore drills: when, and who owns the protocol entries.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillSpec {
    pub schedule: String,
    pub owner: Option<String>,
    /// The test's id in the test plan (`BT-DR-01`), named in each protocol entry.
    pub id: Option<String>,
    /// What kind of test the drills are, for the test plan.
    #[serde(rename = "type", default)]
    pub test_type: TestType,
    /// Which copy the drills restore from: the source's own repository, or the class's off-site one.
    #[serde(default)]
    pub from: crate::model::BackupCopy,
}

/// Kinds of test, as test plans name them.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestType {
    /// A restore drill: the newest backup restored into scratch and validated.
    #[default]
    Restore,
    /// A validation: the restored data checked against the application's expectations.
    Validation,
    /// A disaster-recovery exercise.
    Dr,
}

impl TestType {
    fn dr() -> TestType {
        TestType::Dr
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TestType::Restore => "restore",
            TestType::Validation => "validation",
            TestType::Dr => "dr",
        }
    }
}

/// How a drill validates a restored source, beyond what the backup recorded.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// PostgreSQL: queries on the restored database, each answering one value.
    #[serde(default)]
    pub queries: Vec<Query>,
    /// Redis: at least this many keys.
    pub min_keys: Option<u64>,
    /// Command sources: run with the restored file in `$TRESOR_DRILL_FILE`;
    /// an application: run once it is back. Exit 0 passes.
    pub command: Option<String>,
    /// Requests that must answer their status (an application's smoke checks).
    #[serde(default)]
    pub http: Vec<HttpCheck>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub sql: String,
    /// The database (default: the source's, else `postgres`).
    pub database: Option<String>,
    /// The answer, a number, must be at least this.
    pub min: Option<i64>,
    /// The answer, a timestamp, must be at most this old at the restore point.
    pub max_age: Option<Span>,
    /// The answer must be exactly this.
    pub equals: Option<String>,
    /// In an application's checks: the server asked (`postgres://USER@HOST:PORT`).
    pub url: Option<SecretUrl>,
}

impl Query {
    /// Why no answer can meet the query's conditions, if none can: `min`
    /// asks for a number, `max_age` for a timestamp.
    pub fn contradiction(&self) -> Option<String> {
        (self.min.is_some() && self.max_age.is_some())
            .then(|| format!("query {:?} asks for a number (min) and a timestamp (max_age): no answer is both", self.sql))
    }

    /// The query's answer against every condition the plan sets on it (at
    /// least `min`, exactly `equals`, a timestamp at most `max_age` before
    /// the restore point `point`): the conditions met, as the checks show
    /// them, or why it failed.
    pub fn judge(&self, value: &str, point: Option<chrono::DateTime<chrono::Utc>>) -> Result<String, String> {
        let mut met = Vec::new();
        if let Some(want) = &self.equals
            && value != want
        {
            return Err(format!("answered {value:?}, not {want:?}"));
        }
        if let Some(min) = self.min {
            let n: i64 = value.parse().map_err(|_| format!("answered {value:?}, not a number"))?;
            if n < min {
                return Err(format!("answered {n}, less than the plan's minimum {min}"));
            }
            met.push(format!("at least {min}"));
        }
        if let Some(max_age) = self.max_age {
            let at = chrono::DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map_err(|_| format!("answered {value:?}, not a timestamp"))?;
            let age = point.map_or(0, |p| (p - at.with_timezone(&chrono::Utc)).num_seconds().max(0)) as u64;
            if age > max_age.secs() {
                return Err(format!("the newest row is {age}s older than the restore point, more than {max_age}"));
            }
            met.push(format!("within {max_age} of the restore point"));
        }
        Ok(met.join(", "))
    }
}

/// Sources that come back together (`tresor restore-app`; app.rs orders them).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    /// The sources it is made of, each restored after those it names in `after`.
    pub sources: Vec<AppSource>,
    #[serde(default)]
    pub hooks: RestoreHooks,
    /// Smoke checks once every source is back and the post-hooks ran.
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub description: String,
    /// The application's drills on a schedule (`tresor drill --app`, run by the daemon).
    pub drill: Option<AppDrillSpec>,
}

/// When the daemon drills a whole application, and what its protocol
/// entries say of the test.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppDrillSpec {
    pub schedule: String,
    pub owner: Option<String>,
    /// The test's id in the test plan, named in each protocol entry.
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub test_type: TestType,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSource {
    /// A source of the plan, by name.
    pub source: String,
    /// Sources of this application restored before this one.
    #[serde(default)]
    pub after: Vec<String>,
    /// Where it comes back: a service URL as `restore --to` takes it, or a
    /// directory; default: where it was backed up from (a `pgbase://`
    /// cluster needs one: a new data directory).
    pub target: Option<SecretUrl>,
    /// Replace what the target holds (`restore --flush`).
    #[serde(default)]
    pub flush: bool,
}

/// Hooks before the first source is touched and after the last is back.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreHooks {
    #[serde(default)]
    pub pre: Vec<RestoreHook>,
    #[serde(default)]
    pub post: Vec<RestoreHook>,
    /// Each hook's time limit unless it sets its own (default 5m).
    pub timeout: Option<Span>,
}

/// One hook: exactly one of `scale`, `command` and `http` (`plan check` says so).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreHook {
    pub scale: Option<Scale>,
    /// Run with `sh -c`; exit 0 passes.
    pub command: Option<String>,
    pub http: Option<HttpCheck>,
    pub timeout: Option<Span>,
}

/// A Deployment or StatefulSet scaled, waiting until it is ready.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// `k8s://` (default) or `k8s://CONTEXT`.
    pub cluster: Option<String>,
    pub namespace: String,
    /// `deployment/NAME` or `statefulset/NAME`.
    pub workload: String,
    /// The replicas; left out (in a post-hook): those it had before the pre-hook scaled it.
    pub replicas: Option<u32>,
}

/// An HTTP request and the status it must answer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: SecretUrl,
    /// The status expected (default 200).
    pub status: Option<u16>,
    /// Text the body must contain.
    pub contains: Option<String>,
}

/// A webhook told when a source's backups start failing and when they recover.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: SecretUrl,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Sent as `Authorization: Bearer …`.
    pub token_file: Option<PathBuf>,
    /// Deliveries after the first that failed, with doubling back-off from one second.
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

fn default_webhook_retries() -> u32 {
    4
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": "failure" | "recovery", "source", "class", …}`
    #[default]
    Json,
    /// Alertmanager's `POST /api/v2/alerts` body: the alert starts on a
    /// failure and ends on the recovery.
    Alertmanager,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// A path or URL, as `tresor --repo` takes it.
    pub url: SecretUrl,
    pub password_file: PathBuf,
    /// Create the repository (and a password file that does not exist) at start.
    #[serde(default)]
    pub init: bool,
    /// Prune this repository on this schedule rather than on
    /// `daemon.prune_schedule`; `never` (or null): not at all (a repacking
    /// prune reads packs).
    #[serde(default, deserialize_with = "given")]
    #[schemars(with = "Option<String>")]
    pub prune_schedule: Option<Option<String>>,
    /// Check this repository on this schedule rather than on
    /// `daemon.check_schedule`; `never` (or null): not at all (an off-site
    /// copy in cold storage, whose reads fail, or whose egress costs).
    #[serde(default, deserialize_with = "given")]
    #[schemars(with = "Option<String>")]
    pub check_schedule: Option<Option<String>>,
    /// Into how many slices its packs are cut, rather than `daemon.check_slices`.
    #[serde(default)]
    pub check_slices: Option<u32>,
}

impl Repository {
    /// A repository at `url` opened with `password_file`, on the daemon's schedules.
    pub fn new(url: SecretUrl, password_file: PathBuf) -> Repository {
        Repository { url, password_file, init: false, prune_schedule: None, check_schedule: None, check_slices: None }
    }
}

/// A prune or check schedule that turns the job off, as null does: a
/// Kubernetes client may drop a null from an object it applies, and the
/// daemon's schedule would then take its place.
pub const NEVER: &str = "never";

/// A field that is there, null or not; a field left out stays `None`.
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Class {
    pub rpo: Span,
    pub rto: Span,
    /// Higher runs first when jobs wait for a slot; default from the RPO.
    pub priority: Option<u32>,
    #[serde(default)]
    pub retention: Retention,
    /// The repository that receives a copy of every backup of this class.
    pub offsite: Option<String>,
    pub drill: Option<DrillSpec>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    pub class: String,
    /// A data-source URL (`redis://…`, `postgres://…`, `command:…`, …) or a path.
    pub url: SecretUrl,
    pub schedule: String,
    /// Start each run up to this much later than scheduled, the same offset
    /// for a source every time, so sources on one schedule do not all start together.
    pub spread: Option<Span>,
    pub repository: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Attempts after the first failure, with doubling back-off.
    pub retries: Option<u32>,
    /// Cancel a run that takes longer.
    pub timeout: Option<Span>,
    #[serde(default)]
    pub verify: Verify,
    /// How the Job of a `pvc://` source runs (and that of its claim standby): user, groups, resources, node selector, tolerations.
    pub pod: Option<tresor_sources::k8s_pod::PodSettings>,
    /// Which objects a `k8s://` source takes: namespaces, resources, a selector, cluster resources.
    pub scope: Option<tresor_sources::k8s::Filters>,
    /// A `pgbase://` source whose cluster archives WAL through `tresor pg wal-push`:
    /// its RPO counts the archive, not only the base backups.
    pub wal_archive: Option<WalArchive>,
    /// How a `k8s://` source's restores into another cluster rewrite its
    /// objects: a transforms file (storage classes, image registries, JSON patches).
    pub transforms: Option<PathBuf>,
    /// A warm standby kept ready from this source's backups (`tresor standby
    /// refresh`, `tresor failover`).
    pub standby: Option<Standby>,
}

/// A source's warm standby. For a `pgbase://` source: a data directory made
/// from the newest base backup with `standby.signal` and tresor's
/// `restore_command`, which a PostgreSQL server started on it keeps
/// replaying from the WAL archive; `tresor failover` promotes that server.
/// For a path or `pvc://` source: a directory, or an existing claim that a
/// Job in its namespace restores into, and for a `redis://` source a Redis
/// instance, refreshed from each newest snapshot; `tresor failover` makes
/// it current.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Standby {
    /// PostgreSQL: the standby's data directory (made once, when it does not
    /// exist or is empty); a path or `pvc://` source: the directory kept
    /// current, or a claim that exists, `pvc://NAMESPACE/CLAIM?secret=NAME[&cluster=k8s://CONTEXT][&image=IMAGE]`
    /// (the Secret holds the repository's settings, as a volume backup's);
    /// a Redis source: the instance reloaded, `redis://[USER[:PASSWORD]@]HOST[:PORT]`.
    pub target: SecretUrl,
    /// The standby server, asked for its replay position and promoted by
    /// `failover`: `postgres://USER[:PASSWORD]@HOST[:PORT]`.
    pub server: Option<SecretUrl>,
}

impl Standby {
    /// The directory a path standby is; empty for a claim or a Redis
    /// instance, whose record of what it holds is not beside it.
    pub fn directory(&self) -> &Path {
        self.target.as_path().unwrap_or(Path::new(""))
    }
}

/// A `pgbase://` source's WAL archive, as the plan states it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WalArchive {
    /// The cluster's `archive_timeout` (`plan check --connect` asks the
    /// server instead): the longest a commit waits before its segment is archived.
    pub archive_timeout: Option<Span>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Option<Span>,
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Fail,
    Continue,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    pub listen: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// After downtime, run each schedule missed meanwhile once.
    pub catch_up: bool,
    /// First retry delay; doubles with each attempt.
    pub retry_backoff: Span,
    /// Default attempts after a failure.
    pub retries: u32,
    /// The SQLite state (job history, audit trail).
    pub state: Option<PathBuf>,
    /// Files holding the API's bearer tokens.
    pub admin_token_file: Option<PathBuf>,
    pub read_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Run `prune` on this schedule (after `forget`, which follows every
    /// backup); `never` (or null): not at all.
    pub prune_schedule: Option<String>,
    /// Check every repository on this schedule: its structure whole, and
    /// the data of one slice of its packs read and verified; `never` (or
    /// null): not at all.
    pub check_schedule: Option<String>,
    /// Into how many slices the packs are cut: each check moves on to the
    /// next, so every pack is read once every this many checks (1: every
    /// check reads all; each slice is that share of the repository's size,
    /// read from its storage), and reads again the packs the one before
    /// found damaged.
    pub check_slices: u32,
    /// With `--plan-resource`: namespaces (globs) a RestoreRun may restore
    /// into besides its own, the BackupPlan's.
    pub restore_namespaces: Vec<String>,
    /// With `--plan-resource`: which finished BackupRun, RestoreRun and
    /// DrillRun objects the daemon made stay in the cluster.
    pub runs: RunHistory,
}

/// Finished runs kept per source and kind: the newest `keep`, none older than `max_age`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RunHistory {
    /// The newest this many per source and kind (default 50).
    pub keep: u32,
    /// None that ended longer ago (default 30d).
    pub max_age: Span,
}

impl Default for RunHistory {
    fn default() -> Self {
        RunHistory { keep: 50, max_age: Span(Duration::from_secs(30 * 86_400)) }
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            listen: "127.0.0.1:9750".into(),
            concurrency: 2,
            catch_up: true,
            retry_backoff: Span(Duration::from_secs(60)),
            retries: 3,
            state: None,
            admin_token_file: None,
            read_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            prune_schedule: Some("@daily".into()),
            check_schedule: Some("@weekly".into()),
            check_slices: 12,
            restore_namespaces: Vec::new(),
            runs: RunHistory::default(),
        }
    }
}

/// A duration as plans write it: `90s`, `15m` (or `15min`), `2h`, `30d`,
/// `2w`, `6mo` (30 days each), `1y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn parse(text: &str) -> Result<Span, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| format!("cannot read duration {text:?} (use e.g. 90s, 15m, 2h, 30d, 6mo)"))?;
        let secs = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "mo" => 30 * 86_400,
            "y" => 365 * 86_400,
            _ => return Err(format!("cannot read duration {text:?} (use e.g. 90s, 15m, 2h, 30d, 6mo)")),
        };
        // Bounded, so that sums of spans and the times they are added to cannot overflow.
        match n.checked_mul(secs).filter(|&s| s <= MAX_SPAN_SECS) {
            Some(s) => Ok(Span(Duration::from_secs(s))),
            None => Err(format!("duration {text:?} is longer than 1000 years")),
        }
    }

    pub fn secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.secs();
        for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if s >= n && s.is_multiple_of(n) {
                return write!(f, "{}{unit}", s / n);
            }
        }
        write!(f, "{s}s")
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The longest span a plan may write: 1000 years.
const MAX_SPAN_SECS: u64 = 1000 * 365 * 86_400;

/// What [`Span::parse`] reads, for schemas (the BackupPlan CRD): digits and
/// a unit, with the whitespace its `trim` allows around them.
pub(crate) const SPAN_PATTERN: &str = r"^\s*[0-9]+(s|m|min|h|d|w|mo|y)\s*$";

// By hand: serde reads a span from a string the derive cannot see into.
impl JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Span".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": SPAN_PATTERN, "description": "A duration: 90s, 15m (or 15min), 2h, 30d, 2w, 6mo (30 days each), 1y."})
    }
}

impl Plan {
    /// Parse a plan; a syntax or type error names its line.
    pub fn parse(text: &str, file: &Path) -> Result<Plan, Error> {
        serde_norway::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line());
            let msg = e.to_string();
            // The location is ours to print, once, in front.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Error::Plan { file: file.to_path_buf(), line, message: msg }
        })
    }

    pub fn load(file: &Path) -> Result<(Plan, String), Error> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::Plan { file: file.to_path_buf(), line: 0, message: e.to_string() })?;
        Ok((Plan::parse(&text, file)?, text))
    }

    /// When repository `name` is checked: on its own schedule, else on the daemon's.
    pub fn check_schedule(&self, name: &str) -> Option<&str> {
        let own = self.repositories.get(name).and_then(|r| r.check_schedule.as_ref());
        own.map_or(self.daemon.check_schedule.as_deref(), Option::as_deref).filter(|s| *s != NEVER)
    }

    /// When repository `name` is pruned: on its own schedule, else on the daemon's.
    pub fn prune_schedule(&self, name: &str) -> Option<&str> {
        let own = self.repositories.get(name).and_then(|r| r.prune_schedule.as_ref());
        own.map_or(self.daemon.prune_schedule.as_deref(), Option::as_deref).filter(|s| *s != NEVER)
    }

    /// Into how many slices repository `name`'s packs are cut for its checks.
    pub fn check_slices(&self, name: &str) -> u32 {
        self.repositories.get(name).and_then(|r| r.check_slices).unwrap_or(self.daemon.check_slices).max(1)
    }

    /// The repository a source writes to: its own, else the first one that
    /// is no class's off-site copy (which `copy` fills), else the first one.
    pub fn repository_of<'a>(&'a self, s: &'a SourceSpec) -> Option<(&'a str, &'a Repository)> {
        let offsite = |name: &str| self.classes.values().any(|c| c.offsite.as_deref() == Some(name));
        match &s.repository {
            Some(name) => self.repositories.get_key_value(name),
            None => self.repositories.iter().find(|(k, _)| !offsite(k)).or_else(|| self.repositories.iter().next()),
        }
        .map(|(k, v)| (k.as_str(), v))
    }

    pub fn priority(&self, class: &str) -> u32 {
        let Some(c) = self.classes.get(class) else { return 0 };
        // Without an explicit priority, a tighter RPO goes first.
        c.priority.unwrap_or_else(|| (1_000_000 / c.rpo.secs().max(1)).min(u64::from(u32::MAX)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_as_plans_write_them() {
        assert_eq!(Span::parse("15m").unwrap().secs(), 900);
        assert_eq!(Span::parse("15min").unwrap().secs(), 900);
        assert_eq!(Span::parse("2h").unwrap().to_string(), "2h");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Span::parse("36h").unwrap().to_string(), "36h");
        assert_eq!(Span::parse("2x").unwrap_err(), "cannot read duration \"2x\" (use e.g. 90s, 15m, 2h, 30d, 6mo)");
        assert_eq!(Span::parse("6mo").unwrap().secs(), 180 * 86_400);
        // Found by the `plan` fuzzer: the product overflowed (a panic, or a short span in a release build).
        assert_eq!(Span::parse("12222222222222222222h").unwrap_err(), "duration \"12222222222222222222h\" is longer than 1000 years");
        assert_eq!(Span::parse("1001y").unwrap_err(), "duration \"1001y\" is longer than 1000 years");
        assert_eq!(Span::parse("1000y").unwrap().secs(), 1000 * 365 * 86_400);
    }

    #[test]
    fn a_query_meets_every_condition_the_plan_sets() {
        let q = |yaml: &str| serde_norway::from_str::<Query>(&format!("sql: SELECT 1\n{yaml}")).unwrap();
        let point = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(q("min: 3\nequals: \"5\"\n").judge("5", None), Ok("at least 3".into()));
        assert_eq!(q("min: 3\nequals: \"5\"\n").judge("4", None), Err("answered \"4\", not \"5\"".into()));
        assert_eq!(q("min: 3\n").judge("2", None), Err("answered 2, less than the plan's minimum 3".into()));
        assert_eq!(q("min: 3\n").judge("many", None), Err("answered \"many\", not a number".into()));
        let fresh = q("max_age: 1h\n");
        assert_eq!(fresh.judge("2026-11-30 11:30:00+00", Some(point)), Ok("within 1h of the restore point".into()));
        assert_eq!(
            fresh.judge("2026-11-30 10:00:00+00", Some(point)),
            Err("the newest row is 7200s older than the restore point, more than 1h".into())
        );
        assert_eq!(fresh.judge("yesterday", Some(point)), Err("answered \"yesterday\", not a timestamp".into()));
        assert_eq!(q("").judge("anything", None), Ok(String::new()));
        assert_eq!(q("min: 1\nequals: \"1\"\n").contradiction(), None);
        let both = "query \"SELECT 1\" asks for a number (min) and a timestamp (max_age): no answer is both";
        assert_eq!(q("min: 1\nmax_age: 1h\n").contradiction().as_deref(), Some(both));
    }
}
