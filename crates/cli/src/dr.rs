//! `tresor dr rehearse`: a cold-start rehearsal of the whole plan from one
//! repository, with nothing but what the loss of a site leaves: the plan,
//! that repository and its password. No state is read or written.

use std::collections::BTreeMap;

use anyhow::Result;
use tresor_controller::daemon::load_plan;
use tresor_controller::rehearse::{Rehearsal, rehearse};

use crate::commands::print_json;
use crate::opts::{DrCmd, DrCommand, Global};

fn seconds(s: f64) -> String {
    tresor_controller::report::dur(Some(s))
}

fn print(r: &Rehearsal) {
    let back = r.steps.iter().filter(|s| s.drill.passed).count();
    println!("rehearsal from {}: {back} of {} sources back and validated", r.from, r.steps.len());
    for (i, s) in r.steps.iter().enumerate() {
        let d = &s.drill;
        let verdict = if d.passed { "PASS" } else { "FAIL" };
        println!(
            "  {}. {}: {verdict} {} ({}) in {}, done after {}",
            i + 1,
            s.tier,
            d.source,
            d.class,
            seconds(d.rto_seconds),
            seconds(s.done_after_seconds)
        );
        for why in &d.reasons {
            println!("     failed: {why}");
        }
    }
    let target = r.rto_target.map_or("no target: set drills.platform_rto".into(), |t| format!("target {}", seconds(t as f64)));
    let met = match r.rto_met {
        Some(true) => ": met",
        Some(false) => ": MISSED",
        None => "",
    };
    println!("platform RTO {} ({target}){met}", seconds(r.rto_seconds));
    for why in &r.left_behind {
        println!("scratch left behind: {why}");
    }
    if r.scratch.exists() {
        println!("the restored data is kept in {}", r.scratch.display());
    }
}

pub async fn dr(g: &Global, a: DrCmd) -> Result<u8> {
    let DrCommand::Rehearse(a) = a.command;
    let plan_file = std::path::absolute(&a.plan)?;
    let plan = load_plan(&plan_file, chrono::Utc::now())?;
    // Every copy opened first: an unreachable one or a wrong password stops here, scratch untouched.
    let origins = crate::drill::origins(g, &plan, &plan.sources, Some(&a.from), a.from_password_file.as_deref()).await?;
    let by_source: BTreeMap<String, _> = plan.sources.iter().map(|s| s.name.clone()).zip(origins).collect();
    let scratch = a.scratch.clone().or(plan.drills.scratch_dir.clone()).unwrap_or_else(std::env::temp_dir);
    let exe = std::env::current_exe()?;
    let origin_of = |s: &tresor_controller::plan::SourceSpec| by_source.get(&s.name).cloned().ok_or_else(|| "not in the plan".to_string());
    let r = tokio::task::block_in_place(|| rehearse(&exe, &plan, &a.from, origin_of, &scratch, a.keep));
    if g.json {
        print_json(&r)?;
    } else {
        print(&r);
    }
    if let Some(why) = r.left_behind.first() {
        eprintln!("tresor: error: the rehearsal's scratch stays: {why}");
        return Ok(crate::EXIT_ERROR);
    }
    let failed = r.steps.iter().filter(|s| !s.drill.passed).count();
    if failed > 0 || r.rto_met == Some(false) {
        eprintln!(
            "tresor: error: the rehearsal failed: {failed} of {} sources not back, platform RTO {}",
            r.steps.len(),
            seconds(r.rto_seconds)
        );
        return Ok(crate::EXIT_ERROR);
    }
    Ok(0)
}
