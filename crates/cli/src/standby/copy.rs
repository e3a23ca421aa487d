//! Directory and Redis standbys: a copy of the source's newest snapshot,
//! refreshed through the restores `tresor restore` runs. A directory is
//! restored in place as `restore SNAPSHOT:PATH --overwrite if-changed
//! --delete` would (PATH: the directory backed up; files whose
//! size and time match are left alone, changed ones rewritten, those the
//! snapshot lacks removed); a claim gets the same restore from a Job in its
//! namespace that mounts it (tresor_sources::k8s_standby); a Redis instance
//! loads the snapshot's RDB as `restore --to redis:// --flush` does. What the standby holds is recorded
//! (tresor_controller::standby::Held) only once the restore has ended, and
//! marked `refreshing` while it runs: a refresh killed midway leaves a
//! record of the last complete one, and the next refresh writes whatever
//! the killed one left different (a half-written file has the wrong size
//! or time, as metadata is set last).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use serde_json::{Value, json};
use tresor_controller::secret_url::SecretUrl;
use tresor_controller::standby::{Held, StandbyKind, held, record_held};
use tresor_engine::restore::{Overwrite, RestoreOptions, restore};
use tresor_engine::{Repository, Snapshot};
use tresor_sources::k8s_pod::{DEFAULT_IMAGE, PodSettings};
use tresor_sources::k8s_standby::{self, StandbyClaim};
use tresor_sources::k8s_volume::VolumeJob;

use crate::commands::open;
use crate::opts::Global;

/// What a refresh did.
pub struct Refreshed {
    pub snapshot: Snapshot,
    /// It held that snapshot already: nothing was written.
    pub current: bool,
    /// The restore's summary (a directory's counts, a Redis load's answer).
    pub summary: Value,
}

/// The newest snapshot of `source` (its own backups; no archive pieces).
async fn newest(repo: &Repository, source: &str) -> Result<Snapshot> {
    let tag = format!("source={source}");
    let snaps = repo.snapshots().await?;
    let newest = snaps.into_iter().filter(|s| s.tags.contains(&tag) && s.source.kind != crate::pgwal::KIND).max_by_key(|s| s.time);
    newest.with_context(|| format!("the repository holds no snapshot of {source} to refresh its standby from"))
}

/// Make `source`'s standby at `target` hold its newest snapshot, unless it
/// does (`pod`: how a claim's Job runs, the source's `pod:`).
pub async fn refresh(g: &Global, source: &str, kind: StandbyKind, target: &SecretUrl, pod: &PodSettings) -> Result<Refreshed> {
    let repo = open(g).await?;
    let snapshot = newest(&repo, source).await?;
    let id = snapshot.id.to_string();
    // A Redis or claim standby's record is kept by source name, not by a path.
    let path = target.as_path().unwrap_or(Path::new(""));
    let was = held(source, kind, path);
    if was.snapshot.as_deref() == Some(&id) && was.refreshing.is_none() {
        return Ok(Refreshed { snapshot, current: true, summary: json!({}) });
    }
    let record = |h: &Held| record_held(source, kind, path, h).with_context(|| format!("cannot record what the standby of {source} holds"));
    record(&Held { refreshing: Some(id.clone()), ..was })?;
    let summary = match kind {
        StandbyKind::Directory => into_directory(repo, &snapshot, path).await?,
        StandbyKind::Claim => into_claim(source, &snapshot, target.expose(), pod).await?,
        StandbyKind::Redis => into_redis(&repo, &snapshot, target).await?,
        StandbyKind::Postgres => bail!("a PostgreSQL standby is made, not refreshed from a snapshot"),
    };
    let time = snapshot.time.with_timezone(&Utc);
    record(&Held { snapshot: Some(id), snapshot_time: Some(time), refreshed: Some(Utc::now()), refreshing: None })?;
    Ok(Refreshed { snapshot, current: false, summary })
}

/// The standby mirrors the backed-up directory, not the path to it.
fn folder(snap: &Snapshot) -> Option<String> {
    match snap.paths.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

async fn into_directory(repo: Arc<Repository>, snap: &Snapshot, target: &Path) -> Result<Value> {
    let opts = RestoreOptions {
        target: target.to_path_buf(),
        subfolder: folder(snap),
        overwrite: Overwrite::IfChanged,
        delete: true,
        ..RestoreOptions::default()
    };
    let s = restore(repo, snap, &opts).await.with_context(|| format!("cannot refresh the standby in {}", target.display()))?;
    if let Some(first) = s.errors.first() {
        bail!("the standby in {} is not complete: {} errors, the first: {first}", target.display(), s.errors.len());
    }
    Ok(serde_json::to_value(&s)?)
}

/// How long a refresh waits for its claim's Job; a refresh killed before
/// adopts the unfinished Job the next time.
const CLAIM_WAIT: Duration = Duration::from_secs(6 * 3600);

/// Restore `snap` into the claim `to` names through a Job in its namespace
/// (named after the claim and the snapshot), and wait for it. The Job runs
/// as the source's backup Jobs do: the files it writes are the user's they
/// back up.
async fn into_claim(source: &str, snap: &Snapshot, to: &str, pod: &PodSettings) -> Result<Value> {
    let c = StandbyClaim::parse(to).map_err(anyhow::Error::msg)?;
    let what = folder(snap).map_or_else(|| snap.id.to_string(), |p| format!("{}:{p}", snap.id));
    let v = VolumeJob {
        image: c.image.unwrap_or_else(|| DEFAULT_IMAGE.into()),
        secret: c.secret,
        csi_snapshot_class: None,
        wait: Some(CLAIM_WAIT),
        tags: Vec::new(),
        pod: pod.clone(),
        // Its own label: a backup Job of the same source is no refresh to adopt.
        source: format!("{source}.standby"),
        run: snap.id.short(),
        namespace: c.namespace,
        claim: c.claim,
    };
    let ns = v.namespace.clone();
    let made = k8s_standby::refresh(&c.cluster, &v, &what, |job| {
        eprintln!("tresor: adopting Job {ns}/{job}, left unfinished by an earlier refresh");
    })
    .await?;
    Ok(json!({"created": made}))
}

async fn into_redis(repo: &Repository, snap: &Snapshot, to: &SecretUrl) -> Result<Value> {
    let mut target = tresor_sources::target_from_url(to.expose(), tresor_sources::TargetOptions { jobs: 1, ..Default::default() })?;
    let (_, bytes, said) = crate::sources::stream_into(repo, snap, target.as_mut(), true)
        .await
        .with_context(|| format!("cannot reload the standby at {to}"))?;
    Ok(json!({"bytes": bytes, "result": said}))
}

/// One line of what a refresh did.
pub fn said(source: &str, to: &SecretUrl, r: &Refreshed) -> String {
    let short = r.snapshot.id.short();
    if r.current {
        return format!("the standby of {source} in {to} holds the newest snapshot {short} already");
    }
    if let Some(files) = r.summary.get("files_restored") {
        return format!(
            "refreshed the standby of {source} in {to} to snapshot {short}: {files} files written, {} left as they were, {} removed",
            r.summary["files_skipped"], r.summary["files_deleted"]
        );
    }
    match r.summary["created"].as_array().and_then(|c| c.first()) {
        Some(job) => format!("refreshed the standby of {source} in {to} to snapshot {short} through {}", job.as_str().unwrap_or_default()),
        None => format!("reloaded the standby of {source} at {to} from snapshot {short}: {}", r.summary["result"].as_str().unwrap_or("")),
    }
}
