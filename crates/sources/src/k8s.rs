//! Kubernetes resources: every type the API discovers (built-in and CRDs),
//! filtered by namespace globs, resource names and a label selector, runtime
//! fields stripped, each object as YAML at
//! `<cluster|namespaces/NS>/<group>/<Kind>/<name>.yaml`. Events and nodes
//! (the cluster's machines, not its configuration) are left out unless
//! asked for. A type the API refuses to list (403) is reported and
//! the rest continues. Restores live in `k8s_restore.rs`.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use kube::api::{Api, DynamicObject, ListParams};
use kube::config::KubeConfigOptions;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tresor_engine::SourceInfo;

use crate::{Error, Result};

/// Which objects a backup or restore takes; in a plan, a `k8s://` source's `scope:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Namespace globs, e.g. `shop-*`.
    #[serde(default, rename = "namespaces", skip_serializing_if = "Vec::is_empty")]
    pub include_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    /// Resource names as `kubectl` takes them: `deployments`, `deployment`, `deploy`, `Deployment`, `widgets.example.com`.
    #[serde(default, rename = "resources", skip_serializing_if = "Vec::is_empty")]
    pub include_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_resources: Vec<String>,
    /// A label selector, e.g. `app=shop,tier!=db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `None`: cluster-scoped objects only when no namespace is included by name.
    #[serde(default, rename = "cluster_resources", skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
}

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::failed("k8s://", format!("bad namespace pattern {p:?}: {e}")))?);
    }
    b.build().map_err(|e| Error::failed("k8s://", e))
}

/// The filters, compiled.
pub struct Matcher {
    include_ns: Option<GlobSet>,
    exclude_ns: GlobSet,
    f: Filters,
}

impl Matcher {
    pub fn new(f: &Filters) -> Result<Matcher> {
        Ok(Matcher {
            include_ns: (!f.include_namespaces.is_empty()).then(|| globs(&f.include_namespaces)).transpose()?,
            exclude_ns: globs(&f.exclude_namespaces)?,
            f: f.clone(),
        })
    }

    pub fn namespace(&self, ns: &str) -> bool {
        self.include_ns.as_ref().is_none_or(|g| g.is_match(ns)) && !self.exclude_ns.is_match(ns)
    }

    fn names(kind: &str, plural: &str, group: &str) -> [String; 4] {
        let k = kind.to_lowercase();
        [plural.to_string(), k.clone(), format!("{plural}.{group}"), format!("{k}.{group}")]
    }

    /// Whether objects of this type are taken (events and nodes only when named).
    pub fn resource(&self, kind: &str, plural: &str, group: &str, short: &[String]) -> bool {
        let names = Self::names(kind, plural, group);
        let named = |list: &[String]| list.iter().any(|r| names.contains(&r.to_lowercase()) || short.contains(&r.to_lowercase()));
        if named(&self.f.exclude_resources) {
            return false;
        }
        if self.f.include_resources.is_empty() || self.f.include_resources.iter().any(|r| r == "*") {
            return !(group.is_empty() && matches!(plural, "events" | "nodes"));
        }
        named(&self.f.include_resources)
    }

    pub fn cluster_scoped(&self) -> bool {
        self.f.include_cluster_resources.unwrap_or(self.f.include_namespaces.is_empty())
    }

    pub fn selector(&self) -> Option<&str> {
        self.f.selector.as_deref()
    }
}

/// A client for `k8s://[CONTEXT]`: that kubeconfig context, or the usual
/// inference (KUBECONFIG / ~/.kube/config, then in-cluster).
pub async fn client(url: &str) -> Result<Client> {
    let context = url.strip_prefix("k8s://").unwrap_or("").trim_end_matches('/');
    let fail = |why: String| Error::failed(url, why);
    let config = if context.is_empty() {
        Config::infer().await.map_err(|e| fail(format!("no Kubernetes configuration: {e}")))?
    } else {
        let opts = KubeConfigOptions { context: Some(context.to_string()), ..Default::default() };
        Config::from_kubeconfig(&opts).await.map_err(|e| fail(format!("kubeconfig context {context}: {e}")))?
    };
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// An API error's own words; for a transport failure, its root cause.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("cannot reach the API server: {cause}")
        }
        other => other.to_string(),
    }
}

/// Fields the API sets at runtime, which a restore must not carry.
pub fn strip(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(k);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
}

/// Where an object lives in the snapshot.
pub fn path_of(ar: &ApiResource, ns: Option<&str>, name: &str) -> String {
    let group = if ar.group.is_empty() { "core" } else { &ar.group };
    match ns {
        Some(ns) => format!("namespaces/{ns}/{group}/{}/{name}.yaml", ar.kind),
        None => format!("cluster/{group}/{}/{name}.yaml", ar.kind),
    }
}

/// The backup: every matching object as YAML by path, the snapshot's
/// source record, and the types the API refused (with its message).
pub async fn collect(url: &str, filters: &Filters) -> Result<(BTreeMap<String, Vec<u8>>, SourceInfo)> {
    let m = Matcher::new(filters)?;
    let client = client(url).await?;
    let fail = |why: String| Error::failed(url, why);
    let discovery = Discovery::new(client.clone()).run().await.map_err(|e| fail(format!("API discovery failed: {}", api_message(&e))))?;
    let mut files = BTreeMap::new();
    let (mut types, mut refused) = (0u64, Vec::<String>::new());
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !wanted(&m, &ar, &caps) {
                continue;
            }
            types += 1;
            match list(&client, &ar, &m).await {
                Ok(objs) => {
                    for (path, yaml) in objs {
                        files.insert(path, yaml);
                    }
                }
                Err(e) => refused.push(format!(
                    "{}{}: {}",
                    ar.plural,
                    if ar.group.is_empty() { String::new() } else { format!(".{}", ar.group) },
                    api_message(&e)
                )),
            }
        }
    }
    refused.extend(include_crds(&client, &discovery, &mut files).await);
    let namespaces: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|p| p.strip_prefix("namespaces/")?.split('/').next()).collect();
    let mut point = BTreeMap::new();
    point.insert("resource_types".to_string(), types.into());
    point.insert("objects".to_string(), files.len().into());
    point.insert("namespaces".to_string(), namespaces.into_iter().collect::<Vec<_>>().into());
    if !refused.is_empty() {
        point.insert("refused".to_string(), refused.into());
    }
    Ok((files, SourceInfo { kind: "k8s".into(), url: Some(url.to_string()), consistency: point }))
}

/// The definitions of the custom resources taken, even when cluster-scoped
/// objects are not: their objects cannot be restored without them. Those
/// the API refused to give, with its message; a type no definition serves
/// (an aggregated API's) is none.
async fn include_crds(client: &Client, discovery: &Discovery, files: &mut BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let Some((crd, _)) =
        discovery.groups().flat_map(|g| g.recommended_resources()).find(|(ar, _)| ar.plural == "customresourcedefinitions")
    else {
        return Vec::new();
    };
    let mut refused = Vec::new();
    let custom: std::collections::BTreeSet<(String, String)> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(ar, _)| ar.group.contains('.') && !ar.group.ends_with(".k8s.io"))
        .filter(|(ar, _)| files.keys().any(|p| p.contains(&format!("/{}/{}/", ar.group, ar.kind))))
        .map(|(ar, _)| (ar.plural, ar.group))
        .collect();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &crd);
    for (plural, group) in custom {
        let name = format!("{plural}.{group}");
        let obj = match api.get(&name).await {
            Ok(obj) => obj,
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                refused.push(format!("{}.{} {name}: {}", crd.plural, crd.group, api_message(&e)));
                continue;
            }
        };
        let mut v = serde_json::to_value(&obj).unwrap_or(Value::Null);
        v["apiVersion"] = crd.api_version.clone().into();
        v["kind"] = crd.kind.clone().into();
        strip(&mut v);
        files.entry(path_of(&crd, None, &name)).or_insert_with(|| serde_norway::to_string(&v).unwrap_or_default().into_bytes());
    }
    refused
}

fn wanted(m: &Matcher, ar: &ApiResource, caps: &ApiCapabilities) -> bool {
    caps.supports_operation(verbs::LIST)
        && (caps.scope == Scope::Namespaced || m.cluster_scoped() || ar.plural == "namespaces")
        && m.resource(&ar.kind, &ar.plural, &ar.group, &[])
}

async fn list(client: &Client, ar: &ApiResource, m: &Matcher) -> Result<Vec<(String, Vec<u8>)>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let mut lp = ListParams::default();
    if let Some(s) = m.selector() {
        lp = lp.labels(s);
    }
    let mut out = Vec::new();
    for obj in api.list(&lp).await?.items {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let ns = obj.metadata.namespace.clone();
        // Namespaces are cluster objects that belong with their namespace's contents.
        let in_scope = match (&ns, ar.plural.as_str()) {
            (Some(ns), _) => m.namespace(ns),
            (None, "namespaces") => m.namespace(&name),
            (None, _) => true,
        };
        if !in_scope {
            continue;
        }
        let mut v = serde_json::to_value(&obj).unwrap_or(Value::Null);
        // List items may come without their type: it is the list's.
        v["apiVersion"] = ar.api_version.clone().into();
        v["kind"] = ar.kind.clone().into();
        strip(&mut v);
        let yaml = serde_norway::to_string(&v).unwrap_or_default().into_bytes();
        out.push((path_of(ar, ns.as_deref(), &name), yaml));
    }
    Ok(out)
}
