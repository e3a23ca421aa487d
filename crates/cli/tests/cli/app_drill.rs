//! `tresor drill --app`: a whole application (a PostgreSQL database, a
//! Redis, a directory) restored into scratch servers on real servers, in
//! its order between its hooks (scale hooks skipped: production's
//! workloads are left alone), its smoke checks asked of the scratch
//! targets, its alerts silenced in a real Alertmanager; the protocol
//! keeps its RTO end to end, each source's point, the consistency window
//! and each hook's and check's outcome. Production is not touched.

use tresor_testkit::{AlertmanagerServer, PostgresServer, RedisServer};

use super::apps::write_plan;
use super::*;

const ROWS: &str = "SELECT string_agg(note, ',' ORDER BY id) FROM orders";

/// An application backed up, then changed in production.
struct Shop {
    env: Env,
    pg: PostgresServer,
    redis: RedisServer,
    uploads: PathBuf,
}

fn shop() -> Shop {
    let env = Env::new();
    env.ok(&["init"]);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE orders (id int, note text); INSERT INTO orders VALUES (1, 'early'), (2, 'paid')");
    let redis = RedisServer::start(&[]);
    redis.cli(&["SET", "cart:1", "early"]);
    redis.cli(&["SET", "cart:2", "full"]);
    let uploads = env.path("uploads");
    fs::create_dir_all(&uploads).unwrap();
    fs::write(uploads.join("a.txt"), "as backed up").unwrap();
    env.ok(&["backup", &pg.url("shop"), "--tag", "source=db"]);
    env.ok(&["backup", &redis.url(), "--tag", "source=cache"]);
    env.ok(&["backup", uploads.to_str().unwrap(), "--tag", "source=uploads"]);
    // Production moves on: the drill restores the backups, and leaves this alone.
    pg.psql("shop", "INSERT INTO orders VALUES (3, 'late')");
    redis.cli(&["SET", "cart:1", "late"]);
    fs::write(uploads.join("a.txt"), "changed since").unwrap();
    Shop { env, pg, redis, uploads }
}

impl Shop {
    /// The plan: the application with this smoke-check command, silences through `alertmanager`.
    fn plan(&self, check: &str, alertmanager: &str) -> PathBuf {
        let sources = format!(
            "  - {{name: db, class: app, url: \"{}\", schedule: \"@daily\"}}\n  - {{name: cache, class: app, url: \"{}\", schedule: \"@daily\"}}\n  - {{name: uploads, class: app, url: {}, schedule: \"@daily\"}}\n",
            self.pg.url("shop"),
            self.redis.url(),
            self.uploads.display()
        );
        let app = format!(
            "  - name: shop\n    sources:\n      - {{source: db}}\n      - {{source: cache, after: [db], flush: true}}\n      - {{source: uploads, after: [db]}}\n    hooks:\n      timeout: 1m\n      pre:\n        - scale: {{namespace: shop, workload: deployment/web, replicas: 0}}\n        - command: 'test -n \"$TRESOR_TARGET_CACHE\"'\n      post:\n        - scale: {{namespace: shop, workload: deployment/web}}\n    verify:\n      command: {}\n      queries:\n        - {{sql: \"{ROWS}\", equals: \"early,paid\"}}\ndaemon:\n  state: {}\ndrills:\n  silence:\n    alertmanager: {alertmanager}\n    matchers: ['source={{source}}']\n",
            serde_json::to_string(check).unwrap(),
            self.env.path("state.db").display()
        );
        write_plan(&self.env, &sources, &app)
    }

    fn drill(&self, plan: &Path) -> Output {
        let scratch = self.env.path("scratch");
        fs::create_dir_all(&scratch).unwrap();
        self.env.run(&["drill", "--app", "shop", "--plan", plan.to_str().unwrap(), "--scratch", scratch.to_str().unwrap(), "--json"])
    }

    /// What production holds: its rows, its cart, its file.
    fn production(&self) -> (String, String, String) {
        (
            self.pg.psql("shop", ROWS),
            self.redis.cli(&["GET", "cart:1"]).trim().to_string(),
            fs::read_to_string(self.uploads.join("a.txt")).unwrap(),
        )
    }
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
}

/// (phase, kind, what, passed, detail) of each outcome.
fn outcomes(v: &serde_json::Value) -> Vec<(String, String, String, bool, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap().to_string();
            (s("phase"), s("kind"), s("what"), o["passed"].as_bool().unwrap(), s("detail"))
        })
        .collect()
}

const CHECK: &str = "[ \"$(redis-cli -u \"$TRESOR_TARGET_CACHE\" GET cart:1)\" = early ] && [ \"$(cat \"$TRESOR_TARGET_UPLOADS/a.txt\")\" = 'as backed up' ]";
const SKIPPED: &str = "skipped: a drill restores into scratch targets and leaves the application's workloads alone";

#[test]
fn an_application_drill_restores_every_source_into_scratch_and_records_its_rto_and_points() {
    let s = shop();
    let am = AlertmanagerServer::start();
    let plan = s.plan(CHECK, &format!("http://127.0.0.1:{}", am.port()));
    let out = s.drill(&plan);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone();
    assert_eq!(
        (r["passed"].as_bool(), r["kind"].as_str(), r["source"].as_str(), r["class"].as_str()),
        (Some(true), Some("application"), Some("shop"), Some("app")),
        "{r:#}"
    );
    assert_eq!((r["rto_target"].as_u64(), r["rpo_target"].as_u64()), (Some(3600), Some(86400)));

    // Each source at its newest point, in the application's order, into a scratch target.
    let app = &r["application"];
    let sources = app["sources"].as_array().unwrap();
    let got: Vec<(&str, &str)> = sources.iter().map(|x| (x["source"].as_str().unwrap(), x["kind"].as_str().unwrap())).collect();
    assert_eq!(got, [("db", "postgres"), ("cache", "redis"), ("uploads", "files")]);
    let snaps = s.env.json(&["snapshots"]);
    for (x, snap) in sources.iter().zip(snaps.as_array().unwrap()) {
        assert_eq!((&x["snapshot"], time(&x["point"])), (&snap["id"], time(&snap["time"])), "{x}");
    }
    let db = sources[0]["target"].as_str().unwrap();
    assert!(
        db.starts_with("postgres://postgres@127.0.0.1:") && db.ends_with("/shop") && !db.contains(&format!(":{}/", s.pg.port())),
        "{db}"
    );
    let points: Vec<_> = sources.iter().map(|x| time(&x["point"])).collect();
    let (lo, hi) = (*points.iter().min().unwrap(), *points.iter().max().unwrap());
    assert_eq!(app["consistency_window_seconds"].as_f64(), Some((hi - lo).num_milliseconds() as f64 / 1000.0));
    assert_eq!(time(&r["snapshot_time"]), lo, "the application is as old as its oldest point");
    assert_eq!(r["rpo_seconds"].as_f64(), Some((time(&r["started"]) - lo).num_milliseconds() as f64 / 1000.0));
    assert!(r["rto_seconds"].as_f64().unwrap() > 0.0);

    // Exactly what was backed up came back in scratch: the rows, the keys, the file.
    let checks: Vec<&str> = r["checks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(checks.contains(&"cache: 2 keys in the scratch Redis"), "{checks:?}");
    assert!(
        checks.iter().any(|c| c.starts_with("uploads (files) restored to ") && c.ends_with(": 1 files restored, 0 deleted")),
        "{checks:?}"
    );
    let hook = "command \"test -n \\\"$TRESOR_TARGET_CACHE\\\"\"";
    let o = |p: &str, k: &str, w: &str, d: &str| (p.to_string(), k.to_string(), w.to_string(), true, d.to_string());
    assert_eq!(
        outcomes(&app["hooks"]),
        [
            o("pre", "scale", "scale deployment/web in shop to 0", SKIPPED),
            o("pre", "command", hook, "exit 0"),
            o("post", "scale", "scale deployment/web in shop back", SKIPPED)
        ]
    );
    assert_eq!(
        outcomes(&app["smoke_checks"]),
        [
            o("check", "command", &format!("command {CHECK:?}"), "exit 0"),
            o("check", "sql", &format!("sql {ROWS}"), "answered \"early,paid\"")
        ]
    );

    // Its alerts silenced while it ran, the silence expired after; production as it was; scratch cleaned.
    let silence = &r["silence"];
    assert_eq!(silence["expired"], true, "{silence}");
    let all = am.silences();
    assert_eq!((all.len(), all[0]["id"].as_str(), all[0]["status"]["state"].as_str()), (1, silence["id"].as_str(), Some("expired")));
    assert_eq!(all[0]["matchers"][0]["value"], "shop");
    assert_eq!(s.production(), ("early,paid,late".to_string(), "late".to_string(), "changed since".to_string()));
    assert_eq!(fs::read_dir(s.env.path("scratch")).unwrap().count(), 0, "the scratch targets are gone");

    // The protocol keeps it.
    let report: serde_json::Value =
        serde_json::from_str(&s.env.ok(&["report", "--plan", plan.to_str().unwrap(), "--format", "json"])).unwrap();
    assert_eq!(report["protocol"][0]["application"], *app);
}

#[test]
fn a_failing_smoke_check_fails_the_application_drill_with_its_output() {
    let s = shop();
    let check = "echo \"cart:1 is $(redis-cli -u \"$TRESOR_TARGET_CACHE\" GET cart:1), not late\" >&2; exit 1";
    let plan = s.plan(check, &format!("http://127.0.0.1:{}", tresor_testkit::net::free_port()));
    let out = s.drill(&plan);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "tresor: error: the drill of application shop failed");
    let r = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone();
    assert_eq!(r["passed"], false);
    assert_eq!(
        r["reasons"],
        serde_json::json!([format!(
            "smoke check command {check:?} failed: failed (exit status: 1): cart:1 is early, not late; scaled up before it: none"
        )])
    );
    assert_eq!(r["application"]["smoke_checks"][0]["passed"], false);
    assert!(r["silence"]["error"].as_str().unwrap().starts_with("cannot reach Alertmanager at "), "{}", r["silence"]);
    assert_eq!(s.production().1, "late");
}
