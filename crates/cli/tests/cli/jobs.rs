//! The typed job protocol, end to end: permanent failures recorded once and
//! alerted at once, a storage outage retried until it heals, no secret on
//! any command line while jobs run, and a real Alertmanager left with no
//! active alert when its receiver took the failure only after the recovery.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tresor_testkit::{AlertmanagerServer, RedisServer, S3Server};

use super::daemon::{count, http, read_request, start_daemon, wait_jobs};
use super::*;

/// A webhook receiver answering 200; every body it took.
fn receiver() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (_, body) = read_request(&mut s);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            seen.lock().unwrap().push(serde_json::from_str(&body).unwrap_or_default());
        }
    });
    (port, got)
}

fn backups<'a>(j: &'a [serde_json::Value], source: &str) -> Vec<&'a serde_json::Value> {
    j.iter().filter(|x| x["source"] == source && x["kind"] == "backup").collect()
}

#[test]
fn a_wrong_password_or_a_missing_repository_fails_once_and_alerts_at_once() {
    let env = Env::new();
    env.ok(&["init"]);
    fs::write(env.path("wrong"), "not the password\n").unwrap();
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.txt"), "alpha\n").unwrap();
    let (hook, got) = receiver();
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  locked-repo:\n    url: {repo}\n    password_file: {wrong}\n  gone-repo:\n    url: {gone}\n    password_file: {pw}\n  \
             main:\n    url: {repo}\n    password_file: {pw}\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\nsources:\n\
             \x20 - name: locked\n    class: standard\n    url: {files}\n    schedule: \"@daily\"\n    repository: locked-repo\n    retries: 3\n\
             \x20 - name: gone\n    class: standard\n    url: {files}\n    schedule: \"@daily\"\n    repository: gone-repo\n    retries: 3\n\
             \x20 - name: fine\n    class: standard\n    url: {files}\n    schedule: \"@daily\"\n    repository: main\n\
             notifications:\n  - url: http://127.0.0.1:{hook}/hook\ndaemon:\n  retry_backoff: 1s\n  concurrency: 3\n  state: {state}\n",
            repo = env.repo,
            wrong = env.path("wrong").display(),
            gone = env.path("nothing-here").display(),
            pw = env.path("pw").display(),
            files = env.path("files").display(),
            state = env.path("state.db").display(),
        ),
    )
    .unwrap();
    let d = start_daemon(&env, &plan, None);
    let j = wait_jobs(&d, "the first runs", |j| {
        count(j, "locked", "backup", "failed") == 1
            && count(j, "gone", "backup", "failed") == 1
            && count(j, "fine", "backup", "succeeded") == 1
    });
    let reason = |s: &str| (backups(&j, s)[0]["reason"].clone(), backups(&j, s)[0]["temporary"].clone());
    assert_eq!(reason("locked"), (serde_json::json!("wrong_password"), serde_json::json!(false)));
    assert_eq!(reason("gone"), (serde_json::json!("repository_missing"), serde_json::json!(false)));
    // Well past the back-off (1s, 2s, 4s): another backup through the
    // queue, and still one attempt each.
    assert_eq!(http(d.port, "POST", "/api/v1/sources/fine/backup", Some("admin-token")).0, 202);
    wait_jobs(&d, "the second backup", |j| count(j, "fine", "backup", "succeeded") == 2);
    // Watched for longer than the first retry's back-off: none comes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let j = super::daemon::jobs(&d);
        assert_eq!((backups(&j, "locked").len(), backups(&j, "gone").len()), (1, 1), "a permanent failure is not retried: {j:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    for line in [
        "backup_job_failure_total{source=\"locked\",class=\"standard\",reason=\"wrong_password\"} 1",
        "backup_job_failure_total{source=\"gone\",class=\"standard\",reason=\"repository_missing\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "deliveries: {:?}", got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut alerts: Vec<(String, String, String)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|b| (b["event"].as_str().unwrap().into(), b["source"].as_str().unwrap().into(), b["reason"].as_str().unwrap().into()))
        .collect();
    alerts.sort();
    assert_eq!(
        alerts,
        [("failure".into(), "gone".into(), "repository_missing".into()), ("failure".into(), "locked".into(), "wrong_password".into())]
    );
}

/// A TCP forwarder to a server that can be taken off the network: while
/// down, its port refuses connections, as a storage endpoint that is
/// unreachable does. The port lies outside the ephemeral range, so no other
/// socket takes it while it is closed and it can always be bound again.
struct Outage {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Outage {
    fn new(to: u16) -> Outage {
        let listener = tresor_testkit::net::reserved_listener();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                match (&listener, flag.load(Ordering::SeqCst)) {
                    (Some(l), true) => {
                        l.set_nonblocking(true).unwrap();
                        if let Ok((client, _)) = l.accept() {
                            client.set_nonblocking(false).unwrap();
                            forward(client, to);
                        } else {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    (Some(_), false) => listener = None,
                    (None, true) => listener = Some(TcpListener::bind(("127.0.0.1", port)).unwrap()),
                    (None, false) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Outage { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

fn forward(client: TcpStream, to: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { return };
    for (mut from, mut into) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut into);
            let _ = into.shutdown(std::net::Shutdown::Write);
        });
    }
}

#[test]
fn a_storage_outage_is_retried_until_it_heals() {
    let server = S3Server::start();
    let outage = Outage::new(server.endpoint().rsplit(':').next().unwrap().parse().unwrap());
    let mut vars = server.env();
    vars.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    vars.push(("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", outage.port)));
    let env = Env::with_repo(tempfile::tempdir().unwrap(), format!("s3://{}/outage", server.bucket()), vars);
    env.ok(&["init"]);
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.txt"), "alpha\n").unwrap();
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\nsources:\n\
             \x20 - name: files\n    class: standard\n    url: {files}\n    schedule: \"@daily\"\n    retries: 2\n\
             daemon:\n  retry_backoff: 5s\n  state: {state}\n",
            repo = env.repo,
            pw = env.path("pw").display(),
            files = env.path("files").display(),
            state = env.path("state.db").display(),
        ),
    )
    .unwrap();
    outage.set(false);
    let d = start_daemon(&env, &plan, None);
    let j = wait_jobs(&d, "the failure during the outage", |j| count(j, "files", "backup", "failed") == 1);
    outage.set(true);
    let first = backups(&j, "files")[0].clone();
    assert_eq!((&first["reason"], &first["temporary"]), (&serde_json::json!("repository"), &serde_json::json!(true)), "{first}");
    let j = wait_jobs(&d, "the retry once the storage is back", |j| count(j, "files", "backup", "succeeded") == 1);
    let runs: Vec<(&str, &str)> =
        backups(&j, "files").iter().map(|x| (x["trigger"].as_str().unwrap(), x["status"].as_str().unwrap())).collect();
    assert_eq!(runs, [("first", "failed"), ("retry", "succeeded")]);
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    for line in ["backup_repository_errors_total{repository=\"main\"} 1", "backup_jobs_queued 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// Every process's command line, as `ps` shows it to any local user.
fn command_lines() -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit())
            && let Ok(bytes) = fs::read(e.path().join("cmdline"))
        {
            out.push(String::from_utf8_lossy(&bytes).replace('\0', " "));
        }
    }
    out
}

#[test]
fn no_secret_is_on_a_command_line_while_jobs_run() {
    const SECRET: &str = "S3cretPass-4711";
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    // Set through standard input, so that the server's own command line holds no password either.
    redis.script(&format!("SET a 1\nCONFIG SET requirepass {SECRET}\n"));
    let port = redis.url().rsplit(':').next().unwrap().to_string();
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: cache\n    class: standard\n    url: \"redis://default:{SECRET}@127.0.0.1:{port}\"\n    schedule: \"@daily\"\n\
             \x20   hooks:\n      pre: sleep 1\ndaemon:\n  state: {state}\n",
            repo = env.repo,
            pw = env.path("pw").display(),
            state = env.path("state.db").display(),
        ),
    )
    .unwrap();
    let d = start_daemon(&env, &plan, None);
    let (mut children, deadline) = (0, Instant::now() + Duration::from_secs(60));
    while count(&super::daemon::jobs(&d), "cache", "backup", "succeeded") == 0 {
        assert!(Instant::now() < deadline, "the backup did not finish: {:#?}", super::daemon::jobs(&d));
        for line in command_lines() {
            assert!(!line.contains(SECRET), "a command line holds the password: {line}");
            children += usize::from(line.contains(" job run"));
        }
    }
    assert!(children > 0, "the job's child process was seen");
    let j = super::daemon::jobs(&d);
    assert_eq!(backups(&j, "cache").len(), 1, "{j:#?}");
    let (_, body) = http(d.port, "GET", "/api/v1/sources/cache/snapshots", Some("read-token"));
    assert!(!body.contains(SECRET), "the snapshot records the URL without its password: {body}");
}

/// The bodies a receiver took, in order.
type Taken = Arc<Mutex<Vec<serde_json::Value>>>;

/// Between the daemon and a real Alertmanager: refuses every delivery
/// (503) until `open` is set, then forwards each; its port, the bodies
/// forwarded, and how many it refused.
fn gate(am: &Arc<AlertmanagerServer>, open: Arc<AtomicBool>) -> (u16, Taken, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (got, refused) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let (seen, turned_away) = (got.clone(), refused.clone());
    // The thread outlives the test; a strong reference would keep
    // Alertmanager running after it, and its directory on disk.
    let am = Arc::downgrade(am);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (_, body) = read_request(&mut s);
            let code = if let (true, Some(am)) = (open.load(Ordering::SeqCst), am.upgrade()) {
                let (code, _) = am.request("POST", "/api/v2/alerts", &body);
                seen.lock().unwrap().push(serde_json::from_str(&body).unwrap_or_default());
                code
            } else {
                *turned_away.lock().unwrap() += 1;
                503
            };
            let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got, refused)
}

#[test]
fn alertmanager_is_left_with_no_active_alert_when_the_failure_got_through_only_after_the_recovery() {
    let am = Arc::new(AlertmanagerServer::start());
    // The harness tells the two orders apart: a resolution posted before its firing leaves the alert active.
    let probe = |ends: Option<&str>| {
        let mut a = serde_json::json!({"labels": {"alertname": "Probe"}, "startsAt": "2026-11-21T10:00:00Z"});
        if let Some(e) = ends {
            a["endsAt"] = e.into();
        }
        assert_eq!(am.request("POST", "/api/v2/alerts", &serde_json::json!([a]).to_string()).0, 200);
    };
    probe(Some("2026-11-21T10:05:00Z"));
    probe(None);
    assert_eq!(am.active().iter().filter(|a| a["labels"]["alertname"] == "Probe").count(), 1, "the reversed order re-opens it");

    let env = Env::new();
    let open = Arc::new(AtomicBool::new(false));
    let (port, forwarded, refused) = gate(&am, open.clone());
    let flag = env.path("service-up");
    let plan = env.path("plan.yaml");
    let source = format!("command:test -e {} && echo ok || {{ echo 'backend down' >&2; exit 1; }}", flag.display());
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: flaky\n    class: standard\n    url: \"{source}\"\n    schedule: \"*/5 * * * *\"\n    retries: 0\n\
             notifications:\n  - url: http://127.0.0.1:{port}/api/v2/alerts\n    format: alertmanager\n    retries: 8\n\
             daemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    let clock = env.path("clock");
    super::daemon::set_clock(&clock, "2026-11-21T10:01:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));
    wait_jobs(&d, "the failure", |j| count(j, "flaky", "backup", "failed") == 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while *refused.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the failure was never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::write(&flag, "").unwrap();
    super::daemon::set_clock(&clock, "2026-11-21T10:05:01Z");
    wait_jobs(&d, "the recovery", |j| count(j, "flaky", "backup", "succeeded") == 1);
    // Only now does the receiver take anything: the failure, still being retried, must go first.
    open.store(true, Ordering::SeqCst);
    // The next attempt comes when the daemon's backoff (1 s doubling, eight
    // retries, 255 s in all) runs out: up to 128 s from now under load.
    let deadline = Instant::now() + Duration::from_secs(300);
    while forwarded.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "forwarded: {:?}", forwarded.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = forwarded.lock().unwrap().clone();
    assert!(got[0][0].get("endsAt").is_none(), "the firing alert first: {got:?}");
    assert_eq!(got[1][0]["endsAt"], "2026-11-21T10:05:01Z", "{got:?}");
    let active: Vec<_> = am.active().into_iter().filter(|a| a["labels"]["alertname"] == "TresorBackupFailed").collect();
    assert_eq!(active, Vec::<serde_json::Value>::new(), "Alertmanager holds no active alert for the recovered source");
}
