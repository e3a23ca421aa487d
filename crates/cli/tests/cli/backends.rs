//! Every storage backend against a real server started for the test: the
//! same round trip, dedup, prune, injected faults and tampering on each, and
//! each backend's bad input failing in one line, fast.

use std::any::Any;
use std::time::{Duration, Instant};

use tresor_testkit::{RudeServer, Rudeness, SshServer, WebdavServer};

use super::*;

/// The repository URL for a name, and where its objects lie on disk.
type Locate = Box<dyn Fn(&str) -> (String, PathBuf)>;

/// A server and how to point tresor at a repository on it.
struct Backend {
    name: &'static str,
    vars: Vec<(String, String)>,
    repo: Locate,
    _server: Box<dyn Any>,
}

impl Backend {
    fn env(&self, name: &str) -> (Env, PathBuf) {
        let (url, data) = (self.repo)(name);
        (Env::with_repo(tempfile::tempdir().unwrap(), url, self.vars.clone()), data)
    }
}

fn sftp_vars(server: &SshServer) -> Vec<(String, String)> {
    vec![
        ("TRESOR_SFTP_KEY".to_string(), server.key().display().to_string()),
        ("TRESOR_SFTP_KNOWN_HOSTS".to_string(), server.known_hosts().display().to_string()),
    ]
}

fn sftp() -> Backend {
    let server = SshServer::start();
    let (user, port, dir) = (server.user(), server.port(), server.dir().to_path_buf());
    Backend {
        name: "sftp",
        vars: sftp_vars(&server),
        repo: Box::new(move |name| (format!("sftp://{user}@127.0.0.1:{port}{}/{name}", dir.display()), dir.join(name).join("data"))),
        _server: Box::new(server),
    }
}

fn webdav() -> Backend {
    let server = WebdavServer::start();
    let (port, root) = (server.port(), server.root());
    Backend {
        name: "webdav",
        vars: server.env(),
        repo: Box::new(move |name| (format!("webdav://127.0.0.1:{port}/{name}"), root.join(name).join("data"))),
        _server: Box::new(server),
    }
}

/// Dedup, prune and retried faults on one repository.
fn dedup_prune_and_faults(b: &Backend) {
    let (env, _) = b.env("suite");
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(3 << 20, 21);
    fs::write(src.join("a.bin"), &data).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::write(src.join("copy.bin"), &data).unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert!(second["data_added"].as_u64().unwrap() < 64 << 10, "{}: a copy adds no data: {second}", b.name);

    for i in 0..10 {
        fs::write(src.join(format!("{i}.bin")), random_bytes(200_000, 100 + i)).unwrap();
    }
    let flaky = env.cmd(&["backup", src.to_str().unwrap()]).env("TRESOR_FAULTS", "error-rate=0.1,seed=42").output().unwrap();
    assert!(flaky.status.success(), "{}: {}", b.name, String::from_utf8_lossy(&flaky.stderr));
    let target = env.path("flaky-out");
    let out = env
        .cmd(&["restore", "latest", "--target", target.to_str().unwrap()])
        .env("TRESOR_FAULTS", "error-rate=0.1,seed=43")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
    assert_eq!(inventory(&src), inventory(&restored(&env, "flaky-out", &src)), "{}", b.name);

    fs::remove_file(src.join("a.bin")).unwrap();
    fs::remove_file(src.join("copy.bin")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let before = env.json(&["stats"])["total_stored_size"].as_u64().unwrap();
    env.ok(&["forget", "--keep-last", "1"]);
    env.ok(&["prune", "--max-unused", "0"]);
    let after = env.json(&["stats"])["total_stored_size"].as_u64().unwrap();
    assert!(after < before - (2 << 20), "{}: prune freed a.bin: {before} -> {after}", b.name);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"), "{}", b.name);
    env.ok(&["restore", "latest", "--target", env.path("last").to_str().unwrap()]);
    assert_eq!(inventory(&src), inventory(&restored(&env, "last", &src)), "{}", b.name);
}

fn suite(b: &Backend) {
    dedup_prune_and_faults(b);
    let (env, data) = b.env("conformance");
    conformance(&env, &data);
}

/// Runs `args`, demands it fails with `code` within `limit`, in one line
/// that contains every one of `says`; returns the line.
fn fails_fast(env: &Env, args: &[&str], code: i32, limit: Duration, says: &[&str]) -> String {
    let started = Instant::now();
    let out = env.run(args);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "tresor {args:?}: {err}");
    assert!(took < limit, "tresor {args:?} took {took:?}: {err}");
    assert!(err.starts_with("tresor: error: ") && err.lines().count() == 1, "one line: {err}");
    for s in says {
        assert!(err.contains(s), "{s:?} in {err}");
    }
    err
}

fn with_var(env: &mut Env, key: &str, value: &str) {
    env.vars.retain(|(k, _)| k != key);
    env.vars.push((key.to_string(), value.to_string()));
}

#[test]
fn sftp_conformance() {
    suite(&sftp());
}

#[test]
fn sftp_login_failures_end_in_one_line_within_seconds() {
    let server = SshServer::start();
    let limit = Duration::from_secs(10);
    let repo = format!("sftp://{}@127.0.0.1:{}{}/repo", server.user(), server.port(), server.dir().display());
    let mut env = Env::with_repo(tempfile::tempdir().unwrap(), repo, sftp_vars(&server));
    let port = server.port();
    let empty = env.path("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    with_var(&mut env, "TRESOR_SFTP_KNOWN_HOSTS", empty.to_str().unwrap());
    let keyscan = format!("ssh-keyscan -p {port} 127.0.0.1 >> {}", empty.display());
    fails_fast(&env, &["init"], 1, limit, &["is not in", &keyscan, "TRESOR_SFTP_HOST_KEY_CHECK=accept-new"]);

    // accept-new records the key, after which strict checking lets it in.
    with_var(&mut env, "TRESOR_SFTP_HOST_KEY_CHECK", "accept-new");
    env.ok(&["init"]);
    with_var(&mut env, "TRESOR_SFTP_HOST_KEY_CHECK", "strict");
    assert_eq!(env.json(&["snapshots"]), serde_json::json!([]));

    with_var(&mut env, "TRESOR_SFTP_KEY", server.stranger_key().to_str().unwrap());
    fails_fast(&env, &["snapshots"], 1, limit, &["refused the login with", "Permission denied", "authorized_keys"]);

    let blocked = Env::with_repo(tempfile::tempdir().unwrap(), env.repo.replace("/repo", "/sshd.log/repo"), sftp_vars(&server));
    fails_fast(&blocked, &["init"], 1, limit, &["does not exist on the server and cannot be created"]);
}

#[test]
fn sftp_servers_that_hang_up_stay_silent_or_are_gone_fail_fast() {
    let server = SshServer::start();
    let limit = Duration::from_secs(10);
    let at = |port: u16| {
        let mut e = Env::with_repo(tempfile::tempdir().unwrap(), format!("sftp://me@127.0.0.1:{port}/srv/repo"), sftp_vars(&server));
        with_var(&mut e, "TRESOR_STORAGE_TIMEOUT", "2");
        e
    };
    let rude = RudeServer::start(Rudeness::HangsUp);
    fails_fast(&at(rude.port()), &["snapshots"], 1, limit, &["closed the connection before login"]);
    let silent = RudeServer::start(Rudeness::Silent);
    fails_fast(&at(silent.port()), &["snapshots"], 1, limit, &["ssh: no answer from 127.0.0.1:", "within 1s", "timed out"]);
    fails_fast(&at(tresor_testkit::net::free_port()), &["snapshots"], 1, limit, &["Connection refused"]);
}

#[test]
fn a_server_that_accepts_and_never_answers_ends_within_the_timeout() {
    let silent = RudeServer::start(Rudeness::Silent);
    let server = tresor_testkit::S3Server::start();
    let mut env = Env::s3(&server);
    with_var(&mut env, "AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{}", silent.port()));
    with_var(&mut env, "TRESOR_STORAGE_TIMEOUT", "2");
    let err = fails_fast(&env, &["snapshots"], 1, Duration::from_secs(8), &["timeout"]);
    assert!(!err.contains(server.secret_key()), "{err}");
    with_var(&mut env, "TRESOR_STORAGE_TIMEOUT", "soon");
    fails_fast(&env, &["snapshots"], 1, Duration::from_secs(8), &["invalid TRESOR_STORAGE_TIMEOUT=\"soon\""]);
}

#[test]
fn webdav_conformance() {
    suite(&webdav());
}

#[test]
fn webdav_bad_input_fails_in_one_line() {
    let server = WebdavServer::start();
    let b = webdav();
    let (mut env, _) = b.env("repo");
    env.repo = format!("webdav://127.0.0.1:{}/repo", server.port());
    with_var(&mut env, "TRESOR_WEBDAV_PASSWORD", "wrong-password");
    let err = fails_fast(&env, &["init"], 1, Duration::from_secs(10), &["service: webdav", "Unauthorized"]);
    assert!(!err.contains("wrong-password") && !err.contains(server.password()), "{err}");
    env.repo = format!("webdav://127.0.0.1:{}/repo", tresor_testkit::net::free_port());
    fails_fast(&env, &["snapshots"], 1, Duration::from_secs(30), &["webdav"]);
}
