//! A job's programs end with the job, however it ends: at its time limit,
//! cancelled when the daemon stops, and when the daemon is killed. Each
//! program leads a process group of its own, which no signal to the job
//! reaches: the job must kill them before it goes.

use std::time::{Duration, Instant};

use super::daemon::{Daemon, count, start_daemon, wait_jobs};
use super::*;

/// A daemon whose sources each start `sleep 600` and write its process id
/// to `NAME.pid`: `(name, time limit)`.
fn sleeping_daemon(env: &Env, sources: &[(&str, Option<&str>)]) -> Daemon {
    let mut plan = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\nsources:\n",
        env.repo,
        env.path("pw").display()
    );
    for (name, timeout) in sources {
        let pid = env.path(&format!("{name}.pid"));
        plan += &format!(
            "  - name: {name}\n    class: standard\n    url: \"command:sleep 600 & echo $! > {}; wait; echo data\"\n    schedule: \"@daily\"\n    retries: 0\n",
            pid.display()
        );
        if let Some(t) = timeout {
            plan += &format!("    timeout: {t}\n");
        }
    }
    plan += &format!("daemon:\n  concurrency: 3\n  state: {}\n", env.path("state.db").display());
    fs::write(env.path("plan.yaml"), plan).unwrap();
    start_daemon(env, &env.path("plan.yaml"), None)
}

/// The process id in `NAME.pid`, once the source's program wrote it.
fn program_of(env: &Env, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = fs::read_to_string(env.path(&format!("{name}.pid"))).unwrap_or_default();
        if text.ends_with('\n') {
            return text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the program of {name} never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` runs: neither gone nor a zombie (a killed orphan stays one
/// until whoever adopted it reaps it).
fn runs(pid: &str) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// Whether `pid` still runs once given time to die (a process group's kill
/// is not waited for). It is killed either way, so a failure leaves none.
fn survives(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = runs(pid);
    let _ = Command::new("kill").args(["-KILL", pid]).output();
    survived
}

#[test]
fn a_jobs_programs_end_at_its_time_limit_and_when_the_stopping_daemon_cancels_it() {
    let env = Env::new();
    let mut d = sleeping_daemon(&env, &[("slow", Some("10s")), ("stuck", None)]);
    let (slow, stuck) = (program_of(&env, "slow"), program_of(&env, "stuck"));
    let j = wait_jobs(&d, "the time limit", |j| count(j, "slow", "backup", "failed") == 1);
    let timed_out = j.iter().find(|j| j["source"] == "slow").unwrap();
    assert_eq!((timed_out["reason"].as_str(), timed_out["status"].as_str()), (Some("timeout"), Some("failed")));
    assert!(!survives(&slow), "sleep {slow} outlived its job's time limit");
    assert!(runs(&stuck), "sleep {stuck} was killed though its job runs on");

    // SIGTERM: the grace (5 s) runs out, and the daemon cancels the job.
    // SAFETY: kill(2) on the daemon this test started, not reaped.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the daemon stopped cleanly");
    assert!(!survives(&stuck), "sleep {stuck} outlived its job's cancel");
}

#[test]
fn a_killed_daemons_jobs_take_their_programs_along() {
    let env = Env::new();
    let mut d = sleeping_daemon(&env, &[("stuck", None)]);
    let stuck = program_of(&env, "stuck");
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(!survives(&stuck), "sleep {stuck} outlived the daemon killed while its job ran");
}
