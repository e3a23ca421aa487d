//! What `deploy/` ships, against the real tools: the alert rules pass
//! promtool's checks and unit tests, a real Prometheus scrapes a running
//! daemon and fires the failed-job alert for the source that is down, and
//! the Grafana dashboard asks only for metrics the daemon exports, and the
//! status page renders in headless Chromium.

use std::time::{Duration, Instant};

use tresor_testkit::RedisServer;

use super::daemon::{Daemon, count, http, start_daemon, wait_jobs, write_plan};
use super::*;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(format!("{DEPLOY}/prometheus")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn alert_rules_pass_promtools_checks_and_unit_tests() {
    assert!(promtool(&["check", "rules", "tresor-rules.yaml"]).contains("SUCCESS: 9 rules found"));
    assert!(promtool(&["test", "rules", "tresor-rules.test.yaml"]).trim_end().ends_with("SUCCESS"));
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Poll a Prometheus query until it returns something; the result array.
fn query(port: u16, q: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(port, "GET", &format!("/api/v1/query?query={}", encode(q)), None);
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body[body.find('{').unwrap()..=body.rfind('}').unwrap()]).unwrap();
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if !result.is_empty() {
                return result;
            }
        }
        assert!(Instant::now() < deadline, "no result for {q}: {status} {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The daemon on the test plan (files, a Redis cache with an off-site copy,
/// a source that is down) once every first run is over.
fn after_first_runs(env: &Env) -> (RedisServer, Daemon) {
    let redis = RedisServer::start(&[]);
    let plan = write_plan(env, &redis, tresor_testkit::net::free_port());
    let d = start_daemon(env, &plan, None);
    wait_jobs(&d, "first runs", |j| {
        count(j, "files", "backup", "succeeded") == 1
            && count(j, "cache", "copy", "succeeded") == 1
            && count(j, "down", "backup", "failed") >= 1
    });
    (redis, d)
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_fires_the_failed_job_alert() {
    let env = Env::new();
    let (_redis, d) = after_first_runs(&env);

    let port = tresor_testkit::net::free_port();
    let config = env.path("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{DEPLOY}/prometheus/tresor-rules.yaml\"]\n\
             scrape_configs:\n  - job_name: tresor\n    static_configs: [{{ targets: [\"127.0.0.1:{}\"] }}]\n",
            d.port
        ),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", env.path("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)"),
    );
    let up = query(port, "up{job=\"tresor\"} == 1");
    assert_eq!(up.len(), 1);
    let ok = query(port, "backup_job_success_total{source=\"files\"}");
    assert_eq!(ok[0]["value"][1], "1", "{ok:?}");
    let size = query(port, "backup_repository_size_bytes{repository=\"main\"} > 1000");
    assert_eq!(size.len(), 1, "the repository's size is measured: {size:?}");
    let alerts = query(port, "ALERTS{alertname=\"BackupJobFailed\", alertstate=\"firing\"}");
    let sources: Vec<&str> = alerts.iter().filter_map(|a| a["metric"]["source"].as_str()).collect();
    assert_eq!(sources, ["down"], "only the source that is down: {alerts:?}");
    assert_eq!(alerts[0]["metric"]["class"], "critical");

    // The dashboard asks only for metrics the daemon exports.
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    let exported: Vec<&str> = metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let dash: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(format!("{DEPLOY}/grafana/tresor-dashboard.json")).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        let expr = p["targets"][0]["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("backup_") || w.starts_with("restore_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            let base = n.trim_end_matches("_total");
            assert!(exported.contains(&base), "panel {:?} uses {n}, which /metrics does not export", p["title"]);
        }
    }
}

/// The page as headless Chromium renders it (its DOM after load), and a
/// screenshot of it.
pub(super) fn chromium(url: &str, dir: &Path) -> (String, Vec<u8>) {
    let base = |c: &mut Command| {
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()));
    };
    let mut dump = Command::new("chromium");
    base(&mut dump);
    let out = dump.args(["--dump-dom", url]).stderr(Stdio::null()).output().expect("chromium (Debian package chromium)");
    assert!(out.status.success(), "chromium --dump-dom failed");
    let shot = dir.join("status.png");
    let mut capture = Command::new("chromium");
    base(&mut capture);
    let ok = capture
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1200,900", url])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    (String::from_utf8(out.stdout).unwrap(), fs::read(&shot).unwrap())
}

#[test]
fn the_status_page_in_headless_chromium_shows_the_classes_and_a_failed_job_red() {
    let env = Env::new();
    let (_redis, d) = after_first_runs(&env);
    let (dom, png) = chromium(&format!("http://127.0.0.1:{}/", d.port), env.dir.path());
    assert!(dom.contains("<title>tresor status</title>"), "{dom}");
    let row = |class: &str| {
        dom.lines().find(|l| l.contains(&format!("data-class=\"{class}\""))).unwrap_or_else(|| panic!("class {class} in {dom}")).to_string()
    };
    assert!(row("critical").starts_with("<tr class=\"red\""), "a class whose source never succeeded is red: {}", row("critical"));
    assert!(row("critical").contains("<td>15m</td><td>1h</td>") && row("critical").contains("<td>down</td>"), "{}", row("critical"));
    assert!(row("standard").starts_with("<tr class=\"green\""), "{}", row("standard"));
    let failed = dom.lines().find(|l| l.contains("class=\"job-failed\"")).unwrap_or_else(|| panic!("a failed job row in {dom}"));
    assert!(failed.contains("<td>down</td>") && failed.contains("source_unreachable"), "{failed}");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a rendered screenshot ({} bytes)", png.len());
    let storage = dom.lines().find(|l| l.contains("data-repository=\"main\"")).unwrap_or_else(|| panic!("storage in {dom}"));
    assert!(storage.contains(" B</td>") || storage.contains("iB</td>"), "sizes shown: {storage}");
}

/// Every rendered document as JSON.
fn rendered() -> Vec<serde_json::Value> {
    let out = Command::new("kubectl").args(["kustomize", &format!("{DEPLOY}/kubernetes")]).output().expect("kubectl (in the base image)");
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n").map(|doc| serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"))).collect()
}

fn typed<T: serde::de::DeserializeOwned>(doc: &serde_json::Value) {
    if let Err(e) = serde_json::from_value::<T>(doc.clone()) {
        panic!("{} {} does not parse as that kind: {e}", doc["kind"], doc["metadata"]["name"]);
    }
}

#[test]
fn the_kustomization_renders_objects_kubernetes_accepts() {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let docs = rendered();
    let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    for d in &docs {
        match d["kind"].as_str().unwrap() {
            "Deployment" => typed::<apps::Deployment>(d),
            "Service" => typed::<core::Service>(d),
            "ConfigMap" => typed::<core::ConfigMap>(d),
            "Namespace" => typed::<core::Namespace>(d),
            "ServiceAccount" => typed::<core::ServiceAccount>(d),
            "PersistentVolumeClaim" => typed::<core::PersistentVolumeClaim>(d),
            "ClusterRole" => typed::<rbac::ClusterRole>(d),
            "ClusterRoleBinding" => typed::<rbac::ClusterRoleBinding>(d),
            "CustomResourceDefinition" => typed::<ext::CustomResourceDefinition>(d),
            _ => assert!(d["spec"].is_object(), "{d}"),
        }
        if d["kind"] != "Namespace" && !d["kind"].as_str().unwrap().starts_with("Cluster") && d["kind"] != "CustomResourceDefinition" {
            assert_eq!(d["metadata"]["namespace"], "tresor", "{} {}", d["kind"], d["metadata"]["name"]);
        }
    }
    // The backup role only reads; writing is the restore role's.
    let role = |name: &str| docs.iter().find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name).unwrap().clone();
    let backup = role("tresor-backup");
    let verbs: Vec<&str> = backup["rules"][0]["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(verbs, ["get", "list", "watch"]);
    assert!(role("tresor-restore")["rules"][0]["verbs"].as_array().unwrap().iter().any(|v| v == "create"));
    // The operator's rules are the promtool-tested rules.
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let tested: serde_json::Value =
        serde_norway::from_str(&fs::read_to_string(format!("{DEPLOY}/prometheus/tresor-rules.yaml")).unwrap()).unwrap();
    assert_eq!(rule["spec"]["groups"], tested["groups"]);
    // The mounted plan is a clean plan.
    let plan = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"]["tresor.yaml"].as_str().unwrap().to_string();
    let env = Env::new();
    fs::write(env.path("tresor.yaml"), plan).unwrap();
    let out = env.run(&["plan", "check", env.path("tresor.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
