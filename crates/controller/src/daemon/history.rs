//! What the daemon starts with, read back from the job history: each
//! source's newest success and failure, whether it is failing, its newest
//! drill's verdict, the plan's newest rehearsal's verdict, and each
//! repository's newest check verdict. Without
//! them a restart (or a pod moved) would clear every active failure
//! series, and the alerts on them would resolve though nothing recovered.

use crate::Result;
use crate::model::Kind;
use crate::state::Job;

use super::Shared;

/// The metrics and the failing sources as the history left them.
pub(super) fn restore(shared: &Shared) -> Result<()> {
    let plan = shared.plan();
    shared.metrics.declare(&plan);
    shared.metrics.plan_loaded(shared.clock.now());
    for s in &plan.sources {
        match shared.state.last_success(&s.name)? {
            Some(j) => shared.metrics.seed(&s.name, &s.class, ended(&j)),
            None => {
                if let Some(first) = shared.state.first_scheduled(&s.name, Kind::Backup.as_str())? {
                    shared.metrics.pending_since(&s.name, first);
                }
            }
        }
        if let Some(j) = shared.state.failures(&s.name, 50)?.into_iter().find(|j| j.kind == Kind::Backup.as_str()) {
            shared.metrics.seed_failure(&s.name, &s.class, ended(&j));
        }
        let last = shared.state.jobs(50, Some(&s.name))?.into_iter().find(|j| j.kind == Kind::Backup.as_str());
        if let Some(j) = last.filter(|j| j.outcome.status == "failed") {
            shared.failing.lock().expect("not poisoned").insert(s.name.clone(), ended(&j));
        }
        // The newest drill's verdict, over the figures of the newest that
        // passed: a failed drill measures none, and takes none away.
        let drills = shared.state.source_drills(&s.name, 50)?;
        let passed = drills.iter().find(|d| d.passed).filter(|_| drills.first().is_some_and(|d| !d.passed));
        for d in passed.into_iter().chain(drills.first()) {
            shared.metrics.drill_seen(&s.name, &s.class, &serde_json::to_value(d).unwrap_or_default());
        }
    }
    // The plan's rehearsal: its protocol's figures are in the evidence logs, its verdict in the job history.
    let rehearsed = shared.state.jobs(1, Some(super::REHEARSAL))?.into_iter().find(|j| j.kind == Kind::Rehearsal.as_str());
    if let Some(j) = rehearsed.filter(|j| plan.drills.rehearsal.is_some() && j.outcome.status != "running") {
        shared.metrics.drill_seen(super::REHEARSAL, "", &serde_json::json!({"passed": j.outcome.status == "succeeded"}));
    }
    shared.metrics.take_on(&plan, shared.clock.now());
    for name in plan.repositories.keys() {
        let checks: Vec<Job> = shared.state.jobs(200, Some(name))?.into_iter().filter(|j| j.kind == Kind::Check.as_str()).collect();
        let passed = checks.iter().find(|j| j.outcome.status == "succeeded").and_then(|j| j.ended_at);
        let newest = checks.iter().find_map(|j| j.outcome.problems);
        shared.metrics.check_done(name, passed, newest);
    }
    Ok(())
}

fn ended(j: &Job) -> chrono::DateTime<chrono::Utc> {
    j.ended_at.unwrap_or(j.started_at)
}
