//! The fake API server's state: the resource catalog (built-in types and
//! those that CRDs add), the objects, the resourceVersion counter, and the
//! API's semantics: create (409 on a name taken, 404 without the
//! namespace, 403 in one terminating), replace (409 on a stale
//! resourceVersion), merge patch, delete (owners take their dependents
//! along; a namespace is Terminating a while), label and field selectors; Pod Security admission (kube_admission) and
//! the cluster's controllers (kube_controllers) run inside the writes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::kube_admission::{self as admission, Level};
use crate::kube_auth::Identity;
use crate::kube_controllers::{self as controllers, Propagation};

/// Which part of an object a write is for: the object (whose `.status`
/// stays as it was when the type has a status subresource), or `/status`
/// (which changes nothing else).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    Main,
    Status,
}

#[derive(Debug, Clone)]
pub struct Res {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub short: Vec<String>,
    /// Served with a `status` subresource: the object's own endpoint leaves `.status` alone.
    pub status: bool,
    /// Reviews and the like: only `create` is served.
    pub create_only: bool,
}

impl Res {
    fn new(gv: &str, kind: &str, plural: &str, namespaced: bool, short: &[&str]) -> Res {
        let (group, version) = gv.split_once('/').unwrap_or(("", gv));
        Res {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            short: short.iter().map(|s| s.to_string()).collect(),
            status: false,
            create_only: false,
        }
    }

    fn with_status(mut self) -> Res {
        self.status = true;
        self
    }

    fn create_only(mut self) -> Res {
        self.create_only = true;
        self
    }

    pub fn group_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Discovery's entries for this resource (and its status subresource).
    pub fn describe(&self) -> Vec<Value> {
        let verbs: &[&str] = if self.create_only {
            &["create"]
        } else {
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        };
        let mut out = vec![json!({
            "name": self.plural, "singularName": self.kind.to_lowercase(), "namespaced": self.namespaced, "kind": self.kind,
            "verbs": verbs, "shortNames": self.short,
        })];
        if self.status {
            out.push(json!({"name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced, "kind": self.kind, "verbs": ["get", "patch", "update"]}));
        }
        out
    }
}

fn builtin() -> Vec<Res> {
    vec![
        Res::new("v1", "Namespace", "namespaces", false, &["ns"]).with_status(),
        Res::new("v1", "ConfigMap", "configmaps", true, &["cm"]),
        Res::new("v1", "Secret", "secrets", true, &[]),
        Res::new("v1", "Service", "services", true, &["svc"]).with_status(),
        Res::new("v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
        Res::new("v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"]).with_status(),
        Res::new("v1", "PersistentVolume", "persistentvolumes", false, &["pv"]).with_status(),
        Res::new("v1", "Pod", "pods", true, &["po"]).with_status(),
        Res::new("v1", "Event", "events", true, &["ev"]),
        Res::new("v1", "Endpoints", "endpoints", true, &["ep"]),
        Res::new("v1", "Node", "nodes", false, &["no"]).with_status(),
        Res::new("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", true, &[]),
        Res::new("coordination.k8s.io/v1", "Lease", "leases", true, &[]),
        Res::new("apps/v1", "Deployment", "deployments", true, &["deploy"]).with_status(),
        Res::new("apps/v1", "StatefulSet", "statefulsets", true, &["sts"]).with_status(),
        Res::new("apps/v1", "DaemonSet", "daemonsets", true, &["ds"]).with_status(),
        Res::new("apps/v1", "ReplicaSet", "replicasets", true, &["rs"]).with_status(),
        Res::new("networking.k8s.io/v1", "Ingress", "ingresses", true, &["ing"]).with_status(),
        Res::new("batch/v1", "Job", "jobs", true, &[]).with_status(),
        Res::new("batch/v1", "CronJob", "cronjobs", true, &["cj"]).with_status(),
        Res::new("rbac.authorization.k8s.io/v1", "Role", "roles", true, &[]),
        Res::new("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true, &[]),
        Res::new("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false, &[]),
        Res::new("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false, &[]),
        Res::new("storage.k8s.io/v1", "StorageClass", "storageclasses", false, &["sc"]),
        Res::new("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false, &["crd", "crds"]).with_status(),
        Res::new("authorization.k8s.io/v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, &[]).create_only(),
        Res::new("authorization.k8s.io/v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false, &[]).create_only(),
    ]
}

/// An API error as the server returns it: a `Status` object.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: String) -> ApiError {
        ApiError { code, reason, message, details: None }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        body
    }
}

fn not_found(res: &Res, name: &str) -> ApiError {
    ApiError::new(404, "NotFound", format!("{}{} \"{name}\" not found", res.plural, group_suffix(res)))
}

fn group_suffix(res: &Res) -> String {
    if res.group.is_empty() { String::new() } else { format!(".{}", res.group) }
}

/// Does `labels` satisfy a label selector (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`)?
pub fn selects(selector: &str, labels: &serde_json::Map<String, Value>) -> bool {
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).all(|t| {
        let set = |rest: &str| {
            rest.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(str::trim).map(String::from).collect::<Vec<_>>()
        };
        if let Some((k, rest)) = t.split_once(" notin ") {
            return get(k.trim()).is_none_or(|v| !set(rest).iter().any(|s| s == v));
        }
        if let Some((k, rest)) = t.split_once(" in ") {
            return get(k.trim()).is_some_and(|v| set(rest).iter().any(|s| s == v));
        }
        if let Some((k, v)) = t.split_once("!=") {
            return get(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            return get(k.trim()) == Some(v.trim());
        }
        match t.strip_prefix('!') {
            Some(k) => get(k.trim()).is_none(),
            None => get(t).is_some(),
        }
    })
}

/// RFC 7386 JSON merge patch (kubectl's strategic merge patches are handled alike).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[derive(Default, Clone)]
pub struct Store {
    pub resources: Vec<Res>,
    pub objects: BTreeMap<String, Value>,
    pub rv: u64,
    /// Bearer tokens TokenRequest issued, and whom they name.
    pub tokens: BTreeMap<String, Identity>,
    /// The request log's file, if any (`TRESOR_KUBE_AUDIT_LOG`).
    pub audit: Option<std::path::PathBuf>,
    /// Plurals whose every request by anyone but the administrator is refused (403), for tests.
    pub forbidden: Vec<String>,
    /// Plurals whose creation an admission webhook denies, for tests.
    pub denied: Vec<String>,
    /// Every change, for watches: (resourceVersion, type, group/plural, object).
    pub events: Vec<(u64, &'static str, String, Value)>,
    /// Warnings for the current request (Pod Security's `warn`, templates that would be refused).
    pub warnings: Vec<String>,
    /// Plurals where a controller makes an object between a client's GET that found nothing and its create.
    pub racing: Vec<String>,
    /// Keys such a GET found missing: the next create of one meets the controller's object.
    pub race_armed: BTreeSet<String>,
    /// Plurals whose next replace meets another writer's update made since
    /// the client read (an autoscaler, a controller): 409 Conflict, once
    /// per entry.
    pub contended: Vec<String>,
    /// Plurals whose requests by anyone but the administrator are never
    /// answered (a hung API server, a half-open connection), for tests.
    pub stalled: Vec<String>,
    /// How long a deleted namespace stays Terminating before it is gone.
    pub namespace_termination: std::time::Duration,
    /// Terminating namespaces, and when each was deleted.
    pub terminating: Vec<(String, std::time::Instant)>,
}

pub fn key(res: &Res, ns: Option<&str>, name: &str) -> String {
    format!("{}/{}/{}/{name}", res.group, res.plural, ns.unwrap_or(""))
}

impl Store {
    pub fn new() -> Store {
        let mut store = Store { resources: builtin(), namespace_termination: std::time::Duration::from_secs(1), ..Store::default() };
        let nodes = store.find("", "v1", "nodes").expect("built in");
        store.create(&nodes, None, controllers::node()).expect("a fresh store takes its node");
        store
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Res> {
        self.resources.iter().find(|r| r.group == group && r.version == version && r.plural == plural).cloned()
    }

    fn stamp(&mut self, obj: &mut Value, res: &Res, ns: Option<&str>, uid: Option<Value>, created: Option<Value>) {
        self.rv += 1;
        let m = obj["metadata"].as_object_mut().expect("checked to be an object");
        m.insert("resourceVersion".into(), self.rv.to_string().into());
        m.insert("uid".into(), uid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", self.rv).into()));
        m.insert("creationTimestamp".into(), created.unwrap_or_else(|| "2026-11-21T10:00:00Z".into()));
        if let Some(ns) = ns {
            m.insert("namespace".into(), ns.into());
        }
        obj["apiVersion"] = res.group_version().into();
        obj["kind"] = res.kind.clone().into();
    }

    /// Every stored object of a resource, in every namespace.
    pub fn all<'a>(&'a self, group: &str, plural: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let prefix = format!("{group}/{plural}/");
        self.objects.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)).map(|(_, v)| v)
    }

    pub fn create(&mut self, res: &Res, ns: Option<&str>, mut obj: Value) -> Result<Value, ApiError> {
        if let Some(ns) = ns.filter(|_| res.namespaced)
            && !self.objects.contains_key(&format!("/namespaces//{ns}"))
        {
            return Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found")));
        }
        if let Some(ns) = ns.filter(|ns| res.namespaced && controllers::is_terminating(self, ns)) {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{}{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    res.plural,
                    group_suffix(res)
                ),
            ));
        }
        let name = obj["metadata"]["name"].as_str().map(String::from).ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", res.kind),
            )
        })?;
        if self.denied.contains(&res.plural) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("admission webhook \"validate.example.com\" denied the request: {} {name} is not allowed here", res.kind),
            ));
        }
        self.admit(res, ns, &name, &obj)?;
        crate::kube_validate::validate(self, res, ns, &name, &obj)?;
        let k = key(res, ns, &name);
        if self.race_armed.remove(&k) {
            // A controller got there first, with an object of the same name.
            let mut theirs = obj.clone();
            self.stamp(&mut theirs, res, ns, None, None);
            self.objects.insert(k.clone(), theirs);
        }
        if self.objects.contains_key(&k) {
            return Err(ApiError::new(409, "AlreadyExists", format!("{}{} \"{name}\" already exists", res.plural, group_suffix(res))));
        }
        self.stamp(&mut obj, res, ns, None, None);
        // The status of a new object is the server's to set, never the client's.
        if res.status
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        match res.plural.as_str() {
            "namespaces" => obj["status"] = json!({"phase": "Active"}),
            "services" if obj["spec"]["clusterIP"].is_null() => obj["spec"]["clusterIP"] = format!("10.96.0.{}", self.rv % 250 + 2).into(),
            "customresourcedefinitions" => self.register_crd(&mut obj),
            _ => {}
        }
        let unschedulable = (res.group.is_empty() && res.plural == "pods").then(|| controllers::schedule(&mut obj)).flatten();
        self.objects.insert(k, obj.clone());
        self.record("ADDED", res, &obj);
        if let Some(why) = unschedulable {
            controllers::event(self, &obj, "Warning", "FailedScheduling", &why, "default-scheduler");
        }
        controllers::created(self, res, &obj);
        Ok(obj)
    }

    /// Pod Security admission: refuse a pod its namespace's `enforce` level
    /// forbids; warn for its `warn` level, and for workload templates.
    fn admit(&mut self, res: &Res, ns: Option<&str>, name: &str, obj: &Value) -> Result<(), ApiError> {
        let Some(spec) = admission::template_of(&res.kind, obj) else { return Ok(()) };
        let namespace = ns.and_then(|n| self.objects.get(&format!("/namespaces//{n}")));
        let (enforce, warn) = admission::levels(namespace);
        let is_pod = res.group.is_empty() && res.plural == "pods";
        if is_pod && let Some(v) = admission::violations(enforce, spec) {
            return Err(ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: violates {v}")));
        }
        let mut levels = vec![warn];
        if !is_pod {
            levels.push(enforce);
        }
        levels.sort();
        levels.dedup();
        for level in levels.into_iter().filter(|l| *l != Level::Privileged) {
            if let Some(v) = admission::violations(level, spec) {
                self.warnings.push(format!("would violate {v}"));
            }
        }
        Ok(())
    }

    pub(crate) fn record(&mut self, kind: &'static str, res: &Res, obj: &Value) {
        self.events.push((self.rv, kind, format!("{}/{}", res.group, res.plural), obj.clone()));
    }

    /// Changes to a resource (in a namespace, of objects a field selector
    /// takes) after `rv`, as watch events.
    pub fn events_after(&self, res: &Res, ns: Option<&str>, fields: Option<&str>, rv: u64) -> Result<Vec<Value>, ApiError> {
        let fields = field_selector(res, fields)?;
        let key = format!("{}/{}", res.group, res.plural);
        Ok(self
            .events
            .iter()
            .filter(|(at, _, k, o)| *at > rv && *k == key && ns.is_none_or(|n| o["metadata"]["namespace"] == n))
            .filter(|(.., o)| fields.iter().all(|(path, want, equal)| (field(o, path) == *want) == *equal))
            .map(|(_, kind, _, o)| json!({"type": kind, "object": o}))
            .collect())
    }

    /// A CRD adds its served versions to discovery and is Established at once.
    fn register_crd(&mut self, crd: &mut Value) {
        let spec = crd["spec"].clone();
        let names = &spec["names"];
        for v in spec["versions"].as_array().into_iter().flatten().filter(|v| v["served"].as_bool() != Some(false)) {
            let short: Vec<&str> =
                names["shortNames"].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default();
            let gv = format!("{}/{}", spec["group"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or("v1"));
            let res = Res::new(
                &gv,
                names["kind"].as_str().unwrap_or(""),
                names["plural"].as_str().unwrap_or(""),
                spec["scope"] != "Cluster",
                &short,
            );
            let res = Res { status: v["subresources"]["status"].is_object(), ..res };
            self.resources.retain(|r| !(r.group == res.group && r.version == res.version && r.plural == res.plural));
            self.resources.push(res);
        }
        crd["status"] = json!({"conditions": [{"type": "Established", "status": "True"}, {"type": "NamesAccepted", "status": "True"}], "acceptedNames": names});
    }

    pub fn get(&self, res: &Res, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects.get(&key(res, ns, name)).cloned().ok_or_else(|| not_found(res, name))
    }

    pub fn list(&self, res: &Res, ns: Option<&str>, selector: Option<&str>, fields: Option<&str>) -> Result<Value, ApiError> {
        let fields = field_selector(res, fields)?;
        let prefix = format!("{}/{}/", res.group, res.plural);
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .filter(|v| ns.is_none_or(|n| v["metadata"]["namespace"] == n))
            .filter(|v| {
                selector.is_none_or(|s| v["metadata"]["labels"].as_object().map_or(selects(s, &Default::default()), |l| selects(s, l)))
            })
            .filter(|v| fields.iter().all(|(path, want, equal)| (field(v, path) == *want) == *equal))
            .cloned()
            .collect();
        Ok(
            json!({"kind": format!("{}List", res.kind), "apiVersion": res.group_version(), "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
        )
    }

    pub fn replace(&mut self, res: &Res, ns: Option<&str>, name: &str, mut obj: Value, part: Part) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        if part == Part::Main {
            crate::kube_validate::validate(self, res, ns, name, &obj)?;
        }
        let mut old = old;
        if part == Part::Main
            && let Some(i) = self.contended.iter().position(|p| *p == res.plural)
        {
            self.contended.remove(i);
            let (uid, created) = (old["metadata"]["uid"].clone(), old["metadata"]["creationTimestamp"].clone());
            self.stamp(&mut old, res, ns, Some(uid), Some(created));
            self.objects.insert(key(res, ns, name), old.clone());
            self.record("MODIFIED", res, &old);
        }
        let given = obj["metadata"]["resourceVersion"].as_str().map(String::from);
        if given.is_some_and(|g| Some(g.as_str()) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res.plural,
                    group_suffix(res)
                ),
            ));
        }
        obj = match part {
            Part::Main if res.status => {
                obj["status"] = old["status"].clone();
                obj
            }
            Part::Main => obj,
            Part::Status => {
                let mut kept = old.clone();
                kept["status"] = obj["status"].clone();
                kept
            }
        };
        if obj["status"].is_null()
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.stamp(&mut obj, res, ns, Some(old["metadata"]["uid"].clone()), Some(old["metadata"]["creationTimestamp"].clone()));
        self.objects.insert(key(res, ns, name), obj.clone());
        self.record("MODIFIED", res, &obj);
        if part == Part::Status && res.group.is_empty() && res.plural == "pods" {
            controllers::pod_status(self, &obj);
        }
        if part == Part::Main {
            controllers::updated(self, res, &obj);
        }
        Ok(obj)
    }

    pub fn patch(&mut self, res: &Res, ns: Option<&str>, name: &str, patch: &Value, part: Part) -> Result<Value, ApiError> {
        let mut obj = self.get(res, ns, name)?;
        merge(&mut obj, patch);
        obj["metadata"]["resourceVersion"] = Value::Null;
        self.replace(res, ns, name, obj, part)
    }

    pub fn delete(&mut self, res: &Res, ns: Option<&str>, name: &str, policy: Propagation) -> Result<Value, ApiError> {
        if res.group.is_empty() && res.plural == "namespaces" && !self.namespace_termination.is_zero() {
            return controllers::terminate_namespace(self, res, name);
        }
        let obj = self.objects.remove(&key(res, ns, name)).ok_or_else(|| not_found(res, name))?;
        if res.plural == "namespaces" {
            self.objects.retain(|_, v| v["metadata"]["namespace"] != name);
        }
        self.rv += 1;
        self.record("DELETED", res, &obj);
        controllers::deleted(self, &obj, policy)?;
        Ok(obj)
    }
}

/// Fields a field selector may name, per resource (the API server refuses others).
fn selectable(res: &Res) -> &'static [&'static str] {
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "reason",
            "type",
        ],
        ("", "pods") => &["spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "status.phase"],
        _ => &[],
    }
}

/// `a.b=v,c!=w` → (path, value, equal), checked against what the resource allows.
fn field_selector(res: &Res, fields: Option<&str>) -> Result<Vec<(String, String, bool)>, ApiError> {
    let mut out = Vec::new();
    for term in fields.into_iter().flat_map(|f| f.split(',')).map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = match term.split_once("!=") {
            Some((p, v)) => (p, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((p, v)) => (p, v, true),
                None => return Err(ApiError::new(400, "BadRequest", format!("invalid selector: '{term}'; can't understand '{term}'"))),
            },
        };
        if !matches!(path, "metadata.name" | "metadata.namespace") && !selectable(res).contains(&path) {
            return Err(ApiError::new(400, "BadRequest", format!("field label not supported: {path}")));
        }
        out.push((path.to_string(), value.to_string(), equal));
    }
    Ok(out)
}

fn field(obj: &Value, path: &str) -> String {
    let v = path.split('.').fold(obj, |v, k| &v[k]);
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_read_as_kubernetes_reads_them() {
        let labels = json!({"app": "shop", "tier": "web"});
        let l = labels.as_object().unwrap();
        for (sel, want) in [
            ("app=shop", true),
            ("app==shop,tier=web", true),
            ("app!=shop", false),
            ("tier in (web, db)", true),
            ("tier notin (web)", false),
            ("app,!missing", true),
            ("missing", false),
            ("app=shop,tier in (db)", false),
        ] {
            assert_eq!(selects(sel, l), want, "{sel}");
        }
    }
}
