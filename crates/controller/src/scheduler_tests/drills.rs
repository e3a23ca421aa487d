//! What drills and rehearsals leave in the metrics, the status page and
//! the report, run in-process over the scheduler the parent module drives.

use std::collections::BTreeMap;

use super::{PLAN, Scripted, ended_job, first_backups, metric, started, until};
use crate::model::{JobResult, Reason};

/// A drill that restored nothing (the source had no snapshot) measured no
/// RTO and no RPO: its failure shows, no figure from it does, in the
/// metrics, the API's classes, the status page and the report.
#[tokio::test]
async fn a_drill_that_restored_nothing_measures_no_rto() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let drill = serde_json::json!({
        "test_id": "DRILL-20261121-100000-flaky", "source": "flaky", "class": "standard", "kind": "",
        "started": "2026-11-21T10:00:00Z", "rto_seconds": 0.334, "rpo_seconds": null, "rto_target": 14400, "rpo_target": 86400,
        "bytes": 0, "passed": false, "checks": [], "reasons": ["the source has no snapshot to restore"], "owner": null,
    });
    let failed = JobResult { details: Some(serde_json::json!([drill])), ..JobResult::failed(Reason::Error, false, "the drill failed") };
    let d = started(dir.path(), PLAN, Scripted { script: BTreeMap::from([(("flaky".to_string(), 2), failed)]), ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    // As the drill's child process records it.
    d.shared.state.record_drill(&serde_json::from_value(drill).expect("a drill report")).expect("recorded");
    d.shared.commands.send(crate::daemon::Command::Drill { source: "flaky".into(), actor: "test".into() }).expect("the loop");
    let series = |s: &str| metric(&d, &format!("{s}{{source=\"flaky\",class=\"standard\"}}"));
    until("the drill's verdict", || series("restore_drill_success").as_deref() == Some("0")).await;
    for figure in ["rto_achieved_seconds", "rpo_achieved_seconds", "restore_drill_duration_seconds"] {
        assert_eq!(series(figure), None, "{figure}");
    }
    assert_eq!(crate::view::class_states(&d.shared)[0]["last_drill"]["rto_seconds"], serde_json::Value::Null);
    let newest = || d.shared.state.audit_log(1).expect("the trail").remove(0);
    until("the drill's audit entry", || newest().action == "drill").await;
    let audited = newest();
    let entry =
        (audited.actor.as_str(), audited.action.as_str(), audited.target.as_str(), audited.result.as_str(), audited.detail.as_str());
    assert_eq!(entry, ("test", "drill", "flaky", "failed", "DRILL-20261121-100000-flaky: error: the drill failed"));
    let page = crate::status::page(&d.shared);
    let cell = page.lines().find(|l| l.contains("data-verdict=\"FAILED\"")).expect("the drill's cell");
    assert!(cell.contains("data-verdict=\"FAILED\" >(no RTO measured, target 4.0 h)</span>"), "{cell}");
    let report = crate::status::report(&d.shared).await;
    let report = String::from_utf8(axum::body::to_bytes(report.into_body(), usize::MAX).await.expect("a body").to_vec()).expect("text");
    for cells in
        ["<td>4h</td><td>—</td><td>not measured</td>", "<td>FAILED: the source has no snapshot to restore</td><td>—</td><td>—</td>"]
    {
        assert!(report.contains(cells), "{cells} not in {report}");
    }
    d.stop().await;
}

/// A daemon started again keeps a failed rehearsal of the plan alerted
/// (BackupDrillFailed on the platform's series), as its history says.
#[tokio::test]
async fn a_daemon_started_again_keeps_a_failed_rehearsal_alerted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let state = crate::state::State::open(&dir.path().join("state.db")).expect("a state");
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-20T03:00:00Z").expect("a time").to_utc();
    let failed = crate::state::Outcome { status: "failed".into(), reason: Some("error".into()), ..Default::default() };
    assert!(state.import_job(&ended_job(1, crate::daemon::REHEARSAL, "rehearsal", at, failed)).expect("imported"));
    drop(state);
    let plan = format!("{PLAN}drills:\n  rehearsal: {{schedule: '@yearly', from: primary}}\n");
    let d = started(dir.path(), &plan, Scripted::default());
    until("the daemon ready", || d.shared.ready.load(std::sync::atomic::Ordering::SeqCst)).await;
    assert_eq!(metric(&d, "restore_drill_success{source=\"platform\",class=\"\"}"), Some("0".into()));
    d.stop().await;
}

/// A drill's restore counts in `restore_*` (the restore success rate the
/// requirements ask of regular tests; it showed only restores asked for),
/// and a drill that ended before its report (its repository out of reach)
/// failed: the verdict of the drill before it stayed 1.
#[tokio::test]
async fn drills_count_as_restores_and_one_without_a_report_failed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let drill = serde_json::json!({
        "test_id": "DRILL-20261121-100000-flaky", "source": "flaky", "class": "standard", "kind": "",
        "started": "2026-11-21T10:00:00Z", "rto_seconds": 12.5, "rpo_seconds": 60.0, "rto_target": 14400, "rpo_target": 86400,
        "bytes": 10, "passed": true, "checks": [], "reasons": [], "owner": null,
    });
    let passed = JobResult { details: Some(serde_json::json!([drill])), ..JobResult::succeeded() };
    let unreachable = JobResult::failed(Reason::Repository, false, "cannot reach the repository");
    let script = BTreeMap::from([(("flaky".to_string(), 2), passed), (("flaky".to_string(), 3), unreachable)]);
    let d = started(dir.path(), PLAN, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    let series = |s: &str| metric(&d, &format!("{s}{{source=\"flaky\",class=\"standard\"}}"));
    let drill =
        || d.shared.commands.send(crate::daemon::Command::Drill { source: "flaky".into(), actor: "test".into() }).expect("the loop");
    drill();
    until("the drill's verdict", || series("restore_drill_success").as_deref() == Some("1")).await;
    assert_eq!((series("restore_success_total"), series("restore_duration_seconds")), (Some("1".into()), Some("12.5".into())));
    drill();
    until("the second drill's verdict", || series("restore_drill_success").as_deref() == Some("0")).await;
    let failures = metric(&d, "restore_failure_total{source=\"flaky\",class=\"standard\",reason=\"repository\"}");
    assert_eq!((failures, series("restore_success_total")), (Some("1".into()), Some("1".into())));
    assert_eq!(series("rto_achieved_seconds"), Some("12.5".into()), "the last drill that passed keeps its figures");
    d.stop().await;
}

/// A rehearsal that ended before its protocol (no repository to restore
/// from) failed: the platform's verdict of the one before stayed 1.
#[tokio::test]
async fn a_rehearsal_without_a_protocol_failed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let protocol = serde_json::json!({"test_id": "REHEARSAL-20261121-110000", "rto_seconds": 30.0, "passed": true});
    let passed = JobResult { details: Some(protocol), ..JobResult::succeeded() };
    let unreachable = JobResult::failed(Reason::Repository, false, "cannot reach the repository");
    let script = BTreeMap::from([(("platform".to_string(), 1), passed), (("platform".to_string(), 2), unreachable)]);
    let plan = format!("{PLAN}drills:\n  rehearsal: {{schedule: '0 11 * * *', from: main}}\n");
    let d = started(dir.path(), &plan, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    let verdict = || metric(&d, "restore_drill_success{source=\"platform\",class=\"\"}");
    super::set(&d.clock_file, "2026-11-21T11:00:01Z");
    until("the first rehearsal's verdict", || verdict().as_deref() == Some("1")).await;
    super::set(&d.clock_file, "2026-11-22T11:00:01Z");
    until("the second rehearsal's verdict", || verdict().as_deref() == Some("0")).await;
    assert_eq!(metric(&d, "rto_achieved_seconds{source=\"platform\",class=\"\"}"), Some("30.0".into()));
    d.stop().await;
}

/// An application's drill runs on its own schedule as a drill job of the
/// application (the requirement documents' monthly test of a whole
/// application beside each component's weekly one), measured under the
/// strictest class of its sources.
#[tokio::test]
async fn an_application_is_drilled_on_its_schedule() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let drill = serde_json::json!({"test_id": "DRILL-20261121-110000-shop", "source": "shop", "passed": true, "rto_seconds": 42.0});
    let script =
        BTreeMap::from([(("shop".to_string(), 1), JobResult { details: Some(serde_json::json!([drill])), ..JobResult::succeeded() })]);
    let plan = format!(
        "{PLAN}applications:\n  - name: shop\n    sources: [{{source: flaky}}, {{source: locked, after: [flaky]}}]\n    \
         drill: {{schedule: '0 11 * * *', owner: platform-team, id: BT-APP-01}}\n"
    );
    let d = started(dir.path(), &plan, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    super::set(&d.clock_file, "2026-11-21T11:00:01Z");
    let verdict = || metric(&d, "restore_drill_success{source=\"shop\",class=\"standard\"}");
    until("the application's drill", || verdict().as_deref() == Some("1")).await;
    assert_eq!(*d.jobs.drills.lock().expect("not poisoned"), [("shop".to_string(), Some("shop".to_string()))]);
    assert_eq!(metric(&d, "rto_achieved_seconds{source=\"shop\",class=\"standard\"}"), Some("42.0".into()));
    d.stop().await;
}
