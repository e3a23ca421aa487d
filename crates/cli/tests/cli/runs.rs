//! Runs as Kubernetes objects, against the fake API server with RBAC on:
//! a daemon following BackupPlan shop/nightly (as the shipped service
//! account) keeps each backup, restore and drill as a BackupRun,
//! RestoreRun or DrillRun that real kubectl lists with its columns; starts
//! the runs created with kubectl; refuses, in their status, a restore of a
//! snapshot that is not there or into a namespace it may not write; and
//! prunes its own finished runs beyond the plan's count and age; a daemon
//! killed mid-run ends that run, when it comes back, as its job ended.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::{Daemon, count, http, wait_jobs};
use super::k8s::Cluster;
use super::*;

struct Setup {
    env: Env,
    c: Cluster,
    d: Daemon,
}

/// A daemon on BackupPlan shop/nightly with the source `files` (13 bytes in
/// two files) and `more` sources, its `daemon` settings taken from `daemon`.
fn start(more: &[Value], daemon: Value) -> Setup {
    start_with(Env::new(), more, daemon)
}

fn start_with(mut env: Env, more: &[Value], mut daemon: Value) -> Setup {
    let c = Cluster::start();
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    for crd in ["crd-backupplan.yaml", "crd-runs.yaml"] {
        let text = fs::read_to_string(format!("{}/../../deploy/kubernetes/{crd}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], &text);
    }
    fs::create_dir_all(env.path("files/docs")).unwrap();
    fs::write(env.path("files/a.txt"), "alpha\n").unwrap();
    fs::write(env.path("files/docs/b.md"), "# beta\n").unwrap();
    daemon["state"] = env.path("state.db").display().to_string().into();
    let mut sources = vec![json!({"name": "files", "class": "standard", "url": env.path("files"), "schedule": "@daily"})];
    sources.extend(more.iter().cloned());
    let plan = json!({"apiVersion": "tresor.dev/v1alpha1", "kind": "BackupPlan", "metadata": {"name": "nightly", "namespace": "shop"}, "spec": {
        "repositories": {"main": {"url": env.repo, "password_file": env.path("pw"), "init": true}},
        "classes": {"standard": {"rpo": "1d", "rto": "4h"}},
        "sources": sources, "daemon": daemon}});
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], &plan.to_string());
    let d = super::k8s::plan_daemon(&env);
    Setup { env, c, d }
}

impl Setup {
    /// The run object in shop once `done` holds for it (polled for a minute at most).
    fn wait_run(&self, plural: &str, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let obj = self.c.server.object("tresor.dev", plural, Some("shop"), name);
            if let Some(o) = obj.as_ref().filter(|o| done(o)) {
                return o.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{plural}/{name}: {obj:#?}\n{}",
                fs::read_to_string(self.env.path("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A run once it ended.
    fn ended(&self, plural: &str, name: &str) -> Value {
        self.wait_run(plural, name, |o| matches!(o["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
    }

    fn create(&self, object: Value) {
        self.c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], &object.to_string());
    }

    /// The names of the runs of a kind in shop, sorted.
    fn names(&self, plural: &str) -> Vec<String> {
        let out = self.c.kubectl(&["get", plural, "-n", "shop", "-o", "jsonpath={.items[*].metadata.name}"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut names: Vec<String> = String::from_utf8(out.stdout).unwrap().split_whitespace().map(String::from).collect();
        names.sort();
        names
    }

    /// The daemon's job of a kind for `files` with the highest id.
    fn newest(&self, jobs: &[Value], kind: &str) -> Value {
        jobs.iter().filter(|j| j["source"] == "files" && j["kind"] == kind).max_by_key(|j| j["id"].as_i64()).unwrap().clone()
    }
}

fn restore_run(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tresor.dev/v1alpha1", "kind": "RestoreRun", "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

#[test]
fn kubectl_lists_the_daemons_backups_with_phase_source_snapshot_size_and_age() {
    let s = start(&[], json!({}));
    let jobs = wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    let job = s.newest(&jobs, "backup");
    let name = format!("files-{}", job["id"]);
    let run = s.wait_run("backupruns", &name, |o| o["status"]["phase"] == "Succeeded");
    let snapshot = job["snapshot"].as_str().unwrap();
    assert_eq!(run["metadata"]["labels"]["tresor.dev/source"], "files");
    assert_eq!(
        (
            &run["spec"]["source"],
            &run["status"]["job"],
            run["status"]["snapshot"].as_str(),
            &run["status"]["bytes"],
            &run["status"]["size"]
        ),
        (&json!("files"), &job["id"], Some(snapshot), &json!(13), &json!("13 B"))
    );
    assert!(run["status"]["start_time"].is_string() && run["status"]["end_time"].is_string(), "{run:#}");

    let out = s.c.kubectl(&["get", "backupruns", "-A"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0], ["NAMESPACE", "NAME", "PHASE", "SOURCE", "SNAPSHOT", "SIZE", "AGE"]);
    assert_eq!(rows[1][..7], ["shop", name.as_str(), "Succeeded", "files", snapshot, "13", "B"], "{text}");
    let age = rows[1][7];
    assert!(age.starts_with(|c: char| c.is_ascii_digit()) && age.ends_with(['s', 'm', 'h', 'd', 'y']), "an age: {text}");
}

#[test]
fn a_backup_run_created_with_kubectl_backs_up_and_ends_succeeded_with_its_snapshot() {
    let s = start(&[], json!({}));
    wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    s.create(json!({"apiVersion": "tresor.dev/v1alpha1", "kind": "BackupRun", "metadata": {"name": "before-upgrade", "namespace": "shop"},
        "spec": {"source": "files"}}));
    let run = s.ended("backupruns", "before-upgrade");
    let jobs = wait_jobs(&s.d, "the asked-for backup", |j| count(j, "files", "backup", "succeeded") == 2);
    let job = s.newest(&jobs, "backup");
    assert_eq!(job["trigger"], "api");
    assert_eq!(
        (run["status"]["phase"].as_str(), &run["status"]["job"], &run["status"]["snapshot"], run["status"]["reason"].as_str()),
        (Some("Succeeded"), &job["id"], &job["snapshot"], None),
        "{run:#}"
    );
    let snapshots = s.env.json(&["snapshots", "--tag", "source=files"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
    assert_eq!(snapshots[1]["id"], run["status"]["snapshot"], "the newest snapshot is the run's");
    assert_eq!(s.names("backupruns"), ["before-upgrade".to_string(), format!("files-{}", jobs[0]["id"])], "no second object for it");
    let (_, audit) = http(s.d.port, "GET", "/api/v1/audit", None);
    let audit: Value = serde_json::from_str(&audit).unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "BackupRun shop/before-upgrade" && e["action"] == "backup" && e["result"] == "succeeded"),
        "the audit trail names the object: {audit:#}"
    );
}

#[test]
fn a_restore_run_restores_the_newest_backup_byte_for_byte() {
    let s = start(&[], json!({}));
    let jobs = wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    let target = s.env.path("restored");
    s.create(restore_run("recover", json!({"source": "files", "target": target})));
    let run = s.ended("restoreruns", "recover");
    assert_eq!(
        (run["status"]["phase"].as_str(), &run["status"]["snapshot"]),
        (Some("Succeeded"), &s.newest(&jobs, "backup")["snapshot"]),
        "{run:#}"
    );
    let files = s.env.path("files");
    assert_eq!(inventory(&files), inventory(&restored(&s.env, "restored", &files)));
    assert_eq!(fs::read(restored(&s.env, "restored", &files).join("docs/b.md")).unwrap(), b"# beta\n");
}

#[test]
fn a_restore_run_of_a_missing_snapshot_fails_and_restores_nothing() {
    let s = start(&[], json!({}));
    wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    let target = s.env.path("nothing");
    s.create(restore_run("wrong", json!({"source": "files", "snapshot": "0123abcd", "target": target})));
    let run = s.ended("restoreruns", "wrong");
    assert_eq!(
        (run["status"]["phase"].as_str(), run["status"]["reason"].as_str(), run["status"]["message"].as_str()),
        (Some("Failed"), Some("snapshot_missing"), Some("snapshot 0123abcd of source files is not in repository main"))
    );
    assert!(!target.exists(), "nothing is restored");
    let jobs = wait_jobs(&s.d, "the job list", |_| true);
    assert_eq!(jobs.iter().filter(|j| j["kind"] == "restore").count(), 0, "no restore job ran");
}

#[test]
fn a_restore_run_writes_only_namespaces_its_own_or_the_plans_allow() {
    let resources =
        json!({"name": "shop-resources", "class": "standard", "url": "k8s://", "schedule": "@daily", "scope": {"namespaces": ["shop"]}});
    let s = start(&[resources], json!({"restore_namespaces": ["shop-*"]}));
    wait_jobs(&s.d, "the first backups", |j| {
        count(j, "shop-resources", "backup", "succeeded") == 1 && count(j, "files", "backup", "succeeded") == 1
    });

    s.create(restore_run("elsewhere", json!({"source": "shop-resources", "to": "k8s://", "namespace_mapping": ["shop:other"]})));
    let run = s.ended("restoreruns", "elsewhere");
    assert_eq!(
        (run["status"]["phase"].as_str(), run["status"]["reason"].as_str(), run["status"]["message"].as_str()),
        (
            Some("Failed"),
            Some("target_forbidden"),
            Some(
                "the restore would write namespace other; a RestoreRun in namespace shop may restore only into shop \
                 and the namespaces daemon.restore_namespaces allows"
            )
        )
    );
    s.create(restore_run("claim", json!({"source": "files", "to": "pvc://other/data"})));
    let run = s.ended("restoreruns", "claim");
    assert_eq!((run["status"]["reason"].as_str(), run["status"]["phase"].as_str()), (Some("target_forbidden"), Some("Failed")));
    assert!(!s.c.kubectl(&["get", "configmap", "settings", "-n", "other"]).status.success(), "nothing is restored into other");

    // A namespace the plan allows.
    s.create(restore_run("copy", json!({"source": "shop-resources", "to": "k8s://", "namespace_mapping": ["shop:shop-copy"]})));
    let run = s.ended("restoreruns", "copy");
    assert_eq!(run["status"]["phase"], "Succeeded", "{run:#}");
    let greeting = s.c.kubectl(&["get", "configmap", "settings", "-n", "shop-copy", "-o", "jsonpath={.data.greeting}"]);
    assert_eq!(String::from_utf8_lossy(&greeting.stdout), "hello");
    let jobs = wait_jobs(&s.d, "the job list", |_| true);
    assert_eq!(jobs.iter().filter(|j| j["kind"] == "restore").count(), 1, "only the allowed restore ran");
}

/// A restore through the daemon's API (202 when queued).
fn api_restore(port: u16, target: &Path) -> String {
    let body = json!({"target": target}).to_string();
    let url = format!("http://127.0.0.1:{port}/api/v1/sources/files/restore");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json", "-d", &body, &url])
        .output()
        .expect("curl (Debian package curl)");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_daemons_finished_runs_beyond_the_count_are_deleted_and_those_people_made_stay() {
    let s = start(&[], json!({"runs": {"keep": 1}}));
    wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    s.create(json!({"apiVersion": "tresor.dev/v1alpha1", "kind": "BackupRun", "metadata": {"name": "mine", "namespace": "shop"},
        "spec": {"source": "files"}}));
    assert_eq!(s.ended("backupruns", "mine")["status"]["phase"], "Succeeded");
    for (i, kind) in ["backup", "restore", "drill", "backup", "restore", "drill"].into_iter().enumerate() {
        let done = count(&wait_jobs(&s.d, "the job list", |_| true), "files", kind, "succeeded");
        let queued = match kind {
            "restore" => api_restore(s.d.port, &s.env.path(&format!("restored-{i}"))),
            _ => http(s.d.port, "POST", &format!("/api/v1/sources/files/{kind}"), None).0.to_string(),
        };
        assert_eq!(queued, "202");
        wait_jobs(&s.d, kind, |j| count(j, "files", kind, "succeeded") == done + 1);
    }
    let jobs = wait_jobs(&s.d, "the job list", |_| true);
    for (kind, plural, mine) in
        [("backup", "backupruns", &["mine"][..]), ("restore", "restoreruns", &[][..]), ("drill", "drillruns", &[][..])]
    {
        let newest = format!("files-{}", s.newest(&jobs, kind)["id"]);
        let run = s.wait_run(plural, &newest, |o| o["status"]["phase"] == "Succeeded");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut want: Vec<String> = mine.iter().map(|m| m.to_string()).chain([newest]).collect();
        want.sort();
        while s.names(plural) != want {
            assert!(Instant::now() < deadline, "{plural}: {:?}, not {want:?}", s.names(plural));
            std::thread::sleep(Duration::from_millis(100));
        }
        if kind == "drill" {
            assert!(run["status"]["rto_seconds"].as_f64().is_some_and(|s| s > 0.0), "{run:#}");
            assert_eq!(run["status"]["snapshot"], s.newest(&jobs, "backup")["snapshot"], "the drill restored the newest backup");
        }
    }
}

#[test]
fn the_daemons_runs_that_ended_longer_ago_than_the_age_are_deleted() {
    let mut env = Env::new();
    let clock = env.path("clock");
    super::daemon::set_clock(&clock, "2026-11-21T10:00:00Z");
    env.vars.push(("TRESOR_CLOCK_FILE".into(), clock.display().to_string()));
    let s = start_with(env, &[], json!({"runs": {"max_age": "1d"}}));
    let jobs = wait_jobs(&s.d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    let first = format!("files-{}", s.newest(&jobs, "backup")["id"]);
    assert_eq!(s.ended("backupruns", &first)["status"]["end_time"], "2026-11-21T10:00:00+00:00");

    // Two days on: the daily backup runs, and the first run is older than a day.
    super::daemon::set_clock(&clock, "2026-11-23T10:00:00Z");
    let jobs = wait_jobs(&s.d, "the daily backup", |j| count(j, "files", "backup", "succeeded") == 2);
    let second = format!("files-{}", s.newest(&jobs, "backup")["id"]);
    assert_eq!(s.ended("backupruns", &second)["status"]["end_time"], "2026-11-23T10:00:00+00:00");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.names("backupruns") != [second.clone()] {
        assert!(Instant::now() < deadline, "{:?}, not [{second}]", s.names("backupruns"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restarted_daemon_ends_the_run_its_stop_interrupted_and_runs_it_again() {
    let env = Env::new();
    let mark = env.path("slow-once");
    let slow = format!("command:test -e {m} || {{ touch {m}; sleep 60; }}; echo payload", m = mark.display());
    let source = json!({"name": "slow", "class": "standard", "url": slow, "schedule": "@daily"});
    let mut s = start_with(env, &[source], json!({}));
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let jobs = wait_jobs(&s.d, "the job list", |_| true);
        if let Some(j) = jobs.iter().find(|j| j["source"] == "slow" && j["status"] == "running") {
            break j["id"].clone();
        }
        assert!(Instant::now() < deadline, "the slow backup did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let name = format!("slow-{id}");
    s.wait_run("backupruns", &name, |o| o["status"]["phase"] == "Running");
    // The job is running before its shell has run: kill the daemon only once
    // the source has marked its first run, or the rerun would be the slow one.
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the slow source did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.d.child.kill().unwrap();
    s.d.child.wait().unwrap();

    s.d = super::k8s::plan_daemon(&s.env);
    let run = s.ended("backupruns", &name);
    assert_eq!(
        (run["status"]["phase"].as_str(), run["status"]["reason"].as_str(), run["status"]["message"].as_str(), &run["status"]["job"]),
        (Some("Failed"), Some("interrupted"), Some("the daemon stopped while the job ran"), &id)
    );
    let jobs = wait_jobs(&s.d, "the backup again", |j| count(j, "slow", "backup", "succeeded") == 1);
    let again = jobs.iter().find(|j| j["source"] == "slow" && j["status"] == "succeeded").unwrap();
    let rerun = s.wait_run("backupruns", &format!("slow-{}", again["id"]), |o| o["status"]["phase"] == "Succeeded");
    assert_eq!(rerun["status"]["snapshot"], again["snapshot"]);
}
