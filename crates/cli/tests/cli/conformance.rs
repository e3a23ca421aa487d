//! One conformance suite over every data source: each is backed up from a
//! real server, restored into a fresh one, and compared; each records its
//! kind and consistency point; each fails an unreachable or broken source
//! with one line and saves no snapshot. A new source adds one case here.
//! (PostgreSQL base backups need the `postgres` user to own the repository;
//! they have their own suite in pitr.rs.)

use std::any::Any;

use tresor_testkit::{EtcdServer, PostgresServer, RedisServer};

use super::sources::{contents, fill, row_counts};
use super::*;

struct Case {
    name: &'static str,
    url: String,
    /// The same kind of source, unreachable or broken.
    bad: String,
    restore: Vec<String>,
    kind: &'static str,
    point: &'static [&'static str],
    before: String,
    after: Box<dyn Fn() -> String>,
    /// Servers that must outlive the case.
    _keep: Vec<Box<dyn Any>>,
}

fn dead_port() -> u16 {
    tresor_testkit::net::free_port()
}

fn redis() -> Case {
    let server = RedisServer::start(&[]);
    fill(&server);
    let target = RedisServer::start(&[]);
    let (url, to) = (server.url(), target.url());
    Case {
        name: "redis",
        before: format!("{:?}", contents(&server)),
        url,
        bad: format!("redis://127.0.0.1:{}", dead_port()),
        restore: vec!["--to".into(), to],
        kind: "redis",
        point: &["replication_offset", "keys"],
        after: Box::new(move || format!("{:?}", contents(&target))),
        _keep: vec![Box::new(server)],
    }
}

fn redis_aof(env: &Env) -> Case {
    let server = RedisServer::start(&["--appendonly", "yes"]);
    fill(&server);
    let aof = server.dir().join("appendonlydir");
    let out = env.path("aof-out");
    let restored_dir = restored(env, "aof-out", &aof);
    Case {
        name: "redis-aof",
        before: format!("{:?}", contents(&server)),
        url: format!("redis-aof:{}", aof.display()),
        bad: format!("redis-aof:{}", env.path("no-such-dir").display()),
        restore: vec!["--target".into(), out.display().to_string()],
        kind: "redis-aof",
        point: &["base", "incr_files"],
        after: Box::new(move || format!("{:?}", contents(&RedisServer::with_aof(&restored_dir)))),
        _keep: vec![Box::new(server)],
    }
}

fn postgres(pg: &std::rc::Rc<PostgresServer>) -> Case {
    pg.psql("postgres", "CREATE DATABASE conf");
    pg.pgbench_init("conf", 1);
    let target = pg.clone();
    Case {
        name: "postgres",
        before: row_counts(pg, "conf"),
        url: pg.url("conf"),
        bad: format!("postgres://postgres@127.0.0.1:{}/conf", dead_port()),
        restore: vec!["--to".into(), pg.url("conf_restored"), "--jobs".into(), "2".into()],
        kind: "postgres",
        point: &["lsn", "timeline", "database"],
        after: Box::new(move || row_counts(&target, "conf_restored")),
        _keep: vec![],
    }
}

fn postgres_globals(pg: &std::rc::Rc<PostgresServer>) -> Case {
    pg.psql("postgres", "CREATE ROLE auditor LOGIN CONNECTION LIMIT 3");
    let roles = "SELECT string_agg(rolname || ':' || rolcanlogin || ':' || rolconnlimit, ',' ORDER BY rolname) FROM pg_roles WHERE rolname !~ '^pg_'";
    let other = PostgresServer::start();
    let to = other.cluster_url();
    Case {
        name: "postgres-globals",
        before: pg.psql("postgres", roles),
        url: pg.cluster_url(),
        bad: format!("postgres://postgres@127.0.0.1:{}", dead_port()),
        restore: vec!["--to".into(), to],
        kind: "postgres",
        point: &["lsn", "globals"],
        after: Box::new(move || other.psql("postgres", roles)),
        _keep: vec![],
    }
}

fn etcd(env: &Env) -> Case {
    let server = EtcdServer::start();
    for i in 0..40 {
        assert!(server.ctl(&["put", &format!("/registry/secrets/s{i}"), &format!("v{i}")]).status.success());
    }
    let keys = |e: &EtcdServer| String::from_utf8(e.ctl(&["get", "--prefix", ""]).stdout).unwrap();
    let dir = env.path("etcd-member");
    Case {
        name: "etcd",
        before: keys(&server),
        url: server.url(),
        bad: format!("etcd://127.0.0.1:{}", dead_port()),
        restore: vec!["--to".into(), format!("etcd-data:{}", dir.display())],
        kind: "etcd",
        point: &["revision", "keys"],
        after: Box::new(move || keys(&EtcdServer::with_data(&dir))),
        _keep: vec![Box::new(server)],
    }
}

fn command(env: &Env) -> Case {
    let data = env.path("export.bin");
    fs::write(&data, random_bytes(2 << 20, 5)).unwrap();
    let copy = env.path("export.copy");
    Case {
        name: "command",
        before: blake3::hash(&fs::read(&data).unwrap()).to_hex().to_string(),
        url: format!("command:cat {}", data.display()),
        bad: format!("command:cat {}", env.path("missing.bin").display()),
        restore: vec!["--to".into(), format!("command:cat > {}", copy.display())],
        kind: "command",
        point: &[],
        after: Box::new(move || blake3::hash(&fs::read(&copy).unwrap()).to_hex().to_string()),
        _keep: vec![],
    }
}

/// Objects with metadata, back into a fresh bucket of the in-process S3 server.
fn bucket(server: S3Server) -> Case {
    use super::bucket::{Store, s3_url};
    let source = Store::s3(&server, server.bucket());
    for i in 0..30 {
        source.put(&format!("dir{}/obj{i}", i % 3), random_bytes(i * 1000, i as u64), Some("text/plain"), &[("n", &i.to_string())]);
    }
    fs::create_dir(server.root().join("restored")).unwrap();
    let target = Store::s3(&server, "restored");
    Case {
        name: "bucket",
        before: format!("{:?}", source.objects()),
        url: s3_url(&server, server.bucket()),
        bad: s3_url(&server, "no-such-bucket"),
        restore: vec!["--to".into(), s3_url(&server, "restored")],
        kind: "bucket",
        point: &["listing_started", "listing_ended", "objects"],
        after: Box::new(move || format!("{:?}", target.objects())),
        _keep: vec![Box::new(server)],
    }
}

impl Case {
    fn run(self, env: &Env, bin: &str) {
        let run = |args: &[&str]| env.cmd(args).env("TRESOR_PG_BIN", bin).output().unwrap();
        let count = || env.json(&["snapshots"]).as_array().unwrap().len();
        let n = count();
        let out = run(&["backup", &self.url]);
        assert!(out.status.success(), "{}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        let snaps = env.json(&["snapshots"]);
        let snap = &snaps.as_array().unwrap()[n];
        assert_eq!(snap["source"]["kind"], self.kind, "{}", self.name);
        for key in self.point {
            assert!(!snap["source"]["consistency"][key].is_null(), "{}: {key} recorded: {snap}", self.name);
        }
        let id = snap["id"].as_str().unwrap();
        let mut args = vec!["restore", id];
        args.extend(self.restore.iter().map(String::as_str));
        let out = run(&args);
        assert!(out.status.success(), "{}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        assert_eq!((self.after)(), self.before, "{}: restored exactly", self.name);

        let out = run(&["backup", &self.bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", self.name);
        assert!(err.starts_with("tresor: error: ") && err.lines().count() == 1, "{}: one clear line: {err}", self.name);
        assert_eq!(count(), n + 1, "{}: no snapshot from a failed source", self.name);
    }
}

#[test]
fn every_source_round_trips_records_its_point_and_fails_cleanly() {
    let mut env = Env::new();
    let s3 = S3Server::start();
    env.vars.extend(super::bucket::source_vars(&s3));
    env.ok(&["init"]);
    let bin = PostgresServer::bin_dir().display().to_string();
    let pg = std::rc::Rc::new(PostgresServer::start());
    let cases = [redis(), redis_aof(&env), postgres(&pg), postgres_globals(&pg), etcd(&env), command(&env), bucket(s3)];
    for case in cases {
        case.run(&env, &bin);
    }
}
