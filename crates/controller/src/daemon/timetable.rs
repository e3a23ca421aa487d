//! When each of the plan's schedules fires next: a source's backups, a
//! repository's prunes and checks, a class's drills, an application's
//! drills, the plan's rehearsal,
//! each under its key among the daemon's next runs.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::Kind;
use crate::plan::Plan;
use crate::schedule::{Schedule, spread_offset};

use super::REHEARSAL;

/// The jobs each repository runs on a schedule of its own, by the prefix
/// of their keys among the next runs.
pub(super) const REPOSITORY_JOBS: [(&str, Kind); 2] = [("prune:", Kind::Prune), ("check:", Kind::Check)];

/// The prefix of an application's drills among the next runs.
pub(super) const APP_DRILL: &str = "drill-app:";

/// The schedule of a repository's job of `kind` (one of `REPOSITORY_JOBS`).
fn repository_schedule<'a>(plan: &'a Plan, kind: Kind, repo: &str) -> Option<&'a str> {
    match kind {
        Kind::Check => plan.check_schedule(repo),
        _ => plan.prune_schedule(repo),
    }
}

/// The schedule behind `key` and the fixed delay after each of its times.
fn schedule_of<'a>(plan: &'a Plan, key: &str) -> Option<(&'a str, Duration)> {
    if key.strip_prefix("rehearsal:") == Some(REHEARSAL) {
        return plan.drills.rehearsal.as_ref().map(|r| (r.schedule.as_str(), Duration::ZERO));
    }
    for (prefix, kind) in REPOSITORY_JOBS {
        if let Some(repo) = key.strip_prefix(prefix) {
            return repository_schedule(plan, kind, repo).map(|s| (s, Duration::ZERO));
        }
    }
    if let Some(class) = key.strip_prefix("drill:") {
        return plan.classes.get(class)?.drill.as_ref().map(|d| (d.schedule.as_str(), Duration::ZERO));
    }
    if let Some(app) = key.strip_prefix(APP_DRILL) {
        return plan.applications.iter().find(|a| a.name == app)?.drill.as_ref().map(|d| (d.schedule.as_str(), Duration::ZERO));
    }
    let s = plan.sources.iter().find(|s| s.name == key)?;
    Some((s.schedule.as_str(), spread_offset(&s.name, s.spread.map(|d| d.0).unwrap_or_default())))
}

/// The first time `key` is due after `after` (its schedule's time plus its
/// spread): none when the plan has no such schedule.
pub(super) fn next_due(plan: &Plan, key: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (text, spread) = schedule_of(plan, key)?;
    let spread = chrono::Duration::from_std(spread).unwrap_or_default();
    // From the schedule's own time, so that a daemon started within a
    // source's spread still runs that time's backup.
    Some(Schedule::parse(text).ok()?.next_after(after - spread)? + spread)
}

/// Every key the plan schedules.
fn keys(plan: &Plan) -> Vec<String> {
    let mut keys: Vec<String> = plan.sources.iter().map(|s| s.name.clone()).collect();
    for (prefix, _) in REPOSITORY_JOBS {
        keys.extend(plan.repositories.keys().map(|r| format!("{prefix}{r}")));
    }
    keys.extend(plan.classes.keys().map(|c| format!("drill:{c}")));
    keys.extend(plan.applications.iter().map(|a| format!("{APP_DRILL}{}", a.name)));
    keys.push(format!("rehearsal:{REHEARSAL}"));
    keys
}

/// Every next run of `plan` as of `now`. A key `before` (the next runs of
/// the plan this one replaces) had keeps its time when that is due already
/// or still comes first: a reload never loses a run that was due at or
/// before it, nor moves one later.
pub(super) fn next_runs(plan: &Plan, now: DateTime<Utc>, before: &BTreeMap<String, DateTime<Utc>>) -> BTreeMap<String, DateTime<Utc>> {
    keys(plan)
        .into_iter()
        .filter_map(|key| {
            let after = before.get(&key).map_or(now, |t| now.min(*t - chrono::Duration::seconds(1)));
            next_due(plan, &key, after).map(|t| (key, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("a time").to_utc()
    }

    fn plan(schedule: &str) -> Plan {
        let text = format!(
            "repositories:\n  main:\n    url: /nonexistent/r\n    password_file: /nonexistent/pw\n\
             classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - {{name: app, class: standard, url: /srv/a, schedule: '{schedule}'}}\n\
             daemon:\n  prune_schedule: null\n"
        );
        Plan::parse(&text, std::path::Path::new("tresor.yaml")).expect("a plan")
    }

    /// A reload a moment after a backup fell due, before the daemon's loop
    /// started it, keeps it due; one before it keeps its time; a schedule
    /// made more frequent takes effect at once.
    #[test]
    fn a_reload_keeps_a_run_due_at_or_before_it() {
        let before = BTreeMap::from([("app".to_string(), at("2026-11-21T02:00:00Z"))]);
        let runs = |p: &Plan, now: &str| next_runs(p, at(now), &before).get("app").copied();
        let daily = plan("0 2 * * *");
        assert_eq!(runs(&daily, "2026-11-21T02:00:00.020Z"), Some(at("2026-11-21T02:00:00Z")));
        assert_eq!(runs(&daily, "2026-11-21T01:59:59.980Z"), Some(at("2026-11-21T02:00:00Z")));
        assert_eq!(runs(&plan("*/15 * * * *"), "2026-11-21T01:20:00.5Z"), Some(at("2026-11-21T01:30:00Z")));
        assert_eq!(next_runs(&daily, at("2026-11-21T02:00:00.020Z"), &BTreeMap::new()).get("app"), Some(&at("2026-11-22T02:00:00Z")));
    }

    /// The times due are whole seconds, whatever fraction of a second the
    /// daemon computes them at.
    #[test]
    fn times_due_are_whole_seconds() {
        let p = plan("* * * * *");
        assert_eq!(next_due(&p, "app", at("2026-11-21T19:58:12.0205Z")), Some(at("2026-11-21T19:59:00Z")));
        assert_eq!(next_due(&p, "app", at("2026-11-21T19:59:00.0205Z")), Some(at("2026-11-21T20:00:00Z")));
    }
}
