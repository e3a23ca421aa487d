//! `tresor drill annotate`: a finding and a follow-up about one drill (the
//! lessons learned a test protocol keeps), appended to the evidence log of
//! the drilled source's repository as an entry of its own, never an edit of
//! the drill's; `tresor report` shows it with the drill.

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use tresor_controller::daemon::load_plan;
use tresor_controller::model::{ANNOTATION, Annotation};
use tresor_controller::repos::{Handles, evidence_targets};
use tresor_controller::state::AuditEntry;

use crate::commands::print_json;
use crate::opts::{AnnotateArgs, Global};

pub async fn annotate(g: &Global, a: AnnotateArgs) -> Result<u8> {
    if a.finding.is_none() && a.follow_up.is_none() {
        bail!("nothing to record: give --finding, --follow-up or both");
    }
    let plan_file = std::path::absolute(&a.plan)?;
    let plan = &load_plan(&plan_file, Utc::now())?;
    let handles = Handles::default();
    let state = crate::drill::history(plan, &plan_file, &handles).await?;
    let drills = state.drills(DateTime::<Utc>::UNIX_EPOCH)?;
    let drill = drills.iter().rev().find(|d| d.test_id == a.id || d.test.as_deref() == Some(a.id.as_str()));
    let rehearsals = handles.rehearsals(plan).await;
    let rehearsal = rehearsals.iter().rev().find(|r| r.test_id == a.id || r.test.as_deref() == Some(a.id.as_str()));
    // The newest protocol entry of that id: a drill's is about its source's
    // repository, a rehearsal's about the whole plan (every primary's log).
    let (test_id, test, source, own) = match (drill, rehearsal) {
        (d, Some(r)) if d.is_none_or(|d| d.started <= r.started) => {
            (r.test_id.clone(), r.test.clone(), tresor_controller::rehearse::PLATFORM.to_string(), None)
        }
        (Some(d), _) => {
            let own = plan.sources.iter().find(|s| s.name == d.source).and_then(|s| plan.repository_of(s)).map(|(_, r)| r);
            (d.test_id.clone(), d.test.clone(), d.source.clone(), own)
        }
        _ => bail!("no drill {} in the protocol (give a drill's id, DRILL-…, or a test id of the plan's drills)", a.id),
    };
    let writer = format!("{}@{}", tresor_engine::username(), tresor_engine::hostname());
    let note = Annotation { test_id, test, source, time: Utc::now(), author: writer.clone(), finding: a.finding, follow_up: a.follow_up };
    let targets = evidence_targets(plan, own);
    let body = serde_json::to_value(&note)?;
    for r in &targets {
        handles.append(r, ANNOTATION, body.clone()).await.map_err(|e| anyhow::anyhow!("cannot append to the evidence log: {e}"))?;
    }
    state.audit(&AuditEntry {
        time: note.time,
        actor: format!("cli:{writer}"),
        action: "annotate".into(),
        target: note.source.clone(),
        result: "succeeded".into(),
        detail: note.test_id.clone(),
    })?;
    if g.json {
        print_json(&note)?;
    } else {
        let names: Vec<&str> =
            plan.repositories.iter().filter(|(_, r)| targets.iter().any(|t| t.url == r.url)).map(|(n, _)| n.as_str()).collect();
        say!("annotated {} ({}): recorded in the evidence log of {}", note.test_id, note.source, names.join(", "));
    }
    Ok(0)
}
