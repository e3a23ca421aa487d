//! Persistent volumes: a Job in the claim's namespace mounts it and runs
//! `tresor backup /data` (or, for a restore, `tresor restore … --target
//! /data --verify` into a new claim). With a CSI snapshot class, the Job
//! backs up a clone made from a VolumeSnapshot instead of the live claim,
//! and the clone and the snapshot are removed once the Job has ended.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::k8s::{api_message, client};
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
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource { group: group.into(), version: version.into(), api_version: api_version.into(), kind: kind.into(), plural: plural.into() }
}

fn dynamic(v: Value) -> Result<DynamicObject> {
    serde_json::from_value(v).map_err(|e| Error::failed("k8s://", e))
}

fn job(name: &str, ns: &str, image: &str, secret: &str, claim: &str, read_only: bool, args: Vec<String>) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "tresor"}},
        "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "tresor"}}, "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "tresor", "image": image, "args": args, "envFrom": [{"secretRef": {"name": secret}}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": read_only}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}]}}}
    })
}

/// Create the objects of a volume backup; their names, `Kind/name`.
pub async fn backup(url: &str, v: &VolumeJob, stamp: &str) -> Result<Vec<String>> {
    let client = client(url).await?;
    let fail = |e: kube::Error| Error::failed(url, api_message(&e));
    let pvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &v.namespace, &resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"));
    let source = pvcs.get(&v.claim).await.map_err(fail)?;
    let mut made = Vec::new();
    let mut claim = v.claim.clone();
    if let Some(class) = &v.csi_snapshot_class {
        let snap_name = format!("tresor-{}-{stamp}", v.claim);
        let snaps: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &v.namespace,
            &resource("snapshot.storage.k8s.io/v1", "VolumeSnapshot", "volumesnapshots"),
        );
        let snap = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": snap_name, "namespace": v.namespace, "labels": {"app.kubernetes.io/managed-by": "tresor"}},
            "spec": {"volumeSnapshotClassName": class, "source": {"persistentVolumeClaimName": v.claim}}});
        snaps.create(&PostParams::default(), &dynamic(snap)?).await.map_err(fail)?;
        made.push(format!("VolumeSnapshot/{snap_name}"));
        claim = format!("{snap_name}-clone");
        let spec = serde_json::to_value(&source).unwrap_or_default()["spec"].clone();
        let clone = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": v.namespace, "labels": {"app.kubernetes.io/managed-by": "tresor"}},
            "spec": {"accessModes": spec["accessModes"], "storageClassName": spec["storageClassName"], "resources": spec["resources"],
                     "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap_name}}});
        pvcs.create(&PostParams::default(), &dynamic(clone)?).await.map_err(fail)?;
        made.push(format!("PersistentVolumeClaim/{claim}"));
    }
    let name = format!("tresor-backup-{}-{stamp}", v.claim);
    let tags = if v.tags.is_empty() { vec![format!("source=pvc:{}/{}", v.namespace, v.claim)] } else { v.tags.clone() };
    let mut args = vec!["backup".into(), "/data".into(), "--host".into(), format!("{}/{}", v.namespace, v.claim)];
    for t in tags {
        args.extend(["--tag".into(), t]);
    }
    let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &v.namespace, &resource("batch/v1", "Job", "jobs"));
    jobs.create(&PostParams::default(), &dynamic(job(&name, &v.namespace, &v.image, &v.secret, &claim, true, args))?)
        .await
        .map_err(fail)?;
    made.push(format!("Job/{name}"));
    if let Some(limit) = v.wait {
        let outcome = wait(&jobs, &name, limit).await;
        cleanup(&client, &v.namespace, &made).await;
        outcome.map_err(|why| Error::failed(url, format!("Job {name}: {why}")))?;
    }
    Ok(made)
}

/// Create a claim and a Job that restores `snapshot` into it.
pub async fn restore(
    url: &str,
    v: &VolumeJob,
    snapshot: &str,
    size: &str,
    storage_class: Option<&str>,
    stamp: &str,
) -> Result<Vec<String>> {
    let client = client(url).await?;
    let fail = |e: kube::Error| Error::failed(url, api_message(&e));
    let pvcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &v.namespace, &resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"));
    let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(sc) = storage_class {
        spec["storageClassName"] = sc.into();
    }
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": v.claim, "namespace": v.namespace, "labels": {"app.kubernetes.io/managed-by": "tresor"}}, "spec": spec});
    pvcs.create(&PostParams::default(), &dynamic(claim)?).await.map_err(fail)?;
    let name = format!("tresor-restore-{}-{stamp}", v.claim);
    let args = vec!["restore".into(), snapshot.into(), "--target".into(), "/data".into(), "--verify".into()];
    let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &v.namespace, &resource("batch/v1", "Job", "jobs"));
    jobs.create(&PostParams::default(), &dynamic(job(&name, &v.namespace, &v.image, &v.secret, &v.claim, false, args))?)
        .await
        .map_err(fail)?;
    let made = vec![format!("PersistentVolumeClaim/{}", v.claim), format!("Job/{name}")];
    if let Some(limit) = v.wait {
        wait(&jobs, &name, limit).await.map_err(|why| Error::failed(url, format!("Job {name}: {why}")))?;
    }
    Ok(made)
}

/// Until the Job succeeded (Ok), failed or ran out of time (Err).
async fn wait(jobs: &Api<DynamicObject>, name: &str, limit: Duration) -> std::result::Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let job = jobs.get(name).await.map_err(|e| api_message(&e))?;
        let status = serde_json::to_value(&job).unwrap_or_default()["status"].clone();
        if status["succeeded"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
        if status["failed"].as_u64().unwrap_or(0) > 2 {
            return Err("failed three times; see its pod's log".into());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("did not finish within {}s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Remove the clone and the snapshot a backup made for itself.
async fn cleanup(client: &Client, ns: &str, made: &[String]) {
    for m in made {
        let Some((kind, name)) = m.split_once('/') else { continue };
        let ar = match kind {
            "VolumeSnapshot" => resource("snapshot.storage.k8s.io/v1", kind, "volumesnapshots"),
            "PersistentVolumeClaim" => resource("v1", kind, "persistentvolumeclaims"),
            _ => continue,
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}
