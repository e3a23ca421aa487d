//! Running one job: the plan's settings resolved into a [`JobSpec`], run
//! by a `tresor job run` child, its [`JobResult`] recorded as an outcome.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::sync::watch;

use crate::child::repository_spec;
use crate::model::{CheckSpec, ForgetSpec, HooksSpec, JobResult, JobSpec, Keep as KeepSpec, Reason, SourceJob};
pub use crate::model::{Kind, RestoreSpec};
use crate::plan::{Class, Keep, OnError, Repository, SourceSpec};
use crate::state::Outcome;

/// Everything one run needs, resolved from the plan.
#[derive(Debug, Clone)]
pub struct Work {
    pub kind: Kind,
    /// The source's name (for `prune`: the repository's).
    pub name: String,
    pub class: String,
    pub source: Option<SourceSpec>,
    pub class_spec: Option<Class>,
    pub repo: Repository,
    pub offsite: Option<Repository>,
    pub timeout: Option<Duration>,
    pub restore: Option<RestoreSpec>,
    /// The plan file (a drill reads it in its own process).
    pub plan_file: PathBuf,
    /// The daemon's job id, once the job is recorded.
    pub run: Option<String>,
    /// A check's slice of the packs.
    pub check: Option<CheckSpec>,
}

/// Where jobs run: `tresor job run` children (the daemon's), or, for tests
/// of the scheduler, a stand-in that answers with results of its own.
pub trait Jobs: Send + Sync {
    fn run<'a>(&'a self, spec: &'a JobSpec, limit: Duration, cancel: watch::Receiver<bool>) -> BoxFuture<'a, JobResult>;
}

struct Children(PathBuf);

impl Jobs for Children {
    fn run<'a>(&'a self, spec: &'a JobSpec, limit: Duration, cancel: watch::Receiver<bool>) -> BoxFuture<'a, JobResult> {
        Box::pin(crate::child::run(&self.0, spec, limit, cancel))
    }
}

/// Runs jobs, as `tresor` (this very program) children unless told otherwise.
#[derive(Clone)]
pub struct Runner {
    /// The program drills and queries run as.
    pub exe: PathBuf,
    jobs: Arc<dyn Jobs>,
}

/// A plan's rule for one period, as `forget` reads it.
fn keep(k: Option<Keep>, period: &str) -> Option<KeepSpec> {
    k.map(|k| match k {
        Keep::Count(n) => KeepSpec::Count(n),
        Keep::Within(_) => {
            let [_, span] = k.args(period);
            KeepSpec::Within(span)
        }
    })
}

fn source_job(w: &Work, s: &SourceSpec) -> SourceJob {
    let h = &s.hooks;
    SourceJob {
        name: w.name.clone(),
        class: w.class.clone(),
        url: s.url.clone(),
        tags: s.tags.clone(),
        hooks: HooksSpec {
            pre: h.pre.clone(),
            post: h.post.clone(),
            timeout_secs: h.timeout.map(|t| t.secs()),
            continue_on_error: h.on_error == OnError::Continue,
        },
        pod: s.pod.clone(),
        run: w.run.clone(),
        scope: s.scope.clone(),
        archives_wal: s.wal_archive.is_some(),
    }
}

/// The job a piece of work is, complete with its secrets' whereabouts.
pub fn spec(w: &Work) -> JobSpec {
    let forget = (w.kind == Kind::Forget).then(|| w.class_spec.as_ref().map(|c| &c.retention)).flatten().map(|r| ForgetSpec {
        last: r.last,
        hourly: keep(r.hourly, "hourly"),
        daily: keep(r.daily, "daily"),
        weekly: keep(r.weekly, "weekly"),
        monthly: keep(r.monthly, "monthly"),
        yearly: keep(r.yearly, "yearly"),
    });
    JobSpec {
        kind: w.kind,
        name: w.name.clone(),
        source: w.source.as_ref().map(|s| source_job(w, s)),
        repository: repository_spec(&w.repo),
        offsite: w.offsite.as_ref().filter(|_| w.kind == Kind::Copy).map(repository_spec),
        restore: w.restore.clone().filter(|_| matches!(w.kind, Kind::Restore | Kind::Standby)),
        forget,
        plan_file: matches!(w.kind, Kind::Drill | Kind::Rehearsal).then(|| w.plan_file.clone()),
        timeout_secs: w.timeout.map(|t| t.as_secs()),
        check: w.check.clone().filter(|_| w.kind == Kind::Check),
        application: (w.kind == Kind::Drill && w.source.is_none()).then(|| w.name.clone()),
    }
}

/// What the job history records of a result.
pub fn outcome(r: JobResult) -> Outcome {
    Outcome {
        status: r.status.as_str().into(),
        reason: r.reason.map(|x| x.as_str().to_string()),
        temporary: r.temporary,
        message: r.message,
        snapshot: r.snapshot,
        bytes_processed: r.bytes_processed,
        bytes_added: r.bytes_added,
        log: r.log,
        lag_seconds: r.lag_seconds,
        summary: r.details,
        in_target: r.in_target,
        problems: None,
        damaged_packs: None,
    }
}

impl Runner {
    /// Jobs as children running `exe`.
    pub fn children(exe: PathBuf) -> Runner {
        Runner { jobs: Arc::new(Children(exe.clone())), exe }
    }

    /// Jobs run by `jobs` (a test's stand-in).
    pub fn with(exe: PathBuf, jobs: Arc<dyn Jobs>) -> Runner {
        Runner { exe, jobs }
    }

    /// Run to the end, the time limit, or cancellation.
    pub async fn run(&self, w: &Work, cancel: watch::Receiver<bool>) -> Outcome {
        use futures::FutureExt;
        let limit = w.timeout.unwrap_or(Duration::from_secs(24 * 3600));
        let spec = spec(w);
        // A panic while running a job fails that job, recorded as any failure is.
        let ran = std::panic::AssertUnwindSafe(async { self.jobs.run(&spec, limit, cancel).await }).catch_unwind().await;
        outcome(ran.unwrap_or_else(|panic| {
            let said = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            JobResult::failed(Reason::Error, false, format!("the job panicked: {}", said.unwrap_or_default()))
        }))
    }
}
