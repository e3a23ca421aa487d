//! Pod Security admission as the API server runs it: a namespace's
//! `pod-security.kubernetes.io/enforce` label refuses pods that break its
//! level (baseline or restricted), `…/warn` admits them with a warning,
//! and pod templates of workloads (Jobs, Deployments, …) are checked
//! against both for warnings only: their pods are refused later, when the
//! controller creates them. The checks, their order and their wording are
//! those of the upstream policy (k8s.io/pod-security-admission, "latest"),
//! for the fields tresor's pods can set.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: Option<&str>) -> Level {
        match s {
            Some("restricted") => Level::Restricted,
            Some("baseline") => Level::Baseline,
            _ => Level::Privileged,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A namespace's levels: (enforce, warn).
pub fn levels(namespace: Option<&Value>) -> (Level, Level) {
    let label = |mode: &str| {
        namespace.and_then(|n| n["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")].as_str()).map(String::from)
    };
    (Level::parse(label("enforce").as_deref()), Level::parse(label("warn").as_deref()))
}

/// The pod spec inside a workload of this kind, if it has one.
pub fn template_of<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    let spec = match kind {
        "Pod" => return Some(&obj["spec"]),
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "Job" | "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "PodTemplate" => {
            &obj["spec"]["template"]["spec"]
        }
        _ => return None,
    };
    spec.is_object().then_some(spec)
}

/// `violates PodSecurity "restricted:latest": …` for a pod spec, or None when it complies.
pub fn violations(level: Level, pod: &Value) -> Option<String> {
    let found: Vec<String> = checks(level).iter().filter_map(|check| check(pod)).collect();
    (!found.is_empty()).then(|| format!("PodSecurity \"{}:latest\": {}", level.name(), found.join(", ")))
}

type Check = fn(&Value) -> Option<String>;

/// The checks of a level in the order of their upstream ids (restricted
/// ones replace the baseline ones they tighten).
fn checks(level: Level) -> Vec<Check> {
    match level {
        Level::Privileged => vec![],
        Level::Baseline => vec![capabilities_baseline, host_namespaces, host_path_volumes, host_ports, privileged, seccomp_baseline],
        Level::Restricted => vec![
            allow_privilege_escalation,
            capabilities_restricted,
            host_namespaces,
            host_ports,
            privileged,
            restricted_volumes,
            run_as_non_root,
            run_as_user,
            seccomp_restricted,
        ],
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|k| pod[*k].as_array().into_iter().flatten()).collect()
}

fn name(c: &Value) -> String {
    format!("{:?}", c["name"].as_str().unwrap_or_default())
}

/// `container "a"` or `containers "a", "b"`.
fn who(names: &[String]) -> String {
    match names {
        [one] => format!("container {one}"),
        many => format!("containers {}", many.join(", ")),
    }
}

fn failing(pod: &Value, bad: impl Fn(&Value) -> bool) -> Vec<String> {
    containers(pod).into_iter().filter(|c| bad(c)).map(name).collect()
}

fn allow_privilege_escalation(pod: &Value) -> Option<String> {
    let bad = failing(pod, |c| c["securityContext"]["allowPrivilegeEscalation"] != false);
    (!bad.is_empty())
        .then(|| format!("allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)", who(&bad)))
}

/// Capabilities a baseline pod may add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added<'a>(c: &'a Value, allowed: &[&str]) -> Vec<&'a str> {
    let adds = c["securityContext"]["capabilities"]["add"].as_array();
    adds.into_iter().flatten().filter_map(|a| a.as_str()).filter(|a| !allowed.contains(a)).collect()
}

fn capabilities_baseline(pod: &Value) -> Option<String> {
    let parts: Vec<String> = containers(pod)
        .into_iter()
        .filter_map(|c| {
            let caps = added(c, BASELINE_CAPS);
            let list: Vec<String> = caps.iter().map(|a| format!("{a:?}")).collect();
            (!caps.is_empty())
                .then(|| format!("container {} must not include {} in securityContext.capabilities.add", name(c), list.join(", ")))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("non-default capabilities ({})", parts.join("; ")))
}

fn capabilities_restricted(pod: &Value) -> Option<String> {
    let drops_all = |c: &Value| c["securityContext"]["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL"));
    let mut parts = Vec::new();
    let no_drop = failing(pod, |c| !drops_all(c));
    if !no_drop.is_empty() {
        parts.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", who(&no_drop)));
    }
    for c in containers(pod) {
        let caps = added(c, &["NET_BIND_SERVICE"]);
        if !caps.is_empty() {
            let list: Vec<String> = caps.iter().map(|a| format!("{a:?}")).collect();
            parts.push(format!("container {} must not include {} in securityContext.capabilities.add", name(c), list.join(", ")));
        }
    }
    (!parts.is_empty()).then(|| format!("unrestricted capabilities ({})", parts.join("; ")))
}

fn host_namespaces(pod: &Value) -> Option<String> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"].iter().filter(|k| pod[**k] == true).map(|k| format!("{k}=true")).collect();
    (!set.is_empty()).then(|| format!("host namespaces ({})", set.join(", ")))
}

fn volumes_of(pod: &Value, bad: impl Fn(&Value) -> Option<String>) -> Vec<(String, String)> {
    let vols = pod["volumes"].as_array().into_iter().flatten();
    vols.filter_map(|v| bad(v).map(|t| (format!("{:?}", v["name"].as_str().unwrap_or_default()), t))).collect()
}

fn host_path_volumes(pod: &Value) -> Option<String> {
    let bad = volumes_of(pod, |v| v["hostPath"].is_object().then(|| "hostPath".to_string()));
    let names: Vec<String> = bad.into_iter().map(|(n, _)| n).collect();
    match names.as_slice() {
        [] => None,
        [one] => Some(format!("hostPath volumes (volume {one})")),
        many => Some(format!("hostPath volumes (volumes {})", many.join(", "))),
    }
}

/// Volume types a restricted pod may use.
const RESTRICTED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

fn restricted_volumes(pod: &Value) -> Option<String> {
    let bad = volumes_of(pod, |v| {
        let obj = v.as_object()?;
        let kind = obj.keys().find(|k| *k != "name")?;
        (!RESTRICTED_VOLUMES.contains(&kind.as_str())).then(|| kind.clone())
    });
    match bad.as_slice() {
        [] => None,
        [(n, t)] => Some(format!("restricted volume types (volume {n} uses restricted volume type {t:?})")),
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
            let types: Vec<String> = many.iter().map(|(_, t)| format!("{t:?}")).collect();
            Some(format!("restricted volume types (volumes {} use restricted volume types {})", names.join(", "), types.join(", ")))
        }
    }
}

fn host_ports(pod: &Value) -> Option<String> {
    let parts: Vec<String> = containers(pod)
        .into_iter()
        .filter_map(|c| {
            let ports: Vec<String> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["hostPort"].as_u64().filter(|h| *h != 0))
                .map(|h| h.to_string())
                .collect();
            (!ports.is_empty()).then(|| format!("container {} uses hostPort {}", name(c), ports.join(", ")))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("hostPort ({})", parts.join("; ")))
}

fn privileged(pod: &Value) -> Option<String> {
    let bad = failing(pod, |c| c["securityContext"]["privileged"] == true);
    (!bad.is_empty()).then(|| format!("privileged ({} must not set securityContext.privileged=true)", who(&bad)))
}

fn run_as_non_root(pod: &Value) -> Option<String> {
    let pod_level = &pod["securityContext"]["runAsNonRoot"];
    if *pod_level == false {
        return Some("runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)".into());
    }
    let explicit_false = failing(pod, |c| c["securityContext"]["runAsNonRoot"] == false);
    if !explicit_false.is_empty() {
        return Some(format!("runAsNonRoot != true ({} must not set securityContext.runAsNonRoot=false)", who(&explicit_false)));
    }
    if *pod_level == true {
        return None;
    }
    let unset = failing(pod, |c| c["securityContext"]["runAsNonRoot"] != true);
    let whom = match unset.as_slice() {
        [] => return None,
        [one] => format!("pod or container {one}"),
        many => format!("pod or containers {}", many.join(", ")),
    };
    Some(format!("runAsNonRoot != true ({whom} must set securityContext.runAsNonRoot=true)"))
}

fn run_as_user(pod: &Value) -> Option<String> {
    if pod["securityContext"]["runAsUser"] == 0 {
        return Some("runAsUser=0 (pod must not set runAsUser=0)".into());
    }
    let bad = failing(pod, |c| c["securityContext"]["runAsUser"] == 0);
    (!bad.is_empty()).then(|| format!("runAsUser=0 ({} must not set runAsUser=0)", who(&bad)))
}

fn seccomp_type(v: &Value) -> Option<&str> {
    v["securityContext"]["seccompProfile"]["type"].as_str()
}

fn seccomp_baseline(pod: &Value) -> Option<String> {
    if seccomp_type(pod) == Some("Unconfined") {
        return Some("seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")".into());
    }
    let bad = failing(pod, |c| seccomp_type(c) == Some("Unconfined"));
    (!bad.is_empty()).then(|| format!("seccompProfile ({} must not set securityContext.seccompProfile.type to \"Unconfined\")", who(&bad)))
}

fn seccomp_restricted(pod: &Value) -> Option<String> {
    let good = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    if seccomp_type(pod).is_some_and(|t| !good(Some(t))) {
        return Some(format!(
            "seccompProfile (pod must not set securityContext.seccompProfile.type to {:?})",
            seccomp_type(pod).unwrap_or_default()
        ));
    }
    let pod_ok = good(seccomp_type(pod));
    let bad = failing(pod, |c| match seccomp_type(c) {
        None => !pod_ok,
        t => !good(t),
    });
    let whom = match bad.as_slice() {
        [] => return None,
        names if pod_ok => who(names),
        [one] => format!("pod or container {one}"),
        many => format!("pod or containers {}", many.join(", ")),
    };
    Some(format!("seccompProfile ({whom} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_plain_pod_breaks_restricted_as_the_api_server_words_it() {
        let pod = json!({"containers": [{"name": "tresor", "image": "x"}]});
        assert_eq!(
            violations(Level::Restricted, &pod).unwrap(),
            "PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"tresor\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"tresor\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"tresor\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"tresor\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(violations(Level::Baseline, &pod), None);
    }

    #[test]
    fn a_hardened_pod_passes_and_host_access_breaks_baseline() {
        let sc = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let pod = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "a", "securityContext": sc}], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]});
        assert_eq!(violations(Level::Restricted, &pod), None);
        let host = json!({"hostNetwork": true, "containers": [{"name": "a", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]});
        assert_eq!(
            violations(Level::Baseline, &host).unwrap(),
            "PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), hostPath volumes (volume \"root\"), \
             privileged (container \"a\" must not set securityContext.privileged=true)"
        );
    }
}
