//! A claim kept as a warm standby: a Job in the claim's namespace mounts
//! it at /data and runs `tresor restore SNAPSHOT[:PATH] --target /data
//! --overwrite if-changed --delete`, the incremental restore a directory
//! standby gets (only changed files rewritten, those the snapshot lacks
//! removed). The claim must exist: tresor keeps it current, never makes it.
//!
//! The Job is built as a volume backup's is (k8s_volume: restricted pod
//! security, a TTL, pinned to the node that mounts a ReadWriteOnce claim in
//! use, removed on every path) and named after the claim and the snapshot
//! it restores, so an unfinished Job of the same refresh (a killed `standby
//! refresh`, a daemon that restarted) is adopted; one that restores another
//! (older) snapshot is removed rather than left to write over the newer.

use kube::api::ListParams;

use crate::k8s_pod::{name, node_of};
use crate::k8s_volume::{Ns, VolumeJob, finish, job_object, previous};
use crate::{Error, Result};

/// A standby's target `pvc://NAMESPACE/CLAIM?secret=NAME[&cluster=k8s://CTX][&image=IMAGE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyClaim {
    pub namespace: String,
    pub claim: String,
    /// The Secret (in the claim's namespace) with the repository's settings.
    pub secret: String,
    /// `k8s://[CONTEXT]`.
    pub cluster: String,
    pub image: Option<String>,
}

impl StandbyClaim {
    /// The claim `url` names; Err: why it names none, in one line.
    pub fn parse(url: &str) -> std::result::Result<StandbyClaim, String> {
        let form = "pvc://NAMESPACE/CLAIM?secret=NAME[&cluster=k8s://CONTEXT][&image=IMAGE]";
        let rest = url.strip_prefix("pvc://").ok_or_else(|| format!("a standby claim is {form}, not {url}"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let ok = |s: &str| !s.is_empty() && !s.contains(['*', '/']);
        let Some((namespace, claim)) = path.split_once('/').filter(|(ns, c)| ok(ns) && ok(c)) else {
            return Err(format!("a standby is one claim, {form}, not {url}"));
        };
        let mut c =
            StandbyClaim { namespace: namespace.into(), claim: claim.into(), secret: String::new(), cluster: "k8s://".into(), image: None };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "secret" => c.secret = v.into(),
                "cluster" => c.cluster = v.into(),
                "image" => c.image = Some(v.into()),
                other => return Err(format!("the standby claim {path}: unknown setting {other:?} (known: secret, cluster, image)")),
            }
        }
        if c.secret.is_empty() {
            return Err(format!("the standby claim {path} names no secret=NAME (the Secret with the repository's settings)"));
        }
        Ok(c)
    }
}

/// Restore `snapshot` (`ID` or `ID:PATH`) into the claim `v` names through
/// a Job (named after `v.run`: the snapshot), waiting as `v.wait` says;
/// the objects made, `Kind/name`. `adopting` hears of an unfinished Job of
/// this refresh taken over.
pub async fn refresh(url: &str, v: &VolumeJob, snapshot: &str, adopting: impl FnOnce(&str)) -> Result<Vec<String>> {
    let k = Ns::new(url, &v.namespace).await?;
    let target = match k.api("PersistentVolumeClaim").get(&v.claim).await {
        Ok(c) => serde_json::to_value(c).unwrap_or_default(),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Error::failed(
                url,
                format!("the standby claim {}/{} does not exist (tresor keeps a claim current, it never makes one)", v.namespace, v.claim),
            ));
        }
        Err(e) => return Err(k.fail(e)),
    };
    let (active, stays) = previous(&k, &v.source).await?;
    let job = name(&["tresor-standby", &v.claim, &v.run]);
    let mut stale = Vec::new();
    match active {
        Some(a) if a == job => adopting(&job),
        // It restores another snapshot: left running, it would write that one over this.
        Some(a) => stale.push(("Job".to_string(), a)),
        None => {}
    }
    let stays = [stays, k.remove(&stale).await].concat();
    if !stays.is_empty() {
        return Err(Error::failed(url, format!("an earlier refresh's objects could not be removed: {}", stays.join("; "))));
    }
    let pods = k.list("Pod", &ListParams::default()).await?;
    let node = node_of(&target, &pods);
    let args = ["restore", snapshot, "--target", "/data", "--overwrite", "if-changed", "--delete"].map(String::from).to_vec();
    k.ensure("Job", job_object(v, &job, &v.claim, false, args, node.as_deref())).await?;
    finish(&k, v, &job, vec![("Job".into(), job.clone())]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_claim_is_one_named_claim_with_its_secret() {
        let c = StandbyClaim::parse("pvc://shop/spare?secret=creds&cluster=k8s://dr&image=reg/tresor:1").unwrap();
        assert_eq!((c.namespace.as_str(), c.claim.as_str(), c.secret.as_str()), ("shop", "spare", "creds"));
        assert_eq!((c.cluster.as_str(), c.image.as_deref()), ("k8s://dr", Some("reg/tresor:1")));
        assert_eq!(StandbyClaim::parse("pvc://shop/spare?secret=s").unwrap().cluster, "k8s://");
        let form = "pvc://NAMESPACE/CLAIM?secret=NAME[&cluster=k8s://CONTEXT][&image=IMAGE]";
        for bad in ["pvc://shop?secret=s", "pvc://shop/*?secret=s", "pvc://*?secret=s", "pvc:///c?secret=s", "pvc://a/b/c?secret=s"] {
            assert_eq!(StandbyClaim::parse(bad), Err(format!("a standby is one claim, {form}, not {bad}")));
        }
        assert_eq!(
            StandbyClaim::parse("pvc://shop/spare"),
            Err("the standby claim shop/spare names no secret=NAME (the Secret with the repository's settings)".into())
        );
        assert_eq!(
            StandbyClaim::parse("pvc://shop/spare?secret=s&selector=a=b"),
            Err("the standby claim shop/spare: unknown setting \"selector\" (known: secret, cluster, image)".into())
        );
    }
}
