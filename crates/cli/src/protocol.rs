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
    let Some(d) = drills.iter().rev().find(|d| d.test_id == a.id || d.test.as_deref() == Some(a.id.as_str())) else {
        bail!("no drill {} in the protocol (give a drill's id, DRILL-…, or a test id of the plan's drills)", a.id);
    };
    let writer = format!("{}@{}", tresor_engine::username(), tresor_engine::hostname());
    let note = Annotation {
        test_id: d.test_id.clone(),
        test: d.test.clone(),
        source: d.source.clone(),
        time: Utc::now(),
        author: writer.clone(),
        finding: a.finding,
        follow_up: a.follow_up,
    };
    let own = plan.sources.iter().find(|s| s.name == d.source).and_then(|s| plan.repository_of(s)).map(|(_, r)| r);
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
        println!("annotated {} ({}): recorded in the evidence log of {}", note.test_id, note.source, names.join(", "));
    }
    Ok(0)
}
