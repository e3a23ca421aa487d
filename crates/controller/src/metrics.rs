//! Prometheus metrics, named as the requirement documents name them
//! (`backup_job_success_total`, `backup_duration_seconds`, …), labelled
//! per source and class, with the failure reason as a label.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::plan::Plan;
use crate::standby::StandbyPoint;
use crate::state::Outcome;
use crate::walrpo::WalPoint;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub source: String,
    pub class: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabels {
    pub repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub source: String,
    pub class: String,
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Durations from a second to a day, for percentiles across runs.
type Durations = Family<SourceLabels, Histogram, fn() -> Histogram>;

fn durations() -> Durations {
    Family::new_with_constructor(|| {
        Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 86_400.0])
    })
}

/// A repository's storage as the status page shows it.
pub struct Storage {
    pub stored: Option<u64>,
    pub free: Option<u64>,
    pub total: Option<u64>,
    /// When the newest check that passed ended, as seconds since the epoch.
    pub checked: Option<i64>,
    /// What the newest check found.
    pub problems: Option<i64>,
}

pub struct Metrics {
    registry: Registry,
    success: Family<SourceLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    job_failure: Family<JobLabels, Counter>,
    duration: Family<SourceLabels, FloatGauge>,
    duration_histogram: Durations,
    restore_histogram: Durations,
    size: Family<SourceLabels, Gauge>,
    added: Family<SourceLabels, Gauge>,
    last_success: Family<SourceLabels, FloatGauge>,
    last_failure: Family<SourceLabels, FloatGauge>,
    rpo: Family<ClassLabels, FloatGauge>,
    rpo_target: Family<ClassLabels, Gauge>,
    rto_target: Family<ClassLabels, Gauge>,
    restore_success: Family<SourceLabels, Counter>,
    restore_failure: Family<FailureLabels, Counter>,
    restore_duration: Family<SourceLabels, FloatGauge>,
    lag: Family<SourceLabels, FloatGauge>,
    drill_duration: Family<SourceLabels, FloatGauge>,
    drill_success: Family<SourceLabels, Gauge>,
    rto_achieved: Family<SourceLabels, FloatGauge>,
    rpo_achieved: Family<SourceLabels, FloatGauge>,
    running: Gauge,
    queued: Gauge,
    plan_ok: Gauge,
    state_ok: Gauge,
    plan_loaded: FloatGauge,
    repo_errors: Family<RepoLabels, Counter>,
    storage_free: Family<RepoLabels, Gauge>,
    repo_size: Family<RepoLabels, Gauge>,
    check_passed: Family<RepoLabels, Gauge>,
    check_problems: Family<RepoLabels, Gauge>,
    storage_size: Family<RepoLabels, Gauge>,
    unprotected: Family<NamespaceLabels, Gauge>,
    wal_lag: Family<SourceLabels, FloatGauge>,
    wal_gap: Family<SourceLabels, Gauge>,
    standby_lag: Family<SourceLabels, FloatGauge>,
    /// Sources with a warm standby: its newest figures (crate::standby).
    standbys: Mutex<BTreeMap<String, StandbyPoint>>,
    /// Sources without a restorable point yet: since when they wait for their first.
    pending: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// Failure reasons outside `Reason::ALL` that labelled a series, for removing it.
    reasons: Mutex<std::collections::BTreeSet<String>>,
    /// Newest successful backup per source, for the RPO gauges.
    newest: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// Sources that archive WAL: the archive's newest figures.
    wal: Mutex<BTreeMap<String, WalPoint>>,
    /// Sources with an off-site copy: when their oldest backup not yet
    /// copied there started (none: the off-site copy is current).
    offsite_behind: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// The newest reload that refused the plan file, and why, until one loads it.
    refused_plan: Mutex<Option<(DateTime<Utc>, String)>>,
    /// Since when, and why, the daemon cannot write each part of its
    /// state (the job history, the audit trail), by part.
    state_refused: Mutex<BTreeMap<String, (DateTime<Utc>, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics::unregistered();
        m.register_backups(&mut r);
        m.register_restores(&mut r);
        m.register_jobs_and_storage(&mut r);
        m.state_ok.set(1);
        Metrics { registry: r, ..m }
    }

    /// Every family empty, none in a registry yet.
    fn unregistered() -> Metrics {
        Metrics {
            success: Family::default(),
            failure: Family::default(),
            job_failure: Family::default(),
            duration: Family::default(),
            duration_histogram: durations(),
            restore_histogram: durations(),
            size: Family::default(),
            added: Family::default(),
            last_success: Family::default(),
            last_failure: Family::default(),
            rpo: Family::default(),
            rpo_target: Family::default(),
            rto_target: Family::default(),
            restore_success: Family::default(),
            restore_failure: Family::default(),
            restore_duration: Family::default(),
            lag: Family::default(),
            drill_duration: Family::default(),
            drill_success: Family::default(),
            rto_achieved: Family::default(),
            rpo_achieved: Family::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            plan_ok: Gauge::default(),
            state_ok: Gauge::default(),
            plan_loaded: FloatGauge::default(),
            repo_errors: Family::default(),
            storage_free: Family::default(),
            repo_size: Family::default(),
            check_passed: Family::default(),
            check_problems: Family::default(),
            storage_size: Family::default(),
            unprotected: Family::default(),
            wal_lag: Family::default(),
            wal_gap: Family::default(),
            standby_lag: Family::default(),
            standbys: Mutex::default(),
            reasons: Mutex::default(),
            pending: Mutex::default(),
            newest: Mutex::default(),
            wal: Mutex::default(),
            offsite_behind: Mutex::default(),
            refused_plan: Mutex::default(),
            state_refused: Mutex::default(),
            registry: Registry::default(),
        }
    }

    /// The backups' outcomes, sizes and durations, and the classes' targets.
    fn register_backups(&self, r: &mut Registry) {
        r.register("backup_job_success", "Backups that saved a snapshot", self.success.clone());
        r.register("backup_job_failure", "Backups that failed, by reason", self.failure.clone());
        r.register("tresor_job_failure", "Follow-up jobs (forget, copy, prune) that failed", self.job_failure.clone());
        r.register("backup_duration_seconds", "Duration of the newest backup", self.duration.clone());
        r.register("backup_job_duration_seconds", "Durations of backups (for percentiles)", self.duration_histogram.clone());
        r.register("restore_job_duration_seconds", "Durations of restores and drills (for percentiles)", self.restore_histogram.clone());
        r.register("backup_size_bytes", "Bytes read by the newest backup", self.size.clone());
        r.register("backup_added_bytes", "Bytes the newest backup added to the repository (before compression)", self.added.clone());
        r.register("backup_last_success_timestamp_seconds", "When the newest successful backup ended", self.last_success.clone());
        r.register("backup_last_failure_timestamp_seconds", "When the newest failed backup ended", self.last_failure.clone());
        r.register("backup_rpo_seconds", "Age of the newest restorable point of the class's stalest source", self.rpo.clone());
        r.register("backup_rpo_target_seconds", "The class's RPO target", self.rpo_target.clone());
        r.register("backup_rto_target_seconds", "The class's RTO target", self.rto_target.clone());
    }

    /// The restores' and drills' outcomes, the RTO and RPO they achieved, and the off-site copy's lag.
    fn register_restores(&self, r: &mut Registry) {
        r.register("restore_success", "Restores that succeeded, drills' restores too", self.restore_success.clone());
        r.register("restore_failure", "Restores that failed, drills that failed too, by reason", self.restore_failure.clone());
        r.register("restore_duration_seconds", "Duration of the newest restore (the measured RTO)", self.restore_duration.clone());
        r.register(
            "backup_replication_lag_seconds",
            "How long the oldest backup not yet off site has waited (0: the off-site copy is current)",
            self.lag.clone(),
        );
        r.register(
            "restore_drill_duration_seconds",
            "How long the newest drill that passed took to a validated restore",
            self.drill_duration.clone(),
        );
        r.register("restore_drill_success", "Whether the newest drill passed (1) or failed (0)", self.drill_success.clone());
        r.register("rto_achieved_seconds", "Measured RTO of the newest drill that passed", self.rto_achieved.clone());
        r.register("rpo_achieved_seconds", "Age of the restore point the newest drill that passed restored", self.rpo_achieved.clone());
    }

    /// The job queue, the repositories and their storage, the unprotected
    /// volumes, the WAL archives and the standbys.
    fn register_jobs_and_storage(&self, r: &mut Registry) {
        r.register("backup_jobs_running", "Jobs running now", self.running.clone());
        r.register("backup_jobs_queued", "Jobs waiting for a free slot, their source or their retry", self.queued.clone());
        r.register(
            "backup_plan_last_reload_successful",
            "Whether the newest load of the plan file succeeded (0: it was refused, the daemon runs the plan it loaded before)",
            self.plan_ok.clone(),
        );
        r.register(
            "backup_state_writable",
            "Whether the daemon's newest write to its state database succeeded (0: the job history, the API and the status page miss what happened since)",
            self.state_ok.clone(),
        );
        r.register(
            "backup_plan_last_reload_success_timestamp_seconds",
            "When the plan the daemon runs was loaded",
            self.plan_loaded.clone(),
        );
        r.register(
            "backup_repository_errors",
            "Jobs that failed because their repository could not be reached or was missing",
            self.repo_errors.clone(),
        );
        r.register("backup_repository_size_bytes", "What the repository takes in storage", self.repo_size.clone());
        r.register(
            "backup_repository_check_last_success_timestamp_seconds",
            "When the repository's newest passed check ended",
            self.check_passed.clone(),
        );
        r.register(
            "backup_repository_check_problems",
            "Problems the repository's newest check found (0: it passed)",
            self.check_problems.clone(),
        );
        r.register("backup_storage_free_bytes", "Free space where a local repository lives", self.storage_free.clone());
        r.register("backup_storage_size_bytes", "Size of the file system a local repository lives on", self.storage_size.clone());
        r.register(
            "backup_unprotected_volumes",
            "Claims in namespaces the plan covers that no pvc:// source backs up",
            self.unprotected.clone(),
        );
        r.register(
            "backup_wal_archive_lag_seconds",
            "How far a WAL-archiving source's archive is behind its server (0: nothing unarchived)",
            self.wal_lag.clone(),
        );
        r.register("backup_wal_archive_gap_segments", "WAL segments missing after the unbroken part of the archive", self.wal_gap.clone());
        r.register(
            "standby_lag_seconds",
            "How far a source's warm standby is behind: the age of the oldest archived commit or snapshot it lacks (0: it holds the newest, within the RPO)",
            self.standby_lag.clone(),
        );
    }

    /// Create every source's series at zero (its restore time and
    /// replication lag as NaN: none measured yet), so a first failure is an increase, and dashboards
    /// and alerts see the series from the start.
    pub fn declare(&self, plan: &Plan) {
        for repository in plan.repositories.keys() {
            let _ = self.repo_errors.get_or_create(&RepoLabels { repository: repository.clone() });
        }
        for s in &plan.sources {
            let l = SourceLabels { source: s.name.clone(), class: s.class.clone() };
            let _ = self.success.get_or_create(&l);
            let _ = self.restore_success.get_or_create(&l);
            let _ = self.duration_histogram.get_or_create(&l);
            let _ = self.restore_histogram.get_or_create(&l);
            self.restore_duration.get_or_create(&l).set(f64::NAN);
            if plan.classes.get(&s.class).is_some_and(|c| c.offsite.is_some()) {
                self.lag.get_or_create(&l).set(f64::NAN);
            }
            for reason in crate::model::Reason::ALL.map(crate::model::Reason::as_str) {
                let l = FailureLabels { source: s.name.clone(), class: s.class.clone(), reason: reason.into() };
                let _ = self.failure.get_or_create(&l);
                let _ = self.restore_failure.get_or_create(&l);
            }
        }
    }

    /// The newest survey: a series per covered namespace (zero when all its claims are protected).
    pub fn set_unprotected(&self, by_namespace: &BTreeMap<String, Vec<String>>) {
        self.unprotected.clear();
        for (namespace, claims) in by_namespace {
            self.unprotected.get_or_create(&NamespaceLabels { namespace: namespace.clone() }).set(claims.len() as i64);
        }
    }

    pub fn repository_size(&self, repository: &str, bytes: u64) {
        self.repo_size.get_or_create(&RepoLabels { repository: repository.into() }).set(bytes as i64);
    }

    /// Per repository: what it stores, and its file system's space if local.
    pub fn storage(&self, plan: &Plan) -> BTreeMap<String, Storage> {
        plan.repositories
            .iter()
            .map(|(name, r)| {
                let l = RepoLabels { repository: name.clone() };
                let stored = self.repo_size.get(&l).map(|g| g.get() as u64);
                let (free, total) = local_space(&r.url).unzip();
                let (checked, problems) = (self.check_passed.get(&l).map(|g| g.get()), self.check_problems.get(&l).map(|g| g.get()));
                (name.clone(), Storage { stored, free, total, checked, problems })
            })
            .collect()
    }

    pub fn set_running(&self, n: usize) {
        self.running.set(n as i64);
    }

    pub fn set_queued(&self, n: usize) {
        self.queued.set(n as i64);
    }

    /// The plan file loaded (at start or by a reload): what the daemon runs now.
    pub fn plan_loaded(&self, at: DateTime<Utc>) {
        self.plan_ok.set(1);
        self.plan_loaded.set(at.timestamp() as f64);
        *self.refused_plan.lock().expect("not poisoned") = None;
    }

    /// A reload refused the plan file; the plan loaded before stays.
    pub fn plan_refused(&self, at: DateTime<Utc>, why: &str) {
        self.plan_ok.set(0);
        *self.refused_plan.lock().expect("not poisoned") = Some((at, why.to_string()));
    }

    /// A write to `part` of the state database (the job history, the
    /// audit trail) succeeded (`Ok`) or failed, at `at`: the first failure
    /// of a run of them is kept until a write to that same part succeeds
    /// (on a nearly full disk one insert may fit where the next does not).
    pub fn state_written(&self, part: &str, at: DateTime<Utc>, result: Result<(), String>) {
        let mut refused = self.state_refused.lock().expect("not poisoned");
        match result {
            Ok(()) => _ = refused.remove(part),
            Err(why) => _ = refused.entry(part.to_string()).or_insert((at, why)),
        }
        self.state_ok.set(i64::from(refused.is_empty()));
    }

    /// Since when, and why, the state cannot be written (the oldest failure
    /// of a part still failing), while it cannot.
    pub fn state_refused(&self) -> Option<(DateTime<Utc>, String)> {
        self.state_refused.lock().expect("not poisoned").values().min_by_key(|(at, _)| *at).cloned()
    }

    /// When the plan file was last refused and why, while no reload since loaded it.
    pub fn refused_plan(&self) -> Option<(DateTime<Utc>, String)> {
        self.refused_plan.lock().expect("not poisoned").clone()
    }

    /// A check's verdict: when one last passed, and the problems the
    /// newest found. A check that could not judge (its repository
    /// unreachable) found none to count and leaves them as they were.
    pub fn check_done(&self, repository: &str, passed: Option<DateTime<Utc>>, problems: Option<u64>) {
        let l = RepoLabels { repository: repository.into() };
        if let Some(at) = passed {
            self.check_passed.get_or_create(&l).set(at.timestamp());
        }
        if let Some(n) = problems {
            self.check_problems.get_or_create(&l).set(n as i64);
        }
    }

    /// What a reload took out of `old` to make `new`: every series of a
    /// repository, class or source gone, and of a source moved to another
    /// class under its old one (its newest success and failure, and its
    /// newest drill's figures, carried to the new), so that no alert keeps
    /// firing, and no dashboard keeps a line, for something not in the plan.
    pub fn forget_gone(&self, old: &Plan, new: &Plan) {
        for repository in old.repositories.keys().filter(|r| !new.repositories.contains_key(*r)) {
            let l = RepoLabels { repository: repository.clone() };
            let families: [&dyn Forget<RepoLabels>; 6] =
                [&self.repo_errors, &self.repo_size, &self.check_passed, &self.check_problems, &self.storage_free, &self.storage_size];
            for f in families {
                f.forget(&l);
            }
        }
        for class in old.classes.keys().filter(|c| !new.classes.contains_key(*c)) {
            let l = ClassLabels { class: class.clone() };
            let families: [&dyn Forget<ClassLabels>; 3] = [&self.rpo, &self.rpo_target, &self.rto_target];
            for f in families {
                f.forget(&l);
            }
        }
        for s in &old.sources {
            let moved = match new.sources.iter().find(|n| n.name == s.name) {
                Some(n) if n.class == s.class => continue,
                Some(n) => Some(SourceLabels { source: s.name.clone(), class: n.class.clone() }),
                None => None,
            };
            self.forget_source(&SourceLabels { source: s.name.clone(), class: s.class.clone() }, moved.as_ref());
        }
    }

    /// Remove every series of source `l`; the figures that stand until the
    /// next job are carried to `to` when the source moved there.
    fn forget_source(&self, l: &SourceLabels, to: Option<&SourceLabels>) {
        for f in [&self.last_success, &self.last_failure, &self.rto_achieved, &self.rpo_achieved, &self.drill_duration] {
            if let (Some(to), Some(v)) = (to, f.get(l).map(|g| g.get())) {
                f.get_or_create(to).set(v);
            }
            f.remove(l);
        }
        if let (Some(to), Some(v)) = (to, self.drill_success.get(l).map(|g| g.get())) {
            self.drill_success.get_or_create(to).set(v);
        }
        let families: [&dyn Forget<SourceLabels>; 13] = [
            &self.success,
            &self.duration,
            &self.duration_histogram,
            &self.restore_histogram,
            &self.size,
            &self.added,
            &self.restore_success,
            &self.restore_duration,
            &self.lag,
            &self.drill_success,
            &self.wal_lag,
            &self.wal_gap,
            &self.standby_lag,
        ];
        for f in families {
            f.forget(l);
        }
        let seen = self.reasons.lock().expect("not poisoned").clone();
        for reason in crate::model::Reason::ALL.map(|r| r.as_str().to_string()).into_iter().chain(seen) {
            let f = FailureLabels { source: l.source.clone(), class: l.class.clone(), reason };
            self.failure.remove(&f);
            self.restore_failure.remove(&f);
        }
        for kind in crate::model::Kind::ALL {
            self.job_failure.remove(&JobLabels { source: l.source.clone(), class: l.class.clone(), kind: kind.as_str().into() });
        }
        if to.is_none() {
            self.newest.lock().expect("not poisoned").remove(&l.source);
            self.pending.lock().expect("not poisoned").remove(&l.source);
            self.wal.lock().expect("not poisoned").remove(&l.source);
            self.offsite_behind.lock().expect("not poisoned").remove(&l.source);
            self.standbys.lock().expect("not poisoned").remove(&l.source);
        }
    }

    pub fn repository_failed(&self, repository: &str) {
        self.repo_errors.get_or_create(&RepoLabels { repository: repository.into() }).inc();
    }

    /// Seed the newest successful backup (from the state database at start).
    pub fn seed(&self, source: &str, class: &str, at: DateTime<Utc>) {
        self.newest.lock().expect("not poisoned").insert(source.into(), at);
        self.pending.lock().expect("not poisoned").remove(source);
        self.last_success.get_or_create(&SourceLabels { source: source.into(), class: class.into() }).set(at.timestamp() as f64);
    }

    /// Seed the newest failed backup (from the state database at start).
    pub fn seed_failure(&self, source: &str, class: &str, at: DateTime<Utc>) {
        self.last_failure.get_or_create(&SourceLabels { source: source.into(), class: class.into() }).set(at.timestamp() as f64);
    }

    pub fn backup_done(&self, source: &str, class: &str, o: &Outcome, seconds: f64, at: DateTime<Utc>) {
        let l = SourceLabels { source: source.into(), class: class.into() };
        self.duration.get_or_create(&l).set(seconds);
        self.duration_histogram.get_or_create(&l).observe(seconds);
        if o.status == "succeeded" {
            self.success.get_or_create(&l).inc();
            self.size.get_or_create(&l).set(o.bytes_processed.unwrap_or(0) as i64);
            self.added.get_or_create(&l).set(o.bytes_added.unwrap_or(0) as i64);
            self.seed(source, class, at);
        } else {
            let reason = self.reason(o.reason.as_deref().unwrap_or("error"));
            self.failure.get_or_create(&FailureLabels { source: source.into(), class: class.into(), reason }).inc();
            self.seed_failure(source, class, at);
        }
    }

    /// A failure reason as a label, kept for `forget_source`.
    fn reason(&self, reason: &str) -> String {
        self.reasons.lock().expect("not poisoned").insert(reason.into());
        reason.into()
    }

    pub fn job_failed(&self, source: &str, class: &str, kind: &str) {
        self.job_failure.get_or_create(&JobLabels { source: source.into(), class: class.into(), kind: kind.into() }).inc();
    }

    pub fn restore_done(&self, source: &str, class: &str, ok: bool, reason: &str, seconds: f64) {
        let l = SourceLabels { source: source.into(), class: class.into() };
        self.restore_duration.get_or_create(&l).set(seconds);
        self.restore_histogram.get_or_create(&l).observe(seconds);
        if ok {
            self.restore_success.get_or_create(&l).inc();
        } else {
            let reason = self.reason(reason);
            self.restore_failure.get_or_create(&FailureLabels { source: source.into(), class: class.into(), reason }).inc();
        }
    }

    /// A drill's report (`tresor drill --json`). Its restore is a restore
    /// in `restore_*` too, so the restore success rate and the measured
    /// RTO show the regular tests, not only restores asked for; `reason`
    /// and `seconds` are the job's, for a drill that measured nothing.
    pub fn drill_done(&self, source: &str, class: &str, report: &serde_json::Value, reason: &str, seconds: f64) {
        let passed = report["passed"] == true;
        self.restore_done(source, class, passed, reason, measured(report, "rto_seconds").unwrap_or(seconds));
        self.drill_seen(source, class, report);
    }

    /// A rehearsal's protocol: the platform's verdict and figures; its
    /// restores are not one source's, so no `restore_*` counts them.
    pub fn rehearsal_done(&self, source: &str, protocol: &serde_json::Value) {
        if let Some(rto) = measured(protocol, "rto_seconds") {
            self.restore_histogram.get_or_create(&SourceLabels { source: source.into(), class: String::new() }).observe(rto);
        }
        self.drill_seen(source, "", protocol);
    }

    /// The newest drill's verdict (from the history at start too), and the
    /// RTO and RPO it measured: a drill that failed measured none, and the
    /// last drill that passed keeps its figures.
    pub fn drill_seen(&self, source: &str, class: &str, report: &serde_json::Value) {
        let l = SourceLabels { source: source.into(), class: class.into() };
        self.drill_success.get_or_create(&l).set(i64::from(report["passed"] == true));
        self.drill_figures(source, class, report);
    }

    /// The RTO and RPO a drill that passed measured; none for one that failed.
    pub fn drill_figures(&self, source: &str, class: &str, report: &serde_json::Value) {
        let l = SourceLabels { source: source.into(), class: class.into() };
        if let Some(rto) = measured(report, "rto_seconds") {
            self.drill_duration.get_or_create(&l).set(rto);
            self.rto_achieved.get_or_create(&l).set(rto);
        }
        if let Some(rpo) = measured(report, "rpo_seconds") {
            self.rpo_achieved.get_or_create(&l).set(rpo);
        }
    }

    /// A backup that started at `at` is not off site yet: the off-site
    /// copy is behind from then until a copy succeeds, and its lag grows
    /// while copies fail.
    pub fn not_yet_offsite(&self, source: &str, at: DateTime<Utc>) {
        self.offsite_behind.lock().expect("not poisoned").entry(source.into()).or_insert(at);
    }

    /// A copy succeeded: the off-site copy holds every backup.
    pub fn offsite_current(&self, source: &str, class: &str) {
        self.offsite_behind.lock().expect("not poisoned").remove(source);
        self.lag.get_or_create(&SourceLabels { source: source.into(), class: class.into() }).set(0.0);
    }

    /// A WAL-archiving source's newest figures (crate::walrpo).
    pub fn wal_point(&self, plan: &Plan, source: &str, p: WalPoint) {
        if let Some(s) = plan.sources.iter().find(|s| s.name == source) {
            self.wal_gap.get_or_create(&SourceLabels { source: source.into(), class: s.class.clone() }).set(p.chain.gap_segments as i64);
        }
        self.wal.lock().expect("not poisoned").insert(source.into(), p);
    }

    /// A WAL-archiving source whose archive could not be read: its last
    /// figures stand, never caught up (crate::walrpo::WalPoint::unconfirmed).
    pub fn wal_unconfirmed(&self, source: &str) {
        if let Some(p) = self.wal.lock().expect("not poisoned").get_mut(source) {
            p.unconfirmed();
        }
    }

    /// A warm standby's newest figures (crate::standby).
    pub fn standby_point(&self, source: &str, p: StandbyPoint) {
        self.standbys.lock().expect("not poisoned").insert(source.into(), p);
    }

    /// Each standby's newest figures, by source.
    pub fn standbys(&self) -> BTreeMap<String, StandbyPoint> {
        self.standbys.lock().expect("not poisoned").clone()
    }

    /// Sources of `plan` the daemon takes on at `now`: each one without a
    /// restorable point yet waits for its first from then on.
    pub fn take_on(&self, plan: &Plan, now: DateTime<Utc>) {
        let newest = self.newest.lock().expect("not poisoned");
        let mut pending = self.pending.lock().expect("not poisoned");
        for s in plan.sources.iter().filter(|s| !newest.contains_key(&s.name)) {
            pending.entry(s.name.clone()).or_insert(now);
        }
    }

    /// The source has waited for its first restorable point since `at`
    /// (its first backup tried, by the history, at start).
    pub fn pending_since(&self, source: &str, at: DateTime<Utc>) {
        self.pending.lock().expect("not poisoned").insert(source.into(), at);
    }

    /// The sources of `plan` without a restorable point yet.
    pub fn pending(&self, plan: &Plan) -> Vec<String> {
        let newest = self.newest.lock().expect("not poisoned");
        plan.sources.iter().filter(|s| !newest.contains_key(&s.name)).map(|s| s.name.clone()).collect()
    }

    /// Seconds since each class's stalest source last had a restorable
    /// point (for a source that archives WAL, the archive's RPO when
    /// smaller); a source that never had one counts from when the daemon
    /// took it on (`take_on`), so a new source is pending within its RPO,
    /// not missing it since 1970.
    pub fn rpo_ages(&self, plan: &Plan, now: DateTime<Utc>) -> BTreeMap<String, f64> {
        let newest = self.newest.lock().expect("not poisoned");
        let pending = self.pending.lock().expect("not poisoned");
        let wal = self.wal.lock().expect("not poisoned");
        let mut out: BTreeMap<String, f64> = plan.classes.keys().map(|c| (c.clone(), 0.0)).collect();
        for s in &plan.sources {
            let since = newest.get(&s.name).or(pending.get(&s.name));
            let age = since.map_or(0.0, |t| (now - *t).num_milliseconds().max(0) as f64 / 1000.0);
            let age = wal.get(&s.name).map_or(age, |w| age.min(w.rpo(now)));
            let e = out.entry(s.class.clone()).or_insert(0.0);
            *e = e.max(age);
        }
        out
    }

    /// The text exposition, RPO gauges computed for `now`.
    pub fn render(&self, plan: &Plan, now: DateTime<Utc>) -> String {
        for (class, age) in self.rpo_ages(plan, now) {
            let l = ClassLabels { class: class.clone() };
            self.rpo.get_or_create(&l).set(age);
            if let Some(c) = plan.classes.get(&class) {
                self.rpo_target.get_or_create(&l).set(c.rpo.secs() as i64);
                self.rto_target.get_or_create(&l).set(c.rto.secs() as i64);
            }
        }
        for (source, w) in self.wal.lock().expect("not poisoned").iter() {
            if let Some(s) = plan.sources.iter().find(|s| &s.name == source) {
                self.wal_lag.get_or_create(&SourceLabels { source: source.clone(), class: s.class.clone() }).set(w.lag(now));
            }
        }
        for (source, since) in self.offsite_behind.lock().expect("not poisoned").iter() {
            if let Some(s) = plan.sources.iter().find(|s| &s.name == source) {
                let behind = (now - *since).num_milliseconds().max(0) as f64 / 1000.0;
                self.lag.get_or_create(&SourceLabels { source: source.clone(), class: s.class.clone() }).set(behind);
            }
        }
        for (source, p) in self.standbys() {
            if let Some(s) = plan.sources.iter().find(|s| s.name == source) {
                self.standby_lag.get_or_create(&SourceLabels { source, class: s.class.clone() }).set(p.lag(now));
            }
        }
        for (name, repo) in &plan.repositories {
            if let Some((free, size)) = local_space(&repo.url) {
                let l = RepoLabels { repository: name.clone() };
                self.storage_free.get_or_create(&l).set(free as i64);
                self.storage_size.get_or_create(&l).set(size as i64);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The media type of the OpenMetrics exposition `Metrics::render` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The media type of Prometheus' classic text format, which [`classic`] writes.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An OpenMetrics exposition in Prometheus' classic text format (0.0.4),
/// for scrapers that do not ask for OpenMetrics (`promtool check metrics`,
/// curl): there a counter's HELP and TYPE name it with its `_total`, as its
/// samples do (OpenMetrics names the family without it), and there is no
/// `# UNIT` or `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF" && !l.starts_with("# UNIT ")) {
        let counter = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let (name, rest) = line.strip_prefix(p)?.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {rest}"))
        });
        out += counter.as_deref().unwrap_or(line);
        out.push('\n');
    }
    out
}

/// A drill report's figure `field`, when the drill passed: only a
/// validated restore measures an RTO or an RPO (`DrillReport::measured_rto`).
pub(crate) fn measured(report: &serde_json::Value, field: &str) -> Option<f64> {
    report[field].as_f64().filter(|_| report["passed"] == true)
}

/// A family whose series can be removed, whatever its metric's type.
trait Forget<L> {
    fn forget(&self, labels: &L);
}

impl<L: Clone + std::hash::Hash + Eq, M, C: prometheus_client::metrics::family::MetricConstructor<M>> Forget<L> for Family<L, M, C> {
    fn forget(&self, labels: &L) {
        self.remove(labels);
    }
}

/// Free and total bytes of the file system holding a local repository
/// (URLs with a scheme are remote: their space is the provider's to report).
pub fn local_space(url: &crate::plan::SecretUrl) -> Option<(u64, u64)> {
    let path = std::ffi::CString::new(url.as_path()?.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we pass, and the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frag = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frag, st.f_blocks as u64 * frag))
}

/// Bytes of every file under `dir` (a local repository).
pub fn tree_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
