//! Command-line syntax. Every argument says what it does: the help, the man
//! pages and the shell completions are all generated from these definitions.

mod app;
mod dr;
mod ops;
mod standby;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tresor_controller::secret_url::SecretUrl;

pub use app::*;
pub use dr::*;
pub use ops::*;
pub use standby::*;

/// Help sections, shared so that every command groups the same way.
pub(crate) const REPOSITORY: &str = "Repository";
pub(crate) const OUTPUT: &str = "Output";
pub(crate) const SELECTION: &str = "Snapshot selection";
pub(crate) const TARGET: &str = "Target";
pub(crate) const FILTERS: &str = "Filters";
pub(crate) const KUBERNETES: &str = "Kubernetes";
pub(crate) const SERVICES: &str = "Services";
pub(crate) const HOOKS: &str = "Hooks";
pub(crate) const POLICY: &str = "Retention policy";
pub(crate) const PRUNING: &str = "Pruning";

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
    /// Repository: a path or a URL, e.g. /srv/backup or s3://backups/prod
    ///
    /// Forms: a local path (/srv/backup), s3://BUCKET/PREFIX[?endpoint=URL&region=R],
    /// azblob://CONTAINER/PREFIX, gcs://BUCKET/PREFIX, webdav://HOST/PATH (webdavs:// for TLS),
    /// sftp://[USER@]HOST[:PORT]/PATH.
    #[arg(short = 'r', long = "repo", env = "TRESOR_REPOSITORY", hide_env_values = true, global = true, help_heading = REPOSITORY)]
    pub repo: Option<SecretUrl>,
    /// File holding the repository password (else $TRESOR_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_PASSWORD_FILE", hide_env_values = true, global = true, help_heading = REPOSITORY)]
    pub password_file: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true, help_heading = OUTPUT)]
    pub json: bool,
    /// Do not use the local cache of index and tree data.
    #[arg(long, global = true, help_heading = REPOSITORY)]
    pub no_cache: bool,
    /// Where the local cache lives (default: $XDG_CACHE_HOME/tresor or ~/.cache/tresor).
    #[arg(long, env = "TRESOR_CACHE_DIR", global = true, help_heading = REPOSITORY)]
    pub cache_dir: Option<PathBuf>,
    /// Log more (to standard error).
    #[arg(short, long, global = true, help_heading = OUTPUT)]
    pub verbose: bool,
    /// No progress display.
    #[arg(short, long, global = true, help_heading = OUTPUT)]
    pub quiet: bool,
    /// Inject storage faults, e.g. error-rate=0.1,seed=7,write-limit=1000000 (testing).
    #[arg(long, env = "TRESOR_FAULTS", global = true, hide = true)]
    pub faults: Option<String>,
    /// Upload limit in bytes per second, e.g. 500K or 10M (suffixes K, M, G for KiB, MiB, GiB).
    #[arg(long, env = "TRESOR_LIMIT_UPLOAD", global = true, help_heading = REPOSITORY)]
    pub limit_upload: Option<String>,
    /// Download limit in bytes per second, e.g. 500K or 10M (suffixes K, M, G).
    #[arg(long, env = "TRESOR_LIMIT_DOWNLOAD", global = true, help_heading = REPOSITORY)]
    pub limit_download: Option<String>,
    /// How long any storage call may wait for an answer, retries included, e.g. 30s or 2m (default 60s).
    #[arg(long, env = "TRESOR_STORAGE_TIMEOUT", global = true, help_heading = REPOSITORY)]
    pub storage_timeout: Option<String>,
    /// Memory a command may use, e.g. 512M or 4G (suffixes K, M, G): one whose repository index would not fit stops before it starts.
    #[arg(long, env = "TRESOR_MAX_MEMORY", global = true, help_heading = REPOSITORY)]
    pub max_memory: Option<String>,
    /// Memory the password's key derivation (Argon2id) takes in keys this command writes (init, key add, key passwd), from 1M to 1G, e.g. 16M (default 64M): less memory, more passes for the same unlock time, weaker against guessing on GPUs.
    #[arg(long, env = "TRESOR_KDF_MEMORY", global = true, help_heading = REPOSITORY)]
    pub kdf_memory: Option<String>,
    /// The repository password itself, from a job's spec: never an argument.
    #[arg(skip)]
    pub password: Option<tresor_engine::Password>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up files, directories, standard input or a data source.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the files of a snapshot.
    Ls(LsArgs),
    /// Restore a snapshot into a directory or a running service.
    Restore(RestoreArgs),
    /// Restore an application of the plan as of a moment: its sources in order, between its hooks, then its smoke checks.
    RestoreApp(RestoreAppArgs),
    /// Write one file of a snapshot to standard output.
    Dump(DumpArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Find the files and directories matching patterns in every snapshot.
    Find(FindArgs),
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
    /// Disaster recovery: rehearse bringing the whole plan back from the off-site copy.
    Dr(DrCmd),
    /// Warm standbys: make a source's standby from its newest backup, show each standby's lag.
    Standby(StandbyCmd),
    /// Promote a source's warm standby (PostgreSQL: pg_promote once it has replayed the archive); recorded like a drill.
    Failover(FailoverArgs),
    /// Kubernetes volumes: back a claim up, or restore into a new one, through a Job in the cluster.
    Volume(VolumeCmd),
    /// Print a shell completion script, e.g. `tresor completion bash > /etc/bash_completion.d/tresor`.
    Completion(CompletionArgs),
    /// Write man pages for tresor and every subcommand into a directory.
    Man(ManArgs),
    /// The daemon's job protocol: `job run` reads a job spec (JSON) on
    /// standard input and writes its result (JSON) as the last line of
    /// standard output.
    #[command(hide = true)]
    Job(JobCmd),
    /// Benchmarks only (bench/index.py): add synthetic blobs to the
    /// repository and a snapshot tagged `synthetic` that reaches them all.
    #[command(hide = true)]
    Synth(SynthArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// How many 16-byte data blobs to write.
    #[arg(long)]
    pub blobs: u64,
    /// Data blobs to a pack (the default 16 MiB packs of 1 MiB chunks hold about 16).
    #[arg(long, default_value_t = tresor_engine::synth::BLOBS_PER_PACK)]
    pub blobs_per_pack: usize,
}

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell the script is for.
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Where to write tresor.1, tresor-restore.1, …, e.g. /usr/local/share/man/man1.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct InitArgs {
    /// zstd level for new data, 0 to store uncompressed.
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// The cipher: aes-256-gcm or xchacha20-poly1305.
    #[arg(long, default_value = "aes-256-gcm")]
    pub aead: String,
    /// Target pack size in MiB, 4 to 512.
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
    /// What to back up: paths, or one data-source URL
    ///
    /// Forms, each with an example:
    ///   PATH…                                    /home /etc
    ///   redis://[USER[:PASSWORD]@]HOST[:PORT]    redis://cache:6379
    ///   rediss://[USER[:PASSWORD]@]HOST[:PORT]   rediss://redis.prod:6380
    ///   redis-aof:DIR                            redis-aof:/var/lib/redis/appendonlydir
    ///   postgres://USER@HOST[:PORT]/DB           postgres://backup@db:5432/shop
    ///   postgres://USER@HOST[:PORT]              postgres://backup@db:5432
    ///   pgbase://USER@HOST[:PORT]                pgbase://backup@db:5432
    ///   etcd://HOST:PORT[,HOST:PORT…][?cacert=…] etcd://10.0.0.2:2379,10.0.0.3:2379
    ///   k8s://[CONTEXT]                          k8s://prod
    ///   bucket+s3://BUCKET[/PREFIX][?endpoint=…]  bucket+s3://harbor/docker?region=eu-west-1
    ///   bucket+azblob://CONTAINER[/PREFIX]       bucket+azblob://uploads
    ///   bucket+gcs://BUCKET[/PREFIX]             bucket+gcs://gitlab-artifacts
    ///   command:COMMAND                          "command:mariadb-dump --all-databases"
    ///
    /// redis:// and rediss:// (TLS; TRESOR_REDIS_CACERT, _CERT, _KEY) take an RDB over the
    /// replication protocol; redis-aof: a Redis 7 AOF directory. postgres:// with a database
    /// runs pg_dump; without one, pg_dumpall --globals-only (roles and tablespaces); pgbase://
    /// a base backup (see `tresor pg backup`). etcd:// takes a snapshot from the first member that answers (TLS: cacert, cert, key in the URL or TRESOR_ETCD_CACERT, _CERT, _KEY). k8s://
    /// takes the cluster's objects as YAML (see the Kubernetes options). bucket+ takes a
    /// bucket's objects under the prefix as files with their metadata, downloading only what
    /// changed since the last backup (credentials: TRESOR_SOURCE_AWS_ACCESS_KEY_ID and the
    /// like, else the usual variables). command: runs a program (sh -c) and backs up its
    /// standard output.
    #[arg(verbatim_doc_comment)]
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot, e.g. --tag daily (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Exclude paths matching this glob, e.g. '*.tmp' (repeatable).
    #[arg(short = 'e', long = "exclude", help_heading = FILTERS)]
    pub excludes: Vec<String>,
    /// Read exclude globs from a file, one per line.
    #[arg(long, help_heading = FILTERS)]
    pub exclude_file: Vec<PathBuf>,
    /// Do not cross filesystem boundaries.
    #[arg(short = 'x', long, help_heading = FILTERS)]
    pub one_file_system: bool,
    /// Run this command (sh -c) before the backup: quiesce, flush, fsfreeze.
    #[arg(long, help_heading = HOOKS)]
    pub pre_hook: Option<String>,
    /// Run this command after the backup, whatever its outcome
    /// ($TRESOR_BACKUP_STATUS is success or failure, $TRESOR_SNAPSHOT_ID set on success).
    #[arg(long, help_heading = HOOKS)]
    pub post_hook: Option<String>,
    /// Time limit for each hook, e.g. 2min; a hook that overruns is killed.
    #[arg(long, default_value = "5min", help_heading = HOOKS)]
    pub hook_timeout: String,
    /// What a failing hook means: fail (no backup after a failed pre-hook,
    /// exit 1 after a failed post-hook) or continue (a warning).
    #[arg(long, default_value = "fail", value_parser = ["fail", "continue"], help_heading = HOOKS)]
    pub on_error: String,
    /// Threads that read, chunk, compress and encrypt (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Read the data to back up from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// The file name standard input (or a data source's stream) is stored under, e.g. vault.snap.
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
    /// With a pgbase:// source (and `pg backup`): how long to wait, once the
    /// base backup is saved, for the WAL segment holding its end to reach
    /// the repository (through archive_command); without it the backup
    /// fails (exit 1), its snapshot kept. No wait when the cluster's
    /// archive_mode is off; 0: no check, for a cluster that archives no WAL
    /// into this repository (its base backups restore on their own).
    #[arg(long, default_value = "60s")]
    pub archive_timeout: String,
    #[command(flatten)]
    pub k8s: K8sFilterArgs,
}

/// Which Kubernetes objects a `k8s://` backup or restore takes.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = KUBERNETES)]
pub struct K8sFilterArgs {
    /// k8s://: only these namespaces (globs, comma-separated or repeated), e.g. 'shop,shop-*'.
    #[arg(long, value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    /// k8s://: not these namespaces (globs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// k8s://: only these resources (deployments, cm, widgets.example.com; `*` for all).
    #[arg(long, value_delimiter = ',')]
    pub include_resources: Vec<String>,
    /// k8s://: not these resources, e.g. events,secrets.
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

/// restic's snapshot filters; `latest` means the newest snapshot they pass.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = SELECTION)]
pub struct SelectArgs {
    /// Only snapshots of this host, e.g. w1 (repeatable: any of them).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Only snapshots with these tags: `--tag a,b` both, `--tag a --tag b` either.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots taken of this path, e.g. /srv/www (repeatable: all of them).
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

impl SelectArgs {
    pub fn filter(&self) -> tresor_engine::select::SnapshotFilter {
        tresor_engine::select::SnapshotFilter { hosts: self.hosts.clone(), tags: self.tags.clone(), paths: self.paths.clone() }
    }
}

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Also list WAL files and other named pieces of continuous archives.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only the newest N snapshots of each host and path set (in each group).
    #[arg(long, help_heading = SELECTION)]
    pub latest: Option<usize>,
    /// Group by any of host, paths, tags (comma-separated), e.g. host,paths.
    #[arg(short = 'g', long, help_heading = OUTPUT)]
    pub group_by: Option<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// The snapshot: an id, an id prefix or `latest`, with :PATH for a folder in it, e.g. latest:/srv/www.
    pub snapshot: String,
    /// List only below this directory of the snapshot, e.g. /home/alice.
    pub path: Option<String>,
    /// Long listing with mode, size and time.
    #[arg(short, long, help_heading = OUTPUT)]
    pub long: bool,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot: an id, an id prefix or `latest`, with :PATH for a folder in it, e.g. latest:/srv/www.
    pub snapshot: String,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Directory to restore into, e.g. /tmp/restore.
    #[arg(short, long, required_unless_present = "to", help_heading = TARGET)]
    pub target: Option<PathBuf>,
    /// Restore a data-source snapshot into a service instead of a directory
    ///
    /// Forms, each with an example:
    ///   redis://[USER[:PASSWORD]@]HOST[:PORT]    redis://127.0.0.1:6379
    ///   postgres://USER@HOST[:PORT]/DB           postgres://postgres@db:5432/shop_copy
    ///   postgres://USER@HOST[:PORT]              postgres://postgres@db:5432
    ///   etcd-data:DIR[?SETTING=VALUE&…]          "etcd-data:/var/lib/etcd?name=m1"
    ///   k8s://[CONTEXT]                          k8s://prod
    ///   bucket+s3://BUCKET[/PREFIX][?endpoint=…]  bucket+s3://harbor-restored
    ///   command:COMMAND                          "command:mariadb shop"
    ///
    /// redis:// makes a running instance load the snapshot's RDB. postgres:// with a database
    /// runs pg_restore (creating the database when missing); without one it restores the
    /// cluster's roles and tablespaces. etcd-data: builds a new member's data directory
    /// (settings: name, initial-cluster, initial-cluster-token, initial-advertise-peer-urls).
    /// k8s:// applies the objects of a k8s:// snapshot. bucket+s3://, bucket+azblob:// and
    /// bucket+gcs:// write a bucket snapshot's files back as objects with their metadata
    /// (--include/--exclude: key prefixes or globs; refused onto objects unless --flush, which
    /// deletes them first). command: runs a program (sh -c) with the data on its standard input.
    #[arg(long, conflicts_with = "target", verbatim_doc_comment, help_heading = TARGET)]
    pub to: Option<SecretUrl>,
    /// With --target: read every restored file back and check it against the snapshot's content hashes.
    #[arg(long, conflicts_with = "to", help_heading = TARGET)]
    pub verify: bool,
    /// With --target: restore nothing, only check what is there against the snapshot.
    #[arg(long, conflicts_with_all = ["to", "verify"], help_heading = TARGET)]
    pub verify_only: bool,
    /// With --target: what to do with a file that exists: always replace it, only if-changed
    /// (its content differs; resumes a killed restore), only if-newer (the snapshot's is newer), or never.
    #[arg(long, default_value = "always", value_parser = ["always", "if-changed", "if-newer", "never"], conflicts_with = "to", help_heading = TARGET)]
    pub overwrite: String,
    /// With --target: remove files in the target that are not in the snapshot (within what is restored).
    #[arg(long, conflicts_with = "to", help_heading = TARGET)]
    pub delete: bool,
    /// Say what the restore would change, change nothing: files added, changed (as --overwrite
    /// allows), (with --delete) removed in --target, and what stands in its way; with --to k8s://
    /// each object created, updated or skipped and why.
    #[arg(long, conflicts_with_all = ["verify", "verify_only"], help_heading = TARGET)]
    pub preview: bool,
    /// Restore only paths matching this glob and what is below them, e.g. '/home/*/docs' (repeatable).
    #[arg(short = 'i', long = "include", help_heading = FILTERS)]
    pub includes: Vec<String>,
    /// Leave out paths matching this glob, e.g. '*.log' (repeatable).
    #[arg(short = 'e', long = "exclude", help_heading = FILTERS)]
    pub excludes: Vec<String>,
    /// With --to: allow replacing what the target holds.
    #[arg(long, requires = "to", help_heading = SERVICES)]
    pub flush: bool,
    /// With --to postgres://: restore with this many parallel jobs (pg_restore --jobs); with
    /// --to bucket+…: objects written at once (default 8).
    #[arg(long, requires = "to", default_value_t = 1, help_heading = SERVICES)]
    pub jobs: usize,
    /// With --to k8s://: OLD:NEW, restore namespace OLD's objects into NEW (repeatable, or
    /// several separated by commas, as Velero's --namespace-mappings takes them).
    #[arg(long, requires = "to", visible_alias = "namespace-mappings", value_delimiter = ',', help_heading = KUBERNETES)]
    pub namespace_mapping: Vec<String>,
    /// With --to k8s://: what to do with objects that exist: skip (and say so) or update.
    #[arg(long, requires = "to", default_value = "skip", value_parser = ["skip", "update"], help_heading = KUBERNETES)]
    pub existing: String,
    /// Print what would be done, change nothing: with --to k8s:// each object's fate, elsewhere the preview.
    #[arg(long, help_heading = KUBERNETES)]
    pub dry_run: bool,
    /// With --to k8s://: send every object as a server-side dry run (validated and admitted, not
    /// stored), into namespaces created for it and removed after: a drill.
    #[arg(long, requires = "to", conflicts_with = "dry_run", help_heading = KUBERNETES)]
    pub server_dry_run: bool,
    /// With --to k8s://: OLD:NEW, claims (and StatefulSets' claim templates) of storage class OLD get NEW (repeatable).
    #[arg(long, requires = "to", help_heading = KUBERNETES)]
    pub storage_class_mapping: Vec<String>,
    /// With --to k8s://: OLD:NEW, container images from registry OLD come from NEW, e.g. old.registry:new.registry (repeatable).
    #[arg(long, requires = "to", help_heading = KUBERNETES)]
    pub image_registry_mapping: Vec<String>,
    /// With --to k8s://: a YAML file of transforms: storage_classes, image_registries, and rules
    /// that select objects (kinds, namespaces, names, selector) and apply JSON patches (RFC 6902).
    #[arg(long, requires = "to", help_heading = KUBERNETES)]
    pub transforms: Option<PathBuf>,
    /// With --to k8s://: a rehearsal beside production: namespaces into <ns>-dr, workloads scaled
    /// to 0, CronJobs and Jobs suspended, Ingress hosts prefixed dr-, no Pods, and no
    /// cluster-scoped objects unless --include-cluster-resources true.
    #[arg(long, requires = "to", help_heading = KUBERNETES)]
    pub rehearsal: bool,
    #[command(flatten)]
    pub k8s: K8sFilterArgs,
}

#[derive(Args)]
pub struct DumpArgs {
    /// The snapshot: an id, an id prefix or `latest`, with :PATH for a folder in it, e.g. latest:/srv/www.
    pub snapshot: String,
    /// The file's path in the snapshot (or in the folder SNAPSHOT:PATH names), e.g. /etc/hosts.
    pub path: std::ffi::OsString,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older snapshot: an id, an id prefix or `latest`.
    pub a: String,
    /// The newer snapshot: an id, an id prefix or `latest`.
    pub b: String,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args)]
pub struct FindArgs {
    /// Patterns as --include takes them: with a /, the whole path (e.g. '/etc/**/*.conf'); without, a name (e.g. 'config.yaml').
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Long listing with mode, size and time.
    #[arg(short, long, help_heading = OUTPUT)]
    pub long: bool,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Restricts file statistics to this snapshot (an id, an id prefix or `latest`).
    pub snapshot: Option<String>,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Read and verify all data.
    #[arg(long)]
    pub read_data: bool,
    /// Read and verify this share of the packs: a percentage (10%, another
    /// share each time, as restic's) or slice N of T (1/7, then 2/7 … reads
    /// each pack once).
    #[arg(long)]
    pub read_data_subset: Option<String>,
    /// Read and verify this pack too (its id, or its first 8 hex digits or
    /// more), wherever it falls: to see whether damage found earlier is still there.
    #[arg(long = "read-pack", value_name = "ID")]
    pub read_packs: Vec<String>,
    /// A daemon's check: a pack it names that a prune deleted since is not read, and no error.
    #[arg(skip)]
    pub gone_packs_ok: bool,
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
    Remove {
        /// The key slot's id or id prefix, as `tresor key list` shows it.
        id: String,
    },
    /// Replace the password in use with a new one.
    Passwd(NewPassword),
}

#[derive(Args)]
pub struct NewPassword {
    /// File holding the new password (else $TRESOR_NEW_PASSWORD, else a prompt).
    #[arg(long, env = "TRESOR_NEW_PASSWORD_FILE", hide_env_values = true)]
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
