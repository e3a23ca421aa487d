//! The daemon: fires every schedule, runs jobs within the concurrency limit
//! (critical classes first), retries failures with doubling back-off, runs
//! retention and the off-site copy after each backup, catches up on runs
//! missed while it was down, and stops cleanly: running jobs get a grace
//! period, then are killed (a killed backup saves no snapshot).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

mod history;
mod outcome;
mod timetable;
mod watchers;

use self::outcome::{measure, record_evidence};
use self::timetable::REPOSITORY_JOBS;
use self::watchers::{Sizes, survey_volumes, watch_rehearsals, watch_wal};
use crate::check::{Severity, check};
pub use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{CheckSpec, Reason, Trigger};
use crate::notify::Notifier;
use crate::plan::Plan;
use crate::runner::{Kind, RestoreSpec, Runner, Work};
use crate::state::{AuditEntry, CheckHistory, Job, Outcome, State};
use crate::{Error, Result};

/// The daemon's name of its scheduled rehearsal of the whole plan: the job
/// history's source, the drill metrics' `source` label.
pub const REHEARSAL: &str = crate::rehearse::PLATFORM;

/// Requests from the API (or signals) to the daemon loop.
#[derive(Debug)]
pub enum Command {
    Backup { source: String, actor: String },
    Drill { source: String, actor: String },
    Restore { source: String, spec: Box<RestoreSpec>, actor: String },
    Reload { actor: String },
}

/// What the daemon and the HTTP side share.
pub struct Shared {
    pub plan: RwLock<Plan>,
    pub plan_file: PathBuf,
    pub state: State,
    pub metrics: Metrics,
    pub clock: Clock,
    pub runner: Runner,
    /// When each source (and `prune:REPOSITORY`) runs next.
    pub next_runs: Mutex<BTreeMap<String, DateTime<Utc>>>,
    pub running: Mutex<BTreeSet<String>>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub ready: AtomicBool,
    pub tick: Duration,
    pub grace: Duration,
    /// Sources whose newest backup failed, and since when.
    pub failing: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// Webhook deliveries, in order per source and receiver.
    pub http: Notifier,
    /// The newest survey of the cluster's claims: per covered namespace, those no source backs up.
    pub unprotected: Mutex<BTreeMap<String, Vec<String>>>,
    /// Unlocked repositories for reads.
    pub repos: crate::repos::Handles,
    /// The jobs as Kubernetes objects (with a BackupPlan resource only).
    pub runs: crate::runs_hook::Runs,
    /// The compliance report as last built, and when (`status::report`).
    pub report: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Shared {
    pub fn plan(&self) -> Plan {
        self.plan.read().expect("not poisoned").clone()
    }

    pub fn audit(&self, actor: &str, action: &str, target: &str, result: &str, detail: &str) {
        let e = AuditEntry {
            time: self.clock.now(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            result: result.into(),
            detail: detail.into(),
        };
        self.wrote("the audit trail", self.state.audit(&e));
        self.audit_to_repositories(&e);
    }

    /// A write to the state: a failure logged and kept for the metric, the
    /// alert and the status page (jobs went on running and vanished from
    /// the history, the API and the page, while the page stayed green).
    pub fn wrote<T>(&self, what: &str, result: crate::Result<T>) -> Option<T> {
        let now = self.clock.now();
        match result {
            Ok(v) => {
                self.metrics.state_written(what, now, Ok(()));
                Some(v)
            }
            Err(e) => {
                tracing::error!("{what}: {e}");
                self.metrics.state_written(what, now, Err(format!("{what}: {e}")));
                None
            }
        }
    }

    /// The audit entry as evidence too: in the repository of the source it
    /// names, else in every primary one (appended in the background, in order).
    fn audit_to_repositories(&self, e: &AuditEntry) {
        let plan = self.plan();
        let source = plan.sources.iter().find(|s| s.name == e.target).and_then(|s| plan.repository_of(s)).map(|(_, r)| r.clone());
        let targets = crate::repos::evidence_targets(&plan, source.as_ref());
        self.repos.append_later(targets, "audit", serde_json::to_value(e).unwrap_or_default());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    priority: u32,
    due: DateTime<Utc>,
    name: String,
    kind: Kind,
    trigger: Trigger,
    attempt: u32,
    actor: String,
    restore: Option<RestoreSpec>,
}

impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority.cmp(&o.priority).then(o.due.cmp(&self.due)).then(o.name.cmp(&self.name))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Load and check a plan: parse errors and check errors refuse it.
pub fn load_plan(file: &std::path::Path, now: DateTime<Utc>) -> Result<Plan> {
    load_plan_text(file, now).map(|(plan, _)| plan)
}

/// [`load_plan`], and the file's text the plan came from.
fn load_plan_text(file: &std::path::Path, now: DateTime<Utc>) -> Result<(Plan, String)> {
    let (plan, text) = Plan::load(file)?;
    let errors: Vec<_> = check(&plan, &text, now).into_iter().filter(|f| f.severity == Severity::Error).collect();
    if let Some(first) = errors.first() {
        return Err(Error::PlanCheck { count: errors.len(), first: format!("{}:{first}", file.display()) });
    }
    Ok((plan, text))
}

struct Loop {
    shared: Arc<Shared>,
    queue: BinaryHeap<Queued>,
    delayed: Vec<Queued>,
    tasks: JoinSet<(Queued, Outcome)>,
    /// The repositories' sizes, measured after each job that writes to one.
    sizes: Sizes,
    /// What each running task is for: a task that panics answers nothing.
    started: BTreeMap<tokio::task::Id, Queued>,
    cancel: watch::Sender<bool>,
    /// The plan file as the running plan was loaded from it: what a
    /// reload's audit entry says changed (`plan::diff`).
    plan_text: String,
}

impl Loop {
    fn queued(&self, name: &str, kind: Kind, trigger: Trigger, due: DateTime<Utc>, attempt: u32, actor: &str) -> Queued {
        let plan = self.shared.plan.read().expect("not poisoned");
        let class = plan.sources.iter().find(|s| s.name == name).map(|s| s.class.clone()).unwrap_or_default();
        Queued { priority: plan.priority(&class), due, name: name.into(), kind, trigger, attempt, actor: actor.into(), restore: None }
    }

    /// Set every next run from `now` (keeping those of the plan replaced
    /// that are due, see `timetable::next_runs`); at the start, first
    /// backups and missed runs are queued now.
    fn plan_runs(&mut self, now: DateTime<Utc>, at_start: bool) -> Result<()> {
        let plan = self.shared.plan();
        if at_start {
            for s in &plan.sources {
                let last = self.shared.state.last_scheduled(&s.name, "backup")?;
                // With the source's spread, as the run it would be: a daemon
                // started inside the spread runs that time's backup once.
                let missed = last.and_then(|l| timetable::next_due(&plan, &s.name, l)).is_some_and(|t| t <= now);
                if last.is_none() || (missed && plan.daemon.catch_up) {
                    let trigger = if last.is_none() { Trigger::First } else { Trigger::CatchUp };
                    let q = self.queued(&s.name, Kind::Backup, trigger, now, 0, "daemon");
                    self.queue.push(q);
                }
                self.queue_standby(&plan, &s.name, Trigger::First, now);
            }
        }
        let mut runs = self.shared.next_runs.lock().expect("not poisoned");
        *runs = timetable::next_runs(&plan, now, &runs);
        Ok(())
    }

    fn fire_due(&mut self, now: DateTime<Utc>) {
        let plan = self.shared.plan();
        let due: Vec<(String, DateTime<Utc>)> =
            self.shared.next_runs.lock().expect("not poisoned").iter().filter(|(_, t)| **t <= now).map(|(k, t)| (k.clone(), *t)).collect();
        for (key, at) in due {
            let (jobs, next) = self.due_jobs(&plan, &key, at, now);
            self.queue.extend(jobs);
            let mut runs = self.shared.next_runs.lock().expect("not poisoned");
            match next {
                Some(t) => runs.insert(key, t),
                None => runs.remove(&key),
            };
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed).into_iter().partition(|q| q.due <= now);
        self.delayed = waiting;
        self.queue.extend(ready);
    }

    /// The jobs a due schedule starts (a source's backup, a repository's
    /// prune, a class's drills, the plan's rehearsal), and when it is due next.
    fn due_jobs(&self, plan: &Plan, key: &str, at: DateTime<Utc>, now: DateTime<Utc>) -> (Vec<Queued>, Option<DateTime<Utc>>) {
        let next = timetable::next_due(plan, key, now);
        if key.strip_prefix("rehearsal:") == Some(REHEARSAL) {
            let q = Queued { priority: 0, ..self.queued(REHEARSAL, Kind::Rehearsal, Trigger::Schedule, at, 0, "daemon") };
            return (vec![q], next);
        }
        for (prefix, kind) in REPOSITORY_JOBS {
            let Some(repo) = key.strip_prefix(prefix) else { continue };
            let q = Queued {
                priority: 0,
                due: at,
                name: repo.into(),
                kind,
                trigger: Trigger::Schedule,
                attempt: 0,
                actor: "daemon".into(),
                restore: None,
            };
            return (vec![q], next);
        }
        if let Some(app) = key.strip_prefix(timetable::APP_DRILL) {
            return (vec![self.queued(app, Kind::Drill, Trigger::Schedule, at, 0, "daemon")], next);
        }
        if let Some(class) = key.strip_prefix("drill:") {
            let jobs = plan
                .sources
                .iter()
                .filter(|s| s.class == class)
                .map(|s| self.queued(&s.name, Kind::Drill, Trigger::Schedule, at, 0, "daemon"))
                .collect();
            return (jobs, next);
        }
        match plan.sources.iter().any(|s| s.name == key) {
            true => (vec![self.queued(key, Kind::Backup, Trigger::Schedule, at, 0, "daemon")], next),
            false => (Vec::new(), None),
        }
    }

    /// Start queued jobs while slots are free; a source never runs twice at once.
    fn start_jobs(&mut self) {
        let limit = self.shared.plan.read().expect("not poisoned").daemon.concurrency.max(1);
        let mut skipped = Vec::new();
        while self.tasks.len() < limit {
            let Some(q) = self.queue.pop() else { break };
            let key = format!("{}:{}", q.kind.as_str(), q.name);
            if !self.shared.running.lock().expect("not poisoned").insert(key) {
                skipped.push(q);
                continue;
            }
            let shared = self.shared.clone();
            let cancel = self.cancel.subscribe();
            let running = q.clone();
            let task = self.tasks.spawn(async move {
                let outcome = run_job(&shared, &q, cancel).await;
                (q, outcome)
            });
            self.started.insert(task.id(), running);
        }
        // A job for a source that is running now waits; duplicates of it
        // (waiting already, or skipped in this same pass) are dropped. Two
        // restores are duplicates only when they restore the same, the same way.
        for q in skipped {
            let same = |o: &Queued| o.name == q.name && o.kind == q.kind && o.restore == q.restore;
            if !self.queue.iter().chain(&self.delayed).any(same) {
                self.delayed.push(Queued { due: q.due, ..q });
            }
        }
        self.shared.metrics.set_running(self.tasks.len());
        self.shared.metrics.set_queued(self.queue.len() + self.delayed.len());
    }

    /// A task ended: its job finished, or its task panicked, which fails
    /// the job, so that its source is not held as running for ever.
    fn joined(&mut self, done: std::result::Result<(tokio::task::Id, (Queued, Outcome)), tokio::task::JoinError>, now: DateTime<Utc>) {
        let (q, outcome) = match done {
            Ok((id, done)) => {
                self.started.remove(&id);
                done
            }
            Err(e) => {
                let Some(q) = self.started.remove(&e.id()) else { return };
                let message = format!("the {} job of {} ended without a result: {e}", q.kind.as_str(), q.name);
                tracing::error!("{message}");
                (
                    q,
                    Outcome {
                        status: "failed".into(),
                        reason: Some(Reason::Error.as_str().into()),
                        message: Some(message),
                        ..Outcome::default()
                    },
                )
            }
        };
        self.finished(q, outcome, now);
    }

    fn finished(&mut self, q: Queued, outcome: Outcome, now: DateTime<Utc>) {
        self.shared.running.lock().expect("not poisoned").remove(&format!("{}:{}", q.kind.as_str(), q.name));
        self.shared.metrics.set_running(self.tasks.len());
        let plan = self.shared.plan();
        let retries = plan.sources.iter().find(|s| s.name == q.name).and_then(|s| s.retries).unwrap_or(plan.daemon.retries);
        // A permanent failure (a wrong password, a missing repository,
        // refused credentials) would fail the same way again: recorded once.
        // A standby is tried until it is made current, unless a newer job for it waits already.
        let retry = match q.kind {
            Kind::Standby => outcome.status == "failed" && !self.waiting(&q.name, Kind::Standby),
            _ => outcome.status == "failed" && outcome.temporary && q.attempt < retries,
        };
        self.shared.runs.finished(&q.actor, q.kind, &q.name, &outcome, retry, now);
        if let Some(repo) = written(&plan, &q) {
            self.sizes.measure(&self.shared, &repo);
        }
        if q.kind == Kind::Backup && outcome.status == "succeeded" {
            self.queue_standby(&plan, &q.name, Trigger::Backup, now);
        }
        if q.kind == Kind::Backup && saved(&outcome) {
            self.queue_copy(&plan, &q.name, Trigger::Backup, now);
        }
        if retry {
            let wait = match q.kind {
                Kind::Standby => crate::standby::backoff(plan.daemon.retry_backoff.0, q.attempt, crate::standby::rpo(&plan, &q.name)),
                _ => plan.daemon.retry_backoff.0 * 2u32.saturating_pow(q.attempt),
            };
            let due = now + chrono::Duration::from_std(wait).unwrap_or_default();
            tracing::warn!(
                "{} {} failed ({}); attempt {} in {}s",
                q.kind.as_str(),
                q.name,
                outcome.reason.as_deref().unwrap_or("error"),
                q.attempt + 2,
                wait.as_secs()
            );
            self.delayed.push(Queued { due, attempt: q.attempt + 1, trigger: Trigger::Retry, ..q });
        }
    }

    /// Whether a job of `kind` for `name` is queued or waits for its time.
    fn waiting(&self, name: &str, kind: Kind) -> bool {
        self.queue.iter().chain(&self.delayed).any(|o| o.name == name && o.kind == kind)
    }

    /// Queue a job that makes `name`'s standby current (crate::standby),
    /// if it has one; it replaces a retry waiting out its back-off.
    fn queue_standby(&mut self, plan: &Plan, name: &str, trigger: Trigger, now: DateTime<Utc>) {
        let Some(s) = plan.sources.iter().find(|s| s.name == name) else { return };
        let Some(standby) = &s.standby else { return };
        let Some(kind) = crate::standby::StandbyKind::of(&s.url, &standby.target) else { return };
        self.delayed.retain(|o| !(o.name == name && o.kind == Kind::Standby));
        let q = self.queued(name, Kind::Standby, trigger, now, 0, "daemon");
        self.queue.push(Queued { restore: Some(crate::standby::restore_spec(standby, kind)), ..q });
    }

    /// Queue the off-site copy of `name`'s new snapshot, if its class has
    /// one. A job of its own, so that a slow copy never holds the source's
    /// next backup back; a copy already waiting (a retry among them) takes
    /// the new snapshot along, as each copy takes every one missing.
    fn queue_copy(&mut self, plan: &Plan, name: &str, trigger: Trigger, now: DateTime<Utc>) {
        let Some(s) = plan.sources.iter().find(|s| s.name == name) else { return };
        if plan.classes.get(&s.class).and_then(|c| c.offsite.as_ref()).is_none() || self.waiting(name, Kind::Copy) {
            return;
        }
        let q = self.queued(name, Kind::Copy, trigger, now, 0, "daemon");
        self.queue.push(q);
    }

    fn command(&mut self, cmd: Command, now: DateTime<Utc>) {
        match cmd {
            Command::Backup { source, actor } => {
                let q = self.queued(&source, Kind::Backup, Trigger::Api, now, 0, &actor);
                self.queue.push(Queued { priority: u32::MAX, ..q });
            }
            Command::Drill { source, actor } => {
                let q = self.queued(&source, Kind::Drill, Trigger::Api, now, 0, &actor);
                self.queue.push(Queued { priority: u32::MAX, ..q });
            }
            Command::Restore { source, spec, actor } => {
                let q = self.queued(&source, Kind::Restore, Trigger::Api, now, 0, &actor);
                self.queue.push(Queued { priority: u32::MAX, restore: Some(*spec), ..q });
            }
            Command::Reload { actor } => match load_plan_text(&self.shared.plan_file, now) {
                Ok((plan, text)) => {
                    let (old, new) = (yaml(&self.plan_text), yaml(&text));
                    let mut changed = crate::plan::diff::changes(&old, &new).join("; ");
                    let later = crate::plan::diff::at_next_start(&old, &new);
                    if !later.is_empty() {
                        let later = later.join(", ");
                        tracing::warn!("{later} changed: the daemon reads it only when it starts, so it takes effect at the next start");
                        changed += &format!(" ({later} take effect at the next start)");
                    }
                    self.plan_text = text;
                    self.shared.metrics.forget_gone(&self.shared.plan(), &plan);
                    self.shared.metrics.take_on(&plan, now);
                    self.shared.metrics.declare(&plan);
                    self.shared.metrics.plan_loaded(now);
                    *self.shared.plan.write().expect("not poisoned") = plan;
                    // Repositories may have moved or changed password: unlock them anew.
                    let shared = self.shared.clone();
                    tokio::spawn(async move { shared.repos.clear().await });
                    let _ = self.plan_runs(now, false);
                    tracing::info!("plan reloaded from {}", self.shared.plan_file.display());
                    let detail = if changed.is_empty() { "nothing changed" } else { &changed };
                    self.shared.audit(&actor, "reload", &self.shared.plan_file.display().to_string(), "succeeded", detail);
                }
                Err(e) => {
                    tracing::error!("the new plan is refused, the old one stays: {e}");
                    self.shared.metrics.plan_refused(now, &e.to_string());
                    self.shared.audit(&actor, "reload", &self.shared.plan_file.display().to_string(), "failed", &e.to_string());
                }
            },
        }
    }
}

/// A plan file's YAML as JSON, for comparing two; null where it is none.
fn yaml(text: &str) -> serde_json::Value {
    serde_norway::from_str(text).unwrap_or_default()
}

/// Run until `shutdown` resolves to the grace period running jobs then get
/// to finish (a signal: `--grace`; a lost lease: none, as another replica
/// leads by then); the rest are cancelled.
pub async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: impl std::future::Future<Output = Duration>,
) -> Result<()> {
    let now = shared.clock.now();
    let (cancel, _) = watch::channel(false);
    let mut lp = Loop {
        shared: shared.clone(),
        queue: BinaryHeap::new(),
        delayed: Vec::new(),
        tasks: JoinSet::new(),
        started: BTreeMap::new(),
        cancel,
        sizes: Sizes::default(),
        plan_text: std::fs::read_to_string(&shared.plan_file).unwrap_or_default(),
    };
    if shared.state.is_empty()? {
        // A new state over repositories with a history (a lost claim, a new cluster): the evidence brings it back.
        match shared.repos.rebuild(&shared.plan(), &shared.state).await {
            Ok((0, _)) => {}
            Ok((jobs, drills)) => tracing::info!("the job history was rebuilt from the repositories: {jobs} jobs, {drills} drills"),
            Err(e) => tracing::warn!("the job history could not be rebuilt from the repositories: {e}"),
        }
    }
    for j in shared.state.mark_interrupted(now)? {
        tracing::warn!("job {} ({} {}) was interrupted when the daemon stopped; running it again", j.id, j.kind, j.source);
        shared.audit("daemon", &j.kind, &j.source, "failed", "interrupted: the daemon stopped while the job ran");
        if j.kind == "backup" {
            lp.queue.push(lp.queued(&j.source, Kind::Backup, Trigger::Retry, now, j.attempt + 1, "daemon"));
        }
    }
    let plan = shared.plan();
    for s in &plan.sources {
        if shared.state.copy_due(&s.name)? {
            lp.queue_copy(&plan, &s.name, Trigger::CatchUp, now);
        }
    }
    history::restore(&shared)?;
    lp.plan_runs(now, true)?;
    for name in shared.plan().repositories.keys() {
        lp.sizes.measure(&shared, name);
    }
    survey_volumes(&shared);
    watch_wal(&shared);
    watch_rehearsals(&shared);
    shared.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::pin!(shutdown);
    let grace = loop {
        tokio::select! {
            g = &mut shutdown => break g,
            Some(cmd) = commands.recv() => lp.command(cmd, shared.clock.now()),
            Some(done) = lp.tasks.join_next_with_id() => lp.joined(done, shared.clock.now()),
            _ = tokio::time::sleep(shared.tick) => {}
        }
        lp.fire_due(shared.clock.now());
        lp.start_jobs();
    };
    shared.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    if !lp.tasks.is_empty() {
        tracing::info!("stopping: waiting up to {}s for {} running job(s)", grace.as_secs(), lp.tasks.len());
    }
    let deadline = tokio::time::Instant::now() + grace;
    while !lp.tasks.is_empty() {
        match tokio::time::timeout_at(deadline, lp.tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = lp.cancel.send(true);
                while lp.tasks.join_next().await.is_some() {}
            }
        }
    }
    // The evidence of the last jobs, then the keys.
    shared.repos.flush().await;
    shared.repos.clear().await;
    Ok(())
}

fn work(plan: &Plan, plan_file: &std::path::Path, q: &Queued, kind: Kind) -> Option<Work> {
    // An application's drill: its figures under the strictest class of its sources.
    let app = (q.kind == Kind::Drill).then(|| plan.applications.iter().find(|a| a.name == q.name)).flatten();
    let app = app.filter(|_| !plan.sources.iter().any(|s| s.name == q.name));
    if matches!(q.kind, Kind::Prune | Kind::Check | Kind::Rehearsal) || app.is_some() {
        // These concern the whole plan: their jobs run against the first primary repository.
        let repo = match q.kind {
            Kind::Prune | Kind::Check => plan.repositories.get(&q.name)?.clone(),
            _ => crate::repos::evidence_targets(plan, None).into_iter().next()?,
        };
        return Some(Work {
            kind,
            name: q.name.clone(),
            class: app.map(|a| crate::app_drill::class_of(plan, a)).unwrap_or_default(),
            source: None,
            class_spec: None,
            repo,
            offsite: None,
            timeout: None,
            restore: None,
            plan_file: plan_file.to_path_buf(),
            run: None,
            check: None,
        });
    }
    let s = plan.sources.iter().find(|s| s.name == q.name)?;
    let class = plan.classes.get(&s.class)?;
    let (_, repo) = plan.repository_of(s)?;
    Some(Work {
        kind,
        name: s.name.clone(),
        class: s.class.clone(),
        source: Some(s.clone()),
        class_spec: Some(class.clone()),
        repo: repo.clone(),
        offsite: class.offsite.as_ref().and_then(|o| plan.repositories.get(o)).cloned(),
        timeout: s.timeout.map(|t| t.0),
        restore: q.restore.clone(),
        plan_file: plan_file.to_path_buf(),
        run: None,
        check: None,
    })
}

/// The repository a job may have written to (a failed one too, its packs
/// stored before it failed): a backup's, a copy's off-site one, the one
/// pruned.
fn written(plan: &Plan, q: &Queued) -> Option<String> {
    let source = || plan.sources.iter().find(|s| s.name == q.name);
    match q.kind {
        Kind::Backup => source().and_then(|s| plan.repository_of(s)).map(|(name, _)| name.to_string()),
        Kind::Copy => source().and_then(|s| plan.classes.get(&s.class)?.offsite.clone()),
        Kind::Prune => Some(q.name.clone()),
        _ => None,
    }
}

/// Whether a job ran to its end, whole or partial: a backup's snapshot was saved.
fn saved(outcome: &Outcome) -> bool {
    outcome.status == "succeeded" || outcome.reason.as_deref() == Some(Reason::Partial.as_str())
}

/// One queued job and, after a backup (whole or partial), its retention;
/// its copy is a job of its own (`Loop::queue_copy`).
async fn run_job(shared: &Arc<Shared>, q: &Queued, cancel: watch::Receiver<bool>) -> Outcome {
    let plan = shared.plan();
    let Some(mut w) = work(&plan, &shared.plan_file, q, q.kind) else {
        return Outcome {
            status: "failed".into(),
            reason: Some("unknown".into()),
            message: Some(format!("{} is not in the plan", q.name)),
            ..Outcome::default()
        };
    };
    if w.kind == Kind::Check {
        w.check = Some(check_scope(shared, &plan, &w.name));
    }
    let outcome = run_one(shared, q, &w, cancel.clone()).await;
    if q.kind != Kind::Backup || !saved(&outcome) {
        return outcome;
    }
    // A partial snapshot goes off site with what it holds; retention never
    // lets it take a whole one's place, and keeps the newest whole one.
    let class = w.class_spec.clone().unwrap_or_else(|| unreachable!("a backup has a class"));
    if class.retention != Default::default() {
        run_one(shared, q, &Work { kind: Kind::Forget, ..w.clone() }, cancel).await;
    }
    outcome
}

/// What a check found: none when it passed; when it found damage, the
/// problems its report lists and the packs it names damaged; nothing when
/// it could not judge (the repository unreachable).
fn check_findings(outcome: &mut Outcome) {
    if outcome.status == "succeeded" {
        outcome.problems = Some(0);
        return;
    }
    let Some(report) = outcome.summary.as_ref().filter(|_| outcome.reason.as_deref() == Some(Reason::RepositoryDamaged.as_str())) else {
        return;
    };
    outcome.problems = report["problems"].as_array().map(|p| p.len() as u64);
    // Packs that do not parse are not recorded: the next check reads this one's slice again.
    outcome.damaged_packs = serde_json::from_value(report["damaged_packs"].clone())
        .inspect_err(|e| tracing::warn!("the check's damaged packs are unknown ({e}): the next check reads its slice again"))
        .ok();
}

/// What a repository's next check reads: the slice after that of the last
/// check that judged it, and the packs that one found damaged, so that the
/// slices move on while damage found stays read (and reported) until it is
/// dealt with. After damage a check recorded no packs for (one from before
/// they were kept), that check's slice again: the one after the last pass.
fn check_scope(shared: &Shared, plan: &Plan, repo: &str) -> CheckSpec {
    let slices = u64::from(plan.check_slices(repo));
    let h = shared.state.check_history(repo).unwrap_or_else(|e| {
        tracing::warn!("the checks of {repo} so far are unknown ({e}); this one reads the first slice");
        CheckHistory::default()
    });
    let (done, packs) = match h.damaged {
        Some(packs) => (h.judged, packs),
        None => (h.passed, Vec::new()),
    };
    CheckSpec { slice: (done % slices) as u32 + 1, slices: slices as u32, packs }
}

async fn run_one(shared: &Arc<Shared>, q: &Queued, w: &Work, cancel: watch::Receiver<bool>) -> Outcome {
    let started = shared.clock.now();
    let wall = std::time::Instant::now();
    let job = Job {
        id: 0,
        source: w.name.clone(),
        class: w.class.clone(),
        kind: w.kind.as_str().into(),
        trigger: q.trigger.as_str().into(),
        attempt: q.attempt,
        scheduled_at: q.due,
        started_at: started,
        ended_at: None,
        duration: None,
        outcome: Outcome { status: "running".into(), ..Outcome::default() },
    };
    let id = shared.wrote("the job history", shared.state.start_job(&job)).ok_or(());
    shared.runs.started(&q.actor, w.kind, &w.name, id.as_ref().ok().copied(), started);
    let w = Work { run: id.as_ref().ok().map(|id| format!("job-{id}")), ..w.clone() };
    let mut outcome = shared.runner.run(&w, cancel).await;
    if w.kind == Kind::Check {
        check_findings(&mut outcome);
    }
    let ended = shared.clock.now();
    let seconds = wall.elapsed().as_secs_f64();
    // The job, as evidence in its repository (its log stays in the local state only).
    let record = Job {
        id: *id.as_ref().unwrap_or(&0),
        ended_at: Some(ended),
        duration: Some(seconds),
        outcome: Outcome { log: None, ..outcome.clone() },
        ..job
    };
    record_evidence(shared, &w, &record, &outcome).await;
    measure(shared, &w, &outcome, seconds, (started, ended));
    // The history says a job ended only once its evidence and metrics are recorded,
    // so whoever waits for the job's end reads them complete.
    if let Ok(id) = id {
        shared.wrote("the job history", shared.state.finish_job(id, ended, &outcome));
    }
    let detail = match (&outcome.snapshot, &outcome.reason, &outcome.message) {
        (Some(s), _, _) => format!("snapshot {s}"),
        (_, Some(r), Some(m)) => format!("{r}: {m}"),
        _ => String::new(),
    };
    // A drill's entry names its protocol entries, as one run by hand does.
    let tests: Vec<&str> = match w.kind {
        Kind::Drill => outcome.summary.iter().filter_map(|s| s.as_array()).flatten().filter_map(|d| d["test_id"].as_str()).collect(),
        _ => Vec::new(),
    };
    // A restore's entry says what went where (a URL without its password).
    let restored = w.restore.as_ref().filter(|_| w.kind == Kind::Restore).map(|r| {
        let what =
            r.snapshot.as_deref().map_or("the newest snapshot that matches".into(), |s| format!("snapshot {}", &s[..s.len().min(8)]));
        format!("{what} into {}", r.to.as_ref().map(ToString::to_string).or(r.target.clone()).unwrap_or_default())
    });
    let detail =
        [restored.unwrap_or_default(), tests.join(" "), detail].into_iter().filter(|d| !d.is_empty()).collect::<Vec<_>>().join(": ");
    shared.audit(&q.actor, w.kind.as_str(), &w.name, &outcome.status, &detail);
    outcome
}
