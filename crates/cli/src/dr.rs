//! `tresor dr rehearse`: a cold-start rehearsal of the whole plan from one
//! repository, with nothing but what the loss of a site leaves: the plan,
//! that repository and its password. No state is read or written; the
//! protocol joins the evidence log of the primary repositories that can
//! still be reached (never the off-site copy's, which `copy` fills), and
//! says so where one cannot. The daemon's scheduled rehearsal (`drills.rehearsal`)
//! runs here as a job, and the daemon records its protocol.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tresor_controller::daemon::load_plan;
use tresor_controller::model::REHEARSAL;
use tresor_controller::plan::Plan;
use tresor_controller::rehearse::{Rehearsal, rehearse};

use crate::commands::print_json;
use crate::opts::{DrCmd, DrCommand, Global};

fn seconds(s: f64) -> String {
    tresor_controller::report::dur(Some(s))
}

fn print(r: &Rehearsal) {
    let back = r.steps.iter().filter(|s| s.drill.passed).count();
    say!("rehearsal from {}: {back} of {} sources back and validated", r.from, r.steps.len());
    for (i, s) in r.steps.iter().enumerate() {
        let d = &s.drill;
        let verdict = if d.passed { "PASS" } else { "FAIL" };
        say!(
            "  {}. {}: {verdict} {} ({}) in {}, done after {}",
            i + 1,
            s.tier,
            d.source,
            d.class,
            seconds(d.rto_seconds),
            seconds(s.done_after_seconds)
        );
        for why in &d.reasons {
            say!("     failed: {why}");
        }
    }
    let target = r.rto_target.map_or("no target: set drills.platform_rto".into(), |t| format!("target {}", seconds(t as f64)));
    let met = match r.rto_met {
        Some(true) => ": met",
        Some(false) => ": MISSED",
        None => "",
    };
    say!("platform RTO {} ({target}){met}", seconds(r.rto_seconds));
    if let Some(e) = &r.evidence {
        if !e.recorded_in.is_empty() {
            say!("evidence: {} recorded in the evidence log of {}", r.test_id, e.recorded_in.join(", "));
        }
        for n in &e.not_recorded {
            say!("evidence: NOT recorded in the evidence log of {}: {}", n.repository, n.reason);
        }
    }
    for why in &r.left_behind {
        say!("scratch left behind: {why}");
    }
    if r.scratch.exists() {
        say!("the restored data is kept in {}", r.scratch.display());
    }
}

pub async fn dr(g: &Global, a: DrCmd) -> Result<u8> {
    let DrCommand::Rehearse(a) = a.command;
    let plan_file = std::path::absolute(&a.plan)?;
    let plan = load_plan(&plan_file, chrono::Utc::now())?;
    let mut r = run(g, &plan, &a.from, a.from_password_file.as_deref(), a.scratch.clone(), a.keep).await?;
    // A lost site takes its primary repository along: the rehearsal stands, its protocol says where it is not recorded.
    let handles = tresor_controller::repos::Handles::default();
    r.evidence = Some(handles.record(&plan, REHEARSAL, serde_json::to_value(&r)?).await);
    if g.json {
        print_json(&r)?;
    } else {
        print(&r);
    }
    Ok(verdict(&r))
}

/// The daemon's scheduled rehearsal (`tresor job run`): the plan's
/// `drills.rehearsal`, its protocol the job's details, which the daemon records.
pub async fn job(g: &Global, plan_file: &Path) -> Result<u8> {
    let plan = load_plan(plan_file, chrono::Utc::now())?;
    let spec = plan.drills.rehearsal.clone().context("the plan has no drills.rehearsal")?;
    let r = run(g, &plan, &spec.from, None, None, false).await?;
    print_json(&r)?;
    Ok(verdict(&r))
}

/// Open every copy, then bring the plan back from `from` into scratch.
async fn run(
    g: &Global,
    plan: &Plan,
    from: &str,
    password_file: Option<&Path>,
    scratch: Option<std::path::PathBuf>,
    keep: bool,
) -> Result<Rehearsal> {
    // Every copy opened first: an unreachable one or a wrong password stops here, scratch untouched.
    let origins = crate::drill::origins(g, plan, &plan.sources, Some(from), password_file).await?;
    let by_source: BTreeMap<String, _> = plan.sources.iter().map(|s| s.name.clone()).zip(origins).collect();
    let scratch = scratch.or(plan.drills.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let exe = std::env::current_exe()?;
    let origin_of = |s: &tresor_controller::plan::SourceSpec| by_source.get(&s.name).cloned().ok_or_else(|| "not in the plan".to_string());
    Ok(tokio::task::block_in_place(|| rehearse(&exe, plan, from, origin_of, &scratch, keep)))
}

/// The exit code: an error for scratch left behind, a source not back, or the platform target missed.
fn verdict(r: &Rehearsal) -> u8 {
    if let Some(why) = r.left_behind.first() {
        eprintln!("tresor: error: the rehearsal's scratch stays: {why}");
        return crate::EXIT_ERROR;
    }
    let failed = r.steps.iter().filter(|s| !s.drill.passed).count();
    if failed > 0 || r.rto_met == Some(false) {
        eprintln!(
            "tresor: error: the rehearsal failed: {failed} of {} sources not back, platform RTO {}",
            r.steps.len(),
            seconds(r.rto_seconds)
        );
        return crate::EXIT_ERROR;
    }
    0
}
