//! What the daemon starts with, read back from the job history: each
//! source's newest success and failure, whether it is failing (and its
//! alert, which is sent again to Alertmanager from then on), its newest
//! drill's verdict, the plan's newest rehearsal's verdict, and each
//! repository's newest check verdict. Without
//! them a restart (or a pod moved) would clear every active failure
//! series, and the alerts on them would resolve though nothing recovered.

use std::sync::Arc;

use crate::Result;
use crate::model::Kind;
use crate::notify::{Change, Event, Resend, Still};
use crate::plan::{Plan, SecretUrl, Webhook, WebhookFormat};
use crate::state::Job;

use super::Shared;

/// The metrics and the failing sources as the history left them.
pub(super) fn restore(shared: &Arc<Shared>) -> Result<()> {
    let plan = shared.plan();
    let mut firing = Vec::new();
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
        if let Some(failure) = failing(shared, &s.name, &s.class)? {
            shared.failing.lock().expect("not poisoned").insert(s.name.clone(), failure.since);
            firing.push(failure);
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
    resume_alerts(shared, &plan, firing);
    shared.metrics.take_on(&plan, shared.clock.now());
    for name in plan.repositories.keys() {
        let checks: Vec<Job> = shared.state.jobs(200, Some(name))?.into_iter().filter(|j| j.kind == Kind::Check.as_str()).collect();
        let passed = checks.iter().find(|j| j.outcome.status == "succeeded").and_then(|j| j.ended_at);
        let newest = checks.iter().find_map(|j| j.outcome.problems);
        shared.metrics.check_done(name, passed, newest);
    }
    Ok(())
}

/// The failure a source's alert fires on, if its newest backup failed:
/// begun with the first failure since its newest success (as the daemon
/// announced it), in the words of the newest.
fn failing(shared: &Shared, source: &str, class: &str) -> Result<Option<Event>> {
    let backups: Vec<Job> = shared.state.jobs(50, Some(source))?.into_iter().filter(|j| j.kind == Kind::Backup.as_str()).collect();
    let Some(newest) = backups.first().filter(|j| j.outcome.status == "failed") else { return Ok(None) };
    let streak = backups.iter().take_while(|j| j.outcome.status != "succeeded");
    let first = streak.filter(|j| j.outcome.status == "failed").last().unwrap_or(newest);
    Ok(Some(Event {
        change: Change::Failure,
        source: source.into(),
        class: class.into(),
        reason: newest.outcome.reason.clone(),
        message: newest.outcome.message.clone(),
        time: ended(newest),
        since: ended(first),
    }))
}

/// Alertmanager forgets an alert not sent again within minutes: the
/// failing sources' alerts are re-sent from now on, at once (the daemon
/// may have been down for longer), as every failure announced from now on
/// is, while the daemon says it still fires.
fn resume_alerts(shared: &Arc<Shared>, plan: &Plan, firing: Vec<Event>) {
    let alerts = plan.notifications.iter().flat_map(|h| firing.iter().map(|e| (h.clone(), e.clone()))).collect();
    let weak = Arc::downgrade(shared);
    let still = move |source: &str, url: &SecretUrl| weak.upgrade().map_or(Still::Over, |s| still_fires(&s, source, url));
    let resend = Resend { clock: shared.clock.clone(), tick: shared.tick, firing: Box::new(still) };
    let weak = Arc::downgrade(shared);
    let done = move |hook: &Webhook, event: &Event, sent: std::result::Result<(), String>| {
        let Some(shared) = weak.upgrade() else { return };
        let (result, detail) = sent.map_or_else(|e| ("failed", e), |()| ("succeeded", String::new()));
        shared.audit("daemon", "notify", &format!("failure of {} to {}", event.source, hook.url.origin()), result, &detail);
    };
    shared.http.resume(resend, alerts, Arc::new(done));
}

/// Whether `source` still fails and `url` is still one of the plan's
/// Alertmanager receivers (then its alert fires, to the receiver as the
/// plan has it now), and whether the daemon runs (one stopped, or that
/// lost its lease, holds it: it would not announce the recovery).
fn still_fires(shared: &Shared, source: &str, url: &SecretUrl) -> Still {
    let plan = shared.plan();
    let hook = plan.notifications.iter().find(|h| h.url == *url && h.format == WebhookFormat::Alertmanager);
    let failing = shared.failing.lock().expect("not poisoned").contains_key(source);
    match hook {
        Some(hook) if failing && plan.sources.iter().any(|s| s.name == source) => {
            match shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
                true => Still::Fires(hook.clone()),
                false => Still::Held,
            }
        }
        _ => Still::Over,
    }
}

fn ended(j: &Job) -> chrono::DateTime<chrono::Utc> {
    j.ended_at.unwrap_or(j.started_at)
}
