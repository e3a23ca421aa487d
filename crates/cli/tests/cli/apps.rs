//! Applications: `tresor restore-app` brings a plan's application back as
//! of a moment on real servers (PostgreSQL recovering through WAL archived
//! by tresor, Redis, a directory standing in for a volume, a namespace in
//! the fake API server, where tresor acts as the shipped service account),
//! between restore hooks that scale a Deployment, with smoke checks; a
//! failing pre-hook restores nothing, a failing smoke check fails it.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use tresor_testkit::{PostgresServer, RedisServer};

use super::k8s::{Cluster, tresor};
use super::pitr::{archiving_server, postgres_env, switch_and_archive};
use super::*;

/// An HTTP server: `/health` answers 200 `shop ok`, anything else 503 `maintenance`.
fn web() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) =
                if head.starts_with("GET /health ") { ("200 OK", "shop ok") } else { ("503 Service Unavailable", "maintenance") };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The plan: one repository, one class, these sources and this application.
pub(super) fn write_plan(env: &Env, sources: &str, application: &str) -> PathBuf {
    let plan = format!(
        "repositories:\n  main: {{url: {}, password_file: {}}}\nclasses:\n  app: {{rpo: 1d, rto: 1h, retention: {{daily: 7}}}}\nsources:\n{sources}applications:\n{application}",
        env.repo,
        env.path("pw").display()
    );
    let file = env.path("tresor.yaml");
    fs::write(&file, plan).unwrap();
    file
}

fn snapshot_id(out: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix("snapshot ")).map(|l| l.trim_end_matches(" saved").to_string()).unwrap()
}

/// Stops the PostgreSQL cluster the application's post-hook started.
struct Started(String);

impl Drop for Started {
    fn drop(&mut self) {
        let pg_ctl = PostgresServer::bin_dir().join("pg_ctl");
        let mut c = if is_root() { Command::new("runuser") } else { Command::new(&pg_ctl) };
        if is_root() {
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        }
        let _ = c.args(["-D", &self.0, "-m", "immediate", "-w", "stop"]).current_dir("/").output();
    }
}

#[test]
fn an_application_comes_back_as_of_a_moment_between_two_writes() {
    let mut env = postgres_env();
    let pg = archiving_server(&env);
    let redis = RedisServer::start(&[]);
    let cluster = Cluster::start();
    let uploads = env.path("uploads");
    fs::create_dir_all(&uploads).unwrap();
    let http = web();
    pg.psql("postgres", "CREATE TABLE t (id int, note text)");
    env.ok(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);

    // Before T: a row, a key, a file, the namespace as it is.
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'early')");
    redis.cli(&["SET", "cart:1", "early"]);
    fs::write(uploads.join("a.txt"), "first version").unwrap();
    let cache_before = snapshot_id(&env.ok(&["backup", &redis.url(), "--tag", "source=cache"]));
    let files_before = snapshot_id(&env.ok(&["backup", uploads.to_str().unwrap(), "--tag", "source=uploads"]));
    let objects = tresor(&env, &cluster, &["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=objects"]);
    assert!(objects.status.success(), "{}", String::from_utf8_lossy(&objects.stderr));
    let objects_before = snapshot_id(&String::from_utf8_lossy(&objects.stdout));
    std::thread::sleep(Duration::from_millis(1200));
    let t = pg.psql("postgres", r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#);
    std::thread::sleep(Duration::from_millis(1200));

    // After T: more of each, backed up again.
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'late')");
    redis.cli(&["SET", "cart:2", "late"]);
    fs::write(uploads.join("a.txt"), "second version").unwrap();
    fs::write(uploads.join("b.txt"), "added after").unwrap();
    env.ok(&["backup", &redis.url(), "--tag", "source=cache"]);
    env.ok(&["backup", uploads.to_str().unwrap(), "--tag", "source=uploads"]);
    cluster.kubectl_stdin(
        &["create", "--validate=false", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: shop}\ndata: {x: y}\n",
    );
    assert!(tresor(&env, &cluster, &["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=objects"]).status.success());
    switch_and_archive(&pg);

    // The restored cluster starts in the post-hook, as its owner, on a port of its own.
    let restored = env.path("restored");
    fs::create_dir_all(&restored).unwrap();
    let data = restored.join("data");
    let port = tresor_testkit::net::free_port();
    let bin = PostgresServer::bin_dir();
    let start = format!(
        "{bin}/pg_ctl -D {d} -o '-p {port} -k {r} -c listen_addresses=127.0.0.1 -c fsync=off' -l {r}/log -w -t 60 start && until [ \"$({bin}/psql -h 127.0.0.1 -p {port} -U postgres -XAtc 'SELECT pg_is_in_recovery()' postgres)\" = f ]; do sleep 0.1; done",
        bin = bin.display(),
        d = data.display(),
        r = restored.display()
    );
    let start = if is_root() {
        format!(
            "chown -R postgres:postgres {} && runuser -u postgres -- sh -c \"{}\"",
            restored.display(),
            start.replace('"', "\\\"").replace('$', "\\$")
        )
    } else {
        start
    };
    let _started = Started(data.display().to_string());
    let sources = format!(
        "  - {{name: db, class: app, url: \"pgbase://postgres@127.0.0.1:{}\", schedule: \"@daily\"}}\n  - {{name: cache, class: app, url: \"{}\", schedule: \"@daily\"}}\n  - {{name: uploads, class: app, url: {}, schedule: \"@daily\"}}\n  - {{name: objects, class: app, url: \"k8s://\", schedule: \"@daily\", scope: {{namespaces: [shop]}}}}\n",
        pg.port(),
        redis.url(),
        uploads.display()
    );
    let app = format!(
        "  - name: shop\n    sources:\n      - {{source: db, target: {}}}\n      - {{source: cache, after: [db], flush: true}}\n      - {{source: uploads, after: [db]}}\n      - {{source: objects, after: [cache, uploads]}}\n    hooks:\n      timeout: 2m\n      post:\n        - command: {}\n    verify:\n      http: [{{url: \"http://127.0.0.1:{http}/health\", status: 200, contains: ok}}]\n      queries:\n        - {{sql: \"SELECT string_agg(note, ',' ORDER BY id) FROM t\", equals: early, url: \"postgres://postgres@127.0.0.1:{port}/postgres\"}}\n",
        data.display(),
        serde_json::to_string(&start).unwrap()
    );
    let plan = write_plan(&env, &sources, &app);
    env.user = None;
    let out = env
        .cmd(&[
            "restore-app",
            "shop",
            "--plan",
            plan.to_str().unwrap(),
            "--time",
            &t,
            "--namespace-mapping",
            "shop:shop-restored",
            "--json",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["passed"], true, "{r:#}");

    // Every source reached its point, in the application's order.
    let by: BTreeMap<&str, &serde_json::Value> =
        r["sources"].as_array().unwrap().iter().map(|s| (s["source"].as_str().unwrap(), s)).collect();
    let order: Vec<&str> = r["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(order, ["db", "cache", "uploads", "objects"]);
    let at = chrono::DateTime::parse_from_rfc3339(&t).unwrap();
    let point = |s: &str| chrono::DateTime::parse_from_rfc3339(by[s]["point"].as_str().unwrap()).unwrap();
    assert_eq!((point("db"), by["db"]["exact"].as_bool()), (at, Some(true)), "PostgreSQL recovered exactly to T");
    for (source, id) in [("cache", &cache_before), ("uploads", &files_before), ("objects", &objects_before)] {
        assert!(by[source]["snapshot"].as_str().unwrap().starts_with(id.as_str()), "{source}: the snapshot before T");
        assert!(point(source) < at);
    }
    let oldest = ["cache", "uploads", "objects"].iter().map(|s| point(s)).min().unwrap();
    let window = (at - oldest).num_milliseconds() as f64 / 1000.0;
    assert_eq!(r["consistency_window_seconds"].as_f64(), Some(window));
    assert!(window >= 1.2, "the window spans at least the wait before T: {window}");

    // What each holds now: exactly what was there at T.
    let rows = Command::new(bin.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-XAtc",
            "SELECT string_agg(note, ',' ORDER BY id) FROM t",
            "postgres",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "early");
    assert_eq!((redis.cli(&["GET", "cart:1"]).trim(), redis.cli(&["EXISTS", "cart:2"]).trim()), ("early", "0"));
    assert_eq!(fs::read_to_string(uploads.join("a.txt")).unwrap(), "first version");
    assert!(!uploads.join("b.txt").exists(), "a file added after T is gone");
    assert!(cluster.server.object("", "configmaps", Some("shop-restored"), "settings").is_some());
    assert!(cluster.server.object("", "configmaps", Some("shop-restored"), "late").is_none());
    let checks: Vec<(&str, bool)> =
        r["checks"].as_array().unwrap().iter().map(|c| (c["what"].as_str().unwrap(), c["passed"] == true)).collect();
    let sql = "sql SELECT string_agg(note, ',' ORDER BY id) FROM t";
    assert_eq!(checks, [(format!("http http://127.0.0.1:{http}/health").as_str(), true), (sql, true)]);
}

/// A Harbor-like application: its core scaled away while its database comes back.
struct Harbor {
    env: Env,
    pg: PostgresServer,
    cluster: Cluster,
    http: u16,
}

const CORE: &str = "{namespace: shop, workload: deployment/web";

fn harbor() -> Harbor {
    let env = Env::new();
    env.ok(&["init"]);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE registry");
    pg.psql("registry", "CREATE TABLE repos (name text); INSERT INTO repos VALUES ('library/nginx')");
    env.ok(&["backup", &pg.url("registry"), "--tag", "source=registry-db"]);
    pg.psql("registry", "INSERT INTO repos VALUES ('pushed/after')");
    Harbor { env, pg, cluster: Cluster::start(), http: web() }
}

impl Harbor {
    fn plan(&self, pre_extra: &str, check_path: &str) -> PathBuf {
        let sources = format!("  - {{name: registry-db, class: app, url: \"{}\", schedule: \"@daily\"}}\n", self.pg.url("registry"));
        let app = format!(
            "  - name: harbor\n    sources:\n      - {{source: registry-db, flush: true}}\n    hooks:\n      timeout: 1m\n      pre:\n        - scale: {CORE}, replicas: 0}}\n{pre_extra}      post:\n        - scale: {CORE}}}\n    verify:\n      http: [{{url: \"http://127.0.0.1:{}{check_path}\"}}]\n",
            self.http
        );
        write_plan(&self.env, &sources, &app)
    }

    fn restore(&self, plan: &Path, args: &[&str]) -> Output {
        let mut a = vec!["restore-app", "harbor", "--plan", plan.to_str().unwrap()];
        a.extend_from_slice(args);
        tresor(&self.env, &self.cluster, &a)
    }

    /// A restore that fails: what it said.
    fn refused(&self, plan: &Path, args: &[&str]) -> String {
        let out = self.restore(plan, args);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// The core's replicas, and the annotation remembering them.
    fn core(&self) -> (u64, Option<String>) {
        let d = self.cluster.server.object("apps", "deployments", Some("shop"), "web").unwrap();
        let remembered = d["metadata"]["annotations"]["tresor.dev/replicas-before-restore"].as_str().map(String::from);
        (d["spec"]["replicas"].as_u64().unwrap(), remembered)
    }

    fn repos(&self) -> String {
        self.pg.psql("registry", "SELECT string_agg(name, ',' ORDER BY name) FROM repos")
    }
}

#[test]
fn a_harbor_like_procedure_runs_from_the_plan_alone() {
    let h = harbor();
    let plan = h.plan("", "/health");
    // Another writer updates the Deployment between each scale's read and
    // its write: each is read and made again, never left half done.
    h.cluster.server.contend("deployments");
    h.cluster.server.contend("deployments");
    let out = h.restore(&plan, &["--latest", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hooks: Vec<(&str, &str, &str)> = r["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["phase"].as_str().unwrap(), o["what"].as_str().unwrap(), o["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hooks,
        [
            ("pre", "scale deployment/web in shop to 0", "2 → 0 replicas, ready"),
            ("post", "scale deployment/web in shop back", "0 → 2 replicas, ready")
        ]
    );
    assert_eq!(r["scaled_up"], serde_json::json!(["deployment/web in shop: 0 → 2"]));
    assert_eq!(h.repos(), "library/nginx", "the database as backed up: the later push is gone");
    assert_eq!(h.core(), (2, None), "the core back at its replicas, nothing left remembered");
    let d = h.cluster.server.object("apps", "deployments", Some("shop"), "web").unwrap();
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(r["checks"][0]["detail"], "answered 200");
}

#[test]
fn a_failing_pre_hook_or_a_moment_before_every_point_restores_nothing() {
    let h = harbor();
    let plan = h.plan("        - command: \"echo maintenance mode refused >&2; exit 3\"\n", "/health");
    assert_eq!(
        h.refused(&plan, &["--latest"]),
        "tresor: error: pre-restore hook command \"echo maintenance mode refused >&2; exit 3\" failed: failed (exit status: 3): maintenance mode refused; nothing restored; replicas restored: deployment/web in shop: 0 → 2"
    );
    assert_eq!(h.repos(), "library/nginx,pushed/after", "nothing restored");
    assert_eq!(h.core(), (2, None), "replicas as they were");
    // Each hook's outcome is in the result: the scale-down, the failure, the scale-down taken back.
    let out = h.restore(&plan, &["--latest", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hooks: Vec<(&str, &str, &str, bool, &str)> = r["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap();
            assert!(o["seconds"].as_f64().unwrap() >= 0.0, "{o}");
            (s("phase"), s("kind"), s("what"), o["passed"].as_bool().unwrap(), s("detail"))
        })
        .collect();
    assert_eq!(
        hooks,
        [
            ("pre", "scale", "scale deployment/web in shop to 0", true, "2 → 0 replicas, ready"),
            (
                "pre",
                "command",
                "command \"echo maintenance mode refused >&2; exit 3\"",
                false,
                "failed (exit status: 3): maintenance mode refused"
            ),
            ("undo", "scale", "scale deployment/web in shop back", true, "0 → 2 replicas, ready"),
        ]
    );
    assert_eq!((r["sources"][0]["result"].as_str(), h.repos().as_str(), h.core()), (Some(""), "library/nginx,pushed/after", (2, None)));

    let oldest = h.env.json(&["snapshots"])[0]["time"].as_str().unwrap().to_string();
    let oldest = chrono::DateTime::parse_from_rfc3339(&oldest).unwrap().with_timezone(&chrono::Utc).to_rfc3339();
    assert_eq!(
        h.refused(&h.plan("", "/health"), &["--time", "2020-01-01T00:00:00Z"]),
        format!("tresor: error: source registry-db has no restore point at or before 2020-01-01T00:00:00+00:00: its oldest is {oldest}")
    );
    assert_eq!((h.repos().as_str(), h.core()), ("library/nginx,pushed/after", (2, None)), "refused before anything was touched");
}

#[test]
fn a_failing_smoke_check_fails_the_restore_and_says_what_was_scaled_up() {
    let h = harbor();
    let plan = h.plan("", "/ui");
    assert_eq!(
        h.refused(&plan, &["--latest"]),
        format!(
            "tresor: error: smoke check http http://127.0.0.1:{0}/ui failed: GET http://127.0.0.1:{0}/ui answered 503, not 200: maintenance; scaled up before it: deployment/web in shop: 0 → 2",
            h.http
        )
    );
    assert_eq!(h.repos(), "library/nginx", "the restore itself went through");
    assert_eq!(h.core(), (2, None));
}

#[test]
fn plan_check_names_unknown_sources_and_cycles_in_an_application() {
    let env = Env::new();
    let sources = "  - {name: db, class: app, url: \"redis://127.0.0.1:1\", schedule: \"@daily\"}\n  - {name: web, class: app, url: /srv/web, schedule: \"@daily\"}\n";
    let app = "  - name: shop\n    sources:\n      - {source: db, after: [web]}\n      - {source: web, after: [db]}\n      - {source: search}\n    hooks:\n      pre:\n        - {command: \"true\", http: {url: \"http://x\"}}\n";
    let plan = write_plan(&env, sources, app);
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    let p = plan.display();
    let errors: Vec<&str> = said.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(
        errors,
        [
            format!("{p}:9: error: application shop: unknown source \"search\""),
            format!("{p}:9: error: application shop: the order has a cycle: db → web → db"),
            format!("{p}:9: error: application shop: a hook takes exactly one of scale, command and http (2 given)"),
        ]
    );
    assert_eq!(out.status.code(), Some(1));
}

/// A directory backed up (tagged `source=volume`), then changed: a.txt changed, b.txt gone, c.txt added; the snapshot's id.
fn changed_volume(env: &Env) -> (PathBuf, String) {
    env.ok(&["init"]);
    let dir = env.path("volume");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("a.txt"), "as backed up").unwrap();
    fs::write(dir.join("b.txt"), "kept").unwrap();
    let id = snapshot_id(&env.ok(&["backup", dir.to_str().unwrap(), "--tag", "source=volume"]));
    fs::write(dir.join("a.txt"), "changed since").unwrap();
    fs::remove_file(dir.join("b.txt")).unwrap();
    fs::write(dir.join("c.txt"), "added since").unwrap();
    (dir, id)
}

#[test]
fn a_preview_lists_exactly_what_the_restore_then_changes() {
    let env = Env::new();
    let (dir, _) = changed_volume(&env);
    let spec = format!("latest:{}", dir.display());
    let args = ["restore", spec.as_str(), "--target", dir.to_str().unwrap(), "--delete"];
    let preview = env.json(&[&args[..], &["--preview"]].concat());
    assert_eq!(
        (&preview["added"], &preview["changed"], &preview["removed"]),
        (&serde_json::json!(["b.txt"]), &serde_json::json!(["a.txt"]), &serde_json::json!(["c.txt"]))
    );
    assert_eq!(fs::read_to_string(dir.join("c.txt")).unwrap(), "added since", "a preview changes nothing");
    let done = env.json(&args);
    assert_eq!((done["files_restored"].as_u64(), done["files_deleted"].as_u64()), (Some(2), Some(1)));
    assert_eq!((fs::read_to_string(dir.join("a.txt")).unwrap(), dir.join("c.txt").exists()), ("as backed up".to_string(), false));

    let cluster = Cluster::start();
    let backup = tresor(&env, &cluster, &["backup", "k8s://", "--include-namespaces", "shop"]);
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(cluster.kubectl(&["delete", "configmap", "settings", "-n", "shop"]).status.success());
    let results = |out: &Output| -> Vec<(String, String)> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["object"].as_str().unwrap().into(), r["result"].as_str().unwrap().into()))
            .collect()
    };
    let previewed = results(&tresor(&env, &cluster, &["restore", "latest", "--to", "k8s://", "--preview", "--json"]));
    assert!(cluster.server.object("", "configmaps", Some("shop"), "settings").is_none(), "a preview changes nothing");
    let restored = results(&tresor(&env, &cluster, &["restore", "latest", "--to", "k8s://", "--json"]));
    let done = |r: &str| match r {
        "would create" => "created".to_string(),
        "would update" => "updated".into(),
        "would skip" => "skipped".into(),
        other => other.into(),
    };
    let would: Vec<(String, String)> = previewed.iter().map(|(o, r)| (o.clone(), done(r))).collect();
    assert_eq!(would, restored, "the preview named each object's result");
    let created: Vec<&str> = restored.iter().filter(|(_, r)| r == "created").map(|(o, _)| o.as_str()).collect();
    assert_eq!(created.len(), 1, "{restored:?}");
    assert!(created[0].ends_with("settings"), "{created:?}");
    assert!(previewed.iter().all(|(o, r)| (r == "would create") == o.ends_with("settings")), "{previewed:?}");
}

#[test]
fn a_pre_hook_that_overruns_is_killed_and_a_dead_runs_replicas_are_found_on_the_workload() {
    let h = harbor();
    let plan = h.plan("        - {command: \"sleep 30\", timeout: 1s}\n", "/health");
    assert_eq!(
        h.refused(&plan, &["--latest"]),
        "tresor: error: pre-restore hook command \"sleep 30\" failed: timed out after 1s and was killed; nothing restored; replicas restored: deployment/web in shop: 0 → 2"
    );
    assert_eq!((h.repos().as_str(), h.core()), ("library/nginx,pushed/after", (2, None)));

    // A tresor that died after scaling the core down left its replicas (3) on the workload.
    let patch = r#"{"metadata":{"annotations":{"tresor.dev/replicas-before-restore":"3"}},"spec":{"replicas":0}}"#;
    assert!(h.cluster.kubectl(&["patch", "deployment", "web", "-n", "shop", "--type=merge", "-p", patch]).status.success());
    let out = h.restore(&h.plan("", "/health"), &["--latest", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["scaled_up"], serde_json::json!(["deployment/web in shop: 0 → 3"]), "back to the replicas before the first run");
    assert_eq!(h.core(), (3, None));
}

#[test]
fn a_preview_says_what_each_target_holds_and_predicts_its_duration_from_the_drill_history() {
    let h = harbor();
    let plan = h.plan("", "/health");
    let snap = h.env.json(&["snapshots"])[0].clone();
    let id = &snap["id"].as_str().unwrap()[..8];
    let out = h.restore(&plan, &["--latest", "--preview"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "registry-db (postgres) snapshot {id} into {}: database registry holds 1 tables and would be replaced; no drill history to predict its duration\n",
            h.pg.url("registry")
        )
    );
    assert_eq!((h.repos().as_str(), h.core()), ("library/nginx,pushed/after", (2, None)), "a preview changes nothing");

    // A drill of the source: the preview predicts from it, for the snapshot's size (the report's model).
    let drilled = h.env.ok(&["drill", "registry-db", "--plan", plan.to_str().unwrap(), "--json"]);
    let d = serde_json::from_str::<serde_json::Value>(drilled.lines().last().unwrap()).unwrap()[0].clone();
    let (rto, bytes) = (d["rto_seconds"].as_f64().unwrap(), d["bytes"].as_u64().unwrap());
    let size = snap["summary"]["total_bytes_processed"].as_u64().unwrap();
    let predicted = if bytes > 0 { rto * size as f64 / bytes as f64 } else { rto };
    let out = h.restore(&plan, &["--latest", "--preview", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["sources"][0];
    assert_eq!(
        (p["replaces"].as_str(), p["drills"].as_u64(), v["predicted_seconds"].as_f64()),
        (Some("database registry holds 1 tables and would be replaced"), Some(1), p["predicted_seconds"].as_f64())
    );
    // The same model, though not the same rounding: the drill's RTO reaches the preview through the state.
    let got = p["predicted_seconds"].as_f64().unwrap();
    assert!((got - predicted).abs() <= predicted * 1e-9, "predicted {got} s, the model says {predicted} s");
    let text = String::from_utf8_lossy(&h.restore(&plan, &["--latest", "--preview"]).stdout).to_string();
    assert!(
        text.ends_with(&format!(
            "; predicted {predicted:.1} s from 1 drills\napplication harbor: predicted {predicted:.1} s (preview: nothing changed)\n"
        )),
        "{text}"
    );
    assert_eq!(h.repos(), "library/nginx,pushed/after");
}

#[test]
fn a_preview_of_a_redis_or_postgresql_restore_says_what_would_be_replaced() {
    let env = Env::new();
    env.ok(&["init"]);
    let redis = RedisServer::start(&[]);
    redis.cli(&["SET", "a", "1"]);
    redis.cli(&["SET", "b", "2"]);
    env.ok(&["backup", &redis.url()]);
    redis.cli(&["SET", "c", "3"]);
    let url = redis.url();
    let args = ["restore", "latest", "--to", url.as_str(), "--preview"];
    assert_eq!(env.ok(&args), format!("{url} holds 3 keys and would be replaced (preview: nothing changed)\n"));
    assert_eq!(env.json(&args)["replaces"], "holds 3 keys and would be replaced");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "3", "a preview changes nothing");

    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE orders (id int); CREATE TABLE carts (id int)");
    env.ok(&["backup", &pg.url("shop")]);
    pg.psql("shop", "CREATE TABLE later (id int)");
    let url = pg.url("shop");
    assert_eq!(
        env.ok(&["restore", "latest", "--to", &url, "--preview"]),
        format!("{url} database shop holds 3 tables and would be replaced (preview: nothing changed)\n")
    );
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM later"), "0", "a preview changes nothing");
}

/// The plan of an application `vol` of one directory source, `volume` at `dir`.
fn volume_app(env: &Env, dir: &Path) -> PathBuf {
    let sources = format!("  - {{name: volume, class: app, url: {}, schedule: \"@daily\"}}\n", dir.display());
    write_plan(env, &sources, "  - name: vol\n    sources:\n      - {source: volume}\n")
}

/// What `restore-app vol --preview` says restoring snapshot `id` into `dir` does.
fn volume_preview(id: &str, dir: &Path, does: &str) -> String {
    format!("volume (files) snapshot {id} into {}: {does}; no drill history to predict its duration\n", dir.display())
}

#[test]
fn an_application_preview_lists_a_directorys_changes_which_the_restore_then_makes() {
    let env = Env::new();
    let (dir, id) = changed_volume(&env);
    let plan = volume_app(&env, &dir);
    let args = ["restore-app", "vol", "--plan", plan.to_str().unwrap(), "--latest"];
    assert_eq!(
        env.ok(&[&args[..], &["--preview"]].concat()),
        volume_preview(&id, &dir, "1 added (b.txt), 1 changed (a.txt), 1 removed (c.txt)")
    );
    assert_eq!(fs::read_to_string(dir.join("c.txt")).unwrap(), "added since", "a preview changes nothing");
    let done = env.json(&args);
    assert_eq!(done["sources"][0]["result"], "2 files restored, 1 deleted");
    assert_eq!(
        (fs::read_to_string(dir.join("a.txt")).unwrap(), dir.join("b.txt").exists(), dir.join("c.txt").exists()),
        ("as backed up".to_string(), true, false)
    );
}

/// A file where the snapshot has a directory: the preview names it as not
/// restorable, and the restore then fails there.
#[test]
fn an_application_preview_names_what_stands_in_a_directorys_way() {
    let env = Env::new();
    env.ok(&["init"]);
    let dir = env.path("volume");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/x.txt"), "below").unwrap();
    fs::write(dir.join("a.txt"), "top").unwrap();
    let id = snapshot_id(&env.ok(&["backup", dir.to_str().unwrap(), "--tag", "source=volume"]));
    fs::remove_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub"), "in the way").unwrap();
    let plan = volume_app(&env, &dir);
    let args = ["restore-app", "vol", "--plan", plan.to_str().unwrap(), "--latest"];
    assert_eq!(
        env.ok(&[&args[..], &["--preview"]].concat()),
        volume_preview(&id, &dir, "0 added (), 0 changed (), 0 removed (), 1 not restorable (sub)")
    );
    let stderr = env.fails(&args, 1);
    assert_eq!(
        stderr,
        format!(
            "tresor: error: restore of source volume failed: 1 error during restore; first: {}: not a directory, so nothing is restored into it; \
             1 entry below it not restored\n",
            dir.join("sub").display()
        )
    );
    assert_eq!(fs::read_to_string(dir.join("sub")).unwrap(), "in the way", "what stands in the way is kept");
}

#[test]
fn an_application_preview_names_each_kubernetes_objects_would_be_result() {
    let env = Env::new();
    env.ok(&["init"]);
    let cluster = Cluster::start();
    let backup = tresor(&env, &cluster, &["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=objects"]);
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(cluster.kubectl(&["delete", "configmap", "settings", "-n", "shop"]).status.success());
    let sources = "  - {name: objects, class: app, url: \"k8s://\", schedule: \"@daily\", scope: {namespaces: [shop]}}\n";
    let plan = write_plan(&env, sources, "  - name: ns\n    sources:\n      - {source: objects}\n");
    let out = tresor(&env, &cluster, &["restore-app", "ns", "--plan", plan.to_str().unwrap(), "--latest", "--preview", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The same results `restore --preview` gives for the snapshot, counted and named.
    let single = tresor(&env, &cluster, &["restore", "latest", "--to", "k8s://", "--preview", "--json"]);
    let results = serde_json::from_slice::<serde_json::Value>(&single.stdout).unwrap()["results"].as_array().unwrap().clone();
    let said: Vec<String> = ["would create", "would update", "would skip"]
        .iter()
        .map(|what| {
            let names: Vec<&str> = results.iter().filter(|r| r["result"] == *what).map(|r| r["object"].as_str().unwrap()).collect();
            format!("{} {what} ({})", names.len(), names.join(" "))
        })
        .collect();
    assert_eq!(v["sources"][0]["replaces"].as_str(), Some(said.join(", ").as_str()));
    let created: Vec<&serde_json::Value> = results.iter().filter(|r| r["result"] == "would create").collect();
    assert!(created.len() == 1 && created[0]["object"].as_str().unwrap().ends_with("settings"), "{created:?}");
    assert!(cluster.server.object("", "configmaps", Some("shop"), "settings").is_none(), "a preview changes nothing");
}
