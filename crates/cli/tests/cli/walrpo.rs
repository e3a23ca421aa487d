//! The RPO of a PostgreSQL cluster that archives WAL through tresor, against
//! a real PostgreSQL 15: the age of the newest archived commit while a
//! commit waits unarchived, zero once everything is archived; and the plan
//! check that accepts daily base backups under a 5-minute RPO because of it.

use std::time::{Duration, Instant};

use super::daemon::{http, start_daemon, wait_jobs};
use super::pitr::{archiving_server_with, postgres_env, switch_and_archive};
use super::*;

fn plan_text(env: &Env, port: u16, wal_archive: &str) -> String {
    format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  db:\n    rpo: 5m\n    rto: 1h\n\
         sources:\n  - name: db\n    class: db\n    url: pgbase://postgres@127.0.0.1:{port}\n    schedule: \"0 1 * * *\"\n{wal_archive}\
         daemon:\n  state: {}\n",
        env.repo,
        env.path("pw").display(),
        env.path("state.db").display()
    )
}

/// `backup_rpo_seconds` of class db and `backup_wal_archive_lag_seconds` of source db.
fn figures(d: &super::daemon::Daemon) -> (Option<f64>, Option<f64>) {
    let (_, text) = http(d.port, "GET", "/metrics", None);
    let value = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok());
    (value("backup_rpo_seconds{class=\"db\"}"), value("backup_wal_archive_lag_seconds{source=\"db\",class=\"db\"}"))
}

/// Wait until the daemon's figures satisfy `want`; the last ones.
fn wait_figures(d: &super::daemon::Daemon, what: &str, want: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (Some(rpo), Some(lag)) = figures(d)
            && want(rpo, lag)
        {
            return (rpo, lag);
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", figures(d));
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn check_plan(env: &Env, plan: &Path, extra: &[&str]) -> String {
    let mut args = vec!["plan", "check", plan.to_str().unwrap()];
    args.extend_from_slice(extra);
    String::from_utf8_lossy(&env.run(&args).stdout).to_string()
}

fn report_json(env: &Env, plan: &Path) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["report", "--plan", plan.to_str().unwrap(), "--format", "json"])).unwrap()
}

#[test]
fn the_rpo_of_a_wal_archiving_cluster_is_its_newest_archived_commits_age_and_zero_when_all_is_archived() {
    let env = postgres_env();
    let pg = archiving_server_with(&env, "track_commit_timestamp = on\narchive_timeout = 300\n");
    pg.psql("postgres", "CREATE TABLE t (id serial PRIMARY KEY, note text)");
    let plan = env.path("plan.yaml");

    // Daily base backups under a 5-minute RPO: only with an archive_timeout within it.
    fs::write(&plan, plan_text(&env, pg.port(), "    wal_archive:\n      archive_timeout: 5m\n")).unwrap();
    let said = check_plan(&env, &plan, &[]);
    assert!(said.ends_with(": 1 source, 1 class: 0 errors, 2 warnings\n"), "{said}");
    fs::write(&plan, plan_text(&env, pg.port(), "    wal_archive:\n      archive_timeout: 10m\n")).unwrap();
    let said = check_plan(&env, &plan, &[]);
    assert!(
        said.contains(
            ":13: error: source db: schedule \"0 1 * * *\" leaves up to 1d between backups, longer than class db's RPO 5m, \
             and the cluster's archive_timeout 10m lets a commit wait that long unarchived, longer than the RPO 5m\n"
        ),
        "{said}"
    );
    fs::write(&plan, plan_text(&env, pg.port(), "    wal_archive: {}\n")).unwrap();
    let said = check_plan(&env, &plan, &[]);
    assert!(
        said.contains(":13: error: source db: schedule \"0 1 * * *\" leaves up to 1d between backups, longer than class db's RPO 5m, \
             and its WAL archive counts only with a known archive_timeout: give wal_archive.archive_timeout, or check with --connect to ask the server\n"),
        "{said}"
    );
    // With --connect the server says: 300 s.
    let said = check_plan(&env, &plan, &["--connect"]);
    assert!(!said.contains("error:"), "{said}");

    // The daemon's first base backup, then a commit archived and one not.
    fs::write(&plan, plan_text(&env, pg.port(), "    wal_archive:\n      archive_timeout: 5m\n")).unwrap();
    let d = start_daemon(&env, &plan, None);
    wait_jobs(&d, "the first base backup", |j| j.iter().any(|j| j["kind"] == "backup" && j["status"] == "succeeded"));
    pg.psql("postgres", "INSERT INTO t (note) VALUES ('archived')");
    let committed: f64 =
        pg.psql("postgres", "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM t WHERE note = 'archived'").parse().unwrap();
    switch_and_archive(&pg);
    std::thread::sleep(Duration::from_secs(2));
    pg.psql("postgres", "INSERT INTO t (note) VALUES ('waiting')");
    let near = |got: f64| (got - (now_secs() - committed)).abs() < 3.0;
    let (rpo, lag) = wait_figures(&d, "the RPO is the archived commit's age", |rpo, _| near(rpo));
    assert!(rpo >= 2.0 && lag > 0.0, "rpo {rpo}, lag {lag}");
    let report = report_json(&env, &plan);
    let current = report["classes"][0]["rpo_current"].as_f64().unwrap();
    assert!(near(current), "the report's RPO {current} is the archived commit's age {}", now_secs() - committed);

    // Everything archived, the server idle: zero.
    switch_and_archive(&pg);
    let (rpo, lag) = wait_figures(&d, "nothing unarchived", |rpo, lag| rpo == 0.0 && lag == 0.0);
    assert_eq!((rpo, lag), (0.0, 0.0));
    let report = report_json(&env, &plan);
    assert_eq!(report["classes"][0]["rpo_current"], 0.0);
    // The archive bridges the day between base backups: no gap, the RPO met.
    assert_eq!((&report["classes"][0]["rpo_worst_gap"], &report["classes"][0]["rpo_met"]), (&0.0.into(), &true.into()));
    assert_eq!(report["classes"][0]["wal_archive_lag"], 0.0);
    // The repository out of reach: the figures grow from the chain as last
    // seen, never stand at zero while nothing says commits reach the archive.
    let away = format!("{}.away", env.repo);
    fs::rename(&env.repo, &away).unwrap();
    let waiting: f64 =
        pg.psql("postgres", "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM t WHERE note = 'waiting'").parse().unwrap();
    let (rpo, _) = wait_figures(&d, "an archive out of reach is not caught up", |rpo, lag| rpo > 0.0 && lag > 0.0);
    assert!((rpo - (now_secs() - waiting)).abs() < 3.0, "the RPO {rpo} is the newest archived commit's age {}", now_secs() - waiting);
    fs::rename(&away, &env.repo).unwrap();
    wait_figures(&d, "caught up again once the archive is back", |rpo, lag| rpo == 0.0 && lag == 0.0);
    // What wal-push recorded of the segment holding the second commit.
    let wal = env.json(&["snapshots", "--all"]);
    let segments = wal
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"]["kind"] == "pg-wal" && s["source"]["consistency"]["file"].as_str().unwrap().len() == 24);
    let newest = segments.max_by_key(|s| s["source"]["consistency"]["file"].as_str().unwrap().to_string()).unwrap();
    let point = &newest["source"]["consistency"];
    assert_eq!((point["switched"].as_bool(), point["commits"].as_u64()), (Some(true), Some(1)), "{point}");
}
