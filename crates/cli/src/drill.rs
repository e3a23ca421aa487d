//! `tresor drill`: restore drills of a plan's sources, recorded as
//! protocol entries in the daemon's state; `tresor report` reads them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tresor_controller::daemon::load_plan;
use tresor_controller::drill::{Report, Tresor, drill};
use tresor_controller::plan::Plan;
use tresor_controller::state::{AuditEntry, State};

use crate::commands::print_json;
use crate::opts::{DrillArgs, Global, ReportArgs};

/// The state database a plan's daemon keeps.
pub fn state_of(plan: &Plan, plan_file: &std::path::Path) -> PathBuf {
    plan.daemon.state.clone().unwrap_or_else(|| plan_file.with_file_name("tresor-state.db"))
}

fn seconds(s: f64) -> String {
    if s < 120.0 { format!("{s:.1} s") } else { format!("{:.1} min", s / 60.0) }
}

fn print(r: &Report) {
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    println!("{verdict} {} ({}) {}", r.source, r.class, r.test_id);
    if let Some(snap) = &r.snapshot {
        let rpo = r.rpo_seconds.map_or("?".into(), seconds);
        println!(
            "  restored snapshot {} ({} bytes) in {} (RTO target {}), restore point {rpo} old (RPO target {})",
            &snap[..8.min(snap.len())],
            r.bytes,
            seconds(r.rto_seconds),
            seconds(r.rto_target as f64),
            seconds(r.rpo_target as f64)
        );
    }
    for c in &r.checks {
        println!("  ok: {c}");
    }
    for why in &r.reasons {
        println!("  failed: {why}");
    }
}

pub async fn drills(g: &Global, a: DrillArgs) -> Result<u8> {
    let plan_file = std::path::absolute(&a.plan)?;
    let plan = load_plan(&plan_file, chrono::Utc::now())?;
    let chosen: Vec<_> = plan.sources.iter().filter(|s| a.name.as_ref().is_none_or(|n| &s.name == n || &s.class == n)).cloned().collect();
    if chosen.is_empty() {
        bail!("no class or source {} in the plan", a.name.unwrap_or_default());
    }
    let state = State::open(&state_of(&plan, &plan_file))?;
    let scratch = a.scratch.clone().or(plan.drills.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let exe = std::env::current_exe()?;
    let actor = format!("cli:{}@{}", tresor_engine::username(), tresor_engine::hostname());
    let mut reports = Vec::new();
    for s in &chosen {
        let r = tokio::task::block_in_place(|| drill(&exe, &plan, s, &scratch));
        state.record_drill(&r)?;
        let detail = if r.passed { r.test_id.clone() } else { format!("{}: {}", r.test_id, r.reasons.join("; ")) };
        let result = if r.passed { "succeeded" } else { "failed" };
        state.audit(&AuditEntry {
            time: chrono::Utc::now(),
            actor: actor.clone(),
            action: "drill".into(),
            target: s.name.clone(),
            result: result.into(),
            detail,
        })?;
        if !g.json {
            print(&r);
        }
        reports.push(r);
    }
    if g.json {
        print_json(&reports)?;
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    if failed > 0 {
        eprintln!("tresor: error: {failed} of {} drills failed", reports.len());
        return Ok(crate::EXIT_ERROR);
    }
    Ok(0)
}

/// `tresor report`: targets against measurements, per class, since a date.
pub fn report(a: ReportArgs) -> Result<u8> {
    let plan_file = std::path::absolute(&a.plan)?;
    let (plan, _) = Plan::load(&plan_file)?;
    let state = State::open(&state_of(&plan, &plan_file))?;
    let now = tresor_controller::daemon::Clock::from_env().now();
    let since = now - chrono::Duration::from_std(crate::commands::parse_duration(&a.since)?)?;
    let facts = tresor_controller::report::RepoFacts { lags: archive_lags(&plan, now), holds: holds(&plan) };
    let report = tresor_controller::report::build(&plan, &state.jobs_since(since)?, &state.drills(since)?, facts, since, now);
    let text = match a.format.as_str() {
        "json" => serde_json::to_string_pretty(&report)?,
        "html" => tresor_controller::report_html::html(&report),
        _ => tresor_controller::report_html::markdown(&report),
    };
    match &a.output {
        Some(file) => std::fs::write(file, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?,
        None => print!("{text}"),
    }
    Ok(0)
}

/// One of the plan's repositories, asked through a job.
fn ask(
    repo: &tresor_controller::plan::Repository,
    what: impl Fn(&Tresor) -> Result<serde_json::Value, String>,
) -> Option<serde_json::Value> {
    let exe = std::env::current_exe().ok()?;
    what(&Tresor::new(&exe, repo, "")).ok()
}

/// Legal holds per repository that answers.
fn holds(plan: &Plan) -> std::collections::BTreeMap<String, u64> {
    plan.repositories.iter().filter_map(|(name, r)| Some((name.clone(), ask(r, |t| t.holds())?.as_array()?.len() as u64))).collect()
}

/// For each PostgreSQL base-backup source (`pgbase://`): how old the newest
/// WAL file archived for its cluster is (the cluster from its newest base
/// backup). Sources whose repository cannot be read are left out.
fn archive_lags(plan: &Plan, now: chrono::DateTime<chrono::Utc>) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    // One listing per repository, however many sources it holds.
    let mut listings: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = std::collections::BTreeMap::new();
    for s in plan.sources.iter().filter(|s| s.url.starts_with("pgbase://")) {
        let Some((name, repo)) = plan.repository_of(s) else { continue };
        if !listings.contains_key(name) {
            let listed = ask(repo, |t| t.snapshots()).and_then(|v| v.as_array().cloned()).unwrap_or_default();
            listings.insert(name, listed);
        }
        let snaps = &listings[name];
        let tag = format!("source={}", s.name);
        let base = snaps
            .iter()
            .rev()
            .find(|x| x["source"]["kind"] == "pg-base" && x["tags"].as_array().is_some_and(|t| t.iter().any(|v| v == tag.as_str())));
        let Some(system_id) = base.and_then(|b| b["source"]["consistency"]["system_id"].as_str()) else { continue };
        let newest = snaps
            .iter()
            .filter(|x| x["source"]["kind"] == "pg-wal" && x["source"]["consistency"]["system_id"] == system_id)
            .filter_map(|x| chrono::DateTime::parse_from_rfc3339(x["time"].as_str()?).ok())
            .max();
        if let Some(t) = newest {
            out.insert(s.name.clone(), (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0);
        }
    }
    out
}
