//! The one place `tresor` child processes are started: `tresor job run`
//! reads its [`JobSpec`] as JSON on standard input and writes its
//! [`JobResult`] as the last line of standard output. Nothing but the
//! subcommand is on its command line, so no secret is either.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use serde_json::Value;

use crate::model::{JobResult, JobSpec, Kind, Reason, RepositorySpec, RestoreSpec, Status};
use crate::plan::Repository;

/// The arguments of every child: the spec comes on standard input.
pub const JOB_RUN: [&str; 2] = ["job", "run"];

/// How long a job told to stop has to kill the programs it started and
/// end before it is killed: its handler does that at once (SIGKILL to
/// each program's process group), so this is only ever waited out by a
/// child that hangs.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn command(exe: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(JOB_RUN);
    // The daemon records its jobs itself; the job's repository and password
    // come in its spec, so the daemon's own never reach a hook or a source
    // program through it.
    tresor_sources::without_secrets(&mut cmd).env_remove("TRESOR_STATE");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let parent = i32::try_from(std::process::id()).expect("a process id");
    // A parent that dies takes the job along. SIGTERM, not SIGKILL: the job
    // kills the programs it started first, each in a process group of its
    // own that no signal to the job reaches
    // (`tresor_sources::kill_programs_when_stopped`). The signal comes when the *thread* that
    // forked ends: the callers' threads outlive their children (an async
    // runtime's workers; a blocking caller waits for it).
    // SAFETY: prctl and getppid are async-signal-safe and touch only this (child) process.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                return Err(std::io::Error::other("its parent ended before the job started"));
            }
            Ok(())
        });
    }
    cmd
}

/// Run one job to the end, the time limit, or cancellation. A daemon that
/// is killed takes its children with it: nothing runs on unsupervised.
pub async fn run(exe: &Path, spec: &JobSpec, limit: Duration, mut cancel: watch::Receiver<bool>) -> JobResult {
    let mut cmd = tokio::process::Command::from(command(exe));
    cmd.kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return JobResult::failed(Reason::Error, false, format!("cannot start {}: {e}", exe.display())),
    };
    let input = serde_json::to_vec(spec).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A child that dies before reading says why on standard error.
        let _ = stdin.write_all(&input).await;
    }
    let started = std::time::Instant::now();
    let stopped = tokio::select! {
        out = output(&mut child) => return match out {
            Ok(out) => read_result(out.status.code(), &out.stdout, &out.stderr, started.elapsed()),
            Err(e) => JobResult::failed(Reason::Error, false, e.to_string()),
        },
        _ = tokio::time::sleep(limit) => JobResult::failed(Reason::Timeout, false, format!("cancelled after its time limit of {}s", limit.as_secs())),
        _ = cancelled(&mut cancel) => JobResult { status: Status::Cancelled, ..JobResult::failed(Reason::Shutdown, false, "the daemon stopped") },
    };
    stop(&mut child).await;
    stopped
}

/// What the child wrote and how it exited, as `wait_with_output` has it,
/// leaving the child to [`stop`] if it is not waited for to the end.
async fn output(child: &mut tokio::process::Child) -> std::io::Result<std::process::Output> {
    use tokio::io::AsyncReadExt;
    let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (status, _, _) = tokio::try_join!(child.wait(), stdout.read_to_end(&mut out), stderr.read_to_end(&mut err))?;
    Ok(std::process::Output { status, stdout: out, stderr: err })
}

/// End a job the daemon no longer waits for: SIGTERM, on which it kills the
/// programs it started, then SIGKILL if it is still there after [`STOP_GRACE`].
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // SAFETY: kill(2) on our own child, not reaped yet (it has an id).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Resolves once cancellation is asked for; never when nobody can ask.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run one job and wait for it (a drill, which runs on a thread of its own).
pub fn run_blocking(exe: &Path, spec: &JobSpec) -> JobResult {
    let started = std::time::Instant::now();
    let mut child = match command(exe).spawn() {
        Ok(c) => c,
        Err(e) => return JobResult::failed(Reason::Error, false, format!("cannot start {}: {e}", exe.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&serde_json::to_vec(spec).unwrap_or_default());
    }
    match child.wait_with_output() {
        Ok(out) => read_result(out.status.code(), &out.stdout, &out.stderr, started.elapsed()),
        Err(e) => JobResult::failed(Reason::Error, false, e.to_string()),
    }
}

/// The result the child wrote; a child that wrote none was killed, or
/// failed before it could run its job.
fn read_result(code: Option<i32>, stdout: &[u8], stderr: &[u8], took: Duration) -> JobResult {
    let stderr = String::from_utf8_lossy(stderr);
    let written = String::from_utf8_lossy(stdout).lines().rev().find_map(|l| serde_json::from_str::<JobResult>(l).ok());
    let mut r = written.unwrap_or_else(|| match code {
        None => JobResult::failed(Reason::Interrupted, true, "the job was killed"),
        Some(c) => {
            let line = tresor_sources::last_line(&stderr).unwrap_or("").trim_start_matches("tresor: error: ");
            JobResult::failed(Reason::Error, false, if line.is_empty() { format!("exit code {c}") } else { line.to_string() })
        }
    });
    if r.duration_seconds == 0.0 {
        r.duration_seconds = took.as_secs_f64();
    }
    r.log = tail(&stderr);
    r
}

/// The last few KiB a job printed on standard error, cut at a line.
fn tail(stderr: &str) -> Option<String> {
    const KEEP: usize = 4096;
    let t = stderr.trim_end();
    if t.is_empty() {
        return None;
    }
    let from = t.len().saturating_sub(KEEP);
    let from = t[from..].find('\n').filter(|_| from > 0).map_or(from, |i| from + i + 1);
    Some(t[from..].to_string())
}

/// `tresor` jobs against one source's repository, run to the end.
pub struct Tresor<'a> {
    exe: &'a Path,
    repo: &'a Repository,
    source: &'a str,
}

impl<'a> Tresor<'a> {
    pub fn new(exe: &'a Path, repo: &'a Repository, source: &'a str) -> Tresor<'a> {
        Tresor { exe, repo, source }
    }

    /// The job's details, or why it failed: its message and the first of
    /// the errors that led to it (a restore names each damaged object on a
    /// line of its own).
    fn job(&self, kind: Kind, restore: Option<RestoreSpec>) -> Result<Value, String> {
        let spec = JobSpec {
            kind,
            name: self.source.into(),
            source: None,
            repository: repository_spec(self.repo),
            offsite: None,
            restore,
            forget: None,
            plan_file: None,
            timeout_secs: None,
            check: None,
            application: None,
        };
        let r = crate::child::run_blocking(self.exe, &spec);
        if r.status == Status::Succeeded {
            return Ok(r.details.unwrap_or_default());
        }
        let last = r.message.unwrap_or_else(|| "failed".into());
        Err(match r.log.as_deref().and_then(|log| log.lines().find_map(|l| l.strip_prefix("error: "))) {
            Some(first) => format!("{last}; first: {first}"),
            None => last,
        })
    }

    /// The source's snapshots, oldest first (without a source: all).
    pub fn snapshots(&self) -> Result<Value, String> {
        self.job(Kind::Snapshots, None)
    }

    /// Restore snapshot `id` as `r` says.
    pub fn restore(&self, id: &str, r: RestoreSpec) -> Result<Value, String> {
        self.job(Kind::Restore, Some(RestoreSpec { snapshot: Some(id.into()), ..r }))
    }

    /// Restore snapshot `id` into directory `target`.
    pub fn restore_to_dir(&self, id: &str, target: &Path) -> Result<Value, String> {
        self.restore(id, RestoreSpec { target: Some(target.display().to_string()), ..RestoreSpec::default() })
    }

    /// Restore snapshot `id` into a service.
    pub fn restore_to(&self, id: &str, to: &str) -> Result<Value, String> {
        self.restore(id, RestoreSpec { to: Some(to.into()), ..RestoreSpec::default() })
    }
}

/// How the job protocol names one of the plan's repositories.
pub fn repository_spec(repo: &Repository) -> RepositorySpec {
    RepositorySpec { url: repo.url.clone(), password_file: Some(repo.password_file.clone()), password: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_result_line_is_the_result_and_a_killed_child_was_interrupted() {
        let ok = serde_json::to_string(&JobResult { snapshot: Some("ab".into()), ..JobResult::succeeded() }).unwrap();
        let r = read_result(Some(0), format!("{{\"noise\":1}}\n{ok}\n").as_bytes(), b"warning: x\n", Duration::from_secs(2));
        assert_eq!((r.status, r.snapshot.as_deref(), r.log.as_deref()), (Status::Succeeded, Some("ab"), Some("warning: x")));
        let killed = read_result(None, b"", b"", Duration::ZERO);
        assert_eq!((killed.reason, killed.temporary), (Some(Reason::Interrupted), true));
        let refused = read_result(Some(2), b"", b"tresor: error: cannot read the job spec\n", Duration::ZERO);
        assert_eq!((refused.reason, refused.message.as_deref()), (Some(Reason::Error), Some("cannot read the job spec")));
    }
}
