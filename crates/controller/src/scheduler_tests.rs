//! The scheduler driven in-process, through its seams as mini-redis tests
//! its server: a clock file the test moves, and a job runner that answers
//! with scripted results and counts the calls. What the end-to-end tests
//! show with real children, shown here for the rules alone: temporary
//! failures are retried after the back-off, permanent ones never.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::daemon::{Clock, Shared, run};
use tresor_engine::Id;

use crate::model::{CheckSpec, JobResult, JobSpec, Kind, Reason};
use crate::runner::{Jobs, Runner};

/// Answers each (source, call number) from a script; every call recorded
/// with its kind.
#[derive(Default)]
struct Scripted {
    calls: Mutex<BTreeMap<String, Vec<Kind>>>,
    /// What the check jobs were given to read, in order, by repository.
    checks: Mutex<Vec<(String, CheckSpec)>>,
    /// The drill jobs, in order: their name and the application they drill.
    drills: Mutex<Vec<(String, Option<String>)>>,
    script: BTreeMap<(String, usize), JobResult>,
    /// The call that panics instead of answering.
    panics: Option<(String, usize)>,
    /// The call that answers only once `release` is notified.
    hold: Option<(String, usize)>,
    release: tokio::sync::Notify,
}

impl Jobs for Scripted {
    fn run<'a>(&'a self, spec: &'a JobSpec, _: Duration, _: watch::Receiver<bool>) -> BoxFuture<'a, JobResult> {
        let n = {
            let mut calls = self.calls.lock().expect("not poisoned");
            let kinds = calls.entry(spec.name.clone()).or_default();
            kinds.push(spec.kind);
            if let Some(c) = &spec.check {
                self.checks.lock().expect("not poisoned").push((spec.name.clone(), c.clone()));
            }
            if spec.kind == Kind::Drill {
                self.drills.lock().expect("not poisoned").push((spec.name.clone(), spec.application.clone()));
            }
            kinds.len()
        };
        let call = (spec.name.clone(), n);
        assert!(self.panics.as_ref() != Some(&call), "a scripted panic");
        let result = self.script.get(&call).cloned().unwrap_or_else(JobResult::succeeded);
        let held = self.hold.as_ref() == Some(&call);
        Box::pin(async move {
            if held {
                self.release.notified().await;
            }
            result
        })
    }
}

impl Scripted {
    fn calls(&self, source: &str) -> usize {
        self.kinds(source).len()
    }

    fn kinds(&self, source: &str) -> Vec<Kind> {
        self.calls.lock().expect("not poisoned").get(source).cloned().unwrap_or_default()
    }
}

const PLAN: &str = "repositories:\n  main:\n    url: /nonexistent/tresor-scheduler-test\n    password_file: /nonexistent/pw\n\
classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
sources:\n  - {name: flaky, class: standard, url: /srv/a, schedule: '@daily', retries: 3}\n\
\x20 - {name: locked, class: standard, url: /srv/b, schedule: '@daily', retries: 3}\n\
daemon:\n  retry_backoff: 1m\n";

fn set(clock: &std::path::Path, at: &str) {
    std::fs::write(clock, at).expect("the clock file");
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A daemon running in-process on a scripted runner.
struct Started {
    shared: Arc<Shared>,
    jobs: Arc<Scripted>,
    clock_file: std::path::PathBuf,
    stop: oneshot::Sender<()>,
    daemon: tokio::task::JoinHandle<crate::Result<()>>,
}

impl Started {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.daemon.await.expect("the daemon task").expect("a clean stop");
    }
}

/// A daemon of `plan` whose jobs answer from `script`, at 10:00 by the
/// clock file in `dir`.
fn started(dir: &std::path::Path, plan: &str, jobs: Scripted) -> Started {
    let (plan_file, clock_file) = (dir.join("tresor.yaml"), dir.join("clock"));
    std::fs::write(&plan_file, plan).expect("the plan");
    set(&clock_file, "2026-11-21T10:00:00Z");
    let clock = Clock::File(clock_file.clone(), Arc::default());
    let plan = crate::daemon::load_plan(&plan_file, clock.now()).expect("a valid plan");
    let jobs = Arc::new(jobs);
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        plan: std::sync::RwLock::new(plan),
        plan_file,
        // On disk: a daemon started again in `dir` finds the history.
        state: crate::state::State::open(&dir.join("state.db")).expect("a state"),
        metrics: Default::default(),
        clock,
        runner: Runner::with("/nonexistent/tresor".into(), jobs.clone()),
        next_runs: Default::default(),
        running: Default::default(),
        commands: tx,
        ready: Default::default(),
        tick: Duration::from_millis(10),
        grace: Duration::from_secs(1),
        failing: Default::default(),
        http: crate::notify::client(),
        unprotected: Default::default(),
        repos: Default::default(),
        runs: Default::default(),
        report: Default::default(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(run(shared.clone(), rx, async move {
        let _ = stopped.await;
        Duration::from_secs(1)
    }));
    Started { shared, jobs, clock_file, stop, daemon }
}

#[tokio::test]
async fn temporary_failures_are_retried_after_the_back_off_and_permanent_ones_never() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut script = BTreeMap::new();
    script.insert(("flaky".to_string(), 1), JobResult::failed(Reason::SourceUnreachable, true, "connection refused"));
    script.insert(("locked".to_string(), 1), JobResult::failed(Reason::WrongPassword, false, "wrong password"));
    let Started { shared, jobs, clock_file, stop, daemon } = started(dir.path(), PLAN, Scripted { script, ..Scripted::default() });

    // Never backed up: both run at once, and both fail.
    until("the first runs", || jobs.calls("flaky") == 1 && jobs.calls("locked") == 1).await;
    let failed = |source: &str| {
        let all = shared.state.jobs(10, Some(source)).expect("the history");
        all.iter().filter(|j| j.outcome.status == "failed").count()
    };
    until("both failures recorded", || failed("flaky") == 1 && failed("locked") == 1).await;

    // Half the back-off: nothing. The whole of it: the temporary one again, and it heals.
    set(&clock_file, "2026-11-21T10:00:30Z");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jobs.calls("flaky"), 1, "not before the back-off");
    set(&clock_file, "2026-11-21T10:01:01Z");
    let newest = || shared.state.jobs(1, Some("flaky")).expect("the history").remove(0);
    until("the retry's success", || newest().outcome.status == "succeeded").await;
    assert_eq!((jobs.calls("flaky"), newest().attempt, newest().trigger.as_str()), (2, 1, "retry"));

    // The permanent failure stays one attempt, however long the daemon waits.
    set(&clock_file, "2026-11-21T11:00:00Z");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs.calls("locked"), 1, "a wrong password is not retried");
    let _ = stop.send(());
    daemon.await.expect("the daemon task").expect("a clean stop");
}

const RETAINED: &str = "repositories:\n  main:\n    url: /nonexistent/tresor-scheduler-test\n    password_file: /nonexistent/pw\n\
\x20 off:\n    url: /nonexistent/tresor-scheduler-offsite\n    password_file: /nonexistent/pw\n\
classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n    offsite: off\n    retention:\n      last: 3\n\
sources:\n  - {name: part, class: standard, url: /srv/a, schedule: '@daily'}\n";

/// A partial backup (exit 3) is a failure with its own reason, never
/// retried; its snapshot goes off site with what it holds, and retention
/// runs after it (whose rules keep the newest whole snapshot), so a source
/// always partial does not grow without end.
#[tokio::test]
async fn a_partial_backup_is_followed_by_retention_and_copied_off_site() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let partial =
        JobResult::failed(Reason::Partial, false, "partial: some of the source could not be read; snapshot ab12cd34 holds the rest");
    let script = BTreeMap::from([(("part".to_string(), 1), partial)]);
    let d = started(dir.path(), RETAINED, Scripted { script, ..Scripted::default() });
    let (shared, jobs) = (d.shared.clone(), d.jobs.clone());
    let history = || shared.state.jobs(10, Some("part")).expect("the history");
    until("the partial backup, its retention and copy", || history().len() == 3 && history().iter().all(|j| j.outcome.status != "running"))
        .await;
    assert_eq!(jobs.kinds("part"), [Kind::Backup, Kind::Forget, Kind::Copy]);
    let backup = history().into_iter().find(|j| j.kind == "backup").expect("the backup");
    assert_eq!((backup.outcome.status.as_str(), backup.outcome.reason.as_deref()), ("failed", Some("partial")));

    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the next day's whole backup, its retention and copy", || jobs.calls("part") == 6).await;
    assert_eq!(jobs.kinds("part"), [Kind::Backup, Kind::Forget, Kind::Copy, Kind::Backup, Kind::Forget, Kind::Copy]);
    d.stop().await;
}

/// An off-site copy is a job of its own: while a slow one runs, the
/// source's next backup and retention go ahead, and the copy that backup
/// asked for runs once the slow one is over (one more, taking along every
/// snapshot missing off site).
#[tokio::test]
async fn a_slow_copy_never_holds_the_next_backup_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), RETAINED, Scripted { hold: Some(("part".into(), 3)), ..Scripted::default() });
    let jobs = d.jobs.clone();
    until("the first copy running", || jobs.calls("part") == 3).await;
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the next day's backup and retention, beside the copy", || jobs.calls("part") == 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(jobs.calls("part"), 5, "the second copy waits for the first");
    jobs.release.notify_one();
    until("the second copy", || jobs.calls("part") == 6).await;
    assert_eq!(jobs.kinds("part"), [Kind::Backup, Kind::Forget, Kind::Copy, Kind::Backup, Kind::Forget, Kind::Copy]);
    d.stop().await;
}

/// A backup whose copy failed for good (or never ran: the daemon stopped)
/// is copied when the daemon starts again, and only then.
#[tokio::test]
async fn a_backup_not_yet_off_site_is_copied_when_the_daemon_starts_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let down = JobResult::failed(Reason::Repository, false, "target: cannot reach the off-site repository");
    let d = started(dir.path(), RETAINED, Scripted { script: BTreeMap::from([(("part".to_string(), 3), down)]), ..Scripted::default() });
    let shared = d.shared.clone();
    until("the failed copy", || {
        shared.state.jobs(10, Some("part")).expect("the history").iter().any(|j| j.kind == "copy" && j.outcome.status == "failed")
    })
    .await;
    d.stop().await;

    let d = started(dir.path(), RETAINED, Scripted::default());
    until("the copy at the start", || d.jobs.calls("part") == 1).await;
    let shared = d.shared.clone();
    until("it recorded", || {
        shared.state.jobs(10, Some("part")).expect("the history").iter().any(|j| j.kind == "copy" && j.outcome.status == "succeeded")
    })
    .await;
    assert_eq!(d.jobs.kinds("part"), [Kind::Copy], "the backup is not due");
    let copy = shared.state.jobs(10, Some("part")).expect("the history").into_iter().find(|j| j.kind == "copy").expect("the copy");
    assert_eq!(copy.trigger, "catch-up");
    d.stop().await;

    let d = started(dir.path(), RETAINED, Scripted::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.jobs.calls("part"), 0, "nothing is missing off site now");
    d.stop().await;
}

/// `backup_replication_lag_seconds` is how long the oldest backup not yet
/// off site has waited: it grows while copies fail, and is 0 once one
/// succeeds, never the gap a successful copy just closed.
#[tokio::test]
async fn the_replication_lag_grows_while_copies_fail_and_is_zero_after_one_succeeds() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let down = JobResult::failed(Reason::Repository, false, "target: cannot reach the off-site repository");
    let script = BTreeMap::from([(("part".to_string(), 3), down)]);
    let d = started(dir.path(), RETAINED, Scripted { script, ..Scripted::default() });
    let (shared, jobs) = (d.shared.clone(), d.jobs.clone());
    let lag = |at: &str| {
        let now = chrono::DateTime::parse_from_rfc3339(at).expect("a time").to_utc();
        let text = shared.metrics.render(&shared.plan(), now);
        let line = text.lines().find(|l| l.starts_with("backup_replication_lag_seconds{")).map(String::from);
        line.unwrap_or_else(|| panic!("no lag in {text}"))
    };
    let history = || shared.state.jobs(10, Some("part")).expect("the history");
    until("the backup, its retention and the failed copy", || {
        history().len() == 3 && history().iter().all(|j| j.outcome.status != "running")
    })
    .await;
    assert_eq!(lag("2026-11-21T16:00:00Z"), "backup_replication_lag_seconds{source=\"part\",class=\"standard\"} 21600.0");
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the next day's backup and copy", || jobs.calls("part") == 6).await;
    until("the copy recorded", || history().iter().any(|j| j.kind == "copy" && j.outcome.status == "succeeded")).await;
    assert_eq!(lag("2026-11-22T13:00:00Z"), "backup_replication_lag_seconds{source=\"part\",class=\"standard\"} 0.0");
    d.stop().await;
}

/// A copy that cannot reach its off-site repository is that repository's
/// error, not the primary's, whose backups go on: the alert names the
/// site that is down, and the copy's record stays in the primary's log.
#[tokio::test]
async fn a_copy_that_fails_in_its_target_is_charged_to_the_off_site_repository() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let down = JobResult { in_target: true, ..JobResult::failed(Reason::RepositoryMissing, false, "target: no repository at /off") };
    let script = BTreeMap::from([(("part".to_string(), 3), down)]);
    let d = started(dir.path(), RETAINED, Scripted { script, ..Scripted::default() });
    let shared = d.shared.clone();
    let history = || shared.state.jobs(10, Some("part")).expect("the history");
    until("the backup, its retention and the failed copy", || {
        history().len() == 3 && history().iter().all(|j| j.outcome.status != "running")
    })
    .await;
    let text = shared.metrics.render(&shared.plan(), chrono::Utc::now());
    let mut errors: Vec<&str> = text.lines().filter(|l| l.starts_with("backup_repository_errors_total{")).collect();
    errors.sort();
    assert_eq!(errors, ["backup_repository_errors_total{repository=\"main\"} 0", "backup_repository_errors_total{repository=\"off\"} 1"]);
    d.stop().await;
}

/// Backups asked for over the API while one of the source runs come to
/// one more backup, not one each: a client that retries on a timeout
/// must not queue a backup per try.
#[tokio::test]
async fn backups_asked_for_while_one_runs_come_to_one_more() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), PLAN, Scripted { hold: Some(("flaky".into(), 1)), ..Scripted::default() });
    let (shared, jobs) = (d.shared.clone(), d.jobs.clone());
    until("the first backup running", || jobs.calls("flaky") == 1).await;
    for _ in 0..5 {
        shared.commands.send(crate::daemon::Command::Backup { source: "flaky".into(), actor: "api:admin".into() }).expect("the loop");
    }
    // Let the loop take every command while the first backup still runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    jobs.release.notify_one();
    until("the one more backup", || jobs.calls("flaky") >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jobs.calls("flaky"), 2, "{:?}", jobs.kinds("flaky"));
    d.stop().await;
}

/// The report page, which needs no token and reads every repository's
/// evidence log, is built at most once a minute: asked again, it is the
/// report built before, though the clock moved on.
#[tokio::test]
async fn the_report_is_built_at_most_once_a_minute() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), PLAN, Scripted::default());
    let page = |r: axum::response::Response| async move {
        String::from_utf8(axum::body::to_bytes(r.into_body(), usize::MAX).await.expect("a body").to_vec()).expect("text")
    };
    let first = page(crate::status::report(&d.shared).await).await;
    assert!(first.contains("2026-11-21 10:00 UTC"), "{first}");
    set(&d.clock_file, "2026-11-21T11:30:00Z");
    let again = page(crate::status::report(&d.shared).await).await;
    assert_eq!(again, first);
    d.stop().await;
}

/// A job that panics fails, recorded as any failure is, and its source is
/// not held as running: its next run starts.
#[tokio::test]
async fn a_job_that_panics_fails_and_its_source_runs_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), PLAN, Scripted { panics: Some(("flaky".into(), 1)), ..Scripted::default() });
    let history = || d.shared.state.jobs(10, Some("flaky")).expect("the history");
    let ended = |j: &crate::state::Job| (j.outcome.status.clone(), j.outcome.reason.clone(), j.outcome.message.clone());
    until("the first runs", || d.jobs.calls("flaky") == 1 && d.jobs.calls("locked") == 1).await;
    until("the panic recorded", || history().first().is_some_and(|j| j.outcome.status != "running")).await;
    let failed = ("failed".to_string(), Some("error".to_string()), Some("the job panicked: a scripted panic".to_string()));
    assert_eq!(ended(&history()[0]), failed);
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the next day's run", || d.jobs.calls("flaky") == 2 && history()[0].outcome.status == "succeeded").await;
    d.stop().await;
}

const CHECKED: &str = "repositories:\n  main:\n    url: /nonexistent/tresor-scheduler-test\n    password_file: /nonexistent/pw\n\
classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
sources:\n  - {name: app, class: standard, url: /srv/a, schedule: '@daily'}\n\
daemon:\n  prune_schedule: null\n  check_schedule: '@daily'\n  check_slices: 3\n";

/// Each check moves on to the next slice of the packs, so that three
/// checks read them all; the packs one found damaged are read again by the
/// next, wherever they fall, until a check finds them whole. The metrics
/// hold what the newest check found.
#[tokio::test]
async fn each_check_reads_the_next_slice_and_the_packs_found_damaged_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = BTreeMap::from([(("main".to_string(), 2), damaged()), (("main".to_string(), 3), damaged())]);
    let d = started(dir.path(), CHECKED, Scripted { script, ..Scripted::default() });
    let metric = |name: &str| check_metric(&d, name);
    let ended = || d.shared.state.jobs(1, Some("main")).expect("the history").first().is_some_and(|j| j.outcome.status != "running");
    until("the first backup", || d.jobs.calls("app") == 1).await;
    for (n, day) in (1..=5).zip(22..) {
        set(&d.clock_file, &format!("2026-11-{day}T12:00:00Z"));
        until("the day's check", || d.jobs.calls("main") == n && ended()).await;
        let problems = if matches!(n, 2 | 3) { "1" } else { "0" };
        until("its verdict in the metrics", || metric("backup_repository_check_problems").as_deref() == Some(problems)).await;
    }
    let read: Vec<(u32, u32, Vec<Id>)> =
        d.jobs.checks.lock().expect("not poisoned").iter().map(|(_, c)| (c.slice, c.slices, c.packs.clone())).collect();
    let p = damaged_pack();
    assert_eq!(read, [(1, 3, vec![]), (2, 3, vec![]), (3, 3, vec![p]), (1, 3, vec![p]), (2, 3, vec![])]);
    assert_eq!(d.jobs.kinds("main"), [Kind::Check; 5]);
    let last = chrono::DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z").expect("a time").timestamp();
    assert_eq!(metric("backup_repository_check_last_success_timestamp_seconds"), Some(last.to_string()));
    d.stop().await;
}

/// A repository's own check schedule and slices, and prune schedule, take
/// the daemon's place (whose prune schedule is null here); one whose check
/// schedule is null is never checked, and its status row says so.
#[tokio::test]
async fn a_repository_checked_on_its_own_schedule_or_never() {
    let plan = CHECKED.replace(
        "classes:",
        "  other:\n    url: /nonexistent/other\n    password_file: /nonexistent/pw\n    check_schedule: '0 6 * * *'\n    check_slices: 2\n\
         \x20   prune_schedule: '0 7 * * *'\n\
         \x20 cold:\n    url: /nonexistent/cold\n    password_file: /nonexistent/pw\n    check_schedule: null\n\
         \x20 glacier:\n    url: /nonexistent/glacier\n    password_file: /nonexistent/pw\n    check_schedule: never\n\
         classes:",
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), &plan, Scripted::default());
    until("the first backup", || d.jobs.calls("app") == 1).await;
    let checks: Vec<String> =
        d.shared.next_runs.lock().expect("not poisoned").keys().filter(|k| k.starts_with("check:")).cloned().collect();
    assert_eq!(checks, ["check:main", "check:other"]);
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the day's checks and prune", || d.jobs.calls("main") == 1 && d.jobs.calls("other") == 2).await;
    let mut other = d.jobs.kinds("other");
    other.sort_by_key(|k| k.as_str());
    assert_eq!((d.jobs.kinds("main"), other), (vec![Kind::Check], vec![Kind::Check, Kind::Prune]));
    let mut given: Vec<(String, u32, u32)> =
        d.jobs.checks.lock().expect("not poisoned").iter().map(|(r, c)| (r.clone(), c.slice, c.slices)).collect();
    given.sort();
    assert_eq!(given, [("main".to_string(), 1, 3), ("other".to_string(), 1, 2)]);
    let page = crate::status::page(&d.shared);
    for repo in ["cold", "glacier"] {
        let row = page.lines().find(|l| l.contains(&format!("data-repository=\"{repo}\""))).expect("the row");
        assert!(row.ends_with("<td class=\"none\">not scheduled</td></tr>"), "{row}");
    }
    d.stop().await;
}

/// A check from before damaged packs were recorded found damage: the next
/// check reads that check's slice again (the one after the last pass),
/// not the next one, which would let the damage go unread and the alert
/// resolve.
#[tokio::test]
async fn damage_found_before_packs_were_recorded_is_read_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let state = crate::state::State::open(&dir.path().join("state.db")).expect("a state");
    for (id, problems, status) in [(1, 0, "succeeded"), (2, 1, "failed")] {
        let at = chrono::DateTime::parse_from_rfc3339(&format!("2026-11-{}T04:00:00Z", 18 + id)).expect("a time").to_utc();
        let outcome = crate::state::Outcome { status: status.into(), problems: Some(problems), ..Default::default() };
        assert!(state.import_job(&ended_job(id, "main", "check", at, outcome)).expect("imported"));
    }
    drop(state);
    let d = started(dir.path(), CHECKED, Scripted::default());
    until("the first backup", || d.jobs.calls("app") == 1).await;
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the day's check", || d.jobs.calls("main") == 1).await;
    let given: Vec<CheckSpec> = d.jobs.checks.lock().expect("not poisoned").iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(given, [CheckSpec { slice: 2, slices: 3, packs: vec![] }]);
    d.stop().await;
}

/// A scheduled job of `source` that started and ended at `at`, as a history holds it.
fn ended_job(id: i64, source: &str, kind: &str, at: chrono::DateTime<chrono::Utc>, outcome: crate::state::Outcome) -> crate::state::Job {
    crate::state::Job {
        id,
        source: source.into(),
        class: String::new(),
        kind: kind.into(),
        trigger: "schedule".into(),
        attempt: 0,
        scheduled_at: at,
        started_at: at,
        ended_at: Some(at),
        duration: None,
        outcome,
    }
}

/// The pack `damaged` names.
fn damaged_pack() -> Id {
    Id([0xab; 32])
}

/// A check that found one problem, as the child reports it.
fn damaged() -> JobResult {
    let found = serde_json::json!({
        "problems": [{"object": format!("pack {}", damaged_pack().short()), "error": "it fails authentication"}],
        "damaged_packs": [damaged_pack()],
    });
    JobResult { details: Some(found), ..JobResult::failed(Reason::RepositoryDamaged, false, "check found 1 problem") }
}

/// The value of the check metric `name` of repository `main`.
fn check_metric(d: &Started, name: &str) -> Option<String> {
    metric(d, &format!("{name}{{repository=\"main\"}}"))
}

/// Wait until each of `sources` has ended its first job.
async fn first_backups(d: &Started, sources: &[&str]) {
    let ended =
        |source: &str| d.shared.state.jobs(1, Some(source)).expect("the history").first().is_some_and(|j| j.outcome.status != "running");
    until("the first backups", || sources.iter().all(|s| ended(s))).await;
}

/// The value of one series (its name and labels) in the daemon's metrics now.
fn metric(d: &Started, series: &str) -> Option<String> {
    let text = d.shared.metrics.render(&d.shared.plan(), d.shared.clock.now());
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(String::from))
}

/// A daemon started again shows its repositories' newest check verdicts
/// from the history at once: the damage found stays alerted, and the last
/// pass keeps its time.
#[tokio::test]
async fn a_daemon_started_again_keeps_the_newest_check_verdict() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d =
        started(dir.path(), CHECKED, Scripted { script: BTreeMap::from([(("main".to_string(), 2), damaged())]), ..Scripted::default() });
    let ended = |n: usize| {
        let history = d.shared.state.jobs(10, Some("main")).expect("the history");
        history.len() == n && history.iter().all(|j| j.outcome.status != "running")
    };
    until("the first backup", || d.jobs.calls("app") == 1).await;
    set(&d.clock_file, "2026-11-22T12:00:00Z");
    until("the passed check", || ended(1)).await;
    set(&d.clock_file, "2026-11-23T12:00:00Z");
    until("the failed check", || ended(2)).await;
    d.stop().await;

    let again = started(dir.path(), CHECKED, Scripted::default());
    until("the verdicts from the history", || check_metric(&again, "backup_repository_check_problems").as_deref() == Some("1")).await;
    let passed = chrono::DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z").expect("a time").timestamp();
    assert_eq!(check_metric(&again, "backup_repository_check_last_success_timestamp_seconds"), Some(passed.to_string()));
    again.stop().await;
}

const MINUTELY: &str = "repositories:\n  main:\n    url: /nonexistent/tresor-scheduler-test\n    password_file: /nonexistent/pw\n\
classes:\n  standard:\n    rpo: 1h\n    rto: 4h\n\
sources:\n  - {name: app, class: standard, url: /srv/a, schedule: '* * * * *'}\n\
daemon:\n  prune_schedule: null\n";

/// A reload a moment before a backup falls due never loses it: that
/// minute's backup runs at its whole second, whatever fraction of a second
/// the daemon's clock had at the reload.
#[tokio::test]
async fn a_reload_just_before_a_backup_falls_due_keeps_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), MINUTELY, Scripted::default());
    let history = || d.shared.state.jobs(10, Some("app")).expect("the history");
    until("the first backup", || history().first().is_some_and(|j| j.outcome.status == "succeeded")).await;
    set(&d.clock_file, "2026-11-21T10:00:59.700Z");
    d.shared.commands.send(crate::daemon::Command::Reload { actor: "test".into() }).expect("the loop");
    let reloaded = || d.shared.state.audit_log(10).expect("the trail").iter().any(|e| e.action == "reload" && e.result == "succeeded");
    until("the reload", reloaded).await;
    set(&d.clock_file, "2026-11-21T10:01:00.300Z");
    until("the minute's backup", || history().len() == 2 && history()[0].outcome.status == "succeeded").await;
    let due: Vec<String> = history().iter().map(|j| j.scheduled_at.to_rfc3339()).collect();
    assert_eq!(due, ["2026-11-21T10:01:00+00:00", "2026-11-21T10:00:00+00:00"]);
    d.stop().await;
}

/// A daemon started inside a source's spread, after the schedule's time
/// but before the source's run, runs that run once, at its time: no
/// catch-up at start besides it.
#[tokio::test]
async fn a_daemon_started_inside_the_spread_runs_that_backup_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let plan = MINUTELY.replace("schedule: '* * * * *'}", "schedule: '0 10 * * *', spread: 30m}").replace("rpo: 1h", "rpo: 2d");
    let offset = crate::schedule::spread_offset("app", std::time::Duration::from_secs(1800));
    assert!(offset.as_secs() > 0, "app's run falls after 10:00");
    let yesterday = chrono::DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z").expect("a time").with_timezone(&chrono::Utc)
        + chrono::Duration::from_std(offset).expect("minutes");
    let ok = crate::state::Outcome { status: "succeeded".into(), snapshot: Some("s".into()), ..Default::default() };
    let state = crate::state::State::open(&dir.path().join("state.db")).expect("a state");
    assert!(state.import_job(&ended_job(1, "app", "backup", yesterday, ok)).expect("imported"));
    drop(state);
    let d = started(dir.path(), &plan, Scripted::default());
    let due = yesterday + chrono::Duration::days(1);
    until("the daemon's start at 10:00", || d.shared.next_runs.lock().expect("not poisoned").get("app") == Some(&due)).await;
    set(&d.clock_file, &(due + chrono::Duration::seconds(1)).to_rfc3339());
    let history = || d.shared.state.jobs(10, Some("app")).expect("the history");
    until("today's run", || history().iter().any(|j| j.scheduled_at == due && j.outcome.status == "succeeded")).await;
    let triggers: Vec<String> = history().iter().filter(|j| j.id != 1).map(|j| j.trigger.clone()).collect();
    assert_eq!(triggers, ["schedule"], "one backup, at its time");
    d.stop().await;
}

/// A daemon started again keeps what its history says is failing alerted:
/// the newest failed backup's time (BackupJobFailed) and the newest
/// drill's failed verdict (BackupDrillFailed) are back at once.
#[tokio::test]
async fn a_daemon_started_again_keeps_failures_alerted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = BTreeMap::from([(("locked".to_string(), 1), JobResult::failed(Reason::WrongPassword, false, "wrong password"))]);
    let d = started(dir.path(), PLAN, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    set(&d.clock_file, "2026-11-21T10:05:00Z");
    // As the drill's child process records them: one that passed, then one that failed.
    for (at, passed, rpo) in [("100100", true, 60.0), ("100500", false, 300.0)] {
        let drill = serde_json::json!({
            "test_id": format!("DRILL-20261121-{at}-flaky"), "source": "flaky", "class": "standard", "kind": "directory",
            "started": format!("2026-11-21T{}:{}:{}Z", &at[..2], &at[2..4], &at[4..]), "rto_seconds": 1.5, "rpo_seconds": rpo,
            "rto_target": 14400, "rpo_target": 86400, "bytes": 4096, "passed": passed, "checks": [],
            "reasons": if passed { vec![] } else { vec!["a file differs"] }, "owner": null,
        });
        d.shared.state.record_drill(&serde_json::from_value(drill).expect("a drill report")).expect("recorded");
    }
    d.stop().await;

    let again = started(dir.path(), PLAN, Scripted::default());
    until("the daemon ready", || again.shared.ready.load(std::sync::atomic::Ordering::SeqCst)).await;
    let failed = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").expect("a time").timestamp();
    let series = |s: &str, source: &str| metric(&again, &format!("{s}{{source=\"{source}\",class=\"standard\"}}"));
    assert_eq!(series("backup_last_failure_timestamp_seconds", "locked"), Some(format!("{failed}.0")));
    assert_eq!(series("backup_last_failure_timestamp_seconds", "flaky"), None, "flaky never failed");
    assert_eq!(series("restore_drill_success", "flaky"), Some("0".into()));
    assert_eq!(series("rpo_achieved_seconds", "flaky"), Some("60.0".into()), "the newest drill that passed measured it");
    again.stop().await;
}

const TWO_CLASSES: &str = "repositories:\n  main:\n    url: /nonexistent/tresor-scheduler-test\n    password_file: /nonexistent/pw\n\
\x20 old:\n    url: /nonexistent/tresor-scheduler-old\n    password_file: /nonexistent/pw\n\
classes:\n  critical:\n    rpo: 1d\n    rto: 4h\n  rare:\n    rpo: 1d\n    rto: 4h\n\
sources:\n  - {name: broken, class: critical, url: /srv/a, schedule: '@daily'}\n\
\x20 - {name: app, class: rare, url: /srv/b, schedule: '@daily'}\n";

/// After a reload, nothing gone from the plan keeps a series: not a
/// repository, a class or a source removed, nor a source under the class
/// it moved from, whose newest failure moves to its new class.
#[tokio::test]
async fn a_reload_removes_the_series_of_what_left_the_plan() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = BTreeMap::from([(("broken".to_string(), 1), JobResult::failed(Reason::SourceUnreachable, false, "refused"))]);
    let d = started(dir.path(), TWO_CLASSES, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["broken", "app"]).await;
    let text = || d.shared.metrics.render(&d.shared.plan(), d.shared.clock.now());
    assert!(text().contains("backup_rpo_seconds{class=\"rare\"}"), "{}", text());
    let plan = TWO_CLASSES.replace("  rare:\n", "  standard:\n").replace("class: critical", "class: standard");
    let plan = plan.replace("\x20 - {name: app, class: rare, url: /srv/b, schedule: '@daily'}\n", "");
    let plan = plan.replace("\x20 old:\n    url: /nonexistent/tresor-scheduler-old\n    password_file: /nonexistent/pw\n", "");
    std::fs::write(dir.path().join("tresor.yaml"), plan).expect("the plan");
    d.shared.commands.send(crate::daemon::Command::Reload { actor: "test".into() }).expect("the loop");
    until("the reload", || d.shared.plan().sources.len() == 1).await;
    let text = text();
    let stale: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["source=\"app\"", "class=\"rare\"", "repository=\"old\"", "source=\"broken\",class=\"critical\""].iter().any(|s| l.contains(s))
        })
        .collect();
    assert_eq!(stale, Vec::<&str>::new());
    let failed = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").expect("a time").timestamp();
    let series = "backup_last_failure_timestamp_seconds{source=\"broken\",class=\"standard\"}";
    assert_eq!(metric(&d, series), Some(format!("{failed}.0")));
    d.stop().await;
}

/// A source added to the plan and not backed up yet is pending, not a
/// missed RPO since 1970: its class's RPO age counts it from when the
/// daemon took it on, and the class stays green while that is within the
/// RPO; the status page says whose first backup is pending.
#[tokio::test]
async fn a_new_source_is_pending_within_its_rpo() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let plan = PLAN.replace("\x20 - {name: locked, class: standard, url: /srv/b, schedule: '@daily', retries: 3}\n", "");
    let d = started(dir.path(), &plan, Scripted::default());
    first_backups(&d, &["flaky"]).await;
    set(&d.clock_file, "2026-11-21T11:00:00Z");
    let added = plan.replace("daemon:", "\x20 - {name: fresh, class: standard, url: /srv/c, schedule: '@daily'}\ndaemon:");
    std::fs::write(dir.path().join("tresor.yaml"), added).expect("the plan");
    d.shared.commands.send(crate::daemon::Command::Reload { actor: "test".into() }).expect("the loop");
    until("the reload", || d.shared.plan().sources.len() == 2).await;
    let reload = || d.shared.state.audit_log(10).expect("the trail").into_iter().find(|e| e.action == "reload");
    until("the reload's audit entry", || reload().is_some()).await;
    assert_eq!(reload().map(|e| e.detail), Some("source fresh added".into()), "the trail says what changed");
    set(&d.clock_file, "2026-11-21T12:30:00Z");
    assert_eq!(metric(&d, "backup_rpo_seconds{class=\"standard\"}"), Some("9000.0".into()), "flaky's backup of 10:00 is the stalest");
    let class = &crate::view::class_states(&d.shared)[0];
    assert_eq!(
        (&class["state"], &class["age_seconds"], &class["pending"]),
        (&"green".into(), &9000.0.into(), &serde_json::json!(["fresh"]))
    );
    let page = crate::status::page(&d.shared);
    let row = page.lines().find(|l| l.contains("data-class=\"standard\"")).expect("the class's row");
    assert!(row.contains(">2.5 h old<small>first backup pending: <a href=\"/sources/fresh\">fresh</a></small></td>"), "{row}");
    d.stop().await;
}

/// The off-site repository's size is measured again after each copy into
/// it, not only at start and after a prune.
#[tokio::test]
async fn a_copy_measures_the_off_site_repository_again() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (main, off) = (dir.path().join("main"), dir.path().join("off"));
    for repo in [&main, &off] {
        std::fs::create_dir_all(repo).expect("a repository directory");
    }
    let plan = RETAINED
        .replace("/nonexistent/tresor-scheduler-test", &main.display().to_string())
        .replace("/nonexistent/tresor-scheduler-offsite", &off.display().to_string());
    // The copy (the source's third job) waits until the test wrote what it copies.
    let d = started(dir.path(), &plan, Scripted { hold: Some(("part".into(), 3)), ..Scripted::default() });
    let size = || metric(&d, "backup_repository_size_bytes{repository=\"off\"}");
    until("the copy running", || d.jobs.calls("part") == 3).await;
    until("the size at the start", || size().as_deref() == Some("0")).await;
    std::fs::write(off.join("pack"), vec![0u8; 20_000]).expect("the copied pack");
    d.jobs.release.notify_one();
    until("the size after the copy", || size().as_deref() == Some("20000")).await;
    d.stop().await;
}

mod alerts;
mod api;
mod drills;
