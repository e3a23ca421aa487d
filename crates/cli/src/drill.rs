//! `tresor drill`: restore drills of a plan's sources, recorded as
//! protocol entries in the daemon's state; `tresor report` reads them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use tresor_controller::daemon::load_plan;
use tresor_controller::drill::drill;
use tresor_controller::model::DrillReport as Report;
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
    if let Some(silence) = &r.silence {
        println!("  {}", tresor_controller::silence::describe(silence));
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
        // The drill's alerts silenced while it runs (drills.silence), expired after.
        let silence = tresor_controller::silence::for_drill(&plan, s, &state.drills(chrono::Utc::now() - chrono::Duration::days(90))?).await;
        let mut r = tokio::task::block_in_place(|| drill(&exe, &plan, s, &scratch));
        if let Some(silence) = silence {
            r.silence = Some(silence.end().await);
        }
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
pub async fn report(a: ReportArgs) -> Result<u8> {
    let plan_file = std::path::absolute(&a.plan)?;
    let (plan, _) = Plan::load(&plan_file)?;
    let state_file = state_of(&plan, &plan_file);
    let handles = tresor_controller::repos::Handles::default();
    // Without the daemon's state, the repositories' evidence logs tell the history.
    let state = if state_file.exists() {
        State::open(&state_file)?
    } else {
        let state = State::in_memory()?;
        handles
            .rebuild(&plan, &state)
            .await
            .map_err(|e| anyhow::anyhow!("no state at {} and no history in the repositories: {e}", state_file.display()))?;
        state
    };
    let now = tresor_controller::daemon::Clock::from_env().now();
    let since = now - chrono::Duration::from_std(crate::commands::parse_duration(&a.since)?)?;
    let facts = handles.facts(&plan, now).await;
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
