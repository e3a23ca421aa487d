//! The pods of volume Jobs: specs a `restricted` namespace admits (non-root,
//! seccomp RuntimeDefault, all capabilities dropped, no privilege
//! escalation, a read-only root with an emptyDir for scratch), the identity,
//! resources and placement a plan may set per source, and pinning to the
//! node that mounts a ReadWriteOnce claim.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How a volume Job's pod runs; every field optional (`pod:` of a `pvc://` source in the plan).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodSettings {
    /// The user the Job runs as (default 10001, the image's user). Files it
    /// cannot read are reported and the backup exits 3; `0` needs a
    /// namespace that allows `baseline` (docs/KUBERNETES.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// The group that owns the volume's files for the pod (Kubernetes' fsGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    /// The container's resources, as Kubernetes takes them: `{requests: {cpu: 100m}, limits: {memory: 1Gi}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = "object", "x-kubernetes-preserve-unknown-fields" = true))]
    pub resources: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, as Kubernetes takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "object", "x-kubernetes-preserve-unknown-fields": true}))]
    pub tolerations: Vec<Value>,
}

/// The image volume Jobs run unless told otherwise.
pub const DEFAULT_IMAGE: &str = "ghcr.io/tresor/tresor:0.1.0";

/// The image's own user.
pub const DEFAULT_USER: i64 = 10001;

/// Labels on everything tresor makes for a volume: the source they serve and the run.
pub fn labels(source: &str, run: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "tresor", "tresor.dev/source": label_value(source), "tresor.dev/run": label_value(run)})
}

/// A label value (at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends).
pub fn label_value(s: &str) -> String {
    let v: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    // Cut, a value keeps a hash of the whole: two long ones that share
    // their first characters (claims `…-0` and `…-1`) stay apart.
    let v = if v.len() > 63 { format!("{}-{}", &v[..50], &blake3::hash(s.as_bytes()).to_hex()[..12]) } else { v };
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The pod template of a volume Job: `args` run with `claim` at /data.
pub fn template(p: &PodSettings, image: &str, secret: &str, claim: &str, read_only: bool, args: &[String], node: Option<&str>) -> Value {
    let user = p.run_as_user.unwrap_or(DEFAULT_USER);
    let mut pod = json!({
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": user != 0, "runAsUser": user, "runAsGroup": p.run_as_group.unwrap_or(user),
            "fsGroup": p.fs_group.unwrap_or(user), "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "tresor", "image": image, "args": args, "envFrom": [{"secretRef": {"name": secret}}],
            // The root file system is read-only: temporary files and the cache go to the emptyDir.
            "env": [{"name": "TMPDIR", "value": "/tmp"}, {"name": "HOME", "value": "/tmp"}, {"name": "TRESOR_CACHE_DIR", "value": "/tmp/cache"}],
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": read_only}, {"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}},
            {"name": "tmp", "emptyDir": {}},
        ],
    });
    if let Some(r) = &p.resources {
        pod["containers"][0]["resources"] = r.clone();
    }
    if !p.node_selector.is_empty() {
        pod["nodeSelector"] = json!(p.node_selector);
    }
    if !p.tolerations.is_empty() {
        pod["tolerations"] = json!(p.tolerations);
    }
    if let Some(node) = node {
        // A ReadWriteOnce volume in use can be mounted only on its node.
        pod["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
    }
    pod
}

/// The node of a running or starting pod that mounts `claim`, when the claim is ReadWriteOnce.
pub fn node_of(claim_obj: &Value, pods: &[Value]) -> Option<String> {
    let modes = claim_obj["spec"]["accessModes"].as_array()?;
    if !modes.iter().all(|m| m == "ReadWriteOnce") {
        return None;
    }
    let name = claim_obj["metadata"]["name"].as_str()?;
    pods.iter()
        .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Running" | "Pending")))
        .filter(|p| p["spec"]["volumes"].as_array().is_some_and(|v| v.iter().any(|v| v["persistentVolumeClaim"]["claimName"] == name)))
        .find_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
}

/// A Kubernetes name (DNS-1123 label, at most 63 characters) from parts.
pub fn name(parts: &[&str]) -> String {
    let raw = parts.join("-").to_lowercase();
    let mut n: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    if n.len() > 63 {
        // Keep it unique when cut: a hash of the whole, and the tail, which holds the run.
        let (hash, tail) = (blake3::hash(raw.as_bytes()).to_hex()[..10].to_string(), n[n.len() - 20..].to_string());
        n = format!("{}-{hash}-{tail}", &n[..31]);
    }
    n.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_that_keep_the_run() {
        assert_eq!(name(&["tresor", "backup", "Data_1", "20261130"]), "tresor-backup-data-1-20261130");
        let long = name(&["tresor", "backup", &"c".repeat(80), "run-0123456789abcdef"]);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("run-0123456789abcdef"), "{long}");
        let other = name(&["tresor", "backup", &format!("{}d", "c".repeat(79)), "run-0123456789abcdef"]);
        assert_eq!(other.len(), 63);
        assert_ne!(long, other, "two long names that differ in the middle stay apart");
        let (a, b) = (label_value(&format!("{}-0", "claim".repeat(14))), label_value(&format!("{}-1", "claim".repeat(14))));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
        assert_eq!(label_value("shop.data"), "shop.data");
    }

    #[test]
    fn only_a_read_write_once_claim_in_use_pins_the_job() {
        let claim = json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}});
        let pod = |phase: &str| json!({"spec": {"nodeName": "n1", "volumes": [{"persistentVolumeClaim": {"claimName": "data"}}]}, "status": {"phase": phase}});
        assert_eq!(node_of(&claim, &[pod("Succeeded"), pod("Running")]), Some("n1".into()));
        assert_eq!(node_of(&claim, &[pod("Succeeded")]), None);
        let shared = json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteMany"]}});
        assert_eq!(node_of(&shared, &[pod("Running")]), None);
    }
}
