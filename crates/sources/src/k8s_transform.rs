//! Transforms for restores into another cluster: a lost site comes back on
//! a cluster with other storage classes and often another registry. Claims
//! (and StatefulSets' claim templates, persistent volumes) get their
//! storage class mapped, pod templates their images' registry, and rules
//! select objects by kind, namespace, name and labels to apply JSON patches
//! (RFC 6902). A rehearsal's safety rewrites (workloads scaled to 0,
//! CronJobs and Jobs suspended, Ingress hosts prefixed) come last, so no
//! patch can undo them. Every change is said, in words; a patch that cannot
//! apply fails its object with why, and leaves it untouched.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use json_patch::{PatchErrorKind, PatchOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// A transforms file (`restore --transforms FILE`, a source's `transforms:` in the plan).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transforms {
    /// Old storage class → new (`--storage-class-mapping OLD:NEW`).
    #[serde(default)]
    pub storage_classes: BTreeMap<String, String>,
    /// Old registry (or registry/path prefix) → new (`--image-registry-mapping OLD:NEW`).
    #[serde(default)]
    pub image_registries: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Which objects a rule patches (every condition given must hold), and the patch.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `Kind` or `group/Kind`: `Deployment`, `apps/Deployment`, `core/Service`, `example.com/Widget`.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Namespace globs, as the snapshot names them (before any mapping).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Name globs, e.g. `web-*`.
    #[serde(default)]
    pub names: Vec<String>,
    /// A Kubernetes label selector: `matchLabels`, `matchExpressions`.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    pub patch: Vec<PatchOperation>,
}

/// Without the patch's values, which may be a Secret's.
impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("kinds", &self.kinds)
            .field("namespaces", &self.namespaces)
            .field("names", &self.names)
            .field("selector", &self.selector)
            .field("patch", &self.patch.iter().map(describe).collect::<Vec<_>>())
            .finish()
    }
}

/// A rehearsal's safety rewrites: what it restores cannot serve, run or
/// answer in production's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehearsal {
    /// Appended to each namespace not mapped otherwise: `shop` → `shop-dr`.
    pub namespace_suffix: String,
    /// Put before each Ingress host's first label: `shop.example.com` → `dr-shop.example.com`.
    pub host_prefix: String,
}

impl Default for Rehearsal {
    fn default() -> Rehearsal {
        Rehearsal { namespace_suffix: "-dr".into(), host_prefix: "dr-".into() }
    }
}

/// The label a rehearsal's namespaces carry, so what it made can be found and removed.
pub const REHEARSAL_LABEL: &str = "tresor.dev/rehearsal";
/// A node label no node has: a rehearsal's DaemonSets select it, and run nowhere.
const NO_NODE: &str = "tresor.dev/rehearsal-no-node";

impl Transforms {
    /// Read a transforms file (YAML).
    pub fn load(path: &std::path::Path) -> Result<Transforms> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::failed(&name, format!("cannot read the transforms: {e}")))?;
        let t: Transforms = serde_norway::from_str(&text).map_err(|e| Error::failed(&name, format!("not a transforms file: {e}")))?;
        t.compile().map_err(|e| Error::failed(&name, e))?;
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.storage_classes.is_empty() && self.image_registries.is_empty() && self.rules.is_empty()
    }

    /// The rules with their globs and selectors compiled; a bad one is named.
    pub fn compile(&self) -> std::result::Result<Compiled, String> {
        let rules = self.rules.iter().enumerate().map(|(i, r)| r.compile().map_err(|e| format!("transforms rule {}: {e}", i + 1)));
        Ok(Compiled { t: self.clone(), rules: rules.collect::<std::result::Result<_, _>>()? })
    }
}

impl Rule {
    fn compile(&self) -> std::result::Result<CompiledRule, String> {
        let globs = |list: &[String]| -> std::result::Result<Option<GlobSet>, String> {
            if list.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in list {
                b.add(Glob::new(p).map_err(|e| format!("bad pattern {p:?}: {e}"))?);
            }
            b.build().map(Some).map_err(|e| e.to_string())
        };
        let selector = match &self.selector {
            Some(s) => Some(Selector::try_from(s.clone()).map_err(|e| format!("bad selector: {e}"))?),
            None => None,
        };
        let kinds = self.kinds.iter().map(|k| Glob::new(k).map(|g| g.compile_matcher()).map_err(|e| format!("bad kind {k:?}: {e}")));
        Ok(CompiledRule {
            kinds: kinds.collect::<std::result::Result<_, _>>()?,
            namespaces: globs(&self.namespaces)?,
            names: globs(&self.names)?,
            selector,
            patch: self.patch.clone(),
        })
    }
}

struct CompiledRule {
    kinds: Vec<GlobMatcher>,
    namespaces: Option<GlobSet>,
    names: Option<GlobSet>,
    selector: Option<Selector>,
    patch: Vec<PatchOperation>,
}

impl CompiledRule {
    /// Whether the rule takes `obj`, whose namespace in the snapshot was `ns`.
    fn selects(&self, obj: &Value, ns: Option<&str>) -> bool {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let group = obj["apiVersion"].as_str().and_then(|v| v.rsplit_once('/')).map_or("core", |(g, _)| g);
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let labels: BTreeMap<String, String> = obj["metadata"]["labels"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let qualified = format!("{group}/{kind}");
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k.is_match(kind) || k.is_match(&qualified)))
            && self.namespaces.as_ref().is_none_or(|g| ns.is_some_and(|ns| g.is_match(ns)))
            && self.names.as_ref().is_none_or(|g| g.is_match(name))
            && self.selector.as_ref().is_none_or(|s| s.matches(&labels))
    }
}

/// Transforms ready to apply.
pub struct Compiled {
    t: Transforms,
    rules: Vec<CompiledRule>,
}

impl Compiled {
    /// Transform one object (its namespace already mapped; `ns` is the
    /// snapshot's): the changes made, in words, or why it cannot be restored.
    pub fn apply(&self, obj: &mut Value, ns: Option<&str>, rehearsal: Option<&Rehearsal>) -> std::result::Result<Vec<String>, String> {
        let mut changes = Vec::new();
        storage_classes(obj, &self.t.storage_classes, &mut changes);
        for spec in pod_specs(obj) {
            images(spec, &self.t.image_registries, &mut changes);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.selects(obj, ns) {
                continue;
            }
            json_patch::patch(obj, &rule.patch).map_err(|e| {
                let op = &rule.patch[e.operation];
                format!("transforms rule {}: {} failed: {}", i + 1, describe(op), why(&e.kind, op))
            })?;
            changes.extend(rule.patch.iter().map(|op| format!("rule {}: {}", i + 1, describe(op))));
        }
        if let Some(r) = rehearsal {
            safety(obj, r, &mut changes);
        }
        Ok(changes)
    }
}

/// An operation in words, without its value (which may be a secret's).
fn describe(op: &PatchOperation) -> String {
    match op {
        PatchOperation::Add(o) => format!("add {}", o.path),
        PatchOperation::Remove(o) => format!("remove {}", o.path),
        PatchOperation::Replace(o) => format!("replace {}", o.path),
        PatchOperation::Move(o) => format!("move {} to {}", o.from, o.path),
        PatchOperation::Copy(o) => format!("copy {} to {}", o.from, o.path),
        PatchOperation::Test(o) => format!("test {}", o.path),
    }
}

fn why(kind: &PatchErrorKind, op: &PatchOperation) -> String {
    match (kind, op) {
        (PatchErrorKind::TestFailed, _) => "the value differs".into(),
        (PatchErrorKind::InvalidFromPointer, PatchOperation::Move(o)) => format!("{} does not exist", o.from),
        (PatchErrorKind::InvalidFromPointer, PatchOperation::Copy(o)) => format!("{} does not exist", o.from),
        (PatchErrorKind::InvalidPointer, PatchOperation::Add(_)) => "its parent does not exist".into(),
        (PatchErrorKind::InvalidPointer, _) => "the path does not exist".into(),
        (PatchErrorKind::CannotMoveInsideItself, _) => "cannot move a value inside itself".into(),
        (other, _) => other.to_string(),
    }
}

fn storage_classes(obj: &mut Value, map: &BTreeMap<String, String>, changes: &mut Vec<String>) {
    if map.is_empty() {
        return;
    }
    let mut set = |spec: Option<&mut Value>, prefix: String| {
        let Some(spec) = spec else { return };
        if let Some(new) = spec["storageClassName"].as_str().and_then(|old| map.get(old)).cloned() {
            changes.push(format!("{prefix}storageClassName: {} -> {new}", spec["storageClassName"].as_str().unwrap_or_default()));
            spec["storageClassName"] = new.into();
        }
    };
    match obj["kind"].as_str() {
        Some("PersistentVolumeClaim" | "PersistentVolume") => set(obj.get_mut("spec"), String::new()),
        Some("StatefulSet") => {
            for t in obj.pointer_mut("/spec/volumeClaimTemplates").and_then(Value::as_array_mut).into_iter().flatten() {
                let name = t["metadata"]["name"].as_str().unwrap_or("?").to_string();
                set(t.get_mut("spec"), format!("volumeClaimTemplates[{name}] "));
            }
        }
        _ => {}
    }
}

/// The pod specs of a Pod, a workload's template, a CronJob's job template.
fn pod_specs(obj: &mut Value) -> Vec<&mut Value> {
    let spec = match obj["kind"].as_str() {
        Some("Pod") => obj.get_mut("spec"),
        Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController") => {
            obj.pointer_mut("/spec/template/spec")
        }
        Some("CronJob") => obj.pointer_mut("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    };
    spec.into_iter().collect()
}

fn images(spec: &mut Value, map: &BTreeMap<String, String>, changes: &mut Vec<String>) {
    if map.is_empty() {
        return;
    }
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(new) = c["image"].as_str().and_then(|i| rewrite_image(i, map)) {
                changes.push(format!("image: {} -> {new}", c["image"].as_str().unwrap_or_default()));
                c["image"] = new.into();
            }
        }
    }
}

/// An image with its registry mapped, the longest matching prefix first.
/// Images without a registry (`nginx:1.27`, `team/app`) are Docker Hub's:
/// `docker.io/library/nginx:1.27`, `docker.io/team/app`.
fn rewrite_image(image: &str, map: &BTreeMap<String, String>) -> Option<String> {
    let first = image.split('/').next().unwrap_or_default();
    let has_registry = image.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let full = match (has_registry, image.contains('/')) {
        (true, _) => image.to_string(),
        (false, true) => format!("docker.io/{image}"),
        (false, false) => format!("docker.io/library/{image}"),
    };
    let (old, new) =
        map.iter().filter(|(old, _)| full.starts_with(&format!("{}/", old.trim_end_matches('/')))).max_by_key(|(old, _)| old.len())?;
    Some(format!("{}{}", new.trim_end_matches('/'), &full[old.trim_end_matches('/').len()..]))
}

/// A rehearsal's rewrites: nothing it restores runs, serves or answers for production.
fn safety(obj: &mut Value, r: &Rehearsal, changes: &mut Vec<String>) {
    match obj["kind"].as_str().unwrap_or_default() {
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            let old = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            obj["spec"]["replicas"] = 0.into();
            changes.push(format!("replicas: {old} -> 0"));
        }
        "CronJob" | "Job" => {
            let old = obj["spec"]["suspend"].as_bool().unwrap_or(false);
            obj["spec"]["suspend"] = true.into();
            changes.push(format!("suspend: {old} -> true"));
        }
        "DaemonSet" => {
            obj["spec"]["template"]["spec"]["nodeSelector"][NO_NODE] = "true".into();
            changes.push(format!("nodeSelector: {NO_NODE}=true (no node has it: runs nowhere)"));
        }
        "Ingress" => {
            if let Some(rules) = obj.pointer_mut("/spec/rules").and_then(Value::as_array_mut) {
                rewrite_hosts(rules.iter_mut().filter_map(|rule| rule.get_mut("host")).collect(), r, changes);
            }
            if let Some(tls) = obj.pointer_mut("/spec/tls").and_then(Value::as_array_mut) {
                // The certificates' hosts follow the rules' (said once, there).
                let hosts = tls.iter_mut().filter_map(|t| t.get_mut("hosts").and_then(Value::as_array_mut)).flatten();
                rewrite_hosts(hosts.collect(), r, &mut Vec::new());
            }
        }
        "Service" => private_service(obj, changes),
        "Namespace" => {
            obj["metadata"]["labels"][REHEARSAL_LABEL] = "true".into();
            changes.push(format!("label: {REHEARSAL_LABEL}=true"));
        }
        _ => {}
    }
}

/// A Service reachable only inside the cluster: a rehearsal's must not
/// claim production's load balancer address, external IPs or node ports.
fn private_service(obj: &mut Value, changes: &mut Vec<String>) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(t @ ("LoadBalancer" | "NodePort")) = spec.get("type").and_then(Value::as_str) {
        changes.push(format!("type: {t} -> ClusterIP"));
        spec.insert("type".into(), "ClusterIP".into());
    }
    // What only an externally reachable Service may carry, and what points at production's addresses.
    for field in [
        "loadBalancerIP",
        "externalIPs",
        "loadBalancerSourceRanges",
        "loadBalancerClass",
        "allocateLoadBalancerNodePorts",
        "externalTrafficPolicy",
        "healthCheckNodePort",
    ] {
        if spec.remove(field).is_some() {
            changes.push(format!("{field}: removed"));
        }
    }
    for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(n) = port.as_object_mut().and_then(|p| p.remove("nodePort")) {
            changes.push(format!("nodePort {n}: removed"));
        }
    }
}

/// Prefix each host's first label (after a wildcard's `*.`): `*.shop.example.com` → `*.dr-shop.example.com`.
fn rewrite_hosts(hosts: Vec<&mut Value>, r: &Rehearsal, changes: &mut Vec<String>) {
    for h in hosts {
        let Some(old) = h.as_str().filter(|s| !s.is_empty()).map(String::from) else { continue };
        let new = match old.strip_prefix("*.") {
            Some(rest) => format!("*.{}{rest}", r.host_prefix),
            None => format!("{}{old}", r.host_prefix),
        };
        changes.push(format!("host: {old} -> {new}"));
        *h = new.into();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn transforms(yaml: &str) -> Compiled {
        serde_norway::from_str::<Transforms>(yaml).unwrap().compile().unwrap()
    }

    #[test]
    fn registries_map_by_the_longest_prefix_and_docker_hub_is_implicit() {
        let map: BTreeMap<String, String> =
            [("old.registry", "new.registry"), ("old.registry/team", "mirror/team"), ("docker.io", "hub.local")]
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect();
        let r = |i| rewrite_image(i, &map);
        assert_eq!(r("old.registry/x:1").as_deref(), Some("new.registry/x:1"));
        assert_eq!(r("old.registry/team/app@sha256:ab").as_deref(), Some("mirror/team/app@sha256:ab"));
        assert_eq!(r("old.registryx/x:1").as_deref(), None, "a registry is a whole component");
        assert_eq!(r("nginx:1.27").as_deref(), Some("hub.local/library/nginx:1.27"));
        assert_eq!(r("team/app").as_deref(), Some("hub.local/team/app"));
        assert_eq!(r("localhost:5000/app").as_deref(), None);
    }

    #[test]
    fn the_six_operations_apply_and_are_said_without_their_values() {
        let t = transforms(
            "rules:\n- kinds: [apps/Deployment]\n  patch:\n  - {op: test, path: /spec/replicas, value: 2}\n  - {op: replace, path: /spec/replicas, value: 3}\n  - {op: add, path: /metadata/labels/site, value: b}\n  - {op: copy, from: /metadata/labels/site, path: /metadata/labels/copy}\n  - {op: move, from: /metadata/labels/copy, path: /metadata/labels/moved}\n  - {op: remove, path: /metadata/labels/app}\n",
        );
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 2}});
        let changes = t.apply(&mut d, Some("shop"), None).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["metadata"]["labels"], json!({"site": "b", "moved": "b"}));
        assert_eq!(
            changes,
            [
                "rule 1: test /spec/replicas",
                "rule 1: replace /spec/replicas",
                "rule 1: add /metadata/labels/site",
                "rule 1: copy /metadata/labels/site to /metadata/labels/copy",
                "rule 1: move /metadata/labels/copy to /metadata/labels/moved",
                "rule 1: remove /metadata/labels/app"
            ]
        );
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}});
        assert_eq!(t.apply(&mut cm, Some("shop"), None).unwrap(), Vec::<String>::new(), "another kind");
    }

    #[test]
    fn a_patch_that_cannot_apply_names_why_and_leaves_the_object_as_it_was() {
        let t = transforms(
            "rules:\n- names: ['w*']\n  namespaces: [shop]\n  selector: {matchLabels: {app: web}}\n  patch:\n  - {op: add, path: /metadata/labels/x, value: y}\n  - {op: test, path: /spec/replicas, value: 5}\n- kinds: [ConfigMap]\n  patch:\n  - {op: replace, path: /data/missing, value: z}\n- kinds: [Secret]\n  patch:\n  - {op: move, from: /data/nope, path: /data/b}\n",
        );
        let before = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 2}});
        let mut d = before.clone();
        assert_eq!(t.apply(&mut d, Some("shop"), None).unwrap_err(), "transforms rule 1: test /spec/replicas failed: the value differs");
        assert_eq!(d, before, "the whole patch undone");
        assert_eq!(t.apply(&mut d, Some("other"), None).unwrap(), Vec::<String>::new(), "another namespace");
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        assert_eq!(t.apply(&mut cm, None, None).unwrap_err(), "transforms rule 2: replace /data/missing failed: the path does not exist");
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {}});
        assert_eq!(
            t.apply(&mut s, None, None).unwrap_err(),
            "transforms rule 3: move /data/nope to /data/b failed: /data/nope does not exist"
        );
        let secret = serde_norway::from_str::<Transforms>("rules:\n- patch:\n  - {op: add, path: /data/key, value: czNjcmV0}\n").unwrap();
        assert!(!format!("{secret:?}").contains("czNjcmV0"), "{secret:?}");
        let bad = serde_norway::from_str::<Transforms>("rules:\n- names: ['[']\n  patch: []\n").unwrap();
        assert!(bad.compile().err().unwrap().starts_with("transforms rule 1: bad pattern \"[\": "));
    }

    #[test]
    fn storage_classes_and_a_rehearsals_rewrites_are_said() {
        let t = transforms("storage_classes: {fast: standard}\n");
        let mut sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "fast"}}]}});
        let r = Rehearsal::default();
        let changes = t.apply(&mut sts, Some("shop"), Some(&r)).unwrap();
        assert_eq!(changes, ["volumeClaimTemplates[data] storageClassName: fast -> standard", "replicas: 1 -> 0"]);
        let mut ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "shop.example.com"}, {"host": "*.example.com"}, {}], "tls": [{"hosts": ["shop.example.com"]}]}});
        let changes = t.apply(&mut ing, Some("shop"), Some(&r)).unwrap();
        assert_eq!(changes, ["host: shop.example.com -> dr-shop.example.com", "host: *.example.com -> *.dr-example.com"]);
        assert_eq!(ing["spec"]["tls"][0]["hosts"][0], "dr-shop.example.com");
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"type": "LoadBalancer",
            "loadBalancerIP": "203.0.113.7", "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}});
        let changes = t.apply(&mut svc, Some("shop"), Some(&r)).unwrap();
        assert_eq!(
            changes,
            ["type: LoadBalancer -> ClusterIP", "loadBalancerIP: removed", "externalTrafficPolicy: removed", "nodePort 30080: removed"]
        );
        assert_eq!(svc["spec"], json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": false}});
        assert_eq!(t.apply(&mut cj, Some("shop"), Some(&r)).unwrap(), ["suspend: false -> true"]);
    }
}
