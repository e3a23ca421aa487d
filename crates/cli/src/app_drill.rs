//! `tresor drill --app APP`: a drill of a whole application
//! (tresor_controller::app_drill does it), recorded like a source's drill.

use anyhow::{Context, Result, bail};
use tresor_controller::daemon::load_plan;
use tresor_controller::model::{DrillReport, HookOutcome};
use tresor_controller::state::{AuditEntry, State};

use crate::commands::print_json;
use crate::drill::{print, state_of};
use crate::opts::{DrillArgs, Global};

pub async fn drill(g: &Global, a: &DrillArgs, name: &str) -> Result<u8> {
    let plan_file = std::path::absolute(a.plan.as_ref().context("--plan is required")?)?;
    let plan = load_plan(&plan_file, chrono::Utc::now())?;
    let Some(app) = plan.applications.iter().find(|x| x.name == name).cloned() else {
        let known: Vec<&str> = plan.applications.iter().map(|x| x.name.as_str()).collect();
        bail!("the plan has no application {name:?} (applications: {})", if known.is_empty() { "none".into() } else { known.join(", ") });
    };
    let state = State::open(&state_of(&plan, &plan_file))?;
    let scratch = a.scratch.clone().or(plan.drills.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let exe = std::env::current_exe()?;
    let history = state.drills(chrono::Utc::now() - chrono::Duration::days(90))?;
    let class = tresor_controller::app_drill::class_of(&plan, &app);
    let silence = tresor_controller::silence::for_app(&plan, &app.name, &class, &history).await;
    let mut r = tokio::task::block_in_place(|| tresor_controller::app_drill::drill_app(&exe, &plan, &app, &scratch));
    if let Some(silence) = silence {
        r.silence = Some(silence.end().await);
    }
    state.record_drill(&r)?;
    let (result, detail) =
        if r.passed { ("succeeded", r.test_id.clone()) } else { ("failed", format!("{}: {}", r.test_id, r.reasons.join("; "))) };
    // The daemon's drill job is audited by the daemon.
    if !a.for_daemon {
        state.audit(&AuditEntry {
            time: chrono::Utc::now(),
            actor: format!("cli:{}@{}", tresor_engine::username(), tresor_engine::hostname()),
            action: "drill".into(),
            target: format!("application {}", app.name),
            result: result.into(),
            detail,
        })?;
    }
    if g.json {
        print_json(&[&r])?;
    } else {
        print(&r);
        print_app(&r);
    }
    if !r.passed {
        eprintln!("tresor: error: the drill of application {} failed", app.name);
        return Ok(crate::EXIT_ERROR);
    }
    Ok(0)
}

/// An application drill's own lines: each source's point, the window, each hook and check.
fn print_app(r: &DrillReport) {
    let Some(app) = &r.application else { return };
    for s in &app.sources {
        say!(
            "  {} ({}): snapshot {} at {} into {}",
            s.source,
            s.kind,
            &s.snapshot[..8.min(s.snapshot.len())],
            s.point.to_rfc3339(),
            s.target
        );
    }
    say!("  consistency window {:.1} s between its sources' points", app.consistency_window_seconds);
    for o in app.hooks.iter().chain(&app.smoke_checks) {
        say!("  {}", outcome_line(o));
    }
}

/// A hook or check in a line: `pre ok command "…": exit 0 (0.1 s)`.
pub fn outcome_line(o: &HookOutcome) -> String {
    format!("{} {} {}: {} ({:.1} s)", o.phase, if o.passed { "ok" } else { "FAILED" }, o.what, o.detail, o.seconds)
}
