//! Runs as Kubernetes resources (`BackupRun`, `RestoreRun`, `DrillRun`,
//! tresor.dev/v1alpha1, deploy/kubernetes/crd-runs.yaml) for a daemon that
//! follows a BackupPlan resource: each backup, restore and drill it runs is
//! also an object in the plan's namespace whose status follows the job, so
//! `kubectl get backupruns` answers what `tresor jobs` does. A BackupRun or
//! RestoreRun someone creates there (a pipeline, a GitOps tool) starts one
//! through the daemon's command channel, as the API does. A RestoreRun
//! writes only into its own namespace unless the plan allows more. The runs
//! the daemon made are pruned by count and age; those people made are
//! theirs to delete (a GitOps tool would put a pruned one back, and restore
//! again). Outside Kubernetes none of this runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::daemon::{Command, Shared};
use crate::model::RestoreSpec;
use crate::planwatch::PlanRef;
use crate::runs_hook::Note;
pub use crate::runs_hook::{Notes, RunKind, Runs};
use crate::secret_url::SecretUrl;
use crate::state::Outcome;

/// What a BackupRun (and a DrillRun) is for.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct BackupRunSpec {
    /// The plan's source.
    pub source: String,
}

/// What a RestoreRun restores, and where to: the fields the daemon's
/// restore API (`POST /api/v1/sources/NAME/restore`) takes, and the source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RestoreRunSpec {
    /// The plan's source.
    pub source: String,
    /// A snapshot id or short id; default `latest`, the source's newest.
    pub snapshot: Option<String>,
    /// A service (`redis://…`, `postgres://…/DB`, `etcd-data:DIR`,
    /// `command:…`), the cluster (`k8s://`, with `namespace_mapping`) or a
    /// claim (`pvc://NAMESPACE/CLAIM`) …
    pub to: Option<SecretUrl>,
    /// … or a directory of the daemon's for the raw files.
    pub target: Option<String>,
    /// Empty the service first.
    #[serde(default)]
    pub flush: bool,
    /// Read the restored files back against the snapshot's content hashes.
    #[serde(default)]
    pub verify: bool,
    /// Kubernetes objects: a server-side dry run only.
    #[serde(default)]
    pub server_dry_run: bool,
    /// Kubernetes objects: `FROM:TO` restores namespace FROM's objects into TO.
    #[serde(default)]
    pub namespace_mapping: Vec<String>,
    /// A PostgreSQL base backup as a data directory, with no WAL archive.
    #[serde(default)]
    pub base_backup: bool,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// What the daemon made of a run (the same for every kind; RTO and RPO are a drill's).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct RunStatus {
    /// Pending (accepted, waiting for a slot), Running, Succeeded or Failed.
    pub phase: Option<Phase>,
    /// Why it failed (`snapshot_missing`, `target_forbidden`, a job's typed reason).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The daemon's job id (`tresor jobs`, `/api/v1/jobs/ID`).
    pub job: Option<i64>,
    /// The snapshot a backup made or a restore reads.
    pub snapshot: Option<String>,
    /// The bytes the job read (a backup) or wrote (a restore, a drill).
    pub bytes: Option<u64>,
    /// `bytes` for people: `12.3 MiB`.
    pub size: Option<String>,
    /// RFC 3339.
    pub start_time: Option<String>,
    /// RFC 3339.
    pub end_time: Option<String>,
    /// A drill's measured RTO: from its start to a validated restore.
    pub rto_seconds: Option<f64>,
    /// A drill's achieved RPO: the restore point's age when it started.
    pub rpo_seconds: Option<f64>,
}

/// The label that names a run's source.
pub const SOURCE_LABEL: &str = "tresor.dev/source";
/// The label on the runs the daemon made (the ones it prunes).
const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "tresor");

/// The job's actor for a run someone asked for with an object: the audit
/// trail names the object, and the status hooks find it by this.
fn actor_of(kind: RunKind, ns: &str, name: &str) -> String {
    format!("{} {ns}/{name}", kind.kind())
}

/// The run object an actor names, if it names one.
fn named_by(actor: &str, kind: RunKind) -> Option<String> {
    let rest = actor.strip_prefix(kind.kind())?.strip_prefix(' ')?;
    rest.split_once('/').map(|(_, name)| name.to_string())
}

/// The run objects of one daemon: those in its BackupPlan's namespace.
#[derive(Clone)]
struct Cluster {
    client: kube::Client,
    ns: String,
    shared: Arc<Shared>,
}

/// Why a run someone asked for is refused: its status's reason and message.
type Refusal = (&'static str, String);

/// Keep the run objects in step with the daemon's jobs, start the runs
/// people create, prune finished ones. Runs until the daemon stops.
pub async fn follow(plan: PlanRef, shared: Arc<Shared>, notes: Notes) {
    let client = match tresor_sources::k8s::client(&plan.cluster).await {
        Ok(c) => c,
        Err(e) => return tracing::error!("runs as resources are off: {e}"),
    };
    let k = Cluster { client, ns: plan.namespace, shared };
    // After the daemon has marked the jobs a stop interrupted, so their runs end as they did.
    while !k.shared.ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    k.reconcile().await;
    for kind in RunKind::ALL {
        k.prune(kind).await;
    }
    tokio::spawn(k.clone().requests());
    // The runs now in progress, by kind and source (a source runs one job of a kind at a time).
    let mut current: BTreeMap<(RunKind, String), (String, i64)> = BTreeMap::new();
    let mut notes = notes.0;
    while let Some(note) = notes.recv().await {
        match note {
            Note::Started { actor, kind, source, job, at } => {
                let name = match named_by(&actor, kind) {
                    Some(name) => name,
                    None => k.create(kind, &source, job).await,
                };
                let status = json!({"phase": Phase::Running, "job": job, "start_time": at.to_rfc3339(), "reason": null, "message": null});
                k.set(kind, &name, status).await;
                current.insert((kind, source), (name, job));
            }
            Note::Finished { actor, kind, source, outcome, retrying, at } => {
                let running = current.remove(&(kind, source));
                let (name, job, theirs) = match (named_by(&actor, kind), running) {
                    (Some(name), run) => (name, run.map(|(_, job)| job), true),
                    (None, Some((name, job))) => (name, Some(job), false),
                    (None, None) => continue,
                };
                // Each attempt of the daemon's own is a run of its own; one asked for stays one run.
                k.set(kind, &name, ended(&outcome, job, retrying && theirs, at)).await;
                if !theirs {
                    k.prune(kind).await;
                }
            }
        }
    }
}

/// A finished (or retried) job's status.
fn ended(o: &Outcome, job: Option<i64>, retrying: bool, at: DateTime<Utc>) -> Value {
    let drill = o.summary.as_ref().and_then(|s| s.get(0));
    let mut s = Map::new();
    let phase = match o.status.as_str() {
        _ if retrying => Phase::Running,
        "succeeded" => Phase::Succeeded,
        _ => Phase::Failed,
    };
    s.insert("phase".into(), json!(phase));
    s.insert("reason".into(), json!(o.reason));
    let message = if retrying { o.message.as_ref().map(|m| format!("retrying after: {m}")) } else { o.message.clone() };
    s.insert("message".into(), json!(message));
    if !retrying {
        s.insert("end_time".into(), json!(at.to_rfc3339()));
    }
    if let Some(job) = job {
        s.insert("job".into(), json!(job));
    }
    let snapshot = o.snapshot.clone().or_else(|| drill.and_then(|d| d["snapshot"].as_str()).map(String::from));
    if let Some(id) = snapshot {
        s.insert("snapshot".into(), json!(id));
    }
    if let Some(n) = o.bytes_processed.or_else(|| drill.and_then(|d| d["bytes"].as_u64())) {
        s.insert("bytes".into(), json!(n));
        s.insert("size".into(), json!(crate::report::bytes(n)));
    }
    if let Some(d) = drill {
        s.insert("rto_seconds".into(), json!(crate::metrics::measured(d, "rto_seconds")));
        s.insert("rpo_seconds".into(), json!(crate::metrics::measured(d, "rpo_seconds")));
    }
    Value::Object(s)
}

/// A run's name from its source and job: lowercase letters, digits and `-`, as object names must be.
fn run_name(source: &str, job: i64) -> String {
    let base: String = source.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let base = base.trim_matches('-');
    let base = &base[..base.len().min(200)];
    format!("{base}-{job}")
}

/// A label value from a source's name (63 characters at most, alphanumeric at both ends).
fn label_value(source: &str) -> String {
    let v: String = source.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).take(63).collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

impl Cluster {
    fn api(&self, kind: RunKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, &kind.resource())
    }

    /// The object of a run the daemon started, named `<source>-<job id>`;
    /// one already there (a restarted daemon's) is the same run.
    async fn create(&self, kind: RunKind, source: &str, job: i64) -> String {
        let name = run_name(source, job);
        let obj = json!({
            "apiVersion": "tresor.dev/v1alpha1", "kind": kind.kind(),
            "metadata": {"name": name, "namespace": self.ns, "labels": {SOURCE_LABEL: label_value(source), MANAGED.0: MANAGED.1}},
            "spec": {"source": source},
        });
        let obj: DynamicObject = serde_json::from_value(obj).expect("a run object is a Kubernetes object");
        match self.api(kind).create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => tracing::info!("{} {}/{name} is there already: taken on", kind.kind(), self.ns),
            Err(e) => tracing::warn!("cannot create {} {}/{name}: {}", kind.kind(), self.ns, tresor_sources::k8s::api_message(&e)),
        }
        name
    }

    /// Merge `status` into a run's status.
    async fn set(&self, kind: RunKind, name: &str, status: Value) {
        let patch = Patch::Merge(json!({"status": status}));
        if let Err(e) = self.api(kind).patch_status(name, &PatchParams::default(), &patch).await {
            tracing::warn!("cannot set the status of {} {}/{name}: {}", kind.kind(), self.ns, tresor_sources::k8s::api_message(&e));
        }
    }

    /// Runs left Running by a daemon that stopped: their jobs' ends, from the state.
    async fn reconcile(&self) {
        for kind in RunKind::ALL {
            let Ok(list) = self.api(kind).list(&ListParams::default()).await else { continue };
            for o in list.items {
                let status: RunStatus = serde_json::from_value(o.data["status"].clone()).unwrap_or_default();
                let (Some(Phase::Running), Some(id), Some(name)) = (status.phase, status.job, o.metadata.name.as_deref()) else { continue };
                match self.shared.state.job(id) {
                    Ok(Some(j)) if j.outcome.status != "running" => {
                        self.set(kind, name, ended(&j.outcome, Some(id), false, j.ended_at.unwrap_or(j.started_at))).await;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Delete the daemon's finished runs of a kind beyond the plan's count, per source, and those older than its age.
    async fn prune(&self, kind: RunKind) {
        let keep = self.shared.plan().daemon.runs;
        let now = self.shared.clock.now();
        let oldest =
            chrono::Duration::from_std(keep.max_age.0).ok().and_then(|age| now.checked_sub_signed(age)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let api = self.api(kind);
        let Ok(list) = api.list(&ListParams::default().labels(&format!("{}={}", MANAGED.0, MANAGED.1))).await else { return };
        let mut by_source: BTreeMap<String, Vec<(DateTime<Utc>, String)>> = BTreeMap::new();
        for o in list.items {
            let status: RunStatus = serde_json::from_value(o.data["status"].clone()).unwrap_or_default();
            let end = status.end_time.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            let (Some(Phase::Succeeded | Phase::Failed), Some(end), Some(name)) = (status.phase, end, o.metadata.name) else { continue };
            let source = o.metadata.labels.unwrap_or_default().remove(SOURCE_LABEL).unwrap_or_default();
            by_source.entry(source).or_default().push((end.with_timezone(&Utc), name));
        }
        for mut runs in by_source.into_values() {
            runs.sort_by(|a, b| b.cmp(a));
            for (i, (end, name)) in runs.into_iter().enumerate() {
                if i < keep.keep as usize && end >= oldest {
                    continue;
                }
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!("{} {}/{name} pruned", kind.kind(), self.ns),
                    Err(e) => tracing::warn!("cannot prune {} {}/{name}: {}", kind.kind(), self.ns, tresor_sources::k8s::api_message(&e)),
                }
            }
        }
    }

    /// Watch for the BackupRuns and RestoreRuns people create, and start each once.
    async fn requests(self) {
        // Backing off: a cluster without the run CRDs answers every request with 404.
        let watch = |kind: RunKind| watcher::watcher(self.api(kind), watcher::Config::default()).default_backoff().map(move |e| (kind, e));
        let mut events = std::pin::pin!(futures::stream::select(watch(RunKind::Backup), watch(RunKind::Restore)));
        // Taken since this daemon started: a Pending run from before a restart lost its queue place, so it is taken again.
        let mut taken = BTreeSet::new();
        while let Some((kind, event)) = events.next().await {
            let obj = match event {
                Ok(Event::Apply(o) | Event::InitApply(o)) => o,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("watching {}s: {e}", kind.kind());
                    continue;
                }
            };
            let ours = obj.metadata.labels.as_ref().and_then(|l| l.get(MANAGED.0)).is_some_and(|v| v == MANAGED.1);
            let phase = obj.data["status"]["phase"].as_str();
            let Some(name) = obj.metadata.name.clone() else { continue };
            if ours || !matches!(phase, None | Some("Pending")) || !taken.insert((kind, name.clone())) {
                continue;
            }
            self.take(kind, &name, &obj.data["spec"]).await;
        }
    }

    /// Start a run someone asked for, or say in its status why not.
    async fn take(&self, kind: RunKind, name: &str, spec: &Value) {
        let actor = actor_of(kind, &self.ns, name);
        let asked = match kind {
            RunKind::Restore => self.restore(spec, actor).await,
            _ => self.backup(spec, actor),
        };
        match asked {
            Ok((command, snapshot)) => {
                let mut status = json!({"phase": Phase::Pending, "reason": null, "message": null});
                if let Some(id) = snapshot {
                    status["snapshot"] = id.into();
                }
                // Pending is written before the job is queued, so it never lands after Running.
                self.set(kind, name, status).await;
                let _ = self.shared.commands.send(command);
            }
            Err((reason, message)) => {
                tracing::warn!("{} {}/{name} refused: {message}", kind.kind(), self.ns);
                let end = self.shared.clock.now().to_rfc3339();
                self.set(kind, name, json!({"phase": Phase::Failed, "reason": reason, "message": message, "end_time": end})).await;
            }
        }
    }

    fn backup(&self, spec: &Value, actor: String) -> Result<(Command, Option<String>), Refusal> {
        let spec: BackupRunSpec = serde_json::from_value(spec.clone()).map_err(|e| ("invalid", format!("the spec: {e}")))?;
        if !self.shared.plan().sources.iter().any(|s| s.name == spec.source) {
            return Err(("source_unknown", format!("no source {} in the plan", spec.source)));
        }
        Ok((Command::Backup { source: spec.source, actor }, None))
    }

    /// A restore of a snapshot that exists, into what this namespace may write.
    async fn restore(&self, spec: &Value, actor: String) -> Result<(Command, Option<String>), Refusal> {
        let spec: RestoreRunSpec = serde_json::from_value(spec.clone()).map_err(|e| ("invalid", format!("the spec: {e}")))?;
        let plan = self.shared.plan();
        let source = plan.sources.iter().find(|s| s.name == spec.source);
        let Some((repo_name, repo)) = source.and_then(|s| plan.repository_of(s)) else {
            return Err(("source_unknown", format!("no source {} in the plan", spec.source)));
        };
        if spec.to.is_some() == spec.target.is_some() {
            return Err(("invalid", "give exactly one of to (a service URL) and target (a directory)".into()));
        }
        let list = self.shared.repos.snapshots(repo, Some(&spec.source)).await.map_err(|e| ("repository", e))?;
        let snapshot = match spec.snapshot.as_deref().filter(|s| *s != "latest") {
            None => list
                .last()
                .ok_or_else(|| ("snapshot_missing", format!("source {} has no snapshot in repository {repo_name}", spec.source)))?,
            Some(id) => list
                .iter()
                .find(|s| s["id"] == id || s["short_id"] == id)
                .ok_or_else(|| ("snapshot_missing", format!("snapshot {id} of source {} is not in repository {repo_name}", spec.source)))?,
        };
        let writes = namespaces_written(&spec, snapshot);
        allowed(&self.ns, &plan.daemon.restore_namespaces, writes).map_err(|m| ("target_forbidden", m))?;
        let id = snapshot["id"].as_str().map(String::from);
        let restore = RestoreSpec {
            snapshot: id.clone(),
            to: spec.to,
            target: spec.target,
            flush: spec.flush,
            verify: spec.verify,
            server_dry_run: spec.server_dry_run,
            namespace_mapping: spec.namespace_mapping,
            base_backup: spec.base_backup,
            ..RestoreSpec::default()
        };
        Ok((Command::Restore { source: spec.source, spec: Box::new(restore), actor }, id))
    }
}

/// The namespaces a restore writes: none for a service or a directory
/// outside the cluster; a claim's; for `k8s://`, each namespace of the
/// snapshot under the mapping (`None`: the snapshot holds every namespace,
/// and cluster-scoped objects).
fn namespaces_written(spec: &RestoreRunSpec, snapshot: &Value) -> Option<Vec<String>> {
    // A claim's namespace and the scheme: no credentials.
    let to = spec.to.as_ref().map_or("", SecretUrl::expose);
    if let Some(claim) = to.strip_prefix("pvc://") {
        return Some(vec![claim.split('/').next().unwrap_or_default().to_string()]);
    }
    if !to.starts_with("k8s://") {
        return Some(Vec::new());
    }
    let mapping: BTreeMap<&str, &str> = spec.namespace_mapping.iter().filter_map(|m| m.split_once(':')).collect();
    let held = snapshot["source"]["consistency"]["namespaces"].as_array()?;
    Some(held.iter().filter_map(Value::as_str).map(|ns| mapping.get(ns).copied().unwrap_or(ns).to_string()).collect())
}

/// A RestoreRun in `own` may write `writes` when each is `own` or matches one of `globs`.
fn allowed(own: &str, globs: &[String], writes: Option<Vec<String>>) -> Result<(), String> {
    // The backup filters' namespace globs; none given allows none (not all, as a filter would).
    let scope = tresor_sources::k8s::Filters { include_namespaces: globs.to_vec(), ..Default::default() };
    let matcher = tresor_sources::k8s::Matcher::new(&scope).ok().filter(|_| !globs.is_empty());
    let matches = |ns: &str| matcher.as_ref().is_some_and(|m| m.namespace(ns));
    let rule = format!("a RestoreRun in namespace {own} may restore only into {own} and the namespaces daemon.restore_namespaces allows");
    match writes {
        None if globs.iter().any(|g| g == "*") => Ok(()),
        None => Err(format!("the snapshot holds every namespace and cluster-scoped objects; {rule}")),
        Some(list) => match list.iter().find(|ns| *ns != own && !matches(ns)) {
            Some(ns) => Err(format!("the restore would write namespace {ns}; {rule}")),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(to: &str, mapping: &[&str]) -> RestoreRunSpec {
        serde_json::from_value(json!({"source": "s", "to": to, "namespace_mapping": mapping})).unwrap()
    }

    #[test]
    fn a_restore_run_writes_its_own_namespace_unless_the_plan_allows_more() {
        let snap = json!({"source": {"consistency": {"namespaces": ["shop", "web"]}}});
        let own = |s: &RestoreRunSpec, globs: &[&str]| {
            let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
            allowed("shop", &globs, namespaces_written(s, &snap))
        };
        assert_eq!(own(&spec("k8s://", &["web:shop"]), &[]), Ok(()));
        assert_eq!(
            own(&spec("k8s://", &["shop:shop-copy"]), &[]),
            Err("the restore would write namespace shop-copy; a RestoreRun in namespace shop may restore only into shop \
                 and the namespaces daemon.restore_namespaces allows"
                .into())
        );
        assert_eq!(own(&spec("k8s://", &["shop:shop-copy", "web:web-copy"]), &["*-copy"]), Ok(()));
        assert_eq!(own(&spec("pvc://shop/data", &[]), &[]), Ok(()));
        assert!(own(&spec("pvc://other/data", &[]), &["staging-*"]).unwrap_err().starts_with("the restore would write namespace other;"));
        assert_eq!(own(&spec("redis://127.0.0.1:6379", &[]), &[]), Ok(()), "a service outside the cluster");
        let whole = json!({"source": {"kind": "k8s"}});
        assert!(
            allowed("shop", &[], namespaces_written(&spec("k8s://", &[]), &whole)).unwrap_err().starts_with("the snapshot holds every")
        );
        assert_eq!(allowed("shop", &["*".into()], namespaces_written(&spec("k8s://", &[]), &whole)), Ok(()));
    }

    /// A DrillRun whose drill failed shows no RTO or RPO: it measured none.
    #[test]
    fn a_failed_drill_run_shows_no_rto() {
        let drill = |passed: bool| Outcome {
            status: if passed { "succeeded" } else { "failed" }.into(),
            summary: Some(json!([{"passed": passed, "rto_seconds": 0.334, "rpo_seconds": 12.5, "bytes": 0}])),
            ..Outcome::default()
        };
        let at = DateTime::parse_from_rfc3339("2026-12-07T19:49:00Z").unwrap().to_utc();
        let figures = |s: Value| (s["rto_seconds"].clone(), s["rpo_seconds"].clone());
        assert_eq!(figures(ended(&drill(false), Some(7), false, at)), (Value::Null, Value::Null));
        assert_eq!(figures(ended(&drill(true), Some(7), false, at)), (json!(0.334), json!(12.5)));
    }

    #[test]
    fn names_and_actors_round_trip() {
        assert_eq!(run_name("Shop_Volumes.db", 42), "shop-volumes-db-42");
        assert_eq!(label_value("shop-volumes.shop.logs"), "shop-volumes.shop.logs");
        assert_eq!(label_value("-a b-"), "a-b");
        let actor = actor_of(RunKind::Restore, "shop", "before-upgrade");
        assert_eq!(actor, "RestoreRun shop/before-upgrade");
        assert_eq!(named_by(&actor, RunKind::Restore).as_deref(), Some("before-upgrade"));
        assert_eq!(named_by(&actor, RunKind::Backup), None);
        assert_eq!(named_by("api:admin", RunKind::Restore), None);
    }
}
