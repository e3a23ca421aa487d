//! Volumes nobody backs up: the claims in namespaces the plan covers (a
//! `pvc://` source names them, or a `k8s://` source takes their objects)
//! that no `pvc://` source matches. A new claim is silently unprotected
//! otherwise, the classic way disaster recovery fails; the daemon surveys
//! the cluster, exports `backup_unprotected_volumes{namespace}` and lists
//! the claims on the status page.

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use tresor_sources::k8s::Matcher;

use crate::plan::Plan;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// What a `pvc://` URL matches: a namespace (or all), a claim (or all), a selector.
struct PvcMatch {
    namespace: Option<String>,
    claim: Option<String>,
    selector: Option<String>,
}

fn pvc_match(url: &str) -> Option<PvcMatch> {
    let rest = url.strip_prefix("pvc://")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let selector = query.split('&').find_map(|p| p.strip_prefix("selector=")).map(String::from);
    let (namespace, claim) = match path.split_once('/') {
        Some((ns, c)) => (Some(ns.to_string()), (c != "*").then(|| c.to_string())),
        None => (None, None),
    };
    Some(PvcMatch { namespace, claim, selector })
}

/// Does `labels` satisfy an equality-based selector (`a=b,c!=d,e`)?
fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|t| match t.split_once("!=") {
        Some((k, v)) => labels.get(k.trim()).is_none_or(|x| x != v.trim()),
        None => match t.split_once("==").or_else(|| t.split_once('=')) {
            Some((k, v)) => labels.get(k.trim()).is_some_and(|x| x == v.trim()),
            None => labels.contains_key(t),
        },
    })
}

/// Whether the plan covers this namespace: a `pvc://` source names it, or
/// a `k8s://` source's scope (`scopes`, compiled once) takes it.
fn covered(plan: &Plan, scopes: &[Matcher], ns: &str) -> bool {
    plan.sources.iter().filter_map(|s| pvc_match(&s.url.to_string())).any(|m| m.namespace.as_deref().is_none_or(|n| n == ns))
        || scopes.iter().any(|m| m.namespace(ns))
}

fn protected(plan: &Plan, c: &Claim) -> bool {
    plan.sources.iter().filter_map(|s| pvc_match(&s.url.to_string())).any(|m| {
        m.namespace.as_deref().is_none_or(|n| n == c.namespace)
            && m.claim.as_deref().is_none_or(|n| n == c.name)
            && m.selector.as_deref().is_none_or(|sel| selects(sel, &c.labels))
    })
}

/// Per covered namespace, its claims that no source backs up (an empty list: all protected).
pub fn unprotected(plan: &Plan, namespaces: &[String], claims: &[Claim]) -> BTreeMap<String, Vec<String>> {
    // A scope whose globs do not compile covers nothing (plan check names it).
    let scopes: Vec<Matcher> = plan
        .sources
        .iter()
        .filter(|s| s.url.starts_with("k8s://"))
        .filter_map(|s| Matcher::new(&s.scope.clone().unwrap_or_default()).ok())
        .collect();
    let mut out: BTreeMap<String, Vec<String>> =
        namespaces.iter().filter(|n| covered(plan, &scopes, n)).map(|n| (n.clone(), Vec::new())).collect();
    for c in claims {
        if let Some(list) = out.get_mut(&c.namespace)
            && !protected(plan, c)
        {
            list.push(c.name.clone());
        }
    }
    out
}

/// Whether the plan has anything in a cluster to survey.
pub fn wanted(plan: &Plan) -> bool {
    plan.sources.iter().any(|s| s.url.starts_with("pvc://") || s.url.starts_with("k8s://"))
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource { group: String::new(), version: "v1".into(), api_version: "v1".into(), kind: kind.into(), plural: plural.into() }
}

/// The cluster's namespaces and claims (tresor's own CSI clones left out), as the daemon's identity sees them.
pub async fn survey() -> Result<(Vec<String>, Vec<Claim>), String> {
    let client = tresor_sources::k8s::client("k8s://").await.map_err(|e| e.to_string())?;
    let list = |kind: &str, plural: &str| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind, plural));
        async move { api.list(&ListParams::default()).await.map_err(|e| tresor_sources::k8s::api_message(&e)) }
    };
    let namespaces = list("Namespace", "namespaces").await?.items.into_iter().filter_map(|n| n.metadata.name).collect();
    let claims = list("PersistentVolumeClaim", "persistentvolumeclaims")
        .await?
        .items
        .into_iter()
        .map(|c| Claim {
            namespace: c.metadata.namespace.unwrap_or_default(),
            name: c.metadata.name.unwrap_or_default(),
            labels: c.metadata.labels.unwrap_or_default(),
        })
        .filter(|c| c.labels.get("app.kubernetes.io/managed-by").is_none_or(|m| m != "tresor"))
        .collect();
    Ok((namespaces, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sources: &str) -> Plan {
        let text = format!(
            "repositories:\n  r:\n    url: /tmp/r\n    password_file: /tmp/p\nclasses:\n  c:\n    rpo: 1d\n    rto: 1h\nsources:\n{sources}"
        );
        serde_norway::from_str(&text).unwrap()
    }

    fn claim(ns: &str, name: &str, labels: &[(&str, &str)]) -> Claim {
        Claim { namespace: ns.into(), name: name.into(), labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn claims_in_covered_namespaces_that_no_source_takes_are_unprotected() {
        let a = "  - {name: a, class: c, schedule: '@daily', url: 'pvc://shop/data?secret=s'}\n";
        let k =
            "  - {name: k, class: c, schedule: '@daily', url: 'k8s://', scope: {namespaces: ['team-*'], exclude_namespaces: [team-x]}}\n";
        let b = "  - {name: b, class: c, schedule: '@daily', url: 'pvc://*?selector=backup=daily&secret=s'}\n";
        let namespaces: Vec<String> = ["shop", "team-a", "team-x", "other"].map(String::from).to_vec();
        let claims = [
            claim("shop", "data", &[]),
            claim("shop", "cache", &[]),
            claim("shop", "logs", &[("backup", "daily")]),
            claim("team-a", "db", &[]),
            claim("team-x", "db", &[]),
            claim("other", "db", &[("backup", "daily")]),
        ];
        let want = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
        };
        let got = unprotected(&plan(&format!("{a}{k}")), &namespaces, &claims);
        assert_eq!(got, want(&[("shop", &["cache", "logs"]), ("team-a", &["db"])]), "team-x is excluded, other not covered");
        // A cluster-wide selector covers every namespace: what lacks the label is unprotected.
        let got = unprotected(&plan(&format!("{a}{k}{b}")), &namespaces, &claims);
        assert_eq!(got, want(&[("other", &[]), ("shop", &["cache"]), ("team-a", &["db"]), ("team-x", &["db"])]));
        let all = plan("  - {name: w, class: c, schedule: '@daily', url: 'pvc://shop/*?secret=s'}\n");
        assert_eq!(unprotected(&all, &namespaces, &claims), want(&[("shop", &[])]));
    }
}
