//! Compliance reports: per class the targets against what was measured
//! (RPO from the backup history, RTO from drills), success rates, the test
//! protocol, a restore-time prediction, and the evidence for ISO 27001,
//! BSI IT-Grundschutz, GDPR and NIS2. Rendered as JSON, Markdown or a
//! self-contained HTML page (`report_html.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{Annotation, BackupCopy, DrillReport};
use crate::plan::{Plan, Span};
use crate::rehearse::Rehearsal;
use crate::state::Job;

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub name: String,
    pub description: String,
    pub sources: Vec<String>,
    pub rpo_target: u64,
    pub rto_target: u64,
    /// Age of the stalest source's newest restorable point now.
    pub rpo_current: Option<f64>,
    /// The longest time without a restorable point of some source in the window.
    pub rpo_worst_gap: Option<f64>,
    pub rpo_met: bool,
    /// The slowest source in the newest drill of each.
    pub rto_measured: Option<f64>,
    pub rto_met: Option<bool>,
    /// Expected RTO at the current size, from the drill history.
    pub rto_predicted: Option<f64>,
    pub rto_prediction_over_target: bool,
    /// Why there is no prediction: a source holds far more than its drills restored (`unpredictable`).
    pub rto_unpredictable: Option<String>,
    pub backups: u64,
    pub backups_succeeded: u64,
    pub drills: u64,
    pub drills_passed: u64,
    pub last_drill: Option<DateTime<Utc>>,
    /// When a drill from the source's own repository last passed.
    pub last_proven_primary: Option<DateTime<Utc>>,
    /// When a drill from another copy (the off-site repository) last passed.
    pub last_proven_offsite: Option<DateTime<Utc>>,
    pub offsite: Option<String>,
    pub last_offsite_copy: Option<DateTime<Utc>>,
    pub retention: String,
    /// Retention ran without a failure in the period (forget jobs).
    pub retention_ok: bool,
    /// For PostgreSQL base-backup sources that archive WAL: how far the archive is behind (crate::walrpo).
    pub wal_archive_lag: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    pub framework: &'static str,
    pub control: &'static str,
    pub requirement: &'static str,
    pub evidence: String,
}

/// One test of the test plan: a class's drills as the plan states them.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTest {
    /// The plan's test id (`drill.id`), if it gives one.
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub test_type: crate::plan::TestType,
    pub class: String,
    /// The sources drilled.
    pub scope: Vec<String>,
    /// The copy restored from.
    pub from: BackupCopy,
    /// The drill schedule, and the longest time between two runs.
    pub frequency: String,
    pub every: Option<u64>,
    pub owner: Option<String>,
    /// The newest drill of the class in the period, and whether it passed.
    pub last_run: Option<DateTime<Utc>>,
    pub last_passed: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: DateTime<Utc>,
    pub since: DateTime<Utc>,
    pub classes: Vec<ClassReport>,
    /// The classes' drills as the plan states them.
    pub tests: Vec<PlannedTest>,
    /// Every drill in the window: the test protocol.
    pub protocol: Vec<DrillReport>,
    /// Cold-start rehearsals in the window, the newest of each test first seen.
    pub rehearsals: Vec<RehearsalReport>,
    /// Findings and follow-ups recorded about the protocol's drills and rehearsals.
    pub annotations: Vec<Annotation>,
    /// Legal holds per repository (snapshots kept whatever the retention says).
    pub holds: BTreeMap<String, u64>,
    /// Repositories that could not be read, with why: their holds,
    /// rehearsals and findings are missing from this report.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unread: BTreeMap<String, String>,
    pub compliance: Vec<Control>,
}

/// The newest cold-start rehearsal of one test of the test plan, from the evidence logs.
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalReport {
    /// The test plan's id (`drills.rehearsal.id`), else the protocol entry's.
    pub test: String,
    /// The newest protocol entry (`REHEARSAL-…`), which findings are attached to.
    pub test_id: String,
    pub last_run: DateTime<Utc>,
    /// The repository the platform came back from.
    pub from: String,
    /// Rehearsals of this test in the period.
    pub runs: u64,
    pub passed: bool,
    pub sources: u64,
    pub sources_back: u64,
    pub rto_seconds: f64,
    /// `drills.platform_rto` when it ran.
    pub rto_target: Option<u64>,
    pub rto_met: Option<bool>,
}

/// Per test, the newest rehearsal in the window and how many ran.
pub fn rehearsal_reports(rehearsals: &[Rehearsal], since: DateTime<Utc>) -> Vec<RehearsalReport> {
    let mut out: Vec<RehearsalReport> = Vec::new();
    for r in rehearsals.iter().filter(|r| r.started >= since) {
        let test = r.test.clone().unwrap_or_else(|| r.test_id.clone());
        let runs = out.iter().find(|o| o.test == test).map_or(0, |o| o.runs) + 1;
        out.retain(|o| o.test != test);
        out.push(RehearsalReport {
            test,
            test_id: r.test_id.clone(),
            last_run: r.started,
            from: r.from.clone(),
            runs,
            passed: r.passed,
            sources: r.steps.len() as u64,
            sources_back: r.steps.iter().filter(|s| s.drill.passed).count() as u64,
            rto_seconds: r.rto_seconds,
            rto_target: r.rto_target,
            rto_met: r.rto_met,
        });
    }
    out
}

/// The rehearsals as compliance evidence: each test's newest entry, its verdict and platform RTO.
fn rehearsal_evidence(rehearsals: &[RehearsalReport]) -> String {
    if rehearsals.is_empty() {
        return "no cold-start rehearsal in the period".into();
    }
    let each: Vec<String> = rehearsals
        .iter()
        .map(|r| {
            let target = r.rto_target.map_or("no platform target".into(), |t| format!("of {}", Span(std::time::Duration::from_secs(t))));
            let verdict = if r.passed { "passed" } else { "FAILED" };
            format!(
                "{} {} {verdict}, platform RTO {} {target} (evidence entry {})",
                r.test,
                r.last_run.format("%Y-%m-%d"),
                dur(Some(r.rto_seconds)),
                r.test_id
            )
        })
        .collect();
    format!("cold-start rehearsals: {}", each.join("; "))
}

pub fn rate(ok: u64, all: u64) -> Option<f64> {
    (all > 0).then(|| ok as f64 / all as f64)
}

/// Restorable points of one source: when each successful backup ended.
fn points(jobs: &[Job], source: &str) -> Vec<DateTime<Utc>> {
    jobs.iter().filter(|j| j.source == source && j.kind == "backup" && j.outcome.status == "succeeded").filter_map(|j| j.ended_at).collect()
}

/// (current age, worst gap) of a source's restorable points in the window
/// (the time before its first point there is outside what the window shows).
fn rpo(points: &[DateTime<Utc>], now: DateTime<Utc>) -> (Option<f64>, Option<f64>) {
    let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds() as f64 / 1000.0;
    let Some(last) = points.last() else { return (None, None) };
    let mut worst = secs(*last, now);
    for w in points.windows(2) {
        worst = worst.max(secs(w[0], w[1]));
    }
    (Some(secs(*last, now)), Some(worst))
}

/// How far beyond the largest restore its drills measured a source's
/// history predicts: a small drill's time is mostly fixed cost, and says
/// nothing of the throughput a restore a thousand times larger gets.
pub const EXTRAPOLATION: f64 = 4.0;

/// Least squares of RTO on restored bytes over passed drills; the RTO at
/// `size`. None without a drill, or for a size more than [`EXTRAPOLATION`]
/// times the largest drilled ([`unpredictable`] says why).
pub fn predict(history: &[(u64, f64)], size: u64) -> Option<f64> {
    let n = history.len() as f64;
    if history.is_empty() || unpredictable(history, size).is_some() {
        return None;
    }
    let (sx, sy) = history.iter().fold((0.0, 0.0), |(x, y), (b, t)| (x + *b as f64, y + t));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = history.iter().map(|(b, _)| (*b as f64 - mx).powi(2)).sum();
    let sxy: f64 = history.iter().map(|(b, t)| (*b as f64 - mx) * (t - my)).sum();
    let at = size as f64;
    if sxx > 0.0 {
        let slope = (sxy / sxx).max(0.0);
        return Some((my + slope * (at - mx)).max(0.0));
    }
    // One size only: time grows with the data.
    Some(if mx > 0.0 { my * at / mx } else { my })
}

/// Why the drills of `history` predict no RTO at `size`: it is more than
/// [`EXTRAPOLATION`] times the largest they restored.
pub fn unpredictable(history: &[(u64, f64)], size: u64) -> Option<String> {
    let largest = history.iter().map(|(b, _)| *b).max()?;
    (size as f64 > largest as f64 * EXTRAPOLATION)
        .then(|| format!("not predictable: the largest drill restored {}, the source now holds {}", bytes(largest), bytes(size)))
}

/// A size as people read it: bytes up to a KiB, then one decimal in KiB, MiB, GiB or TiB.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn class_report(
    plan: &Plan,
    name: &str,
    jobs: &[Job],
    drills: &[DrillReport],
    lags: &BTreeMap<String, f64>,
    wal_rpo: &BTreeMap<String, f64>,
    now: DateTime<Utc>,
) -> ClassReport {
    let c = &plan.classes[name];
    let sources: Vec<String> = plan.sources.iter().filter(|s| s.class == name).map(|s| s.name.clone()).collect();
    // A job counts under the class it ran under: removing a failing source
    // from the plan rewrote the period's success rate (66 % became 100 %).
    let mine = |j: &&Job| j.class == name || (j.class.is_empty() && sources.contains(&j.source));
    let backups: Vec<&Job> = jobs.iter().filter(mine).filter(|j| j.kind == "backup").collect();
    let class_drills: Vec<&DrillReport> = drills.iter().filter(|d| d.class == name).collect();
    let (mut current, mut worst) = (None::<f64>, None::<f64>);
    let (mut measured, mut predicted, mut unpredicted) = (None::<f64>, None::<f64>, None::<String>);
    for s in &sources {
        let (age, gap) = rpo(&points(jobs, s), now);
        // A source that archives WAL is as fresh as its archive (crate::walrpo), which
        // bridges the gaps between its base backups; the archive's own history is not
        // kept, so its worst gap is its RPO now.
        let (age, gap) = match wal_rpo.get(s) {
            Some(w) => (Some(age.map_or(*w, |a| a.min(*w))), Some(*w)),
            None => (age, gap),
        };
        current = match (current, age) {
            (_, None) => Some(f64::INFINITY),
            (c, Some(a)) => Some(c.unwrap_or(0.0).max(a)),
        };
        worst = gap.map_or(worst, |g| Some(worst.unwrap_or(0.0).max(g)));
        if let Some(rto) = class_drills.iter().rev().filter(|d| &d.source == s).find_map(|d| d.measured_rto()) {
            measured = Some(measured.unwrap_or(0.0).max(rto));
        }
        let history: Vec<(u64, f64)> =
            class_drills.iter().filter(|d| &d.source == s && d.passed).map(|d| (d.bytes, d.rto_seconds)).collect();
        let size = jobs
            .iter()
            .rev()
            .find(|j| &j.source == s && j.kind == "backup" && j.outcome.status == "succeeded")
            .and_then(|j| j.outcome.bytes_processed);
        if let Some(why) = size.and_then(|size| unpredictable(&history, size)) {
            unpredicted.get_or_insert(format!("{s}: {why}"));
        } else if let Some(p) = size.and_then(|size| predict(&history, size)) {
            predicted = Some(predicted.unwrap_or(0.0).max(p));
        }
    }
    let current = current.filter(|a| a.is_finite());
    let rpo_target = c.rpo.secs();
    let copies = jobs.iter().filter(mine).filter(|j| j.kind == "copy" && j.outcome.status == "succeeded");
    let proven = |copy: BackupCopy| class_drills.iter().filter(|d| d.passed && d.from == copy).map(|d| d.started).max();
    ClassReport {
        name: name.into(),
        description: c.description.clone(),
        rpo_target,
        rto_target: c.rto.secs(),
        rpo_met: current.is_some_and(|a| a <= rpo_target as f64) && worst.is_some_and(|g| g <= rpo_target as f64),
        rpo_current: current,
        rpo_worst_gap: worst,
        rto_met: measured.map(|m| m <= c.rto.secs() as f64),
        rto_measured: measured,
        // A class with a source beyond its drills has no prediction: the others' would understate it.
        rto_predicted: predicted.filter(|_| unpredicted.is_none()),
        rto_prediction_over_target: unpredicted.is_none() && predicted.is_some_and(|p| p > c.rto.secs() as f64),
        rto_unpredictable: unpredicted,
        backups: backups.len() as u64,
        backups_succeeded: backups.iter().filter(|j| j.outcome.status == "succeeded").count() as u64,
        drills: class_drills.len() as u64,
        drills_passed: class_drills.iter().filter(|d| d.passed).count() as u64,
        last_drill: class_drills.last().map(|d| d.started),
        last_proven_primary: proven(BackupCopy::Primary),
        last_proven_offsite: proven(BackupCopy::Offsite),
        offsite: c.offsite.clone(),
        last_offsite_copy: copies.filter_map(|j| j.ended_at).max(),
        retention: retention_text(&c.retention),
        retention_ok: !jobs.iter().filter(mine).any(|j| j.kind == "forget" && j.outcome.status == "failed"),
        wal_archive_lag: sources.iter().filter_map(|s| lags.get(s).copied()).reduce(f64::max),
        sources,
    }
}

fn retention_text(r: &crate::plan::Retention) -> String {
    let mut parts = Vec::new();
    if let Some(n) = r.last {
        parts.push(format!("last {n}"));
    }
    for (period, rule) in [("hourly", r.hourly), ("daily", r.daily), ("weekly", r.weekly), ("monthly", r.monthly), ("yearly", r.yearly)] {
        match rule {
            Some(crate::plan::Keep::Count(n)) => parts.push(format!("{period} {n}")),
            Some(crate::plan::Keep::Within(s)) => parts.push(format!("{period} within {s}")),
            None => {}
        }
    }
    if let Some(m) = r.minimum {
        parts.push(format!("minimum {m}"));
    }
    if parts.is_empty() { "none: every snapshot kept".into() } else { parts.join(", ") }
}

/// What the report reads beyond the state: from the repositories.
#[derive(Debug, Default)]
pub struct RepoFacts {
    /// The WAL archive lag of each PostgreSQL base-backup source that has archived WAL.
    pub lags: BTreeMap<String, f64>,
    /// The achieved RPO of those sources, counting their archived WAL.
    pub wal_rpo: BTreeMap<String, f64>,
    pub holds: BTreeMap<String, u64>,
    /// Findings and follow-ups about drills and rehearsals, from the evidence logs.
    pub annotations: Vec<Annotation>,
    /// The cold-start rehearsals' protocols, from the evidence logs.
    pub rehearsals: Vec<Rehearsal>,
    /// Repositories that could not be read, with why: what they hold is
    /// missing from the facts.
    pub unread: BTreeMap<String, String>,
}

pub fn build(plan: &Plan, jobs: &[Job], drills: &[DrillReport], facts: RepoFacts, since: DateTime<Utc>, now: DateTime<Utc>) -> Report {
    let lags = &facts.lags;
    let classes: Vec<ClassReport> =
        plan.classes.keys().map(|name| class_report(plan, name, jobs, drills, lags, &facts.wal_rpo, now)).collect();
    let rehearsed: Vec<&Rehearsal> = facts.rehearsals.iter().filter(|r| r.started >= since).collect();
    let tests = planned_tests(plan, drills, &rehearsed, now);
    let ids: Vec<&str> = drills.iter().map(|d| d.test_id.as_str()).chain(rehearsed.iter().map(|r| r.test_id.as_str())).collect();
    let annotations: Vec<Annotation> = facts.annotations.into_iter().filter(|a| ids.contains(&a.test_id.as_str())).collect();
    let rehearsals = rehearsal_reports(&facts.rehearsals, since);
    let unchecked: Vec<&str> = plan.repositories.keys().map(String::as_str).filter(|r| plan.check_schedule(r).is_none()).collect();
    let compliance = controls(&classes, drills, &tests, &annotations, &rehearsals, &checked(jobs, &unchecked));
    Report {
        generated: now,
        since,
        classes,
        tests,
        protocol: drills.to_vec(),
        rehearsals,
        annotations,
        compliance,
        holds: facts.holds,
        unread: facts.unread,
    }
}

/// The test plan: each class with a drill schedule, and how its drills went;
/// then the plan's cold-start rehearsal, and how its newest went.
fn planned_tests(plan: &Plan, drills: &[DrillReport], rehearsed: &[&Rehearsal], now: DateTime<Utc>) -> Vec<PlannedTest> {
    let every = |schedule: &str| crate::schedule::Schedule::parse(schedule).ok().map(|s| s.longest_gap(now).as_secs());
    let mut out = Vec::new();
    for (class, c) in &plan.classes {
        let Some(d) = &c.drill else { continue };
        let last = drills.iter().rfind(|r| &r.class == class);
        out.push(PlannedTest {
            id: d.id.clone(),
            test_type: d.test_type,
            class: class.clone(),
            scope: plan.sources.iter().filter(|s| &s.class == class).map(|s| s.name.clone()).collect(),
            from: d.from,
            frequency: d.schedule.clone(),
            every: every(&d.schedule),
            owner: d.owner.clone(),
            last_run: last.map(|r| r.started),
            last_passed: last.map(|r| r.passed),
        });
    }
    if let Some(r) = &plan.drills.rehearsal {
        let last = rehearsed.iter().rfind(|x| x.test == r.id);
        let offsite = r.from == "offsite" || plan.classes.values().any(|c| c.offsite.as_ref() == Some(&r.from));
        out.push(PlannedTest {
            id: r.id.clone(),
            test_type: r.test_type,
            class: crate::rehearse::PLATFORM.into(),
            scope: plan.sources.iter().map(|s| s.name.clone()).collect(),
            from: if offsite { BackupCopy::Offsite } else { BackupCopy::Primary },
            frequency: r.schedule.clone(),
            every: every(&r.schedule),
            owner: r.owner.clone(),
            last_run: last.map(|x| x.started),
            last_passed: last.map(|x| x.passed),
        });
    }
    out
}

pub fn dur(s: Option<f64>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) => Span(std::time::Duration::from_secs(s as u64)).to_string(),
    }
}

pub(crate) fn pct(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{:.2} %", r * 100.0))
}

/// What the report proves, control by control.
pub fn controls(
    classes: &[ClassReport],
    protocol: &[DrillReport],
    tests: &[PlannedTest],
    annotations: &[Annotation],
    rehearsals: &[RehearsalReport],
    checks: &str,
) -> Vec<Control> {
    let f = Findings { checks: checks.to_string(), ..findings(classes, protocol, rehearsals) };
    let mut out = iso_27001(&f, tests, annotations);
    out.extend(bsi_gdpr_nis2(&f));
    out
}

/// The period's facts the controls cite, each sentence built once.
struct Findings {
    /// The backups' count and success rate, and the encryption.
    backups: String,
    /// The drills' count and pass rate, and the protocol's entries.
    drills: String,
    /// How many protocol entries, and how many of them disaster-recovery exercises.
    entries: usize,
    dr: usize,
    /// Each class's measured RTO against its target.
    rto: String,
    /// Which classes were restored from their off-site copy.
    offsite_proven: String,
    /// The cold-start rehearsals' newest runs.
    rehearsed: String,
    /// How many classes have an off-site copy, of how many.
    copied_offsite: usize,
    classes: usize,
    /// The repository checks in the period, and where they found damage.
    checks: String,
}

/// The period's repository checks in one sentence: how many passed, the
/// repositories whose checks failed, when last (the job history says why:
/// damage found, or the repository out of reach), and those the plan
/// never checks.
fn checked(jobs: &[Job], unchecked: &[&str]) -> String {
    let checks: Vec<&Job> = jobs.iter().filter(|j| j.kind == "check" && j.outcome.status != "running").collect();
    let passed = checks.iter().filter(|j| j.outcome.status == "succeeded").count();
    let mut failed: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for j in checks.iter().filter(|j| j.outcome.status == "failed") {
        let at = j.ended_at.unwrap_or(j.started_at);
        failed.entry(&j.source).and_modify(|t| *t = (*t).max(at)).or_insert(at);
    }
    let failed: Vec<String> = failed.iter().map(|(r, t)| format!("{r} {}", t.format("%Y-%m-%d"))).collect();
    format!(
        "{} repository check{} (structure whole, a slice of the data read back), {} passed{}{}",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" },
        pct(rate(passed as u64, checks.len() as u64)),
        if failed.is_empty() { String::new() } else { format!("; failed last: {}", failed.join(", ")) },
        if unchecked.is_empty() { String::new() } else { format!("; never checked by plan: {}", unchecked.join(", ")) }
    )
}

fn findings(classes: &[ClassReport], protocol: &[DrillReport], rehearsals: &[RehearsalReport]) -> Findings {
    let (b_ok, b_all) = classes.iter().fold((0, 0), |(o, a), c| (o + c.backups_succeeded, a + c.backups));
    let (d_ok, d_all) = classes.iter().fold((0, 0), |(o, a), c| (o + c.drills_passed, a + c.drills));
    let rto: Vec<String> = classes
        .iter()
        .map(|c| format!("{} {} of {}", c.name, dur(c.rto_measured), Span(std::time::Duration::from_secs(c.rto_target))))
        .collect();
    Findings {
        backups: format!(
            "{b_all} backups in the period, {} succeeded; every repository end-to-end encrypted (AEAD, Argon2id keys)",
            pct(rate(b_ok, b_all))
        ),
        drills: format!("{d_all} restore drills, {} passed ({} protocol entries)", pct(rate(d_ok, d_all)), protocol.len()),
        entries: protocol.len(),
        dr: protocol.iter().filter(|d| d.test_type.as_deref() == Some("dr")).count(),
        rto: rto.join("; "),
        offsite_proven: offsite_proven(classes),
        rehearsed: rehearsal_evidence(rehearsals),
        copied_offsite: classes.iter().filter(|c| c.offsite.is_some()).count(),
        classes: classes.len(),
        checks: String::new(),
    }
}

/// How many classes were restored from their off-site copy in the period, and when last.
fn offsite_proven(classes: &[ClassReport]) -> String {
    let proven: Vec<String> =
        classes.iter().filter_map(|c| Some(format!("{} {}", c.name, c.last_proven_offsite?.format("%Y-%m-%d")))).collect();
    format!(
        "{} of {} classes restored from their off-site copy in the period{}",
        proven.len(),
        classes.len(),
        if proven.is_empty() { String::new() } else { format!(" ({})", proven.join(", ")) }
    )
}

/// The test plan in one line: how many tests, and each one's id, type, frequency and owner.
fn test_plan(tests: &[PlannedTest]) -> String {
    let planned: Vec<String> = tests
        .iter()
        .map(|t| {
            format!(
                "{} ({}, {}, {})",
                t.id.as_deref().unwrap_or(&t.class),
                t.test_type.as_str(),
                t.frequency,
                t.owner.as_deref().unwrap_or("no owner")
            )
        })
        .collect();
    format!("{} ({})", planned.len(), if planned.is_empty() { "no drill schedules".into() } else { planned.join("; ") })
}

/// ISO/IEC 27001's backup, ICT readiness and continuity controls.
fn iso_27001(f: &Findings, tests: &[PlannedTest], annotations: &[Annotation]) -> Vec<Control> {
    let (backups, drills, offsite, rehearsed) = (&f.backups, &f.drills, &f.offsite_proven, &f.rehearsed);
    vec![
        Control {
            framework: "ISO/IEC 27001:2022",
            control: "A.8.13",
            requirement: "Information backup: backups maintained and regularly tested per an agreed policy",
            evidence: format!("{backups}; {drills}; {}; retention per class", f.checks),
        },
        Control {
            framework: "ISO/IEC 27001:2022",
            control: "A.5.30",
            requirement: "ICT readiness for business continuity: recovery objectives set and tested",
            evidence: format!("RPO/RTO targets per class; measured RTO: {}; {offsite}; {rehearsed}", f.rto),
        },
        Control {
            framework: "ISO/IEC 27001:2013",
            control: "A.17.1.1",
            requirement: "Planning information security continuity: continuity requirements determined, recovery planned and exercised",
            evidence: format!(
                "test plan: {}; {} protocol entries, {} of them disaster-recovery exercises; {} findings and follow-ups recorded; {offsite}; {rehearsed}",
                test_plan(tests),
                f.entries,
                f.dr,
                annotations.len()
            ),
        },
    ]
}

/// The BSI IT-Grundschutz module, GDPR and NIS2 articles on backups and recovery.
fn bsi_gdpr_nis2(f: &Findings) -> Vec<Control> {
    let (backups, drills) = (&f.backups, &f.drills);
    vec![
        Control {
            framework: "BSI IT-Grundschutz",
            control: "OPS.1.1.5",
            requirement: "Datensicherung: Konzept, regelmäßige Sicherung, Wiederherstellungstests",
            evidence: format!(
                "the plan is the backup concept; {backups}; {drills}; {}; {} of {} classes copied off-site",
                f.checks, f.copied_offsite, f.classes
            ),
        },
        Control {
            framework: "GDPR",
            control: "Art. 32(1)(b)-(d)",
            requirement: "Restore availability and access in a timely manner; regularly test and evaluate",
            evidence: format!("{drills}; measured RTO against targets per class; encryption of all backups"),
        },
        Control {
            framework: "NIS2",
            control: "Art. 21(2)(c)",
            requirement: "Business continuity: backup management and disaster recovery",
            evidence: format!("{backups}; {drills}; alerting on failed jobs, missed RPO and failed drills"),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_time_is_predicted_from_the_drill_history() {
        assert_eq!(predict(&[], 10), None);
        assert_eq!(predict(&[(100, 10.0)], 300), Some(30.0), "one size: proportional");
        let p = predict(&[(100, 10.0), (200, 20.0), (300, 30.0)], 1000).unwrap();
        assert!((p - 100.0).abs() < 1e-9, "{p}");
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let pts = [at("2026-11-21T10:00:00Z"), at("2026-11-21T10:15:00Z"), at("2026-11-21T11:00:00Z")];
        assert_eq!(rpo(&pts, at("2026-11-21T11:05:00Z")), (Some(300.0), Some(2700.0)));
    }

    /// A drill far smaller than what the source holds now predicts no RTO
    /// for it: 143 B restored in 0.28 s say nothing of 3 GiB (linearly
    /// 6,360,838 s), and the report says so where the prediction would be.
    #[test]
    fn a_drill_far_smaller_than_the_source_predicts_no_rto() {
        assert_eq!((predict(&[(100, 10.0)], 400), predict(&[(100, 10.0)], 401)), (Some(40.0), None));
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let text = "repositories:\n  main:\n    url: /nonexistent/r\n    password_file: /nonexistent/pw\n\
                    classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
                    sources:\n  - {name: sample, class: standard, url: /srv/a, schedule: '@daily'}\n";
        let plan = Plan::parse(text, std::path::Path::new("tresor.yaml")).unwrap();
        let outcome = crate::state::Outcome { status: "succeeded".into(), bytes_processed: Some(3 << 30), ..Default::default() };
        let (t, ended) = (at("2026-12-07T19:00:00Z"), Some(at("2026-12-07T19:05:00Z")));
        let backup = Job {
            id: 1,
            source: "sample".into(),
            class: "standard".into(),
            kind: "backup".into(),
            trigger: "schedule".into(),
            attempt: 0,
            scheduled_at: t,
            started_at: t,
            ended_at: ended,
            duration: None,
            outcome,
        };
        let drill: DrillReport = serde_json::from_value(serde_json::json!({
            "test_id": "DRILL-20261207-185000-sample", "source": "sample", "class": "standard", "kind": "files",
            "started": "2026-12-07T18:50:00Z", "rto_seconds": 0.28, "rto_target": 14400, "rpo_target": 86400,
            "bytes": 143, "passed": true, "checks": [], "reasons": [], "owner": null,
        }))
        .unwrap();
        let r = build(&plan, &[backup], &[drill], RepoFacts::default(), at("2026-11-07T00:00:00Z"), at("2026-12-07T20:00:00Z"));
        let c = &r.classes[0];
        assert_eq!((c.rto_predicted, c.rto_prediction_over_target, c.rto_measured), (None, false, Some(0.28)));
        let why = "sample: not predictable: the largest drill restored 143 B, the source now holds 3.0 GiB";
        assert_eq!(c.rto_unpredictable.as_deref(), Some(why));
        assert!(crate::report_html::markdown(&r).contains(&format!("| {why} |")));
    }

    #[test]
    fn the_checks_of_the_period_are_counted_and_the_failed_named() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let job = |repo: &str, kind: &str, status: &str, ended: &str| Job {
            id: 0,
            source: repo.into(),
            class: String::new(),
            kind: kind.into(),
            trigger: "schedule".into(),
            attempt: 0,
            scheduled_at: at(ended),
            started_at: at(ended),
            ended_at: Some(at(ended)),
            duration: None,
            outcome: crate::state::Outcome { status: status.into(), ..Default::default() },
        };
        let jobs = [
            job("main", "check", "succeeded", "2026-11-08T04:00:00Z"),
            job("main", "check", "failed", "2026-11-15T04:00:00Z"),
            job("main", "check", "failed", "2026-11-22T04:00:00Z"),
            job("off", "check", "succeeded", "2026-11-22T04:00:00Z"),
            job("main", "prune", "failed", "2026-11-22T03:00:00Z"),
        ];
        assert_eq!(
            checked(&jobs, &[]),
            "4 repository checks (structure whole, a slice of the data read back), 50.00 % passed; failed last: main 2026-11-22"
        );
        assert_eq!(
            checked(&jobs[..1], &["cold"]),
            "1 repository check (structure whole, a slice of the data read back), 100.00 % passed; never checked by plan: cold"
        );
    }
}
