//! Reaching a source without backing it up (`tresor plan check --connect`):
//! each probe connects with the source's own code and credentials and says,
//! in one line, what answered, or fails with the error a backup would meet.

use std::path::Path;

use k8s_openapi::api::authorization::v1::{ResourceRule, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::k8s::{api_message, client};
use crate::postgres::Postgres;
use crate::{Error, RedisSource, Result};

/// `redis://…`, `rediss://…`: the server's version and replication role.
pub fn redis(url: &str) -> Result<String> {
    RedisSource::parse(url)?.describe()
}

/// `postgres://…`: the server's version, and whether this machine's
/// `pg_dump` (`pg_dumpall` for a cluster's globals) can dump it.
pub fn postgres(url: &str) -> Result<String> {
    Postgres::parse(url)?.describe(false)
}

/// `pgbase://…`: as [`postgres`], for `pg_basebackup`.
pub fn pg_base(url: &str) -> Result<String> {
    let rest = url.strip_prefix("pgbase://").unwrap_or(url);
    Postgres::parse_cluster(&format!("postgres://{rest}"))?.describe(true)
}

/// A path to back up: it exists and can be read.
pub fn path(path: &str) -> Result<String> {
    // A URL of a kind no probe knows is looked at as a path: named redacted.
    let fail = |e: std::io::Error| Error::failed(tresor_storage::redact(path), e);
    let md = std::fs::metadata(path).map_err(fail)?;
    if md.is_dir() {
        let entries = std::fs::read_dir(path).map_err(fail)?.count();
        return Ok(format!("a readable directory of {entries} entries"));
    }
    std::fs::File::open(path).map_err(fail)?;
    Ok(format!("a readable file of {} bytes", md.len()))
}

/// `command:COMMAND`: its program is one the shell finds (on `PATH`, or a
/// builtin), as `sh -c` will look for it when the backup runs. Only the
/// program is named: the rest of a command line may hold a secret.
pub fn command(command: &str) -> Result<String> {
    let program = command.split_whitespace().find(|w| !w.contains('=')).unwrap_or_default();
    let shown = format!("command:{program}");
    if program.is_empty() {
        return Err(Error::failed(shown, "no command given"));
    }
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v -- \"$1\"", "sh", program])
        .output()
        .map_err(|e| Error::failed(&shown, format!("cannot run sh: {e}")))?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.success(), Path::new(&found).is_absolute()) {
        (true, true) => Ok(format!("runs {found}")),
        (true, false) => Ok(format!("runs the shell's {found}")),
        (false, _) => Err(Error::failed(shown, "not found on PATH")),
    }
}

/// What a Kubernetes source needs: the cluster, the namespace whose rules
/// to review, and the permissions that matter beyond listing.
struct KubeNeeds {
    cluster: String,
    namespace: String,
    /// (verb, API group, resource)
    wants: Vec<(&'static str, &'static str, &'static str)>,
}

/// `k8s://[CONTEXT]` backs up every namespace (and a drill creates
/// namespaces to restore into); `pvc://NAMESPACE/CLAIM?…` runs a Job in
/// the claim's namespace, with a VolumeSnapshot when a CSI class is given.
fn kube_needs(url: &str) -> KubeNeeds {
    let Some(rest) = url.strip_prefix("pvc://") else {
        return KubeNeeds { cluster: url.into(), namespace: "default".into(), wants: vec![("create", "", "namespaces")] };
    };
    let (claim, query) = rest.split_once('?').unwrap_or((rest, ""));
    let param = |key: &str| query.split('&').find_map(|p| p.strip_prefix(key)?.strip_prefix('='));
    let mut wants = vec![("create", "batch", "jobs"), ("get", "", "persistentvolumeclaims")];
    if param("csi-snapshot-class").is_some() {
        wants.extend([("create", "snapshot.storage.k8s.io", "volumesnapshots"), ("create", "", "persistentvolumeclaims")]);
    }
    KubeNeeds {
        cluster: param("cluster").unwrap_or("k8s://").to_string(),
        namespace: claim.split('/').next().unwrap_or_default().to_string(),
        wants,
    }
}

/// `k8s://…`, `pvc://…`: the API server's version and what the current
/// identity may do there (a SelfSubjectRulesReview, summarised). The
/// review is reported, never judged: other authorizers may allow more.
pub async fn kubernetes(url: &str) -> Result<String> {
    let needs = kube_needs(url);
    let client = client(&needs.cluster).await?;
    let fail = |e: kube::Error| Error::failed(&needs.cluster, api_message(&e));
    let version = client.apiserver_version().await.map_err(fail)?;
    let rules = review(&client, &needs).await.map_err(fail)?;
    Ok(format!("Kubernetes {}; {rules}", version.git_version))
}

async fn review(client: &Client, needs: &KubeNeeds) -> Result<String, kube::Error> {
    let ask =
        SelfSubjectRulesReview { spec: SelfSubjectRulesReviewSpec { namespace: Some(needs.namespace.clone()) }, ..Default::default() };
    let answer = match Api::<SelfSubjectRulesReview>::all(client.clone()).create(&PostParams::default(), &ask).await {
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok("permissions: not available (no SelfSubjectRulesReview)".into()),
        other => other?,
    };
    let status = answer.status.unwrap_or_default();
    let mut line = format!("in namespace {}: {}", needs.namespace, summarise(&status.resource_rules, &needs.wants));
    if status.incomplete {
        line.push_str(" (incomplete review)");
    }
    Ok(line)
}

fn allows(rule: &ResourceRule, verb: &str, group: &str, resource: &str) -> bool {
    let has = |list: Option<&Vec<String>>, want: &str| list.is_some_and(|l| l.iter().any(|v| v == want || v == "*"));
    // A rule naming objects grants nothing on the resource as a whole.
    rule.resource_names.as_ref().is_none_or(Vec::is_empty)
        && has(Some(&rule.verbs), verb)
        && has(rule.api_groups.as_ref(), group)
        && has(rule.resources.as_ref(), resource)
}

/// `may list 42 resources; may create jobs; may not create namespaces`.
fn summarise(rules: &[ResourceRule], wants: &[(&str, &str, &str)]) -> String {
    let mut parts = Vec::new();
    if rules.iter().any(|r| allows(r, "list", "*", "*")) {
        parts.push("may list all resources".to_string());
    } else {
        let mut named: Vec<(&str, &str)> = rules
            .iter()
            .filter(|r| r.resource_names.as_ref().is_none_or(Vec::is_empty) && r.verbs.iter().any(|v| v == "list" || v == "*"))
            .flat_map(|r| {
                let groups = r.api_groups.as_deref().unwrap_or_default();
                let resources = r.resources.as_deref().unwrap_or_default();
                groups.iter().flat_map(move |g| resources.iter().filter(|p| !p.contains('/')).map(move |p| (g.as_str(), p.as_str())))
            })
            .collect();
        named.sort_unstable();
        named.dedup();
        parts.push(format!("may list {} resources", named.len()));
    }
    let (may, may_not): (Vec<_>, Vec<_>) = wants.iter().partition(|(v, g, res)| rules.iter().any(|r| allows(r, v, g, res)));
    let say = |list: Vec<&(&str, &str, &str)>| list.iter().map(|(v, _, res)| format!("{v} {res}")).collect::<Vec<_>>().join(", ");
    if !may.is_empty() {
        parts.push(format!("may {}", say(may)));
    }
    if !may_not.is_empty() {
        parts.push(format!("may not {}", say(may_not)));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> ResourceRule {
        let owned = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
        ResourceRule {
            verbs: owned(verbs).unwrap_or_default(),
            api_groups: owned(groups),
            resources: owned(resources),
            resource_names: None,
        }
    }

    #[test]
    fn a_review_reads_as_one_line() {
        let wants = kube_needs("k8s://prod").wants;
        let admin = [rule(&["*"], &["*"], &["*"])];
        assert_eq!(summarise(&admin, &wants), "may list all resources; may create namespaces");
        let reader = [
            rule(&["get", "list", "watch"], &["", "apps"], &["pods", "pods/log", "deployments"]),
            rule(&["list"], &["batch"], &["jobs"]),
            ResourceRule { resource_names: Some(vec!["one".into()]), ..rule(&["list"], &[""], &["secrets"]) },
        ];
        assert_eq!(summarise(&reader, &wants), "may list 5 resources; may not create namespaces");
    }

    #[test]
    fn a_volume_needs_a_job_and_with_csi_a_snapshot() {
        let needs = kube_needs("pvc://shop/data?secret=repo&csi-snapshot-class=csi&cluster=k8s://prod");
        assert_eq!((needs.cluster.as_str(), needs.namespace.as_str()), ("k8s://prod", "shop"));
        let rules = [rule(&["create", "get"], &["batch", ""], &["jobs", "persistentvolumeclaims"])];
        assert_eq!(
            summarise(&rules, &needs.wants),
            "may list 0 resources; may create jobs, get persistentvolumeclaims, create persistentvolumeclaims; may not create volumesnapshots"
        );
        assert_eq!(kube_needs("pvc://shop/data?secret=repo").cluster, "k8s://");
    }
}
