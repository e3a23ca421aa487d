//! `tresor drill`: restore drills of a plan's sources, recorded as
//! protocol entries in the daemon's state; `tresor report` reads them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tresor_controller::daemon::load_plan;
use tresor_controller::drill::{Mode, Origin, drill_from};
use tresor_controller::model::{BackupCopy, DrillReport as Report};
use tresor_controller::plan::{Plan, SourceSpec};
use tresor_controller::state::{AuditEntry, State};

use crate::commands::print_json;
use crate::opts::{DrillArgs, DrillCommand, Global, ReportArgs};

/// The state database a plan's daemon keeps.
pub fn state_of(plan: &Plan, plan_file: &std::path::Path) -> PathBuf {
    plan.daemon.state.clone().unwrap_or_else(|| plan_file.with_file_name("tresor-state.db"))
}

fn seconds(s: f64) -> String {
    if s < 120.0 { format!("{s:.1} s") } else { format!("{:.1} min", s / 60.0) }
}

pub(crate) fn print(r: &Report) {
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let from = match (r.from, &r.repository) {
        (BackupCopy::Offsite, Some(repo)) => format!(" from the off-site copy {repo}"),
        _ => String::new(),
    };
    say!("{verdict} {} ({}) {}{from}", r.source, r.class, r.test_id);
    if let Some(snap) = &r.snapshot {
        let rpo = r.rpo_seconds.map_or("?".into(), seconds);
        say!(
            "  restored snapshot {} ({} bytes) in {} (RTO target {}), restore point {rpo} old (RPO target {})",
            &snap[..8.min(snap.len())],
            r.bytes,
            seconds(r.rto_seconds),
            seconds(r.rto_target as f64),
            seconds(r.rpo_target as f64)
        );
    }
    for c in &r.checks {
        say!("  ok: {c}");
    }
    for why in &r.reasons {
        say!("  failed: {why}");
    }
    if let Some(silence) = &r.silence {
        say!("  {}", tresor_controller::silence::describe(silence));
    }
}

/// Where each source's drill restores from: `--from`, else its class's
/// `drill.from`. Each repository other than the sources' own is opened
/// first, so an unreachable copy or a wrong password fails the command at
/// once, before any scratch space is touched.
pub async fn origins(
    g: &Global,
    plan: &Plan,
    chosen: &[SourceSpec],
    from: Option<&str>,
    password_file: Option<&Path>,
) -> Result<Vec<Origin>> {
    let mut out: Vec<Origin> = Vec::new();
    for s in chosen {
        let origin = match from {
            Some(from) => Origin::resolve(plan, s, from, password_file),
            None => Origin::of_plan(plan, s),
        };
        let origin = origin.map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))?;
        if origin.copy == BackupCopy::Offsite && !out.iter().any(|o| o.repo.url == origin.repo.url) {
            let what = format!("the off-site repository {}", origin.name);
            let password = tresor_engine::Password::read_file(&origin.repo.password_file)
                .with_context(|| format!("{what}: cannot read password file {}", origin.repo.password_file.display()))?;
            let location = tresor_storage::Location::parse(origin.repo.url.expose()).with_context(|| what.clone())?;
            tresor_engine::Repository::open(&location, &crate::commands::open_options(g, password)?)
                .await
                .with_context(|| format!("cannot open {what}; no drill ran"))?;
        }
        out.push(origin);
    }
    Ok(out)
}

pub async fn drills(g: &Global, a: DrillArgs) -> Result<u8> {
    if let Some(DrillCommand::Annotate(n)) = a.command {
        return crate::protocol::annotate(g, n).await;
    }
    if let Some(app) = &a.app {
        return crate::app_drill::drill(g, &a, app).await;
    }
    let plan_file = std::path::absolute(a.plan.as_ref().context("--plan is required")?)?;
    let plan = load_plan(&plan_file, chrono::Utc::now())?;
    let chosen: Vec<_> = plan.sources.iter().filter(|s| a.name.as_ref().is_none_or(|n| &s.name == n || &s.class == n)).cloned().collect();
    if chosen.is_empty() {
        bail!("no class or source {} in the plan", a.name.unwrap_or_default());
    }
    let origins = origins(g, &plan, &chosen, a.from.as_deref(), a.from_password_file.as_deref()).await?;
    let state = State::open(&state_of(&plan, &plan_file))?;
    let scratch = a.scratch.clone().or(plan.drills.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let exe = std::env::current_exe()?;
    let actor = format!("cli:{}@{}", tresor_engine::username(), tresor_engine::hostname());
    let mut reports = Vec::new();
    for (s, origin) in chosen.iter().zip(origins) {
        // The drill's alerts silenced while it runs (drills.silence), expired after.
        let silence =
            tresor_controller::silence::for_drill(&plan, s, &state.drills(chrono::Utc::now() - chrono::Duration::days(90))?).await;
        let mut r = tokio::task::block_in_place(|| drill_from(&exe, &plan, s, Ok(origin), &scratch, Mode::default()));
        if let Some(silence) = silence {
            r.silence = Some(silence.end().await);
        }
        state.record_drill(&r)?;
        let detail = if r.passed { r.test_id.clone() } else { format!("{}: {}", r.test_id, r.reasons.join("; ")) };
        let result = if r.passed { "succeeded" } else { "failed" };
        if !a.for_daemon {
            state.audit(&AuditEntry {
                time: chrono::Utc::now(),
                actor: actor.clone(),
                action: "drill".into(),
                target: s.name.clone(),
                result: result.into(),
                detail,
            })?;
        }
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

/// The daemon's state; without it, the history the repositories' evidence logs tell.
pub async fn history(plan: &Plan, plan_file: &std::path::Path, handles: &tresor_controller::repos::Handles) -> Result<State> {
    let state_file = state_of(plan, plan_file);
    if state_file.exists() {
        return Ok(State::open(&state_file)?);
    }
    let state = State::in_memory()?;
    handles
        .rebuild(plan, &state)
        .await
        .map_err(|e| anyhow::anyhow!("no state at {} and no history in the repositories: {e}", state_file.display()))?;
    Ok(state)
}

/// `tresor report`: targets against measurements, per class, since a date.
pub async fn report(a: ReportArgs) -> Result<u8> {
    let plan_file = std::path::absolute(&a.plan)?;
    let (plan, _) = Plan::load(&plan_file)?;
    let handles = tresor_controller::repos::Handles::default();
    let state = history(&plan, &plan_file, &handles).await?;
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
        None => say_raw!("{text}"),
    }
    Ok(0)
}
