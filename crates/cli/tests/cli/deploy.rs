//! What `deploy/` ships, against the real tools: the alert rules pass
//! promtool's checks and unit tests, a real Prometheus scrapes a running
//! daemon and fires the failed-job alert for the source that is down, and
//! the Grafana dashboard asks only for metrics the daemon exports, and the
//! status page, a source's page and the embedded default's first drills
//! render in headless Chromium (screenshots kept; see `screenshot`).

use std::time::{Duration, Instant};

use tresor_testkit::RedisServer;

use super::daemon::{Daemon, after_first_runs, count, exchange, http, set_clock, wait_jobs};
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
    assert!(promtool(&["check", "rules", "tresor-rules.yaml"]).contains("SUCCESS: 17 rules found"));
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

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_fires_the_failed_job_alert() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    let (_, _, d) = after_first_runs(&env, &redis);

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
    let exported: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(|n| n.trim_end_matches("_total"))
        .collect();
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
            let base = ["_total", "_bucket", "_sum", "_count"].iter().fold(n, |n, suffix| n.trim_end_matches(suffix));
            assert!(exported.contains(&base), "panel {:?} uses {n}, which /metrics does not export", p["title"]);
        }
    }
}

/// `/metrics` to a client without preferences (curl, promtool) is the
/// classic text format, which `promtool check metrics` passes; to
/// Prometheus, which asks for OpenMetrics first, it is OpenMetrics.
#[test]
fn the_metrics_pass_promtools_check_and_prometheus_gets_openmetrics() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    let (_, _, d) = after_first_runs(&env, &redis);
    let plain = exchange(d.port, "GET /metrics", "", "");
    let (head, body) = plain.split_once("\r\n\r\n").expect("a response");
    assert!(head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{head}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    check.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!((out.status.code(), said.as_str()), (Some(0), ""));

    // What Prometheus 2 and 3 send.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                  text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let open = exchange(d.port, "GET /metrics", accept, "");
    let (head, body) = open.split_once("\r\n\r\n").expect("a response");
    assert!(head.contains("\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"), "{head}");
    assert!(body.contains("# TYPE backup_job_success counter\n") && body.ends_with("# EOF\n"), "{body}");
}

fn chromium_cmd(dir: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .stderr(Stdio::null());
    c
}

/// A screenshot of the page in a window this wide and high, kept as
/// `name` in `dir` and, when `TRESOR_SCREENSHOTS` names a directory, there
/// too, for a reader to look at.
pub(super) fn screenshot(url: &str, dir: &Path, name: &str, (width, height): (u32, u32)) -> Vec<u8> {
    let shot = dir.join(name);
    let ok = chromium_cmd(dir)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(url)
        .status()
        .expect("chromium (Debian package chromium)");
    assert!(ok.success(), "chromium --screenshot failed");
    let png = fs::read(&shot).unwrap();
    eprintln!("screenshot of {url} at {width}x{height}: {}", shot.display());
    if let Some(keep) = std::env::var_os("TRESOR_SCREENSHOTS") {
        fs::create_dir_all(&keep).unwrap();
        fs::write(Path::new(&keep).join(name), &png).unwrap();
    }
    png
}

/// The page's DOM after load, as headless Chromium renders it.
fn dump_dom(url: &str, dir: &Path) -> String {
    let out = chromium_cmd(dir).args(["--dump-dom", url]).output().expect("chromium (Debian package chromium)");
    assert!(out.status.success(), "chromium --dump-dom failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The page as headless Chromium renders it (its DOM after load), and a
/// screenshot of it.
pub(super) fn chromium(url: &str, dir: &Path) -> (String, Vec<u8>) {
    (dump_dom(url, dir), screenshot(url, dir, "status.png", (1200, 900)))
}

/// A page of a daemon that has the test tokens, as a browser opens it once
/// asked: any user name, the read token as password.
fn page_url(port: u16, path: &str) -> String {
    format!("http://tresor:read-token@127.0.0.1:{port}{path}")
}

/// The line of the DOM that holds `needle` (a table row).
fn line_with(dom: &str, needle: &str) -> String {
    dom.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} in {dom}")).to_string()
}

/// What an attribute of the first element in `html` that has it says.
fn attr(html: &str, name: &str) -> String {
    let at = html.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("{name} in {html}")) + name.len() + 3;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

fn get_json(port: u16, path: &str, token: Option<&str>) -> serde_json::Value {
    let (status, body) = http(port, "GET", path, token);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Poll the classes until each named one has a drill on record; the classes.
fn wait_drills(port: u16, token: Option<&str>, classes: &[&str]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = get_json(port, "/api/v1/classes", token).as_array().unwrap().clone();
        if classes.iter().all(|c| all.iter().any(|x| x["name"] == *c && !x["last_drill"].is_null())) {
            return all;
        }
        assert!(Instant::now() < deadline, "no drill of {classes:?}: {all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_status_page_in_headless_chromium_shows_the_classes_history_drills_and_a_failed_job_red() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    // The clock stands still: the failed source's retry never comes, so the counts are exact.
    let (_, _, d) = after_first_runs(&env, &redis);
    let (status, _) = http(d.port, "POST", "/api/v1/sources/files/drill", Some("admin-token"));
    assert_eq!(status, 202);
    let classes = wait_drills(d.port, Some("read-token"), &["standard"]);
    let drill = &classes.iter().find(|c| c["name"] == "standard").unwrap()["last_drill"];
    assert_eq!(drill["passed"], true, "{drill}");
    // The daemon audits the drill once, as its own; the child that ran it
    // wrote none in the name of whoever runs the daemon.
    let state = env.path("state.db");
    let drill_actors = || -> Vec<String> {
        let audit = env.json(&["audit", "--state", state.to_str().unwrap()]);
        audit.as_array().unwrap().iter().filter(|a| a["action"] == "drill").map(|a| a["actor"].as_str().unwrap().to_string()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !drill_actors().iter().any(|a| !a.starts_with("cli:")) {
        assert!(Instant::now() < deadline, "the daemon's audit entry of the drill: {:?}", drill_actors());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(drill_actors().iter().filter(|a| a.starts_with("cli:")).count(), 0, "{:?}", drill_actors());

    let url = page_url(d.port, "/");
    let dom = dump_dom(&url, env.dir.path());
    assert!(dom.contains("<title>tresor status</title>") && dom.contains("<meta http-equiv=\"refresh\" content=\"15\">"), "{dom}");
    assert!(dom.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));
    assert!(!dom.contains("<script") && !dom.contains("src=\"http"), "everything inline, nothing from elsewhere");
    let critical = line_with(&dom, "data-class=\"critical\"");
    // The clock stands still: down's first backup failed, but it is not yet longer than the RPO without one.
    assert!(critical.starts_with("<tr class=\"amber\""), "a class whose new source fails, within its RPO, is amber: {critical}");
    assert!(critical.contains("<small>first backup pending: <a href=\"/sources/down\">down</a></small>"), "{critical}");
    assert!(critical.contains("<td data-label=\"RPO\">15m</td><td data-label=\"RTO\">1h</td>"), "{critical}");
    assert!(critical.contains("<a href=\"/sources/down\">down</a>"), "the failing source, linked: {critical}");
    assert!(critical.contains("no restorable point yet"), "down never had one: {critical}");
    assert_eq!(attr(&critical, "data-success-rate"), "50.00", "cache 1 of 1, down 0 of 1: {critical}");
    assert!(critical.contains("<td class=\"rate bad\"") && critical.contains("1 of 2, target 99.9 %"), "{critical}");
    assert!(critical.ends_with("<td>never</td></tr>"), "no drill yet, the last cell: {critical}");
    let standard = line_with(&dom, "data-class=\"standard\"");
    assert!(standard.starts_with("<tr class=\"green\""), "{standard}");
    assert_eq!(attr(&standard, "data-points"), "1", "one backup, and the clock stands still: {standard}");
    let spark = &standard[standard.find("<svg class=\"spark\"").expect("an inline SVG sparkline")..];
    assert_eq!(attr(spark, "points").split(' ').count(), 1);
    assert!(spark.contains("<line class=\"target\""), "the RPO target as a line: {spark}");
    assert_eq!(attr(&standard, "data-success-rate"), "100");
    assert!(standard.contains("<td class=\"rate ok\""), "{standard}");
    assert!(standard.contains("<td>passed 20"), "{standard}");
    assert_eq!(attr(&standard, "data-rto-seconds"), format!("{:.3}", drill["rto_seconds"].as_f64().unwrap()));
    assert!(standard.ends_with("target 4.0 h)</span><small>files · <a href=\"/report\">report</a></small></td></tr>"), "{standard}");
    let failed = line_with(&dom, "class=\"job-failed\"");
    assert!(failed.contains("<a href=\"/sources/down\">down</a>") && failed.contains("source_unreachable"), "{failed}");
    let storage = line_with(&dom, "data-repository=\"main\"");
    assert!(storage.contains(" B</td>") || storage.contains("iB</td>"), "sizes shown: {storage}");
    let png = screenshot(&url, env.dir.path(), "status-desktop.png", (1280, 900));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a rendered screenshot ({} bytes)", png.len());
    let phone = screenshot(&url, env.dir.path(), "status-phone.png", (390, 1600));
    assert_eq!(&phone[16..20], &390u32.to_be_bytes(), "a 390-pixel-wide screenshot");

    // A source's page: the snapshots its repository lists, its drills and its failures.
    let files_url = page_url(d.port, "/sources/files");
    let files = dump_dom(&files_url, env.dir.path());
    let listed = env.json(&["snapshots", "--tag", "source=files"]);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(files.matches("data-snapshot=\"").count(), ids.len(), "{files}");
    for id in &ids {
        assert!(line_with(&files, &format!("data-snapshot=\"{id}\"")).contains(&format!("<code>{}</code>", &id[..8])));
    }
    let drilled = line_with(&files, "data-drill=\"DRILL-");
    assert!(drilled.contains("<td class=\"ok\">passed</td>"), "{drilled}");
    assert_eq!(attr(&drilled, "data-rto-seconds"), attr(&standard, "data-rto-seconds"));
    assert!(files.contains("<h2>Failures <small>(0)</small></h2>"), "{files}");
    screenshot(&files_url, env.dir.path(), "source-page.png", (1280, 900));
    let down = dump_dom(&page_url(d.port, "/sources/down"), env.dir.path());
    let failure = line_with(&down, "<tr class=\"job-failed\"");
    assert!(failure.contains("<td>backup</td><td>2026-11-21 10:07:00</td><td>source_unreachable</td>"), "{failure}");
    assert!(down.contains("<h2>Failures <small>(1)</small></h2>"), "{down}");
    let (status, body) = http(d.port, "GET", "/sources/nosuch", Some("read-token"));
    assert_eq!(status, 404);
    assert!(body.contains("<h1>No source nosuch</h1>"), "{body}");
    let (status, report) = http(d.port, "GET", "/report", Some("read-token"));
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("<title>tresor compliance report</title>") && report.contains("data-class=\"standard\""), "{report}");
}

/// The README's first command in an empty directory: the embedded default,
/// with its clock moved instead of waited for, shows both classes drilled.
#[test]
fn the_embedded_default_shows_passed_drills_on_the_status_page_within_minutes() {
    let env = Env::new();
    let work = env.path("work");
    fs::create_dir_all(&work).unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:07:30Z");
    let port = tresor_testkit::net::free_port();
    let child = env
        .cmd(&["daemon", "--listen", &format!("127.0.0.1:{port}"), "--grace", "5s"])
        .current_dir(&work)
        .env("TRESOR_CLOCK_FILE", &clock)
        .env("TRESOR_TICK_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", "/readyz", None).0 != 200 {
        assert!(Instant::now() < deadline, "the daemon did not get ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let plan = work.join("tresor-data/tresor.yaml");
    let text = fs::read_to_string(&plan).unwrap();
    assert!(text.contains("schedule: \"9 * * * *\"") && text.contains("schedule: \"9 10 * * *\""), "drills two minutes on: {text}");
    let check = env.ok(&["plan", "check", plan.to_str().unwrap()]);
    assert!(check.ends_with(": 2 sources, 2 classes: 0 errors, 0 warnings\n"), "the default is a clean plan: {check}");

    wait_jobs(&d, "first backups", |j| count(j, "ledger", "backup", "succeeded") == 1 && count(j, "sample", "backup", "succeeded") == 1);
    for (at, ledger) in [("2026-11-21T10:08:00Z", 2), ("2026-11-21T10:09:00Z", 3), ("2026-11-21T10:10:00Z", 4)] {
        set_clock(&clock, at);
        wait_jobs(&d, at, |j| count(j, "ledger", "backup", "succeeded") == ledger && count(j, "ledger", "copy", "succeeded") == ledger);
    }
    wait_jobs(&d, "the sample's second backup", |j| count(j, "sample", "backup", "succeeded") == 2);
    let classes = wait_drills(port, None, &["critical", "standard"]);
    for c in &classes {
        assert_eq!(c["last_drill"]["passed"], true, "{c}");
        assert_eq!(c["state"], "green", "{c}");
    }

    let url = format!("http://127.0.0.1:{port}/");
    let dom = dump_dom(&url, env.dir.path());
    for (class, target) in [("critical", "target 60 s)</span><small>ledger · "), ("standard", "target 15 min)</span><small>sample · ")] {
        let row = line_with(&dom, &format!("data-class=\"{class}\""));
        let drill = &classes.iter().find(|c| c["name"] == class).unwrap()["last_drill"];
        assert!(row.contains("<td>passed 20"), "{row}");
        assert_eq!(attr(&row, "data-rto-seconds"), format!("{:.3}", drill["rto_seconds"].as_f64().unwrap()), "{row}");
        assert!(row.contains(target) && row.contains("<a href=\"/report\">report</a>"), "{row}");
        assert_eq!(attr(&row, "data-points"), "48", "{row}");
        assert_eq!(attr(&row, "data-success-rate"), "100", "{row}");
    }
    let critical = line_with(&dom, "data-class=\"critical\"");
    assert_eq!(attr(&critical, "data-peak-seconds"), "60", "ledger backed up every minute: {critical}");
    let png = screenshot(&url, env.dir.path(), "status-page.png", (1200, 560));
    assert!(png.starts_with(b"\x89PNG"));
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
            "PrometheusRule",
            "Role",
            "RoleBinding",
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
            "Role" => typed::<rbac::Role>(d),
            "RoleBinding" => typed::<rbac::RoleBinding>(d),
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
