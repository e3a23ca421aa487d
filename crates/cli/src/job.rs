//! `tresor job run` (hidden): the child side of the daemon's job protocol
//! (`tresor_controller::model`). The spec comes as JSON on standard input,
//! secrets included, so none is on a command line; the job runs through
//! the same command functions the CLI calls, in this process; the result
//! is the last line of standard output, its failure reason taken from the
//! typed error (`tresor_controller::failure`).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, FromArgMatches, Parser};
use serde_json::Value;
use tresor_controller::model::{JobResult, JobSpec, Keep, Kind, Reason, RestoreSpec, SourceJob, Status};
use tresor_engine::Password;

use crate::commands::{capture_json, captured_json};
use crate::opts::{
    BackupArgs, CheckArgs, CopyArgs, DrillArgs, ForgetArgs, Global, PgCmd, PgCommand, PgRestoreArgs, PruneCmd, RestoreArgs, SnapshotsArgs,
    VolumeArgs, VolumeCmd, VolumeCommand, VolumeJobArgs,
};

/// A command's arguments with clap's defaults, the given ones set; the
/// job then sets its own values as fields.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct Defaults<T: Args> {
    #[command(flatten)]
    args: T,
}

fn defaults<T: Args + FromArgMatches>(required: &[&str]) -> Result<T> {
    Ok(Defaults::<T>::try_parse_from(required)?.args)
}

/// Read the spec, run the job, print its result. The exit code is 0
/// whenever a result was printed: the result says how the job went.
pub async fn run(g: &Global) -> Result<u8> {
    // The daemon's stop (its time limit, a cancel, its own death) must take
    // the programs the job starts along: each leads a process group that
    // no signal to this process reaches.
    tresor_sources::kill_programs_when_stopped().context("cannot set the job's stop signals")?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("cannot read the job spec")?;
    let spec: JobSpec = serde_json::from_str(&text).context("cannot read the job spec")?;
    drop(text);
    let started = std::time::Instant::now();
    capture_json();
    let ran = dispatch(&global(g, &spec), &spec).await;
    let mut result = judge(&spec, ran, captured_json().pop());
    result.duration_seconds = started.elapsed().as_secs_f64();
    say!("{}", serde_json::to_string(&result)?);
    Ok(0)
}

/// The global options a job runs with: its repository, quietly, as JSON.
fn global(g: &Global, spec: &JobSpec) -> Global {
    let r = &spec.repository;
    Global {
        repo: Some(r.url.clone()),
        password_file: r.password_file.clone(),
        password: r.password.as_ref().map(|p| Password::new(p.expose())),
        json: true,
        quiet: true,
        ..g.clone()
    }
}

fn own_tag(spec: &JobSpec) -> String {
    format!("source={}", spec.name)
}

async fn dispatch(g: &Global, spec: &JobSpec) -> Result<u8> {
    match spec.kind {
        Kind::Backup => {
            let source = spec.source.as_ref().context("a backup job names its source")?;
            if let Some(claim) = source.url.expose().strip_prefix("pvc://") {
                return crate::k8s::volume(g, volume(claim, spec)?).await;
            }
            crate::data::backup(g, backup(source)?).await
        }
        Kind::Forget => crate::retention::forget(g, forget(spec)?).await,
        Kind::Copy => crate::copy::copy(g, copy(spec)?).await,
        Kind::Prune => crate::prune::prune(g, defaults::<PruneCmd>(&[])?).await,
        Kind::Check => {
            let c = spec.check.as_ref().context("a check job names its slice")?;
            let args = CheckArgs {
                read_data: false,
                read_data_subset: Some(format!("{}/{}", c.slice, c.slices)),
                read_packs: c.packs.iter().map(|p| p.to_hex()).collect(),
                gone_packs_ok: true,
            };
            crate::commands::check(g, args).await
        }
        Kind::Restore => {
            let r = spec.restore.as_ref().context("a restore job says what")?;
            if r.base_backup {
                return crate::pg::pg(g, base_backup(r)?).await;
            }
            crate::data::restore(g, restore(spec, r)?).await
        }
        Kind::Drill => {
            let plan = spec.plan_file.clone().context("a drill job names its plan")?;
            let a = match &spec.application {
                Some(app) => DrillArgs { app: Some(app.clone()), plan: Some(plan), for_daemon: true, ..DrillArgs::default() },
                None => DrillArgs { name: Some(spec.name.clone()), plan: Some(plan), for_daemon: true, ..DrillArgs::default() },
            };
            crate::drill::drills(g, a).await
        }
        Kind::Rehearsal => crate::dr::job(g, spec.plan_file.as_deref().context("a rehearsal job names its plan")?).await,
        Kind::Standby => crate::standby::job(g, spec).await,
        Kind::Snapshots => {
            let mut a = defaults::<SnapshotsArgs>(&[])?;
            // No source: every snapshot, the pieces of archives too.
            match spec.name.as_str() {
                "" => a.all = true,
                _ => a.select.tags = vec![own_tag(spec)],
            }
            crate::commands::snapshots(g, a).await
        }
    }
}

fn backup(s: &SourceJob) -> Result<BackupArgs> {
    let mut a = defaults::<BackupArgs>(&[])?;
    a.paths = vec![PathBuf::from(s.url.expose())];
    a.tags = vec![format!("source={}", s.name), format!("class={}", s.class)];
    a.tags.extend(s.tags.iter().cloned());
    if let Some(f) = &s.scope {
        let k = &mut a.k8s;
        (k.include_namespaces, k.exclude_namespaces) = (f.include_namespaces.clone(), f.exclude_namespaces.clone());
        (k.include_resources, k.exclude_resources) = (f.include_resources.clone(), f.exclude_resources.clone());
        (k.selector, k.include_cluster_resources) = (f.selector.clone(), f.include_cluster_resources);
    }
    a.pre_hook = s.hooks.pre.clone();
    a.post_hook = s.hooks.post.clone();
    if let Some(t) = s.hooks.timeout_secs {
        a.hook_timeout = format!("{t}s");
    }
    if s.hooks.continue_on_error {
        a.on_error = "continue".into();
    }
    if !s.archives_wal {
        a.archive_timeout = "0s".into();
    }
    Ok(a)
}

/// How long a volume job waits for its Jobs: its time limit less what it
/// needs to remove what they made, as the daemon kills the job at the limit.
fn volume_wait(limit_secs: Option<u64>) -> u64 {
    let limit = limit_secs.unwrap_or(6 * 3600);
    limit.saturating_sub((limit / 10).clamp(5, 60))
}

/// `pvc://NAMESPACE/CLAIM?secret=NAME[&csi-snapshot-class=C][&cluster=k8s://CTX][&image=I]`
/// (or `NAMESPACE/*`, `*`, with `selector=LABELS`: every claim that matches
/// when the job runs): a Job in the cluster backs each claim up; this job waits for them.
fn volume(rest: &str, spec: &JobSpec) -> Result<VolumeCmd> {
    let (claim, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut job = defaults::<VolumeJobArgs>(&["--secret", "-"])?;
    let (mut secret, mut csi_snapshot_class, mut selector) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "secret" => secret = Some(v.to_string()),
            "csi-snapshot-class" => csi_snapshot_class = Some(v.into()),
            "cluster" => job.cluster = v.into(),
            "image" => job.image = v.into(),
            "selector" => selector = Some(v.to_string()),
            other => bail!("pvc://{claim}: unknown setting {other:?} (known: secret, selector, csi-snapshot-class, cluster, image)"),
        }
    }
    job.secret =
        secret.filter(|s| !s.is_empty()).with_context(|| format!("pvc://{claim}: no secret=NAME with the repository's settings"))?;
    job.wait = Some(format!("{}s", volume_wait(spec.timeout_secs)));
    let source = spec.source.as_ref().context("a volume job names its source")?;
    job.run = source.run.clone();
    job.pod = source.pod.clone().unwrap_or_default();
    let args =
        VolumeArgs { claim: claim.into(), selector, csi_snapshot_class, tags: vec![own_tag(spec)], source: Some(spec.name.clone()), job };
    Ok(VolumeCmd { command: VolumeCommand::Backup(args) })
}

fn within(k: &Option<Keep>) -> (Option<u32>, Option<String>) {
    match k {
        Some(Keep::Count(n)) => (Some(*n), None),
        Some(Keep::Within(span)) => (None, Some(span.clone())),
        None => (None, None),
    }
}

fn forget(spec: &JobSpec) -> Result<ForgetArgs> {
    let policy = spec.forget.clone().unwrap_or_default();
    let mut a = defaults::<ForgetArgs>(&[])?;
    a.select.tags = vec![own_tag(spec)];
    a.keep_last = policy.last;
    (a.keep_hourly, a.keep_within_hourly) = within(&policy.hourly);
    (a.keep_daily, a.keep_within_daily) = within(&policy.daily);
    (a.keep_weekly, a.keep_within_weekly) = within(&policy.weekly);
    (a.keep_monthly, a.keep_within_monthly) = within(&policy.monthly);
    (a.keep_yearly, a.keep_within_yearly) = within(&policy.yearly);
    Ok(a)
}

fn copy(spec: &JobSpec) -> Result<CopyArgs> {
    let to = spec.offsite.as_ref().context("a copy job names its target")?;
    let mut a = defaults::<CopyArgs>(&["--to", to.url.expose()])?;
    a.to_password_file = to.password_file.clone();
    a.to_password = to.password.as_ref().map(|p| Password::new(p.expose()));
    a.select.tags = vec![own_tag(spec)];
    Ok(a)
}

/// A restore; without a snapshot id, `latest` narrowed to the source's own
/// backups as restic narrows it: its tag joins every tag group asked for.
fn restore(spec: &JobSpec, r: &RestoreSpec) -> Result<RestoreArgs> {
    let mut a = defaults::<RestoreArgs>(&["latest", "--target", "."])?;
    a.target = r.target.as_ref().map(PathBuf::from);
    a.to = r.to.clone();
    if a.target.is_none() && a.to.is_none() {
        bail!("a restore needs a target directory or a service to restore to");
    }
    a.flush = r.flush;
    a.verify = r.verify;
    a.delete = r.delete;
    a.server_dry_run = r.server_dry_run;
    a.namespace_mapping = r.namespace_mapping.clone();
    a.rehearsal = r.rehearsal;
    a.transforms = r.transforms.clone();
    match &r.snapshot {
        Some(id) => a.snapshot = id.clone(),
        None => {
            let own = own_tag(spec);
            a.select.tags = if r.tag.is_empty() { vec![own] } else { r.tag.iter().map(|t| format!("{own},{t}")).collect() };
            a.select.hosts = r.host.clone();
            a.select.paths = r.path.clone();
        }
    }
    Ok(a)
}

/// A base backup as a data directory that recovers to its own
/// consistency point (or through the WAL to `recover_to`) and archives no
/// WAL (a drill's scratch cluster, an application's restore).
fn base_backup(r: &RestoreSpec) -> Result<PgCmd> {
    let target = r.target.as_deref().context("a base backup restores into a directory")?;
    let mut a = defaults::<PgRestoreArgs>(&["--target", target])?;
    a.snapshot = r.snapshot.clone();
    match r.recover_to.as_deref() {
        None => a.immediate = true,
        Some("latest") => a.latest = true,
        Some(t) => a.time = Some(t.into()),
    }
    a.no_archive = true;
    Ok(PgCmd { command: PgCommand::Restore(a) })
}

/// The job's result from how it ended and the last JSON it printed.
fn judge(spec: &JobSpec, ran: Result<u8>, details: Option<Value>) -> JobResult {
    let mut r = match ran {
        Ok(0) => JobResult::succeeded(),
        Ok(crate::EXIT_INCOMPLETE) => JobResult::failed(Reason::Partial, false, partial(spec, details.as_ref())),
        Ok(_) if spec.kind == Kind::Drill => JobResult::failed(Reason::Error, false, drills_failed(details.as_ref())),
        Ok(_) if spec.kind == Kind::Rehearsal => JobResult::failed(Reason::Error, false, rehearsal_failed(details.as_ref())),
        Ok(code) => JobResult::failed(Reason::Error, false, format!("exit code {code}")),
        Err(e) => {
            let (reason, temporary) = tresor_controller::failure::classify(e.as_ref());
            let message = match (spec.kind, details.as_ref().and_then(|d| d["problems"].get(0))) {
                (Kind::Check, Some(first)) => format!(
                    "{}; first: {}: {}",
                    crate::one_line(&e),
                    first["object"].as_str().unwrap_or("?"),
                    first["error"].as_str().unwrap_or("?")
                ),
                _ => crate::one_line(&e),
            };
            // The job's log says it as the command would.
            eprintln!("tresor: error: {message}");
            let in_target = e.downcast_ref::<crate::copy::InTarget>().is_some()
                || e.chain().any(|c| c.downcast_ref::<tresor_engine::Error>().is_some_and(tresor_engine::Error::is_in_target));
            JobResult { in_target, ..JobResult::failed(reason, temporary, message) }
        }
    };
    // A partial backup's snapshot is stored all the same, and named.
    if let Some(d) = &details
        && (r.status == Status::Succeeded || r.reason == Some(Reason::Partial))
    {
        r.snapshot = d["snapshot_id"].as_str().map(String::from);
        r.bytes_processed = d["total_bytes_processed"].as_u64();
        r.bytes_added = d["data_added"].as_u64().or(d["bytes_copied"].as_u64());
        r.lag_seconds = d["lag_seconds"].as_f64();
    }
    r.details = details;
    r
}

/// What a job that ran to the end without some of its work (exit 3) lacks.
fn partial(spec: &JobSpec, details: Option<&Value>) -> String {
    match (spec.kind, details) {
        (Kind::Backup, Some(d)) => {
            let id = d["snapshot_id"].as_str().map_or("?", |id| &id[..id.len().min(8)]);
            format!("partial: some of the source could not be read; snapshot {id} holds the rest")
        }
        (_, Some(d)) if d["status"].as_str().is_some_and(|s| s.starts_with("partial")) => d["status"].as_str().unwrap_or_default().into(),
        _ => "partial: some of it could not be done (see the log)".into(),
    }
}

/// How many drills failed, and the first one's first reason (it was on
/// the source's page only: "1 of 1 drills failed" said nothing of why).
fn drills_failed(reports: Option<&Value>) -> String {
    let all = reports.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let failed: Vec<&Value> = all.iter().filter(|r| r["passed"] != true).collect();
    let said = format!("{} of {} drills failed", failed.len(), all.len());
    match failed.iter().find_map(|r| r["reasons"].get(0)?.as_str().map(|why| (r["source"].as_str().unwrap_or("?"), why))) {
        Some((source, why)) => format!("{said}; {source}: {why}"),
        None => said,
    }
}

fn rehearsal_failed(protocol: Option<&Value>) -> String {
    let steps = protocol.and_then(|p| p["steps"].as_array()).map_or(&[][..], Vec::as_slice);
    let failed = steps.iter().filter(|s| s["drill"]["passed"] != true).count();
    let missed = protocol.is_some_and(|p| p["rto_met"] == false);
    match (failed, missed) {
        (0, true) => "the rehearsal missed the platform RTO".into(),
        (0, false) => "the rehearsal's scratch stays".into(),
        _ => format!("the rehearsal failed: {failed} of {} sources not back", steps.len()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_job_that_ends_partial_is_a_failure_of_its_own_that_names_what_it_kept() {
        let spec =
            |kind: &str| serde_json::from_value::<JobSpec>(json!({"kind": kind, "name": "files", "repository": {"url": "/r"}})).unwrap();
        let backup = judge(&spec("backup"), Ok(3), Some(json!({"snapshot_id": "ab12cd34ef56", "total_bytes_processed": 10})));
        assert_eq!((backup.status, backup.reason, backup.temporary), (Status::Failed, Some(Reason::Partial), false));
        assert_eq!(backup.message.as_deref(), Some("partial: some of the source could not be read; snapshot ab12cd34 holds the rest"));
        assert_eq!((backup.snapshot.as_deref(), backup.bytes_processed), (Some("ab12cd34ef56"), Some(10)));
        let said = "partial: 1 of 12 objects failed; first: Widget shop/w1: denied";
        let restore = judge(&spec("restore"), Ok(3), Some(json!({"status": said, "results": []})));
        assert_eq!((restore.reason, restore.message.as_deref()), (Some(Reason::Partial), Some(said)));
        assert_eq!(judge(&spec("backup"), Ok(0), None).status, Status::Succeeded);
        let reports = json!([{"source": "db", "passed": true}, {"source": "files", "passed": false, "reasons": ["the verify command failed (exit status: 1)"]}]);
        let drill = judge(&spec("drill"), Ok(1), Some(reports));
        assert_eq!(drill.message.as_deref(), Some("1 of 2 drills failed; files: the verify command failed (exit status: 1)"));
    }

    /// A base backup waits for its end to be archived only where the plan
    /// says the cluster archives into the repository (`wal_archive:`).
    #[test]
    fn only_an_archiving_clusters_base_backups_wait_for_their_end() {
        let source = |archives_wal| SourceJob { name: "db".into(), url: "pgbase://u@db:5432".into(), archives_wal, ..SourceJob::default() };
        assert_eq!(backup(&source(true)).unwrap().archive_timeout, "60s");
        assert_eq!(backup(&source(false)).unwrap().archive_timeout, "0s");
    }

    /// A copy that cannot reach its target says so in its result, as a
    /// type rather than in words; one that fails in its source does not.
    #[test]
    fn a_copy_that_fails_in_its_target_says_so() {
        let spec = serde_json::from_value::<JobSpec>(json!({"kind": "copy", "name": "db", "repository": {"url": "/r"}})).unwrap();
        let down =
            || anyhow::Error::new(tresor_engine::Error::NoRepository { location: "s3://off/site".into(), reason: "no config".into() });
        let target = judge(&spec, Err(down().context(crate::copy::InTarget)), None);
        assert_eq!((target.reason, target.in_target), (Some(Reason::RepositoryMissing), true));
        assert_eq!(target.message.as_deref(), Some("target: no repository at s3://off/site: no config"));
        assert!(!judge(&spec, Err(down()), None).in_target);
        // Failing after the target opened: the engine says which side.
        let full = || tresor_engine::Error::io("/off/site/data", std::io::Error::from(std::io::ErrorKind::StorageFull));
        let mid_copy = judge(&spec, Err(anyhow::Error::new(full().in_target())), None);
        assert_eq!((mid_copy.reason, mid_copy.in_target), (Some(Reason::StorageFull), true));
        assert_eq!(mid_copy.message, judge(&spec, Err(anyhow::Error::new(full())), None).message, "the same words");
    }

    /// A volume job's wait ends before the daemon's kill, leaving time to
    /// remove what its Jobs made.
    #[test]
    fn a_volume_jobs_wait_ends_before_its_time_limit() {
        assert_eq!([volume_wait(Some(100)), volume_wait(Some(3600)), volume_wait(Some(20)), volume_wait(None)], [90, 3540, 15, 21_540]);
    }
}
