//! Data sources through backup → restore → compare, against real servers.

use std::io::{Read, Write};
use std::net::TcpListener;

use tresor_testkit::{Certs, PostgresServer, RedisServer};

use super::*;

pub(super) fn fill(r: &RedisServer) {
    let mut script = String::from(
        "SET greeting hello\nSET session:42 token PX 3600000\nRPUSH queue a b c\nHSET user:1 name Ada role admin\n\
         SADD tags x y\nZADD scores 1 one 2.5 two\nXADD events * kind login\n",
    );
    for i in 0..2000 {
        script.push_str(&format!("SET k{i} {}\n", "v".repeat(1 + i % 50)));
    }
    r.script(&script);
}

/// Every key with its type, whether it expires, and its value: `DUMP`'s
/// serialization, except for sets and hashes, whose element order a reload
/// may change (their members, sorted, instead).
pub(super) fn contents(r: &RedisServer) -> BTreeMap<String, String> {
    const SCRIPT: &str = "local out = {} for _, k in ipairs(redis.call('KEYS', '*')) do \
        local t = redis.call('TYPE', k).ok local v \
        if t == 'set' then v = redis.call('SMEMBERS', k) table.sort(v) v = table.concat(v, ',') \
        elseif t == 'hash' then local h = redis.call('HGETALL', k) local p = {} \
          for i = 1, #h, 2 do p[#p + 1] = h[i] .. '=' .. h[i + 1] end table.sort(p) v = table.concat(p, ',') \
        else v = redis.call('DUMP', k) end \
        out[#out + 1] = k .. '|' .. t .. '|' .. tostring(redis.call('PTTL', k) > 0) .. '|' .. v \
        end return out";
    r.cli(&["--no-raw", "EVAL", SCRIPT, "0"])
        .lines()
        .map(|l| {
            let entry = l.split_once(") ").map_or(l, |(_, e)| e).to_string();
            (entry.split('|').next().unwrap_or_default().to_string(), entry)
        })
        .collect()
}

#[test]
fn redis_round_trip_keeps_every_key_type_value_and_ttl() {
    let env = Env::new();
    env.ok(&["init"]);
    let server = RedisServer::start(&[]);
    fill(&server);
    let before = contents(&server);
    assert_eq!(before.len(), 2007, "keys: {:?}", before.keys().take(5).collect::<Vec<_>>());
    let out = env.json(&["backup", &server.url()]);
    assert_eq!(out["files_new"], 1, "{out}");
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["kind"], "redis");
    assert_eq!(snap["source"]["url"], server.url());
    assert_eq!(snap["source"]["consistency"]["keys"], 2007);
    assert!(snap["source"]["consistency"]["replication_offset"].is_u64(), "{snap}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let rdb = env.path("out").join("dump.rdb");
    assert_eq!(&fs::read(&rdb).unwrap()[..5], b"REDIS");
    let restored = RedisServer::with_rdb(&rdb);
    let after = contents(&restored);
    assert_eq!(after.len(), before.len());
    let differ: Vec<&String> = before.keys().filter(|k| after.get(*k) != before.get(*k)).take(3).collect();
    assert!(differ.is_empty(), "keys restored differently: {differ:?}");
    let ttl: i64 = restored.cli(&["PTTL", "session:42"]).parse().unwrap();
    assert!(ttl > 3_000_000 && ttl <= 3_600_000, "TTL kept: {ttl}");

    // Into a running instance: refused while it holds data, unless --flush.
    // It proves itself with a one-time masterauth, its own put back after.
    let running = RedisServer::start(&[]);
    running.cli(&["CONFIG", "SET", "masterauth", "its-own"]);
    let out = env.json(&["restore", "latest", "--to", &running.url()]);
    assert_eq!(out["result"], format!("{} loaded the RDB and holds 2007 keys", running.url()));
    assert_eq!(contents(&running), before);
    assert_eq!(running.cli(&["CONFIG", "GET", "masterauth"]), "masterauth\nits-own");
    assert_eq!(running.cli(&["INFO", "replication"]).lines().find(|l| l.starts_with("role:")), Some("role:master"));
    running.cli(&["SET", "extra", "1"]);
    let err = env.fails(&["restore", "latest", "--to", &running.url()], 1);
    assert_eq!(
        err,
        format!("tresor: error: {}: the instance holds 2008 keys; restoring replaces them all: add --flush to allow it\n", running.url())
    );
    assert_eq!(running.cli(&["DBSIZE"]), "2008", "a refused restore changes nothing");
    env.ok(&["restore", "latest", "--to", &running.url(), "--flush"]);
    assert_eq!(contents(&running), before);
}

#[test]
fn redis_aof_directory_round_trip_and_a_broken_manifest() {
    let env = Env::new();
    env.ok(&["init"]);
    let server = RedisServer::start(&["--appendonly", "yes"]);
    fill(&server);
    let before = contents(&server);
    let aof = server.dir().join("appendonlydir");
    let url = format!("redis-aof:{}", aof.display());
    env.ok(&["backup", &url]);
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!((snap["source"]["kind"].as_str(), snap["source"]["url"].as_str()), (Some("redis-aof"), Some(url.as_str())));
    assert_eq!(snap["source"]["consistency"]["incr_files"], 1, "{snap}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let restored = RedisServer::with_aof(&restored(&env, "out", &aof));
    assert_eq!(contents(&restored), before, "every key, type, value and TTL from the AOF");

    let broken = env.path("broken");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("appendonly.aof.manifest"), "file appendonly.aof.1.base.rdb seq 1 type b\n").unwrap();
    let err = env.fails(&["backup", &format!("redis-aof:{}", broken.display())], 1);
    assert!(
        err.starts_with(&format!(
            "tresor: error: redis-aof:{0}: {0}/appendonly.aof.1.base.rdb is named in the manifest but cannot be read: ",
            broken.display()
        )),
        "{err}"
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn redis_over_tls_trusts_the_given_ca_only() {
    let env = Env::new();
    env.ok(&["init"]);
    let certs = Certs::make(&env.path("tls"));
    let [ca, crt, key] = [&certs.ca, &certs.server_cert, &certs.server_key].map(|p| p.display().to_string());
    let tls_port = tresor_testkit::net::free_port().to_string();
    let tls =
        ["--tls-port", &tls_port, "--tls-cert-file", &crt, "--tls-key-file", &key, "--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"];
    let server = RedisServer::start(&tls);
    fill(&server);
    let before = contents(&server);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let err = env.fails(&["backup", &url], 1);
    assert_eq!(
        err,
        format!("tresor: error: {url}: TLS handshake with 127.0.0.1:{tls_port} failed: invalid peer certificate: UnknownIssuer\n")
    );
    // A plain port reads the hello as a command: the handshake fails within
    // its 10 s, said so, not after the 60 s read timeout with a bare EAGAIN.
    let plain = format!("rediss://127.0.0.1:{}", server.port());
    let err = env.fails(&["backup", &plain], 1);
    let failed = format!("tresor: error: {plain}: TLS handshake with 127.0.0.1:{} failed:", server.port());
    let why = ["no answer within 10 s; is the server serving TLS?\n", "its answer is not TLS; is the server serving TLS?\n"];
    assert!(why.iter().any(|w| err == format!("{failed} {w}")), "{err}");
    let out = env.cmd(&["backup", &url]).env("TRESOR_REDIS_CACERT", &ca).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["url"], url.as_str());
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_eq!(contents(&RedisServer::with_rdb(&env.path("out").join("dump.rdb"))), before, "every key over TLS");
}

#[test]
fn redis_auth_unreachable_and_corrupt_streams_fail_without_a_snapshot() {
    let env = Env::new();
    env.ok(&["init"]);
    let server = RedisServer::start(&["--requirepass", "s3cret"]);
    server.cli(&["-a", "s3cret", "--no-auth-warning", "SET", "k", "v"]);
    let err = env.fails(&["backup", &server.url()], 1);
    assert_eq!(err, format!("tresor: error: {}: NOAUTH Authentication required.\n", server.url()));
    let wrong = env.cmd(&["backup", &server.url()]).env("TRESOR_REDIS_PASSWORD", "nope").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&wrong.stderr),
        format!("tresor: error: {}: authentication failed: WRONGPASS invalid username-password pair or user is disabled.\n", server.url())
    );
    let ok = env.cmd(&["backup", &server.url()]).env("TRESOR_REDIS_PASSWORD", "s3cret").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let with_secret = format!("redis://default:s3cret@127.0.0.1:{}", server.port());
    env.ok(&["backup", &with_secret]);
    let listing = env.ok(&["snapshots", "--json"]);
    assert!(!listing.contains("s3cret"), "the password is never stored: {listing}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);

    let port = tresor_testkit::net::free_port();
    let err = env.fails(&["backup", &format!("redis://127.0.0.1:{port}")], 1);
    assert_eq!(err, format!("tresor: error: redis://127.0.0.1:{port}: cannot connect: Connection refused (os error 111)\n"));

    let mut rdb = b"REDIS0011".to_vec();
    rdb.extend_from_slice(&[0xfe, 0x00, 0xff]);
    let crc = tresor_sources::crc64(&rdb);
    let mut corrupt = rdb.clone();
    corrupt.extend_from_slice(&(crc ^ 1).to_le_bytes());
    let err = env.fails(&["backup", &fake_master(corrupt, None)], 1);
    assert!(err.contains("the RDB fails its CRC64 check") && err.ends_with("no snapshot was saved\n"), "{err}");
    let mut whole = rdb.clone();
    whole.extend_from_slice(&crc.to_le_bytes());
    let err = env.fails(&["backup", &fake_master(whole.clone(), Some(10))], 1);
    assert!(err.contains("the server closed the connection after 10 of 20 bytes of the RDB"), "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2, "no snapshot from a failed stream");
    env.ok(&["backup", &fake_master(whole, None)]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3, "the intact stream is accepted");
}

/// A restore into a running instance that fails mid-stream leaves it a
/// master that takes writes, holding what it held: never a replica of
/// tresor's closed port, refusing every write.
#[test]
fn a_redis_restore_that_fails_leaves_the_instance_a_master_with_its_data() {
    let env = Env::new();
    env.ok(&["init"]);
    let source = RedisServer::start(&[]);
    let values = random_bytes(12 << 20, 23);
    let sets: String = values.chunks(8192).enumerate().map(|(i, v)| format!("SET k{i} {}\n", hex(v))).collect();
    source.script(&sets);
    env.ok(&["backup", &source.url()]);
    let pack = biggest(&Path::new(&env.repo).join("data"));
    flip_byte(&pack, fs::metadata(&pack).unwrap().len() * 3 / 4);

    let target = RedisServer::start(&[]);
    target.cli(&["SET", "kept", "1"]);
    let err = env.fails(&["restore", "latest", "--to", &target.url(), "--flush"], 1);
    assert!(err.starts_with("tresor: error: blob ") && err.ends_with(" is damaged: it fails authentication\n"), "{err}");
    assert_eq!(target.cli(&["ROLE"]).lines().next(), Some("master"));
    assert_eq!(target.cli(&["SET", "after", "2"]), "OK", "it takes writes");
    assert_eq!(target.cli(&["GET", "kept"]), "1", "and keeps what it held");
    assert_eq!(target.cli(&["CONFIG", "GET", "masterauth"]), "masterauth", "its masterauth is its own (none) again");
}

/// An instance that refuses REPLICAOF (renamed away, as managed Redis
/// services do) fails the restore in one line saying so, and is left as it
/// was: a master holding its data, its own masterauth put back.
#[test]
fn a_redis_restore_refused_replicaof_leaves_the_instance_as_it_was() {
    let env = Env::new();
    env.ok(&["init"]);
    let source = RedisServer::start(&[]);
    source.script("SET a 1\n");
    env.ok(&["backup", &source.url()]);
    let target = RedisServer::start(&["--rename-command", "REPLICAOF", ""]);
    target.cli(&["CONFIG", "SET", "masterauth", "its-own"]);
    target.cli(&["SET", "kept", "1"]);
    let err = env.fails(&["restore", "latest", "--to", &target.url(), "--flush"], 1);
    let said = format!(
        "tresor: error: {}: the instance refused REPLICAOF: ERR unknown command 'REPLICAOF', with args beginning with: ",
        target.url()
    );
    assert!(err.starts_with(&said) && err.lines().count() == 1, "{err}");
    assert_eq!(target.cli(&["ROLE"]).lines().next(), Some("master"));
    assert_eq!(target.cli(&["GET", "kept"]), "1");
    assert_eq!(target.cli(&["CONFIG", "GET", "masterauth"]), "masterauth\nits-own", "its own masterauth is back");
}

/// Where CONFIG is refused, the instance is known by its address instead:
/// the restore goes through, and the instance is a master again after.
#[test]
fn a_redis_restore_without_config_knows_the_instance_by_its_address() {
    let env = Env::new();
    env.ok(&["init"]);
    let source = RedisServer::start(&[]);
    source.script("SET a 1\nSET b 2\n");
    env.ok(&["backup", &source.url()]);
    let target = RedisServer::start(&["--rename-command", "CONFIG", ""]);
    let out = env.json(&["restore", "latest", "--to", &target.url()]);
    assert_eq!(out["result"], format!("{} loaded the RDB and holds 2 keys", target.url()));
    assert_eq!((target.cli(&["GET", "b"]).as_str(), target.cli(&["ROLE"]).lines().next()), ("2", Some("master")));
}

/// While the server runs a background save it holds its PSYNC reply back,
/// sending newlines: the backup waits through them for the data.
#[test]
fn a_redis_backup_waits_through_a_background_save() {
    let env = Env::new();
    env.ok(&["init"]);
    let server = saving_slowly();
    env.ok(&["backup", &server.url()]);
    assert_eq!(env.json(&["snapshots"])[0]["source"]["consistency"]["keys"], 50);
}

/// A Redis server holding `k0`..`k49`, busy with a background save of
/// 3 s (60 ms a key) that the fork for a replica waits for.
fn saving_slowly() -> RedisServer {
    let server = RedisServer::start(&["--repl-diskless-sync-delay", "0"]);
    server.script(&(0..50).map(|i| format!("SET k{i} v{i}\n")).collect::<String>());
    server.cli(&["CONFIG", "SET", "rdb-key-save-delay", "60000"]);
    assert_eq!(server.cli(&["BGSAVE"]), "Background saving started");
    server
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Commands run with `TRESOR_STATE` join the daemon's audit trail naming
/// their repository and targets: each URL there without its password, what
/// the command did with it (success or the one-line error) alike.
#[test]
fn the_audit_trail_names_each_url_of_a_command_without_its_password() {
    let env = Env::new();
    env.ok(&["init"]);
    let server = RedisServer::start(&["--requirepass", "s3cret"]);
    server.cli(&["-a", "s3cret", "--no-auth-warning", "SET", "k", "v"]);
    let (url, shown) =
        (format!("redis://default:s3cret@127.0.0.1:{}", server.port()), format!("redis://default:***@127.0.0.1:{}", server.port()));
    let webdav = "webdavs://backup:hunter2@dav.example/repo";
    let state = env.path("state.db");
    let audited = |args: &[&str]| env.cmd(args).env("TRESOR_STATE", &state).output().unwrap();
    assert!(audited(&["backup", &url]).status.success());
    assert!(audited(&["restore", "latest", "--to", &url, "--flush"]).status.success());
    assert_eq!(server.cli(&["-a", "s3cret", "--no-auth-warning", "GET", "k"]), "v", "the restore reached the instance");
    assert_eq!(audited(&["restore", "latest", "--to", &url]).status.code(), Some(1));
    assert_eq!(audited(&["copy", "--to", webdav]).status.code(), Some(1));
    assert_eq!(audited(&["forget", "--keep-last", "1", "-r", webdav]).status.code(), Some(1));

    let trail = env.json(&["audit", "--state", state.to_str().unwrap()]);
    assert!(!trail.to_string().contains("s3cret") && !trail.to_string().contains("hunter2"), "{trail}");
    let entries: Vec<Vec<String>> = trail
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| ["action", "target", "result", "detail"].iter().map(|k| e[k].as_str().unwrap().to_string()).collect())
        .collect();
    let repo = &env.repo;
    let refused = "invalid repository location \"webdavs://backup:***@dav.example/repo\": \
        put credentials in TRESOR_WEBDAV_USER and TRESOR_WEBDAV_PASSWORD, not in the URL";
    assert_eq!(
        entries,
        [
            ["backup", &format!("{repo} {shown}"), "succeeded", ""],
            ["restore", &format!("{repo} latest to {shown}"), "succeeded", ""],
            [
                "restore",
                &format!("{repo} latest to {shown}"),
                "failed",
                &format!(
                    "redis://default@127.0.0.1:{}: the instance holds 1 keys; restoring replaces them all: add --flush to allow it",
                    server.port()
                )
            ],
            ["copy", &format!("{repo} to webdavs://backup:***@dav.example/repo"), "failed", refused],
            ["forget", "webdavs://backup:***@dav.example/repo", "failed", refused],
        ]
        .map(|e| e.map(String::from)),
        "{trail}"
    );
}

/// A one-connection fake master that sends `rdb` (cut after `cut` bytes).
fn fake_master(rdb: Vec<u8>, cut: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            for (cmd, reply) in
                [("INFO", "$16\r\ndb0:keys=1,x=0\r\n\r\n".to_string()), ("RANDOMKEY", "$-1\r\n".into()), ("REPLCONF", "+OK\r\n".into())]
            {
                if let Some(at) = seen.find(cmd) {
                    seen.replace_range(..at + cmd.len(), "");
                    s.write_all(reply.as_bytes()).unwrap();
                }
            }
            if seen.contains("PSYNC") {
                let mut out = format!("+FULLRESYNC 0123456789abcdef 77\r\n\n${}\r\n", rdb.len()).into_bytes();
                out.extend_from_slice(&rdb[..cut.unwrap_or(rdb.len())]);
                s.write_all(&out).unwrap();
                return;
            }
        }
    });
    format!("redis://127.0.0.1:{port}")
}

#[test]
fn command_sources_stream_stdout_and_fail_with_the_commands_message() {
    let env = Env::new();
    env.ok(&["init"]);
    let data = env.path("export.sql");
    fs::write(&data, random_bytes(3 << 20, 77)).unwrap();
    // A URL in the command is recorded and named without its password.
    let src = format!("command:cat {}; true postgres://app:hunter2@db/shop", data.display());
    env.ok(&["backup", &src, "--stdin-filename", "export.sql"]);
    let snap = &env.json(&["snapshots"])[0];
    let recorded = format!("command:cat {}; true postgres://app:***@db/shop", data.display());
    assert_eq!((snap["source"]["kind"].as_str(), snap["source"]["url"].as_str()), (Some("command"), Some(recorded.as_str())));
    let out = env.cmd(&["dump", "latest", "export.sql"]).output().unwrap();
    assert!(out.stdout == fs::read(&data).unwrap(), "byte-identical");
    let failing = "command:true postgres://app:hunter2@db/shop; head -c 100000 /dev/zero; \
        echo 'mariadb-dump: Got error: 1045: Access denied' >&2; exit 2";
    let err = env.fails(&["backup", failing], 1);
    assert_eq!(
        err,
        "tresor: error: command \"true postgres://app:***@db/shop; head -c 100000 /dev/zero; \
         echo 'mariadb-dump: Got error: 1045: Access denied' >&2; exit 2\" failed (exit status: 2): \
         mariadb-dump: Got error: 1045: Access denied; no snapshot was saved\n"
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);

    // Restore pipes the stream into a program, whose failure is reported.
    let copy = env.path("copy.sql");
    env.ok(&["restore", "latest", "--to", &format!("command:cat > {}", copy.display())]);
    assert!(fs::read(&copy).unwrap() == fs::read(&data).unwrap(), "byte-identical through the restore command");
    let err = env.fails(&["restore", "latest", "--to", "command:cat > /dev/null; echo 'ERROR 1049: Unknown database' >&2; exit 1"], 1);
    assert!(err.ends_with("failed (exit status: 1): ERROR 1049: Unknown database\n"), "{err}");
}

/// A stream whose later blob is damaged reaches its program only in part,
/// and the program is stopped, never given the end of its input: what it
/// would do with a whole stream (commit, load, `touch finished`) it never does.
#[test]
fn a_stream_cut_short_by_a_damaged_blob_never_reaches_its_programs_end() {
    let env = Env::new();
    env.ok(&["init"]);
    let data = env.path("data.bin");
    fs::write(&data, random_bytes(12 << 20, 17)).unwrap();
    env.ok(&["backup", &format!("command:cat {}", data.display())]);
    let pack = biggest(&Path::new(&env.repo).join("data"));
    flip_byte(&pack, fs::metadata(&pack).unwrap().len() * 3 / 4);
    let (copy, finished) = (env.path("copy.bin"), env.path("finished"));
    let to = format!("command:cat > {}; touch {}", copy.display(), finished.display());
    let err = env.fails(&["restore", "latest", "--to", &to], 1);
    let blob = err.strip_prefix("tresor: error: blob ").and_then(|e| e.strip_suffix(" is damaged: it fails authentication\n"));
    assert!(blob.is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())), "{err}");
    assert!(!finished.exists(), "the program was given the end of its input");
    let (got, want) = (fs::read(&copy).unwrap_or_default(), fs::read(&data).unwrap());
    assert!(got.len() < want.len() && want.starts_with(&got), "a prefix of the stream: {} of {} bytes", got.len(), want.len());
}

pub(super) fn row_counts(pg: &PostgresServer, db: &str) -> String {
    pg.psql(
        db,
        "SELECT (SELECT count(*) FROM pgbench_accounts) || ',' || (SELECT count(*) FROM pgbench_branches) || ',' || \
         (SELECT count(*) FROM pgbench_tellers) || ',' || (SELECT sum(abalance) FROM pgbench_accounts)",
    )
}

/// A logical restore keeps who owns what, and the database's own owner,
/// privileges and settings: everything came back owned by the restoring
/// role, and a database closed to PUBLIC let everyone connect. Where the
/// owners' roles are missing the restore says whose the objects are.
#[test]
fn postgres_restore_keeps_owners_privileges_and_settings() {
    let env = Env::new();
    env.ok(&["init"]);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE ROLE app LOGIN");
    pg.psql("postgres", "CREATE DATABASE own OWNER app");
    pg.psql("postgres", "REVOKE CONNECT ON DATABASE own FROM PUBLIC");
    pg.psql("postgres", "ALTER DATABASE own SET work_mem TO '64MB'");
    pg.psql(
        "own",
        "CREATE SCHEMA s AUTHORIZATION app; CREATE TABLE s.t (id int); ALTER TABLE s.t OWNER TO app; INSERT INTO s.t VALUES (1)",
    );
    let bin = PostgresServer::bin_dir().display().to_string();
    let run = |args: &[&str]| env.cmd(args).env("TRESOR_PG_BIN", &bin).output().unwrap();
    assert!(run(&["backup", &pg.url("own")]).status.success());
    let out = run(&["restore", "latest", "--to", &pg.url("own2")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).split(": ").last(), Some(format!("{} restored, 1 tables\n", pg.url("own2")).as_str()));
    let database = "SELECT pg_get_userbyid(datdba) || ' ' || datacl::text || ' ' || \
                    (SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0) \
                    FROM pg_database d WHERE datname = 'own2'";
    assert_eq!(pg.psql("postgres", database), "app {app=CTc/app,=T/app} {work_mem=64MB}");
    let owners = "SELECT (SELECT tableowner FROM pg_tables WHERE tablename = 't') || ' ' || pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 's'";
    assert_eq!(pg.psql("own2", owners), "app app");

    let bare = PostgresServer::start();
    let out = run(&["restore", "latest", "--to", &bare.url("own")]);
    let said = format!(
        "{} restored, 1 tables; owned by the restoring role, as roles app do not exist here (restore the cluster's roles first)\n",
        bare.url("own")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).split(": ").last(), Some(said.as_str()), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bare.psql("own", owners), "postgres postgres");
    // Still closed to PUBLIC, and its settings kept, without the role it was owned by.
    let acl = "SELECT datacl::text || ' ' || (SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0) \
               FROM pg_database d WHERE datname = 'own'";
    assert_eq!(bare.psql("postgres", acl), "{postgres=CTc/postgres,=T/postgres} {work_mem=64MB}");
}

#[test]
fn postgres_logical_round_trip_with_row_counts() {
    let env = Env::new();
    env.ok(&["init"]);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.pgbench_init("shop", 1);
    pg.psql("shop", "UPDATE pgbench_accounts SET abalance = aid % 97 WHERE aid % 3 = 0");
    let before = row_counts(&pg, "shop");
    assert!(before.starts_with("100000,1,10,"), "{before}");
    let bin = PostgresServer::bin_dir().display().to_string();
    let run = |args: &[&str]| env.cmd(args).env("TRESOR_PG_BIN", &bin).output().unwrap();
    let out = run(&["backup", &pg.url("shop")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["kind"], "postgres");
    assert!(snap["source"]["consistency"]["lsn"].as_str().unwrap().contains('/'), "{snap}");
    assert_eq!(snap["source"]["consistency"]["timeline"], 1);

    let out = run(&["restore", "latest", "--to", &pg.url("shop_restored")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(row_counts(&pg, "shop_restored"), before);
    let out = run(&["restore", "latest", "--to", &pg.url("shop_restored")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: {}: the database has 4 tables; restoring replaces them: add --flush to allow it\n",
            pg.url("shop_restored")
        )
    );
    pg.psql("shop_restored", "DELETE FROM pgbench_accounts WHERE aid > 50000");
    let out = run(&["restore", "latest", "--to", &pg.url("shop_restored"), "--flush"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(row_counts(&pg, "shop_restored"), before, "--flush put every row back");
    let out = run(&["restore", "latest", "--to", &pg.url("shop_parallel"), "--jobs", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(row_counts(&pg, "shop_parallel"), before, "a parallel restore");
    // A --flush that fails halfway leaves the database as it was (it
    // dropped the tables it got to, and the data was gone both ways), and
    // says PostgreSQL's reason, not pg_restore's last line.
    pg.psql("shop_restored", "CREATE VIEW recent AS SELECT aid FROM pgbench_accounts WHERE aid > 99000");
    pg.psql("shop_restored", "DELETE FROM pgbench_accounts WHERE aid > 99500");
    let changed = row_counts(&pg, "shop_restored");
    let out = run(&["restore", "latest", "--to", &pg.url("shop_restored"), "--flush"]);
    let why = "could not execute query: ERROR:  cannot drop table public.pgbench_accounts because other objects depend on it \
               (view public.recent depends on table public.pgbench_accounts)";
    let said = format!("tresor: error: pg_restore into {}: failed (exit status: 1): {why}\n", pg.url("shop_restored"));
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()), (Some(1), said));
    assert_eq!((row_counts(&pg, "shop_restored"), pg.psql("shop_restored", "SELECT count(*) FROM recent")), (changed, "500".into()));
    let out = run(&["restore", "latest", "--to", &pg.url("shop_restored"), "--flush", "--jobs", "2"]);
    let said = format!(
        "tresor: error: {}: the database has 4 tables, and a parallel restore (--jobs 2) that fails halfway cannot be undone: \
         restore with --jobs 1 (one transaction) or into an empty database\n",
        pg.url("shop_restored")
    );
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()), (Some(1), said));

    // The cluster's globals: roles, restored into another cluster.
    pg.psql("postgres", "CREATE ROLE reporting LOGIN PASSWORD 'r3port' CONNECTION LIMIT 7");
    let out = run(&["backup", &pg.cluster_url()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let globals = env.json(&["snapshots"]).as_array().unwrap().last().unwrap().clone();
    assert_eq!(globals["source"]["consistency"]["globals"], true, "{globals}");
    let other = PostgresServer::start();
    let out = run(&["restore", "latest", "--to", &other.cluster_url()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let role = "SELECT rolname || ',' || rolcanlogin || ',' || rolconnlimit FROM pg_roles WHERE rolname = 'reporting'";
    assert_eq!(other.psql("postgres", role), "reporting,true,7");
    let out = run(&["restore", "latest", "--to", &other.cluster_url()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: {}: the cluster has roles (reporting); restoring sets their attributes and passwords from the backup: add --flush to allow it\n",
            other.cluster_url()
        )
    );

    let out = run(&["backup", &pg.url("nosuchdb")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: {}: connection to server at \"127.0.0.1\", port {} failed: FATAL:  database \"nosuchdb\" does not exist\n",
            pg.url("nosuchdb"),
            pg.port()
        )
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2, "no snapshot from a failed dump");

    // The URL's query reaches the client programs, as it would reach psql's.
    let out = run(&["backup", &format!("{}?sslmode=require", pg.url("shop"))]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: {}: connection to server at \"127.0.0.1\", port {} failed: server does not support SSL, but SSL was required\n",
            pg.url("shop"),
            pg.port()
        )
    );
    let out = run(&["backup", &format!("{}?sslmode=disable&application_name=tresor%20test", pg.url("shop"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[2]["source"]["url"], pg.url("shop"), "named without its query");
    let out = run(&["restore", &snaps[2]["id"].as_str().unwrap()[..8], "--to", &format!("{}?sslmode=disable", pg.url("shop_q"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(row_counts(&pg, "shop_q"), before);
}

#[test]
fn hooks_run_around_a_backup_with_time_limits_and_on_error() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data"), "payload").unwrap();
    let log = env.path("post.log");
    let pre = format!("echo frozen > {}/marker", src.display());
    let post = format!("echo \"$TRESOR_BACKUP_STATUS $TRESOR_SNAPSHOT_ID\" > {}", log.display());
    let out = env.json(&["backup", src.to_str().unwrap(), "--pre-hook", &pre, "--post-hook", &post]);
    let id = out["snapshot_id"].as_str().unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), format!("success {id}\n"));
    assert!(env.ok(&["ls", "latest"]).contains("/marker"), "the pre-hook ran before the files were read");

    let failing = "echo 'fsfreeze: cannot freeze /data' >&2; exit 1";
    let err = env.fails(&["backup", src.to_str().unwrap(), "--pre-hook", failing, "--post-hook", &post], 1);
    assert_eq!(err, format!("tresor: error: pre hook {failing:?}: failed (exit status: 1): fsfreeze: cannot freeze /data\n"));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1, "no backup after a failed pre-hook");
    let out = env.run(&["backup", src.to_str().unwrap(), "--pre-hook", failing, "--on-error", "continue"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("warning: pre hook"), "{out:?}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);

    let err = env.fails(&["backup", src.to_str().unwrap(), "--pre-hook", "sleep 30", "--hook-timeout", "1"], 1);
    assert_eq!(err, "tresor: error: pre hook \"sleep 30\": timed out after 1s and was killed\n");
    let err = env.fails(&["backup", "command:exit 4", "--post-hook", &post], 1);
    assert!(err.contains("failed (exit status: 4)"), "{err}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "failure \n", "the post-hook runs after a failed backup too");
}

/// Hooks and `command:` sources see none of the variables tresor takes its
/// secrets from: a hook that logs its environment, or a source that is
/// `env`, would otherwise write the repository's password down.
#[test]
fn hooks_and_command_sources_never_see_the_repository_password() {
    let env = Env::new();
    env.ok(&["init"]);
    let (pre, post) = (env.path("pre.env"), env.path("post.env"));
    let secrets = [("TRESOR_PASSWORD", "correct horse"), ("TRESOR_NEW_PASSWORD", "new-pw-123"), ("TRESOR_API_TOKEN", "token-456")];
    let mut backup = env.cmd(&["backup", "command:env", "--stdin-filename", "env.txt"]);
    backup.args(["--pre-hook", &format!("env > {}", pre.display()), "--post-hook", &format!("env > {}", post.display())]);
    let out = backup.envs(secrets).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = env.ok(&["dump", "latest", "env.txt"]);
    for (what, seen) in
        [("pre-hook", fs::read_to_string(&pre).unwrap()), ("post-hook", fs::read_to_string(&post).unwrap()), ("source", stored)]
    {
        assert!(seen.lines().any(|l| l.starts_with("PATH=")), "{what} printed no environment: {seen}");
        for (var, value) in secrets {
            assert!(!seen.contains(var) && !seen.contains(value), "{what} saw {var}: {seen}");
        }
        for var in ["TRESOR_PASSWORD_FILE", "TRESOR_REPOSITORY"] {
            assert!(!seen.contains(var), "{what} saw {var}: {seen}");
        }
    }
}

/// A backup that stops reading its source before the end, here because the
/// repository's disk is full, kills the source's program and reaps it: it
/// had data left to give and then sleeps ten minutes, and is gone as soon
/// as tresor has exited (an orphan would have been taken over by init and
/// still run). The data is six times the disk: with three times as much
/// (48 MB), the engine had read it all before a pack write failed, and
/// waited for the end of a stream that had ended but for `sleep`.
#[test]
fn a_command_source_is_killed_when_the_backup_stops_reading_it() {
    let mut env = Env::new();
    let disk = super::restic::Tmpfs::mount(env.path("disk"), "size=16m");
    env.repo = disk.0.join("repo").display().to_string();
    env.ok(&["init"]);
    let pidfile = env.path("pid");
    let src = format!("command:echo $$ > {}; head -c 100000000 /dev/urandom; exec sleep 600", pidfile.display());
    let out = env.run(&["backup", &src]);
    let pid: libc::pid_t = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: kill only signals; the pid is the program's, ours to stop.
    let alive = unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(!alive, "the program (pid {pid}) outlived the backup");
    // The pack's name and how much of it fitted vary with the random data;
    // so does which write meets the full disk: one of a piece names its
    // size, the one that closes the pack does not.
    let err = String::from_utf8(out.stderr).unwrap();
    let pack = err.split(' ').nth(5).unwrap_or_default();
    let field = |name: &str| err.split(&format!(" {name}: ")).nth(1).and_then(|w| w.split([',', ' ']).next());
    let size = field("size").map(|s| format!("size: {s}, ")).unwrap_or_default();
    let written = field("written").unwrap_or_default();
    assert!(pack.len() == 72 && written.parse::<u64>().is_ok(), "{err}");
    assert_eq!(
        (out.status.code(), err.as_str()),
        (
            Some(1),
            format!(
                "tresor: error: storage write of {pack} failed: Unexpected (persistent) at write, context: \
                 {{ service: fs, path: {pack}, {size}written: {written} }} => no storage space, source: No space left on device (os error 28)\n"
            )
            .as_str()
        )
    );
}

/// A URL of a kind tresor does not take (so taken for a path), and a bucket
/// URL with credentials in it, which the bucket source refuses: each named
/// without its secret.
#[test]
fn a_url_tresor_does_not_take_is_named_without_its_password() {
    let env = Env::new();
    env.ok(&["init"]);
    let err = env.fails(&["backup", "mysql://root:pw-secret@db/shop"], 1);
    assert_eq!(err, "tresor: error: cannot back up mysql://root:***@db/shop: No such file or directory (os error 2)\n");
    let err = env.fails(&["backup", "bucket+s3://AKIA:key-secret@bucket/prefix"], 1);
    assert!(err.starts_with("tresor: error: bucket+s3://AKIA:***@bucket/prefix: ") && !err.contains("key-secret"), "{err}");
}

/// A Redis target is looked at before it is touched (an operator's review:
/// each of these wiped or broke a live instance). A snapshot of another
/// kind is refused (a stream handed over as an RDB made Redis flush
/// itself, then fail to load it); a replica is refused (made tresor's
/// replica, it left its master for good); an instance whose maxmemory
/// evicts keys as it loads fails the restore (it said every key was in).
#[test]
fn a_redis_restore_refuses_what_would_wipe_detach_or_thin_the_instance() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut stream = env.cmd(&["backup", "--stdin", "--stdin-filename", "notes.txt"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut stream.stdin.take().unwrap(), b"hello\n").unwrap();
    assert!(stream.wait_with_output().unwrap().status.success());
    let notes = env.json(&["snapshots"])[0]["short_id"].as_str().unwrap().to_string();
    let target = RedisServer::start(&[]);
    target.cli(&["SET", "kept", "1"]);
    let err = env.fails(&["restore", "latest", "--to", &target.url(), "--flush"], 1);
    let said = format!(
        "tresor: error: snapshot {notes} cannot be restored there: it is a stdin stream that holds no redis data, and --to redis:// takes a snapshot of redis; name one by its id, or narrow latest with --tag or --host\n"
    );
    assert_eq!(err, said);
    assert_eq!(target.cli(&["GET", "kept"]), "1", "untouched");

    let source = RedisServer::start(&[]);
    let values = random_bytes(4 << 20, 7);
    let sets: String = values.chunks(4096).enumerate().map(|(i, v)| format!("SET k{i} {}\n", hex(v))).collect();
    source.script(&sets);
    let id = env.json(&["backup", &source.url()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let replica = RedisServer::start(&[]);
    let port = source.port().to_string();
    replica.cli(&["REPLICAOF", "127.0.0.1", &port]);
    let err = env.fails(&["restore", &id, "--to", &replica.url(), "--flush"], 1);
    let said = format!(
        "tresor: error: {}: the instance is a replica of 127.0.0.1:{port}: restoring would detach it from its master and make it one; restore into the master, or detach this one first (REPLICAOF NO ONE)\n",
        replica.url()
    );
    assert_eq!(err, said);
    assert_eq!(replica.cli(&["ROLE"]).lines().next(), Some("slave"), "still its master's replica");

    let small = RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let err = env.fails(&["restore", &id, "--to", &small.url()], 1);
    let said = format!("tresor: error: {}: the instance evicted ", small.url());
    assert!(err.starts_with(&said) && err.ends_with(" keys while it loaded the RDB (maxmemory 2097152 bytes): it does not hold the whole snapshot; raise its maxmemory and restore again\n"), "{err}");
}
