//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tresor", version, about = "Deduplicating, encrypted backup and disaster recovery")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Repository: a path or s3://bucket/prefix (also azblob://, gcs://, webdav://, sftp://).
    #[arg(short = 'r', long = "repo", env = "TRESOR_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (else $TRESOR_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not use the local cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Where the local cache lives.
    #[arg(long, env = "TRESOR_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Log more.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Inject storage faults, e.g. error-rate=0.1,seed=7,write-limit=1000000 (testing).
    #[arg(long, env = "TRESOR_FAULTS", global = true, hide = true)]
    pub faults: Option<String>,
    /// Upload limit in bytes per second (suffixes K, M, G for KiB, MiB, GiB).
    #[arg(long, env = "TRESOR_LIMIT_UPLOAD", global = true)]
    pub limit_upload: Option<String>,
    /// Download limit in bytes per second (suffixes K, M, G).
    #[arg(long, env = "TRESOR_LIMIT_DOWNLOAD", global = true)]
    pub limit_download: Option<String>,
    /// Argon2id memory in KiB for new keys (lower only for tests).
    #[arg(long, env = "TRESOR_KDF_MEMORY_KIB", global = true, hide = true)]
    pub kdf_memory_kib: Option<u32>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up files, directories or standard input.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot.
    Ls(LsArgs),
    /// Restore a snapshot.
    Restore(RestoreArgs),
    /// Write one file of a snapshot to standard output.
    Dump(DumpArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Repository and snapshot statistics.
    Stats(StatsArgs),
    /// Verify the repository.
    Check(CheckArgs),
    /// Rebuild derived data: `repair index` re-reads every pack trailer.
    Repair(RepairArgs),
    /// Manage the passwords (key slots) of a repository.
    Key(KeyArgs),
    /// Remove snapshots by a retention policy or by id (held ones never).
    Forget(ForgetArgs),
    /// Copy snapshots to another repository (off-site), only what it lacks.
    Copy(CopyArgs),
    /// Switch append-only mode: `on`, or `off` with the password given twice.
    AppendOnly(AppendOnlyArgs),
    /// Delete data no snapshot needs; backups may keep running meanwhile.
    Prune(PruneCmd),
    /// Place a legal hold on a snapshot: it is never forgotten or pruned.
    Hold(HoldArgs),
    /// Release the holds on a snapshot.
    Release(HoldArgs),
    /// List legal holds.
    Holds,
    /// Show tresor working: init a local repository, back up, list, restore.
    Demo(DemoArgs),
    /// PostgreSQL point-in-time recovery: base backups, WAL archive, restore to a moment.
    Pg(PgCmd),
    /// Run the backup plan: schedules, retries, HTTP API, metrics, status page.
    Daemon(DaemonArgs),
    /// Check a backup plan: syntax, references and contradictions, by line.
    Plan(PlanCmd),
    /// The daemon's job history.
    Jobs(JobsArgs),
    /// The daemon's audit trail: who did what, when, with what result.
    Audit(AuditArgs),
    /// Restore drills: restore, validate and time the newest backup of each source.
    Drill(DrillArgs),
    /// Compliance report: RPO/RTO targets against measurements, success rates, the drill protocol.
    Report(ReportArgs),
    /// Kubernetes volumes: back a claim up, or restore into a new one, through a Job in the cluster.
    Volume(VolumeCmd),
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
    /// NAMESPACE/CLAIM
    pub claim: String,
    /// Back up a clone made from a CSI VolumeSnapshot of this class instead of the live claim.
    #[arg(long)]
    pub csi_snapshot_class: Option<String>,
    /// Tags for the snapshot (default source=pvc:NAMESPACE/CLAIM).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub job: VolumeJobArgs,
}

#[derive(Args)]
pub struct VolumeRestoreArgs {
    pub snapshot: String,
    /// NAMESPACE/CLAIM to create.
    pub claim: String,
    /// The new claim's size, e.g. 10Gi.
    #[arg(long)]
    pub size: String,
    #[arg(long)]
    pub storage_class: Option<String>,
    #[command(flatten)]
    pub job: VolumeJobArgs,
}

/// How a volume Job runs.
#[derive(Args)]
pub struct VolumeJobArgs {
    /// The Secret (in the claim's namespace) with TRESOR_REPOSITORY, TRESOR_PASSWORD and storage credentials.
    #[arg(long)]
    pub secret: String,
    #[arg(long, default_value = "ghcr.io/tresor/tresor:0.1.0")]
    pub image: String,
    /// Wait this long for the Job (then, for a CSI backup, remove the clone and the snapshot).
    #[arg(long)]
    pub wait: Option<String>,
    /// The cluster: k8s://[CONTEXT].
    #[arg(long, default_value = "k8s://")]
    pub cluster: String,
}

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// The period covered, back from now (30d, 12w, 1y).
    #[arg(long, default_value = "30d")]
    pub since: String,
    #[arg(long, default_value = "md", value_parser = ["md", "html", "json"])]
    pub format: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct DrillArgs {
    /// A class or a source (default: every source of the plan).
    pub name: Option<String>,
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// Scratch space for restored data (overrides the plan's drills.scratch_dir).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

#[derive(Args)]
pub struct DaemonArgs {
    /// The plan (default: the embedded one under --data-dir).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: Option<PathBuf>,
    /// The plan is a BackupPlan resource, watched: k8s://[CONTEXT]/NAMESPACE/NAME.
    #[arg(long, conflicts_with = "plan")]
    pub plan_resource: Option<String>,
    /// Where the embedded default keeps its repository, password, state and sample
    /// (and where a BackupPlan resource's plan is written).
    #[arg(long, env = "TRESOR_DATA_DIR", default_value = "tresor-data")]
    pub data_dir: PathBuf,
    /// Listen address (overrides the plan's daemon.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// How long running jobs may take to finish after SIGTERM before they are cancelled.
    #[arg(long, default_value = "60s")]
    pub grace: String,
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
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
    #[arg(long)]
    pub source: Option<String>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long, env = "TRESOR_STATE", default_value = "tresor-data/state.db")]
    pub state: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args)]
pub struct PgCmd {
    #[command(subcommand)]
    pub command: PgCommand,
}

#[derive(Subcommand)]
pub enum PgCommand {
    /// Base backup of a cluster: postgres://USER@HOST:PORT (pg_basebackup, streamed).
    Backup(Box<BackupArgs>),
    /// Archive a WAL file: `archive_command = 'tresor … pg wal-push %p'`.
    WalPush(WalPushArgs),
    /// Fetch an archived WAL file: `restore_command = 'tresor … pg wal-fetch %f %p'`.
    WalFetch(WalFetchArgs),
    /// Build a data directory that recovers to a point in time.
    Restore(PgRestoreArgs),
    /// Report gaps in the archived WAL, per cluster and timeline.
    Verify,
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
    /// The WAL file wanted (`%f`).
    pub file: String,
    /// Where to put it (`%p`).
    pub dest: PathBuf,
    #[arg(long)]
    pub pgdata: Option<PathBuf>,
    /// Fetch this many following segments ahead, in parallel.
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
}

#[derive(Args)]
pub struct PgRestoreArgs {
    /// The base backup to start from (default: the newest one that ends before the target).
    pub snapshot: Option<String>,
    /// The new data directory (must not exist or be empty).
    #[arg(short, long)]
    pub target: PathBuf,
    /// Recover up to this moment (RFC 3339 or "YYYY-MM-DD HH:MM:SS" local time).
    #[arg(long, group = "point")]
    pub time: Option<String>,
    /// Recover up to this WAL position (X/Y).
    #[arg(long, group = "point")]
    pub lsn: Option<String>,
    /// Recover through all archived WAL.
    #[arg(long, group = "point")]
    pub latest: bool,
    /// Stop as soon as the base backup is consistent.
    #[arg(long, group = "point")]
    pub immediate: bool,
    /// The cluster, when the repository holds several.
    #[arg(long)]
    pub system_id: Option<String>,
    /// The restored cluster archives no WAL (a drill or a copy beside the
    /// running cluster, whose archive it must not branch).
    #[arg(long)]
    pub no_archive: bool,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// Forget these snapshots (ids or prefixes) instead of applying a policy.
    pub snapshots: Vec<String>,
    #[arg(long)]
    pub keep_last: Option<u32>,
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    #[arg(long)]
    pub keep_daily: Option<u32>,
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep everything up to this much older than the newest snapshot, e.g. 1y6m, 30d, 36h.
    #[arg(long)]
    pub keep_within: Option<String>,
    #[arg(long)]
    pub keep_within_hourly: Option<String>,
    #[arg(long)]
    pub keep_within_daily: Option<String>,
    #[arg(long)]
    pub keep_within_weekly: Option<String>,
    #[arg(long)]
    pub keep_within_monthly: Option<String>,
    #[arg(long)]
    pub keep_within_yearly: Option<String>,
    /// Keep snapshots with all of these tags (comma-separated; repeatable).
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Apply the policy per group of: host, paths, tags.
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Only consider snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only consider snapshots with this tag.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Print what would be removed and why each survivor stays; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Allow a policy to remove every snapshot of a group.
    #[arg(long)]
    pub allow_empty: bool,
    /// Prune right after forgetting.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneArgs,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Snapshots to copy (ids or prefixes); default: every one the filters select.
    pub snapshots: Vec<String>,
    /// The target repository (a path or URL; S3 credentials from TRESOR_TO_AWS_*,
    /// else AWS_*).
    #[arg(long)]
    pub to: String,
    /// File holding the target's password (else $TRESOR_TO_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only the newest N snapshots of each host and path set.
    #[arg(long)]
    pub latest: Option<usize>,
    /// Show what would be copied and the replication lag; copy nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Skip reading back the packs written to the target.
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Args)]
pub struct AppendOnlyArgs {
    /// on or off
    pub mode: String,
    /// For `off`: a file with the password again (else $TRESOR_CONFIRM_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_CONFIRM_PASSWORD_FILE")]
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
    pub snapshot: String,
    /// Why the snapshot must be kept (recorded with who and when).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct InitArgs {
    /// zstd level for new data, 0 to store uncompressed.
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// aes-256-gcm or xchacha20-poly1305.
    #[arg(long, default_value = "aes-256-gcm")]
    pub aead: String,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// Never delete or overwrite anything (forget and prune are refused)
    /// until `tresor append-only off`, which asks for the password twice.
    #[arg(long)]
    pub append_only: bool,
    /// The bucket's S3 Object Lock retention (e.g. 30d): prune leaves
    /// objects younger than this for a later run.
    #[arg(long)]
    pub object_lock: Option<String>,
    /// Seconds without a heartbeat after which a writer is presumed dead.
    #[arg(long, hide = true)]
    pub session_timeout: Option<u64>,
}

#[derive(Args)]
pub struct BackupArgs {
    pub paths: Vec<PathBuf>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    #[arg(long)]
    pub host: Option<String>,
    /// Exclude paths matching this glob (repeatable).
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Read exclude globs from a file, one per line.
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Do not cross filesystem boundaries.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Run this command (sh -c) before the backup: quiesce, flush, fsfreeze.
    #[arg(long)]
    pub pre_hook: Option<String>,
    /// Run this command after the backup, whatever its outcome
    /// ($TRESOR_BACKUP_STATUS is success or failure, $TRESOR_SNAPSHOT_ID set on success).
    #[arg(long)]
    pub post_hook: Option<String>,
    /// Time limit for each hook; a hook that overruns is killed.
    #[arg(long, default_value = "5min")]
    pub hook_timeout: String,
    /// What a failing hook means: fail (no backup after a failed pre-hook,
    /// exit 1 after a failed post-hook) or continue (a warning).
    #[arg(long, default_value = "fail", value_parser = ["fail", "continue"])]
    pub on_error: String,
    /// Threads that read, chunk, compress and encrypt (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Read the data to back up from standard input.
    #[arg(long)]
    pub stdin: bool,
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// Use this snapshot as parent instead of the latest matching one.
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Record the snapshot at this time (RFC 3339 or "YYYY-MM-DD HH:MM:SS").
    #[arg(long)]
    pub time: Option<String>,
    #[command(flatten)]
    pub k8s: K8sFilterArgs,
}

/// Which Kubernetes objects a `k8s://` backup or restore takes.
#[derive(Args, Clone, Default)]
pub struct K8sFilterArgs {
    /// k8s://: only these namespaces (globs, comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    /// k8s://: not these namespaces (globs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// k8s://: only these resources (deployments, cm, widgets.example.com; `*` for all).
    #[arg(long, value_delimiter = ',')]
    pub include_resources: Vec<String>,
    /// k8s://: not these resources.
    #[arg(long, value_delimiter = ',')]
    pub exclude_resources: Vec<String>,
    /// k8s://: only objects with these labels (a label selector, e.g. app=shop,tier!=db).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// k8s://: cluster-scoped objects too (default: only when no namespace is named).
    #[arg(long)]
    pub include_cluster_resources: Option<bool>,
}

impl K8sFilterArgs {
    pub fn filters(&self) -> tresor_sources::k8s::Filters {
        tresor_sources::k8s::Filters {
            include_namespaces: self.include_namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            include_resources: self.include_resources.clone(),
            exclude_resources: self.exclude_resources.clone(),
            selector: self.selector.clone(),
            include_cluster_resources: self.include_cluster_resources,
        }
    }
}

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Also list WAL files and other named pieces of continuous archives.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    pub snapshot: String,
    pub path: Option<String>,
    /// Long listing with mode, size and time.
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(short, long, required_unless_present = "to")]
    pub target: Option<PathBuf>,
    /// Restore a data-source snapshot into a service instead: redis://HOST:PORT
    /// (a running instance) or command:COMMAND (the data on its standard input).
    #[arg(long, conflicts_with = "target")]
    pub to: Option<String>,
    /// With --to: allow replacing what the target holds.
    #[arg(long, requires = "to")]
    pub flush: bool,
    /// With --target: read every restored file back and check it against the snapshot's content hashes.
    #[arg(long, conflicts_with = "to")]
    pub verify: bool,
    /// With --target: restore nothing, only check what is there against the snapshot.
    #[arg(long, conflicts_with_all = ["to", "verify"])]
    pub verify_only: bool,
    /// With --to k8s://: OLD:NEW, restore namespace OLD's objects into NEW (repeatable).
    #[arg(long, requires = "to")]
    pub namespace_mapping: Vec<String>,
    /// With --to k8s://: what to do with objects that exist: skip (and say so) or update.
    #[arg(long, requires = "to", default_value = "skip", value_parser = ["skip", "update"])]
    pub existing: String,
    /// With --to k8s://: print what would be done, change nothing.
    #[arg(long, requires = "to")]
    pub dry_run: bool,
    /// With --to k8s://: send every object as a server-side dry run (validated and admitted, not
    /// stored), into namespaces created for it and removed after: a drill.
    #[arg(long, requires = "to", conflicts_with = "dry_run")]
    pub server_dry_run: bool,
    #[command(flatten)]
    pub k8s: K8sFilterArgs,
    /// With --to postgres://: restore with this many parallel jobs (pg_restore --jobs).
    #[arg(long, requires = "to", default_value_t = 1)]
    pub jobs: usize,
    #[arg(short = 'i', long = "include")]
    pub includes: Vec<String>,
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
}

#[derive(Args)]
pub struct DumpArgs {
    pub snapshot: String,
    pub path: String,
}

#[derive(Args)]
pub struct DiffArgs {
    pub a: String,
    pub b: String,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Restricts file statistics to this snapshot.
    pub snapshot: Option<String>,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Read and verify all data.
    #[arg(long)]
    pub read_data: bool,
    /// Read and verify this share of the packs, e.g. 10%.
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairWhat,
}

#[derive(Subcommand)]
pub enum RepairWhat {
    /// Rebuild the index from the packs alone.
    Index {
        /// Report what would be indexed; write nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
    /// Save copies of damaged snapshots without the files that cannot be
    /// restored, and list exactly what was lost.
    Snapshots {
        /// Report what would be lost; write nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Remove each damaged snapshot once its repaired copy is saved.
        #[arg(long)]
        forget: bool,
        /// Read all data first, so damaged blobs count too, not only missing ones.
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Add a password.
    Add(NewPassword),
    /// List key slots.
    List,
    /// Remove a key slot (not the one in use, not the last).
    Remove { id: String },
    /// Replace the password in use with a new one.
    Passwd(NewPassword),
}

#[derive(Args)]
pub struct NewPassword {
    /// File holding the new password (else $TRESOR_NEW_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
    /// A label for the key, e.g. who holds it.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo keeps its repository, password file and data.
    #[arg(long, default_value = "tresor-demo")]
    pub dir: PathBuf,
    /// The folder to back up (default: a generated sample).
    #[arg(long)]
    pub source: Option<PathBuf>,
}
