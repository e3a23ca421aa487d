//! The controller: plan checks by line, and the daemon on a loopback port
//! with a clock the test moves (schedules, first runs, retries, API tokens,
//! metrics, a killed daemon, a refused reload), with real sources.

use std::io::Read;
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use tresor_testkit::RedisServer;

use super::*;

/// One HTTP/1.1 request; the status and body (status 0: nobody listens).
pub(super) fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    request(port, method, path, token, "")
}

/// A POST with a JSON body.
pub(super) fn post_json(port: u16, path: &str, token: Option<&str>, body: &serde_json::Value) -> (u16, String) {
    request(port, "POST", path, token, &body.to_string())
}

fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let kind = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    let text = exchange(port, &format!("{method} {path}"), &format!("{auth}{kind}"), body);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The whole response (status line, headers, body) to one HTTP/1.1
/// request with these extra header lines; empty when nobody answers (a TLS
/// port drops the connection).
pub(super) fn exchange(port: u16, request_line: &str, headers: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let head =
        format!("{request_line} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let mut text = String::new();
    if write!(s, "{head}{body}").is_err() || s.read_to_string(&mut text).is_err() {
        return String::new();
    }
    text
}

pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_daemon(env: &Env, plan: &Path, clock: Option<&Path>) -> Daemon {
    spawn_daemon(env, plan, clock, "/readyz")
}

/// A daemon that answers `wait_for` with 200 (a standby is alive, `/healthz`, but not ready).
pub(super) fn spawn_daemon(env: &Env, plan: &Path, clock: Option<&Path>, wait_for: &str) -> Daemon {
    let port = tresor_testkit::net::free_port();
    let mut cmd = env.cmd(&["daemon", "--plan", plan.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}"), "--grace", "5s"]);
    if let Some(clock) = clock {
        cmd.env("TRESOR_CLOCK_FILE", clock);
    }
    let child = cmd
        .env("TRESOR_TICK_MS", "100")
        .env("TRESOR_API_TOKEN", "admin-token")
        .env("TRESOR_API_READ_TOKEN", "read-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Before it is ready the daemon, its state new, rebuilds the job history
    // from the repositories: a repository down at the start (a storage
    // outage) answers only when the storage calls give up, after the
    // retries (about 21 s measured, 25 s of back-off at worst) or the
    // storage timeout (60 s) that bounds them.
    let deadline = Instant::now() + Duration::from_secs(120);
    while http_ok(port, wait_for).is_none() {
        assert!(Instant::now() < deadline, "the daemon did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    Daemon { child, port }
}

fn http_ok(port: u16, path: &str) -> Option<()> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    (http(port, "GET", path, None).0 == 200).then_some(())
}

pub(super) fn jobs(d: &Daemon) -> Vec<serde_json::Value> {
    let (status, body) = http(d.port, "GET", "/api/v1/jobs?limit=200", Some("read-token"));
    assert_eq!(status, 200, "{body}");
    let json = body.find('[').map(|i| &body[i..body.rfind(']').unwrap() + 1]).unwrap();
    let mut v: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    v.reverse();
    v
}

/// Wait until `want` holds for the job list.
pub(super) fn wait_jobs(d: &Daemon, what: &str, want: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    // A job against a storage that is down fails only once its storage
    // call gives up: after the retries, or the storage timeout (60 s) that
    // bounds them, on top of the job's own start under load.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = jobs(d);
        if want(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:#?}",
            j.iter().map(|j| (&j["source"], &j["kind"], &j["status"], &j["reason"])).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Move the daemon's clock: written aside and renamed, so it is never read half-written.
pub(super) fn set_clock(clock: &Path, at: &str) {
    let next = clock.with_extension("next");
    fs::write(&next, at).unwrap();
    fs::rename(&next, clock).unwrap();
}

/// Finished jobs of the main repository (every source but prune's of others), from the stopped daemon's state.
pub(super) fn jobs_in_state(env: &Env) -> u64 {
    let jobs = env.json(&["jobs", "--state", env.path("state.db").to_str().unwrap(), "--limit", "1000"]);
    jobs.as_array().unwrap().iter().filter(|j| j["status"] != "running").count() as u64
}

pub(super) fn count(j: &[serde_json::Value], source: &str, kind: &str, status: &str) -> usize {
    j.iter().filter(|x| x["source"] == source && x["kind"] == kind && x["status"] == status).count()
}

#[test]
fn plan_check_names_the_line_of_every_contradiction() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\nclasses:\n  critical:\n    rpo: 15m\n    rto: 2h\n    \
         offsite: offsite\n    retention:\n      daily: 7\n      minimum: 30d\n  standard:\n    rpo: 1d\n    rto: 8h\n    retention:\n      daily: 30\n\
         sources:\n  - name: erp-db\n    class: critical\n    url: postgres://backup@erp:5432/erp\n    schedule: \"@hourly\"\n    scope: {namespaces: [erp]}\n  - name: primary\n    \
         class: gold\n    url: /srv/wiki\n    schedule: \"@daily\"\n",
    )
    .unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let p = plan.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{p}:9: error: class critical: unknown repository \"offsite\" for its off-site copy\n\
             {p}:10: error: class critical: retention keeps about 7d, shorter than its minimum 30d\n\
             {p}:13: warning: class standard has no off-site copy (offsite: REPOSITORY)\n\
             {p}:13: warning: class standard has no sources\n\
             {p}:22: error: source erp-db: schedule \"@hourly\" leaves up to 1h between backups, longer than class critical's RPO 15m\n\
             {p}:23: error: source erp-db: scope: is for k8s:// sources, not postgres://\n\
             {p}:24: error: source primary has the name of a repository: their jobs would share one history (rename one)\n\
             {p}:25: error: source primary: unknown class \"gold\" (classes: critical, standard)\n\
             {p}: 2 sources, 2 classes: 6 errors, 2 warnings\n"
        )
    );
    fs::write(&plan, "repositories:\n  primary:\n    url: /srv/repo\n    pasword_file: /x\n").unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("tresor: error: {p}:4: repositories.primary: unknown field `pasword_file`")), "{err}");
    let out = env.run(&["daemon", "--plan", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "an invalid plan is refused at start");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tresor.yaml");
    let out = env.ok(&["plan", "check", example]);
    assert!(out.ends_with(": 5 sources, 3 classes: 0 errors, 0 warnings\n"), "the documented example is a clean plan: {out}");
}

/// `plan check` of `plan`, which must fail: its error lines, and all it said.
pub(super) fn plan_errors(env: &Env, plan: &Path) -> (Vec<String>, String) {
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    (said.lines().filter(|l| l.contains(": error: ")).map(String::from).collect(), said)
}

/// A source named twice is named at its second line; a schedule out of
/// range says which field; a plan that cannot be read has no line.
#[test]
fn plan_check_names_the_duplicate_and_the_field_out_of_range() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\nclasses:\n  standard:\n    rpo: 1d\n    rto: 8h\n\
         sources:\n  - {name: docs, class: standard, url: /srv/a, schedule: '@daily'}\n  - {name: docs, class: standard, url: /srv/b, schedule: '61 * * * *'}\n",
    )
    .unwrap();
    let (errors, said) = plan_errors(&env, &plan);
    let p = plan.display();
    assert_eq!(
        errors,
        [
            format!("{p}:11: error: source docs is named twice"),
            format!("{p}:11: error: source docs: schedule \"61 * * * *\": minute 61 is out of range (0-59)"),
        ],
        "{said}"
    );
    let gone = env.path("nothing.yaml");
    let err = env.fails(&["plan", "check", gone.to_str().unwrap()], 1);
    assert_eq!(err, format!("tresor: error: {}: No such file or directory (os error 2)\n", gone.display()));
}

/// `m` is minutes in a plan's durations and months in `forget
/// --keep-within`: a retention span written with it is refused, by line,
/// where a monthly rule read as minutes would let a prune delete history.
#[test]
fn plan_check_refuses_minutes_in_a_retention_span() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    let text = "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\nclasses:\n  standard:\n    rpo: 15m\n    \
                rto: 8h\n    retention:\n      daily: 30\n      monthly: 12m\nsources:\n  - {name: wiki, class: standard, url: /srv/wiki, schedule: '*/15 * * * *'}\n";
    fs::write(&plan, text).unwrap();
    let err = env.fails(&["plan", "check", plan.to_str().unwrap()], 1);
    let p = plan.display();
    assert_eq!(
        err,
        format!(
            "tresor: error: {p}:11: classes.standard.retention.monthly: retention span \"12m\": `m` would be minutes here, not months as in \
             `forget --keep-within`; write 12mo for months or 12min for minutes\n"
        )
    );
    fs::write(&plan, text.replace("12m\n", "12mo\n")).unwrap();
    assert!(env.ok(&["plan", "check", plan.to_str().unwrap()]).contains(": 0 errors"));
}

pub(super) fn write_plan(env: &Env, redis: &RedisServer, dead: u16) -> PathBuf {
    let plan = env.path("plan.yaml");
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.txt"), "alpha\n").unwrap();
    let text = format!(
        "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\n    init: true\n  offsite:\n    url: {offsite}\n    \
         password_file: {pw}\n    init: true\nclasses:\n  critical:\n    rpo: 15m\n    rto: 1h\n    offsite: offsite\n    \
         retention:\n      last: 3\n      hourly: 2h\n  standard:\n    rpo: 1d\n    rto: 4h\nsources:\n  - name: files\n    class: standard\n    url: {files}\n    \
         schedule: \"0 * * * *\"\n  - name: cache\n    class: critical\n    url: {redis}\n    schedule: \"*/15 * * * *\"\n  - name: down\n    \
         class: critical\n    url: redis://127.0.0.1:{dead}\n    schedule: \"*/15 * * * *\"\n    retries: 1\ndaemon:\n  retry_backoff: 1m\n  \
         concurrency: 2\n  state: {state}\n  prune_schedule: \"0 3 * * *\"\n",
        repo = env.repo,
        offsite = env.path("offsite").display(),
        pw = env.path("pw").display(),
        files = env.path("files").display(),
        redis = redis.url(),
        state = env.path("state.db").display(),
    );
    fs::write(&plan, text).unwrap();
    plan
}

/// The daemon of [`write_plan`] at 10:07, once its first runs are over: the
/// backups, the cache's retention and copy after its own; `down`'s retry
/// waits for the clock, so nothing else starts until the test moves it.
pub(super) fn after_first_runs(env: &Env, redis: &RedisServer) -> (PathBuf, PathBuf, Daemon) {
    let plan = write_plan(env, redis, tresor_testkit::net::free_port());
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:07:00Z");
    let d = start_daemon(env, &plan, Some(&clock));
    wait_jobs(&d, "first runs", first_runs_over);
    (plan, clock, d)
}

pub(super) fn first_runs_over(j: &[serde_json::Value]) -> bool {
    count(j, "files", "backup", "succeeded") == 1
        && ["backup", "forget", "copy"].iter().all(|k| count(j, "cache", k, "succeeded") == 1)
        && count(j, "down", "backup", "failed") == 1
        && j.iter().all(|x| x["status"] != "running")
}

#[test]
fn the_daemon_runs_schedules_retries_and_answers_with_tokens() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    redis.script("SET a 1\nSET b 2\n");
    let plan = write_plan(&env, &redis, tresor_testkit::net::free_port());
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:07:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));

    // Sources never backed up run at once; the one that is down fails with its reason.
    let j = wait_jobs(&d, "first runs", |j| {
        count(j, "files", "backup", "succeeded") == 1
            && count(j, "cache", "backup", "succeeded") == 1
            && count(j, "down", "backup", "failed") == 1
    });
    let down = j.iter().find(|x| x["source"] == "down").unwrap();
    assert_eq!(down["reason"], "source_unreachable");
    let (status, body) = http(d.port, "GET", &format!("/api/v1/jobs/{}", down["id"]), Some("read-token"));
    assert_eq!(status, 200);
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(job["log"].as_str().unwrap().starts_with("tresor: error: redis://127.0.0.1:"), "the job's own output is kept: {job}");
    // Retention is a job of its own after the backup, so it may still be running.
    wait_jobs(&d, "retention after a backup of a class with one", |j| count(j, "cache", "forget", "succeeded") == 1);
    let j = wait_jobs(&d, "the off-site copy", |j| count(j, "cache", "copy", "succeeded") == 1);
    assert_eq!(count(&j, "files", "copy", "succeeded"), 0, "class standard has no off-site copy");
    // The retry comes after the back-off, and only once (retries: 1).
    set_clock(&clock, "2026-11-21T10:08:05Z");
    let j = wait_jobs(&d, "the retry", |j| count(j, "down", "backup", "failed") == 2);
    assert_eq!(j.iter().filter(|x| x["source"] == "down").map(|x| x["trigger"].as_str().unwrap()).collect::<Vec<_>>(), ["first", "retry"]);
    // The schedules fire: */15 at 10:15 (cache, down), hourly at 11:00 (files).
    set_clock(&clock, "2026-11-21T10:15:01Z");
    wait_jobs(&d, "10:15", |j| count(j, "cache", "backup", "succeeded") == 2 && count(j, "down", "backup", "failed") == 3);
    assert_eq!(count(&jobs(&d), "files", "backup", "succeeded"), 1, "files is hourly");
    set_clock(&clock, "2026-11-21T11:00:01Z");
    wait_jobs(&d, "11:00", |j| count(j, "files", "backup", "succeeded") == 2);

    // The pages ask a browser for a token (any user, the token as password).
    let page = |path: &str, basic: Option<&str>| {
        let auth = basic.map(|b| format!("Authorization: Basic {b}\r\n"));
        exchange(d.port, &format!("GET {path}"), &auth.unwrap_or_default(), "")
    };
    // base64 of "tresor:read-token" and of "tresor:wrong"
    let (read, wrong) = ("dHJlc29yOnJlYWQtdG9rZW4=", "dHJlc29yOndyb25n");
    for path in ["/", "/sources/files", "/report"] {
        let refused = page(path, None);
        assert!(refused.starts_with("HTTP/1.1 401 "), "{path}: {refused}");
        assert!(refused.contains("\r\nwww-authenticate: Basic realm=\"tresor\", charset=\"UTF-8\"\r\n"), "{path}: {refused}");
        assert!(page(path, Some(wrong)).starts_with("HTTP/1.1 401 "), "{path}");
        assert!(page(path, Some(read)).starts_with("HTTP/1.1 200 "), "{path}");
    }
    assert_eq!(
        (http(d.port, "GET", "/metrics", None).0, http(d.port, "GET", "/healthz", None).0),
        (200, 200),
        "scrapes and probes need none"
    );

    // Tokens: none 401, read-only on a write 403, admin 202.
    assert_eq!(http(d.port, "GET", "/api/v1/jobs", None).0, 401);
    assert_eq!(http(d.port, "GET", "/api/v1/jobs", Some("wrong")).0, 401);
    // A path or query that cannot be read answers in the error schema too (it was plain text), after the token.
    assert_eq!(http(d.port, "GET", "/api/v1/jobs/xyz", None).0, 401);
    let (status, body) = http(d.port, "GET", "/api/v1/jobs?limit=abc", Some("read-token"));
    assert_eq!(
        (status, serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| v["error"].is_string())),
        (400, Some(true)),
        "{body}"
    );
    let (status, body) = http(d.port, "GET", "/api/v1/jobs/xyz", Some("read-token"));
    assert_eq!(
        (status, serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| v["error"].is_string())),
        (400, Some(true)),
        "{body}"
    );
    assert_eq!(http(d.port, "POST", "/api/v1/sources/files/backup", Some("read-token")).0, 403);
    assert_eq!(http(d.port, "POST", "/api/v1/sources/nope/backup", Some("admin-token")).0, 404);
    assert_eq!(http(d.port, "POST", "/api/v1/sources/files/backup", Some("admin-token")).0, 202);
    let j = wait_jobs(&d, "the API's backup", |j| count(j, "files", "backup", "succeeded") == 3);
    assert_eq!(j.iter().rfind(|x| x["source"] == "files" && x["kind"] == "backup").unwrap()["trigger"], "api");

    // A restore over the API, into a fresh instance: its own job, audit entry and metrics.
    let target = RedisServer::start(&[]);
    let spec = serde_json::json!({"to": target.url()});
    assert_eq!(post_json(d.port, "/api/v1/sources/cache/restore", Some("read-token"), &spec).0, 403);
    let (status, body) =
        post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &serde_json::json!({"to": target.url(), "target": "/x"}));
    assert_eq!(
        (status, body.as_str()),
        (400, "{\"error\":\"give exactly one of \\\"to\\\" (a service URL) and \\\"target\\\" (a directory)\"}")
    );
    let (status, queued) = post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &spec);
    assert_eq!(status, 202);
    let first_cache = serde_json::from_str::<serde_json::Value>(&queued).unwrap()["snapshot"].as_str().unwrap().to_string();
    wait_jobs(&d, "the restore", |j| count(j, "cache", "restore", "succeeded") == 1);
    assert_eq!((target.cli(&["GET", "a"]).as_str(), target.cli(&["DBSIZE"]).as_str()), ("1", "2"), "the cache's keys, restored");

    let j = wait_jobs(&d, "quiet", |j| j.iter().all(|x| x["status"] != "running"));
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    // down never had a point: it counts from when the daemon took it on (10:07:00), not from 1970.
    let never = 53 * 60 + 1;
    for line in [
        "backup_job_success_total{source=\"files\",class=\"standard\"} 3".to_string(),
        format!("backup_job_success_total{{source=\"cache\",class=\"critical\"}} {}", count(&j, "cache", "backup", "succeeded")),
        format!(
            "backup_job_failure_total{{source=\"down\",class=\"critical\",reason=\"source_unreachable\"}} {}",
            count(&j, "down", "backup", "failed")
        ),
        "backup_rpo_target_seconds{class=\"critical\"} 900".into(),
        "restore_success_total{source=\"cache\",class=\"critical\"} 1".into(),
        // Declared at zero before any restore failed, so increase() sees the first one.
        "restore_failure_total{source=\"files\",class=\"standard\",reason=\"source_unreachable\"} 0".into(),
        "backup_repository_errors_total{repository=\"offsite\"} 0".into(),
        format!("backup_rpo_seconds{{class=\"critical\"}} {never}.0"),
        // Histograms for percentiles: three backups of files, each in the +Inf bucket and some below.
        "backup_job_duration_seconds_count{source=\"files\",class=\"standard\"} 3".into(),
        "backup_job_duration_seconds_bucket{le=\"+Inf\",source=\"files\",class=\"standard\"} 3".into(),
        "restore_job_duration_seconds_count{source=\"cache\",class=\"critical\"} 1".into(),
        "restore_job_duration_seconds_count{source=\"files\",class=\"standard\"} 0".into(),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
    assert!(
        page.contains("<tr class=\"red\" data-class=\"critical\">"),
        "a class with a source that has gone longer than its RPO without a point is red: {page}"
    );
    assert!(page.contains("<tr class=\"green\" data-class=\"standard\">"), "{page}");
    let tagged = env.json(&["snapshots", "--tag", "source=files"]);
    assert_eq!(tagged.as_array().unwrap().len(), 3, "every backup tagged with its source");
    let (status, listed) = http(d.port, "GET", "/api/v1/sources/files/snapshots", Some("read-token"));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&listed).unwrap(), tagged, "the API lists the same snapshots");

    // restic's narrowing over the API: the source's newest backup with the
    // tag asked for, or a failed job that says why.
    let narrowed = RedisServer::start(&[]);
    // A snapshot of another source (it was restored into this one's
    // target), or none, is refused before any job is queued.
    let files = &tagged[0]["id"].as_str().unwrap()[..8];
    let spec = serde_json::json!({"to": narrowed.url(), "snapshot": files});
    let said = format!("{{\"error\":\"snapshot {files} does not match tag source=cache: it is not a snapshot of source cache\"}}");
    assert_eq!(post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &spec), (422, said));
    let spec = serde_json::json!({"to": narrowed.url(), "snapshot": "deadbeef"});
    let said = "{\"error\":\"no snapshot matches \\\"deadbeef\\\"\"}".to_string();
    assert_eq!(post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &spec), (404, said));
    let spec = serde_json::json!({"to": narrowed.url(), "tag": ["class=critical"]});
    assert_eq!(
        post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &spec),
        (202, "{\"queued\":\"cache\",\"snapshot\":null}".into())
    );
    wait_jobs(&d, "the narrowed restore", |j| count(j, "cache", "restore", "succeeded") == 2);
    assert_eq!((narrowed.cli(&["GET", "a"]).as_str(), narrowed.cli(&["DBSIZE"]).as_str()), ("1", "2"));
    let spec = serde_json::json!({"to": narrowed.url(), "host": ["nosuchhost"]});
    assert_eq!(post_json(d.port, "/api/v1/sources/cache/restore", Some("admin-token"), &spec).0, 202);
    let j = wait_jobs(&d, "the refused restore", |j| count(j, "cache", "restore", "failed") == 1);
    let refused = j.iter().find(|x| x["source"] == "cache" && x["kind"] == "restore" && x["status"] == "failed").unwrap();
    assert_eq!(refused["message"], "no snapshot matches host nosuchhost, tag source=cache", "{refused}");

    // SIGTERM: a clean stop.
    let pid = d.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut d = d;
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let audit = env.ok(&["audit", "--state", env.path("state.db").to_str().unwrap(), "--json"]);
    assert!(audit.contains("\"actor\":\"api:admin\",\"action\":\"backup\",\"target\":\"files\",\"result\":\"succeeded\""), "{audit}");
    let restored = format!("\"result\":\"succeeded\",\"detail\":\"snapshot {} into {}\"", &first_cache[..8], target.url());
    assert!(audit.contains(&restored), "a restore's entry says what went where: {audit}");
}

#[test]
fn a_killed_daemon_reruns_its_interrupted_job_and_a_bad_reload_keeps_the_plan() {
    let env = Env::new();
    let mark = env.path("first-run");
    let plan = env.path("plan.yaml");
    let slow = format!("command:test -e {m} || {{ touch {m}; sleep 60; }}; echo payload", m = mark.display());
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
         sources:\n  - name: export\n    class: standard\n    url: \"{slow}\"\n    schedule: \"@daily\"\ndaemon:\n  state: {}\n",
        env.repo,
        env.path("pw").display(),
        env.path("state.db").display()
    );
    fs::write(&plan, &text).unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:00:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));
    wait_jobs(&d, "running", |j| count(j, "export", "backup", "running") == 1);
    // Killed once the source has started (a job is `running` before its child is).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the source did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(d);
    let d = start_daemon(&env, &plan, Some(&clock));
    let j = wait_jobs(&d, "the rerun", |j| count(j, "export", "backup", "succeeded") == 1);
    let first = &j[0];
    assert_eq!((first["status"].as_str(), first["reason"].as_str()), (Some("failed"), Some("interrupted")));
    assert_eq!(j.iter().filter(|x| x["kind"] == "backup").map(|x| x["trigger"].as_str().unwrap()).collect::<Vec<_>>(), ["first", "retry"]);
    env.ok(&["check"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1, "the killed run saved nothing");

    fs::write(&plan, text.replace("rpo: 1d", "rpo: soon")).unwrap();
    assert_eq!(http(d.port, "POST", "/api/v1/reload", Some("admin-token")).0, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let audit = loop {
        let a = env.ok(&["audit", "--state", env.path("state.db").to_str().unwrap()]);
        if a.contains("reload") || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        audit.contains(&format!("reload   {}", plan.display()))
            && audit.contains("failed")
            && audit.contains("cannot read duration \"soon\""),
        "{audit}"
    );
    let (status, sources) = http(d.port, "GET", "/api/v1/sources", Some("read-token"));
    assert_eq!(status, 200);
    assert!(sources.contains("\"name\":\"export\""), "the old plan stays: {sources}");
    // Refused, and said where an operator looks: a series an alert watches, and the status page.
    let (_, metrics) = http(d.port, "GET", "/metrics", None);
    assert!(metrics.lines().any(|l| l == "backup_plan_last_reload_successful 0"), "{metrics}");
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
    let refused = format!(
        "<p id=\"plan-refused\" class=\"bad\">The plan file {} was refused at 2026-11-21 10:00:00 UTC; the daemon runs the plan it loaded before. ",
        plan.display()
    );
    assert!(page.contains(&refused) && page.contains("cannot read duration &quot;soon&quot;"), "{page}");
    fs::write(&plan, &text).unwrap();
    assert_eq!(http(d.port, "POST", "/api/v1/reload", Some("admin-token")).0, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http(d.port, "GET", "/metrics", None).1.lines().any(|l| l == "backup_plan_last_reload_successful 1") {
        assert!(Instant::now() < deadline, "the mended plan was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!http(d.port, "GET", "/", Some("read-token")).1.contains("plan-refused"), "the notice goes once the file loads");

    // Commands run by hand join the same audit trail.
    let state = env.path("state.db");
    let out = env.cmd(&["forget", "--keep-last", "1"]).env("TRESOR_STATE", &state).output().unwrap();
    assert!(out.status.success());
    let out = env.cmd(&["restore", "deadbeef", "--target", "/tmp/x"]).env("TRESOR_STATE", &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let audit = env.json(&["audit", "--state", state.to_str().unwrap()]);
    let by_hand: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"].as_str().unwrap().starts_with("cli:"))
        .map(|e| (e["action"].as_str().unwrap(), e["result"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(by_hand, [("restore", "failed", "no snapshot matches \"deadbeef\""), ("forget", "succeeded", "")], "{audit}");
}

/// Requests a receiver took: path and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// One HTTP request a receiver took: its head and body.
pub(super) fn read_request(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let k = s.read(&mut chunk).unwrap_or(0);
        buf.extend_from_slice(&chunk[..k]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if body.len() >= len || k == 0 {
                return (head.to_string(), body.to_string());
            }
        }
    }
}

/// A webhook receiver: answers 500 to the first request, 200 after;
/// every request's path and body.
fn receiver() -> (u16, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            let (head, body) = read_request(&mut s);
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if n > 0 {
                seen.lock().unwrap().push((path, body));
            }
        }
    });
    (port, got)
}

#[test]
fn webhooks_announce_a_failure_and_the_recovery_with_retries() {
    let env = Env::new();
    let (port, got) = receiver();
    let flag = env.path("service-up");
    let plan = env.path("plan.yaml");
    // Its output would show the daemon's API tokens, were they handed to it.
    let source = format!(
        "command:test -e {} && echo ok$TRESOR_API_TOKEN$TRESOR_API_READ_TOKEN || {{ echo 'backend down' >&2; exit 1; }}",
        flag.display()
    );
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: flaky\n    class: standard\n    url: \"{source}\"\n    schedule: \"*/5 * * * *\"\n    retries: 0\n\
             notifications:\n  - url: http://127.0.0.1:{port}/hook/T0-secret\n  - url: http://127.0.0.1:{port}/api/v2/alerts\n    format: alertmanager\n\
             daemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:01:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));
    wait_jobs(&d, "the failure", |j| count(j, "flaky", "backup", "failed") == 1);
    fs::write(&flag, "").unwrap();
    set_clock(&clock, "2026-11-21T10:05:01Z");
    wait_jobs(&d, "the recovery", |j| count(j, "flaky", "backup", "succeeded") == 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "deliveries: {:?}", got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = got.lock().unwrap().clone();
    // Per receiver, in the order of the events: a recovery delivered
    // before its failure would re-open the alert.
    let delivered = |path: &str| -> Vec<serde_json::Value> {
        got.iter().filter(|(p, _)| p == path).map(|(_, b)| serde_json::from_str(b).unwrap()).collect()
    };
    let hook = delivered("/hook/T0-secret");
    assert_eq!(hook.iter().map(|b| b["event"].as_str().unwrap()).collect::<Vec<_>>(), ["failure", "recovery"], "{got:?}");
    let (failure, recovery) = (&hook[0], &hook[1]);
    assert_eq!((failure["source"].as_str(), failure["class"].as_str()), (Some("flaky"), Some("standard")));
    assert!(failure["message"].as_str().unwrap().ends_with("backend down; no snapshot was saved"), "{failure}");
    assert_eq!(recovery["failing_since"], failure["time"]);
    // Alertmanager's: the firing alert, sent again unchanged while the
    // clock moves (once a minute, so Alertmanager does not resolve it; the
    // jump to 10:05 may or may not come before the recovery), then resolved.
    let alerts = delivered("/api/v2/alerts");
    let (resolved, firing) = alerts.split_last().expect("deliveries");
    assert!(!firing.is_empty() && firing.iter().all(|f| f == &firing[0]), "{got:?}");
    assert_eq!(firing[0][0]["labels"]["alertname"], "TresorBackupFailed");
    assert!(firing[0][0].get("endsAt").is_none(), "the firing alert comes first: {got:?}");
    assert_eq!(resolved[0]["endsAt"], "2026-11-21T10:05:01Z");
    assert_eq!(got.len(), hook.len() + alerts.len(), "nothing else delivered: {got:?}");
    // The audit trail names each receiver by its origin: a path may be its token.
    // A delivery's entry follows its answer: wait for the last one.
    let notified = format!("\"action\":\"notify\",\"target\":\"recovery of flaky to http://127.0.0.1:{port}/…\"");
    let audit = loop {
        let audit = env.ok(&["audit", "--state", env.path("state.db").to_str().unwrap(), "--json"]);
        if audit.matches(&notified).count() == 2 || Instant::now() > deadline {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(audit.matches(&notified).count(), 2, "{audit}");
    assert!(!audit.contains("T0-secret"), "{audit}");
    assert_eq!(env.ok(&["dump", "latest", "stdout"]), "ok\n", "a job's programs never see the daemon's API tokens");
}

/// A plan of one directory source, `files`, whose `daemon:` section ends
/// with `daemon` (indented lines).
fn files_plan(env: &Env, daemon: &str) -> PathBuf {
    fs::create_dir_all(env.path("files")).unwrap();
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: files\n    class: standard\n    url: {}\n    schedule: \"@daily\"\n\
             daemon:\n  state: {}\n{daemon}",
            env.repo,
            env.path("pw").display(),
            env.path("files").display(),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    plan
}

#[test]
fn the_daemon_serves_https_with_the_given_certificate() {
    let env = Env::new();
    let certs = tresor_testkit::Certs::make(&env.path("tls"));
    let [ca, crt, key] = [&certs.ca, &certs.server_cert, &certs.server_key].map(|p| p.display().to_string());
    let plan = files_plan(&env, &format!("  tls_cert_file: {crt}\n  tls_key_file: {key}\n"));
    let port = tresor_testkit::net::free_port();
    let child = env
        .cmd(&["daemon", "--plan", plan.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon { child, port };
    let url = format!("https://127.0.0.1:{port}/healthz");
    let curl = |extra: &[&str]| {
        Command::new("curl").args(["-s", "--max-time", "5"]).args(extra).arg(&url).output().expect("curl (Debian package curl)")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let out = curl(&["--cacert", &ca]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(String::from_utf8_lossy(&answer.stdout), "ok\n", "over TLS, trusting the given CA");
    assert_eq!(curl(&[]).status.code(), Some(60), "an untrusted certificate is refused by the client");
    assert_ne!(http(port, "GET", "/healthz", None).0, 200, "no plain HTTP on the TLS port");

    // A client that connects and never starts its handshake is let go (after
    // 10 s), rather than holding a descriptor for ever.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut silent, &mut buf);
    assert!(matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{read:?}");
    assert_eq!(String::from_utf8_lossy(&curl(&["--cacert", &ca]).stdout), "ok\n", "and the daemon serves on");

    // A renewed certificate (here from another CA) is served without a restart.
    let renewed = tresor_testkit::Certs::make(&env.path("tls-renewed"));
    fs::copy(&renewed.server_key, &key).unwrap();
    fs::copy(&renewed.server_cert, &crt).unwrap();
    let new_ca = renewed.ca.display().to_string();
    assert_eq!(String::from_utf8_lossy(&curl(&["--cacert", &new_ca]).stdout), "ok\n", "the renewed certificate is served");
    assert_eq!(curl(&["--cacert", &ca]).status.code(), Some(60), "and the old one no more");
}

/// A token file is read on every request: a rotated token (a Kubernetes
/// Secret updated) works at once, and the old one no longer does.
#[test]
fn a_rotated_token_file_takes_effect_without_a_restart() {
    let env = Env::new();
    let token = env.path("admin-token");
    fs::write(&token, "first-token\n").unwrap();
    let plan = files_plan(&env, &format!("  admin_token_file: {}\n", token.display()));
    let d = start_daemon(&env, &plan, None);
    assert_eq!(http(d.port, "GET", "/api/v1/jobs", Some("first-token")).0, 200);
    fs::write(&token, "second-token\n").unwrap();
    assert_eq!(http(d.port, "GET", "/api/v1/jobs", Some("first-token")).0, 401, "the old token is revoked");
    assert_eq!(http(d.port, "GET", "/api/v1/jobs", Some("second-token")).0, 200);
}

#[test]
fn the_daemon_backs_up_postgres_and_restores_it_over_the_api() {
    let mut env = Env::new();
    env.vars.push(("TRESOR_PG_BIN".into(), tresor_testkit::PostgresServer::bin_dir().display().to_string()));
    let pg = tresor_testkit::PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.pgbench_init("shop", 1);
    let before = super::sources::row_counts(&pg, "shop");
    let plan = env.path("plan.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  critical:\n    rpo: 1h\n    rto: 1h\n\
             sources:\n  - name: shop-db\n    class: critical\n    url: {}\n    schedule: \"*/30 * * * *\"\ndaemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            pg.url("shop"),
            env.path("state.db").display()
        ),
    )
    .unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:00:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));
    let j = wait_jobs(&d, "the first backup", |j| count(j, "shop-db", "backup", "succeeded") == 1);
    assert!(j[0]["bytes_processed"].as_u64().unwrap() > 100_000, "{:?}", j[0]);
    let (status, body) =
        post_json(d.port, "/api/v1/sources/shop-db/restore", Some("admin-token"), &serde_json::json!({"to": pg.url("shop_copy")}));
    assert_eq!(status, 202, "{body}");
    assert!(body.contains(j[0]["snapshot"].as_str().unwrap()), "the newest backup is restored: {body}");
    wait_jobs(&d, "the restore", |j| count(j, "shop-db", "restore", "succeeded") == 1);
    assert_eq!(super::sources::row_counts(&pg, "shop_copy"), before, "every row");
}

#[test]
fn missed_runs_are_caught_up_once_and_sigterm_cancels_a_running_job_cleanly() {
    let env = Env::new();
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a"), "a").unwrap();
    let gate = env.path("slow");
    let slow = format!("command:if test -e {g}; then sleep 60; fi; echo payload", g = gate.display());
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
         sources:\n  - name: files\n    class: standard\n    url: {}\n    schedule: \"@hourly\"\n  - name: export\n    class: standard\n    \
         url: \"{slow}\"\n    schedule: \"@daily\"\ndaemon:\n  state: {}\n  catch_up: CATCH_UP\n",
        env.repo,
        env.path("pw").display(),
        env.path("files").display(),
        env.path("state.db").display()
    );
    fs::write(&plan, text.replace("CATCH_UP", "true")).unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:00:00Z");
    let mut d = start_daemon(&env, &plan, Some(&clock));
    wait_jobs(&d, "first runs", |j| count(j, "files", "backup", "succeeded") == 1 && count(j, "export", "backup", "succeeded") == 1);
    let stop = |d: &mut Daemon| {
        assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
        let status = d.child.wait().unwrap();
        assert!(status.success(), "{status}");
    };
    stop(&mut d);

    // Down from 10:00 to 12:30: the hourly runs at 11:00 and 12:00 were missed; one catch-up run.
    set_clock(&clock, "2026-11-21T12:30:00Z");
    let mut d = start_daemon(&env, &plan, Some(&clock));
    let j = wait_jobs(&d, "the catch-up", |j| count(j, "files", "backup", "succeeded") == 2);
    let triggers: Vec<&str> = j.iter().filter(|x| x["source"] == "files").map(|x| x["trigger"].as_str().unwrap()).collect();
    assert_eq!(triggers, ["first", "catch-up"]);
    assert_eq!(count(&j, "export", "backup", "succeeded"), 1, "the daily run was not missed");
    stop(&mut d);

    // Without catch-up, the missed 13:00 run stays missed; the next one comes on time.
    fs::write(&plan, text.replace("CATCH_UP", "false")).unwrap();
    set_clock(&clock, "2026-11-21T13:30:00Z");
    let mut d = start_daemon(&env, &plan, Some(&clock));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&jobs(&d), "files", "backup", "succeeded"), 2, "no catch-up when it is off");

    // SIGTERM while a backup runs: within the grace period it is cancelled, nothing is saved.
    fs::write(&gate, "").unwrap();
    assert_eq!(http(d.port, "POST", "/api/v1/sources/export/backup", Some("admin-token")).0, 202);
    wait_jobs(&d, "the slow run", |j| count(j, "export", "backup", "running") == 1);
    let before = env.json(&["snapshots"]).as_array().unwrap().len();
    let started = Instant::now();
    stop(&mut d);
    assert!(started.elapsed() < Duration::from_secs(30), "the grace period (5s) bounds the stop");
    let state = env.path("state.db");
    let jobs = env.json(&["jobs", "--state", state.to_str().unwrap()]);
    let last = &jobs[0];
    assert_eq!(
        (last["source"].as_str(), last["status"].as_str(), last["reason"].as_str()),
        (Some("export"), Some("cancelled"), Some("shutdown"))
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), before, "the cancelled run saved nothing");
    env.ok(&["check"]);
}
