//! The daemon's HTTP API and metrics, served in-process over the scheduler
//! the parent module drives.

use std::collections::BTreeMap;

use super::{PLAN, Scripted, first_backups, started};
use crate::model::{JobResult, Reason};

/// The classic text format the daemon serves to scrapers that do not ask
/// for OpenMetrics passes `promtool check metrics`: every family has its
/// help text under the name its samples have.
#[tokio::test]
async fn the_classic_exposition_passes_promtools_check() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = BTreeMap::from([(("locked".to_string(), 1), JobResult::failed(Reason::WrongPassword, false, "wrong password"))]);
    let d = started(dir.path(), PLAN, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    let text = crate::metrics::classic(&d.shared.metrics.render(&d.shared.plan(), d.shared.clock.now()));
    d.stop().await;
    assert!(
        text.contains("# HELP backup_job_failure_total Backups that failed, by reason.\n# TYPE backup_job_failure_total counter\n"),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("its input"), text.as_bytes()).expect("written");
    let out = promtool.wait_with_output().expect("promtool's verdict");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!((out.status.code(), said.as_str()), (Some(0), ""));
}

/// A restore asked for with a body that is no JSON restore request is
/// answered in the API's error schema, as every other refusal is: 415
/// without `Content-Type: application/json`, 422 for a field unknown.
#[tokio::test]
async fn a_restore_request_that_is_no_json_request_is_refused_in_the_error_schema() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), PLAN, Scripted::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}/api/v1/sources/flaky/restore", listener.local_addr().expect("its address"));
    tokio::spawn(crate::serve::serve(listener, crate::api::router(d.shared.clone(), Default::default()), None));
    let client = reqwest::Client::new();
    let ask = |json: bool, body: &'static str| {
        let req = client.post(&url).body(body);
        let req = if json { req.header("Content-Type", "application/json") } else { req };
        async move {
            let r = req.send().await.expect("an answer");
            let kind = r.headers().get("content-type").map(|v| v.to_str().expect("text").to_string());
            (r.status().as_u16(), kind, r.text().await.expect("a body"))
        }
    };
    let json = Some("application/json".to_string());
    assert_eq!(
        ask(false, r#"{"target": "/tmp/x"}"#).await,
        (415, json.clone(), r#"{"error":"Expected request with `Content-Type: application/json`"}"#.to_string())
    );
    let (status, kind, body) = ask(true, r#"{"target": "/tmp/x", "bogus": 1}"#).await;
    assert_eq!((status, kind), (422, json));
    assert!(body.starts_with(r#"{"error":"Failed to deserialize the JSON body into the target type: bogus: unknown field `bogus`, expected one of `snapshot`, `to`, `target`"#), "{body}");
    let refused = r#"{"error":"\"transforms\" is the source's, from the plan: a request cannot name a file"}"#;
    assert_eq!(
        ask(true, r#"{"target": "/tmp/x", "transforms": "/etc/shadow"}"#).await,
        (422, Some("application/json".into()), refused.into())
    );
    d.stop().await;
}

/// A state the daemon cannot write (a full disk; here its tables moved
/// away) is said by `backup_state_writable` and a notice on the status
/// page until a write succeeds: jobs vanished from the history, the API
/// and the page, which stayed green.
#[tokio::test]
async fn a_state_that_cannot_be_written_is_said_until_it_can() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let d = started(dir.path(), PLAN, Scripted::default());
    first_backups(&d, &["flaky", "locked"]).await;
    let writable = || super::metric(&d, "backup_state_writable");
    assert_eq!(writable(), Some("1".into()));
    let db = rusqlite::Connection::open(dir.path().join("state.db")).expect("the state");
    db.execute_batch("ALTER TABLE jobs RENAME TO jobs_aside").expect("moved");
    let backup =
        || d.shared.commands.send(crate::daemon::Command::Backup { source: "flaky".into(), actor: "test".into() }).expect("the loop");
    backup();
    // The job's audit entry is written after its history failed: that the
    // trail took it says nothing of the history, which stays unwritable.
    let audited = || d.shared.state.audit_log(5).expect("the trail").iter().any(|e| e.action == "backup" && e.actor == "test");
    super::until("the job's audit entry", audited).await;
    assert_eq!(writable(), Some("0".into()));
    let page = crate::status::page(&d.shared);
    let notice = page.lines().find(|l| l.starts_with("<p id=\"state-unwritable\" class=\"bad\">")).unwrap_or_default();
    assert!(
        notice.ends_with("state.db: no such table: jobs): jobs still run, but this page, the API and the job history miss them.</p>"),
        "{notice}"
    );
    db.execute_batch("ALTER TABLE jobs_aside RENAME TO jobs").expect("back");
    backup();
    super::until("a write that succeeds", || writable().as_deref() == Some("1")).await;
    assert!(!crate::status::page(&d.shared).contains("state-unwritable"));
    d.stop().await;
}

/// A source taken out of the plan takes none of its class's history
/// along: the status page's success rate counts each job under the class
/// it ran under (removing the failing source made 50 % read 100 %).
#[tokio::test]
async fn removing_a_source_rewrites_no_history() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = BTreeMap::from([(("flaky".to_string(), 1), JobResult::failed(Reason::Error, false, "it broke"))]);
    let d = started(dir.path(), PLAN, Scripted { script, ..Scripted::default() });
    first_backups(&d, &["flaky", "locked"]).await;
    let rate = || {
        let page = crate::status::page(&d.shared);
        page.split("data-success-rate=\"").nth(1).and_then(|r| r.split('"').next()).map(String::from)
    };
    assert_eq!(rate().as_deref(), Some("50.00"));
    let without = PLAN.replace("  - {name: flaky, class: standard, url: /srv/a, schedule: '@daily', retries: 3}\n", "");
    std::fs::write(dir.path().join("tresor.yaml"), without).expect("the plan");
    d.shared.commands.send(crate::daemon::Command::Reload { actor: "test".into() }).expect("the loop");
    super::until("the reload", || d.shared.plan().sources.len() == 1).await;
    assert_eq!(rate().as_deref(), Some("50.00"));
    // Its jobs stay listed, and link to no page it no longer has (a 404).
    let page = crate::status::page(&d.shared);
    assert!(page.contains("<td>flaky</td><td>backup</td>") && !page.contains("href=\"/sources/flaky\""), "{page}");
    d.stop().await;
}
