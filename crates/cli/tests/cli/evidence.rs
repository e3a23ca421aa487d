//! What the daemon keeps in its repositories and reads from them: the
//! evidence log (every job and audit entry, chained, checked by `audit
//! verify`, carried off site), a lost state rebuilt from it after a month,
//! and reads (snapshot lists, the status page, the report) that start no
//! job process.

use std::time::{Duration, Instant};

use tresor_testkit::RedisServer;

use super::daemon::{after_first_runs, http, post_json, set_clock, start_daemon};
use super::*;

/// Reads go through the daemon's own unlocked handles: snapshot lists, a
/// source's page and the report start no job process (every job is run
/// through a recording wrapper, so one started would be counted).
#[test]
fn snapshot_lists_the_status_page_and_the_report_start_no_child_process() {
    let mut env = Env::new();
    let redis = RedisServer::start(&[]);
    let started = env.path("jobs-started");
    let wrapper = env.path("job-wrapper");
    fs::write(&wrapper, format!("#!/bin/sh\necho \"$@\" >> {}\nexec {BIN} \"$@\"\n", started.display())).unwrap();
    fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.vars.push(("TRESOR_JOB_PROGRAM".into(), wrapper.display().to_string()));
    let (_, _, d) = after_first_runs(&env, &redis);
    let before = fs::read_to_string(&started).unwrap();
    assert!(before.lines().count() >= 3, "jobs go through the wrapper: {before}");
    for _ in 0..3 {
        let (status, listed) = http(d.port, "GET", "/api/v1/sources/files/snapshots", Some("read-token"));
        assert_eq!(status, 200, "{listed}");
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed, env.json(&["snapshots", "--tag", "source=files"]), "the same listing as the CLI's");
    }
    let (status, page) = http(d.port, "GET", "/sources/files", Some("read-token"));
    assert_eq!(status, 200);
    assert!(page.contains("<table id=\"snapshots\""), "{page}");
    let (status, report) = http(d.port, "GET", "/report", Some("read-token"));
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("standard"), "{report}");
    assert_eq!(fs::read_to_string(&started).unwrap(), before, "no job process was started by the reads");
}

/// The evidence log in the repository: the daemon appends every finished
/// job, `copy` carries the log off site, and `audit verify` finds an
/// altered entry, a removed one, and the newest ones removed.
#[test]
fn the_repository_keeps_a_chained_evidence_log_that_audit_verify_checks() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    redis.script("SET a 1\n");
    let (_, _, mut d) = after_first_runs(&env, &redis);
    // Its last append follows the job's end in the history: stop the daemon, then read.
    assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
    assert!(d.child.wait().unwrap().success());
    let jobs = super::daemon::jobs_in_state(&env);
    let verified = env.json(&["audit", "verify"]);
    assert_eq!(verified["problems"], serde_json::json!([]));
    // Entries that cannot be read during an outage are not altered ones.
    let out = env.cmd(&["audit", "verify"]).env("TRESOR_FAULTS", "unreadable=evidence/").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), err.lines().count()), (Some(1), 1), "{err}");
    assert!(err.starts_with("tresor: error: ") && err.contains("injected outage: storage does not answer"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "no problem is reported");
    assert_eq!(verified["entries"], 2 * jobs, "a job entry and its audit entry per finished job of this repository");
    let offsite = env.path("offsite").display().to_string();
    let off = env.json(&["--repo", &offsite, "audit", "verify"]);
    assert_eq!(off["problems"], serde_json::json!([]), "the copy carried the log it found");
    assert!(off["entries"].as_u64().unwrap() >= 2, "{off}");

    let dir = std::path::Path::new(&env.repo).join("evidence");
    let mut names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let text = env.ok(&["audit", "verify"]);
    assert!(text.starts_with(&format!("evidence log: {} entries, head {} (", names.len(), names.len())), "{text}");

    // A new snapshot records the head; removing the newest entries is then found too.
    let snap = env.json(&["backup", env.path("files").to_str().unwrap()]);
    let short = &snap["snapshot_id"].as_str().or(snap["id"].as_str()).unwrap()[..8];
    let last = dir.join(names.last().unwrap());
    fs::remove_file(&last).unwrap();
    let n = names.len();
    let out = env.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("problem: entries {n} to {n} are gone: snapshot {short} recorded the log at entry {n}\n")),
        "{stdout}"
    );

    // An altered entry in the middle, and the first one removed.
    let middle = dir.join(&names[1]);
    let mut bytes = fs::read(&middle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&middle, bytes).unwrap();
    fs::remove_file(dir.join(&names[0])).unwrap();
    let out = env.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("problem: evidence/{}: altered: ", names[1])), "{stdout}");
    assert!(stdout.contains(&format!("problem: entries 1 to 1 are missing (before evidence/{})\n", names[1])), "{stdout}");
    // And each snapshot saved when entry 1 was the head names it as removed.
    let at_first: Vec<String> = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["evidence"]["seq"] == 1)
        .map(|s| format!("problem: entry 1 is not the one snapshot {} recorded: replaced or removed\n", s["short_id"].as_str().unwrap()))
        .collect();
    for line in &at_first {
        assert!(stdout.contains(line.as_str()), "{line}{stdout}");
    }
    let problems = stdout.lines().filter(|l| l.starts_with("problem: ")).count();
    assert_eq!(problems, 3 + at_first.len(), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("tresor: error: the evidence log is not intact: {problems} problems, first: ")), "{stderr}");
}

/// Every job in a state database, oldest first: (id, source, kind, status, snapshot).
fn history(env: &Env, db: &str) -> Vec<(i64, String, String, String, String)> {
    let jobs = env.json(&["jobs", "--state", env.path(db).to_str().unwrap(), "--limit", "100000"]);
    let mut out: Vec<_> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            (j["id"].as_i64().unwrap(), s("source"), s("kind"), s("status"), s("snapshot"))
        })
        .collect();
    out.sort();
    out
}

/// The state lost after a month (a claim gone, a new cluster): a report and
/// a new daemon rebuild the job history, the drill protocol and the audit
/// trail from the repository's evidence log, and tell the same numbers.
#[test]
fn a_lost_state_is_rebuilt_from_the_repositorys_evidence() {
    let env = Env::new();
    let redis = RedisServer::start(&[]);
    redis.script("SET a 1\nSET b 2\n");
    let (plan, clock, mut d) = after_first_runs(&env, &redis);
    // A month of history: the daemon's clock moves a day at a time, each day's backups run, and a drill every week.
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:07:00Z").unwrap();
    let done =
        |source: &str, kind: &str| history(&env, "state.db").iter().filter(|j| j.1 == source && j.2 == kind && j.3 == "succeeded").count();
    let settled = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(done("files", "backup") == n && done("cache", "copy") == n && history(&env, "state.db").iter().all(|j| j.3 != "running")) {
            assert!(Instant::now() < deadline, "day {n} did not settle: {:?}", history(&env, "state.db"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for day in 1..=30 {
        set_clock(&clock, &(start + chrono::Duration::days(day)).to_rfc3339());
        settled(day as usize + 1);
        if day % 7 == 0 {
            assert_eq!(post_json(d.port, "/api/v1/sources/cache/drill", Some("admin-token"), &serde_json::json!({})).0, 202);
            let deadline = Instant::now() + Duration::from_secs(60);
            while done("cache", "drill") < (day / 7) as usize {
                assert!(Instant::now() < deadline, "the drill of day {day}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
    assert!(d.child.wait().unwrap().success());
    // A month of daily copies and of prunes of both repositories: each log one chain, the off-site one a copy.
    for repo in [env.repo.clone(), env.path("offsite").display().to_string()] {
        let verified = env.json(&["--repo", &repo, "audit", "verify"]);
        assert_eq!(verified["problems"], serde_json::json!([]), "{repo}");
    }

    let report = || {
        let args = ["report", "--plan", plan.to_str().unwrap(), "--format", "json", "--since", "40d"];
        let out = env.cmd(&args).env("TRESOR_CLOCK_FILE", &clock).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let audit = || env.json(&["audit", "--state", env.path("state.db").to_str().unwrap(), "--limit", "100000"]);
    let (audited, old) = (audit(), history(&env, "state.db"));
    let with_state = report();
    assert_eq!(with_state["protocol"].as_array().unwrap().len(), 4, "the four drills are in the protocol: {with_state}");
    assert!(old.len() > 150, "a month of jobs: {}", old.len());
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = fs::remove_file(env.path(f));
    }
    assert_eq!(report(), with_state, "the same report from the evidence alone");
    assert!(!env.path("state.db").exists(), "a report writes no state");

    let d = start_daemon(&env, &plan, Some(&clock));
    let last = old.last().unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rebuilt = loop {
        let h: Vec<_> = history(&env, "state.db").into_iter().filter(|j| j.0 <= last).collect();
        if h.len() == old.len() {
            break h;
        }
        assert!(Instant::now() < deadline, "the rebuilt history: {} of {} jobs", h.len(), old.len());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rebuilt, old, "every job, under its own id");
    let trail = audit();
    // What the daemon audits; a job's own process (a drill's `cli:` entry) writes to the local state only.
    for e in audited.as_array().unwrap().iter().filter(|e| !e["actor"].as_str().unwrap().starts_with("cli:")) {
        assert!(trail.as_array().unwrap().contains(e), "the audit trail comes back too: {e} not in {trail}");
    }
    drop(d);
}

/// A repository the report cannot read is named with why, and its legal
/// holds are unknown, never "none": a compliance report does not say what
/// it could not see.
#[test]
fn a_report_names_a_repository_it_could_not_read() {
    let env = Env::new();
    env.ok(&["init"]);
    let (plan, off, state) = (env.path("plan.yaml"), env.path("off"), env.path("state.db"));
    // The daemon's state (empty): the history need not come from the repositories.
    drop(tresor_controller::state::State::open(&state).unwrap());
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {pw}\n  off:\n    url: {}\n    password_file: {pw}\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n    offsite: off\n\
         sources:\n  - name: files\n    class: standard\n    url: {}\n    schedule: \"@daily\"\ndaemon:\n  state: {}\n",
        env.repo,
        off.display(),
        env.path("files").display(),
        state.display(),
        pw = env.path("pw").display(),
    );
    fs::write(&plan, text).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["report", "--plan", plan.to_str().unwrap(), "--format", "json"])).unwrap();
    let why = format!("no repository at {}: nothing is there (run `tresor init` first)", off.display());
    assert_eq!(report["unread"], serde_json::json!({"off": why}));
    assert_eq!(report["holds"], serde_json::json!({"main": 0}));
    let text = env.ok(&["report", "--plan", plan.to_str().unwrap()]);
    assert!(text.contains("\nLegal holds: main: 0, off: unknown. "), "{text}");
    assert!(
        text.contains(&format!("\n**Repository off could not be read** ({why}): its holds, rehearsals and findings are missing here.\n")),
        "{text}"
    );
}
