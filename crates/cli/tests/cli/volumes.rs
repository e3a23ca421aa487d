//! Persistent volumes through Jobs in the fake cluster, as the shipped
//! service account: Jobs a `restricted` namespace admits, adopted by a
//! retry, owned, pinned and removed on every path; refusals in the
//! cluster's words; plans that take every claim a selector matches, and
//! the claims nobody backs up.

use super::k8s::{Cluster, names, tresor};
use super::*;

const SNAPSHOT_CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: volumesnapshots.snapshot.storage.k8s.io\nspec:\n  group: snapshot.storage.k8s.io\n  scope: Namespaced\n  names:\n    plural: volumesnapshots\n    singular: volumesnapshot\n    kind: VolumeSnapshot\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n";

/// A volume command run in the background until it ends: (exit code, stdout, stderr).
pub(super) struct Running(pub std::process::Child);

impl Running {
    pub(super) fn start(env: &Env, c: &Cluster, args: &[&str]) -> Running {
        Running(env.cmd(args).env("KUBECONFIG", &c.kubeconfig).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
    }

    pub(super) fn end(self) -> (Option<i32>, String, String) {
        let out = self.0.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The pod of a Job, once the job controller made it.
pub(super) fn pod_of(c: &Cluster, job: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = c.kubectl(&["get", "pods", "-n", "shop", "-l", &format!("job-name={job}"), "-o", "name"]);
        if let Some(p) = String::from_utf8_lossy(&out.stdout).lines().next() {
            return p.trim_start_matches("pod/").to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no pod for Job {job}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The kubelet's part: the pod ran and exited with this phase.
pub(super) fn pod_ends(c: &Cluster, pod: &str, phase: &str) {
    let patch = format!(r#"{{"status":{{"phase":"{phase}"}}}}"#);
    let out = c.kubectl(&["patch", "pod", pod, "-n", "shop", "--subresource=status", "--type=merge", "-p", &patch]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A pod in `shop` that mounts the claim `data`, admitted by `restricted`.
const USER_POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop"}, "spec": {
  "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
  "containers": [{"name": "db", "image": "postgres:15", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}"#;

#[test]
fn volume_jobs_pass_restricted_pod_security_are_adopted_and_cleaned_up() {
    let env = Env::new();
    let c = Cluster::start();
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], USER_POD);
    let args = ["volume", "backup", "shop/data", "--secret", "repo-creds", "--run", "r1", "--json"];
    let out = tresor(&env, &c, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["created"], serde_json::json!(["Job/tresor-backup-data-r1"]));
    let job = c.server.object("batch", "jobs", Some("shop"), "tresor-backup-data-r1").unwrap();
    assert_eq!(job["metadata"]["labels"]["tresor.dev/source"], "shop.data");
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"], serde_json::json!({"claimName": "data", "readOnly": true}));
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!(["backup", "/data", "--host", "shop/data", "--tag", "source=pvc:shop/data"])
    );
    assert_eq!(pod["containers"][0]["envFrom"][0]["secretRef"]["name"], "repo-creds");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let pinned =
        &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(pinned["values"], serde_json::json!(["fake-node"]), "a ReadWriteOnce claim in use is read on its node");
    // `shop` enforces `restricted`: that the job controller made the pod is admission's yes.
    let pod = pod_of(&c, "tresor-backup-data-r1");

    // A retry (another run id) adopts the unfinished Job instead of making a second.
    let mut retry = Running::start(&env, &c, &["volume", "backup", "shop/data", "--secret", "repo-creds", "--run", "r2", "--wait", "60s"]);
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(retry.0.stderr.as_mut().unwrap()), &mut said).unwrap();
    assert_eq!(said, "tresor: adopting Job shop/tresor-backup-data-r1, left unfinished by an earlier run\n");
    assert_eq!(names(&c, "jobs"), ["job.batch/tresor-backup-data-r1"]);
    pod_ends(&c, &pod, "Succeeded");
    let (code, stdout, stderr) = retry.end();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "created Job/tresor-backup-data-r1\n");
    assert!(names(&c, "jobs").is_empty(), "the Job is removed");
    assert_eq!(names(&c, "pods"), ["pod/db"], "and its pod with it");

    // With a CSI snapshot: a snapshot and a clone owned by the Job, all removed once it succeeded.
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], SNAPSHOT_CRD);
    let csi =
        ["volume", "backup", "shop/data", "--secret", "repo-creds", "--csi-snapshot-class", "csi-snap", "--run", "r3", "--wait", "60s"];
    let run = Running::start(&env, &c, &csi);
    let name = "tresor-backup-data-r3";
    let pod = pod_of(&c, name);
    let job_uid = c.server.object("batch", "jobs", Some("shop"), name).unwrap()["metadata"]["uid"].clone();
    let snapshot = c.server.object("snapshot.storage.k8s.io", "volumesnapshots", Some("shop"), name).expect("a snapshot");
    assert_eq!(snapshot["metadata"]["ownerReferences"][0]["uid"], job_uid);
    let cloned = c.server.object("", "persistentvolumeclaims", Some("shop"), name).expect("a clone");
    assert_eq!(cloned["metadata"]["ownerReferences"][0]["uid"], job_uid);
    assert_eq!(cloned["spec"]["dataSource"]["kind"], "VolumeSnapshot");
    assert_eq!(cloned["spec"]["resources"]["requests"]["storage"], "1Gi", "the clone is the size of the claim");
    let job = c.server.object("batch", "jobs", Some("shop"), name).unwrap();
    assert_eq!(job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], name);
    assert!(job["spec"]["template"]["spec"]["affinity"].is_null(), "a clone is not pinned");
    pod_ends(&c, &pod, "Succeeded");
    let (code, _, stderr) = run.end();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(names(&c, "volumesnapshots").is_empty(), "the snapshot is removed after the job");
    assert_eq!(names(&c, "persistentvolumeclaims"), ["persistentvolumeclaim/data"], "and the clone");
    assert!(names(&c, "jobs").is_empty());

    // A run killed between making its Job and its snapshot: the next run
    // adopts the Job and makes the snapshot and the clone its pod waits for.
    let unwaited = ["volume", "backup", "shop/data", "--secret", "repo-creds", "--csi-snapshot-class", "csi-snap", "--run", "r6"];
    assert!(tresor(&env, &c, &unwaited).status.success());
    let name = "tresor-backup-data-r6";
    assert!(c.kubectl(&["delete", "volumesnapshot", name, "-n", "shop"]).status.success());
    assert!(c.kubectl(&["delete", "pvc", name, "-n", "shop"]).status.success());
    let pod = pod_of(&c, name);
    let mut csi_retry = csi;
    csi_retry[8] = "r7";
    let mut retry = Running::start(&env, &c, &csi_retry);
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(retry.0.stderr.as_mut().unwrap()), &mut said).unwrap();
    assert_eq!(said, format!("tresor: adopting Job shop/{name}, left unfinished by an earlier run\n"));
    let job_uid = c.server.object("batch", "jobs", Some("shop"), name).unwrap()["metadata"]["uid"].clone();
    // It says so before it makes them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (group, plural) in [("snapshot.storage.k8s.io", "volumesnapshots"), ("", "persistentvolumeclaims")] {
        let made = loop {
            match c.server.object(group, plural, Some("shop"), name) {
                Some(made) => break made,
                None if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
                None => panic!("the adopting run makes its {plural}"),
            }
        };
        assert_eq!(made["metadata"]["ownerReferences"][0]["uid"], job_uid);
    }
    pod_ends(&c, &pod, "Succeeded");
    let (code, _, stderr) = retry.end();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(names(&c, "volumesnapshots").is_empty() && names(&c, "jobs").is_empty());

    let out =
        tresor(&env, &c, &["volume", "restore", "0123abcd", "shop/restored", "--size", "2Gi", "--secret", "repo-creds", "--run", "r4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let claim = c.server.object("", "persistentvolumeclaims", Some("shop"), "restored").unwrap();
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "created PersistentVolumeClaim/restored\ncreated Job/tresor-restore-restored-r4\n");
    let job = c.server.object("batch", "jobs", Some("shop"), "tresor-restore-restored-r4").unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["restore", "0123abcd", "--target", "/data", "--verify"])
    );
    let again =
        tresor(&env, &c, &["volume", "restore", "0123abcd", "shop/restored", "--size", "2Gi", "--secret", "repo-creds", "--run", "r5"]);
    assert_eq!(String::from_utf8_lossy(&again.stderr), "tresor: error: k8s://: claim shop/restored exists; restore into a new claim\n");
    // A restore whose Job does not finish in time removes the claim it made, so a retry can make it again.
    let unfinished = ["volume", "restore", "0123abcd", "shop/unfilled", "--size", "1Gi", "--secret", "repo-creds", "--wait", "2s"];
    let out = tresor(&env, &c, &[&unfinished[..], &["--run", "r8"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.server.object("", "persistentvolumeclaims", Some("shop"), "unfilled").is_none(), "the claim it made is removed");
    let out = tresor(&env, &c, &[&unfinished[..], &["--run", "r9"]].concat());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("exists"), "{}", String::from_utf8_lossy(&out.stderr));
    let err = tresor(&env, &c, &["volume", "backup", "data", "--secret", "s"]);
    assert_eq!(String::from_utf8_lossy(&err.stderr), "tresor: error: name the claim as NAMESPACE/CLAIM, NAMESPACE/* or *, not \"data\"\n");
}

#[test]
fn a_refused_or_unplaceable_volume_job_is_reported_with_the_clusters_words_and_removed() {
    let env = Env::new();
    let c = Cluster::start();
    let base = ["volume", "backup", "shop/data", "--secret", "repo-creds"];
    let out = tresor(&env, &c, &[&base[..], &["--run", "root", "--run-as-user", "0", "--wait", "60s"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "tresor: error: k8s://: Job tresor-backup-data-root: its pod was refused: Error creating: pods \"tresor-backup-data-root-"
        ),
        "{err}"
    );
    assert!(
        err.ends_with(
            "is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false), runAsUser=0 (pod must not set runAsUser=0)\n"
        ),
        "{err}"
    );
    assert!(names(&c, "jobs").is_empty(), "removed after the refusal");

    let out = tresor(&env, &c, &[&base[..], &["--run", "ssd", "--node-selector", "disk=ssd", "--wait", "2s"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: error: k8s://: Job tresor-backup-data-ssd: did not finish within 2s; last event: FailedScheduling: 0/1 nodes are available: \
         1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.\n"
    );
    assert!(names(&c, "jobs").is_empty() && names(&c, "pods").is_empty(), "the Job and its pod are removed after the timeout");

    // A role without `delete jobs`: the backup ran, and what stays is said, with the API's words.
    let patch = r#"{"rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "delete"]},
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["create", "delete"]}]}"#;
    assert!(c.kubectl(&["patch", "clusterrole", "tresor-volume-jobs", "--type=merge", "-p", patch]).status.success());
    let run = Running::start(&env, &c, &[&base[..], &["--run", "kept", "--wait", "60s"]].concat());
    pod_ends(&c, &pod_of(&c, "tresor-backup-data-kept"), "Succeeded");
    let (code, _, stderr) = run.end();
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "tresor: error: k8s://: Job tresor-backup-data-kept succeeded, but Job/tresor-backup-data-kept stays: jobs.batch \"tresor-backup-data-kept\" is forbidden: \
         User \"system:serviceaccount:tresor:tresor\" cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"shop\"\n"
    );
}

#[test]
fn the_daemon_backs_up_a_volume_through_a_job_and_waits_for_it() {
    let mut env = Env::new();
    let c = Cluster::start();
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: shop-data\n    class: standard\n    url: \"pvc://shop/data?secret=repo-creds\"\n    schedule: \"@daily\"\n    timeout: 10m\n\
             daemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    let d = super::daemon::start_daemon(&env, &plan, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let job = loop {
        if let Some(j) = names(&c, "jobs").into_iter().next() {
            break j.trim_start_matches("job.batch/").to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no Job from the daemon");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let spec = c.server.object("batch", "jobs", Some("shop"), &job).unwrap();
    assert_eq!(
        spec["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["backup", "/data", "--host", "shop/data", "--tag", "source=shop-data"]),
        "tagged with the plan's source name, so retention and drills find it"
    );
    assert_eq!(
        super::daemon::count(&super::daemon::wait_jobs(&d, "running", |_| true), "shop-data", "backup", "running"),
        1,
        "the daemon waits for the Job"
    );
    assert!(job.starts_with("tresor-backup-data-job-"), "named after the daemon's job: {job}");
    assert_eq!(spec["metadata"]["labels"]["tresor.dev/source"], "shop-data");
    pod_ends(&c, &pod_of(&c, &job), "Succeeded");
    super::daemon::wait_jobs(&d, "the volume backup", |j| super::daemon::count(j, "shop-data", "backup", "succeeded") == 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !names(&c, "jobs").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the finished Job stays: {:?}", names(&c, "jobs"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Claims in shop: `data` (no label, named by no source), and two labelled `backup=daily`.
const DAILY_CLAIMS: &str = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "logs", "namespace": "shop", "labels": {"backup": "daily"}},
   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
  {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "uploads", "namespace": "shop", "labels": {"backup": "daily"}},
   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}"#;

/// A plan covers a namespace by scope and its volumes by selector: every
/// matching claim is backed up, a claim nobody named is counted and listed
/// as unprotected, and the namespace-scoped resource backup takes only its namespace.
#[test]
fn plans_cover_namespaces_and_volumes_by_selector_and_name_what_is_unprotected() {
    let mut env = Env::new();
    let c = Cluster::start();
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], DAILY_CLAIMS);
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: shop-volumes\n    class: standard\n    url: \"pvc://shop/*?selector=backup=daily&secret=repo-creds\"\n    schedule: \"@daily\"\n    timeout: 10m\n\
             \x20   pod: {{run_as_user: 999, fs_group: 999, resources: {{limits: {{memory: 1Gi}}}}}}\n\
             \x20 - name: shop-resources\n    class: standard\n    url: \"k8s://\"\n    schedule: \"@daily\"\n\
             \x20   scope: {{namespaces: [shop], exclude_resources: [secrets]}}\n\
             daemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    let d = super::daemon::start_daemon(&env, &plan, None);
    for claim in ["logs", "uploads"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let job = loop {
            let found = names(&c, "jobs").into_iter().find(|j| j.starts_with(&format!("job.batch/tresor-backup-{claim}-job-")));
            if let Some(j) = found {
                break j.trim_start_matches("job.batch/").to_string();
            }
            assert!(std::time::Instant::now() < deadline, "no Job for {claim}: {:?}", names(&c, "jobs"));
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let spec = c.server.object("batch", "jobs", Some("shop"), &job).unwrap();
        let pod = &spec["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"], 999, "the plan's pod settings");
        assert_eq!(pod["containers"][0]["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(spec["metadata"]["labels"]["tresor.dev/source"], format!("shop-volumes.shop.{claim}"));
        pod_ends(&c, &pod_of(&c, &job), "Succeeded");
    }
    let jobs = super::daemon::wait_jobs(&d, "both backups", |j| {
        super::daemon::count(j, "shop-volumes", "backup", "succeeded") == 1
            && super::daemon::count(j, "shop-resources", "backup", "succeeded") == 1
    });
    assert_eq!(super::daemon::count(&jobs, "shop-volumes", "backup", "failed"), 0);
    assert!(!names(&c, "jobs").iter().any(|j| j.contains("data")), "the unlabelled claim is not backed up");

    let (_, metrics) = super::daemon::http(d.port, "GET", "/metrics", None);
    assert!(metrics.contains("backup_unprotected_volumes{namespace=\"shop\"} 1\n"), "{metrics}");
    let (_, page) = super::daemon::http(d.port, "GET", "/", Some("read-token"));
    assert!(page.contains("<tr data-claim=\"shop/data\"><td>shop</td><td>data</td></tr>"), "{page}");

    let snaps = env.json(&["snapshots", "--tag", "source=shop-resources"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["source"]["consistency"]["namespaces"], serde_json::json!(["shop"]));
    let listing = env.ok(&["ls", snaps[0]["id"].as_str().unwrap()]);
    assert!(listing.contains("/namespaces/shop/core/ConfigMap/settings.yaml"), "{listing}");
    assert!(!listing.contains("/Secret/") && !listing.contains("/namespaces/other/"), "the scope's exclusions: {listing}");
}
