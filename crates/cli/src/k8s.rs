//! `restore --to k8s://`: the snapshot's YAML objects back into a cluster,
//! with a result for every object and an overall status that names its
//! reason.

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::{NodeKind, Repository, Snapshot};
use tresor_sources::k8s_restore::{Existing, ObjectResult, RestoreOptions, restore as apply};
use tresor_sources::k8s_transform::Transforms;

use crate::commands::print_json;
use crate::opts::{Global, RestoreArgs, VolumeCmd, VolumeCommand, VolumeJobArgs};

/// Every `.yaml` file of the snapshot, path and contents; and as failed
/// results, each directory or file that is damaged in the repository, so
/// a restore goes on without what it holds and names it.
pub(crate) async fn objects(repo: &Repository, snap: &Snapshot) -> Result<(Vec<(String, Vec<u8>)>, Vec<ObjectResult>)> {
    let mut files = Vec::new();
    let unread = tresor_engine::walk::each(repo, snap.tree, "", &mut |path, node| {
        if node.kind == NodeKind::File && path.extension().is_some_and(|e| e == "yaml") {
            files.push((path.display().to_string(), node.content.clone(), node.size));
        }
        Ok(())
    })
    .await?;
    let lost = |object: String, detail: String| ObjectResult { object, result: "failed".into(), detail, changes: Vec::new() };
    let mut failed: Vec<ObjectResult> =
        unread.into_iter().map(|u| lost(format!("{}/", u.path.display()), format!("its objects were not read: {}", u.error))).collect();
    let mut out = Vec::new();
    'files: for (path, content, size) in files {
        let mut bytes = Vec::with_capacity(size as usize);
        for id in &content {
            match repo.load_blob(id).await {
                Ok(blob) => bytes.extend_from_slice(&blob),
                Err(e) if tresor_engine::objects::is_damage(&e) => {
                    failed.push(lost(path, format!("it cannot be read: {e}")));
                    continue 'files;
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.push((path, bytes));
    }
    Ok((out, failed))
}

/// `OLD:NEW` pairs of a mapping flag.
pub(crate) fn pairs(flag: &str, given: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut mapping = std::collections::BTreeMap::new();
    for m in given {
        match m.split_once(':') {
            Some((old, new)) if !old.is_empty() && !new.is_empty() => mapping.insert(old.to_string(), new.to_string()),
            _ => bail!("cannot read {flag} {m:?} (use OLD:NEW)"),
        };
    }
    Ok(mapping)
}

/// `OLD:NEW` of registries that may have ports (`registry:5000:mirror:5000`):
/// the first colon that does not begin a port (digits, then the end, `/` or `:`).
fn registry_pair(m: &str) -> Option<(&str, &str)> {
    let is_port = |rest: &str| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && matches!(rest.as_bytes().get(digits), None | Some(b'/' | b':'))
    };
    let at = m.match_indices(':').map(|(i, _)| i).find(|&i| !is_port(&m[i + 1..]))?;
    let (old, new) = (&m[..at], &m[at + 1..]);
    (!old.is_empty() && !new.is_empty()).then_some((old, new))
}

fn options(a: &RestoreArgs) -> Result<RestoreOptions> {
    if a.k8s.selector.is_some() {
        bail!("--selector chooses objects at backup time; a restore takes --include/--exclude-namespaces and -resources");
    }
    let mut transforms = match &a.transforms {
        Some(file) => Transforms::load(file)?,
        None => Transforms::default(),
    };
    // The command line's mappings go on top of the file's.
    transforms.storage_classes.extend(pairs("--storage-class-mapping", &a.storage_class_mapping)?);
    for m in &a.image_registry_mapping {
        let Some((old, new)) = registry_pair(m) else { bail!("cannot read --image-registry-mapping {m:?} (use OLD:NEW)") };
        transforms.image_registries.insert(old.into(), new.into());
    }
    let base = if a.rehearsal { RestoreOptions::rehearsal() } else { RestoreOptions::default() };
    Ok(RestoreOptions {
        filters: a.k8s.filters(),
        mapping: pairs("namespace mapping", &a.namespace_mapping)?,
        existing: if a.existing == "update" { Existing::Update } else { Existing::Skip },
        dry_run: a.dry_run,
        server_dry_run: a.server_dry_run,
        transforms,
        ..base
    })
}

/// The overall status: `completed`, or `partial:` with the count and the first failure.
fn status(results: &[ObjectResult]) -> String {
    let failed: Vec<&ObjectResult> = results.iter().filter(|r| r.result == "failed").collect();
    match failed.first() {
        None => "completed".into(),
        Some(f) => format!("partial: {} of {} objects failed; first: {}: {}", failed.len(), results.len(), f.object, f.detail),
    }
}

pub async fn restore(g: &Global, repo: &Repository, snap: &Snapshot, to: &str, a: &RestoreArgs) -> Result<u8> {
    let opts = options(a)?;
    let (objects, lost) = objects(repo, snap).await?;
    let mut results = apply(to, objects, &opts).await?;
    results.extend(lost);
    let count = |what: &str| results.iter().filter(|r| r.result == what).count();
    let status = status(&results);
    if g.json {
        print_json(&json!({"snapshot": snap.id, "dry_run": a.dry_run, "status": status, "results": results}))?;
    } else {
        for r in &results {
            let detail = if r.detail.is_empty() { String::new() } else { format!(": {}", r.detail) };
            say!("{:<13} {}{detail}", r.result, r.object);
            for change in &r.changes {
                say!("{:<13}   {change}", "");
            }
        }
        let accepted = if a.server_dry_run { format!(", {} accepted by a server-side dry run", count("accepted")) } else { String::new() };
        say!(
            "{} objects: {} created, {} updated, {} skipped, {} failed{accepted}{}",
            results.len(),
            count("created"),
            count("updated"),
            count("skipped"),
            count("failed"),
            if a.dry_run { " (dry run: nothing changed)" } else { "" }
        );
    }
    if status != "completed" {
        eprintln!("tresor: restore {status}");
        return Ok(crate::EXIT_INCOMPLETE);
    }
    Ok(0)
}

fn claim_of(spec: &str) -> Result<(String, String)> {
    match spec.split_once('/') {
        Some((ns, claim)) if !ns.is_empty() && !claim.is_empty() => Ok((ns.into(), claim.into())),
        _ => bail!("name the claim as NAMESPACE/CLAIM, NAMESPACE/* or *, not {spec:?}"),
    }
}

/// The claims a backup takes: one named, or those `NAMESPACE/*` or `*` (with `--selector`) match now.
async fn backup_claims(cluster: &str, spec: &str, selector: Option<&str>) -> Result<Vec<String>> {
    let namespace = match spec {
        "*" => None,
        _ => match claim_of(spec)? {
            (ns, claim) if claim == "*" => Some(ns),
            _ if selector.is_some() => bail!("--selector chooses among claims: name them as NAMESPACE/* or *, not {spec:?}"),
            _ => return Ok(vec![spec.to_string()]),
        },
    };
    let found = tresor_sources::k8s_volume::claims(cluster, namespace.as_deref(), selector).await?;
    Ok(found.into_iter().map(|(ns, claim)| format!("{ns}/{claim}")).collect())
}

/// The pod settings: the plan's, with the command line's on top.
fn pod_settings(j: &VolumeJobArgs) -> Result<tresor_sources::k8s_pod::PodSettings> {
    let mut pod = j.pod.clone();
    pod.run_as_user = j.run_as_user.or(pod.run_as_user);
    pod.run_as_group = j.run_as_group.or(pod.run_as_group);
    pod.fs_group = j.fs_group.or(pod.fs_group);
    for pair in &j.node_selector {
        let Some((k, v)) = pair.split_once('=') else { bail!("cannot read node selector {pair:?} (use KEY=VALUE)") };
        pod.node_selector.insert(k.into(), v.into());
    }
    Ok(pod)
}

/// `tresor volume backup|restore`: the objects made, one per line.
pub async fn volume(g: &Global, cmd: VolumeCmd) -> Result<u8> {
    use tresor_sources::k8s_volume::{VolumeJob, backup, restore};
    let job = |claim: &str, j: VolumeJobArgs, csi_snapshot_class, tags, source: Option<String>| -> Result<VolumeJob> {
        let (namespace, claim) = claim_of(claim)?;
        let wait = j.wait.as_deref().map(crate::commands::parse_duration).transpose()?;
        // Unique per run, and readable: two runs in one second must not collide.
        let now = chrono::Utc::now();
        let stamp = format!("{}-{:04x}", now.format("%Y%m%d%H%M%S"), now.timestamp_subsec_nanos() & 0xffff);
        let source = source.unwrap_or_else(|| format!("{namespace}.{claim}"));
        let pod = pod_settings(&j)?;
        let run = j.run.unwrap_or(stamp);
        Ok(VolumeJob { namespace, claim, image: j.image, secret: j.secret, csi_snapshot_class, wait, tags, pod, source, run })
    };
    let made = match cmd.command {
        VolumeCommand::Backup(a) => {
            let cluster = a.job.cluster.clone();
            let claims = backup_claims(&cluster, &a.claim, a.selector.as_deref()).await?;
            if claims.is_empty() {
                eprintln!("tresor: no claim matches {}{}", a.claim, a.selector.as_ref().map(|s| format!(" with {s}")).unwrap_or_default());
            }
            let many = claims.len() > 1 || claims.first().is_some_and(|c| *c != a.claim);
            let mut runs = Vec::new();
            for claim in &claims {
                // Each claim of a wildcard is its own source for adoption, and its own host for retention.
                let source = match (&a.source, many) {
                    (Some(s), true) => Some(format!("{s}.{}", claim.replace('/', "."))),
                    (s, _) => s.clone(),
                };
                runs.push(job(claim, a.job.clone(), a.csi_snapshot_class.clone(), a.tags.clone(), source)?);
            }
            let results = futures::future::join_all(runs.iter().map(|v| {
                let ns = v.namespace.clone();
                backup(&cluster, v, move |name| eprintln!("tresor: adopting Job {ns}/{name}, left unfinished by an earlier run"))
            }))
            .await;
            let mut made = Vec::new();
            let mut failed = Vec::new();
            for (v, r) in runs.iter().zip(results) {
                match r {
                    Ok(m) => made.extend(m),
                    Err(e) => failed.push(format!("{}/{}: {e}", v.namespace, v.claim)),
                }
            }
            match failed.as_slice() {
                [] => made,
                [one] if claims.len() == 1 => bail!("{}", one.split_once(": ").map_or(one.as_str(), |(_, e)| e)),
                _ => {
                    made.iter().for_each(|m| say!("created {m}"));
                    bail!("{} of {} volumes failed: {}", failed.len(), claims.len(), failed.join("; "))
                }
            }
        }
        VolumeCommand::Restore(a) => {
            let cluster = a.job.cluster.clone();
            let v = job(&a.claim, a.job, None, Vec::new(), None)?;
            restore(&cluster, &v, &a.snapshot, &a.size, a.storage_class.as_deref()).await?
        }
    };
    if g.json {
        print_json(&json!({"created": made}))?;
    } else {
        for m in &made {
            say!("created {m}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_mappings_split_at_the_colon_that_is_no_port() {
        let p = super::registry_pair;
        assert_eq!(p("old.registry:new.registry"), Some(("old.registry", "new.registry")));
        assert_eq!(p("old:5000:new:6000/team"), Some(("old:5000", "new:6000/team")));
        assert_eq!(p("old:10.0.0.1:5000"), Some(("old", "10.0.0.1:5000")));
        assert_eq!(p("localhost:5000"), None);
        assert_eq!(p("old:"), None);
    }
}
