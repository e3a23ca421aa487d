//! Persistent volumes: a Job in the claim's namespace mounts it and runs
//! `tresor backup /data` (or, for a restore, `tresor restore … --target
//! /data --verify` into a new claim). With a CSI snapshot class, the Job
//! backs up a clone made from a VolumeSnapshot instead of the live claim.
//!
//! Idempotent: everything made for a run is named after the run and
//! labelled with its source; an unfinished Job of the same source (a retry,
//! or a daemon that restarted) is adopted rather than doubled, and finished
//! ones found are removed. The snapshot and the clone are owned by the Job
//! (the garbage collector removes them with it) and the Job has a TTL; when
//! waiting, tresor removes all of it itself on every path and reports what
//! it could not remove.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::k8s::{api_message, client};
use crate::k8s_pod::{PodSettings, label_value, labels, name, node_of, template};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct VolumeJob {
    pub namespace: String,
    pub claim: String,
    pub image: String,
    /// A Secret with TRESOR_REPOSITORY, TRESOR_PASSWORD and storage credentials.
    pub secret: String,
    /// Back up a clone from a snapshot of this VolumeSnapshotClass.
    pub csi_snapshot_class: Option<String>,
    /// Wait for the Job and clean up after it.
    pub wait: Option<Duration>,
    /// Tags for the snapshot (default `source=pvc:NAMESPACE/CLAIM`).
    pub tags: Vec<String>,
    pub pod: PodSettings,
    /// What the objects serve (the plan's source name), for adoption.
    pub source: String,
    /// This run's id (the daemon's job id, or a time stamp): part of every name.
    pub run: String,
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource { group: group.into(), version: version.into(), api_version: api_version.into(), kind: kind.into(), plural: plural.into() }
}

fn dynamic(v: Value) -> Result<DynamicObject> {
    serde_json::from_value(v).map_err(|e| Error::failed("k8s://", e))
}

/// The APIs of one namespace that volume Jobs use.
pub(crate) struct Ns {
    url: String,
    client: Client,
    ns: String,
}

impl Ns {
    pub(crate) async fn new(url: &str, ns: &str) -> Result<Ns> {
        Ok(Ns { url: url.into(), client: client(url).await?, ns: ns.into() })
    }

    pub(crate) fn api(&self, kind: &str) -> Api<DynamicObject> {
        let ar = match kind {
            "Job" => resource("batch/v1", kind, "jobs"),
            "VolumeSnapshot" => resource("snapshot.storage.k8s.io/v1", kind, "volumesnapshots"),
            "PersistentVolumeClaim" => resource("v1", kind, "persistentvolumeclaims"),
            "Pod" => resource("v1", kind, "pods"),
            _ => resource("v1", "Event", "events"),
        };
        Api::namespaced_with(self.client.clone(), &self.ns, &ar)
    }

    pub(crate) fn fail(&self, e: kube::Error) -> Error {
        Error::failed(&self.url, api_message(&e))
    }

    /// Create `obj`; one that exists already (made by an earlier attempt of this run) is taken as it is.
    pub(crate) async fn ensure(&self, kind: &str, obj: Value) -> Result<Value> {
        let api = self.api(kind);
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match api.create(&PostParams::default(), &dynamic(obj)?).await {
            Ok(o) => Ok(serde_json::to_value(o).unwrap_or_default()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.get(&name).await.map(|o| serde_json::to_value(o).unwrap_or_default()).map_err(|e| self.fail(e))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    pub(crate) async fn list(&self, kind: &str, lp: &ListParams) -> Result<Vec<Value>> {
        let list = self.api(kind).list(lp).await.map_err(|e| self.fail(e))?;
        Ok(list.items.into_iter().map(|o| serde_json::to_value(o).unwrap_or_default()).collect())
    }

    /// Remove what a run made, Jobs with their pods; what stays, with why.
    pub(crate) async fn remove(&self, made: &[(String, String)]) -> Vec<String> {
        let mut stays = Vec::new();
        for (kind, name) in made {
            match self.api(kind).delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => stays.push(format!("{kind}/{name} stays: {}", api_message(&e))),
            }
        }
        stays
    }
}

fn finished(job: &Value) -> bool {
    job["status"]["succeeded"].as_u64().unwrap_or(0) > 0
        || job["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Failed" && c["status"] == "True"))
}

/// An unfinished Job of this source to adopt; finished ones are removed (with what they own).
pub(crate) async fn previous(k: &Ns, source: &str) -> Result<(Option<String>, Vec<String>)> {
    let lp = ListParams::default().labels(&format!("tresor.dev/source={}", label_value(source)));
    let (mut active, mut done) = (None, Vec::new());
    for job in k.list("Job", &lp).await? {
        let name = job["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match finished(&job) {
            true => done.push(("Job".to_string(), name)),
            false => active = active.or(Some(name)),
        }
    }
    Ok((active, k.remove(&done).await))
}

fn owned_by(mut obj: Value, job: &Value) -> Value {
    obj["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"], "controller": true, "blockOwnerDeletion": false}]);
    obj
}

pub(crate) fn job_object(v: &VolumeJob, name: &str, claim: &str, read_only: bool, args: Vec<String>, node: Option<&str>) -> Value {
    let l = labels(&v.source, &v.run);
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": v.namespace, "labels": l},
        // The TTL removes a Job nobody waits for any more (its daemon gone), and the GC what it owns.
        "spec": {"backoffLimit": 2, "ttlSecondsAfterFinished": 3600, "template": {"metadata": {"labels": l},
            "spec": template(&v.pod, &v.image, &v.secret, claim, read_only, &args, node)}}
    })
}

/// Make (or adopt) the objects of a volume backup; their names, `Kind/name`.
/// `adopting` hears of an earlier run's Job taken over, before the wait.
pub async fn backup(url: &str, v: &VolumeJob, adopting: impl FnOnce(&str)) -> Result<Vec<String>> {
    let k = Ns::new(url, &v.namespace).await?;
    let source = k.api("PersistentVolumeClaim").get(&v.claim).await.map_err(|e| k.fail(e))?;
    let source = serde_json::to_value(source).unwrap_or_default();
    let (adopted, stays) = previous(&k, &v.source).await?;
    if !stays.is_empty() {
        return Err(Error::failed(url, format!("an earlier run's objects could not be removed: {}", stays.join("; "))));
    }
    let name = adopted.clone().unwrap_or_else(|| name(&["tresor-backup", &v.claim, &v.run]));
    let mut made = vec![("Job".to_string(), name.clone())];
    let job = if adopted.is_some() {
        adopting(&name);
        let job = k.api("Job").get(&name).await.map_err(|e| k.fail(e))?;
        serde_json::to_value(job).unwrap_or_default()
    } else {
        let claim = if v.csi_snapshot_class.is_some() { name.clone() } else { v.claim.clone() };
        let pods = k.list("Pod", &ListParams::default()).await?;
        let node = v.csi_snapshot_class.is_none().then(|| node_of(&source, &pods)).flatten();
        let tags = if v.tags.is_empty() { vec![format!("source=pvc:{}/{}", v.namespace, v.claim)] } else { v.tags.clone() };
        let mut args = vec!["backup".into(), "/data".into(), "--host".into(), format!("{}/{}", v.namespace, v.claim)];
        tags.into_iter().for_each(|t| args.extend(["--tag".into(), t]));
        k.ensure("Job", job_object(v, &name, &claim, true, args, node.as_deref())).await?
    };
    // Also for an adopted Job: a run killed between making its Job and its
    // snapshot left a pod waiting for a claim no one else would make.
    if let Some(class) = &v.csi_snapshot_class
        && let Err(e) = clone(&k, v, &name, class, &source, &job).await
    {
        let stays = k.remove(&made).await;
        return Err(with_stays(e, url, &stays));
    }
    if v.csi_snapshot_class.is_some() {
        made.extend([("PersistentVolumeClaim".to_string(), name.clone()), ("VolumeSnapshot".to_string(), name.clone())]);
    }
    finish(&k, v, &name, made).await
}

/// A VolumeSnapshot of the claim and a clone of it, both owned by the Job.
async fn clone(k: &Ns, v: &VolumeJob, name: &str, class: &str, source: &Value, job: &Value) -> Result<()> {
    let l = labels(&v.source, &v.run);
    let snap = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": v.namespace, "labels": l},
        "spec": {"volumeSnapshotClassName": class, "source": {"persistentVolumeClaimName": v.claim}}});
    k.ensure("VolumeSnapshot", owned_by(snap, job)).await?;
    let spec = &source["spec"];
    let clone = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": v.namespace, "labels": l},
        "spec": {"accessModes": spec["accessModes"], "storageClassName": spec["storageClassName"], "resources": spec["resources"],
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name}}});
    k.ensure("PersistentVolumeClaim", owned_by(clone, job)).await?;
    Ok(())
}

fn with_stays(e: Error, url: &str, stays: &[String]) -> Error {
    match stays {
        [] => e,
        _ => Error::failed(url, format!("{e}; {}", stays.join("; "))),
    }
}

/// Wait for the Job when asked, then remove `remove` whatever the outcome; the names made.
pub(crate) async fn finish(k: &Ns, v: &VolumeJob, name: &str, remove: Vec<(String, String)>) -> Result<Vec<String>> {
    let names = remove.iter().map(|(kind, n)| format!("{kind}/{n}")).collect();
    let Some(limit) = v.wait else { return Ok(names) };
    let outcome = wait(k, name, limit).await;
    let stays = k.remove(&remove).await;
    match (outcome, stays.as_slice()) {
        (Ok(()), []) => Ok(names),
        (Ok(()), _) => Err(Error::failed(&k.url, format!("Job {name} succeeded, but {}", stays.join("; ")))),
        (Err(why), _) => Err(with_stays(Error::failed(&k.url, format!("Job {name}: {why}")), &k.url, &stays)),
    }
}

/// The claims `namespace/*` (or `*`, every namespace) names, optionally
/// narrowed by a label selector: (namespace, claim), sorted.
pub async fn claims(url: &str, namespace: Option<&str>, selector: Option<&str>) -> Result<Vec<(String, String)>> {
    let client = client(url).await?;
    let ar = resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims");
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let lp = selector.map_or_else(ListParams::default, |s| ListParams::default().labels(s));
    let list = api.list(&lp).await.map_err(|e| Error::failed(url, api_message(&e)))?;
    let mut out: Vec<(String, String)> = list
        .items
        .into_iter()
        // A clone tresor made for a CSI backup is not a volume to protect.
        .filter(|c| c.metadata.labels.as_ref().is_none_or(|l| l.get("app.kubernetes.io/managed-by").is_none_or(|m| m != "tresor")))
        .filter_map(|c| Some((c.metadata.namespace?, c.metadata.name?)))
        .collect();
    out.sort();
    Ok(out)
}

/// Create a claim and a Job that restores `snapshot` into it.
pub async fn restore(url: &str, v: &VolumeJob, snapshot: &str, size: &str, storage_class: Option<&str>) -> Result<Vec<String>> {
    let k = Ns::new(url, &v.namespace).await?;
    let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(sc) = storage_class {
        spec["storageClassName"] = sc.into();
    }
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": v.claim, "namespace": v.namespace, "labels": labels(&v.source, &v.run)}, "spec": spec});
    let made = k.ensure("PersistentVolumeClaim", claim).await?;
    if made["metadata"]["labels"]["tresor.dev/run"] != label_value(&v.run).as_str() {
        return Err(Error::failed(url, format!("claim {}/{} exists; restore into a new claim", v.namespace, v.claim)));
    }
    let name = name(&["tresor-restore", &v.claim, &v.run]);
    let args = vec!["restore".into(), snapshot.into(), "--target".into(), "/data".into(), "--verify".into()];
    k.ensure("Job", job_object(v, &name, &v.claim, false, args, None)).await?;
    match finish(&k, v, &name, vec![("Job".into(), name.clone())]).await {
        Ok(mut names) => {
            names.insert(0, format!("PersistentVolumeClaim/{}", v.claim));
            Ok(names)
        }
        Err(e) => {
            // A claim this run made and did not fill is no restore: it goes,
            // so that a retry can make it again.
            let stays = k.remove(&[("PersistentVolumeClaim".to_string(), v.claim.clone())]).await;
            Err(with_stays(e, url, &stays))
        }
    }
}

/// Until the Job succeeded (Ok), failed, was refused, or ran out of time (Err, with the cluster's words).
async fn wait(k: &Ns, name: &str, limit: Duration) -> std::result::Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let jobs = k.api("Job");
    loop {
        let job = jobs.get(name).await.map_err(|e| api_message(&e))?;
        let job = serde_json::to_value(&job).unwrap_or_default();
        if job["status"]["succeeded"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
        if finished(&job) {
            return Err("failed three times; see its pods' logs".into());
        }
        let warnings = warnings(k, name).await;
        // Admission does not change its mind by itself: a refused pod ends the wait.
        if let Some((_, m)) = warnings.iter().find(|(reason, m)| reason == "FailedCreate" && m.contains("forbidden")) {
            return Err(format!("its pod was refused: {m}"));
        }
        if tokio::time::Instant::now() > deadline {
            let last = warnings.last().map(|(reason, m)| format!("; last event: {reason}: {m}")).unwrap_or_default();
            return Err(format!("did not finish within {}s{last}", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Warning events of the Job and of its pods, oldest first: (reason, message).
async fn warnings(k: &Ns, job: &str) -> Vec<(String, String)> {
    let pods = k.list("Pod", &ListParams::default().labels(&format!("job-name={job}"))).await.unwrap_or_default();
    let mut about: Vec<String> = pods.iter().filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect();
    about.insert(0, job.to_string());
    let mut out = Vec::new();
    for name in about {
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
        for e in k.list("Event", &lp).await.unwrap_or_default().into_iter().filter(|e| e["type"] == "Warning") {
            out.push((e["reason"].as_str().unwrap_or_default().to_string(), e["message"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}
