//! Restoring Kubernetes objects: in dependency order (CRDs, namespaces,
//! storage classes, volumes and claims, service accounts and RBAC, config
//! and secrets, workloads, the rest), with namespace mapping, the backup's
//! filters, and a choice for objects that exist (skip, the default, or
//! update). Every object gets its own result; a failure stops nothing else.
//! Objects the cluster makes itself (Endpoints of Services with selectors,
//! EndpointSlices, `kube-root-ca.crt`, default ServiceAccounts, token
//! Secrets) are skipped with that reason, and a create that meets one a
//! controller made meanwhile (409) follows the same choice as any object
//! that exists. Transforms (`k8s_transform.rs`) rewrite objects for another
//! cluster, and a rehearsal's rewrites keep what it restores from touching
//! production; each object's result lists what they changed.

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams, ResourceExt};
use kube::discovery::{ApiResource, Discovery, Scope};
use serde::Serialize;
use serde_json::Value;

use crate::k8s::{Filters, Matcher, api_message, client};
use crate::k8s_transform::{Compiled, REHEARSAL_LABEL, Rehearsal, Transforms};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Existing {
    #[default]
    Skip,
    Update,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub filters: Filters,
    /// Old namespace → new.
    pub mapping: BTreeMap<String, String>,
    pub existing: Existing,
    pub dry_run: bool,
    /// Send every object with `dryRun=All`: the API validates and admits
    /// it, and stores nothing. Namespaces it needs are created for real and
    /// removed afterwards (a drill).
    pub server_dry_run: bool,
    /// Storage classes, registries and JSON patches for another cluster.
    pub transforms: Transforms,
    /// A rehearsal's safety rewrites; cluster-scoped objects only with
    /// `filters.include_cluster_resources: Some(true)`.
    pub rehearsal: Option<Rehearsal>,
}

impl RestoreOptions {
    /// A rehearsal inside a live cluster: each namespace into `<ns>-dr`,
    /// Deployments, StatefulSets and ReplicaSets scaled to 0, CronJobs and
    /// Jobs suspended, DaemonSets on no node, Ingress hosts prefixed `dr-`,
    /// no Pods and no cluster-scoped objects; nothing that exists replaced.
    pub fn rehearsal() -> RestoreOptions {
        RestoreOptions { rehearsal: Some(Rehearsal::default()), ..RestoreOptions::default() }
    }

    /// Where the snapshot's namespace `ns` is restored.
    pub fn namespace_for(&self, ns: &str) -> String {
        match (self.mapping.get(ns), &self.rehearsal) {
            (Some(to), _) => to.clone(),
            (None, Some(r)) => format!("{ns}{}", r.namespace_suffix),
            (None, None) => ns.to_string(),
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectResult {
    /// `Kind namespace/name` (or `Kind name` for cluster objects), after mapping.
    pub object: String,
    /// `created`, `updated`, `skipped`, `failed`, or with `--dry-run` `would create` and so on.
    pub result: String,
    pub detail: String,
    /// What the transforms changed, e.g. `storageClassName: fast -> standard`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// Restore order by kind: what others depend on comes first.
fn rank(kind: &str) -> u8 {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        "StorageClass" => 2,
        "PersistentVolume" => 3,
        "PersistentVolumeClaim" => 4,
        "ServiceAccount" => 5,
        "ClusterRole" | "Role" => 6,
        "ClusterRoleBinding" | "RoleBinding" => 7,
        "ConfigMap" | "Secret" => 8,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob" | "Pod" => 9,
        "Service" | "Ingress" => 10,
        _ => 11,
    }
}

pub(crate) struct Item {
    obj: Value,
    ns: Option<String>,
    /// The namespace in the snapshot.
    old_ns: Option<String>,
    name: String,
    kind: String,
    changes: Vec<String>,
}

impl Item {
    fn namespace(obj: Value, name: &str) -> Item {
        Item { obj, ns: None, old_ns: None, name: name.into(), kind: "Namespace".into(), changes: Vec::new() }
    }

    fn label(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

fn result(item: &Item, result: &str, detail: impl Into<String>) -> ObjectResult {
    ObjectResult { object: item.label(), result: result.into(), detail: detail.into(), changes: item.changes.clone() }
}

/// The plural of a kind: from discovery, else from a CRD being restored.
fn plural_of(discovery: &Discovery, objects: &[Value], group: &str, kind: &str) -> String {
    let known = discovery.groups().filter(|g| g.name() == group).flat_map(|g| g.recommended_resources()).find(|(ar, _)| ar.kind == kind);
    if let Some((ar, _)) = known {
        return ar.plural;
    }
    objects
        .iter()
        .find(|o| o["kind"] == "CustomResourceDefinition" && o["spec"]["names"]["kind"] == kind && o["spec"]["group"] == group)
        .and_then(|o| o["spec"]["names"]["plural"].as_str().map(String::from))
        .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
}

/// The objects to restore, mapped, filtered, transformed, in order; and
/// those left out or failing their transforms, with why.
pub(crate) fn prepare(
    objects: Vec<Value>,
    plurals: Vec<String>,
    m: &Matcher,
    o: &RestoreOptions,
    t: &Compiled,
) -> (Vec<Item>, Vec<ObjectResult>) {
    // Services with selectors, by their mapped namespace and name: their endpoints are the cluster's to make.
    let services: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|obj| obj["kind"] == "Service" && obj["spec"]["selector"].as_object().is_some_and(|s| !s.is_empty()))
        .filter_map(|obj| Some((o.namespace_for(obj["metadata"]["namespace"].as_str()?), obj["metadata"]["name"].as_str()?.to_string())))
        .collect();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (obj, plural) in objects.into_iter().zip(plurals) {
        let Some(mut item) = place(obj, &plural, m, o) else { continue };
        if let Some(why) = left_out(&item, &services, o) {
            skipped.push(result(&item, "skipped", why));
            continue;
        }
        match t.apply(&mut item.obj, item.old_ns.as_deref(), o.rehearsal.as_ref()) {
            Ok(changes) => item.changes = changes,
            Err(why) => {
                skipped.push(result(&item, "failed", why));
                continue;
            }
        }
        items.push(item);
    }
    items.sort_by(|a, b| rank(&a.kind).cmp(&rank(&b.kind)).then(a.kind.cmp(&b.kind)).then(a.ns.cmp(&b.ns)).then(a.name.cmp(&b.name)));
    (items, skipped)
}

/// An object the filters take, in its new namespace (and a Namespace under its new name).
fn place(mut obj: Value, plural: &str, m: &Matcher, o: &RestoreOptions) -> Option<Item> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let old_ns = obj["metadata"]["namespace"].as_str().map(String::from);
    let group = obj["apiVersion"].as_str().and_then(|v| v.rsplit_once('/')).map_or("", |(g, _)| g).to_string();
    let scope_ns = old_ns.clone().or_else(|| (kind == "Namespace").then(|| name.clone()));
    if scope_ns.as_deref().is_some_and(|ns| !m.namespace(ns)) || !m.resource(&kind, plural, &group, &[]) {
        return None;
    }
    let ns = old_ns.as_deref().map(|n| o.namespace_for(n));
    let name = if kind == "Namespace" { o.namespace_for(&name) } else { name };
    obj["metadata"]["name"] = name.clone().into();
    if let Some(ns) = &ns {
        obj["metadata"]["namespace"] = ns.clone().into();
    }
    if kind == "Service" {
        // Cluster IPs are the new cluster's to assign.
        for f in ["clusterIP", "clusterIPs"] {
            obj["spec"].as_object_mut().map(|s| s.remove(f));
        }
    }
    Some(Item { obj, ns, old_ns, name, kind, changes: Vec::new() })
}

/// Why an object is not restored: the cluster makes it, its owner's
/// controller does, or a rehearsal leaves it out.
fn left_out(item: &Item, services: &BTreeSet<(String, String)>, o: &RestoreOptions) -> Option<String> {
    if let Some(why) = made_by_the_cluster(item, services, o.existing) {
        return Some(why.into());
    }
    if let Some(owner) = item.obj["metadata"]["ownerReferences"].as_array().and_then(|o| o.first()) {
        let by = format!("{} {}", owner["kind"].as_str().unwrap_or("?"), owner["name"].as_str().unwrap_or("?"));
        return Some(format!("owned by {by}: its controller recreates it"));
    }
    o.rehearsal.as_ref()?;
    if item.ns.is_none() && item.kind != "Namespace" && o.filters.include_cluster_resources != Some(true) {
        return Some("cluster-scoped: a rehearsal leaves it out (--include-cluster-resources true restores it)".into());
    }
    (item.kind == "Pod").then(|| "a rehearsal starts no Pods: their workloads come back scaled to 0".into())
}

/// Why the cluster makes this object itself, so a restore leaves it to the cluster.
fn made_by_the_cluster(item: &Item, services: &BTreeSet<(String, String)>, existing: Existing) -> Option<&'static str> {
    let o = &item.obj;
    let ns = item.ns.clone().unwrap_or_default();
    match item.kind.as_str() {
        "Endpoints" if services.contains(&(ns, item.name.clone())) => {
            Some("made by the cluster: the endpoints of a Service with a selector")
        }
        "EndpointSlice" if o["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io" => {
            Some("made by the cluster: the endpoint slice of a Service with a selector")
        }
        "ConfigMap" if item.name == "kube-root-ca.crt" => Some("made by the cluster in every namespace: the API server's CA"),
        "Secret" if o["type"] == "kubernetes.io/service-account-token" => Some("made by the cluster: a service account's token"),
        // The default account's settings (image pull secrets) are restored when asked to update.
        "ServiceAccount" if item.name == "default" && existing == Existing::Skip => {
            Some("made by the cluster in every namespace; --existing update restores its settings")
        }
        _ => None,
    }
}

fn resource_of(discovery: &Discovery, obj: &Value) -> Option<(ApiResource, bool)> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    discovery
        .groups()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.versioned_resources(version))
        .find(|(ar, _)| ar.kind == kind)
        .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced))
}

async fn discover(client: &Client, url: &str) -> Result<Discovery> {
    Discovery::new(client.clone()).run().await.map_err(|e| Error::failed(url, format!("API discovery failed: {}", api_message(&e))))
}

/// Where a restore (mapping, a rehearsal's rewrites) writes into an object:
/// each must be a mapping or absent.
const WRITTEN: [&[&str]; 4] =
    [&["spec"], &["spec", "template"], &["spec", "template", "spec"], &["spec", "template", "spec", "nodeSelector"]];

fn mapping_or_absent(obj: &Value, path: &[&str]) -> bool {
    let v = path.iter().fold(obj, |v, key| &v[*key]);
    v.is_object() || v.is_null()
}

/// The objects of a snapshot's YAML files (path, contents). Each must be a
/// mapping with a mapping under `metadata`: the restore writes into both.
pub(crate) fn parse_objects(url: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<Value>> {
    files
        .iter()
        .map(|(path, yaml)| {
            let obj = serde_norway::from_slice::<Value>(yaml)
                .map_err(|e| Error::failed(url, format!("{path} in the snapshot is not YAML: {e}")))?;
            if !obj.is_object() || !obj["metadata"].is_object() || !WRITTEN.iter().all(|path| mapping_or_absent(&obj, path)) {
                return Err(Error::failed(
                    url,
                    format!(
                        "{path} in the snapshot is not a Kubernetes object (a mapping with metadata, and mappings where a restore writes)"
                    ),
                ));
            }
            Ok(obj)
        })
        .collect()
}

/// Restore the YAML `files` of a snapshot (path, contents) into the cluster `url` names.
pub async fn restore(url: &str, files: Vec<(String, Vec<u8>)>, o: &RestoreOptions) -> Result<Vec<ObjectResult>> {
    let m = Matcher::new(&o.filters)?;
    let t = o.transforms.compile().map_err(|e| Error::failed(url, e))?;
    if o.rehearsal.is_some()
        && let Some((ns, _)) = o.mapping.iter().find(|(from, to)| from == to)
    {
        return Err(Error::failed(
            url,
            format!("a rehearsal restores beside production: --namespace-mapping {ns}:{ns} would write into {ns}"),
        ));
    }
    let objects = parse_objects(url, &files)?;
    let client = client(url).await?;
    let mut discovery = discover(&client, url).await?;
    let plurals = objects
        .iter()
        .map(|obj| {
            let group = obj["apiVersion"].as_str().and_then(|v| v.rsplit_once('/')).map_or("", |(g, _)| g);
            plural_of(&discovery, &objects, group, obj["kind"].as_str().unwrap_or_default())
        })
        .collect();
    let (items, mut out) = prepare(objects, plurals, &m, o, &t);
    let restored_ns: BTreeSet<String> = items.iter().filter(|i| i.kind == "Namespace").map(|i| i.name.clone()).collect();
    let needed_ns: BTreeSet<String> = items.iter().filter_map(|i| i.ns.clone()).filter(|n| !restored_ns.contains(n)).collect();
    let mut scratch_ns = Vec::new();
    let made: Vec<String> = needed_ns.iter().chain(restored_ns.iter().filter(|_| o.server_dry_run)).cloned().collect();
    if o.server_dry_run {
        out.extend(sweep_scratch(&client, &discovery, &made).await);
    }
    for ns in &made {
        let mut obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        if o.server_dry_run {
            obj["metadata"]["labels"][SCRATCH_LABEL] = "true".into();
        }
        if o.rehearsal.is_some() {
            obj["metadata"]["labels"][REHEARSAL_LABEL] = "true".into();
        }
        let item = Item::namespace(obj, ns);
        // Made when missing, never replaced: an existing namespace keeps its
        // labels (Pod Security's among them) whatever `--existing` says.
        let real = RestoreOptions { server_dry_run: false, existing: Existing::Skip, ..o.clone() };
        let r = apply(&client, &discovery, &item, &real).await;
        if o.server_dry_run && r.result == "created" {
            scratch_ns.push(ns.clone());
        }
        if !(o.server_dry_run && restored_ns.contains(ns)) {
            out.push(r);
        }
    }
    // Custom resources are known to discovery only once their definitions
    // exist: after CRDs were written, discovery is asked again.
    let mut stale = false;
    for item in &items {
        if stale && item.kind != "CustomResourceDefinition" {
            discovery = discover(&client, url).await?;
            stale = false;
        }
        let r = apply(&client, &discovery, item, o).await;
        stale |= item.kind == "CustomResourceDefinition" && matches!(r.result.as_str(), "created" | "updated");
        out.push(r);
    }
    out.extend(remove_namespaces(&client, &discovery, &scratch_ns).await);
    Ok(out)
}

/// The label of a namespace a server-side dry run made for itself, and
/// removes after; one that carries it is no one else's (a real restore's
/// namespaces carry none), so a drill may remove it.
const SCRATCH_LABEL: &str = "tresor.dev/scratch";

/// Of the namespaces a dry run is about to make, those an earlier one left
/// (killed before it removed them): removed, with what they hold, and
/// waited for, so that this run makes them anew and removes them after.
/// One that cannot be removed is a failed result.
async fn sweep_scratch(client: &Client, discovery: &Discovery, names: &[String]) -> Vec<ObjectResult> {
    let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace"});
    let Some((ar, _)) = resource_of(discovery, &namespace) else { return Vec::new() };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let fail = |n: &str, why: String| result(&Item::namespace(namespace.clone(), n), "failed", format!("an earlier drill's {why}"));
    let (mut failed, mut deleted) = (Vec::new(), Vec::new());
    for n in names {
        let left = match api.get_opt(n).await {
            Ok(found) => found.is_some_and(|ns| ns.labels().contains_key(SCRATCH_LABEL)),
            Err(e) => {
                failed.push(fail(n, format!("scratch namespace cannot be read: {}", api_message(&e))));
                continue;
            }
        };
        if !left {
            continue;
        }
        match api.delete(n, &Default::default()).await {
            // 409: terminating already.
            Ok(_) => deleted.push(n.clone()),
            Err(kube::Error::Api(s)) if s.code == 409 => deleted.push(n.clone()),
            Err(e) => failed.push(fail(n, format!("scratch namespace stays: {}", api_message(&e)))),
        }
    }
    match gone(&api, &deleted).await {
        Ok(stays) => failed
            .extend(stays.iter().map(|n| fail(n, format!("scratch namespace is still terminating after {}s", NAMESPACE_GONE.as_secs())))),
        Err(e) => failed.extend(deleted.iter().map(|n| fail(n, format!("scratch namespace stays: {}", api_message(&e))))),
    }
    failed
}

/// Remove the namespaces a server-side dry run created for itself; one that
/// stays behind is a failed result, never a silent leftover.
async fn remove_namespaces(client: &Client, discovery: &Discovery, names: &[String]) -> Vec<ObjectResult> {
    let mut failed = Vec::new();
    let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace"});
    let Some((ar, _)) = resource_of(discovery, &namespace) else { return failed };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut deleted = Vec::new();
    for n in names {
        match api.delete(n, &Default::default()).await {
            Ok(_) => deleted.push(n.clone()),
            Err(e) => {
                let item = Item::namespace(namespace.clone(), n);
                failed.push(result(&item, "failed", format!("the drill's scratch namespace stays: {}", api_message(&e))));
            }
        }
    }
    // The next drill of the same namespace would find it terminating.
    let stays = match gone(&api, &deleted).await {
        Ok(stays) => stays.into_iter().map(|n| (n, format!("still terminating after {}s", NAMESPACE_GONE.as_secs()))).collect(),
        Err(e) => deleted.into_iter().map(|n| (n, api_message(&e))).collect::<Vec<_>>(),
    };
    for (n, why) in stays {
        failed.push(result(&Item::namespace(namespace.clone(), &n), "failed", format!("the drill's scratch namespace stays: {why}")));
    }
    failed
}

/// Until the namespaces `names` are gone, their objects with them, at most
/// [`NAMESPACE_GONE`]; those still there then.
async fn gone<K>(api: &Api<K>, names: &[String]) -> std::result::Result<Vec<String>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + NAMESPACE_GONE;
    let mut left = names.to_vec();
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for n in left {
            if api.get_opt(&n).await?.is_some() {
                still.push(n);
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    Ok(left)
}

async fn apply(client: &Client, discovery: &Discovery, item: &Item, o: &RestoreOptions) -> ObjectResult {
    let Some((ar, namespaced)) = resource_of(discovery, &item.obj) else {
        return result(item, "failed", format!("the API serves no {} in {}", item.kind, item.obj["apiVersion"].as_str().unwrap_or("?")));
    };
    let api: Api<DynamicObject> = match (&item.ns, namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    let existing = match api.get_opt(&item.name).await {
        Ok(e) => e,
        Err(e) => return result(item, "failed", api_message(&e)),
    };
    let mut obj: DynamicObject = match serde_json::from_value(item.obj.clone()) {
        Ok(d) => d,
        Err(e) => return result(item, "failed", format!("not a Kubernetes object: {e}")),
    };
    let params = PostParams { dry_run: o.server_dry_run, ..Default::default() };
    match (existing, o.existing) {
        (Some(_), Existing::Skip) => {
            result(item, if o.dry_run { "would skip" } else { "skipped" }, "it exists; --existing update replaces it")
        }
        (Some(_), Existing::Update) if o.dry_run => result(item, "would update", ""),
        (Some(cur), Existing::Update) => replace(&api, item, &mut obj, cur, &params, "").await,
        (None, _) if o.dry_run => result(item, "would create", ""),
        (None, _) => match api.create(&params, &obj).await {
            Ok(_) if o.server_dry_run => result(item, "accepted", "server-side dry run"),
            Ok(_) => result(item, "created", ""),
            // A controller made it between the look and the create: it exists, like any other.
            Err(kube::Error::Api(s)) if s.code == 409 && o.existing == Existing::Skip => {
                result(item, "skipped", "made meanwhile by the cluster; --existing update replaces it")
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&item.name).await {
                Ok(cur) => replace(&api, item, &mut obj, cur, &params, "made meanwhile by the cluster, then replaced").await,
                Err(e) => result(item, "failed", api_message(&e)),
            },
            Err(e) => result(item, "failed", api_message(&e)),
        },
    }
}

async fn replace(
    api: &Api<DynamicObject>,
    item: &Item,
    obj: &mut DynamicObject,
    cur: DynamicObject,
    params: &PostParams,
    detail: &str,
) -> ObjectResult {
    obj.metadata.resource_version = cur.metadata.resource_version;
    match api.replace(&item.name, params, obj).await {
        Ok(_) if params.dry_run => result(item, "accepted", "server-side dry run"),
        Ok(_) => result(item, "updated", detail),
        Err(e) => result(item, "failed", api_message(&e)),
    }
}

/// Remove every namespace a rehearsal made (they carry `REHEARSAL_LABEL`):
/// what an earlier rehearsal kept, or left when it was killed. The names removed.
pub async fn remove_rehearsal_namespaces(url: &str) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Namespace;
    let client = client(url).await?;
    let api: Api<Namespace> = Api::all(client);
    let list =
        api.list(&Default::default()).await.map_err(|e| Error::failed(url, format!("cannot list namespaces: {}", api_message(&e))))?;
    let mut removed = Vec::new();
    for ns in list.items {
        let name = ns.metadata.name.unwrap_or_default();
        if ns.metadata.labels.as_ref().and_then(|l| l.get(REHEARSAL_LABEL)).is_none() {
            continue;
        }
        api.delete(&name, &Default::default())
            .await
            .map_err(|e| Error::failed(url, format!("the rehearsal's namespace {name} stays: {}", api_message(&e))))?;
        removed.push(name);
    }
    // A namespace is gone only once its objects are: a restore into one
    // still terminating would be refused object by object.
    let stays = gone(&api, &removed).await.map_err(|e| Error::failed(url, api_message(&e)))?;
    if let Some(name) = stays.first() {
        let why = format!("the rehearsal's namespace {name} is still terminating after {}s", NAMESPACE_GONE.as_secs());
        return Err(Error::failed(url, why));
    }
    Ok(removed)
}

/// How long removing a drill's or a rehearsal's namespaces may take.
const NAMESPACE_GONE: std::time::Duration = std::time::Duration::from_secs(300);
