//! The controllers a real cluster runs beside its API server, where tresor
//! meets them, run synchronously inside the write that triggers them, so a
//! test meets their effects every time rather than by chance:
//! - a new namespace gets its `default` ServiceAccount and the
//!   `kube-root-ca.crt` ConfigMap;
//! - a Service with a selector gets its Endpoints and EndpointSlice;
//! - a Job gets a pod from its template (through Pod Security admission:
//!   a refused pod is a `FailedCreate` event on the Job, as the job
//!   controller reports it), and the pod is scheduled onto the one node
//!   when its node selector and affinity allow (else a `FailedScheduling`
//!   event); a pod's terminal phase, set through `pods/status` as a kubelet
//!   does, makes the Job complete, or fail and try again up to its
//!   `backoffLimit`;
//! - a Deployment or StatefulSet reports its replicas all ready as soon as
//!   its spec asks for them (a kubelet that starts every pod at once); at
//!   zero the counts are left out, as the API server omits zero counts;
//! - deleting an object deletes its dependents (ownerReferences) unless the
//!   propagation policy orphans them: Jobs orphan their pods by default, as
//!   batch/v1 does;
//! - a deleted namespace loses its objects at once but stays, Terminating,
//!   for the store's `namespace_termination`; meanwhile nothing can be
//!   created in it, nor it again, and a second delete is a 409 Conflict.
//!   It is gone at the first request after that time.

use serde_json::{Value, json};

use crate::kube_store::{ApiError, Part, Res, Store, key};

/// The fake cluster's one node.
pub const NODE: &str = "fake-node";

pub fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE,
        "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn res(store: &Store, group: &str, plural: &str) -> Res {
    store.resources.iter().find(|r| r.group == group && r.plural == plural).cloned().expect("a built-in resource")
}

fn owner(obj: &Value) -> Value {
    json!({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true})
}

/// What the cluster's controllers do once `obj` was created.
pub fn created(store: &mut Store, r: &Res, obj: &Value) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    match (r.group.as_str(), r.plural.as_str()) {
        ("", "namespaces") => namespace_defaults(store, obj["metadata"]["name"].as_str().unwrap_or_default()),
        ("", "services") if obj["spec"]["selector"].as_object().is_some_and(|s| !s.is_empty()) => endpoints(store, &ns, obj),
        ("batch", "jobs") if obj["spec"]["suspend"] != true => job_pod(store, &ns, obj),
        _ => updated(store, r, obj),
    }
}

/// What the cluster's controllers do once `obj`'s spec was written.
pub fn updated(store: &mut Store, r: &Res, obj: &Value) {
    if r.group == "apps" && (r.plural == "deployments" || r.plural == "statefulsets") {
        workload_status(store, r, obj);
    }
}

/// The workload controllers: every replica the spec asks for is ready.
fn workload_status(store: &mut Store, r: &Res, obj: &Value) {
    let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1);
    let status = match replicas {
        0 => json!({}),
        n => json!({"replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n, "currentReplicas": n}),
    };
    if obj["status"] == status || (replicas == 0 && obj["status"].is_null()) {
        return;
    }
    let ns = obj["metadata"]["namespace"].as_str().map(String::from);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut with = obj.clone();
    with["status"] = status;
    with["metadata"]["resourceVersion"] = Value::Null;
    let _ = store.replace(r, ns.as_deref(), &name, with, Part::Status);
}

fn made(store: &mut Store, group: &str, plural: &str, ns: Option<&str>, obj: Value) {
    let r = res(store, group, plural);
    // A controller that finds its object made already leaves it be.
    let _ = store.create(&r, ns, obj);
}

fn namespace_defaults(store: &mut Store, ns: &str) {
    made(store, "", "serviceaccounts", Some(ns), json!({"metadata": {"name": "default", "namespace": ns}}));
    let ca = json!({"metadata": {"name": "kube-root-ca.crt", "namespace": ns,
        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"}});
    made(store, "", "configmaps", Some(ns), ca);
}

fn endpoints(store: &mut Store, ns: &str, svc: &Value) {
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    let ports: Vec<Value> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| json!({"name": p["name"], "port": p["port"], "protocol": "TCP"}))
        .collect();
    made(
        store,
        "",
        "endpoints",
        Some(ns),
        json!({"metadata": {"name": name, "namespace": ns, "labels": {"endpoints.kubernetes.io/managed-by": "endpoint-controller"}}}),
    );
    let slice = json!({"metadata": {"name": format!("{name}-{:05x}", store.rv & 0xfffff), "namespace": ns,
        "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        "ownerReferences": [owner(svc)]},
        "addressType": "IPv4", "endpoints": [], "ports": ports});
    made(store, "discovery.k8s.io", "endpointslices", Some(ns), slice);
}

/// An event about `about`, as controllers record them.
pub fn event(store: &mut Store, about: &Value, kind: &str, reason: &str, message: &str, component: &str) {
    let ns = about["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = format!("{}.{:016x}", about["metadata"]["name"].as_str().unwrap_or_default(), store.rv);
    let ev = json!({"metadata": {"name": name, "namespace": ns},
        "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"], "namespace": ns,
            "name": about["metadata"]["name"], "uid": about["metadata"]["uid"]},
        "type": kind, "reason": reason, "message": message, "source": {"component": component}, "count": 1,
        "firstTimestamp": "2026-11-21T10:00:00Z", "lastTimestamp": "2026-11-21T10:00:00Z"});
    made(store, "", "events", Some(&ns), ev);
}

fn job_pod(store: &mut Store, ns: &str, job: &Value) {
    let job_name = job["metadata"]["name"].as_str().unwrap_or_default();
    let uid = job["metadata"]["uid"].clone();
    let template = &job["spec"]["template"];
    let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    for (k, v) in [("job-name", json!(job_name)), ("batch.kubernetes.io/job-name", json!(job_name)), ("controller-uid", uid.clone())] {
        labels.insert(k.into(), v);
    }
    let name = format!("{job_name}-{:05x}", store.rv & 0xfffff);
    let pod = json!({"metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner(job)]},
        "spec": template["spec"]});
    let pods = res(store, "", "pods");
    match store.create(&pods, Some(ns), pod) {
        Ok(_) => {
            event(store, job, "Normal", "SuccessfulCreate", &format!("Created pod: {name}"), "job-controller");
            set_job_status(store, ns, job_name, |s| s["active"] = json!(1));
        }
        Err(e) => event(store, job, "Warning", "FailedCreate", &format!("Error creating: {}", e.message), "job-controller"),
    }
}

/// Place a new pod on the node, or leave it Pending with the scheduler's reason.
pub fn schedule(pod: &mut Value) -> Option<String> {
    let node = node();
    let labels = node["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let selector_ok = pod["spec"]["nodeSelector"].as_object().is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let affinity_ok = terms.as_array().is_none_or(|ts| ts.iter().any(|t| term_matches(t, &labels)));
    let named_ok = pod["spec"]["nodeName"].as_str().is_none_or(|n| n == NODE);
    if selector_ok && affinity_ok && named_ok {
        pod["spec"]["nodeName"] = NODE.into();
        pod["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
        return None;
    }
    pod["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]});
    Some(
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            .into(),
    )
}

fn term_matches(term: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let exprs = |k: &str| term[k].as_array().cloned().unwrap_or_default();
    let value_of = |field: bool, key: &str| if field { (key == "metadata.name").then(|| json!(NODE)) } else { labels.get(key).cloned() };
    let ok = |field: bool, e: &Value| {
        let have = value_of(field, e["key"].as_str().unwrap_or_default());
        let values = e["values"].as_array().cloned().unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            _ => false,
        }
    };
    exprs("matchExpressions").iter().all(|e| ok(false, e)) && exprs("matchFields").iter().all(|e| ok(true, e))
}

fn set_job_status(store: &mut Store, ns: &str, name: &str, change: impl FnOnce(&mut Value)) {
    let jobs = res(store, "batch", "jobs");
    let Ok(mut job) = store.get(&jobs, Some(ns), name) else { return };
    if !job["status"].is_object() {
        job["status"] = json!({});
    }
    change(&mut job["status"]);
    job["metadata"]["resourceVersion"] = Value::Null;
    let _ = store.replace(&jobs, Some(ns), name, job, Part::Status);
}

/// A pod's status changed: its Job follows a terminal phase.
pub fn pod_status(store: &mut Store, pod: &Value) {
    let Some(own) = pod["metadata"]["ownerReferences"].as_array().and_then(|o| o.iter().find(|o| o["kind"] == "Job")) else { return };
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    let job_name = own["name"].as_str().unwrap_or_default().to_string();
    let jobs = res(store, "batch", "jobs");
    let Ok(job) = store.get(&jobs, Some(&ns), &job_name) else { return };
    match pod["status"]["phase"].as_str() {
        Some("Succeeded") => set_job_status(store, &ns, &job_name, |s| {
            s["active"] = json!(0);
            s["succeeded"] = json!(1);
            s["conditions"] = json!([{"type": "Complete", "status": "True"}]);
        }),
        Some("Failed") => {
            let failed = job["status"]["failed"].as_u64().unwrap_or(0) + 1;
            let limit = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
            set_job_status(store, &ns, &job_name, |s| {
                s["active"] = json!(0);
                s["failed"] = json!(failed);
                if failed > limit {
                    s["conditions"] = json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]);
                }
            });
            if failed <= limit {
                job_pod(store, &ns, &job);
            }
        }
        _ => {}
    }
}

/// How a delete treats the deleted object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Cascade,
}

impl Propagation {
    /// From the DeleteOptions body or query; Jobs orphan by default (batch/v1's legacy default).
    pub fn of(r: &Res, body: &Value, query: Option<&str>) -> Propagation {
        let given = body["propagationPolicy"].as_str().or(query);
        let orphan_default = r.group == "batch" && r.plural == "jobs";
        match given {
            Some("Orphan") => Propagation::Orphan,
            Some(_) => Propagation::Cascade,
            None if body["orphanDependents"] == true || orphan_default => Propagation::Orphan,
            None => Propagation::Cascade,
        }
    }
}

/// The garbage collector: dependents of a deleted object go too, or lose their owner.
pub fn deleted(store: &mut Store, obj: &Value, policy: Propagation) -> Result<(), ApiError> {
    let uid = obj["metadata"]["uid"].clone();
    let dependents: Vec<(String, Value)> = store
        .objects
        .iter()
        .filter(|(_, v)| v["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|o| o["uid"] == uid)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, mut dep) in dependents {
        if policy == Propagation::Orphan {
            let refs = dep["metadata"]["ownerReferences"].as_array_mut().expect("filtered on it");
            refs.retain(|o| o["uid"] != uid);
            if refs.is_empty() {
                dep["metadata"].as_object_mut().map(|m| m.remove("ownerReferences"));
            }
            store.objects.insert(key, dep);
            continue;
        }
        let (group, plural) = {
            let mut parts = key.splitn(3, '/');
            (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string())
        };
        let r = res(store, &group, &plural);
        let ns = dep["metadata"]["namespace"].as_str().map(String::from);
        let name = dep["metadata"]["name"].as_str().unwrap_or_default().to_string();
        // An earlier cascade in this loop may have taken it already.
        if store.objects.contains_key(&key) {
            store.delete(&r, ns.as_deref(), &name, Propagation::Cascade)?;
        }
    }
    Ok(())
}

/// Whether namespace `ns` is being deleted.
pub fn is_terminating(store: &Store, ns: &str) -> bool {
    store.terminating.iter().any(|(n, _)| n == ns)
}

/// The first delete of a namespace: its objects go, and it is Terminating
/// until [`purge_namespaces`] finds its time up.
pub fn terminate_namespace(store: &mut Store, res: &Res, name: &str) -> Result<Value, ApiError> {
    let mut ns = store.get(res, None, name)?;
    if is_terminating(store, name) {
        let why = "The system is ensuring all content is removed from this namespace.  \
                   Upon completion, this namespace will automatically be purged by the system.";
        return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on namespaces \"{name}\": {why}")));
    }
    store.objects.retain(|_, v| v["metadata"]["namespace"] != name);
    store.rv += 1;
    ns["metadata"]["resourceVersion"] = store.rv.to_string().into();
    ns["metadata"]["deletionTimestamp"] = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string().into();
    ns["status"]["phase"] = "Terminating".into();
    store.objects.insert(key(res, None, name), ns.clone());
    store.record("MODIFIED", res, &ns);
    store.terminating.push((name.to_string(), std::time::Instant::now()));
    Ok(ns)
}

/// Namespaces whose termination time is up are gone: the time as set now,
/// so a test may end a termination it started long.
pub fn purge_namespaces(store: &mut Store) {
    let time = store.namespace_termination;
    let (done, left): (Vec<_>, Vec<_>) =
        std::mem::take(&mut store.terminating).into_iter().partition(|(_, deleted)| deleted.elapsed() >= time);
    store.terminating = left;
    let r = res(store, "", "namespaces");
    for (name, _) in done {
        if let Some(obj) = store.objects.remove(&key(&r, None, &name)) {
            store.rv += 1;
            store.record("DELETED", &r, &obj);
        }
    }
}
