//! PostgreSQL point-in-time recovery against a real PostgreSQL 15: WAL
//! archived by `tresor pg wal-push` as the server's archive_command,
//! restores that recover through `tresor pg wal-fetch`, and retention that
//! follows the WAL chain.

use std::path::Path;
use std::time::{Duration, Instant};

use tresor_testkit::PostgresServer;

use super::*;

/// The `postgres` user runs archive_command and restore_command, so (as
/// root) the repository is that user's, and so is every tresor run here.
pub(super) fn postgres_env() -> Env {
    let mut env = Env::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(env.dir.path()).status().unwrap();
        assert!(chown.success());
        env.user = Some("postgres");
    }
    env.ok(&["init"]);
    env
}

pub(super) fn archiving_server(env: &Env) -> PostgresServer {
    archiving_server_with(env, "")
}

/// An archiving server with `conf` added to its configuration.
pub(super) fn archiving_server_with(env: &Env, conf: &str) -> PostgresServer {
    let push = format!(
        "'{}' --repo '{}' --password-file '{}' --no-cache --quiet pg wal-push %p",
        shared_bin().display(),
        env.repo,
        env.path("pw").display()
    );
    PostgresServer::start_with(&format!("archive_mode = on\narchive_command = '{}'\nwal_level = replica\n{conf}", push.replace('\'', "''")))
}

/// Close the current segment and wait until the archiver has pushed it.
pub(super) fn switch_and_archive(pg: &PostgresServer) -> String {
    let seg = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let got = pg.wait_for("postgres", "SELECT last_archived_wal FROM pg_stat_archiver", &seg);
    assert_eq!(got, seg, "archived: {}", pg.log().lines().rev().take(8).collect::<Vec<_>>().join("\n"));
    seg
}

/// An archiving cluster with a table `t (id, note)`, and its base backup.
fn backed_up_cluster() -> (Env, PostgresServer) {
    let env = postgres_env();
    let pg = archiving_server(&env);
    pg.psql("postgres", "CREATE TABLE t (id int, note text)");
    env.ok(&["pg", "backup", &pg.cluster_url()]);
    (env, pg)
}

/// A copy that selects a cluster's base backup by its tag, as the daemon's
/// copy job selects a source's snapshots, takes the WAL that continues it
/// along (WAL carries no tags): a recovery from the copy replays to the
/// newest commit, as one from the original would.
#[test]
fn a_copy_of_a_base_backup_takes_its_wal_and_recovers_to_the_newest_commit() {
    let mut env = postgres_env();
    let pg = archiving_server(&env);
    pg.psql("postgres", "CREATE TABLE t (id int, note text)");
    env.ok(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'after the base backup')");
    switch_and_archive(&pg);
    let offsite = env.path("offsite").display().to_string();
    let pw = env.path("pw").display().to_string();
    env.ok(&["init", "-r", &offsite]);
    env.ok(&["copy", "--tag", "source=db", "--to", &offsite, "--to-password-file", &pw]);
    // The newest backup, as the README's copy --latest selects it: the WAL
    // archived after it is newer, and is no backup to count.
    let latest = env.path("latest").display().to_string();
    env.ok(&["init", "-r", &latest]);
    env.ok(&["copy", "--latest", "1", "--to", &latest, "--to-password-file", &pw]);
    for repo in [offsite, latest] {
        env.repo = repo;
        let recovered = restore_and_start(&env, &["--latest"]);
        assert_eq!(notes(&recovered), "after the base backup", "{}", env.repo);
    }
}

/// A directory for a restored cluster, the user's who runs tresor.
fn restore_dir(env: &Env) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(user) = env.user {
        assert!(Command::new("chown").args([user]).arg(dir.path()).status().unwrap().success());
    }
    dir
}

fn restore_args<'a>(data: &'a Path, point: &[&'a str]) -> Vec<&'a str> {
    // Beside the running cluster, the restored one must not archive into its chain.
    let mut args = vec!["pg", "restore", "--no-archive", "--target", data.to_str().unwrap()];
    args.extend_from_slice(point);
    args
}

/// Start the restored cluster and wait until it has left recovery.
fn start_restored(dir: tempfile::TempDir) -> PostgresServer {
    let pg = PostgresServer::adopt(dir);
    let state = pg.wait_for("postgres", "SELECT pg_is_in_recovery()", "f");
    assert_eq!(state, "f", "recovery ended: {}", pg.log().lines().rev().take(8).collect::<Vec<_>>().join("\n"));
    pg
}

fn restore_and_start(env: &Env, point: &[&str]) -> PostgresServer {
    let dir = restore_dir(env);
    let said = env.ok(&restore_args(&dir.path().join("data"), point));
    assert!(said.starts_with("restored base backup "), "{said}");
    start_restored(dir)
}

fn notes(pg: &PostgresServer) -> String {
    pg.psql("postgres", "SELECT string_agg(note, ',' ORDER BY id) FROM t")
}

fn wal_names(env: &Env) -> Vec<String> {
    let all = env.json(&["snapshots", "--all"]);
    let mut names: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["source"]["kind"] == "pg-wal")
        .map(|s| s["source"]["consistency"]["file"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn pitr_recovers_to_a_moment_between_two_transactions_and_retention_keeps_the_chain() {
    let env = postgres_env();
    let pg = archiving_server(&env);
    pg.psql("postgres", "CREATE TABLE t (id int, note text)");
    let out = env.json(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);
    assert_eq!(out["files_new"], 1, "{out}");
    let base = &env.json(&["snapshots"])[0];
    assert_eq!(base["source"]["kind"], "pg-base");
    let system_id = pg.psql("postgres", "SELECT system_identifier FROM pg_control_system()");
    assert_eq!(base["source"]["consistency"]["system_id"], system_id.as_str());
    assert!(base["source"]["consistency"]["start_wal"].as_str().is_some_and(|w| w.len() == 24), "{base}");

    pg.psql("postgres", "INSERT INTO t VALUES (1, 'early')");
    std::thread::sleep(Duration::from_millis(1200));
    let between = pg.psql("postgres", r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#);
    std::thread::sleep(Duration::from_millis(1200));
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'late')");
    switch_and_archive(&pg);
    assert!(!env.ok(&["snapshots"]).contains("pg-wal"), "WAL files stay out of the default listing");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1, "only the base backup is listed");

    let at = restore_and_start(&env, &["--time", &between]);
    assert_eq!(notes(&at), "early", "recovered to the moment between the two transactions");
    drop(at);
    let latest = restore_and_start(&env, &["--latest"]);
    assert_eq!(notes(&latest), "early,late");
    drop(latest);

    // A second base backup; more WAL; then keep only the newest base backup.
    pg.psql("postgres", "INSERT INTO t VALUES (3, 'after second base')");
    switch_and_archive(&pg);
    env.ok(&["pg", "backup", &pg.cluster_url(), "--tag", "source=db"]);
    pg.psql("postgres", "INSERT INTO t VALUES (4, 'newest')");
    switch_and_archive(&pg);
    let before = wal_names(&env);
    let newer = env.json(&["snapshots"])[1].clone();
    let start = newer["source"]["consistency"]["start_wal"].as_str().unwrap().to_string();
    assert!(before.first().unwrap() < &start, "WAL older than the second base backup exists: {before:?} vs {start}");
    // The plan's WAL group shows its files by name; the policy's group shows ids and times only.
    let dry = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
    let groups = dry["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{dry}");
    assert_eq!(groups[0]["remove"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(groups[0]["remove"][0].as_object().unwrap().keys().collect::<Vec<_>>(), ["id", "time"]);
    assert_eq!(groups[1]["group"], "pg-wal (no remaining base backup needs it)");
    let mut shown: Vec<&str> = groups[1]["remove"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    shown.sort();
    env.ok(&["forget", "--keep-last", "1", "--prune", "--max-unused", "0"]);
    let after = wal_names(&env);
    let expected: Vec<String> = before.iter().filter(|n| n.as_str() >= start.as_str() || n.ends_with(".history")).cloned().collect();
    assert_eq!(after, expected, "exactly the WAL before the remaining base backup is gone");
    let gone: Vec<String> = before.iter().filter(|n| !after.contains(n)).map(|n| format!("pg-wal/{system_id}/{n}")).collect();
    assert_eq!(shown, gone, "the dry run named the WAL files that went");
    let verified = env.ok(&["pg", "verify"]);
    assert!(verified.starts_with(&format!("cluster {system_id}: 1 base backups, {} WAL files\n", after.len())), "{verified}");
    let recovered = restore_and_start(&env, &["--latest"]);
    assert_eq!(notes(&recovered), "early,late,after second base,newest", "nothing the chain needs was pruned");

    // A base backup as a plan's source names it, then the report's RPO
    // accounting: the WAL archive's lag of that source.
    let out = env.json(&["backup", &format!("pgbase://postgres@127.0.0.1:{}", pg.port()), "--tag", "source=db"]);
    assert_eq!(out["files_new"], 1, "{out}");
    assert_eq!(env.json(&["snapshots", "--tag", "source=db"]).as_array().unwrap().last().unwrap()["source"]["kind"], "pg-base");
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses:\n  db:\n    rpo: 1h\n    rto: 1h\n\
         sources:\n  - name: db\n    class: db\n    url: pgbase://postgres@127.0.0.1:{}\n    schedule: \"@hourly\"\n\
         daemon:\n  state: {}\n",
        env.repo,
        env.path("pw").display(),
        pg.port(),
        env.path("state.db").display()
    );
    fs::write(&plan, text).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["report", "--plan", plan.to_str().unwrap(), "--format", "json"])).unwrap();
    let lag = report["classes"][0]["wal_archive_lag"].as_f64().expect("a lag for the base-backup source");
    assert!((0.0..600.0).contains(&lag), "the newest WAL file was archived moments ago: {lag}");
}

/// WAL the primary archives after `pg restore` planned the recovery (in a
/// disaster, the dying primary's last segments) is replayed: the
/// prefetcher looks for what the plan did not find, it does not answer
/// "not in the archive" from the plan. And a base backup of the recovered
/// cluster, which holds the first recovery's settings in its
/// postgresql.auto.conf, restores and starts: a restore takes them out.
#[test]
fn recovery_replays_wal_archived_after_the_restore_and_a_recovered_cluster_restores_again() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'before the restore')");
    // As psql prints it (`2026-12-07 20:24:10.2+00`), which --time takes.
    let between = pg.psql("postgres", "SELECT clock_timestamp()");
    assert!(between[between.len() - 3..].starts_with(['+', '-']), "an offset in hours: {between}");
    switch_and_archive(&pg);
    let dir = restore_dir(&env);
    let data = dir.path().join("data");
    env.ok(&restore_args(&data, &["--latest"]));
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'archived after the restore')");
    switch_and_archive(&pg);
    let recovered = start_restored(dir);
    assert_eq!(notes(&recovered), "before the restore,archived after the restore");
    let report = prefetch_report(&recovered);
    assert_eq!(report["fetched_by_fallback"], 0, "asked of the prefetcher, not fetched with an unlock: {report}");
    drop(recovered);

    let dir = restore_dir(&env);
    let at = restore_and_start(&env, &["--time", &between]);
    assert_eq!(notes(&at), "before the restore");
    let auto = std::fs::read_to_string(Path::new(&at.psql("postgres", "SHOW data_directory")).join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("recovery_target_time = "), "{auto}");
    // Restored with --no-archive, it archives nothing: the base backup is
    // saved, and fails its archive check.
    let out = env.run(&["pg", "backup", &at.cluster_url()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("archive_mode is off"), "{out:?}");
    let data = dir.path().join("data");
    env.ok(&restore_args(&data, &["--latest", "--prefetch", "0"]));
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("recovery_target_time = "), "{auto}");
    assert_eq!(notes(&start_restored(dir)), "before the restore");
}

/// A repository given relative to where `pg restore` ran is found by the
/// restore_command PostgreSQL runs in the data directory; a WAL command
/// that finds no repository says to check its storage, never to create
/// one (`tresor init` there would start an empty archive on a volume that
/// is only not mounted).
#[test]
fn restore_command_finds_a_relative_repository_and_a_missing_one_is_not_to_be_made() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'archived')");
    let seg = switch_and_archive(&pg);
    let dir = restore_dir(&env);
    let data = dir.path().join("data");
    let args = [&["--repo", "repo"][..], &restore_args(&data, &["--latest", "--prefetch", "0"])].concat();
    let out = env.cmd(&args).env_remove("TRESOR_REPOSITORY").current_dir(env.dir.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(notes(&start_restored(dir)), "archived");
    let unmounted = env.path("unmounted");
    let pgdata = pg.dir().join("data");
    // A copy of the segment: the server may recycle its own at any checkpoint.
    let wal = env.path(&seg);
    env.ok(&["pg", "wal-fetch", &seg, wal.to_str().unwrap(), "--pgdata", pgdata.to_str().unwrap(), "--prefetch", "0"]);
    // wal-push exits 10 as every command without its repository does;
    // wal-fetch 200, which stops the recovery instead of ending it.
    for (args, code) in [
        (vec!["pg", "wal-push", wal.to_str().unwrap()], 10),
        (vec!["pg", "wal-fetch", &seg, env.path("fetched").to_str().unwrap(), "--prefetch", "0"], 200),
    ] {
        let out = env
            .cmd(&[&["--repo", unmounted.to_str().unwrap()][..], &args, &["--pgdata", pgdata.to_str().unwrap()]].concat())
            .output()
            .unwrap();
        let said = format!(
            "no repository at {}: check that its storage is mounted and reachable (the WAL archive never creates one)\n",
            unmounted.display()
        );
        assert!(String::from_utf8_lossy(&out.stderr).ends_with(&said), "{args:?}: {out:?}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
}

/// A test restore that archives into the production cluster's repository
/// (no `--no-archive`) makes a newer timeline there; a later recovery to
/// the latest point follows it by default, as PostgreSQL does, and follows
/// production's own with `--target-timeline current`.
#[test]
fn a_recovery_follows_the_timeline_it_is_told() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'shared')");
    switch_and_archive(&pg);
    let dir = restore_dir(&env);
    let data = dir.path().join("data");
    env.ok(&["pg", "restore", "--target", data.to_str().unwrap(), "--latest"]);
    let clone = start_restored(dir);
    clone.psql("postgres", "INSERT INTO t VALUES (2, 'test restore')");
    switch_and_archive(&clone);
    drop(clone);
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'production')");
    switch_and_archive(&pg);
    assert_eq!(notes(&restore_and_start(&env, &["--latest"])), "shared,test restore");
    assert_eq!(notes(&restore_and_start(&env, &["--latest", "--target-timeline", "current"])), "shared,production");
    let err = env.fails(&["pg", "restore", "--target", env.path("x").to_str().unwrap(), "--latest", "--target-timeline", "0"], 2);
    assert!(err.contains("give latest, current or a timeline's number (1 or more)"), "{err}");
}

/// `latest` is often a base backup beside a cluster's dumps: restoring one
/// into a database is refused, naming `pg restore`, before the server is
/// touched (pg_restore said "could not find header for file toc.dat").
/// `pg backup` takes the plan's pgbase:// form too, and no other URL.
#[test]
fn a_base_backup_restored_into_a_database_is_refused_naming_pg_restore() {
    let (env, pg) = backed_up_cluster();
    let err = env.fails(&["pg", "backup", "redis://127.0.0.1:1"], 1);
    let said = "redis://127.0.0.1:1 is no cluster URL: give postgres://USER@HOST:PORT (or the plan's pgbase://USER@HOST:PORT)";
    assert_eq!(err, format!("tresor: error: {said}\n"));
    env.ok(&["pg", "backup", &pg.cluster_url().replace("postgres://", "pgbase://")]);
    let id = env.json(&["snapshots"]).as_array().unwrap().last().unwrap()["short_id"].as_str().unwrap().to_string();
    let err = env.fails(&["restore", "latest", "--to", &pg.url("copy")], 1);
    let said = format!(
        "snapshot {id} is a PostgreSQL base backup: restore it with `tresor pg restore {id} --target DIR`, or name the dump to restore"
    );
    assert_eq!(err, format!("tresor: error: {said}\n"));
}

/// With two clusters in the repository, a base backup named by its id
/// names its cluster: no `--system-id` is asked for.
#[test]
fn a_base_backup_named_by_id_names_its_cluster() {
    let (env, _pg) = backed_up_cluster();
    let other = archiving_server(&env);
    env.ok(&["pg", "backup", &other.cluster_url()]);
    let id = env.json(&["snapshots"])[0]["short_id"].as_str().unwrap().to_string();
    let err = env.fails(&["pg", "restore", "--target", env.path("r0").to_str().unwrap(), "--latest"], 1);
    assert!(err.contains("--system-id"), "{err}");
    let said = env.ok(&["pg", "restore", &id, "--target", env.path("r1").to_str().unwrap(), "--immediate", "--prefetch", "0"]);
    assert!(said.starts_with(&format!("restored base backup {id} ")), "{said}");
}

/// `pg restore` builds a new data directory: it refuses one that holds
/// files, and one it cannot read, which may hold a cluster, before it
/// opens the repository.
#[test]
fn pg_restore_refuses_a_target_that_holds_files_or_cannot_be_read() {
    let env = Env::new();
    let held = env.path("held");
    fs::create_dir_all(&held).unwrap();
    fs::write(held.join("PG_VERSION"), "15").unwrap();
    let unreadable = held.join("PG_VERSION/data");
    for (target, why) in [
        (&held, format!("{} is not empty; pg restore builds a new data directory", held.display())),
        (&unreadable, format!("cannot read {}: Not a directory (os error 20)", unreadable.display())),
    ] {
        let out = env.run(&["pg", "restore", "--latest", "--target", target.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr), format!("tresor: error: {why}\n"));
    }
    assert_eq!(fs::read(held.join("PG_VERSION")).unwrap(), b"15");
}

/// An archived segment that cannot be fetched (damaged here; storage that
/// does not answer alike) stops the recovery: PostgreSQL is never told
/// that the archive ends there, which would have it promote without the
/// WAL after it. Once the segment can be fetched, starting the server
/// again completes the recovery.
#[test]
fn a_segment_that_cannot_be_fetched_stops_recovery_instead_of_ending_it() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'early')");
    switch_and_archive(&pg);
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'late')");
    let late = switch_and_archive(&pg);
    let all = env.json(&["snapshots", "--all"]);
    let archived = all.as_array().unwrap().iter().find(|s| s["source"]["consistency"]["file"] == late.as_str()).unwrap();
    let id = archived["id"].as_str().unwrap().to_string();
    let listed = env.ok(&["ls", &id]);
    let file = listed.lines().find(|l| l.ends_with(&late)).unwrap_or_else(|| panic!("{listed}"));
    // A second flip of the same byte mends it.
    let flip = || super::repair::damage_blob(&env, &id, Path::new(file), |n| n.content[0]);
    let blob = flip();

    let dir = restore_dir(&env);
    env.ok(&restore_args(&dir.path().join("data"), &["--latest"]));
    let log = PostgresServer::start_refused(&dir);
    let said = log.lines().find(|l| l.starts_with("tresor: error: cannot fetch")).unwrap_or_else(|| panic!("{log}"));
    let damage = tresor_engine::Error::corrupt("blob", blob, "it fails authentication");
    let how = "start the server again once it can be fetched, or recover to a point before it";
    assert_eq!(said, format!("tresor: error: cannot fetch {late}, so recovery is stopped rather than ended without it ({how}): {damage}"));
    let fatal = format!("FATAL:  could not restore file \"{late}\" from archive: child process exited with exit code 200");
    assert!(log.contains(&fatal), "{log}");

    flip();
    let recovered = start_restored(dir);
    assert_eq!(notes(&recovered), "early,late", "the recovery went on past the segment once it could be fetched");
}

#[test]
fn wal_gaps_are_reported_and_bad_wal_is_refused() {
    let (env, pg) = backed_up_cluster();
    for i in 0..3 {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i}, 'x')"));
        switch_and_archive(&pg);
    }
    let names = wal_names(&env);
    let segments: Vec<&String> = names.iter().filter(|n| n.len() == 24).collect();
    assert!(segments.len() >= 3, "{names:?}");
    let middle = segments[segments.len() - 2].clone();
    let all = env.json(&["snapshots", "--all"]);
    let id =
        all.as_array().unwrap().iter().find(|s| s["source"]["consistency"]["file"] == middle.as_str()).unwrap()["id"].as_str().unwrap();
    // forget refuses to punch the hole (it removed the segment, and the
    // README promises WAL goes only when no base backup needs it) …
    let base = all.as_array().unwrap().iter().find(|s| s["source"]["kind"] == "pg-base").unwrap()["id"].as_str().unwrap();
    let out = env.run(&["forget", id]);
    let said = format!(
        "tresor: error: snapshot {} holds WAL {middle}, which base backup {} needs to recover past its end: forgetting it would break \
         the chain (forget the base backups before it instead; their WAL goes with them)\n",
        &id[..8],
        &base[..8]
    );
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()), (Some(1), said));
    // … so the segment is lost as storage loses an object.
    fs::remove_file(env.path("repo").join("snapshots").join(id)).unwrap();
    let out = env.run(&["pg", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("  gap on timeline 1: {middle} … {middle} (1 segment missing)\n")), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: error: the WAL archive has 1 problem(s); point-in-time recovery across them is impossible\n"
    );
    // pg restore says so before the recovery runs into it, and that a target past the newest commit is not reached.
    let gap = format!(
        "warning: the WAL archive: gap on timeline 1: {middle} … {middle} (1 segment missing); recovery cannot cross it (tresor pg verify)\n"
    );
    let out = env.run(&["pg", "restore", "--target", env.path("r1").to_str().unwrap(), "--latest", "--prefetch", "0"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(0), gap.as_str()));
    let out =
        env.run(&["pg", "restore", "--target", env.path("r2").to_str().unwrap(), "--time", "2030-01-01T00:00:00Z", "--prefetch", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&gap), "{stderr}");
    assert!(
        stderr.ends_with(
            ", before 2030-01-01 00:00:00 +00:00: recovery stops short of the target unless the WAL to it is archived meanwhile\n"
        ),
        "{stderr}"
    );

    // A file that is not WAL of its name, and one that differs from what is stored.
    let pgdata = pg.dir().join("data");
    let last = segments.last().unwrap().as_str();
    let bogus = env.path(last);
    fs::write(&bogus, vec![0u8; 16 << 20]).unwrap();
    let err = env.fails(&["pg", "wal-push", bogus.to_str().unwrap(), "--pgdata", pgdata.to_str().unwrap()], 1);
    assert_eq!(err, format!("tresor: error: {last} does not start with a WAL segment header\n"));
    let fetched = env.path("fetched");
    let ok = env.run(&["pg", "wal-fetch", last, fetched.to_str().unwrap(), "--pgdata", pgdata.to_str().unwrap(), "--prefetch", "0"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let mut changed = fs::read(&fetched).unwrap();
    assert_eq!(changed.len(), 16 << 20, "a whole segment comes back");
    changed[100_000] ^= 1;
    fs::write(&bogus, &changed).unwrap();
    let err = env.fails(&["pg", "wal-push", bogus.to_str().unwrap(), "--pgdata", pgdata.to_str().unwrap()], 1);
    assert_eq!(err, format!("tresor: error: {last} is archived already with different content; the archive keeps the copy it has\n"));
    let out = env.run(&["pg", "wal-fetch", "0000000100000000000000FF", fetched.to_str().unwrap(), "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()),
        (Some(1), "tresor: 0000000100000000000000FF is not in the archive\n")
    );
}

/// Wait (up to two minutes) until `done` holds: a process outside the test
/// gets there at its own pace.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < until, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The prefetcher's report, once it has removed its spool.
fn prefetch_report(pg: &PostgresServer) -> serde_json::Value {
    let report = pg.dir().join("data/tresor-prefetch.json");
    wait_until("the prefetcher's report", || report.exists());
    assert!(!pg.dir().join("data/pg_wal/tresor-prefetch").exists(), "the spool is gone");
    serde_json::from_slice(&fs::read(report).unwrap()).unwrap()
}

/// The prefetcher running for `data` gets the repository through its
/// environment: `ps` shows every user its command line.
fn assert_no_repository_in_the_prefetchers_command_line(env: &Env, data: &Path) {
    let pid = fs::read_to_string(data.join("pg_wal/tresor-prefetch/.pid")).unwrap();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).skip(1).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).to_string()).collect();
    assert_eq!(&args[args.len() - 5..], ["--quiet", "pg", "wal-prefetch", "--pgdata", data.to_str().unwrap()], "{args:?}");
    assert!(!args.iter().any(|a| a == "--repo" || a.contains(&env.repo)), "the repository on the prefetcher's command line: {args:?}");
    assert!(!args.iter().any(|a| a == "--password-file"), "it is handed the key, not a password: {args:?}");
}

/// The prefetcher opens the repository only with the key `pg restore`
/// hands it on its standard input: handed none, or one that does not open
/// the repository, it fetches nothing and its report says why.
#[test]
fn a_prefetcher_handed_no_key_or_a_wrong_one_opens_nothing() {
    let env = Env::new();
    env.ok(&["init"]);
    let plan = serde_json::json!({"system_id": 1, "window": 16, "segments": ["000000010000000000000001"], "history": [],
        "last_segment": {}, "seg_size": 16 << 20});
    for (key, why) in [
        (vec![], "no key was handed over: failed to fill whole buffer"),
        (vec![7; 64], "the key handed over does not open this repository"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("pg_wal/tresor-prefetch");
        fs::create_dir_all(&spool).unwrap();
        fs::write(spool.join(".plan"), plan.to_string()).unwrap();
        let mut child =
            env.cmd(&["pg", "wal-prefetch", "--pgdata", dir.path().to_str().unwrap()]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &key).unwrap();
        assert!(child.wait().unwrap().success());
        let report: serde_json::Value = serde_json::from_slice(&fs::read(dir.path().join("tresor-prefetch.json")).unwrap()).unwrap();
        assert_eq!(
            (&report["ended"], &report["segments_prefetched"], &report["warnings"]),
            (&"the repository could not be opened".into(), &0.into(), &serde_json::json!([format!("cannot open the repository: {why}")])),
            "{report}"
        );
    }
}

#[test]
fn pitr_replays_prefetched_wal_from_the_spool_and_falls_back_for_a_segment_missing_from_it() {
    let (env, pg) = backed_up_cluster();
    let start = env.json(&["snapshots"])[0]["source"]["consistency"]["start_wal"].as_str().unwrap().to_string();
    let batch = |n: u32| pg.psql("postgres", &format!("INSERT INTO t SELECT g, 'batch {n}' FROM generate_series(1, 1000) g"));
    batch(1);
    switch_and_archive(&pg);
    batch(2);
    switch_and_archive(&pg);
    let between = pg.psql("postgres", r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#);
    batch(3);
    switch_and_archive(&pg);
    batch(4);
    switch_and_archive(&pg);
    let count = |pg: &PostgresServer| pg.psql("postgres", "SELECT count(*) FROM t");

    // Every segment the recovery reads comes out of the spool.
    let dir = restore_dir(&env);
    let out = env.json(&restore_args(&dir.path().join("data"), &["--time", &between]));
    let planned = out["prefetch"]["segments_planned"].as_u64().unwrap();
    assert!(planned >= 4, "from the base backup's start through the segment of batch 3, and one more: {out}");
    assert_eq!(out["prefetch"]["window"], 16, "{out}");
    let at = start_restored(dir);
    assert_eq!(count(&at), "2000", "recovered to the moment between batch 2 and batch 3");
    let report = prefetch_report(&at);
    assert_eq!(
        (&report["segments_prefetched"], &report["served_from_spool"], &report["fetched_by_fallback"], &report["ended"]),
        (&planned.into(), &(planned + 1).into(), &0.into(), &"recovery ended".into()),
        "PostgreSQL asks for the segment where it stopped a second time, when it ends recovery: {report} {}",
        at.log()
    );
    drop(at);

    // A segment gone from the spool is fetched from the repository instead.
    let dir = restore_dir(&env);
    let out = env.json(&restore_args(&dir.path().join("data"), &["--time", &between, "--prefetch", "2"]));
    assert_eq!(out["prefetch"]["segments_planned"], planned, "{out}");
    let first = dir.path().join("data/pg_wal/tresor-prefetch").join(&start);
    wait_until("the first segment in the spool", || first.exists());
    fs::remove_file(&first).unwrap();
    let at = start_restored(dir);
    assert_eq!(count(&at), "2000");
    let report = prefetch_report(&at);
    assert_eq!(
        (&report["served_from_spool"], &report["fallback_files"], &report["window"]),
        (&planned.into(), &serde_json::json!([start]), &2.into()),
        "{report}"
    );
    drop(at);

    // A segment is moved out of the spool, not copied: asked for again
    // (as after a restart), it comes from the repository, the same bytes.
    let dir = restore_dir(&env);
    let data = dir.path().join("data");
    env.json(&restore_args(&data, &["--time", &between]));
    let first = data.join("pg_wal/tresor-prefetch").join(&start);
    wait_until("the first segment in the spool", || first.exists());
    assert_no_repository_in_the_prefetchers_command_line(&env, &data);
    let spooled = fs::read(&first).unwrap();
    for copy in ["once", "twice"] {
        let out = env.cmd(&["pg", "wal-fetch", &start, &format!("pg_wal/{copy}")]).current_dir(&data).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(fs::read(data.join("pg_wal").join(copy)).unwrap() == spooled, "{copy}: the segment as prefetched");
        fs::remove_file(data.join("pg_wal").join(copy)).unwrap();
        assert!(!first.exists(), "moved out of the spool");
    }
    let at = start_restored(dir);
    assert_eq!(count(&at), "2000");
    let report = prefetch_report(&at);
    assert_eq!(
        (&report["served_from_spool"], &report["fallback_files"]),
        (&(planned + 1).into(), &serde_json::json!([start, start])),
        "ours and PostgreSQL's second asking for the first segment fetched from the repository: {report}"
    );
}

/// The newest snapshot: its short id and the segment holding its end (16 MiB segments).
fn newest_base(env: &Env) -> (String, String) {
    let snaps = env.json(&["snapshots"]);
    let base = snaps.as_array().unwrap().last().unwrap();
    let point = &base["source"]["consistency"];
    let (hi, lo) = point["end_lsn"].as_str().unwrap().split_once('/').unwrap();
    let segno = ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) >> 24;
    let segment = format!("{:08X}{:08X}{:08X}", point["timeline"].as_u64().unwrap(), segno >> 8, segno & 0xFF);
    (base["short_id"].as_str().unwrap().to_string(), segment)
}

/// A base backup whose end never reaches the archive saves its snapshot
/// (valid data) but fails, saying why: at once with archive_mode off,
/// after --archive-timeout with a failing archive_command, naming what
/// pg_stat_archiver says. `pg verify` then names the base backup and
/// exits 1 (it said "1 base backups, 0 WAL files" and exited 0).
#[test]
fn a_base_backup_whose_end_is_not_archived_fails_and_verify_names_it() {
    let env = postgres_env();
    let off = PostgresServer::start_with("wal_level = replica\n");
    let out = env.run(&["pg", "backup", &off.cluster_url()]);
    let (id, segment) = newest_base(&env);
    let tail = "; until it is, the base backup recovers to its end and no further\n";
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string()),
        (
            Some(1),
            format!(
                "tresor: error: base backup {id} is saved, but the WAL segment holding its end ({segment}) is not in the repository: the cluster's archive_mode is off, so it archives no WAL{tail}"
            )
        )
    );
    // A plan's pgbase:// backup (the daemon's job) is checked alike.
    let out = env.run(&["backup", &off.cluster_url().replacen("postgres://", "pgbase://", 1)]);
    let (id, segment) = newest_base(&env);
    let said = format!(
        "tresor: error: base backup {id} is saved, but the WAL segment holding its end ({segment}) is not in the repository: the cluster's archive_mode is off, so it archives no WAL{tail}"
    );
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).to_string()), (Some(1), said));
    // A cluster that archives nowhere here, by intent (a source without
    // wal_archive: in a plan): its base backups restore on their own.
    env.ok(&["backup", &off.cluster_url().replacen("postgres://", "pgbase://", 1), "--archive-timeout", "0"]);
    let (id, segment) = newest_base(&env);
    let out = env.run(&["pg", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let said = format!(
        "  base backup {id}: the archive holds no WAL of its timeline 1, not even its end {segment}: it recovers no further than its end\n"
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(&said), "{out:?}");

    let failing = PostgresServer::start_with("archive_mode = on\narchive_command = 'false'\nwal_level = replica\n");
    failing.psql("postgres", "SELECT pg_switch_wal()");
    assert_eq!(failing.wait_for("postgres", "SELECT failed_count > 0 FROM pg_stat_archiver", "t"), "t");
    let out = env.run(&["pg", "backup", &failing.cluster_url(), "--archive-timeout", "2s"]);
    let (id, segment) = newest_base(&env);
    let last_failed = failing.psql("postgres", "SELECT last_failed_wal FROM pg_stat_archiver");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let head = format!(
        "tresor: error: base backup {id} is saved, but the WAL segment holding its end ({segment}) is not in the repository: not within 2 s: the cluster's archive_command fails (pg_stat_archiver: failed_count "
    );
    let count = stderr.strip_prefix(&head).and_then(|r| r.strip_suffix(&format!(", last_failed_wal {last_failed}){tail}")));
    assert!(count.is_some_and(|c| c.parse::<u64>().is_ok_and(|c| c > 0)), "{stderr}");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 4, "every base backup is kept");
}

/// A test restore archived timeline 2 into production's repository and
/// its base backup is the newest. A recovery onto timeline 1 starts from
/// production's base backup (it took the clone's, and PostgreSQL failed
/// "could not locate required checkpoint record"); a base backup named
/// that is not on timeline 1 is refused before anything is written;
/// `current` follows the newest base backup's own timeline.
#[test]
fn a_recovery_onto_a_timeline_starts_from_a_base_backup_on_its_history() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'shared')");
    switch_and_archive(&pg);
    let dir = restore_dir(&env);
    env.ok(&["pg", "restore", "--target", dir.path().join("data").to_str().unwrap(), "--latest"]);
    let clone = start_restored(dir);
    clone.psql("postgres", "INSERT INTO t VALUES (2, 'test restore')");
    switch_and_archive(&clone);
    env.ok(&["pg", "backup", &clone.cluster_url()]);
    let (clone_base, _) = newest_base(&env);
    clone.psql("postgres", "INSERT INTO t VALUES (3, 'test restore')");
    switch_and_archive(&clone);
    drop(clone);
    pg.psql("postgres", "INSERT INTO t VALUES (2, 'production')");
    let between = pg.psql("postgres", "SELECT clock_timestamp()");
    pg.psql("postgres", "INSERT INTO t VALUES (3, 'later')");
    switch_and_archive(&pg);
    assert_eq!(notes(&restore_and_start(&env, &["--latest", "--target-timeline", "1"])), "shared,production,later");
    assert_eq!(notes(&restore_and_start(&env, &["--time", &between, "--target-timeline", "1"])), "shared,production");
    assert_eq!(notes(&restore_and_start(&env, &["--latest", "--target-timeline", "current"])), "shared,test restore,test restore");
    // `latest` follows the test restore's branch too, and says what it leaves out.
    let out = env.run(&["pg", "restore", "--target", env.path("followed").to_str().unwrap(), "--latest", "--prefetch", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned = stderr.lines().find(|l| l.starts_with("warning: timeline 1 went on after timeline 2 branched off it at "));
    assert!(
        warned.is_some_and(|l| l.ends_with(": this recovery follows 2 and leaves timeline 1's newer WAL out (a restore that archives here, a test one too, makes such a branch); --target-timeline 1 recovers timeline 1")),
        "{stderr}"
    );
    let target = env.path("refused");
    let err = env.fails(&["pg", "restore", &clone_base, "--target", target.to_str().unwrap(), "--latest", "--target-timeline", "1"], 1);
    let said = format!(
        "base backup {clone_base} is on timeline 2, which timeline 1 did not branch off after its end: it cannot recover onto timeline 1"
    );
    assert_eq!(err, format!("tresor: error: {said}\n"));
    assert!(!target.exists(), "nothing written");
}

/// `--name` and `--xid` recover to a restore point and through a
/// transaction's commit, from the newest base backup.
#[test]
fn a_recovery_stops_at_a_restore_point_or_a_transaction() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'before')");
    pg.psql("postgres", "SELECT pg_create_restore_point('before-upgrade')");
    let said = pg.psql("postgres", "INSERT INTO t VALUES (2, 'upgraded') RETURNING pg_current_xact_id()");
    let xid = said.lines().next().unwrap().to_string();
    pg.psql("postgres", "INSERT INTO t VALUES (3, 'later')");
    switch_and_archive(&pg);
    assert_eq!(notes(&restore_and_start(&env, &["--name", "before-upgrade"])), "before");
    assert_eq!(notes(&restore_and_start(&env, &["--xid", &xid])), "before,upgraded");
    let err = env.fails(&["pg", "restore", "--target", env.path("x").to_str().unwrap(), "--name", ""], 2);
    assert!(err.contains("give a restore point's name, 1 to 63 bytes long, as pg_create_restore_point made it"), "{err}");
}

/// After a restore, the recovery settings stay in postgresql.auto.conf,
/// where `pg_basebackup -R` would copy them into a clone that promotes
/// itself: the restore says which to reset, and they reset them.
#[test]
fn a_restore_says_which_recovery_settings_to_reset_once_recovered() {
    let (env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'archived')");
    switch_and_archive(&pg);
    let dir = restore_dir(&env);
    let said = env.ok(&restore_args(&dir.path().join("data"), &["--latest", "--prefetch", "0"]));
    let resets = [
        "ALTER SYSTEM RESET restore_command;",
        "ALTER SYSTEM RESET recovery_target_action;",
        "ALTER SYSTEM RESET recovery_target_timeline;",
    ];
    let note = "note: once recovery has ended, run these (postgresql.auto.conf keeps the recovery settings, and a standby or clone made with pg_basebackup -R copies them, recovers to the same target and promotes itself):\n";
    let listed: String = resets.iter().map(|r| format!("  {r}\n")).collect();
    // Not archive_mode: reset, the test restore would archive into production's repository at its next start.
    let off =
        "note: archive_mode stays off, so this cluster archives nothing into the repository; should it become the primary, turn it on\n";
    assert!(said.ends_with(&format!("{note}{listed}{off}")), "{said}");
    let recovered = start_restored(dir);
    for reset in resets {
        recovered.psql("postgres", reset);
    }
    let auto = fs::read_to_string(recovered.dir().join("data/postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("restore_command") && !auto.contains("recovery_target") && auto.contains("archive_mode = 'off'"), "{auto}");
}

/// `pg restore` as root: tar restores the files as PostgreSQL's user, and
/// what tresor writes (the directory, recovery.signal,
/// postgresql.auto.conf, the prefetcher's spool) is that user's too, so
/// the server starts (it failed "could not open PID file … Permission denied").
#[test]
fn pg_restore_as_root_gives_what_it_writes_to_the_clusters_owner() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let (mut env, pg) = backed_up_cluster();
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'archived')");
    switch_and_archive(&pg);
    let dir = restore_dir(&env);
    let data = dir.path().join("data");
    env.user = None;
    env.ok(&restore_args(&data, &["--latest"]));
    let owner = |p: &Path| fs::metadata(p).map(|m| (m.uid(), m.gid())).unwrap();
    let postgres = owner(&data.join("PG_VERSION"));
    assert_ne!(postgres.0, 0);
    for p in [data.clone(), data.join("recovery.signal"), data.join("postgresql.auto.conf"), data.join("pg_wal/tresor-prefetch")] {
        assert_eq!(owner(&p), postgres, "{}", p.display());
    }
    let recovered = start_restored(dir);
    assert_eq!(notes(&recovered), "archived");
    let report = prefetch_report(&recovered);
    assert_eq!(report["fetched_by_fallback"], 0, "the spool served the recovery: {report}");
}
