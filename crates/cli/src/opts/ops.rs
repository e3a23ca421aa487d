//! Command-line syntax of the commands that manage a repository's life
//! (retention, copies, holds), PostgreSQL archives, plans and Kubernetes.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tresor_controller::secret_url::SecretUrl;

use super::{KUBERNETES, OUTPUT, POLICY, PRUNING, SELECTION};

#[derive(Args)]
pub struct ForgetArgs {
    /// Forget these snapshots (ids or prefixes) instead of applying a policy.
    pub snapshots: Vec<String>,
    /// Keep the newest N snapshots.
    #[arg(long, help_heading = POLICY)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, help_heading = POLICY)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, help_heading = POLICY)]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[arg(long, help_heading = POLICY)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, help_heading = POLICY)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, help_heading = POLICY)]
    pub keep_yearly: Option<u32>,
    /// Keep everything up to this much older than the newest snapshot, e.g. 1y6m, 30d, 36h.
    #[arg(long, help_heading = POLICY)]
    pub keep_within: Option<String>,
    /// Keep one snapshot per hour within this span of the newest, e.g. 2d.
    #[arg(long, help_heading = POLICY)]
    pub keep_within_hourly: Option<String>,
    /// Keep one snapshot per day within this span of the newest, e.g. 14d.
    #[arg(long, help_heading = POLICY)]
    pub keep_within_daily: Option<String>,
    /// Keep one snapshot per week within this span of the newest, e.g. 2m.
    #[arg(long, help_heading = POLICY)]
    pub keep_within_weekly: Option<String>,
    /// Keep one snapshot per month within this span of the newest, e.g. 1y.
    #[arg(long, help_heading = POLICY)]
    pub keep_within_monthly: Option<String>,
    /// Keep one snapshot per year within this span of the newest, e.g. 10y.
    #[arg(long, help_heading = POLICY)]
    pub keep_within_yearly: Option<String>,
    /// Keep snapshots with all of these tags (comma-separated; repeatable).
    #[arg(long = "keep-tag", help_heading = POLICY)]
    pub keep_tags: Vec<String>,
    /// Apply the policy per group of: host, paths, tags (comma-separated).
    #[arg(long, default_value = "host,paths", help_heading = POLICY)]
    pub group_by: String,
    /// Print what would be removed and why each survivor stays; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Allow a policy to remove every snapshot of a group.
    #[arg(long)]
    pub allow_empty: bool,
    // Last but for those with their own heading: a flattened group's heading would carry over to the arguments after it.
    #[command(flatten)]
    pub select: super::SelectArgs,
    /// Prune right after forgetting.
    #[arg(long, help_heading = PRUNING)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneArgs,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Snapshots to copy (ids or prefixes); default: every one the filters select.
    pub snapshots: Vec<String>,
    /// The target repository: a path or URL, as --repo takes (S3 credentials from
    /// TRESOR_TO_AWS_*, else AWS_*), e.g. s3://offsite/prod.
    #[arg(long)]
    pub to: SecretUrl,
    /// File holding the target's password (else $TRESOR_TO_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_TO_PASSWORD_FILE", hide_env_values = true)]
    pub to_password_file: Option<PathBuf>,
    /// The target's password itself, from a job's spec: never an argument.
    #[arg(skip)]
    pub to_password: Option<tresor_engine::Password>,
    /// Only the newest N snapshots of each host and path set.
    #[arg(long, help_heading = SELECTION)]
    pub latest: Option<usize>,
    /// Show what would be copied and the replication lag; copy nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Skip reading back the packs written to the target.
    #[arg(long)]
    pub no_verify: bool,
    #[command(flatten)]
    pub select: super::SelectArgs,
}

#[derive(Args)]
pub struct AppendOnlyArgs {
    /// on or off
    pub mode: String,
    /// For `off`: a file with the password again (else $TRESOR_CONFIRM_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_CONFIRM_PASSWORD_FILE", hide_env_values = true)]
    pub confirm_password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct PruneCmd {
    /// Show what would be marked, repacked and freed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub opts: PruneArgs,
}

#[derive(Args, Clone)]
#[command(next_help_heading = PRUNING)]
pub struct PruneArgs {
    /// Repack a pack once more than this percentage of it is unused.
    #[arg(long, default_value_t = 10.0)]
    pub max_unused: f64,
    /// How long marked packs wait, by the storage's clock, before deletion
    /// (for stores whose listings lag behind writes); e.g. 0s, 10min, 1h.
    #[arg(long, default_value = "0s")]
    pub grace: String,
}

#[derive(Args)]
pub struct HoldArgs {
    /// The snapshot: an id, an id prefix or `latest`, e.g. 4f2a9c1e.
    pub snapshot: String,
    /// Why the snapshot must be kept (recorded with who and when).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct PgCmd {
    #[command(subcommand)]
    pub command: PgCommand,
}

#[derive(Subcommand)]
pub enum PgCommand {
    /// Base backup of a cluster: postgres://USER@HOST:PORT (pg_basebackup, streamed).
    Backup(Box<PgBackupArgs>),
    /// Archive a WAL file: `archive_command = 'tresor … pg wal-push %p'`.
    WalPush(WalPushArgs),
    /// Fetch an archived WAL file: `restore_command = 'tresor … pg wal-fetch %f %p'`.
    WalFetch(WalFetchArgs),
    /// Keep the WAL a restored cluster will replay fetched ahead (started by `pg restore`).
    #[command(hide = true)]
    WalPrefetch {
        /// The restored data directory.
        #[arg(long)]
        pgdata: PathBuf,
    },
    /// Build a data directory that recovers to a point in time.
    Restore(PgRestoreArgs),
    /// Report gaps in the archived WAL, per cluster and timeline.
    Verify,
}

#[derive(Args)]
pub struct PgBackupArgs {
    #[command(flatten)]
    pub backup: super::BackupArgs,
}

#[derive(Args)]
pub struct WalPushArgs {
    /// The WAL file (`%p`, relative to the data directory).
    pub path: PathBuf,
    /// The cluster's data directory (default: the working directory, as the archiver runs it).
    #[arg(long)]
    pub pgdata: Option<PathBuf>,
    /// Also archive up to this many other WAL files that are ready, in the same run.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

#[derive(Args)]
pub struct WalFetchArgs {
    /// The WAL file wanted (`%f`), e.g. 000000010000000000000003.
    pub file: String,
    /// Where to put it (`%p`).
    pub dest: PathBuf,
    /// The cluster's data directory (default: the working directory, as recovery runs it).
    #[arg(long)]
    pub pgdata: Option<PathBuf>,
    /// Fetch this many following segments ahead, in parallel.
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
}

#[derive(Args)]
pub struct PgRestoreArgs {
    /// The base backup to start from (default: the newest one that ends
    /// before the target on the target timeline's history; with --name or
    /// --xid the newest: name an older one when the target precedes it).
    pub snapshot: Option<String>,
    /// The new data directory (must not exist or be empty).
    #[arg(short, long)]
    pub target: PathBuf,
    /// Recover up to this moment (RFC 3339 or "YYYY-MM-DD HH:MM:SS" local time).
    #[arg(long, group = "point")]
    pub time: Option<String>,
    /// Recover up to this WAL position (X/Y), e.g. 0/3000148.
    #[arg(long, group = "point")]
    pub lsn: Option<String>,
    /// Recover through all archived WAL.
    #[arg(long, group = "point")]
    pub latest: bool,
    /// Stop as soon as the base backup is consistent.
    #[arg(long, group = "point")]
    pub immediate: bool,
    /// Recover up to this restore point (pg_create_restore_point), e.g. before-upgrade.
    #[arg(long, group = "point", value_parser = restore_point)]
    pub name: Option<String>,
    /// Recover through this transaction's commit (recovery_target_xid), e.g. 7581.
    #[arg(long, group = "point", value_parser = clap::value_parser!(u64).range(3..))]
    pub xid: Option<u64>,
    /// The cluster (its system identifier), when the repository holds several.
    #[arg(long)]
    pub system_id: Option<String>,
    /// The restored cluster archives no WAL (a drill or a copy beside the
    /// running cluster, whose archive it must not branch).
    #[arg(long)]
    pub no_archive: bool,
    /// The timeline recovery follows: latest (the newest the archive holds,
    /// through every promotion archived since the base backup, a test
    /// restore's too if it archived), current (the base backup's), or a
    /// timeline's number.
    #[arg(long, value_name = "TIMELINE", default_value = "latest", value_parser = timeline)]
    pub target_timeline: String,
    /// Keep this many WAL segments fetched ahead of the recovery, by one
    /// process that unlocks the repository once (0: each segment is fetched
    /// when PostgreSQL asks for it).
    #[arg(long, default_value_t = 16)]
    pub prefetch: usize,
}

#[derive(Args)]
pub struct DaemonArgs {
    /// The plan (default: the embedded one under --data-dir).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: Option<PathBuf>,
    /// The plan is a BackupPlan resource, watched: k8s://[CONTEXT]/NAMESPACE/NAME.
    #[arg(long, conflicts_with = "plan", help_heading = KUBERNETES)]
    pub plan_resource: Option<String>,
    /// Where the embedded default keeps its repository, password, state and sample
    /// (and where a BackupPlan resource's plan is written).
    #[arg(long, env = "TRESOR_DATA_DIR", default_value = "tresor-data")]
    pub data_dir: PathBuf,
    /// Listen address (overrides the plan's daemon.listen), e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub listen: Option<String>,
    /// How long running jobs may take to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value = "60s")]
    pub grace: String,
    /// Run jobs only while holding this Lease, k8s://[CONTEXT]/NAMESPACE/NAME (a standby replica waits for it), e.g. k8s://tresor/tresor-leader.
    #[arg(long, env = "TRESOR_LEADER_ELECTION", help_heading = KUBERNETES)]
    pub leader_election: Option<String>,
    /// How long the lease lasts without renewal: a standby takes over this long after the leader stopped renewing.
    #[arg(long, env = "TRESOR_LEASE_DURATION", default_value = "15s", help_heading = KUBERNETES)]
    pub lease_duration: String,
}

#[derive(Args)]
pub struct PlanCmd {
    #[command(subcommand)]
    pub command: PlanCommand,
}

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Parse and lint a plan; exit 1 on any error.
    Check(PlanCheckArgs),
    /// Print the BackupPlan CustomResourceDefinition, its schema generated from the plan's fields.
    Crd,
    /// Print the BackupRun, RestoreRun and DrillRun CustomResourceDefinitions (runs as Kubernetes objects).
    RunCrds,
}

#[derive(Args)]
pub struct PlanCheckArgs {
    /// The plan file (tresor.yaml).
    pub plan: PathBuf,
    /// Also reach every repository and source with its credentials and say
    /// what answered (a doctor); exit 1 on any failure.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Args)]
pub struct JobsArgs {
    /// The daemon's state database.
    #[arg(long, env = "TRESOR_STATE", default_value = "tresor-data/state.db")]
    pub state: PathBuf,
    /// Show at most this many jobs, newest first.
    #[arg(long, default_value_t = 30, help_heading = OUTPUT)]
    pub limit: usize,
    /// Only the jobs of this source of the plan.
    #[arg(long)]
    pub source: Option<String>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// The daemon's state database.
    #[arg(long, env = "TRESOR_STATE", default_value = "tresor-data/state.db")]
    pub state: PathBuf,
    /// Show at most this many entries, newest first.
    #[arg(long, default_value_t = 100, help_heading = OUTPUT)]
    pub limit: usize,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the repository's evidence log (jobs, audit, drills): every entry intact, none missing; exit 1 naming each that is not.
    Verify,
}

#[derive(Args, Default)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub command: Option<DrillCommand>,
    /// A class or a source (default: every source of the plan).
    pub name: Option<String>,
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN", required = true)]
    pub plan: Option<PathBuf>,
    /// Scratch space for restored data (overrides the plan's drills.scratch_dir).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Restore from this copy: a repository of the plan by name, `offsite` (each class's off-site repository), `primary`, or any repository's URL (default: the class's drill.from).
    #[arg(long, value_name = "REPOSITORY")]
    pub from: Option<String>,
    /// The password file of a --from repository given by URL (default: the source's repository's).
    #[arg(long, value_name = "FILE", requires = "from")]
    pub from_password_file: Option<PathBuf>,
    /// Drill a whole application of the plan: its sources into scratch targets, in its order, between its hooks (scale hooks skipped), then its smoke checks; one protocol entry with its RTO end to end.
    #[arg(long, value_name = "APP", conflicts_with_all = ["name", "from"])]
    pub app: Option<String>,
    /// Run as the daemon's drill job, which the daemon audits itself: no
    /// second entry in the name of whoever runs the daemon.
    #[arg(skip)]
    pub for_daemon: bool,
}

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Record a finding and a follow-up for a drill (lessons learned): an entry appended to the evidence log, shown with the drill in reports.
    Annotate(AnnotateArgs),
}

#[derive(Args)]
pub struct AnnotateArgs {
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// The drill: its protocol id (DRILL-…), or a test id of the plan (drill.id, e.g. BT-DR-01) for that test's newest drill.
    pub id: String,
    /// What the drill showed.
    #[arg(long)]
    pub finding: Option<String>,
    /// What is to be done about it, by whom.
    #[arg(long)]
    pub follow_up: Option<String>,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// The period covered, back from now (30d, 12w, 1y).
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// The report's format: Markdown, HTML or JSON.
    #[arg(long, default_value = "md", value_parser = ["md", "html", "json"], help_heading = OUTPUT)]
    pub format: String,
    /// Write to this file instead of standard output.
    #[arg(short, long, help_heading = OUTPUT)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct VolumeCmd {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// A Job that mounts NAMESPACE/CLAIM read-only and runs `tresor backup /data`.
    Backup(VolumeArgs),
    /// A new claim NAMESPACE/CLAIM and a Job that restores SNAPSHOT into it.
    Restore(VolumeRestoreArgs),
}

#[derive(Args)]
pub struct VolumeArgs {
    /// The claims to back up: NAMESPACE/CLAIM, every claim of a namespace (NAMESPACE/*) or of the cluster (*), e.g. shop/data-db-0.
    pub claim: String,
    /// With NAMESPACE/* or *: only claims with these labels, e.g. backup=daily.
    #[arg(long)]
    pub selector: Option<String>,
    /// Back up a clone made from a CSI VolumeSnapshot of this class instead of the live claim.
    #[arg(long)]
    pub csi_snapshot_class: Option<String>,
    /// Tags for the snapshot (default source=pvc:NAMESPACE/CLAIM).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// What the Job serves, labelled on it (default NAMESPACE.CLAIM): an unfinished Job of the same source is adopted, not doubled, e.g. shop-data.
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub job: VolumeJobArgs,
}

#[derive(Args)]
pub struct VolumeRestoreArgs {
    /// The snapshot: an id, an id prefix or `latest`, e.g. 4f2a9c1e.
    pub snapshot: String,
    /// The claim to create: NAMESPACE/CLAIM, e.g. shop/data-restored.
    pub claim: String,
    /// The new claim's size, e.g. 10Gi.
    #[arg(long)]
    pub size: String,
    /// The new claim's StorageClass (default: the cluster's default class).
    #[arg(long)]
    pub storage_class: Option<String>,
    #[command(flatten)]
    pub job: VolumeJobArgs,
}

/// How a volume Job runs.
#[derive(Args, Clone)]
#[command(next_help_heading = KUBERNETES)]
pub struct VolumeJobArgs {
    /// The Secret (in the claim's namespace) with TRESOR_REPOSITORY, TRESOR_PASSWORD and storage credentials.
    #[arg(long)]
    pub secret: String,
    /// The container image the Job runs.
    #[arg(long, default_value = tresor_sources::k8s_pod::DEFAULT_IMAGE)]
    pub image: String,
    /// Wait this long for the Job, e.g. 30min (then, for a CSI backup, remove the clone and the snapshot).
    #[arg(long)]
    pub wait: Option<String>,
    /// The cluster: k8s://[CONTEXT], e.g. k8s://prod.
    #[arg(long, default_value = "k8s://")]
    pub cluster: String,
    /// This run's id, part of the names of what it makes (default: the time), e.g. nightly-42.
    #[arg(long)]
    pub run: Option<String>,
    /// The user the Job's pod runs as (default 10001, the image's user), e.g. 999.
    #[arg(long)]
    pub run_as_user: Option<i64>,
    /// The group the Job's pod runs as (default: the user's id), e.g. 999.
    #[arg(long)]
    pub run_as_group: Option<i64>,
    /// The group that owns the volume's files for the pod (fsGroup; default: the user's id), e.g. 999.
    #[arg(long)]
    pub fs_group: Option<i64>,
    /// Run the Job on nodes with this label, KEY=VALUE; repeatable, e.g. disktype=ssd.
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// Resources and tolerations come from a plan source's `pod:`.
    #[arg(skip)]
    pub pod: tresor_sources::k8s_pod::PodSettings,
}

#[derive(Args)]
pub struct JobCmd {
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Run the job whose spec is on standard input.
    Run,
}

/// `latest`, `current` or a timeline's number, as PostgreSQL takes them.
fn timeline(text: &str) -> Result<String, String> {
    match text {
        "latest" | "current" => Ok(text.into()),
        n if n.parse::<u32>().is_ok_and(|n| n > 0) => Ok(n.into()),
        _ => Err("give latest, current or a timeline's number (1 or more)".into()),
    }
}

/// A restore point's name as pg_create_restore_point takes it: not empty,
/// at most 63 bytes (longer, no restore point of that name can exist).
fn restore_point(text: &str) -> Result<String, String> {
    match text.len() {
        1..=63 => Ok(text.into()),
        _ => Err("give a restore point's name, 1 to 63 bytes long, as pg_create_restore_point made it".into()),
    }
}
