//! What a finished job leaves besides its history: its record in the
//! evidence logs (a rehearsal's protocol in every primary's), its outcome in
//! the metrics, and a source's failure or recovery told to the webhooks.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{REHEARSAL, Shared, saved};
use crate::notify::{Change, Event};
use crate::runner::{Kind, Work};
use crate::state::{Job, Outcome};

/// The job's record in its repositories' evidence logs; a rehearsal's protocol in every primary's.
pub(super) async fn record_evidence(shared: &Arc<Shared>, w: &Work, record: &Job, outcome: &Outcome) {
    // A repository the job could not reach or open would only make the daemon wait for it again.
    let unreachable =
        !outcome.in_target && matches!(outcome.reason.as_deref(), Some("repository" | "repository_missing" | "wrong_password"));
    let mut body = serde_json::to_value(record).unwrap_or_default();
    if w.kind == Kind::Drill {
        // The drill protocol: what a rebuilt state's report reads.
        body["drills"] = outcome.summary.clone().unwrap_or_default();
    }
    if let (Kind::Rehearsal, Some(protocol)) = (w.kind, &outcome.summary) {
        // The plan's protocol, in every primary's log (never the off-site copy's, which `copy` fills),
        // with the job that ran it, for a state rebuilt from the logs.
        let mut entry = protocol.clone();
        entry["job"] = body;
        let e = shared.repos.record(&shared.plan(), crate::model::REHEARSAL, entry).await;
        for n in e.not_recorded {
            tracing::warn!("the rehearsal's protocol is not in the evidence log of {}: {}", n.repository, n.reason);
        }
        shared.metrics.rehearsal_done(REHEARSAL, protocol);
    } else if !unreachable {
        for target in crate::repos::evidence_targets(&shared.plan(), Some(&w.repo)) {
            if let Err(e) = shared.repos.append(&target, "job", body.clone()).await {
                tracing::warn!("the evidence of job {} stays local: {e}", record.id);
            }
        }
    }
}

/// The job's outcome in the metrics (and, for a backup, to the webhooks);
/// when it started and ended, by the daemon's clock.
pub(super) fn measure(shared: &Arc<Shared>, w: &Work, outcome: &Outcome, seconds: f64, (started, ended): (DateTime<Utc>, DateTime<Utc>)) {
    if matches!(outcome.reason.as_deref(), Some("repository" | "repository_missing")) {
        let plan = shared.plan();
        let failed = if outcome.in_target { w.offsite.as_ref() } else { Some(&w.repo) };
        if let Some((name, _)) = plan.repositories.iter().find(|(_, r)| failed.is_some_and(|f| r.url == f.url)) {
            shared.metrics.repository_failed(name);
        }
    }
    match w.kind {
        Kind::Backup => {
            shared.metrics.backup_done(&w.name, &w.class, outcome, seconds, ended);
            if w.offsite.is_some() && saved(outcome) {
                shared.metrics.not_yet_offsite(&w.name, started);
            }
            announce(shared, w, outcome, ended);
        }
        Kind::Restore => {
            let reason = outcome.reason.as_deref().unwrap_or("");
            shared.metrics.restore_done(&w.name, &w.class, outcome.status == "succeeded", reason, seconds);
        }
        Kind::Drill => {
            // A drill that ended before its report (its repository out of
            // reach) failed all the same: its verdict must not stay the
            // last drill's.
            let ended = serde_json::json!({"passed": outcome.status == "succeeded"});
            let report = outcome.summary.as_ref().and_then(|v| v.get(0)).unwrap_or(&ended);
            shared.metrics.drill_done(&w.name, &w.class, report, outcome.reason.as_deref().unwrap_or("error"), seconds);
        }
        Kind::Rehearsal if outcome.summary.is_none() && outcome.status != "succeeded" => {
            // Ended before its protocol (record_evidence measures one that has it).
            shared.metrics.drill_seen(REHEARSAL, "", &serde_json::json!({"passed": false}));
            shared.metrics.job_failed(&w.name, &w.class, w.kind.as_str());
        }
        Kind::Check => {
            shared.metrics.check_done(&w.name, (outcome.status == "succeeded").then_some(ended), outcome.problems);
            if outcome.status != "succeeded" {
                shared.metrics.job_failed(&w.name, &w.class, w.kind.as_str());
            }
        }
        Kind::Copy if outcome.status == "succeeded" => shared.metrics.offsite_current(&w.name, &w.class),
        _ if outcome.status != "succeeded" => shared.metrics.job_failed(&w.name, &w.class, w.kind.as_str()),
        _ => {}
    }
}

/// Tell the webhooks when a source starts failing or recovers.
fn announce(shared: &Arc<Shared>, w: &Work, outcome: &Outcome, now: DateTime<Utc>) {
    let change = {
        let mut failing = shared.failing.lock().expect("not poisoned");
        match outcome.status.as_str() {
            "failed" if !failing.contains_key(&w.name) => {
                failing.insert(w.name.clone(), now);
                Some((Change::Failure, now))
            }
            "succeeded" => failing.remove(&w.name).map(|since| (Change::Recovery, since)),
            _ => None,
        }
    };
    let Some((change, since)) = change else { return };
    let event = Event {
        change,
        source: w.name.clone(),
        class: w.class.clone(),
        reason: outcome.reason.clone(),
        message: outcome.message.clone(),
        time: now,
        since,
    };
    for hook in shared.plan().notifications {
        let audit = shared.clone();
        shared.http.send(hook, event.clone(), move |hook, event, delivered| {
            let (result, detail) = match delivered {
                Ok(()) => ("succeeded", String::new()),
                Err(e) => ("failed", e),
            };
            let what = if event.change == Change::Failure { "failure" } else { "recovery" };
            audit.audit("daemon", "notify", &format!("{what} of {} to {}", event.source, hook.url.origin()), result, &detail);
        });
    }
}
