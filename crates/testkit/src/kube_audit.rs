//! The request log: every request an identity other than the harness's
//! administrator makes, one JSON line each, appended to the file that
//! `TRESOR_KUBE_AUDIT_LOG` names (test binaries run apart, so the record
//! of a whole suite is a file). [`coverage`] compares such a log with the
//! roles bound to a service account: what was needed and not granted, and
//! what was granted and never used.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::kube_auth::{self, Attrs, Identity};
use crate::kube_store::Store;

pub const AUDIT_LOG_VAR: &str = "TRESOR_KUBE_AUDIT_LOG";

pub fn record(store: &Store, id: &Identity, a: &Attrs, allowed: bool) {
    let Some(path) = store.audit.as_deref().filter(|_| !id.is_admin()) else { return };
    let line = json!({
        "user": id.user, "verb": a.verb, "group": a.group, "resource": a.resource, "subresource": a.subresource,
        "namespace": a.namespace, "name": a.name, "path": a.path, "allowed": allowed,
    });
    // One write per line with O_APPEND: lines from concurrent processes never interleave.
    let written =
        std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!("the fake API server cannot append to its request log {}: {e}", path.display());
    }
}

/// The requests of one user in a log.
pub fn read(log: &Path, user: &str) -> Vec<Attrs> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["user"] == user)
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Attrs {
                verb: s("verb"),
                group: s("group"),
                resource: s("resource"),
                subresource: s("subresource"),
                namespace: s("namespace"),
                name: s("name"),
                path: v["path"].as_str().map(String::from),
            }
        })
        .collect()
}

/// What a log shows of a service account's roles.
#[derive(Debug, Default, PartialEq)]
pub struct Coverage {
    /// Requests no bound rule allows: `create namespaces at the cluster scope`.
    pub missing: Vec<String>,
    /// Granted and never used: `ClusterRoleBinding "b" of ClusterRole "r": delete batch/jobs`.
    pub unused: Vec<String>,
}

fn describe(a: &Attrs) -> String {
    if let Some(p) = &a.path {
        return format!("{} {p}", a.verb);
    }
    let res = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let res = if a.group.is_empty() { res } else { format!("{}/{res}", a.group) };
    let scope = if a.namespace.is_empty() { "at the cluster scope".into() } else { format!("in {}", a.namespace) };
    format!("{} {res} {scope}", a.verb)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Each rule cut into single grants (one verb, one group, one resource or URL),
/// so that a granted verb nobody used shows even inside a rule that is used.
fn grants(rule: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for verb in strings(&rule["verbs"]) {
        for url in strings(&rule["nonResourceURLs"]) {
            out.push((format!("{verb} {url}"), json!({"verbs": [verb], "nonResourceURLs": [url]})));
        }
        for group in strings(&rule["apiGroups"]) {
            for res in strings(&rule["resources"]) {
                let shown = if group.is_empty() { res.clone() } else { format!("{group}/{res}") };
                let mut g = json!({"verbs": [verb], "apiGroups": [group], "resources": [res]});
                if !rule["resourceNames"].is_null() {
                    g["resourceNames"] = rule["resourceNames"].clone();
                }
                out.push((format!("{verb} {shown}"), g));
            }
        }
    }
    out
}

/// Compare the requests `user` made (from `log`) with the roles bound to it in `store`.
pub fn coverage(store: &Store, id: &Identity, requests: &[Attrs]) -> Coverage {
    let mut missing: Vec<String> = requests.iter().filter(|a| kube_auth::authorize(store, id, a).is_none()).map(describe).collect();
    missing.sort();
    missing.dedup();
    // Every namespace, not only those requested in: a Role nobody used is unused too.
    let mut namespaces: Vec<&str> = requests.iter().map(|a| a.namespace.as_str()).collect();
    namespaces.extend(store.all("", "namespaces").filter_map(|n| n["metadata"]["name"].as_str()));
    namespaces.push("");
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut unused = Vec::new();
    for ns in namespaces {
        // Cluster-wide rules are judged once, against every request; a RoleBinding's against its namespace's.
        let rules = kube_auth::rules_for(store, id, ns).into_iter().filter(|g| g.via != kube_auth::BOOTSTRAP);
        for g in rules.filter(|g| ns.is_empty() != g.via.starts_with("RoleBinding")) {
            for (shown, single) in grants(&g.rule) {
                let used = requests.iter().filter(|a| ns.is_empty() || a.namespace == ns).any(|a| kube_auth::rule_allows(&single, a));
                let line = format!("{}: {shown}", g.via);
                if !used && !unused.contains(&line) {
                    unused.push(line);
                }
            }
        }
    }
    unused.sort();
    Coverage { missing, unused }
}
