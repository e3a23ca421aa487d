//! `tresor plan check --connect`: every repository and source of a plan
//! reached with its credentials, one exact line each, against real servers.

use std::os::unix::fs::PermissionsExt;

use tresor_testkit::{PostgresServer, RedisServer};

use super::*;

/// A plan of one class; `repositories` and `sources` are YAML items.
fn write_plan(env: &Env, repositories: &[(&str, &str)], sources: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from("repositories:\n");
    for (name, url) in repositories {
        text.push_str(&format!("  {name}:\n    url: \"{url}\"\n    password_file: {}\n", env.path("pw").display()));
    }
    // The class copies off-site to its own repository: no warning to print.
    let first = repositories[0].0;
    text.push_str(&format!(
        "classes:\n  data:\n    rpo: 1d\n    rto: 1h\n    offsite: {first}\n    retention:\n      daily: 7\nsources:\n"
    ));
    for (name, url) in sources {
        text.push_str(&format!("  - name: {name}\n    class: data\n    url: \"{url}\"\n    schedule: \"@daily\"\n"));
    }
    let plan = env.path("tresor.yaml");
    fs::write(&plan, text).unwrap();
    plan
}

fn doctor(env: &Env, plan: &Path) -> (Option<i32>, String, String) {
    let out = env.run(&["plan", "check", "--connect", plan.to_str().unwrap()]);
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// `tresor stats`' own words for the bytes the repository stores.
fn stored(env: &Env) -> String {
    let stats = env.ok(&["stats"]);
    let line = stats.lines().find(|l| l.starts_with("stored in")).unwrap();
    line.split_once(':').unwrap().1.trim().to_string()
}

fn total_space(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.display().to_string()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_blocks * st.f_frsize
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", units[u]) }
}

fn redis_version(r: &RedisServer) -> String {
    let info = r.cli(&["INFO", "server"]);
    info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap().trim().to_string()
}

/// `15.8` from `SHOW server_version_num`, and pg_dump's own `15.8`.
fn pg_versions(pg: &PostgresServer) -> (String, String) {
    let num: u32 = pg.psql("postgres", "SHOW server_version_num").parse().unwrap();
    let out = Command::new(PostgresServer::bin_dir().join("pg_dump")).arg("--version").output().unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    (format!("{}.{}", num / 10_000, num % 100), said.split_whitespace().nth(2).unwrap().to_string())
}

fn with_pg_bin(mut env: Env, dir: &Path) -> Env {
    env.vars.push(("TRESOR_PG_BIN".into(), dir.display().to_string()));
    env
}

#[test]
fn every_repository_and_source_answers_with_what_it_is() {
    let env = with_pg_bin(Env::new(), &PostgresServer::bin_dir());
    env.ok(&["init"]);
    fs::create_dir(env.path("data")).unwrap();
    fs::write(env.path("data/a"), "a").unwrap();
    fs::write(env.path("data/b"), "b").unwrap();
    env.ok(&["backup", env.path("data").to_str().unwrap()]);
    let (redis, pg) = (RedisServer::start(&[]), PostgresServer::start());
    let plan = write_plan(
        &env,
        &[("main", env.repo.as_str())],
        &[
            ("cache", &redis.url()),
            ("db", &pg.url("postgres")),
            ("files", env.path("data").to_str().unwrap()),
            ("export", "command:/bin/true --quiet"),
        ],
    );
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let (head, space) = lines[0].rsplit_once(", ").unwrap();
    assert_eq!(head, format!("repository main: ok — format 1, {} stored", stored(&env)));
    // Free space moves with everything else on this machine; the total does not.
    let (free, total) = space.split_once(" free of ").unwrap();
    assert_eq!(total, human(total_space(env.dir.path())));
    assert!(free.ends_with('B') && free.split(' ').next().unwrap().parse::<f64>().is_ok(), "{free}");
    let (server, pg_dump) = pg_versions(&pg);
    assert_eq!(
        lines[1..].join("\n"),
        format!(
            "redis cache: ok — Redis {}, master\n\
             postgres db: ok — PostgreSQL {server}; pg_dump {pg_dump}\n\
             path files: ok — a readable directory of 2 entries\n\
             command export: ok — runs /bin/true\n\
             5 checks: 5 ok, 0 failed",
            redis_version(&redis)
        )
    );
}

#[test]
fn a_down_redis_fails_its_line_and_the_others_still_answer() {
    let env = Env::new();
    env.ok(&["init"]);
    let port = tresor_testkit::net::free_port();
    let dead = format!("redis://:hunter2-not-shown@127.0.0.1:{port}");
    // Connections queue in its backlog, and nothing ever answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck = format!("redis://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let nothing = env.path("nothing");
    let mut sources =
        vec![("cache", dead.as_str()), ("missing", nothing.to_str().unwrap()), ("export", "command:no-such-program-x --password=x")];
    sources.push(("stuck", &stuck));
    let plan = write_plan(&env, &[("main", env.repo.as_str())], &sources);
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!((code, err.as_str()), (Some(1), ""), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].rsplit_once(", ").unwrap().0, format!("repository main: ok — format 1, {} stored", stored(&env)));
    assert_eq!(
        lines[1..].join("\n"),
        format!(
            "redis cache: FAILED — redis://127.0.0.1:{port}: cannot connect: Connection refused (os error 111)\n\
             path missing: FAILED — {}: No such file or directory (os error 2)\n\
             command export: FAILED — command:no-such-program-x: not found on PATH\n\
             redis stuck: FAILED — no answer within 10s\n\
             5 checks: 1 ok, 4 failed",
            nothing.display()
        )
    );
    assert!(!out.contains("hunter2"));

    sources.pop();
    let plan = write_plan(&env, &[("main", env.repo.as_str())], &sources);

    let out = env.run(&["plan", "check", "--connect", plan.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    let shape: Vec<(&str, &str, bool)> =
        checks.iter().map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap(), c["ok"].as_bool().unwrap())).collect();
    assert_eq!(shape, [("repository", "main", true), ("redis", "cache", false), ("path", "missing", false), ("command", "export", false)]);
    assert_eq!(checks[1]["detail"], format!("redis://127.0.0.1:{port}: cannot connect: Connection refused (os error 111)"));
    assert_eq!(v["summary"], serde_json::json!({"checks": 4, "ok": 1, "failed": 3}));
    assert_eq!((v["errors"].as_u64(), v["findings"].as_array().map(Vec::len)), (Some(0), Some(0)));
}

#[test]
fn a_plan_with_errors_is_not_connected_for() {
    let env = Env::new();
    let plan = write_plan(&env, &[("main", env.repo.as_str())], &[("cache", "redis://127.0.0.1:1")]);
    let text = fs::read_to_string(&plan).unwrap().replace("@daily", "@weekly");
    fs::write(&plan, text).unwrap();
    let (code, out, _) = doctor(&env, &plan);
    assert_eq!(code, Some(1));
    let p = plan.display();
    assert_eq!(
        out,
        format!(
            "{p}:16: error: source cache: schedule \"@weekly\" leaves up to 7d between backups, longer than class data's RPO 1d\n\
             {p}: 1 error: the connections are checked once the plan has none\n"
        )
    );
}

/// A cluster where `alice` must give her password (scram) and everyone
/// else is trusted, as the harness's other clusters are.
fn pg_with_password(dir: &Path) -> PostgresServer {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let hba = dir.join("pg_hba.conf");
    fs::write(
        &hba,
        "host all alice 127.0.0.1/32 scram-sha-256\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
    )
    .unwrap();
    fs::set_permissions(&hba, fs::Permissions::from_mode(0o644)).unwrap();
    let pg = PostgresServer::start_with(&format!("\nhba_file = '{}'\n", hba.display()));
    pg.psql("postgres", "CREATE ROLE alice LOGIN PASSWORD 'open-sesame-41'");
    pg
}

#[test]
fn a_wrong_postgres_password_and_an_old_pg_dump_are_one_line_each() {
    let env = with_pg_bin(Env::new(), &PostgresServer::bin_dir());
    env.ok(&["init"]);
    let pg = pg_with_password(env.dir.path());
    let port = pg.port();
    let plan = write_plan(
        &env,
        &[("main", env.repo.as_str())],
        &[
            ("right", &format!("postgres://alice:open-sesame-41@127.0.0.1:{port}/postgres")),
            ("wrong", &format!("postgres://alice:guessed-wrong-17@127.0.0.1:{port}/postgres")),
        ],
    );
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!(code, Some(1), "{out}{err}");
    let (server, pg_dump) = pg_versions(&pg);
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(
        lines.join("\n"),
        format!(
            "postgres right: ok — PostgreSQL {server}; pg_dump {pg_dump}\n\
             postgres wrong: FAILED — postgres://alice@127.0.0.1:{port}/postgres: connection to server at \"127.0.0.1\", port {port} \
             failed: FATAL:  password authentication failed for user \"alice\"\n\
             3 checks: 2 ok, 1 failed"
        )
    );
    for secret in ["open-sesame-41", "guessed-wrong-17"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} printed");
    }

    // pg_dump 13 beside this machine's psql, for the server's 15.
    let old = env.path("old-bin");
    fs::create_dir(&old).unwrap();
    std::os::unix::fs::symlink(PostgresServer::bin_dir().join("psql"), old.join("psql")).unwrap();
    fs::write(old.join("pg_dump"), "#!/bin/sh\necho 'pg_dump (PostgreSQL) 13.0'\n").unwrap();
    fs::set_permissions(old.join("pg_dump"), fs::Permissions::from_mode(0o755)).unwrap();
    let env = with_pg_bin(env, &old);
    let plan = write_plan(&env, &[("main", env.repo.as_str())], &[("db", &pg.url("postgres"))]);
    let (code, out, _) = doctor(&env, &plan);
    assert_eq!(code, Some(1));
    let major = server.split('.').next().unwrap();
    assert_eq!(
        out.lines().nth(1).unwrap(),
        format!(
            "postgres db: FAILED — postgres://postgres@127.0.0.1:{port}/postgres: pg_dump 13 is older than the server's {major}: \
             install PostgreSQL {major}'s client programs"
        )
    );
}

#[test]
fn an_s3_repository_whose_bucket_does_not_exist_is_named() {
    let server = tresor_testkit::S3Server::start();
    let env = Env::s3(&server);
    env.ok(&["init"]);
    let plan = write_plan(&env, &[("main", env.repo.as_str()), ("gone", "s3://no-such-bucket/team")], &[]);
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!((code, err.as_str()), (Some(1), ""), "{out}");
    assert_eq!(
        out,
        format!(
            "{p}:9: warning: class data has no sources\n\
             repository gone: FAILED — no repository at s3://no-such-bucket/team/: the bucket no-such-bucket does not exist\n\
             repository main: ok — format 1, {} stored\n\
             2 checks: 1 ok, 1 failed\n",
            stored(&env),
            p = plan.display()
        )
    );
}

#[test]
fn a_kubernetes_source_says_the_api_version_and_what_may_be_done() {
    // As the shipped service account, never as the administrator.
    let cluster = super::k8s::Cluster::start();
    let mut env = Env::new();
    env.ok(&["init"]);
    env.vars.push(("KUBECONFIG".into(), cluster.kubeconfig.display().to_string()));
    let plan = write_plan(
        &env,
        &[("main", env.repo.as_str())],
        &[("cluster", "k8s://"), ("volume", "pvc://shop/data?secret=repo&cluster=k8s://fake")],
    );
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>().join("\n"),
        "k8s cluster: ok — Kubernetes v1.30.0-tresor-fake; in namespace default: may list all resources; may create namespaces\n\
         pvc volume: ok — Kubernetes v1.30.0-tresor-fake; in namespace shop: may list all resources; may create jobs, get persistentvolumeclaims\n\
         3 checks: 3 ok, 0 failed"
    );
}

#[test]
fn an_etcd_source_says_its_version_and_member() {
    let etcd = tresor_testkit::EtcdServer::start();
    let env = Env::new();
    env.ok(&["init"]);
    let plan = write_plan(&env, &[("main", env.repo.as_str())], &[("config", &etcd.url())]);
    let (code, out, err) = doctor(&env, &plan);
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    let said: serde_json::Value = serde_json::from_slice(&etcd.ctl(&["endpoint", "status", "-w", "json"]).stdout).unwrap();
    let status = &said[0]["Status"];
    assert_eq!(
        out.lines().nth(1).unwrap(),
        format!(
            "etcd config: ok — etcd {}, member {:x}, leader",
            status["version"].as_str().unwrap(),
            status["header"]["member_id"].as_u64().unwrap()
        )
    );
}

#[test]
fn a_repository_that_is_missing_or_locked_says_why() {
    let env = Env::new();
    env.ok(&["init"]);
    let (locked, missing, fresh) = (env.path("locked"), env.path("missing"), env.path("fresh"));
    fs::write(env.path("other-pw"), "another secret\n").unwrap();
    let out = env.cmd(&["--repo", locked.to_str().unwrap(), "init"]).env("TRESOR_PASSWORD_FILE", env.path("other-pw")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = write_plan(
        &env,
        &[
            ("main", env.repo.as_str()),
            ("locked", locked.to_str().unwrap()),
            ("missing", missing.to_str().unwrap()),
            ("fresh", fresh.to_str().unwrap()),
        ],
        &[("files", env.dir.path().to_str().unwrap())],
    );
    let text = fs::read_to_string(&plan).unwrap();
    let fresh_url = format!("url: \"{}\"\n", fresh.display());
    fs::write(&plan, text.replace(&fresh_url, &format!("{fresh_url}    init: true\n"))).unwrap();
    let (code, out, _) = doctor(&env, &plan);
    assert_eq!(code, Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        [lines[0], lines[1], lines[3]].join("\n"),
        format!(
            "repository fresh: ok — not there yet: the daemon creates it when it starts (init: true)\n\
             repository locked: FAILED — wrong password: no key of this repository opens with it\n\
             repository missing: FAILED — no repository at {}: nothing is there (run `tresor init` first)",
            missing.display()
        )
    );
    assert!(lines[2].starts_with("repository main: ok — format 1, "), "{}", lines[2]);
    assert_eq!(lines[5], "5 checks: 3 ok, 2 failed");
}
