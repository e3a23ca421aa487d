//! Warm standbys against a real PostgreSQL 15 (issue 15 item 4): a primary
//! archiving through `tresor pg wal-push`, a standby made by `tresor standby
//! refresh` that a second server keeps replaying through `tresor pg
//! wal-fetch`, its lag falling back to zero after each archived segment, and
//! `tresor failover` promoting it with exactly the commits the archive holds,
//! refusing an archive with a gap unless forced. Directory and Redis
//! standbys refreshed from the newest snapshot (only what changed written, a
//! killed refresh completed by the next), their lag growing when the source
//! has no new snapshot, their failover, and the daemon's standby jobs
//! backing off to the RPO.

use serde_json::json;
use tresor_testkit::{PostgresServer, RedisServer};

use std::time::{Duration, Instant};

use super::daemon::{count, http, jobs, set_clock, start_daemon, wait_jobs};
use super::k8s::{Cluster, names};
use super::pitr::{archiving_server, postgres_env, switch_and_archive};
use super::volumes::{Running, pod_ends, pod_of};
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
        // A standby job at start (the test's base backup is there), and one after the daemon's backup.
        let made = wait_jobs(&d, "the standby jobs", |j| count(j, "db", "standby", "succeeded") == 2);
        let triggers: Vec<_> = made.iter().filter(|j| j["kind"] == "standby").map(|j| j["trigger"].as_str().unwrap()).collect();
        assert_eq!(triggers.len(), 2, "{made:?}");
        assert!(triggers.contains(&"first") && triggers.contains(&"backup"), "{triggers:?}");
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
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
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
    // The segment holding the second commit lost from the archive, as
    // storage loses an object (forget refuses to remove one a base backup needs).
    let all = env.json(&["snapshots", "--all"]);
    let lost = all.as_array().unwrap().iter().find(|s| s["source"]["consistency"]["file"] == segs[1].as_str()).unwrap();
    fs::remove_file(env.path("repo").join("snapshots").join(lost["id"].as_str().unwrap())).unwrap();

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
fn plan_check_refuses_a_standby_of_a_source_that_has_none() {
    let env = Env::new();
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  c:\n    rpo: 1d\n    rto: 1h\n\
         sources:\n  - name: dump\n    class: c\n    url: postgres://postgres@db/shop\n    schedule: \"@daily\"\n    standby:\n      target: {}\n\
         \x20 - name: cache\n    class: c\n    url: redis://cache:6379\n    schedule: \"@daily\"\n    standby:\n      target: {}\n",
        env.repo,
        env.path("pw").display(),
        env.path("copy").display(),
        env.path("copy").display()
    );
    fs::write(&plan, text).unwrap();
    check_refuses(
        &env,
        &plan,
        2,
        &[
            (14, "source dump: standby: is for pgbase://, redis://, pvc:// and path sources, not postgres://"),
            (20, "source cache: the standby of a redis:// source is a Redis instance: target: redis://HOST:PORT"),
        ],
    );
}

/// `plan check` of a plan with class c (no off-site copy, no retention) and
/// `sources` sources: exit 1, and these errors (line, what).
fn check_refuses(env: &Env, plan: &Path, sources: usize, errors: &[(u32, &str)]) {
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    let p = plan.display();
    let mut want = format!(
        "{p}:6: warning: class c has no off-site copy (offsite: REPOSITORY)\n{p}:6: warning: class c has no retention: every snapshot is kept forever\n"
    );
    errors.iter().for_each(|(line, e)| want += &format!("{p}:{line}: error: {e}\n"));
    let n = errors.len();
    want += &format!("{p}: {sources} sources, 1 class: {n} error{}, 2 warnings\n", if n == 1 { "" } else { "s" });
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert_eq!(out.status.code(), Some(1));
}

/// A plan whose source `name` (at `url`, class c with this RPO) keeps a standby at `target`.
fn write_copy_plan(env: &Env, name: &str, url: &str, target: &str, rpo: &str) -> PathBuf {
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  c:\n    rpo: {rpo}\n    rto: 1h\n\
         sources:\n  - name: {name}\n    class: c\n    url: {url}\n    schedule: \"*/5 * * * *\"\n    standby:\n      target: {target}\n\
         daemon:\n  state: {}\n  retry_backoff: 1m\n",
        env.repo,
        env.path("pw").display(),
        env.path("state.db").display()
    );
    let plan = env.path("plan.yaml");
    fs::write(&plan, text).unwrap();
    plan
}

/// A source directory of `files` (name, content) backed up as source `files`; the snapshot's id.
fn back_up(env: &Env, src: &Path, files: &[(impl AsRef<Path>, Vec<u8>)]) -> String {
    for (name, content) in files {
        let path = src.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let out = env.json(&["backup", src.to_str().unwrap(), "--tag", "source=files"]);
    out["snapshot_id"].as_str().unwrap().to_string()
}

/// A directory source `files` with its standby in `standby/files`: the plan, the source, the standby.
fn directory_standby(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    env.ok(&["init"]);
    let (src, standby) = (env.path("data"), env.path("standby").join("files"));
    fs::create_dir_all(env.path("standby")).unwrap();
    let plan = write_copy_plan(env, "files", src.to_str().unwrap(), standby.to_str().unwrap(), "1h");
    (plan, src, standby)
}

/// Inode and status-change time: a file rewritten, or its metadata set, changes them.
fn touched(path: &Path) -> (u64, i64, i64) {
    let md = fs::metadata(path).unwrap();
    (md.ino(), md.ctime(), md.ctime_nsec())
}

#[test]
fn a_directory_standby_is_refreshed_with_only_what_changed_and_holds_the_snapshot_byte_for_byte() {
    let env = Env::new();
    let (plan, src, standby) = directory_standby(&env);
    let plan_arg = plan.to_str().unwrap();
    let first = back_up(
        &env,
        &src,
        &[
            ("a.txt", b"alpha".to_vec()),
            ("b.txt", b"beta".to_vec()),
            ("sub/c.txt", b"gamma".to_vec()),
            ("big.bin", random_bytes(3 << 20, 1)),
        ],
    );
    let said = env.ok(&["standby", "refresh", "files", "--plan", plan_arg]);
    assert_eq!(
        said,
        format!(
            "refreshed the standby of files in {} to snapshot {}: 4 files written, 0 left as they were, 0 removed\n",
            standby.display(),
            &first[..8]
        )
    );
    assert_eq!(inventory(&standby), inventory(&src));
    let kept = ["a.txt", "big.bin"].map(|f| touched(&standby.join(f)));

    // One file changed, one added, one removed.
    fs::remove_file(src.join("sub/c.txt")).unwrap();
    let second = back_up(&env, &src, &[("b.txt", b"beta, longer now".to_vec()), ("new.txt", b"delta".to_vec())]);
    let s = status(&env, &plan);
    assert_eq!(
        (&s["kind"], &s["snapshot"], s["waiting_snapshots"].as_u64()),
        (&"directory".into(), &first.as_str().into(), Some(1)),
        "{s}"
    );
    let r = env.json(&["standby", "refresh", "files", "--plan", plan_arg]);
    let sum = &r["summary"];
    assert_eq!(
        (sum["files_restored"].as_u64(), sum["files_skipped"].as_u64(), sum["files_deleted"].as_u64(), &r["snapshot_id"]),
        (Some(2), Some(2), Some(1), &second.as_str().into()),
        "{r}"
    );
    assert_eq!(inventory(&standby), inventory(&src), "byte for byte, times and modes too");
    assert_eq!(["a.txt", "big.bin"].map(|f| touched(&standby.join(f))), kept, "unchanged files are not rewritten");

    let again = env.ok(&["standby", "refresh", "files", "--plan", plan_arg]);
    assert_eq!(again, format!("the standby of files in {} holds the newest snapshot {} already\n", standby.display(), &second[..8]));
    let s = status(&env, &plan);
    assert_eq!(
        (&s["snapshot"], s["waiting_snapshots"].as_u64(), s["lag_seconds"].as_f64()),
        (&second.as_str().into(), Some(0), Some(0.0)),
        "{s}"
    );
}

#[test]
fn a_refresh_killed_midway_is_completed_by_the_next() {
    let env = Env::new();
    let (plan, src, standby) = directory_standby(&env);
    let plan_arg = plan.to_str().unwrap();
    let files = |seed: u64| (0..6).map(|i| (format!("f{i}.bin"), random_bytes(2 << 20, seed + i))).collect::<Vec<_>>();
    let first = back_up(&env, &src, &files(10));
    env.ok(&["standby", "refresh", "files", "--plan", plan_arg]);
    let before = inventory(&standby);
    let second = back_up(&env, &src, &files(20));

    // Slowed to 1 MiB/s for 12 MiB, it is killed once it has begun to write.
    let mut child = env
        .cmd(&["standby", "refresh", "files", "--plan", plan_arg])
        .env("TRESOR_LIMIT_DOWNLOAD", "1M")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let marker = env.path("standby").join(".files.tresor-standby.json");
    wait_until("the refresh begins to write", || {
        fs::read_to_string(&marker).is_ok_and(|m| m.contains("refreshing")) && inventory(&standby) != before
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert_ne!(inventory(&standby), inventory(&src), "killed before it was done");
    let s = status(&env, &plan);
    assert_eq!(
        (&s["snapshot"], &s["refreshing"], s["waiting_snapshots"].as_u64()),
        (&first.as_str().into(), &second.as_str().into(), Some(1)),
        "{s}"
    );

    let r = env.json(&["standby", "refresh", "files", "--plan", plan_arg]);
    assert_eq!((&r["snapshot_id"], &r["current"]), (&second.as_str().into(), &false.into()), "{r}");
    assert_eq!(inventory(&standby), inventory(&src), "the next refresh completes it");
    let s = status(&env, &plan);
    assert_eq!(
        (&s["snapshot"], &s["refreshing"], s["waiting_snapshots"].as_u64()),
        (&second.as_str().into(), &serde_json::Value::Null, Some(0)),
        "{s}"
    );
}

/// Each key of a Redis instance with its value (strings and hashes).
fn redis_keys(r: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = r.cli(&["--scan"]).lines().map(String::from).collect();
    keys.sort();
    keys.iter()
        .map(|k| format!("{k}={}", if r.cli(&["TYPE", k]) == "hash" { r.cli(&["HGETALL", k]) } else { r.cli(&["GET", k]) }))
        .collect()
}

#[test]
fn a_redis_standby_holds_exactly_the_snapshots_keys_and_failover_makes_it_current() {
    let env = Env::new();
    env.ok(&["init"]);
    let (source, spare) = (RedisServer::start(&[]), RedisServer::start(&[]));
    source.script("SET a 1\nSET b 2\nHSET h f v\n");
    spare.script("SET junk x\nSET a stale\n");
    let plan = write_copy_plan(&env, "cache", &source.url(), &spare.url(), "1h");
    let plan_arg = plan.to_str().unwrap();
    let backup = |env: &Env| env.json(&["backup", &source.url(), "--tag", "source=cache"])["snapshot_id"].as_str().unwrap().to_string();
    let first = backup(&env);
    let said = env.ok(&["standby", "refresh", "cache", "--plan", plan_arg]);
    assert!(said.starts_with(&format!("reloaded the standby of cache at {} from snapshot {}: ", spare.url(), &first[..8])), "{said}");
    assert_eq!(redis_keys(&spare), ["a=1", "b=2", "h=f\nv"]);

    source.script("SET c 3\nDEL a\n");
    let second = backup(&env);
    let s = status(&env, &plan);
    assert_eq!((&s["kind"], &s["snapshot"], s["waiting_snapshots"].as_u64()), (&"redis".into(), &first.as_str().into(), Some(1)), "{s}");
    assert!(s["lag_seconds"].as_f64().unwrap() > 0.0, "the second snapshot waits: {s}");

    let said = env.ok(&["failover", "cache", "--plan", plan_arg]);
    assert!(said.starts_with(&format!("made the standby of cache at {} current in ", spare.url())), "{said}");
    assert!(said.ends_with(&format!(" s: it holds the newest snapshot {}; recorded in the evidence log\n", &second[..8])), "{said}");
    assert_eq!(redis_keys(&spare), ["b=2", "c=3", "h=f\nv"]);
    let s = status(&env, &plan);
    assert_eq!((s["lag_seconds"].as_f64(), s["waiting_snapshots"].as_u64()), (Some(0.0), Some(0)), "{s}");
    let f = &s["failovers"];
    assert_eq!(f.as_array().map(Vec::len), Some(1), "{f}");
    assert_eq!((&f[0]["source"], &f[0]["snapshot"], &f[0]["forced"]), (&"cache".into(), &second.as_str().into(), &false.into()), "{f}");
    assert!(f[0]["lsn"].is_null() && f[0]["seconds"].as_f64().is_some_and(|x| x > 0.0), "{f}");
}

#[test]
fn a_directory_failover_makes_the_standby_current_and_is_recorded() {
    let env = Env::new();
    let (plan, src, standby) = directory_standby(&env);
    let plan_arg = plan.to_str().unwrap();
    back_up(&env, &src, &[("a.txt", b"one".to_vec())]);
    env.ok(&["standby", "refresh", "files", "--plan", plan_arg]);
    let newest = back_up(&env, &src, &[("a.txt", b"two, newer".to_vec())]);
    let f = env.json(&["failover", "files", "--plan", plan_arg]);
    assert_eq!((&f["source"], &f["snapshot"], &f["gap_segments"]), (&"files".into(), &newest.as_str().into(), &0.into()), "{f}");
    assert_eq!(inventory(&standby), inventory(&src));
    let recorded = &status(&env, &plan)["failovers"];
    assert_eq!(recorded, &serde_json::json!([f]), "the evidence log holds the entry as printed");
}

/// Seconds `at` plus `secs`, as the clock file takes it.
fn plus(at: &str, secs: i64) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(at).unwrap() + chrono::Duration::seconds(secs);
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[test]
fn a_standby_whose_source_has_no_new_snapshot_lags_more_and_more_and_is_alerted() {
    let env = Env::new();
    let (plan, src, _) = directory_standby(&env);
    let plan_arg = plan.to_str().unwrap();
    let id = back_up(&env, &src, &[("a.txt", b"the last backup".to_vec())]);
    env.ok(&["standby", "refresh", "files", "--plan", plan_arg]);
    let taken = env.json(&["snapshots"])[0]["time"].as_str().unwrap().to_string();
    // The source is gone: no new snapshot comes.
    fs::remove_dir_all(&src).unwrap();
    let clock = env.path("clock");
    let lag_at = |secs: i64| {
        set_clock(&clock, &plus(&taken, secs));
        let out = env.cmd(&["standby", "status", "--plan", plan_arg, "--json"]).env("TRESOR_CLOCK_FILE", &clock).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v[0]["snapshot"].as_str() == Some(id.as_str())).then(|| v[0]["lag_seconds"].as_f64()).flatten()
    };
    assert_eq!(lag_at(1800), Some(0.0), "within its RPO (1h) it holds the newest");
    assert_eq!(lag_at(5400), Some(5400.0), "past the RPO, the newest snapshot's age");
    assert_eq!(lag_at(9000), Some(9000.0), "and growing");

    // The daemon: its first backup fails, the standby stays stale, its lag exceeds the RPO StandbyLagging compares it to.
    set_clock(&clock, &plus(&taken, 3 * 3600));
    let d = start_daemon(&env, &plan, Some(&clock));
    let j = wait_jobs(&d, "the failed backup and the standby job", |j| {
        count(j, "files", "backup", "failed") == 1 && count(j, "files", "standby", "succeeded") == 1
    });
    assert_eq!(j.iter().filter(|j| j["kind"] == "standby").map(|j| &j["trigger"]).collect::<Vec<_>>(), ["first"], "{j:?}");
    let metric = "standby_lag_seconds{source=\"files\",class=\"c\"} ";
    let exported = || {
        let (_, text) = http(d.port, "GET", "/metrics", None);
        text.lines().find_map(|l| l.strip_prefix(metric)?.trim().parse::<f64>().ok())
    };
    wait_until("the daemon exports the standby's lag", || exported().is_some());
    assert_eq!(exported(), Some(10800.0));
    let (_, text) = http(d.port, "GET", "/metrics", None);
    assert!(text.contains("backup_rpo_target_seconds{class=\"c\"} 3600\n"), "the alert's threshold: {text}");
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
    let row =
        format!("<tr data-standby=\"files\"><td>files</td><td>{}</td><td>3.0 h</td><td>0</td></tr>", env.path("standby/files").display());
    assert!(page.contains(&row), "{row} in {page}");
}

#[test]
fn the_daemons_standby_job_backs_off_doubling_up_to_the_rpo() {
    let env = Env::new();
    env.ok(&["init"]);
    let source = RedisServer::start(&[]);
    source.script("SET a 1\n");
    // Nothing listens where the standby should be.
    let dead = format!("redis://127.0.0.1:{}", tresor_testkit::net::free_port());
    let plan = write_copy_plan(&env, "cache", &source.url(), &dead, "5m");
    let clock = env.path("clock");
    let t0 = "2026-11-30T10:00:00Z";
    set_clock(&clock, t0);
    let d = start_daemon(&env, &plan, Some(&clock));
    let chain = |j: &[serde_json::Value]| -> Vec<serde_json::Value> {
        j.iter().filter(|j| j["kind"] == "standby" && j["trigger"] != "first" && j["status"] != "running").cloned().collect()
    };
    wait_jobs(&d, "the backup, then its standby job", |j| count(j, "cache", "backup", "succeeded") == 1 && chain(j).len() == 1);
    // Its scheduled backups fail from now on: no new snapshot starts a new chain of attempts.
    drop(source);
    // Each retry waits twice as long as the one before, at most the RPO (5m): 1m, 2m, 4m, 5m, 5m.
    let mut at = t0.to_string();
    for (n, wait) in [60, 120, 240, 300, 300].into_iter().enumerate() {
        // The daemon has taken the job's end in (and set its retry) once nothing runs.
        wait_until("the daemon takes the attempt in", || http(d.port, "GET", "/metrics", None).1.contains("\nbackup_jobs_running 0\n"));
        let j = chain(&jobs(&d));
        assert_eq!(j.len(), n + 1, "no attempt before its time: {j:?}");
        at = plus(&at, wait);
        set_clock(&clock, &at);
        wait_jobs(&d, "the next attempt", |j| chain(j).len() == n + 2);
    }
    let j = chain(&jobs(&d));
    let attempts: Vec<_> =
        j.iter().map(|j| (j["attempt"].as_u64().unwrap(), j["trigger"].as_str().unwrap(), j["reason"].as_str().unwrap())).collect();
    assert_eq!(
        attempts,
        [(0, "backup", "source_unreachable")].into_iter().chain((1..6).map(|n| (n, "retry", "source_unreachable"))).collect::<Vec<_>>()
    );
    let waits: Vec<i64> = j
        .windows(2)
        .map(|w| {
            let t = |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
            (t(&w[1]["scheduled_at"]) - t(&w[0]["ended_at"])).num_seconds()
        })
        .collect();
    assert_eq!(waits, [60, 120, 240, 300, 300], "scheduled after each failure, by the job history");
}

/// A claim `spare` in `shop` for a standby: made by the cluster's
/// administrator (tresor never makes one).
const SPARE_CLAIM: &str = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "spare", "namespace": "shop"},
  "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}"#;

/// A directory source `files` whose standby is the claim `target` names, in the fake cluster.
fn claim_standby(target: &str) -> (Env, Cluster, PathBuf, PathBuf) {
    let mut env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start();
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], SPARE_CLAIM);
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    let src = env.path("data");
    let plan = write_copy_plan(&env, "files", src.to_str().unwrap(), target, "1h");
    (env, c, plan, src)
}

const SPARE: &str = "pvc://shop/spare?secret=repo-creds";

#[test]
fn a_claim_standby_is_refreshed_by_a_job_in_its_namespace_and_adopted_when_killed() {
    let (env, c, plan, src) = claim_standby(SPARE);
    // A pvc:// source with pod settings: its standby's Job runs as its backups do.
    let pvc = "    url: pvc://shop/data?secret=repo-creds\n    pod: {run_as_user: 999, fs_group: 999}\n";
    fs::write(&plan, fs::read_to_string(&plan).unwrap().replace(&format!("    url: {}\n", src.display()), pvc)).unwrap();
    let plan_arg = plan.to_str().unwrap();
    let first = back_up(&env, &src, &[("a.txt", b"alpha".to_vec())]);
    let job = format!("tresor-standby-spare-{}", &first[..8]);
    let refresh = ["standby", "refresh", "files", "--plan", plan_arg];
    let mut killed = Running::start(&env, &c, &refresh);
    let pod = pod_of(&c, &job);
    let made = c.server.object("batch", "jobs", Some("shop"), &job).unwrap();
    assert_eq!(
        (&made["metadata"]["labels"], &made["spec"]["ttlSecondsAfterFinished"]),
        (
            &json!({"app.kubernetes.io/managed-by": "tresor", "tresor.dev/source": "files.standby", "tresor.dev/run": &first[..8]}),
            &json!(3600)
        )
    );
    let spec = &made["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["args"],
        json!(["restore", format!("{first}:{}", src.display()), "--target", "/data", "--overwrite", "if-changed", "--delete"])
    );
    assert_eq!(spec["volumes"][0], json!({"name": "data", "persistentVolumeClaim": {"claimName": "spare", "readOnly": false}}));
    assert_eq!(spec["containers"][0]["volumeMounts"][0], json!({"name": "data", "mountPath": "/data", "readOnly": false}));
    assert_eq!(spec["containers"][0]["envFrom"], json!([{"secretRef": {"name": "repo-creds"}}]));
    assert_eq!(
        (&spec["securityContext"], &spec["containers"][0]["securityContext"]),
        (
            &json!({"runAsNonRoot": true, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}}),
            &json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
        ),
        "`shop` enforces restricted: that the job controller made its pod is admission's yes"
    );
    assert!(spec["affinity"].is_null(), "no pod mounts the claim: not pinned");

    // Killed while it waits: the next refresh adopts the Job rather than making a second.
    unsafe { libc::kill(killed.0.id() as i32, libc::SIGKILL) };
    killed.0.wait().unwrap();
    let s = status(&env, &plan);
    assert_eq!((&s["kind"], &s["snapshot"], &s["refreshing"]), (&"claim".into(), &json!(null), &first.as_str().into()), "{s}");
    let mut retry = Running::start(&env, &c, &refresh);
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(retry.0.stderr.as_mut().unwrap()), &mut said).unwrap();
    assert_eq!(said, format!("tresor: adopting Job shop/{job}, left unfinished by an earlier refresh\n"));
    assert_eq!(names(&c, "jobs"), [format!("job.batch/{job}")]);
    pod_ends(&c, &pod, "Succeeded");
    let (code, stdout, stderr) = retry.end();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("refreshed the standby of files in {SPARE} to snapshot {} through Job/{job}\n", &first[..8]));
    assert!(names(&c, "jobs").is_empty() && names(&c, "pods").is_empty(), "the Job is removed, its pod with it");
    let s = status(&env, &plan);
    assert_eq!(
        (&s["snapshot"], &s["refreshing"], s["waiting_snapshots"].as_u64(), s["lag_seconds"].as_f64()),
        (&first.as_str().into(), &json!(null), Some(0), Some(0.0)),
        "{s}"
    );

    // It holds the newest: no Job (one would be waited for, and nobody ends its pod).
    let again = env.ok(&refresh);
    assert_eq!(again, format!("the standby of files in {SPARE} holds the newest snapshot {} already\n", &first[..8]));
    assert!(names(&c, "jobs").is_empty());
}

#[test]
fn a_claim_failover_removes_the_job_of_an_older_snapshot_refreshes_to_the_newest_and_is_recorded() {
    let (env, c, plan, src) = claim_standby(SPARE);
    let plan_arg = plan.to_str().unwrap();
    let first = back_up(&env, &src, &[("a.txt", b"alpha".to_vec())]);
    let mut killed = Running::start(&env, &c, &["standby", "refresh", "files", "--plan", plan_arg]);
    let stale = format!("tresor-standby-spare-{}", &first[..8]);
    pod_of(&c, &stale);
    unsafe { libc::kill(killed.0.id() as i32, libc::SIGKILL) };
    killed.0.wait().unwrap();

    // A newer snapshot: the unfinished Job would write the older one over it, so it goes.
    let second = back_up(&env, &src, &[("a.txt", b"alpha, changed".to_vec())]);
    assert_eq!(status(&env, &plan)["waiting_snapshots"], 2);
    let failover = Running::start(&env, &c, &["failover", "files", "--plan", plan_arg, "--json"]);
    let job = format!("tresor-standby-spare-{}", &second[..8]);
    let pod = pod_of(&c, &job);
    assert_eq!(names(&c, "jobs"), [format!("job.batch/{job}")], "the older snapshot's Job is gone");
    pod_ends(&c, &pod, "Succeeded");
    let (code, stdout, stderr) = failover.end();
    assert_eq!(code, Some(0), "{stderr}");
    let f: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((&f["source"], &f["snapshot"], &f["forced"]), (&"files".into(), &second.as_str().into(), &false.into()), "{f}");
    assert!(names(&c, "jobs").is_empty() && names(&c, "pods").is_empty(), "both Jobs removed, with their pods");
    let s = status(&env, &plan);
    assert_eq!((&s["snapshot"], s["waiting_snapshots"].as_u64()), (&second.as_str().into(), Some(0)), "{s}");
    assert_eq!(s["failovers"], json!([f]), "the evidence log holds the entry as printed");
}

#[test]
fn a_claim_standby_that_does_not_exist_is_an_error_naming_it_and_is_not_made() {
    let (env, c, plan, src) = claim_standby("pvc://shop/absent?secret=repo-creds");
    back_up(&env, &src, &[("a.txt", b"alpha".to_vec())]);
    let err = env.fails(&["standby", "refresh", "files", "--plan", plan.to_str().unwrap()], 1);
    assert_eq!(
        err,
        "tresor: error: k8s://: the standby claim shop/absent does not exist (tresor keeps a claim current, it never makes one)\n"
    );
    assert_eq!(names(&c, "persistentvolumeclaims"), ["persistentvolumeclaim/data", "persistentvolumeclaim/spare"]);
    assert!(names(&c, "jobs").is_empty());
}

#[test]
fn plan_check_accepts_a_claim_standby_and_refuses_a_malformed_one() {
    let env = Env::new();
    let plan = env.path("plan.yaml");
    let source = |name: &str, url: &str, target: &str| {
        format!("  - name: {name}\n    class: c\n    url: {url}\n    schedule: \"@daily\"\n    standby:\n      target: \"{target}\"\n")
    };
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  c:\n    rpo: 1d\n    rto: 1h\nsources:\n{}{}{}{}{}",
        env.repo,
        env.path("pw").display(),
        source("good", "pvc://shop/data?secret=s", "pvc://shop/spare?secret=s&cluster=k8s://dr&image=reg/tresor:1"),
        source("wild", "/srv/data", "pvc://shop/*?secret=s"),
        source("bare", "pvc://shop/data?secret=s", "pvc://shop/spare"),
        source("odd", "/srv/data", "pvc://shop/spare?secret=s&selector=a"),
        source("cache", "/srv/data", "redis://cache:6379"),
    );
    fs::write(&plan, text).unwrap();
    // The first source's claim is accepted.
    check_refuses(
        &env,
        &plan,
        5,
        &[
            (
                20,
                "source wild: a standby is one claim, pvc://NAMESPACE/CLAIM?secret=NAME[&cluster=k8s://CONTEXT][&image=IMAGE], not pvc://shop/*?secret=s",
            ),
            (26, "source bare: the standby claim shop/spare names no secret=NAME (the Secret with the repository's settings)"),
            (32, "source odd: the standby claim shop/spare: unknown setting \"selector\" (known: secret, cluster, image)"),
            (
                38,
                "source cache: the standby of a path or pvc:// source is a directory or a claim: target: /PATH or pvc://NAMESPACE/CLAIM?secret=NAME",
            ),
        ],
    );
}

#[test]
fn the_daemons_standby_job_refreshes_a_claim_through_a_job() {
    let (env, c, plan, src) = claim_standby(SPARE);
    let id = back_up(&env, &src, &[("a.txt", b"alpha".to_vec())]);
    // The source is gone: the daemon's backups fail, its standby job at start is the only one.
    fs::remove_dir_all(&src).unwrap();
    let d = start_daemon(&env, &plan, None);
    pod_ends(&c, &pod_of(&c, &format!("tresor-standby-spare-{}", &id[..8])), "Succeeded");
    let j = wait_jobs(&d, "the standby job", |j| count(j, "files", "standby", "succeeded") == 1);
    assert_eq!(j.iter().filter(|j| j["kind"] == "standby").map(|j| &j["trigger"]).collect::<Vec<_>>(), ["first"], "{j:?}");
    assert_eq!(status(&env, &plan)["snapshot"], id.as_str());
    let metric = "standby_lag_seconds{source=\"files\",class=\"c\"} ";
    let exported = || {
        let (_, text) = http(d.port, "GET", "/metrics", None);
        text.lines().find_map(|l| l.strip_prefix(metric)?.trim().parse::<f64>().ok())
    };
    // Looked at every 15 s: once after the refresh, it holds the newest snapshot, within the RPO.
    wait_until("the daemon's standby lag falls to 0", || exported() == Some(0.0));
}
