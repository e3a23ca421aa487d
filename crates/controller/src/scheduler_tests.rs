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
use crate::model::{JobResult, JobSpec, Reason};
use crate::runner::{Jobs, Runner};

/// Answers each (source, call number) from a script; every call counted.
#[derive(Default)]
struct Scripted {
    calls: Mutex<BTreeMap<String, usize>>,
    script: BTreeMap<(String, usize), JobResult>,
}

impl Jobs for Scripted {
    fn run<'a>(&'a self, spec: &'a JobSpec, _: Duration, _: watch::Receiver<bool>) -> BoxFuture<'a, JobResult> {
        let n = {
            let mut calls = self.calls.lock().expect("not poisoned");
            let n = calls.entry(spec.name.clone()).or_default();
            *n += 1;
            *n
        };
        let result = self.script.get(&(spec.name.clone(), n)).cloned().unwrap_or_else(JobResult::succeeded);
        Box::pin(async move { result })
    }
}

impl Scripted {
    fn calls(&self, source: &str) -> usize {
        self.calls.lock().expect("not poisoned").get(source).copied().unwrap_or(0)
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

#[tokio::test]
async fn temporary_failures_are_retried_after_the_back_off_and_permanent_ones_never() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (plan_file, clock_file) = (dir.path().join("tresor.yaml"), dir.path().join("clock"));
    std::fs::write(&plan_file, PLAN).expect("the plan");
    set(&clock_file, "2026-11-21T10:00:00Z");
    let clock = Clock::File(clock_file.clone(), Arc::default());
    let plan = crate::daemon::load_plan(&plan_file, clock.now()).expect("a valid plan");
    let mut script = BTreeMap::new();
    script.insert(("flaky".to_string(), 1), JobResult::failed(Reason::SourceUnreachable, true, "connection refused"));
    script.insert(("locked".to_string(), 1), JobResult::failed(Reason::WrongPassword, false, "wrong password"));
    let jobs = Arc::new(Scripted { script, ..Scripted::default() });
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        plan: std::sync::RwLock::new(plan),
        plan_file,
        state: crate::state::State::in_memory().expect("a state"),
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
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(run(shared.clone(), rx, async move {
        let _ = stopped.await;
    }));

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
