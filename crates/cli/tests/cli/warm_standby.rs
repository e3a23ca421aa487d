//! Warm standbys against a real PostgreSQL 15 (issue 15 item 4): a primary
//! archiving through `tresor pg wal-push`, a standby made by `tresor standby
//! refresh` that a second server keeps replaying through `tresor pg
//! wal-fetch`, its lag falling back to zero after each archived segment, and
//! `tresor failover` promoting it with exactly the commits the archive holds,
//! refusing an archive with a gap unless forced.

use tresor_testkit::PostgresServer;

use std::time::{Duration, Instant};

use super::daemon::{http, jobs, start_daemon, wait_jobs};
use super::pitr::{archiving_server, postgres_env, switch_and_archive};
use super::*;

/// A plan whose source db has a standby in `target`, asked at `server` if given.
fn write_standby_plan(env: &Env, primary: &PostgresServer, target: &Path, server: Option<u16>) -> PathBuf {
    let server = server.map_or(String::new(), |p| format!("      server: postgres://postgres@127.0.0.1:{p}\n"));
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  db:\n    rpo: 5m\n    rto: 1h\n\
         sources:\n  - name: db\n    class: db\n    url: pgbase://postgres@127.0.0.1:{}\n    schedule: \"0 1 * * *\"\n\
         \x20   wal_archive:\n      archive_timeout: 5m\n    standby:\n      target: {}\n{server}\
         daemon:\n  state: {}\n",
        env.repo,
        env.path("pw").display(),
        primary.port(),
        target.display(),
        env.path("state.db").display()
    );
    let plan = env.path("plan.yaml");
    fs::write(&plan, text).unwrap();
    plan
}

/// An empty directory for the standby's data directory, the tests' user's.
fn standby_dir(env: &Env) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(user) = env.user {
        assert!(Command::new("chown").args([user]).arg(dir.path()).status().unwrap().success());
    }
    dir
}

/// Where the WAL after segment `seg` (a 16 MiB segment's name) starts.
fn end_of(seg: &str) -> String {
    let log = u64::from_str_radix(&seg[8..16], 16).unwrap();
    let n = u64::from_str_radix(&seg[16..24], 16).unwrap();
    let next = (log * 256 + n + 1) * (16 << 20);
    format!("{:X}/{:X}", next >> 32, next as u32)
}

/// Wait until the standby has replayed through segment `seg`.
fn wait_replayed(standby: &PostgresServer, seg: &str) {
    let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn", end_of(seg));
    let got = standby.wait_for("postgres", &sql, "t");
    assert_eq!(got, "t", "replayed {seg}: {}", standby.log().lines().rev().take(8).collect::<Vec<_>>().join("\n"));
}

fn status(env: &Env, plan: &Path) -> serde_json::Value {
    env.json(&["standby", "status", "--plan", plan.to_str().unwrap()])[0].clone()
}

fn notes(pg: &PostgresServer) -> String {
    pg.psql("postgres", "SELECT string_agg(note, ',' ORDER BY id) FROM t")
}

/// Until `done` holds (a minute at most).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The standby made (by the daemon, or by `standby refresh`), started
/// beside the primary; the plan naming its server.
fn made_and_started(env: &Env, primary: &PostgresServer, by_daemon: bool) -> (PostgresServer, PathBuf) {
    let dir = standby_dir(env);
    let target = dir.path().join("data");
    let plan = write_standby_plan(env, primary, &target, None);
    if by_daemon {
        // Its first backup done and the standby made, it stops: the test's own commits stay unarchived till it says.
        let d = start_daemon(env, &plan, None);
        wait_jobs(&d, "the first base backup", |j| j.iter().any(|j| j["kind"] == "backup" && j["status"] == "succeeded"));
        wait_until("the daemon makes the standby", || target.join("standby.signal").exists());
        let audit = env.ok(&["audit", "--state", env.path("state.db").to_str().unwrap()]);
        assert!(audit.lines().any(|l| l.contains("standby refresh") && l.contains("db") && l.contains("succeeded")), "{audit}");
    } else {
        let said = env.ok(&["standby", "refresh", "db", "--plan", plan.to_str().unwrap()]);
        assert!(said.starts_with(&format!("made the standby of db in {} from base backup ", target.display())), "{said}");
    }
    assert!(target.join("standby.signal").exists());
    let auto = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(" pg wal-fetch ") && auto.contains(" %f %p'") && auto.contains("recovery_target_timeline = 'latest'"), "{auto}");
    let again = env.ok(&["standby", "refresh", "db", "--plan", plan.to_str().unwrap()]);
    assert_eq!(
        again,
        format!(
            "the standby of db in {} is made already; the PostgreSQL server on it keeps it current from the WAL archive\n",
            target.display()
        )
    );
    let standby = PostgresServer::adopt(dir);
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    let plan = write_standby_plan(env, primary, &target, Some(standby.port()));
    (standby, plan)
}

#[test]
fn a_standby_follows_the_wal_archive_and_failover_promotes_it_with_every_archived_commit() {
    let env = postgres_env();
    let pg = archiving_server(&env);
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, note text)");
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'before base')");
    env.ok(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);
    let (standby, plan) = made_and_started(&env, &pg, true);
    // A commit after the daemon's base backup, archived while the standby starts.
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'before standby')");
    let first = switch_and_archive(&pg);

    // It replays what was archived before it started: lag 0.
    wait_replayed(&standby, &first);
    assert_eq!(notes(&standby), "before base,before standby");
    let s = status(&env, &plan);
    assert_eq!(
        (s["lag_seconds"].as_f64(), s["waiting_segments"].as_u64(), s["gap_segments"].as_u64()),
        (Some(0.0), Some(0), Some(0)),
        "{s}"
    );

    // Paused, it falls behind a segment holding a commit; resumed, it is back at 0.
    for (id, note) in [(3, "while paused"), (4, "while paused again")] {
        standby.psql("postgres", "SELECT pg_wal_replay_pause()");
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({id}, '{note}')"));
        let seg = switch_and_archive(&pg);
        let s = status(&env, &plan);
        let lag = s["lag_seconds"].as_f64().unwrap();
        assert!(lag > 0.0 && lag < 120.0, "behind by the commit's age: {s}");
        assert_eq!((s["waiting_segments"].as_u64(), s["in_recovery"].as_bool()), (Some(1), Some(true)), "{s}");
        standby.psql("postgres", "SELECT pg_wal_replay_resume()");
        wait_replayed(&standby, &seg);
        let s = status(&env, &plan);
        assert_eq!((s["lag_seconds"].as_f64(), s["waiting_segments"].as_u64()), (Some(0.0), Some(0)), "{s}");
    }

    // The daemon (its state says the first backup ran: none now) exports the same lag, and shows it.
    let d = start_daemon(&env, &plan, None);
    let metric = "standby_lag_seconds{source=\"db\",class=\"db\"} ";
    let exported = || {
        let (_, text) = http(d.port, "GET", "/metrics", None);
        text.lines().find_map(|l| l.strip_prefix(metric)?.trim().parse::<f64>().ok())
    };
    wait_until("the daemon exports the standby's lag", || exported().is_some());
    assert_eq!(exported(), Some(0.0), "replayed to the archive's end");
    let (_, page) = http(d.port, "GET", "/", None);
    let row = format!("<tr data-standby=\"db\"><td>db</td><td>{}</td><td>0.00 s</td><td>0</td></tr>", standby.dir().join("data").display());
    assert!(page.contains(&row), "{row} in {page}");
    assert_eq!(jobs(&d).iter().filter(|j| j["kind"] == "backup").count(), 1, "no backup but the first daemon's");
    drop(d);

    // A commit the archive never got: the promoted standby lacks exactly it.
    pg.psql("postgres", "INSERT INTO t VALUES (5, 'never archived')");
    let said = env.ok(&["failover", "db", "--plan", plan.to_str().unwrap()]);
    assert!(said.starts_with("promoted the standby of db in "), "{said}");
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(notes(&standby), "before base,before standby,while paused,while paused again");
    standby.psql("postgres", "INSERT INTO t VALUES (5, 'written on the new primary')");
    let recorded = &status(&env, &plan)["failovers"];
    assert_eq!(recorded.as_array().map(Vec::len), Some(1), "{recorded}");
    let f = &recorded[0];
    assert_eq!((&f["source"], &f["forced"], &f["gap_segments"]), (&"db".into(), &false.into(), &0.into()), "{f}");
    assert_eq!(f["lsn"], f["archive_end_lsn"], "{f}");
    assert!(f["seconds"].as_f64().is_some_and(|s| s > 0.0), "{f}");
    // Promoted, it is no standby to promote again.
    let err = env.fails(&["failover", "db", "--plan", plan.to_str().unwrap()], 1);
    assert_eq!(err, "tresor: error: the standby of db is not in recovery: it was promoted already\n");
}

#[test]
fn failover_refuses_a_standby_stuck_before_a_wal_gap_unless_forced() {
    let env = postgres_env();
    let pg = archiving_server(&env);
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, note text)");
    env.ok(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);
    let mut segs = Vec::new();
    for (id, note) in [(1, "before the gap"), (2, "in the gap"), (3, "after the gap")] {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({id}, '{note}')"));
        segs.push(switch_and_archive(&pg));
    }
    // The segment holding the second commit lost from the archive.
    let all = env.json(&["snapshots", "--all"]);
    let lost = all.as_array().unwrap().iter().find(|s| s["source"]["consistency"]["file"] == segs[1].as_str()).unwrap();
    env.ok(&["forget", lost["id"].as_str().unwrap()]);

    let (standby, plan) = made_and_started(&env, &pg, false);
    wait_replayed(&standby, &segs[0]);
    assert_eq!(notes(&standby), "before the gap");
    // Stuck before the gap: the segment after it waits, and the lag says so.
    let s = status(&env, &plan);
    assert_eq!((s["gap_segments"].as_u64(), s["waiting_segments"].as_u64()), (Some(1), Some(1)), "{s}");
    assert!(s["lag_seconds"].as_f64().unwrap() > 0.0, "{s}");

    let err = env.fails(&["failover", "db", "--plan", plan.to_str().unwrap()], 1);
    assert_eq!(
        err,
        format!(
            "tresor: error: the WAL archive of db misses 1 segment(s) after {}: its standby cannot replay past them; \
             give --force to promote it without the commits after the gap\n",
            segs[0]
        )
    );
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t", "refused: still a standby");
    let said = env.ok(&["failover", "db", "--plan", plan.to_str().unwrap(), "--force"]);
    assert!(said.starts_with("promoted the standby of db in "), "{said}");
    assert_eq!(notes(&standby), "before the gap");
    let f = &status(&env, &plan)["failovers"][0];
    assert_eq!((&f["forced"], &f["gap_segments"]), (&true.into(), &1.into()), "{f}");
}

#[test]
fn plan_check_refuses_a_standby_of_a_source_other_than_pgbase() {
    let env = Env::new();
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  c:\n    rpo: 1d\n    rto: 1h\n\
         sources:\n  - name: files\n    class: c\n    url: {}\n    schedule: \"@daily\"\n    standby:\n      target: {}\n",
        env.repo,
        env.path("pw").display(),
        env.path("data").display(),
        env.path("copy").display()
    );
    fs::write(&plan, text).unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let p = plan.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{p}:6: warning: class c has no off-site copy (offsite: REPOSITORY)\n\
             {p}:6: warning: class c has no retention: every snapshot is kept forever\n\
             {p}:14: error: source files: standby: is for pgbase:// sources (so far), not a path\n\
             {p}: 1 sources, 1 classes: 1 errors, 2 warnings\n"
        )
    );
}
