//! Restore drills on a plan modelled on the ERP requirement document:
//! three tiers; Redis, PostgreSQL, etcd (the cluster's configuration store)
//! and a volume; real servers. Drills restore into scratch targets only,
//! validate, measure RTO/RPO and leave protocol entries; a corrupted
//! snapshot fails its drill by name and nothing else.

use std::os::unix::fs::PermissionsExt;

use tresor_testkit::{EtcdServer, PostgresServer, RedisServer};

use super::daemon::{count, http, set_clock, start_daemon, wait_jobs};
use super::sources::{contents, fill, row_counts};
use super::*;

pub(super) struct Erp {
    pub(super) env: Env,
    pub(super) cluster: super::k8s::Cluster,
    redis: RedisServer,
    pg: PostgresServer,
    etcd: EtcdServer,
    pub(super) plan: PathBuf,
    pub(super) scratch: tempfile::TempDir,
}

/// The platform, each source backed up once.
pub(super) fn erp() -> Erp {
    let mut env = Env::new();
    env.vars.push(("TRESOR_PG_BIN".into(), PostgresServer::bin_dir().display().to_string()));
    env.ok(&["init"]);
    let redis = RedisServer::start(&[]);
    fill(&redis);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE erp");
    pg.pgbench_init("erp", 1);
    pg.psql(
        "erp",
        "CREATE TABLE invoices (id serial, created_at timestamptz DEFAULT now()); INSERT INTO invoices SELECT FROM generate_series(1, 500)",
    );
    let cluster = super::k8s::Cluster::start();
    env.vars.push(("KUBECONFIG".into(), cluster.kubeconfig.display().to_string()));
    let etcd = EtcdServer::start();
    for i in 0..30 {
        assert!(etcd.ctl(&["put", &format!("/registry/configmaps/erp/cm{i}"), "v"]).status.success());
    }
    let volume = env.path("volume");
    sample_tree(&volume);
    let scratch = scratch_dir("tresor-drills-");
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            r#"repositories:
  primary:
    url: {repo}
    password_file: {pw}
classes:
  critical:
    rpo: 15m
    rto: 2h
    drill:
      schedule: "0 4 * * 0"
      owner: db-team
  standard:
    rpo: 4h
    rto: 8h
  archive:
    rpo: 1d
    rto: 1d
sources:
  - name: sessions
    class: critical
    url: {redis}
    schedule: "*/15 * * * *"
    verify:
      min_keys: 2000
  - name: erp-db
    class: critical
    url: {pg}
    schedule: "*/15 * * * *"
    verify:
      queries:
        - sql: SELECT count(*) FROM pgbench_accounts
          min: 100000
        - sql: SELECT max(created_at) FROM invoices
          max_age: 1h
  - name: cluster-config
    class: standard
    url: {etcd}
    schedule: "0 * * * *"
  - name: k8s-config
    class: standard
    url: "k8s://"
    schedule: "0 * * * *"
  - name: documents
    class: archive
    url: {volume}
    schedule: "@daily"
daemon:
  state: {state}
drills:
  scratch_dir: {scratch}
"#,
            repo = env.repo,
            pw = env.path("pw").display(),
            redis = redis.url(),
            pg = pg.url("erp"),
            etcd = etcd.url(),
            volume = volume.display(),
            state = env.path("state.db").display(),
            scratch = scratch.path().display(),
        ),
    )
    .unwrap();
    for (name, url) in
        [("sessions", redis.url()), ("erp-db", pg.url("erp")), ("cluster-config", etcd.url()), ("documents", volume.display().to_string())]
    {
        env.ok(&["backup", &url, "--tag", &format!("source={name}")]);
    }
    env.ok(&["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=k8s-config"]);
    Erp { env, cluster, redis, pg, etcd, plan, scratch }
}

/// A scratch directory that the servers a drill starts (as another user
/// when the tests run as root) can enter.
pub(super) fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let scratch = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    scratch
}

fn drill(e: &Erp, name: Option<&str>) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = vec!["drill", "--plan", e.plan.to_str().unwrap(), "--scratch", e.scratch.path().to_str().unwrap(), "--json"];
    args.extend(name);
    let out = e.env.run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let reports: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("no reports: {text}{err}"));
    let reports = reports.as_array().unwrap().clone();
    assert!(!reports.is_empty(), "no drill ran: {text}{err}");
    (out.status.code(), reports)
}

/// A plan of one source, `cache`, the Redis instance backed up into `env`'s
/// repository.
fn cache_plan(env: &Env, redis: &RedisServer) -> PathBuf {
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: {}\n    password_file: {}\nclasses:\n  standard:\n    rpo: 1d\n    rto: 1h\n\
             sources:\n  - name: cache\n    class: standard\n    url: {}\n    schedule: \"@daily\"\n",
            env.repo,
            env.path("pw").display(),
            redis.url()
        ),
    )
    .unwrap();
    plan
}

/// A busy instance whose count rose and fell back around the fork: keys
/// written while the backup waited for its fork are in the data, and gone
/// again before the transfer ended, so the counts before and after (50)
/// both miss the 60 the data set holds. The backup reads the count at the
/// fork from the RDB's head, and the drill holds the restore to it (held to
/// the range around the fork, it failed).
#[test]
fn a_drill_of_a_busy_redis_holds_its_count_to_the_fork() {
    let env = Env::new();
    env.ok(&["init"]);
    // Busy with a save that would take 50 s: the fork for the backup waits
    // until the test ends it, however slowly the backup starts.
    let redis = RedisServer::start(&["--repl-diskless-sync-delay", "0"]);
    redis.script(&(0..50).map(|i| format!("SET k{i} v{i}\n")).collect::<String>());
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "1000000"]);
    assert_eq!(redis.cli(&["BGSAVE"]), "Background saving started");
    let backup = env.cmd(&["backup", &redis.url(), "--tag", "source=cache"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // Once it waits for its fork (PSYNC sent), the backup has counted.
    until("the backup never asked for the data", &|| redis.cli(&["CLIENT", "LIST"]).contains(" cmd=psync "));
    redis.script(&(50..60).map(|i| format!("SET k{i} v{i}\n")).collect::<String>());
    // The backup's own save (slow too, 200 ms a key: 12 s for the test to
    // delete the keys in) forks with the 60 keys once the first one is
    // ended (killed: the server forks anew for the replica).
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "200000"]);
    let pid = redis.cli(&["INFO", "server"]).lines().find_map(|l| l.strip_prefix("process_id:")).unwrap().trim().to_string();
    let saver = children_of(&pid);
    assert_eq!(saver.len(), 1, "one child, the save: {saver:?}");
    assert!(Command::new("kill").args(["-9", &saver[0]]).status().unwrap().success());
    until("the backup's save never started", &|| {
        let info = redis.cli(&["INFO", "persistence"]);
        info.contains("rdb_bgsave_in_progress:1") && info.contains("current_save_keys_total:60")
    });
    redis.script(&(50..60).map(|i| format!("DEL k{i}\n")).collect::<String>());
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let point = env.json(&["snapshots"])[0]["source"]["consistency"].clone();
    let counts = (&point["keys"], &point["keys_after"], &point["keys_at_fork"]);
    let at_fork = serde_json::json!({"db": 0, "keys": 60, "with_ttl": 0});
    assert_eq!(counts, (&serde_json::json!(50), &serde_json::json!(50), &at_fork), "{point}");

    let scratch = scratch_dir("tresor-drills-");
    let plan = cache_plan(&env, &redis);
    let out = env.json(&["drill", "--plan", plan.to_str().unwrap(), "--scratch", scratch.path().to_str().unwrap()]);
    assert_eq!(out[0]["passed"], true, "{out}");
    assert_eq!(out[0]["checks"][0], "60 keys, as the instance held when the backup forked");
}

/// The processes whose parent is `pid`, from each process's `stat`.
fn children_of(pid: &str) -> Vec<String> {
    let stat = |p: &Path| fs::read_to_string(p.join("stat")).ok();
    // The parent is the second field after the command name, which is in parentheses.
    let parent = |s: &str| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|p| stat(p).as_deref().and_then(parent).as_deref() == Some(pid))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A Redis drill counts the keys of every database, and those the restored
/// instance dropped as expired when it loaded: keys in database 1, and a
/// key whose TTL ran out between the backup and the drill, fail no drill.
/// No key with a TTL is sampled for the drill to look for.
#[test]
fn a_redis_drill_counts_every_database_and_the_keys_expired_since_the_backup() {
    let env = Env::new();
    env.ok(&["init"]);
    let redis = RedisServer::start(&[]);
    let set = std::time::Instant::now();
    redis.script("SET a 1\nSET b 2\nSELECT 1\nSET c 3\nSELECT 0\nSET brief x PX 10000\n");
    env.ok(&["backup", &redis.url(), "--tag", "source=cache"]);
    let snap = &env.json(&["snapshots"])[0];
    let point = &snap["source"]["consistency"];
    assert_eq!((&point["keys"], &point["keys_after"]), (&serde_json::json!(4), &serde_json::json!(4)), "idle: the same before and after");
    assert_eq!(point.get("keys_at_fork"), None, "two databases: the RDB's head counts the first one only");
    let sampled = snap["source"]["consistency"]["sample_keys"].as_array().unwrap().clone();
    assert!(sampled.iter().all(|k| k == "a" || k == "b"), "no key with a TTL, nor of another database: {sampled:?}");
    let scratch = scratch_dir("tresor-drills-");
    let plan = cache_plan(&env, &redis);
    // The TTL's end, passed: not a measurement.
    std::thread::sleep(std::time::Duration::from_millis(10_500).saturating_sub(set.elapsed()));
    let out = env.json(&["drill", "--plan", plan.to_str().unwrap(), "--scratch", scratch.path().to_str().unwrap()]);
    let report = &out[0];
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["checks"][0], "3 keys and 1 expired since the backup, as recorded at backup");
}

#[test]
fn drills_restore_validate_and_measure_every_source_without_touching_production() {
    let e = erp();
    let redis_before = contents(&e.redis);
    let pg_before = (row_counts(&e.pg, "erp"), e.pg.psql("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"));
    let etcd_before = e.etcd.ctl(&["get", "--prefix", ""]).stdout;

    let (code, reports) = drill(&e, None);
    let verdicts: Vec<(&str, bool)> = reports.iter().map(|r| (r["source"].as_str().unwrap(), r["passed"].as_bool().unwrap())).collect();
    assert_eq!(code, Some(0), "{reports:#?}");
    assert_eq!(verdicts, [("sessions", true), ("erp-db", true), ("cluster-config", true), ("k8s-config", true), ("documents", true)]);
    let by = |name: &str| reports.iter().find(|r| r["source"] == name).unwrap().clone();
    let checks = |name: &str| by(name)["checks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(
        checks("sessions"),
        ["2007 keys, as the instance held when the backup forked", "5 sampled keys present", "at least 2000 keys"]
    );
    let pg_checks = checks("erp-db");
    assert!(
        pg_checks[1].starts_with("row counts of ") && pg_checks[1].ends_with(" tables match the backup's statistics (within 10 %)"),
        "{pg_checks:?}"
    );
    assert!(pg_checks[2] == "SELECT count(*) FROM pgbench_accounts = 100000 (at least 100000)", "{pg_checks:?}");
    assert!(
        pg_checks[3].starts_with("SELECT max(created_at) FROM invoices = ") && pg_checks[3].ends_with("(within 1h of the restore point)"),
        "{pg_checks:?}"
    );
    let etcd_check = &checks("cluster-config")[0];
    assert!(etcd_check.starts_with("30 keys at revision ") && etcd_check.ends_with(", as recorded at backup"), "{etcd_check}");
    assert!(checks("documents")[0].ends_with("read back and matched the snapshot's content hashes"), "{:?}", checks("documents"));
    assert_eq!(
        checks("k8s-config"),
        [
            "6 objects accepted by the API in shop-drill (server-side dry run), 2 existing cluster objects left alone, 4 left to the cluster, which makes them itself"
        ]
    );
    assert!(!e.cluster.kubectl(&["get", "namespace", "shop-drill"]).status.success(), "the drill's namespace is removed");
    assert!(e.cluster.kubectl(&["get", "deployment", "web", "-n", "shop"]).status.success(), "production objects stay");
    for r in &reports {
        let rto = r["rto_seconds"].as_f64().unwrap();
        let rpo = r["rpo_seconds"].as_f64().unwrap();
        assert!(rto > 0.0 && rto < r["rto_target"].as_f64().unwrap(), "measured RTO within target: {r}");
        assert!((0.0..600.0).contains(&rpo), "the restore point's age: {r}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(by("erp-db")["owner"], "db-team");

    // Production untouched: every key, row, database and etcd key as before; scratch cleaned up.
    assert_eq!(contents(&e.redis), redis_before);
    assert_eq!(
        (row_counts(&e.pg, "erp"), e.pg.psql("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")),
        pg_before
    );
    assert_eq!(e.etcd.ctl(&["get", "--prefix", ""]).stdout, etcd_before);
    assert_eq!(fs::read_dir(e.scratch.path()).unwrap().count(), 0, "scratch targets are removed");
    let audit = e.env.json(&["audit", "--state", e.env.path("state.db").to_str().unwrap()]);
    assert_eq!(audit.as_array().unwrap().iter().filter(|a| a["action"] == "drill" && a["result"] == "succeeded").count(), 5);
}

#[test]
fn a_corrupted_snapshot_fails_its_drill_by_name_and_nothing_else() {
    let e = erp();
    // Damage the volume's data: the largest pack holds its file contents.
    let data = Path::new(&e.env.repo).join("data");
    let victim = biggest(&data);
    flip_byte(&victim, fs::metadata(&victim).unwrap().len() / 2);
    let (code, reports) = drill(&e, Some("archive"));
    assert_eq!(code, Some(1));
    let r = &reports[0];
    assert_eq!((r["source"].as_str(), r["passed"].as_bool()), (Some("documents"), Some(false)));
    let pack = victim.file_name().unwrap().to_str().unwrap();
    let why = r["reasons"][0].as_str().unwrap();
    assert!(why.contains(&pack[..16]) || why.contains("authentication"), "the damaged object is named: {why}");
    let (code, reports) = drill(&e, Some("critical"));
    assert_eq!(code, Some(0), "other classes still pass: {reports:#?}");

    // An object the API refuses is one a real restore would lack.
    e.cluster.server.deny_create("widgets");
    let (code, reports) = drill(&e, Some("standard"));
    assert_eq!(code, Some(1));
    let verdicts: Vec<(&str, bool)> = reports.iter().map(|r| (r["source"].as_str().unwrap(), r["passed"].as_bool().unwrap())).collect();
    assert_eq!(verdicts, [("cluster-config", true), ("k8s-config", false)]);
    let why = reports[1]["reasons"][0].as_str().unwrap();
    let denied = "admission webhook \"validate.example.com\" denied the request: Widget w1 is not allowed here";
    assert_eq!(why, format!("partial: 1 of 12 objects failed; first: Widget shop-drill/w1: {denied}"));
}

#[test]
fn the_daemon_runs_a_class_drill_on_its_schedule_and_exports_the_measurements() {
    let e = erp();
    let clock = e.env.path("clock");
    set_clock(&clock, "2026-11-21T10:00:00Z");
    let d = start_daemon(&e.env, &e.plan, Some(&clock));
    wait_jobs(&d, "first backups", |j| {
        ["sessions", "erp-db", "cluster-config", "documents"].iter().all(|s| count(j, s, "backup", "succeeded") == 1)
    });
    // Sunday 04:00: the critical class's drills (sessions, erp-db); the other classes have no drill schedule.
    set_clock(&clock, "2026-11-22T04:00:01Z");
    let j =
        wait_jobs(&d, "the drills", |j| count(j, "sessions", "drill", "succeeded") == 1 && count(j, "erp-db", "drill", "succeeded") == 1);
    assert_eq!(j.iter().filter(|x| x["kind"] == "drill").count(), 2);
    assert_eq!(http(d.port, "POST", "/api/v1/sources/documents/drill", Some("admin-token")).0, 202);
    wait_jobs(&d, "the API's drill", |j| count(j, "documents", "drill", "succeeded") == 1);
    // The job is in the history before its drill is measured: wait for the measurement, then look.
    let measured = "restore_drill_success{source=\"documents\",class=\"archive\"} ";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http(d.port, "GET", "/metrics", None).1.contains(measured) {
        assert!(std::time::Instant::now() < deadline, "no {measured} in the metrics");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    for line in [
        "restore_drill_success{source=\"sessions\",class=\"critical\"} 1",
        "restore_drill_success{source=\"documents\",class=\"archive\"} 1",
        // A drill's restore is a restore.
        "restore_success_total{source=\"sessions\",class=\"critical\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("rto_achieved_seconds{source=\"erp-db\",class=\"critical\"} "), "{metrics}");
    assert!(metrics.contains("rpo_achieved_seconds{source=\"erp-db\",class=\"critical\"} "), "{metrics}");
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
    let row = page.lines().find(|l| l.contains("data-class=\"critical\"")).unwrap_or_default().to_string();
    assert!(row.contains("<td>passed 2026-") && row.contains("(RTO "), "the status page shows the class's last drill: {row}");
    let archive = page.lines().find(|l| l.contains("data-class=\"standard\"")).unwrap_or_default().to_string();
    assert!(archive.ends_with("<td>never</td></tr>"), "{archive}");
    drop(d);

    e.env.ok(&["hold", "latest", "--reason", "litigation"]);
    // The report: targets against measurements, the protocol, holds, the evidence.
    let report = |format: &str| {
        e.env.cmd(&["report", "--plan", e.plan.to_str().unwrap(), "--format", format]).env("TRESOR_CLOCK_FILE", &clock).output().unwrap()
    };
    let json: serde_json::Value = serde_json::from_slice(&report("json").stdout).unwrap();
    let class = |n: &str| json["classes"].as_array().unwrap().iter().find(|c| c["name"] == n).unwrap().clone();
    let critical = class("critical");
    assert_eq!(
        (critical["drills"].as_u64(), critical["drills_passed"].as_u64(), critical["rto_met"].as_bool()),
        (Some(2), Some(2), Some(true)),
        "{critical}"
    );
    assert_eq!((critical["backups"].as_u64(), critical["backups_succeeded"].as_u64()), (Some(4), Some(4)), "first runs and the 04:00 runs");
    assert!(critical["rto_predicted"].as_f64().is_some(), "a prediction from the drill history: {critical}");
    let gap = critical["rpo_worst_gap"].as_f64().unwrap();
    assert!(gap > 17.0 * 3600.0, "the night the clock jumped over is the worst gap: {critical}");
    assert_eq!(critical["rpo_met"], false, "an 18-hour gap misses a 15m RPO: {critical}");
    assert_eq!(class("standard")["drills"], 0);
    assert_eq!(json["protocol"].as_array().unwrap().len(), 3);
    assert_eq!(json["holds"], serde_json::json!({"primary": 1}));
    assert_eq!(critical["retention_ok"], true);
    let md = String::from_utf8(report("md").stdout).unwrap();
    assert!(
        md.contains("| critical | 15m | ") && md.contains("## Test protocol") && md.contains("| ISO/IEC 27001:2022 | A.8.13 |"),
        "{md}"
    );
    assert!(md.contains("\nLegal holds: primary: 1. Every repository is encrypted end to end"), "{md}");
    let html = e.env.path("report.html");
    let out = e
        .env
        .cmd(&["report", "--plan", e.plan.to_str().unwrap(), "--format", "html", "--output", html.to_str().unwrap()])
        .env("TRESOR_CLOCK_FILE", &clock)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (dom, png) = super::deploy::chromium(&format!("file://{}", html.display()), e.env.dir.path());
    assert!(dom.contains("<section class=\"class missed\" data-class=\"critical\">"), "{dom}");
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 4, "RTO and RPO charts for the two classes with drills");
    assert!(dom.contains("no drills yet"), "the class without drills says so");
    assert!(dom.contains("<td>DRILL-") && dom.contains("<td>A.5.30</td>"), "{dom}");
    assert!(png.len() > 10_000);
}

/// `etcd` as found on PATH, behind a script that records its arguments,
/// the mode of each file among them, and what the member logs.
fn recording_etcd(dir: &Path) -> (PathBuf, PathBuf) {
    let found = Command::new("sh").args(["-c", "command -v etcd"]).output().unwrap();
    let real = String::from_utf8(found.stdout).unwrap().trim().to_string();
    assert!(!real.is_empty(), "etcd (Debian package etcd-server) is on PATH");
    let (bin, log) = (dir.join("bin"), dir.join("etcd.log"));
    fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"argv $*\" >> {log}\nfor a in \"$@\"; do [ -f \"$a\" ] && stat -c 'mode %a %n' \"$a\" >> {log}; done\nexec {real} \"$@\" 2>> {log}\n",
        log = log.display()
    );
    fs::write(bin.join("etcd"), script).unwrap();
    fs::set_permissions(bin.join("etcd"), fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

#[test]
fn an_etcd_drill_reaches_its_scratch_member_over_tls_with_client_certificates_only() {
    let mut env = Env::new();
    env.ok(&["init"]);
    let certs = tresor_testkit::Certs::make(&env.path("tls"));
    let etcd = EtcdServer::start_tls(certs.etcd_tls());
    for i in 0..25 {
        assert!(etcd.ctl(&["put", &format!("/registry/secrets/kube-system/s{i}"), "v"]).status.success());
    }
    let url =
        format!("{}?cacert={}&cert={}&key={}", etcd.url(), certs.ca.display(), certs.client_cert.display(), certs.client_key.display());
    env.ok(&["backup", &url, "--tag", "source=cluster-state"]);
    let (bin, log) = recording_etcd(env.dir.path());
    env.vars.push(("PATH".into(), format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())));
    let scratch = env.path("scratch");
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: {}\n    password_file: {}\nclasses:\n  standard:\n    rpo: 1h\n    rto: 1h\n\
             sources:\n  - name: cluster-state\n    class: standard\n    url: \"{url}\"\n    schedule: \"@hourly\"\n\
             daemon:\n  state: {}\ndrills:\n  scratch_dir: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display(),
            scratch.display()
        ),
    )
    .unwrap();

    let out = env.run(&["drill", "--plan", plan.to_str().unwrap(), "--json", "cluster-state"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{text}{}\n{logged}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let r = &reports[0];
    assert_eq!(r["passed"], true, "{r}");
    let checks: Vec<&str> = r["checks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(checks[0], "25 keys at revision 26, as recorded at backup", "{checks:?}");
    let endpoint = checks[1].strip_prefix("the restored member at ").and_then(|c| c.split(' ').next()).unwrap_or_default();
    let version = etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    let version = version[0]["Status"]["version"].as_str().unwrap();
    assert_eq!(
        checks[1],
        format!(
            "the restored member at {endpoint} (etcd {version}) was reached over TLS with the drill's client certificate, which it requires"
        )
    );
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");

    // What etcd itself was given and said: HTTPS on both ports, a client
    // certificate required on both, key and certificates readable by their owner only.
    let argv = logged.lines().find_map(|l| l.strip_prefix("argv ")).unwrap_or_default();
    assert!(argv.contains(&format!("--listen-client-urls {endpoint} ")), "{argv}");
    assert!(argv.contains("--listen-peer-urls https://127.0.0.1:"), "{argv}");
    let tls = scratch.join(r["test_id"].as_str().unwrap()).join("tls");
    let modes: Vec<&str> = logged.lines().filter(|l| l.starts_with("mode ")).collect();
    let want: Vec<String> = ["server.crt", "server.key", "ca.crt"].iter().map(|f| format!("mode 600 {}", tls.join(f).display())).collect();
    assert_eq!(modes, [&want[..], &want[..]].concat(), "the member's and the peers' TLS files");
    let required = format!(
        "cert = {}, key = {}, trusted-ca = {}, client-cert-auth = true",
        tls.join("server.crt").display(),
        tls.join("server.key").display(),
        tls.join("ca.crt").display()
    );
    assert_eq!(logged.matches(&required).count(), 2, "client and peer TLS, as etcd logged them: {logged}");
    assert!(!logged.contains("insecure"), "{logged}");
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "the certificates went with the scratch directory");
}
